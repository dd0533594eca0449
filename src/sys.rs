//! Everything Linux-specific, in one place: the futex system calls, the calling thread's robust
//! list, thread and process identities, signals, and the `/proc` probe `fork` needs.
//!
//! The rest of the crate calls these thin wrappers and never names a syscall number. Porting to
//! another kernel means rewriting this file (and accepting weaker death detection where the
//! kernel has no robust-futex list).

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Bit 31 of a robust futex word: somebody sleeps (or is about to sleep) on the word.
pub const FUTEX_WAITERS: u32 = 0x8000_0000;
/// Bit 30 of a robust futex word: the thread named by the TID bits died holding it.
pub const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
/// The low 30 bits of a robust futex word: the owner's thread id, 0 when unowned.
pub const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

/// An absolute `CLOCK_MONOTONIC` point in time, the form the futex calls take, so that a wait
/// restarted after `EINTR` still ends when it was meant to.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(libc::timespec);

fn monotonic_now() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process, so a time one process stores
/// in shared memory can be compared with another's.
pub fn mono_ns() -> u64 {
    let t = monotonic_now();
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl Deadline {
    /// `timeout` from now; saturates far in the future (a timeout of `Duration::MAX` works).
    pub fn after(timeout: Duration) -> Deadline {
        let now = monotonic_now();
        let secs = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX);
        let mut sec = now.tv_sec.saturating_add(secs);
        let mut nsec = now.tv_nsec + i64::from(timeout.subsec_nanos());
        if nsec >= 1_000_000_000 {
            nsec -= 1_000_000_000;
            sec = sec.saturating_add(1);
        }
        // The kernel rejects absurd second counts on some paths; a few centuries is forever.
        const FOREVER_SECS: i64 = 1 << 40;
        if sec > FOREVER_SECS {
            sec = FOREVER_SECS;
        }
        Deadline(libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        })
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        let now = monotonic_now();
        (now.tv_sec, now.tv_nsec) >= (self.0.tv_sec, self.0.tv_nsec)
    }

    /// The earlier of `self` and `other` (`None`, no deadline, is never earlier).
    pub fn min_with(self, other: Option<&Deadline>) -> Deadline {
        match other {
            Some(o) if (o.0.tv_sec, o.0.tv_nsec) < (self.0.tv_sec, self.0.tv_nsec) => *o,
            _ => self,
        }
    }
}

/// Why a futex wait returned. Every outcome means "look at the words again".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Woken, interrupted, or the value had already changed.
    Retry,
    /// The deadline passed.
    TimedOut,
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// How long [`futex_wait`] sleeps instead when the kernel refuses the wait.
const REFUSED_WAIT_NAP: Duration = Duration::from_millis(5);

/// `FUTEX_WAIT_BITSET` (shared, not private) on `word` while it holds `expected`, until woken
/// or `deadline`.
///
/// If the kernel refuses the wait itself (any error but a changed value, a signal or the
/// timeout: `EPERM` or `ENOSYS` from a seccomp filter, say), it sleeps for
/// [`REFUSED_WAIT_NAP`] (at most until `deadline`) and returns as if woken: callers loop on
/// `Retry`, and an instant failure would make every wait loop spin. Such a waiter notices a
/// change within the nap instead of at once, and uses no CPU meanwhile.
pub fn futex_wait(word: &AtomicU32, expected: u32, deadline: Option<&Deadline>) -> Wake {
    let ts = deadline.map_or(std::ptr::null(), |d| &d.0 as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 for the duration of the call; `ts` is null or points
    // at a timespec that outlives the call. FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC
    // time. No FUTEX_PRIVATE_FLAG: the word may be shared with other processes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT_BITSET,
            expected,
            ts,
            std::ptr::null::<u32>(),
            libc::FUTEX_BITSET_MATCH_ANY,
        )
    };
    if r == 0 {
        return Wake::Retry;
    }
    match errno() {
        libc::ETIMEDOUT => Wake::TimedOut,
        // The value changed, or a signal: the caller re-checks.
        libc::EAGAIN | libc::EINTR => Wake::Retry,
        _ => nap(deadline),
    }
}

