//! What every measurement shares: CPU pinning, forking a pinned child that cannot outlive the
//! harness, the watchdog that turns a hang into a non-zero exit, reaping, the "go" pipe that
//! starts a stream, and the sequence stamps every receiver checks.
//!
//! The harness is single-threaded (no system here starts a thread), so forking it is safe and
//! a child may allocate and print like any process.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, alarm};

/// The CPU the harness (the parent of every measurement) runs on.
pub const PARENT_CPU: usize = 0;
/// The CPU every forked peer runs on.
pub const CHILD_CPU: usize = 1;
/// How long one repetition (fork, set-up, measured loop, reap) may take before the watchdog
/// kills the child and the harness exits with status 3.
pub const REP_DEADLINE_SECS: u32 = 30;
/// How long [`reap`] waits for a child to exit after its last message.
const REAP_DEADLINE: Duration = Duration::from_secs(10);

/// Pins the calling process (its only thread) to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set)
        .map_err(|e| format!("sched_setaffinity to CPU {cpu}: {e} (the harness needs 2 CPUs)"))
}

// ---------------------------------------------------------------------------------------------
// Watchdog

/// The pid of the child of the repetition in progress (0: none), killed by the watchdog.
static CURRENT_CHILD: AtomicI32 = AtomicI32::new(0);
/// The pid of the Python helper (0: none), killed by the watchdog too.
static PYTHON: AtomicI32 = AtomicI32::new(0);

/// Records the child the watchdog must kill if the repetition hangs (0: none).
pub fn set_current_child(pid: i32) {
    // Relaxed: read only by the signal handler of this same thread.
    CURRENT_CHILD.store(pid, Ordering::Relaxed);
}

/// Records the Python helper's pid for the watchdog.
pub fn set_python(pid: i32) {
    // Relaxed: as in `set_current_child`.
    PYTHON.store(pid, Ordering::Relaxed);
}

extern "C" fn on_alarm(_: libc::c_int) {
    const MSG: &[u8] = b"\npeers: watchdog: a repetition took longer than its deadline; \
                         killing its peer and exiting\n";
    // Only async-signal-safe calls here: write, kill, waitpid, _exit.
    // SAFETY: MSG is a valid buffer of MSG.len() bytes; fd 2 is stderr.
    unsafe { libc::write(2, MSG.as_ptr().cast(), MSG.len()) };
    for pid in [
        CURRENT_CHILD.load(Ordering::Relaxed),
        PYTHON.load(Ordering::Relaxed),
    ] {
        if pid > 0 {
            // SAFETY: plain system calls on a pid this process forked or spawned; a null
            // status pointer is allowed.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
    // SAFETY: `_exit` ends the process without running anything that is not signal-safe.
    unsafe { libc::_exit(3) };
}

/// Installs the watchdog's SIGALRM handler. Call once, at start.
pub fn install_watchdog() -> Result<(), String> {
    let action = SigAction::new(
        SigHandler::Handler(on_alarm),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler makes only async-signal-safe calls (see `on_alarm`).
    unsafe { signal::sigaction(Signal::SIGALRM, &action) }
        .map(drop)
        .map_err(|e| format!("sigaction(SIGALRM): {e}"))
}

/// Arms (or re-arms) the watchdog for one repetition.
pub fn arm_watchdog() {
    alarm::set(REP_DEADLINE_SECS);
}

/// Disarms the watchdog.
pub fn disarm_watchdog() {
    alarm::cancel();
}

// ---------------------------------------------------------------------------------------------
// Forking peers that are not forkipc's

/// Forks a child pinned to [`CHILD_CPU`] that runs `f` and `_exit`s: status 0 if `f` returned
/// `Ok`, 1 (after printing the error) if it returned `Err`, 101 if it panicked. The child is
/// SIGKILLed by the kernel if the harness dies. Call only while single-threaded.
pub fn fork_child(f: impl FnOnce() -> Result<(), String>) -> Result<Pid, String> {
    let parent = std::process::id();
    // SAFETY: the harness is single-threaded, so the child starts with a consistent copy of
    // every lock and of the allocator, and may run arbitrary code; it never returns from this
    // function (it `_exit`s below).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        set_current_child(pid);
        return Ok(Pid::from_raw(pid));
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: plain system call with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        // The parent may have died before the line above took effect.
        if std::os::unix::process::parent_id() != parent {
            return Err("parent gone".to_string());
        }
        pin_to_cpu(CHILD_CPU)?;
        f()
    }));
    let code = match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("peers: child {}: {e}", std::process::id());
            1
        }
        Err(_) => 101,
    };
    let _ = std::io::stderr().flush();
    // SAFETY: ends the child without unwinding into the parent's code or running its atexit
    // handlers (which belong to the parent).
    unsafe { libc::_exit(code) }
}

