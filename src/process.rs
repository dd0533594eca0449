//! `fork` with explicit hand-over of channel endpoints, and `Child`.
//!
//! The child runs the closure and leaves with `_exit` (a panic exits with status 101): it never
//! returns into the caller's code, never runs the parent's destructors and never flushes the
//! parent's buffered I/O twice (stdout is flushed before forking). A panic that escapes the
//! closure is recorded in a page shared with the parent (`panic_capture`), so that the parent
//! can tell how the child ended ([`Outcome`]).

pub(crate) mod outcome;
pub(crate) mod panic_capture;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

pub use outcome::Outcome;
use outcome::PANIC_EXIT_CODE;
use panic_capture::{PanicReport, PanicSlot};

use crate::Error;
use crate::channel::{
    ByteDuplex, ByteReceiver, ByteSender, Duplex, EndpointCore, Receiver, Sender,
};
use crate::presence;
use crate::sync::ident::current_ident;

mod sealed {
    /// Proof that a `Transfer` method is called by this crate.
    pub struct Token(pub(crate) ());
    pub trait Sealed {}
}
use sealed::Token;

/// Values that `fork` can hand to the child: `()`, every channel endpoint, tuples of them, and
/// `Vec`s of them.
///
/// # How ownership works across `fork`
///
/// Every endpoint records the identity of the process that owns it (its pid and fork depth, in
/// process-local memory, not the shared ring). Creating a channel makes the calling process the owner of both ends. `fork`
/// hands the ends you pass it to the child: before forking it records, in the ring's shared
/// header, that the side now belongs to a presence slot reserved for the child; in the child it
/// sets the endpoints' owner to the child's identity; in the parent it disowns its copies (owner 0),
/// so dropping them closes nothing. Every other copy a process inherits through `fork` names
/// another process as its owner and is inert there: each operation first compares the owner
/// with the current identity (cached, so no system call) and returns `Disconnected` with reason
/// [`DisconnectReason::NotOwner`](crate::DisconnectReason::NotOwner) without touching the
/// ring, and its drop closes nothing. A process that inherits copies and later gets a dead
/// owner's pid back is still not their owner (its fork depth differs). An end moves only by being moved into `fork`, and
/// endpoints are `Send` but not `Sync`, so at most one process, and one thread in it, uses each
/// end of a ring through the safe API.
///
/// The trait is sealed; its methods are this crate's business.
pub trait Transfer: sealed::Sealed {
    #[doc(hidden)]
    fn for_each_core(&self, t: &Token, f: &mut dyn FnMut(&dyn EndpointCore));
}

impl sealed::Sealed for () {}
impl Transfer for () {
    fn for_each_core(&self, _: &Token, _: &mut dyn FnMut(&dyn EndpointCore)) {}
}

macro_rules! transfer_core {
    ($t:ty, [$($g:ident),*], $($field:ident).+) => {
        impl<$($g),*> sealed::Sealed for $t {}
        impl<$($g),*> Transfer for $t {
            fn for_each_core(&self, _: &Token, f: &mut dyn FnMut(&dyn EndpointCore)) {
                f(&self.$($field).+);
            }
        }
    };
}
transfer_core!(Sender<T>, [T], core);
transfer_core!(Receiver<T>, [T], core);
transfer_core!(ByteSender, [], core);
transfer_core!(ByteReceiver, [], core);

#[cfg(feature = "serde")]
transfer_core!(crate::SerdeSender<T>, [T], inner.core);
#[cfg(feature = "serde")]
transfer_core!(crate::SerdeReceiver<T>, [T], inner.core);

macro_rules! transfer_duplex {
    ($t:ty, [$($g:ident),*], $($field:ident).+) => {
        impl<$($g),*> sealed::Sealed for $t {}
        impl<$($g),*> Transfer for $t {
            fn for_each_core(&self, _: &Token, f: &mut dyn FnMut(&dyn EndpointCore)) {
                f(&self.sender().$($field).+);
                f(&self.receiver().$($field).+);
            }
        }
    };
}
transfer_duplex!(Duplex<A, B>, [A, B], core);
transfer_duplex!(ByteDuplex, [], core);
#[cfg(feature = "serde")]
transfer_duplex!(crate::SerdeDuplex<A, B>, [A, B], inner.core);

