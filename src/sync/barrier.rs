//! The asymmetric barrier pair of the ring's sleep/wake handshake.
//!
//! The handshake is Dekker's: a side about to sleep stores `wait = 1`, then re-checks the ring;
//! the other side publishes (commits a message, frees space), then reads `wait`. Each side
//! needs a full barrier between its store and its load, and a `fence(SeqCst)` per message costs
//! about as much as a whole small message. But one side sleeps rarely (after its spin budget)
//! and the other publishes constantly, so the cost is moved to the rare side:
//!
//! * `light()` (the publisher, on every message): a compiler fence only, if this process is
//!   registered for `MEMBARRIER_CMD_GLOBAL_EXPEDITED` and no barrier call failed in it;
//!   otherwise `fence(SeqCst)`.
//! * `heavy()` (the side about to sleep): `fence(SeqCst)` and `membarrier(GLOBAL_EXPEDITED)`,
//!   which makes every CPU currently running a registered process execute a full barrier
//!   before it returns (a CPU not running one passes a barrier at its next context switch).
//!
//! Together they order the publisher's store before its load of `wait` as a full fence would,
//! relative to the sleeper. Registration is per process (the kernel's per-`mm` state) and is
//! inherited across `fork`: a child of a registered process is registered too (the kernel's
//! `MEMBARRIER_CMD_GET_REGISTRATIONS` says so in children made by `libc::fork` and by a raw
//! `SYS_fork`), so the cached state stays true in a child. Where the kernel refuses
//! registration, both sides use fences. Under loom both are `fence(SeqCst)`.
//!
//! # When the barrier fails
//!
//! `membarrier(GLOBAL_EXPEDITED)` can fail in a process that is registered, or whose peer is:
//! a seccomp filter installed after registration (or in a child, which inherits the
//! registration), `ENOMEM`, or a kernel without the command. The sleeper then has only its
//! fence, and a registered publisher (compiler fence only) may read `wait == 0` before its
//! store is visible to the sleeper: a lost wake-up. So a failure is never ignored:
//!
//! * `heavy()` returns `false`, and the sleeper bounds its sleep (`ring::wait`): a wake-up lost
//!   that way costs a few milliseconds, never a hang.
//! * The failure is remembered for the life of the process (and inherited by its later fork
//!   children, like the seccomp filter that usually causes it): `heavy()` stops calling
//!   `membarrier`, and `light()` uses `fence(SeqCst)` from then on. A peer whose barrier fails
//!   for the same reason then has a fully fenced partner, and loses nothing.

use super::{Ordering, fence};

#[cfg(not(loom))]
mod state {
    use std::sync::atomic::{AtomicU8, Ordering};

    const UNKNOWN: u8 = 0;
    const REGISTERED: u8 = 1;
    const UNAVAILABLE: u8 = 2;
    /// A `membarrier(GLOBAL_EXPEDITED)` call failed here: fences only, from now on. Final: no
    /// other state replaces it.
    const FAILED: u8 = 3;

    /// This process's registration, and whether its barrier calls work. Relaxed everywhere:
    /// process-local knowledge about the kernel, not an ordering between threads. A thread that
    /// still reads `REGISTERED` just after another saw a failure may use a compiler fence once
    /// more; the failed side's bounded sleep covers that.
    static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

    /// Whether this process is registered (registering on first use) and its barriers work.
    #[inline]
    pub(crate) fn registered() -> bool {
        match STATE.load(Ordering::Relaxed) {
            REGISTERED => true,
            UNKNOWN => register(),
            _ => false,
        }
    }

    #[cold]
    fn register() -> bool {
        use crate::sys::{
            MEMBARRIER_CMD_GLOBAL_EXPEDITED, MEMBARRIER_CMD_QUERY,
            MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, membarrier,
        };
        let supported = membarrier(MEMBARRIER_CMD_QUERY);
        let ok = supported >= 0
            && supported & i64::from(MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0
            && membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0;
        let new = if ok { REGISTERED } else { UNAVAILABLE };
        // Only from UNKNOWN: a failure recorded meanwhile by `global_barrier` stays.
        match STATE.compare_exchange(UNKNOWN, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => ok,
            Err(now) => now == REGISTERED,
        }
    }

    /// `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, unless one already failed in this
    /// process; whether it happened.
    #[inline]
    pub(crate) fn global_barrier() -> bool {
        use crate::sys::{MEMBARRIER_CMD_GLOBAL_EXPEDITED, membarrier};
        if STATE.load(Ordering::Relaxed) == FAILED {
            return false;
        }
        if membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0 {
            return true;
        }
        failed();
        false
    }

    #[cold]
    fn failed() {
        STATE.store(FAILED, Ordering::Relaxed);
    }
}

#[cfg(not(loom))]
pub(crate) use state::registered;

/// The publisher's barrier, between its publishing store and its load of the peer's `wait`:
/// a compiler fence while the sleeper's `membarrier` can reach this process, else a full one.
#[inline]
pub(crate) fn light() {
    #[cfg(not(loom))]
    if registered() {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        return;
    }
    fence(Ordering::SeqCst);
}

/// The sleeper's barrier, between its `wait = 1` store and its re-check of the ring. Returns
/// whether the full handshake holds: `false` if `membarrier` failed (now or before, in this
/// process), when a publisher relying on it may miss `wait = 1`; the caller must then not
/// sleep for long (see the module docs). Always `true` under loom (a fence on both sides).
#[inline]
#[must_use]
pub(crate) fn heavy() -> bool {
    fence(Ordering::SeqCst);
    // Whether or not *we* are registered, our peer may be, and then relies on this.
    #[cfg(not(loom))]
    let done = state::global_barrier();
    #[cfg(loom)]
    let done = true;
    fence(Ordering::SeqCst);
    done
}