/// Waits for `pid` to exit (at most 10 s, then kills it) and checks that it exited with 0.
pub fn reap(pid: Pid) -> Result<(), String> {
    let deadline = Instant::now() + REAP_DEADLINE;
    let result = loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if Instant::now() >= deadline {
                    let _ = signal::kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    break Err(format!("child {pid} did not exit within {REAP_DEADLINE:?}"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(WaitStatus::Exited(_, 0)) => break Ok(()),
            Ok(other) => break Err(format!("child {pid} failed: {other:?}")),
            Err(e) => break Err(format!("waitpid({pid}): {e}")),
        }
    };
    set_current_child(0);
    result
}

/// How long a failed measurement waits for its child to exit by itself (and say why) before
/// killing it.
const FAILED_CHILD_GRACE: Duration = Duration::from_secs(2);

/// Reaps `pid` after a failed measurement (killing it if it has not exited within
/// [`FAILED_CHILD_GRACE`]), and returns the measurement's error with the child's fate appended.
pub fn kill_and_reap(pid: Pid, err: String) -> String {
    let deadline = Instant::now() + FAILED_CHILD_GRACE;
    let status = loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Ok(WaitStatus::StillAlive) => {
                let _ = signal::kill(pid, Signal::SIGKILL);
                break waitpid(pid, None);
            }
            other => break other,
        }
    };
    set_current_child(0);
    format!("{err} (child {pid}: {status:?})")
}

/// Reaps a forkipc child: waits at most 10 s, then kills it; it must have exited with 0.
pub fn reap_forkipc(mut child: forkipc::Child) -> Result<(), String> {
    let result = match child.wait_timeout(REAP_DEADLINE) {
        Ok(Some(status)) if status.success() => Ok(()),
        Ok(Some(status)) => Err(format!("forkipc child {} failed: {status}", child.id())),
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "forkipc child {} did not exit within {REAP_DEADLINE:?}",
                child.id()
            ))
        }
        Err(e) => Err(format!("waiting for forkipc child {}: {e}", child.id())),
    };
    set_current_child(0);
    result
}

/// Kills and reaps a forkipc child after a failed measurement (see [`kill_and_reap`]).
pub fn kill_and_reap_forkipc(mut child: forkipc::Child, err: String) -> String {
    let status = match child.wait_timeout(FAILED_CHILD_GRACE) {
        Ok(Some(status)) => Ok(status),
        _ => {
            let _ = child.kill();
            child.wait()
        }
    };
    set_current_child(0);
    format!("{err} (forkipc child {}: {status:?})", child.id())
}

// ---------------------------------------------------------------------------------------------
// The "go" pipe: a stream's producer sends its warm-up messages, then waits here until the
// consumer has taken them and started its clock.

/// Both ends of the go pipe; after the fork the parent keeps the [`GoSender`], the child the
/// [`GoReceiver`].
pub struct Go {
    rd: File,
    wr: File,
}

impl Go {
    pub fn new() -> Result<Go, String> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
        let (rd, wr) = unsafe {
            (
                File::from(OwnedFd::from_raw_fd(fds[0])),
                File::from(OwnedFd::from_raw_fd(fds[1])),
            )
        };
        Ok(Go { rd, wr })
    }

    /// The parent's end (writing one byte says "go") and the child's end.
    pub fn split(self) -> (GoSender, GoReceiver) {
        (GoSender(self.wr), GoReceiver(self.rd))
    }
}

pub struct GoSender(File);
pub struct GoReceiver(File);

impl GoSender {
    pub fn go(mut self) -> Result<(), String> {
        self.0
            .write_all(b"g")
            .map_err(|e| format!("go pipe: {e} (did the child die?)"))
    }
}

impl GoReceiver {
    pub fn wait(mut self) -> Result<(), String> {
        let mut b = [0u8; 1];
        self.0
            .read_exact(&mut b)
            .map_err(|e| format!("go pipe: {e} (did the parent die?)"))
    }
}