impl<T: Transfer> sealed::Sealed for Vec<T> {}
/// Any number of endpoints of one type (e.g. one sender per channel of a fan-in).
impl<T: Transfer> Transfer for Vec<T> {
    fn for_each_core(&self, t: &Token, f: &mut dyn FnMut(&dyn EndpointCore)) {
        for e in self {
            e.for_each_core(t, f);
        }
    }
}

macro_rules! transfer_tuple {
    ($($n:tt $t:ident),+) => {
        impl<$($t: Transfer),+> sealed::Sealed for ($($t,)+) {}
        impl<$($t: Transfer),+> Transfer for ($($t,)+) {
            fn for_each_core(&self, t: &Token, f: &mut dyn FnMut(&dyn EndpointCore)) {
                $( self.$n.for_each_core(t, f); )+
            }
        }
    };
}
transfer_tuple!(0 A);
transfer_tuple!(0 A, 1 B);
transfer_tuple!(0 A, 1 B, 2 C);
transfer_tuple!(0 A, 1 B, 2 C, 3 D);
transfer_tuple!(0 A, 1 B, 2 C, 3 D, 4 E);
transfer_tuple!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F);
transfer_tuple!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G);
transfer_tuple!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H);

/// Forks the process. The child runs `child(ends)` and exits with its return value; the parent
/// gets a [`Child`] handle.
///
/// Exit status: the closure's return value; **101** if the closure panicked (as a Rust
/// program's `main` does); **125** if the parent died while forking, before the child could
/// take over its endpoints (the closure then does not run).
///
/// A panic is also *recorded*: its message and location go to the child's stderr as usual
/// (through whatever panic hook is set) and into a page shared with the parent, so
/// [`Child::wait_outcome`] returns [`Outcome::Panicked`] with them, and the peers of the
/// endpoints that the unwinding dropped see
/// [`DisconnectReason::PeerPanicked`](crate::DisconnectReason::PeerPanicked) rather than a
/// clean `PeerDropped`. The location comes from a panic hook that the first `fork` installs in
/// the parent, chained to the hook set then (so that hook still runs); set your own hook
/// before forking, or chain to the previous one with `std::panic::take_hook`.
///
/// `ends` (an endpoint, a tuple of them, or `()`) moves to the child: the child owns those
/// endpoints, and the parent's copies vanish without closing anything. Endpoints not passed
/// stay the parent's; the child's copies of them are inert (using one returns
/// `Disconnected`). Shared memory made before the fork ([`AnonRegion`](crate::AnonRegion)) is
/// shared with the child.
///
/// So pass every endpoint the child uses in `ends`: one that the closure *captures* instead is
/// such an inert copy in the child (its operations report `Disconnected`, reason
/// [`NotOwner`](crate::DisconnectReason::NotOwner), and debug builds say so once on stderr),
/// while the parent's original either closes when the closure is dropped after the fork (a
/// `move` capture: the peer sees `PeerDropped`) or stays open unused (a borrow: the peer
/// waits). See "Common mistakes" in the crate docs.
///
/// Refuses with [`Error::PidNamespace`] if the child would be in another PID namespace (after
/// `unshare(CLONE_NEWPID)`): the kernel's robust-futex handling compares thread ids, which
/// collide across namespaces. Refuses with [`Error::MultiThreaded`] if the process has more
/// than one thread: the child
/// of a multithreaded process has only the forking thread, and a lock held by another thread
/// (the allocator's, stdout's) would stay locked forever. Tests that fork therefore go in a
/// `harness = false` test target ("Testing code that forks" in the crate docs). See
/// [`fork_unchecked`].
///
/// Endpoints that this process does not own (inert copies) may be passed but stay inert.
/// Borrowed data captured by `child` is the child's copy, except memory in an `AnonRegion`,
/// which is shared: do not carry a `&mut` into shared memory (from a lock guard or a write
/// grant) across the fork.
///
/// ```no_run
/// let mut child = forkipc::fork((), |()| 7)?;
/// assert_eq!(child.wait()?.code(), Some(7));
/// # Ok::<(), forkipc::Error>(())
/// ```
pub fn fork<E: Transfer, F: FnOnce(E) -> i32>(ends: E, child: F) -> Result<Child, Error> {
    if crate::sys::thread_count()? > 1 {
        return Err(Error::MultiThreaded);
    }
    // SAFETY: the process has exactly one thread (checked just above), so the child may do
    // anything, including flushing stdout at exit.
    unsafe { fork_inner(ends, child, true) }
}