/// Sleeps [`REFUSED_WAIT_NAP`], or until `deadline` if sooner: what a refused futex wait does
/// instead of returning at once.
#[cold]
fn nap(deadline: Option<&Deadline>) -> Wake {
    let until = Deadline::after(REFUSED_WAIT_NAP).min_with(deadline);
    // SAFETY: `until.0` is a valid timespec that outlives the call; with TIMER_ABSTIME the
    // remaining-time pointer is unused and may be null. An EINTR return ends the nap early,
    // which the caller treats as any other wake-up.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &until.0,
            std::ptr::null_mut(),
        )
    };
    if deadline.is_some_and(Deadline::expired) {
        Wake::TimedOut
    } else {
        Wake::Retry
    }
}

/// `FUTEX_WAKE` (shared) for up to `n` waiters on `word`.
pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
}

#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

const FUTEX2_SIZE_U32: u32 = 2;

/// The most words one `futex_waitv` call takes (the kernel's `FUTEX_WAITV_MAX`).
pub const FUTEX_WAITV_MAX: usize = 128;

/// Whether `futex_waitv` (Linux 5.16) is unusable here: cached after the first answer that
/// will not change (`ENOSYS`, `EPERM`, `EINVAL`).
static WAITV_MISSING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How a `futex_waitv` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waitv {
    /// Woken. The index is the *last* word of the vector whose wake-up the kernel found when
    /// the sleep ended (a later word's wake-up is never hidden behind an earlier one's).
    Woken(usize),
    /// A value had already changed, or a signal.
    Retry,
    /// The deadline passed.
    TimedOut,
}

/// Sleeps until any of `words` stops holding its expected value, is woken, or `deadline`.
/// Returns `None` when `futex_waitv` is unavailable, or when there are more than
/// [`FUTEX_WAITV_MAX`] words; the caller then waits on the first word alone, with a short
/// timeout, and re-checks the others itself.
///
/// Unavailable means: the kernel lacks it (`ENOSYS`), a seccomp filter refuses it (profiles
/// written before Linux 5.16 answer `EPERM`), or the kernel rejects the call (`EINVAL`); these
/// are remembered for the life of the process. An `EFAULT` or any other unexpected error falls
/// back for this call only. None of them may become `Retry`: the caller would retry at once,
/// and an idle waiter would spin.
pub fn futex_waitv(words: &[(&AtomicU32, u32)], deadline: Option<&Deadline>) -> Option<Waitv> {
    // Relaxed: a process-local hint; a stale `false` costs one more refused call.
    if WAITV_MISSING.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    if words.len() > FUTEX_WAITV_MAX {
        // Never drop a word silently: the caller sleeps on fewer and re-checks the rest.
        return None;
    }
    const EMPTY: FutexWaitv = FutexWaitv {
        val: 0,
        uaddr: 0,
        flags: 0,
        reserved: 0,
    };
    let mut v: [FutexWaitv; FUTEX_WAITV_MAX] = [EMPTY; FUTEX_WAITV_MAX];
    let n = words.len();
    for (slot, (word, expected)) in v.iter_mut().zip(words) {
        slot.val = u64::from(*expected);
        slot.uaddr = word.as_ptr() as u64;
        // Shared (no FUTEX_PRIVATE_FLAG): a private entry is never woken by the kernel's
        // robust-list death wake-up, nor by another process.
        slot.flags = FUTEX2_SIZE_U32;
    }
    let ts = deadline.map_or(std::ptr::null(), |d| &d.0 as *const libc::timespec);
    // SAFETY: `v[..n]` are initialised waiters whose addresses point at live u32 words; the
    // flags argument must be 0; the timeout is absolute on CLOCK_MONOTONIC or null.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            v.as_ptr(),
            n as libc::c_uint,
            0u32,
            ts,
            libc::CLOCK_MONOTONIC,
        )
    };
    if r >= 0 {
        return Some(Waitv::Woken(r as usize));
    }
    match errno() {
        libc::ETIMEDOUT => Some(Waitv::TimedOut),
        // A value had already changed, or a signal: the caller re-checks.
        libc::EAGAIN | libc::EINTR => Some(Waitv::Retry),
        libc::ENOSYS | libc::EPERM | libc::EINVAL => {
            WAITV_MISSING.store(true, std::sync::atomic::Ordering::Relaxed);
            None
        }
        _ => None,
    }
}