impl GoReceiver {
    /// The producing side of a timed stream: `warm` messages, then wait for the go, then `n`
    /// more (`send` gets each sequence number).
    pub fn send_stream(
        self,
        warm: u64,
        n: u64,
        mut send: impl FnMut(u64) -> Result<(), String>,
    ) -> Result<(), String> {
        for seq in 0..warm {
            send(seq)?;
        }
        self.wait()?;
        for seq in warm..warm + n {
            send(seq)?;
        }
        Ok(())
    }
}

impl GoSender {
    /// The consuming side: take the `warm` messages, start the clock, give the go, take `n`
    /// more; returns the time from the go to the last one.
    pub fn take_stream(
        self,
        warm: u64,
        n: u64,
        mut take: impl FnMut(u64) -> Result<(), String>,
    ) -> Result<Duration, String> {
        for seq in 0..warm {
            take(seq)?;
        }
        let start = Instant::now();
        self.go()?;
        for seq in warm..warm + n {
            take(seq)?;
        }
        Ok(start.elapsed())
    }
}

// ---------------------------------------------------------------------------------------------
// Message stamps

/// A message's payload before stamping: a fixed, non-trivial byte pattern.
pub fn payload(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_mul(131) >> 3) as u8)
        .collect()
}

/// The message number that [`stamp`] stamps wrongly, from `PEERS_CORRUPT_SEQ` (none: never):
/// a self-test showing that a broken transport fails the run instead of reporting a figure.
static CORRUPT_SEQ: AtomicU64 = AtomicU64::new(u64::MAX);

/// Reads `PEERS_CORRUPT_SEQ`. Call once, at start.
pub fn read_corrupt_seq() -> Result<(), String> {
    if let Some(v) = std::env::var_os("PEERS_CORRUPT_SEQ") {
        let v = v.to_string_lossy();
        let seq = v
            .parse::<u64>()
            .map_err(|e| format!("PEERS_CORRUPT_SEQ={v}: {e}"))?;
        // Relaxed: set before any fork, read by this process and its children.
        CORRUPT_SEQ.store(seq, Ordering::Relaxed);
    }
    Ok(())
}

/// Writes `seq` into the first 8 bytes of `msg` and, for messages of 16 bytes or more, its
/// complement into the last 8 (a torn or short message fails one of the two checks).
#[inline]
pub fn stamp(msg: &mut [u8], seq: u64) {
    // Relaxed: see `read_corrupt_seq`.
    let head = if seq == CORRUPT_SEQ.load(Ordering::Relaxed) {
        seq ^ 1
    } else {
        seq
    };
    msg[..8].copy_from_slice(&head.to_le_bytes());
    let n = msg.len();
    if n >= 16 {
        msg[n - 8..].copy_from_slice(&(!seq).to_le_bytes());
    }
}

/// Checks the length and both stamps of a received message.
#[inline]
pub fn check(msg: &[u8], size: usize, seq: u64) -> Result<(), String> {
    if msg.len() != size {
        return Err(format!(
            "message {seq}: {} bytes, expected {size}",
            msg.len()
        ));
    }
    let word = |at: usize| u64::from_le_bytes(msg[at..at + 8].try_into().unwrap_or([0; 8]));
    if word(0) != seq {
        return Err(format!("message {seq}: head stamp is {}", word(0)));
    }
    if size >= 16 && word(size - 8) != !seq {
        return Err(format!("message {seq}: tail stamp does not match"));
    }
    Ok(())
}

/// The wrapping sum of `msg`'s little-endian u64 words (its length is a multiple of 8): what a
/// zero-copy receiver computes to read every byte of a message in place.
#[inline]
pub fn word_sum(msg: &[u8]) -> u64 {
    msg.chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
        .fold(0u64, u64::wrapping_add)
}

/// The [`word_sum`] of the message stamped with `seq` from `payload`: `middle` is the sum of
/// the payload's words other than the first and the last (see [`middle_sum`]).
#[inline]
pub fn expected_sum(size: usize, middle: u64, seq: u64) -> u64 {
    if size >= 16 {
        middle.wrapping_add(seq).wrapping_add(!seq)
    } else {
        seq
    }
}

/// The sum of `payload`'s u64 words other than the first and the last.
pub fn middle_sum(payload: &[u8]) -> u64 {
    let n = payload.len();
    if n < 16 {
        return 0;
    }
    word_sum(&payload[8..n - 8])
}