/// A hook for this crate's tests: a function run between the reservation of the child's
/// presence and the `fork` system call (to kill a parent exactly there).
#[cfg(not(loom))]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static BEFORE_FORK: AtomicUsize = AtomicUsize::new(0);

    pub(crate) fn set_before_fork(f: Option<fn()>) {
        // Relaxed: set and used by the same (single) thread in the tests.
        BEFORE_FORK.store(f.map_or(0, |f| f as usize), Ordering::Relaxed);
    }

    pub(super) fn before_fork() {
        let f = BEFORE_FORK.load(Ordering::Relaxed);
        if f != 0 {
            // SAFETY: only `set_before_fork` stores here, and it stores a `fn()`.
            let f: fn() = unsafe { std::mem::transmute::<usize, fn()>(f) };
            f();
        }
    }
}

/// As [`fork`], without the single-thread check.
///
/// # Safety
/// If the process has other threads, the child must not touch anything they might have held
/// locked at the moment of the fork: in practice the closure may use only async-signal-safe
/// operations (no allocation, no stdout, no std locks). forkipc's own operations on endpoints
/// passed in `ends` allocate nothing on the fast path, and the child's side of this function
/// does only async-signal-safe work itself (the panic capture included: a system call and
/// stores; it allocates nothing even when recording a panic, though std's panic machinery
/// does). Neither side touches stdout: flush it yourself
/// before calling (or buffered output is written twice), and in the child flush what the
/// closure printed, if it may (the child exits with `_exit`).
pub unsafe fn fork_unchecked<E: Transfer, F: FnOnce(E) -> i32>(
    ends: E,
    child: F,
) -> Result<Child, Error> {
    // SAFETY: the caller's contract, passed on; no flush in the child.
    unsafe { fork_inner(ends, child, false) }
}

/// Exit status of a child whose parent died while forking it, before the child could take
/// over its endpoints: the child leaves at once instead of running the closure.
pub(crate) const PARENT_DIED_IN_FORK: i32 = 125;