/// The CPU the calling thread runs on now, plus one (0: unknown). Cheap (vDSO or rseq).
pub fn current_cpu_plus_one() -> u32 {
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on failure.
    let c = unsafe { libc::sched_getcpu() };
    if c < 0 { 0 } else { c as u32 + 1 }
}

/// Asks the kernel to SIGKILL the calling process when its parent exits
/// (`PR_SET_PDEATHSIG`), then checks that the parent is still `parent` (it may have exited
/// before the request took effect). `false`: it already has.
pub fn die_with_parent(parent: u32) -> bool {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: getppid has no preconditions.
    (unsafe { libc::getppid() }) as u32 == parent
}

/// Sends SIGKILL to the calling process (a test hook: a kill at an exact instruction).
pub fn kill_self() {
    // SAFETY: kill and getpid have no memory-safety preconditions. SIGKILL is acted on before
    // the system call returns to user space, so no later instruction of ours runs.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

/// The calling thread's kernel thread id.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Whether thread `tid` of the calling process may be alive (`tgkill` with signal 0). Only
/// `ESRCH` says it is gone (exited, or a thread of another process); any other failure (a
/// seccomp filter or a security module refusing `tgkill`) says nothing, and "alive" is the
/// answer on the safe side for the caller.
pub fn own_thread_alive(tid: u32) -> bool {
    // SAFETY: signal 0 only checks that the thread exists and may be signalled.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid as libc::pid_t, 0) };
    r == 0 || errno() != libc::ESRCH
}

/// The calling process's id (a system call: callers cache it).
pub fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// The kernel's `struct robust_list_head`, which glibc keeps in each thread's descriptor.
#[repr(C)]
pub struct RobustListHead {
    /// First entry; the list is circular through the head (empty: points at itself).
    pub list: *mut usize,
    /// Byte offset from an entry to its futex word.
    pub futex_offset: isize,
    /// The entry being added or removed, so a death in mid-operation is still handled.
    pub list_op_pending: *mut usize,
}

/// The robust list head registered for the calling thread, or null if none is.
pub fn robust_list_head() -> *mut RobustListHead {
    let mut head: *mut RobustListHead = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: pid 0 means the calling thread; both out-pointers are valid for writes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut *mut RobustListHead,
            &mut len as *mut libc::size_t,
        )
    };
    if r != 0 || len != std::mem::size_of::<RobustListHead>() {
        return std::ptr::null_mut();
    }
    head
}

/// Registers `head` as the calling thread's robust list.
///
/// # Safety
/// `head` must stay valid, and be used only by this thread, until the thread exits.
pub unsafe fn set_robust_list(head: *mut RobustListHead) -> bool {
    // SAFETY: the caller guarantees `head` lives as long as the thread.
    unsafe {
        libc::syscall(
            libc::SYS_set_robust_list,
            head,
            std::mem::size_of::<RobustListHead>(),
        ) == 0
    }
}

/// Maps a private, zero-filled page range over `addr..addr + len` (page-aligned), replacing
/// whatever this process had mapped there (`MAP_FIXED`). Async-signal-safe (one system call).
pub fn map_private_fixed(addr: usize, len: usize) -> bool {
    // SAFETY: the caller names a page range of one of our own mappings whose old contents it
    // no longer needs in this process (the presence table's page after one's own slot); the
    // new mapping is private anonymous memory.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    p as usize == addr
}

