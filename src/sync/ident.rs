//! Who is calling: the thread's TID, the process's pid, and the process's *identity*.
//!
//! A pid alone does not identify a process for long: pids are reused (wrap-around at
//! `pid_max`, or a write to `/proc/sys/kernel/ns_last_pid`), and a process that inherited
//! copies of objects naming a dead process could later get that process's pid back. So objects
//! that belong to a process (channel endpoints, the right to allocate in an `AnonRegion`) name
//! it by its [`Ident`]: the pid together with the process's *fork depth*, the number of forks
//! between it and the first process of its tree that used this crate. Copies of an object are
//! only ever inherited by descendants of the process that made them (fork copies memory
//! downwards; nothing moves a Rust object upwards or sideways), and a descendant is always
//! deeper than its ancestor, so no process that can hold a copy naming `(pid, depth)` has that
//! identity itself, whatever pid it gets.
//!
//! Everything is cached in process memory (no system call after the first use) and reset in
//! the child of every fork made through libc by a `pthread_atfork` handler that this module
//! registers for itself on first use. A child made by a raw `SYS_fork`/`clone` runs no atfork
//! handlers and keeps its parent's caches: that is `unsafe` code's contract to avoid.

#[cfg(not(loom))]
use std::cell::Cell;
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A process identity: `pid << 32 | fork depth`; never 0.
pub(crate) type Ident = u64;

#[cfg(not(loom))]
thread_local! {
    /// This thread's TID, 0 until looked up (and again in a fork child).
    static TID: Cell<u32> = const { Cell::new(0) };
}

/// This process's pid, 0 until looked up; reset in every fork child.
#[cfg(not(loom))]
static PID: AtomicU32 = AtomicU32::new(0);
/// Forks since the first process of the tree that used this crate (see the module docs).
#[cfg(not(loom))]
static DEPTH: AtomicU32 = AtomicU32::new(0);
/// `PID << 32 | DEPTH`, 0 until computed; reset in every fork child.
#[cfg(not(loom))]
static IDENT: AtomicU64 = AtomicU64::new(0);

#[cfg(not(loom))]
static AT_FORK: std::sync::Once = std::sync::Once::new();

/// Runs in the child of every libc fork, on its only thread. Async-signal-safe: stores only.
#[cfg(not(loom))]
extern "C" fn after_fork_in_child() {
    // Relaxed throughout: the child has one thread, and these are its private caches.
    PID.store(0, Ordering::Relaxed);
    IDENT.store(0, Ordering::Relaxed);
    DEPTH.fetch_add(1, Ordering::Relaxed);
    TID.with(|t| t.set(0));
}

/// Registers this module's fork handler (once per process; inherited by children).
#[cfg(not(loom))]
pub(crate) fn ensure_fork_hook() {
    AT_FORK.call_once(|| crate::sys::at_fork_child(after_fork_in_child));
}

/// The calling thread's TID (cached; no system call after the first).
#[cfg(not(loom))]
#[inline]
pub(crate) fn current_tid() -> u32 {
    TID.with(|t| {
        let v = t.get();
        if v != 0 {
            return v;
        }
        ensure_fork_hook();
        let v = crate::sys::gettid();
        t.set(v);
        v
    })
}

/// The calling process's pid (cached; refreshed after fork).
#[cfg(not(loom))]
#[inline]
pub(crate) fn current_pid() -> u32 {
    let v = PID.load(Ordering::Relaxed);
    if v != 0 {
        return v;
    }
    ensure_fork_hook();
    let v = crate::sys::getpid();
    PID.store(v, Ordering::Relaxed);
    v
}

/// The calling process's identity (cached; a load on the fast path).
#[cfg(not(loom))]
#[inline]
pub(crate) fn current_ident() -> Ident {
    let v = IDENT.load(Ordering::Relaxed);
    if v != 0 {
        return v;
    }
    compute_ident()
}

#[cfg(not(loom))]
#[cold]
fn compute_ident() -> Ident {
    let pid = current_pid(); // installs the fork hook before the depth can matter
    let v = u64::from(pid) << 32 | u64::from(DEPTH.load(Ordering::Relaxed));
    IDENT.store(v, Ordering::Relaxed);
    v
}

#[cfg(loom)]
loom::thread_local! {
    static LOOM_TID: std::cell::Cell<u32> = std::cell::Cell::new(0);
}

#[cfg(loom)]
static NEXT_LOOM_TID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Under loom every model thread gets a distinct fake TID.
#[cfg(loom)]
pub(crate) fn current_tid() -> u32 {
    LOOM_TID.with(|t| {
        if t.get() == 0 {
            let n = NEXT_LOOM_TID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.set(1 + n % (crate::sys::FUTEX_TID_MASK - 16));
        }
        t.get()
    })
}

/// Under loom, parent and child are threads of one process.
#[cfg(loom)]
pub(crate) fn current_pid() -> u32 {
    1
}

/// Under loom, parent and child are threads of one process.
#[cfg(loom)]
pub(crate) fn current_ident() -> Ident {
    1 << 32
}

/// Under loom there is no fork, so no hook to install.
#[cfg(loom)]
pub(crate) fn ensure_fork_hook() {}