/// # Safety
/// As `fork_unchecked`; `single_threaded` promises the process had one thread at the fork.
unsafe fn fork_inner<E: Transfer, F: FnOnce(E) -> i32>(
    ends: E,
    child: F,
    single_threaded: bool,
) -> Result<Child, Error> {
    crate::sync::ident::ensure_fork_hook();
    if crate::sys::children_in_other_pid_namespace() {
        return Err(Error::PidNamespace);
    }
    let token = Token(());
    if single_threaded {
        // Whatever sits in stdout's buffer would otherwise be written twice. Done first: it
        // may block (a full pipe), and nothing is reserved yet. Not in `fork_unchecked`: a
        // thread may hold stdout's lock there (and the child could never take it).
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
    // Where the child records a panic; made before anything is reserved (nothing to undo if
    // it fails). The hook that notes locations is installed here, in the parent: the child
    // must not allocate or lock (fork_unchecked).
    let panic_slot = PanicSlot::new()?;
    panic_capture::install_hook();
    // Which of the ends this process owns (and so hands over); the rest stay inert.
    let mut owned: Vec<bool> = Vec::new();
    ends.for_each_core(&token, &mut |c| owned.push(c.is_owned()));
    let for_each_owned = |f: &mut dyn FnMut(&dyn EndpointCore)| {
        let mut i = 0;
        ends.for_each_core(&token, &mut |c| {
            if owned.get(i).copied().unwrap_or(false) {
                f(c)
            }
            i += 1;
        });
    };
    let me = if owned.contains(&true) {
        Some(presence::current()?)
    } else {
        None
    };
    let reservation = match me {
        Some(_) => {
            let res = presence::reserve_for_child()?;
            for_each_owned(&mut |c| c.set_presence(res.r));
            Some(res)
        }
        None => None,
    };

    #[cfg(not(loom))]
    testing::before_fork();
    // SAFETY: fork has no memory-safety preconditions; what the child may do is the caller's
    // contract (single-threaded for the safe `fork`).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let err = std::io::Error::last_os_error();
        if let (Some(res), Some(me)) = (reservation, me) {
            // Give the ends back to this process *before* the reserved slot dies, so a peer
            // that sees the slot dead re-reads the owner and finds us alive.
            for_each_owned(&mut |c| c.set_presence(me));
            presence::release_reservation(res);
        }
        return Err(Error::Io(err));
    }
    if pid == 0 {
        // Child. The fork hooks have reset the cached pid, identity, TID and presence.
        if let Some(res) = reservation {
            if !presence::adopt(res) {
                // The parent died before we could take our slot: its peers already see us as
                // dead. Leave without running the closure.
                // SAFETY: `_exit` ends the process at once; nothing of ours needs running.
                unsafe { libc::_exit(PARENT_DIED_IN_FORK) };
            }
            let me = current_ident();
            // Take the ends that the parent owned; ones it did not own stay inert.
            for_each_owned(&mut |c| c.set_owner(me));
        }
        // Async-signal-safe: a system call and stores.
        let slot = panic_slot.arm();
        let code = match catch_unwind(AssertUnwindSafe(|| child(ends))) {
            Ok(code) => code,
            Err(payload) => {
                slot.record(&*payload);
                // Not dropped: its destructor is arbitrary code, and the process ends now.
                std::mem::forget(payload);
                PANIC_EXIT_CODE
            }
        };
        if single_threaded {
            // Only safe when no other thread can have held stdout's lock at the fork.
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        // SAFETY: `_exit` ends the process without unwinding or running the parent's atexit
        // handlers and destructors, which belong to the parent.
        unsafe { libc::_exit(code) };
    }
    // Parent: forget our copies of the handed-over ends without closing them.
    let pid = pid as u32;
    panic_slot.keep_from_later_forks();
    for_each_owned(&mut |c| c.set_owner(0));
    drop(ends);
    let pidfd = crate::sys::pidfd_open(pid);
    if let Some(res) = reservation {
        presence::await_adoption(res, pid);
    }
    Ok(Child {
        pid,
        status: None,
        pidfd,
        panic_slot: Some(panic_slot),
        panic: None,
    })
}

/// A forked child process. Like `std::process::Child`, dropping it neither kills nor reaps
/// the child: call [`wait`](Child::wait) (or [`kill`](Child::kill) then `wait`, or
/// [`wait_or_kill`](Child::wait_or_kill)).
///
/// How it ended, a panic's message included: [`wait_outcome`](Child::wait_outcome), or
/// [`outcome`](Child::outcome) after any of the waits.
#[derive(Debug)]
pub struct Child {
    pid: u32,
    status: Option<ExitStatus>,
    pidfd: Option<OwnedFd>,
    /// The page where the child records a panic; read and unmapped when the child is reaped.
    panic_slot: Option<PanicSlot>,
    /// What the child recorded, read when it was reaped (only for exit status 101).
    panic: Option<PanicReport>,
}

impl Child {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    fn reap(&mut self, block: bool) -> Result<Option<ExitStatus>, Error> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut status = 0;
        loop {
            let flags = if block { 0 } else { libc::WNOHANG };
            // SAFETY: `status` is writable; `pid` is our own child, not yet reaped.
            let r = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, flags) };
            if r == 0 {
                return Ok(None);
            }
            if r > 0 {
                let s = ExitStatus::from_raw(status);
                self.status = Some(s);
                self.pidfd = None;
                // Read once, now: later reads could differ (a descendant may still write the
                // page), and the page is unmapped as soon as it is read.
                if let Some(slot) = self.panic_slot.take()
                    && s.code() == Some(PANIC_EXIT_CODE)
                {
                    self.panic = slot.read();
                }
                return Ok(Some(s));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::Io(e));
            }
        }
    }

    /// Waits for the child to exit and reaps it.
    pub fn wait(&mut self) -> Result<ExitStatus, Error> {
        match self.reap(true)? {
            Some(s) => Ok(s),
            None => Err(Error::Io(std::io::Error::other(
                "waitpid returned no status",
            ))),
        }
    }

    /// Reaps the child if it has exited; never blocks.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        self.reap(false)
    }

    /// Waits for the child to exit, reaps it, and tells how it ended: exited with a code,
    /// panicked (with the panic's message and location), or killed by a signal. See
    /// [`Outcome`].
    ///
    /// ```no_run
    /// use forkipc::{Outcome, fork};
    /// let mut child = fork((), |()| -> i32 { panic!("input {} is bad", 7) })?;
    /// match child.wait_outcome()? {
    ///     Outcome::Panicked { message, .. } => assert_eq!(message, "input 7 is bad"),
    ///     other => println!("{other}"),
    /// }
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn wait_outcome(&mut self) -> Result<Outcome, Error> {
        let status = self.wait()?;
        Ok(Outcome::from_status(status, self.panic.clone()))
    }

    /// How the child ended, once it has been reaped (by [`wait`](Child::wait),
    /// [`try_wait`](Child::try_wait), [`wait_timeout`](Child::wait_timeout),
    /// [`wait_or_kill`](Child::wait_or_kill) or [`wait_outcome`](Child::wait_outcome));
    /// `None` while it has not been. Never blocks, never makes a system call.
    pub fn outcome(&self) -> Option<Outcome> {
        self.status
            .map(|s| Outcome::from_status(s, self.panic.clone()))
    }

    /// Waits at most `timeout` for the child to exit (any duration, `Duration::MAX`
    /// included). `Ok(None)`: still running.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let mut child = forkipc::fork((), |()| loop {
    ///     std::thread::sleep(Duration::from_secs(1));
    /// })?;
    /// assert!(child.wait_timeout(Duration::from_millis(50))?.is_none()); // still running
    /// child.kill()?;
    /// assert!(child.wait()?.code().is_none()); // killed by a signal
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, Error> {
        let start = Instant::now();
        let mut nap = Duration::from_micros(100);
        loop {
            if let Some(s) = self.reap(false)? {
                return Ok(Some(s));
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            match &self.pidfd {
                Some(fd) => {
                    // A pidfd polls readable when the process exits: sleep until then.
                    let ms = left.as_millis().min(i32::MAX as u128) as i32;
                    let mut pfd = libc::pollfd {
                        fd: std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; `poll` only writes `revents`.
                    unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
                }
                None => {
                    std::thread::sleep(nap.min(left));
                    nap = (nap * 2).min(Duration::from_millis(10));
                }
            }
        }
    }

    /// Waits at most `timeout` for the child to exit; if it has not, kills it (SIGKILL) and
    /// reaps it. Either way the child is reaped when this returns `Ok`: the status is the
    /// child's own if it exited in time, a death by SIGKILL otherwise. For a worker that must
    /// not outlive a deadline; [`outcome`](Child::outcome) then tells how it ended.
    ///
    /// Only the child is killed, not processes it forked. Any duration is accepted
    /// (`Duration::MAX`: wait for ever).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let mut child = forkipc::fork((), |()| loop {
    ///     std::thread::sleep(Duration::from_secs(1));
    /// })?;
    /// let status = child.wait_or_kill(Duration::from_millis(100))?;
    /// assert!(status.code().is_none()); // it did not finish in time: killed
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn wait_or_kill(&mut self, timeout: Duration) -> Result<ExitStatus, Error> {
        if let Some(s) = self.wait_timeout(timeout)? {
            return Ok(s);
        }
        self.kill()?;
        self.wait()
    }

    /// Sends SIGKILL to the child (unless it has already been reaped). A child that is already
    /// gone is not an error.
    pub fn kill(&mut self) -> Result<(), Error> {
        match self.signal(libc::SIGKILL) {
            Err(Error::Io(e)) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r,
        }
    }

    /// Sends `signal` to the child (e.g. `libc::SIGSTOP`), unless it has been reaped; an
    /// `Error::Io` with `ESRCH` if it is gone.
    ///
    /// The signal goes through the child's pidfd, so it reaches the child or nobody: even when
    /// the child was reaped behind our back (SIGCHLD ignored, or a `waitpid(-1)` elsewhere) and
    /// its pid now names another process. Only where the kernel gave no pidfd (before Linux
    /// 5.3, or a seccomp filter) is it sent by pid.
    pub fn signal(&mut self, signal: i32) -> Result<(), Error> {
        if self.status.is_some() {
            return Ok(());
        }
        match &self.pidfd {
            Some(fd) => crate::sys::pidfd_send_signal(fd.as_fd(), signal),
            None => crate::sys::kill(self.pid, signal),
        }
        .map_err(Error::Io)
    }
}
