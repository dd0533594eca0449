//! Fork tests of what happens when the kernel refuses: system calls denied by a seccomp filter
//! (as container profiles written before a call existed do), a wake-up that never comes, a pid
//! that a new process reuses. Each case is named after the defect it found (review, issue 8).
//!
//! The seccomp filters are installed in the case's own process (each case runs in a forked
//! subprocess, see `support`), after the channels it needs are created and its peers forked,
//! so only that process is filtered. They are x86_64 BPF programs; elsewhere the cases that
//! need them report a skip.

mod support;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkipc::{
    __testing, AnonRegion, Child, RecvTimeoutError, WaitPolicy, byte_channel, channel, fork,
};
use support::{
    Context, Deny, Outcome, cpu_time, deny_syscalls, expect_success, kill_and_reap, proc_state,
    wait_child, wait_until,
};

/// Deadline for a child to exit.
const WAIT: Duration = Duration::from_secs(30);

fn main() {
    support::run(cases![
        futex_waitv_eperm_block_recv_does_not_busy_loop,
        futex_wait_eperm_block_recv_does_not_busy_loop,
        failed_membarrier_does_not_lose_a_wakeup,
        padding_skip_wakes_producer_blocked_for_room,
        kill_after_auto_reap_spares_the_pid_reuser,
    ]);
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Runs a child's body: exit status 0 on success, 1 (with the reason on stderr) on failure.
fn child_main(body: impl FnOnce() -> Outcome) -> i32 {
    match body() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("child {} failed: {e}", std::process::id());
            1
        }
    }
}

/// On failure, kills and reaps `children` so that nothing outlives the case; passes `r` on.
fn cleanup(children: &mut [&mut Child], r: Outcome) -> Outcome {
    if r.is_err() {
        for c in children {
            kill_and_reap(c);
        }
    }
    r
}

/// Forks a process that sleeps `delay`, then SIGKILLs `victim` (a sibling, so the caller can
/// stay blocked in a channel operation meanwhile).
fn spawn_killer(victim: u32, delay: Duration) -> Result<Child, String> {
    fork((), move |()| {
        std::thread::sleep(delay);
        // SAFETY: kill has no memory-safety preconditions; `victim` is our parent's unreaped
        // child (SIGCHLD is not ignored here), so the pid cannot have been reused.
        unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) }
    })
    .ctx("fork killer")
}

/// The shared body of the two `*_eperm_*` cases: an idle peer holds the sender; this process,
/// filtered by `rules`, waits in `recv_timeout(1 s)` with `WaitPolicy::Block` and must sleep,
/// not spin; then a sibling kills the peer and the blocked receiver must notice promptly.
fn blocked_recv_under_filter(rules: &[Deny]) -> Outcome {
    if !cfg!(target_arch = "x86_64") {
        println!("    skipped: the seccomp filter is x86_64-only");
        return Ok(());
    }
    let (tx, rx) = channel::<u64>(16).ctx("channel")?;
    let mut peer = fork(tx, |tx| {
        // Alive and idle, holding the sender, until killed.
        std::thread::sleep(WAIT);
        drop(tx);
        0
    })
    .ctx("fork peer")?;
    let r = (|| {
        deny_syscalls(rules)?;
        rx.set_wait_policy(WaitPolicy::Block);
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        let r = rx.recv_timeout(Duration::from_secs(1));
        let (wall, cpu) = (t0.elapsed(), cpu_time() - cpu0);
        println!("    measured: idle blocked recv_timeout(1 s): {cpu:?} CPU in {wall:?}");
        ensure!(r == Err(RecvTimeoutError::Timeout), "idle recv: {r:?}");
        // The bug spun: ~800 ms of CPU in this second.
        ensure!(
            cpu < Duration::from_millis(100),
            "an idle blocked receiver used {cpu:?} of CPU in {wall:?}: it spins"
        );

        // The fallback still notices the peer's death (it re-checks presence on each nap).
        const KILL_AFTER: Duration = Duration::from_millis(200);
        let mut killer = spawn_killer(peer.id(), KILL_AFTER)?;
        let t0 = Instant::now();
        let r = rx.recv_timeout(Duration::from_secs(10));
        let wall = t0.elapsed();
        expect_success(&mut killer, WAIT)?;
        println!("    measured: peer killed after {KILL_AFTER:?}, recv returned after {wall:?}");
        ensure!(
            r == Err(RecvTimeoutError::Disconnected),
            "recv after the peer's death: {r:?}"
        );
        ensure!(
            wall < KILL_AFTER + Duration::from_millis(500),
            "the peer's death was noticed only after {wall:?} (killed at {KILL_AFTER:?})"
        );
        Ok(())
    })();
    cleanup(&mut [&mut peer], r)?;
    let st = wait_child(&mut peer, WAIT)?;
    ensure!(st.signal() == Some(libc::SIGKILL), "peer: {st:?}");
    Ok(())
}

fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, String> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    ensure!(
        fd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process behind `pidfd` has exited (the pidfd polls readable then).
fn exited(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; poll only writes `revents`.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

fn pidfd_kill(pidfd: &OwnedFd) {
    // SAFETY: plain integer arguments and a null siginfo; the fd is a valid pidfd.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

// ---------------------------------------------------------------------------------------------
// Cases

/// Defect 7: `futex_waitv` denied with EPERM (seccomp profiles older than Linux 5.16) was
/// taken for a wake-up, so an idle `Block` receiver retried at once, forever: ~800 ms of CPU
/// per second. It must fall back to a plain futex wait (and still notice the peer's death).
fn futex_waitv_eperm_block_recv_does_not_busy_loop() -> Outcome {
    blocked_recv_under_filter(&[Deny {
        nr: libc::SYS_futex_waitv,
        arg: None,
        errno: libc::EPERM,
    }])
}

/// Defect 7, second half: with `futex_waitv` *and* the fallback's `FUTEX_WAIT_BITSET` denied,
/// a hard error from `futex_wait` was an instant `Retry` that the wait loop spun on. It must
/// nap instead. (Only the shared `FUTEX_WAIT_BITSET` the crate uses is denied; std's private
/// futex calls are untouched.)
fn futex_wait_eperm_block_recv_does_not_busy_loop() -> Outcome {
    blocked_recv_under_filter(&[
        Deny {
            nr: libc::SYS_futex_waitv,
            arg: None,
            errno: libc::EPERM,
        },
        Deny {
            nr: libc::SYS_futex,
            arg: Some((1, libc::FUTEX_WAIT_BITSET as u32)),
            errno: libc::EPERM,
        },
    ])
}

/// Defect 10: when `membarrier(GLOBAL_EXPEDITED)` fails, the sleeper's Dekker handshake is
/// incomplete, and a publisher that relies on it (compiler fence only) can miss `wait = 1` and
/// skip the wake-up. The lost wake-up is made deterministic: another process commits a record
/// straight into the ring *without* looking at `wait` (what the reordered publisher does). The
/// sleeper, whose barrier failed, must bound its sleep and find the message; it used to sleep
/// until its deadline.
fn failed_membarrier_does_not_lose_a_wakeup() -> Outcome {
    if !cfg!(target_arch = "x86_64") {
        println!("    skipped: the seccomp filter is x86_64-only");
        return Ok(());
    }
    const PAYLOAD: &[u8] = b"hello";
    const WRITE_AFTER: Duration = Duration::from_millis(300);
    let (tx, rx) = byte_channel(64).ctx("byte_channel")?;
    let (stop_tx, stop_rx) = byte_channel(64).ctx("stop channel")?;
    let (_, data, cap) = __testing::ring_memory(&rx);
    let data = data as usize;
    ensure!(cap == 64, "data area of {cap} bytes");
    let mut writer = fork((tx, stop_rx), move |(tx, stop_rx)| {
        child_main(|| {
            std::thread::sleep(WRITE_AFTER);
            // The consumer's head is 0: the record goes at index 0. Payload first, then the
            // header with Release (as a commit does); the wait word is not touched.
            let rec = data as *mut u8;
            // SAFETY: the data area is 64 bytes of shared, 8-aligned memory, mapped at the same
            // address here; the record (8 + 8 bytes) lies inside it and the consumer reads it
            // only once the header is non-zero.
            unsafe {
                std::ptr::copy_nonoverlapping(PAYLOAD.as_ptr(), rec.add(8), PAYLOAD.len());
                (*rec.cast::<AtomicU64>()).store(1 << 32 | PAYLOAD.len() as u64, Ordering::Release);
            }
            // Stay alive, holding the sender (closing it would wake the receiver), until the
            // parent is done.
            let r = stop_rx.recv_timeout(WAIT);
            ensure!(r == Err(RecvTimeoutError::Disconnected), "stop: {r:?}");
            drop(tx);
            Ok(())
        })
    })
    .ctx("fork writer")?;
    let r = (|| {
        deny_syscalls(&[Deny {
            nr: libc::SYS_membarrier,
            arg: Some((0, 2)), // MEMBARRIER_CMD_GLOBAL_EXPEDITED; query and register still work
            errno: libc::EPERM,
        }])?;
        rx.set_wait_policy(WaitPolicy::Block);
        let t0 = Instant::now();
        let r = rx.recv_timeout(Duration::from_secs(3));
        let wall = t0.elapsed();
        println!("    measured: record written after {WRITE_AFTER:?}, received after {wall:?}");
        ensure!(r.as_deref() == Ok(PAYLOAD), "recv: {r:?}");
        ensure!(
            wall < Duration::from_secs(1),
            "the message written after {WRITE_AFTER:?} was found only after {wall:?}: the \
             sleeper relied on a wake-up that its failed barrier could not guarantee"
        );
        Ok(())
    })();
    drop(stop_tx);
    cleanup(&mut [&mut writer], r)?;
    expect_success(&mut writer, WAIT)
}

/// Defect 8: skipping a padding record frees space, but `try_read` published `head` without
/// the barrier and the wake-up that `release` does. A producer asleep for exactly that space
/// stayed asleep while the consumer held the next message in place (`recv_ref`).
///
/// Byte arithmetic (64-byte data area; a 16-byte message is a 24-byte record; the producer
/// keeps 8 bytes free after its last record): A at [0, 24), B at [24, 48); once both are
/// consumed (head 48), M does not fit in [48, 64): a padding record fills it and M goes to
/// [0, 24) (tail 88). N (at [24, 48)) needs `88 - head + 24 + 8 <= 64`: head 64, which only
/// the padding skip publishes; then the consumer holds M.
fn padding_skip_wakes_producer_blocked_for_room() -> Outcome {
    let (tx, mut rx) = byte_channel(64).ctx("byte_channel")?;
    let (hdr, data, cap) = __testing::ring_memory(&rx);
    ensure!(cap == 64, "data area of {cap} bytes");
    let region = AnonRegion::new(4096).ctx("region")?;
    let sent = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let msg = |k: u8| [k; 16];
    let mut producer = fork(tx, |tx| {
        child_main(|| {
            tx.set_wait_policy(WaitPolicy::Block);
            for k in 1..=4 {
                tx.send_timeout(&msg(k), WAIT)
                    .ctx(&format!("send message {k}"))?;
                sent.store(u32::from(k), Ordering::SeqCst);
            }
            Ok(())
        })
    })
    .ctx("fork producer")?;
    let pid = producer.id();
    let r = (|| {
        for k in 1..=2 {
            let m = rx.recv_timeout(WAIT).ctx(&format!("recv message {k}"))?;
            ensure!(m == msg(k), "message {k}: {m:?}");
        }
        ensure!(
            wait_until(WAIT, || sent.load(Ordering::SeqCst) == 3),
            "the producer did not send M"
        );
        // SAFETY: the data area is 64 bytes; the padding header is at index 48, 8-aligned.
        let pad = unsafe { &*data.add(48).cast::<AtomicU64>() };
        let pad_hdr = pad.load(Ordering::Acquire);
        ensure!(
            pad_hdr == 2 << 32 | 8,
            "no padding record at 48: {pad_hdr:#x}"
        );
        // The producer's wait word: the ring header puts head, rx and tx on 128-byte lines,
        // and `wait` is the first word of a side's state.
        // SAFETY: the ring header is at least 384 bytes; offset 256 is an aligned u32.
        let tx_wait = unsafe { &*hdr.add(256).cast::<AtomicU32>() };
        ensure!(
            wait_until(WAIT, || tx_wait.load(Ordering::SeqCst) == 1
                && proc_state(pid) == Some('S')),
            "the producer did not go to sleep for room (wait {}, state {:?})",
            tx_wait.load(Ordering::SeqCst),
            proc_state(pid)
        );
        // Past its last re-check: only a wake-up can bring it back now.
        std::thread::sleep(Duration::from_millis(50));
        let held = rx.recv_ref().ctx("recv_ref of M")?;
        ensure!(*held == msg(3), "M: {:?}", &*held);
        let t0 = Instant::now();
        let woke = wait_until(Duration::from_secs(2), || sent.load(Ordering::SeqCst) == 4);
        let waited = t0.elapsed();
        ensure!(
            woke,
            "the producer, blocked for the space the padding skip freed, still sleeps {waited:?} \
             later while M is held"
        );
        println!("    measured: N sent {waited:?} after the padding skip, M still held");
        drop(held);
        let n = rx.recv_timeout(WAIT).ctx("recv N")?;
        ensure!(n == msg(4), "N: {n:?}");
        Ok(())
    })();
    cleanup(&mut [&mut producer], r)?;
    expect_success(&mut producer, WAIT)
}

/// `Child::kill` used `kill(pid)`: with SIGCHLD ignored a child is reaped by the kernel as it
/// exits, its pid is free, and `kill` would signal whichever process got it next. The pid is
/// handed to a new process on purpose (`/proc/sys/kernel/ns_last_pid`); `kill` and `signal` on
/// the old `Child` must not touch it.
fn kill_after_auto_reap_spares_the_pid_reuser() -> Outcome {
    const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
    if std::fs::OpenOptions::new()
        .write(true)
        .open(NS_LAST_PID)
        .is_err()
    {
        println!("    skipped: {NS_LAST_PID} is not writable here");
        return Ok(());
    }
    // SAFETY: setting a signal disposition to SIG_IGN has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut old = fork((), |()| {
        // Live long enough for the parent to open its pidfd.
        std::thread::sleep(Duration::from_millis(100));
        0
    })
    .ctx("fork")?;
    let old_pid = old.id() as libc::pid_t;
    ensure!(
        wait_until(WAIT, || !std::path::Path::new(&format!("/proc/{old_pid}"))
            .exists()),
        "child {old_pid} was not reaped automatically"
    );
    // Hand the freed pid to a new sleeper. Other processes may fork meanwhile: retry.
    let mut reuser = None;
    for _ in 0..50 {
        std::fs::write(NS_LAST_PID, format!("{}", old_pid - 1)).ctx("write ns_last_pid")?;
        // SAFETY: the case process is single-threaded; the child only calls `pause`, which is
        // async-signal-safe, until it is killed.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        }
        ensure!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        let fd = pidfd_open(pid)?;
        if pid == old_pid {
            reuser = Some(fd);
            break;
        }
        pidfd_kill(&fd);
    }
    let Some(reuser) = reuser else {
        println!("    skipped: could not hand pid {old_pid} to a new process (busy machine)");
        return Ok(());
    };
    let r = (|| {
        let k = old.kill();
        std::thread::sleep(Duration::from_millis(100));
        ensure!(
            !exited(&reuser),
            "Child::kill on the auto-reaped child {old_pid} killed the new process that reused \
             its pid (kill returned {k:?})"
        );
        ensure!(k.is_ok(), "kill of an already-gone child: {k:?}");
        let s = old.signal(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(100));
        ensure!(
            !exited(&reuser),
            "Child::signal on the auto-reaped child {old_pid} signalled the new process that \
             reused its pid (signal returned {s:?})"
        );
        Ok(())
    })();
    pidfd_kill(&reuser);
    r
}