/// Whether children forked now would be in another PID namespace than this process (after
/// `unshare(CLONE_NEWPID)`): thread ids, which robust futexes compare, then collide. `false`
/// where `/proc` cannot tell.
pub fn children_in_other_pid_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata("/proc/self/ns/pid"),
        std::fs::metadata("/proc/self/ns/pid_for_children"),
    ) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) != (b.dev(), b.ino()),
        // After `unshare(CLONE_NEWPID)` and before the first child, the link does not resolve.
        (Ok(_), Err(e)) => e.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Number of threads in this process, from `/proc/self/stat` (field 20).
pub fn thread_count() -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) is parenthesised and may contain spaces: parse after it.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc/self/stat"))?;
    // Fields after ')' start at field 3 (state); num_threads is field 20.
    after
        .split_whitespace()
        .nth(17)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("malformed /proc/self/stat"))
}

/// The system page size.
/// Cached after the first call (it is on the path of every presence check).
#[inline]
pub fn page_size() -> usize {
    static PAGE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    // Relaxed: a process-wide constant; racing first calls store the same value.
    let p = PAGE.load(std::sync::atomic::Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let p = if p > 0 { p as usize } else { 4096 };
    PAGE.store(p, std::sync::atomic::Ordering::Relaxed);
    p
}

/// Opens a pidfd for `pid` (Linux 5.3+), or `None` where the kernel lacks it.
pub fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a freshly opened descriptor owned by nobody else.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(pidfd, signal, NULL, 0)` (Linux 5.1+): signals exactly the process the
/// pidfd was opened for; `ESRCH` once it has exited, even if its pid now names another process.
pub fn pidfd_send_signal(pidfd: std::os::fd::BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain integers and a null `siginfo` (the kernel then fills in what `kill` would);
    // `pidfd` is a live descriptor for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `kill(pid, signal)`: whichever process has that pid now. Prefer [`pidfd_send_signal`].
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers and touches no user memory.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Registers `handler` to run in the child after every `fork` made through libc.
pub fn at_fork_child(handler: extern "C" fn()) {
    // SAFETY: the handler is a plain `extern "C"` function that lives for the whole program.
    unsafe {
        libc::pthread_atfork(None, None, Some(handler));
    }
}

/// `membarrier(2)` commands.
pub const MEMBARRIER_CMD_QUERY: i32 = 0;
/// Barrier on every CPU running a thread of a process registered for it.
pub const MEMBARRIER_CMD_GLOBAL_EXPEDITED: i32 = 1 << 1;
/// Registers the calling process to receive `MEMBARRIER_CMD_GLOBAL_EXPEDITED` barriers.
pub const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: i32 = 1 << 2;

/// `membarrier(cmd, 0, 0)`: the result, or -1.
pub fn membarrier(cmd: i32) -> i64 {
    // SAFETY: membarrier takes plain integers and touches no user memory.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0u32, 0i32) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_saturate_and_expire() {
        assert!(!Deadline::after(Duration::MAX).expired());
        let d = Deadline::after(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
        assert!(d.expired());
        let far = Deadline::after(Duration::MAX);
        assert!(far.min_with(Some(&d)).expired());
        assert!(!far.min_with(None).expired());
        assert!(d.min_with(Some(&far)).expired());
    }

    #[test]
    fn futex_wait_times_out_and_sees_changed_values() {
        let w = AtomicU32::new(5);
        // Value differs: returns at once.
        assert_eq!(futex_wait(&w, 4, None), Wake::Retry);
        let d = Deadline::after(Duration::from_millis(5));
        assert_eq!(futex_wait(&w, 5, Some(&d)), Wake::TimedOut);
    }

    #[test]
    fn identities_and_thread_count() {
        assert!(thread_count().unwrap() >= 1);
        assert_eq!(getpid(), std::process::id());
        assert!(gettid() > 0 && gettid() & !FUTEX_TID_MASK == 0);
        assert!(page_size().is_power_of_two());
    }
}
