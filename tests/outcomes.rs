//! Fork tests for child outcomes: how a child ended (exit code, panic with its message and
//! location, signal), what the peers of a panicking child see (`PeerPanicked`), the panic
//! capture page against huge messages and a compromised child, and `Child::wait_or_kill`.
//!
//! Every case runs in its own forked process (see `support`); every child is reaped on every
//! path ([`Reap`]) and every wait has a deadline.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use forkipc::{
    AnonRegion, DisconnectReason, Outcome, RecvError, TrySendError, byte_channel, channel,
};
use support::{Context, Outcome as CaseResult, Reap};

fn main() {
    // Children panic on purpose: one line each on stderr instead of std's report and backtrace.
    // (forkipc chains to this hook, so it is also what proves that a child's stderr still gets
    // the message.)
    std::panic::set_hook(Box::new(|info| {
        let loc = info.location().map(|l| l.to_string()).unwrap_or_default();
        let p = info.payload();
        let text = p
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| p.downcast_ref::<String>().map(String::as_str));
        let msg: String = text.unwrap_or("Box<dyn Any>").chars().take(80).collect();
        eprintln!("    [pid {}] panicked at {loc}: {msg}", std::process::id());
    }));
    support::run(cases![
        panicked_child_reports_exact_message_and_location,
        panic_payload_kinds,
        exit_codes_are_exited,
        sigkill_is_signaled_9,
        abort_is_signaled_sigabrt,
        huge_panic_message_is_truncated_and_valid,
        compromised_child_scribbling_the_capture_page,
        peer_of_panicking_owner_sees_peer_panicked,
        clean_drop_and_death_are_still_told_apart,
        user_panic_hooks_still_run,
        wait_or_kill_kills_a_sleeper_within_the_deadline,
        wait_or_kill_returns_an_exit_in_time,
        fork_unchecked_children_still_work,
    ]);
}

/// Generous deadline for waiting on children.
const LONG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Forks a child running `f` (its return value is the exit code).
fn spawn(what: &str, f: impl FnOnce() -> i32) -> Result<Reap, String> {
    Ok(Reap(forkipc::fork((), move |()| f()).ctx(what)?))
}

/// Waits (with a deadline) for the child, then returns its outcome.
fn outcome_of(c: &mut Reap, what: &str) -> Result<Outcome, String> {
    support::wait_child(&mut c.0, LONG).map_err(|e| format!("{what}: {e}"))?;
    let o = c.wait_outcome().ctx(what)?;
    let again = c.outcome();
    ensure!(
        again.as_ref() == Some(&o),
        "{what}: outcome() {again:?} != wait_outcome() {o:?}"
    );
    Ok(o)
}

/// Sleeps in short naps for up to `limit` (a child waiting to be killed).
fn linger(limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Panics here when `go`; otherwise returns the location such a panic reports (`line!` and
/// `column!` in a macro give its invocation site, as the panic's location does).
macro_rules! fail_at_site {
    ($go:expr) => {
        if $go {
            panic!("parser failed on input {}", 7)
        } else {
            format!("{}:{}:{}", file!(), line!(), column!())
        }
    };
}

fn parse(go: bool) -> String {
    fail_at_site!(go)
}

/// Everything readable from `fd` until end of file.
fn read_all(fd: i32) -> String {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is an open pipe end owned by the caller, handed over here.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

// ---------------------------------------------------------------------------------------------
// Outcomes.

fn panicked_child_reports_exact_message_and_location() -> CaseResult {
    let want_loc = parse(false);
    // The child's stderr goes to a pipe: the message must still reach it (std's hook runs).
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two ints.
    ensure!(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, "pipe");
    let [rd, wr] = fds;
    let mut c = spawn("panicking child", move || {
        // SAFETY: plain fd operations on fds this process owns.
        unsafe {
            libc::dup2(wr, 2);
            libc::close(wr);
            libc::close(rd);
        }
        parse(true);
        0
    })?;
    // SAFETY: the parent's copy of the write end, no longer needed.
    unsafe { libc::close(wr) };
    let o = outcome_of(&mut c, "panicking child")?;
    ensure!(
        o == Outcome::Panicked {
            message: "parser failed on input 7".into(),
            location: Some(want_loc.clone()),
        },
        "outcome {o:?}, want the message at {want_loc}"
    );
    ensure!(
        o.to_string() == format!("panicked at {want_loc}: parser failed on input 7"),
        "display {o}"
    );
    let st = c.wait().ctx("wait")?;
    ensure!(st.code() == Some(101), "exit status {st:?}");
    let stderr = read_all(rd);
    ensure!(
        stderr.contains("parser failed on input 7") && stderr.contains(&want_loc),
        "the child's stderr lost the panic: {stderr:?}"
    );
    Ok(())
}

fn panic_payload_kinds() -> CaseResult {
    let mut c = spawn("static str", || panic!("a static message"))?;
    match outcome_of(&mut c, "static str")? {
        Outcome::Panicked {
            message,
            location: Some(loc),
        } if message == "a static message" && loc.starts_with(file!()) => {}
        o => return Err(format!("panic!(literal): {o:?}")),
    }

    let mut c = spawn("panic_any", || std::panic::panic_any(42u32))?;
    match outcome_of(&mut c, "panic_any")? {
        Outcome::Panicked {
            message,
            location: Some(loc),
        } if message == "Box<dyn Any>" && loc.starts_with(file!()) => {}
        o => return Err(format!("panic_any(42): {o:?}")),
    }

    // A panic caught inside the child, then another payload resumed: no hook ran for the
    // escaping one, so its location is unknown (not the caught panic's).
    let mut c = spawn("resume_unwind", || {
        let _ = std::panic::catch_unwind(|| -> u8 { panic!("caught inside") });
        std::panic::resume_unwind(Box::new(String::from("resumed")))
    })?;
    let o = outcome_of(&mut c, "resume_unwind")?;
    ensure!(
        o == Outcome::Panicked {
            message: "resumed".into(),
            location: None
        },
        "resume_unwind after a caught panic: {o:?}"
    );

    // Re-raising the caught payload keeps the original location.
    let mut c = spawn("re-raise", || {
        let p = std::panic::catch_unwind(|| -> u8 { panic!("first {}", 1) });
        match p {
            Err(p) => std::panic::resume_unwind(p),
            Ok(_) => 0,
        }
    })?;
    match outcome_of(&mut c, "re-raise")? {
        Outcome::Panicked {
            message,
            location: Some(loc),
        } if message == "first 1" && loc.starts_with(file!()) => {}
        o => return Err(format!("re-raised payload: {o:?}")),
    }

    // A panic caught inside the child that then exits normally is not a panic outcome.
    let mut c = spawn("caught", || {
        let r = std::panic::catch_unwind(|| -> u8 { panic!("handled") });
        if r.is_err() { 4 } else { 5 }
    })?;
    let o = outcome_of(&mut c, "caught")?;
    ensure!(
        o == Outcome::Exited(4),
        "child that caught its panic: {o:?}"
    );
    Ok(())
}

fn exit_codes_are_exited() -> CaseResult {
    let mut c = spawn("exit 3", || 3)?;
    let o = outcome_of(&mut c, "exit 3")?;
    ensure!(
        o == Outcome::Exited(3) && !o.success(),
        "returning 3: {o:?}"
    );
    ensure!(o.to_string() == "exited with status 3", "display {o}");

    let mut c = spawn("exit 0", || 0)?;
    let o = outcome_of(&mut c, "exit 0")?;
    ensure!(o == Outcome::Exited(0) && o.success(), "returning 0: {o:?}");

    // exit(3) from deep inside the child, and exit(101) without a panic.
    let mut c = spawn("process::exit(3)", || std::process::exit(3))?;
    let o = outcome_of(&mut c, "process::exit(3)")?;
    ensure!(o == Outcome::Exited(3), "exit(3): {o:?}");
    let mut c = spawn("exit 101", || 101)?;
    let o = outcome_of(&mut c, "exit 101")?;
    ensure!(
        o == Outcome::Exited(101),
        "returning 101 without a panic: {o:?}"
    );

    let c = spawn("unreaped", || 0)?;
    ensure!(c.outcome().is_none(), "outcome() before any wait");
    Ok(())
}

fn sigkill_is_signaled_9() -> CaseResult {
    let mut c = spawn("sleeper", || {
        linger(LONG);
        0
    })?;
    c.kill().ctx("kill")?;
    let o = outcome_of(&mut c, "killed")?;
    ensure!(o == Outcome::Signaled(9), "SIGKILL: {o:?}");
    ensure!(
        o.to_string() == "killed by signal 9 (SIGKILL)",
        "display {o}"
    );
    Ok(())
}

fn abort_is_signaled_sigabrt() -> CaseResult {
    let mut c = spawn("abort", || std::process::abort())?;
    let o = outcome_of(&mut c, "abort")?;
    ensure!(o == Outcome::Signaled(libc::SIGABRT), "abort: {o:?}");

    // A panic while panicking aborts too: not reported as a panic.
    struct PanicOnDrop;
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            panic!("second panic, in a destructor");
        }
    }
    let mut c = spawn("double panic", || {
        let _bomb = PanicOnDrop;
        panic!("first panic")
    })?;
    let o = outcome_of(&mut c, "double panic")?;
    ensure!(o == Outcome::Signaled(libc::SIGABRT), "double panic: {o:?}");
    Ok(())
}

fn huge_panic_message_is_truncated_and_valid() -> CaseResult {
    // 100 000 two-byte chars: far beyond the page, and a cut at any odd byte splits a char.
    let mut c = spawn("huge panic", || panic!("{}", "é".repeat(100_000)))?;
    match outcome_of(&mut c, "huge panic")? {
        Outcome::Panicked {
            message,
            location: Some(_),
        } => {
            ensure!(
                message.len() <= 4096,
                "message of {} bytes kept",
                message.len()
            );
            let body = message
                .strip_suffix('…')
                .ctx("truncated message without the ellipsis")?;
            ensure!(
                body.len() > 3000 && body.chars().all(|ch| ch == 'é'),
                "truncated body of {} bytes: not a prefix of the message",
                body.len()
            );
        }
        o => return Err(format!("huge panic: {o:?}")),
    }
    Ok(())
}

#[repr(C)]
struct Scribbler {
    pid: AtomicU32,
    rounds: AtomicU32,
}

// SAFETY: `repr(C)`, atomics only.
unsafe impl forkipc::Shareable for Scribbler {}

/// Writes garbage over a capture page: random bytes (invalid UTF-8), lengths far beyond the
/// page, and the "panicked" state.
fn scribble(page: *mut u8, len: usize, rng: &mut support::Rng) {
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes);
    // The header: state 1 (a panic was recorded), then absurd lengths.
    bytes[0..4].copy_from_slice(&1u32.to_ne_bytes());
    bytes[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    bytes[8..12].copy_from_slice(&(0x8000_0000u32 | rng.next_u64() as u32).to_ne_bytes());
    for (i, b) in bytes.iter().enumerate() {
        // SAFETY: `page` is the armed capture page of this process, `len` bytes, mapped for
        // the life of the process; its words are atomics, so byte-wise atomic stores race
        // with nothing the reader does.
        unsafe {
            (*page.add(i).cast::<std::sync::atomic::AtomicU8>()).store(*b, Ordering::Relaxed)
        };
    }
}

fn compromised_child_scribbling_the_capture_page() -> CaseResult {
    let region = AnonRegion::new(4096).ctx("region")?;
    let s = region
        .alloc(Scribbler {
            pid: AtomicU32::new(0),
            rounds: AtomicU32::new(0),
        })
        .ctx("alloc")?;
    // The child scribbles its page, leaves a grandchild scribbling it for ever, and exits
    // with 101 as if it had panicked. The parent reads while the grandchild writes.
    let mut c = spawn("compromised", move || {
        let Some((page, len)) = forkipc::__testing::panic_capture_page() else {
            return 2;
        };
        let mut rng = support::Rng::new(0x5c21bb1e);
        scribble(page, len, &mut rng);
        let page_addr = page as usize;
        let g = forkipc::fork((), move |()| {
            let mut rng = support::Rng::new(0xbad_c0de);
            // SAFETY: getpid has no preconditions.
            s.pid
                .store(unsafe { libc::getpid() } as u32, Ordering::Release);
            loop {
                scribble(page_addr as *mut u8, len, &mut rng);
                s.rounds.fetch_add(1, Ordering::Relaxed);
            }
        });
        if g.is_err() {
            return 3;
        }
        let start = Instant::now();
        while s.rounds.load(Ordering::Relaxed) < 10 && start.elapsed() < LONG {
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: `_exit` leaves at once, like a child that panicked.
        unsafe { libc::_exit(101) }
    })?;
    let o = outcome_of(&mut c, "compromised child");
    let grandchild = s.pid.load(Ordering::Acquire);
    if grandchild != 0 {
        // SAFETY: the grandchild scribbler, orphaned (its parent exited); init reaps it.
        unsafe { libc::kill(grandchild as i32, libc::SIGKILL) };
    }
    let o = o?;
    ensure!(grandchild != 0, "the grandchild scribbler never started");
    match o {
        Outcome::Panicked { message, location } => {
            // At most 3568 bytes read, each at worst one 3-byte replacement character.
            ensure!(
                message.len() <= 3 * 4096,
                "message of {} bytes from a garbage length",
                message.len()
            );
            let loc = location.unwrap_or_default();
            ensure!(loc.len() <= 3 * 512, "location of {} bytes", loc.len());
        }
        o => return Err(format!("scribbled page with state 1 and exit 101: {o:?}")),
    }

    // Garbage state: not a panic, whatever else the page says.
    let mut c = spawn("garbage state", || {
        let Some((page, len)) = forkipc::__testing::panic_capture_page() else {
            return 2;
        };
        scribble(page, len, &mut support::Rng::new(7));
        // SAFETY: the page's first word, an atomic; see `scribble`.
        unsafe { (*page.cast::<AtomicU32>()).store(0xdead_beef, Ordering::Relaxed) };
        101
    })?;
    let o = outcome_of(&mut c, "garbage state")?;
    ensure!(o == Outcome::Exited(101), "garbage state word: {o:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Peers.

fn peer_of_panicking_owner_sees_peer_panicked() -> CaseResult {
    // The child owns a sender: the parent drains, then blocks in recv and sees PeerPanicked.
    let (tx, rx) = channel::<u64>(16).ctx("channel")?;
    let mut c = Reap(
        forkipc::fork(tx, |tx| -> i32 {
            tx.send(1).ok();
            tx.send(2).ok();
            std::thread::sleep(Duration::from_millis(50)); // let the parent block
            panic!("worker gave up")
        })
        .ctx("fork sender")?,
    );
    ensure!(rx.recv() == Ok(1) && rx.recv() == Ok(2), "messages lost");
    let r = rx.recv();
    ensure!(
        r == Err(RecvError::Disconnected),
        "recv after the panic: {r:?}"
    );
    let why = rx.disconnect_reason();
    ensure!(
        why == Some(DisconnectReason::PeerPanicked),
        "receiver's reason {why:?}"
    );
    ensure!(
        DisconnectReason::PeerPanicked.to_string() == "the peer panicked",
        "display"
    );
    match outcome_of(&mut c, "sender child")? {
        Outcome::Panicked { message, .. } if message == "worker gave up" => {}
        o => return Err(format!("sender child: {o:?}")),
    }

    // The child owns a receiver: the parent's try_send and a blocked send see PeerPanicked.
    let (tx, rx) = channel::<u64>(1).ctx("channel")?;
    let (ready_tx, ready_rx) = byte_channel(64).ctx("byte_channel")?;
    let mut c = Reap(
        forkipc::fork((rx, ready_tx), |(rx, ready_tx)| -> i32 {
            let _ = ready_tx.send(b"up");
            // Hold the receiver until the parent is blocked on the full ring, then panic.
            std::thread::sleep(Duration::from_millis(100));
            let _keep = &rx;
            panic!("receiver crashed")
        })
        .ctx("fork receiver")?,
    );
    ensure!(ready_rx.recv().as_deref() == Ok(&b"up"[..]), "child not up");
    // Fill the ring, then block in send until the child panics.
    let mut sent = 0u64;
    while tx.try_send(sent).is_ok() {
        sent += 1;
        ensure!(sent < 1_000_000, "ring never filled");
    }
    let r = tx.send(99);
    ensure!(r.is_err(), "send to a panicked receiver: {r:?}");
    let why = tx.disconnect_reason();
    ensure!(
        why == Some(DisconnectReason::PeerPanicked),
        "sender's reason after send {why:?}"
    );
    let r = tx.try_send(100);
    ensure!(
        matches!(r, Err(TrySendError::Disconnected(100))),
        "try_send {r:?}"
    );
    ensure!(
        tx.disconnect_reason() == Some(DisconnectReason::PeerPanicked),
        "sender's reason after try_send"
    );
    let _ = outcome_of(&mut c, "receiver child")?;

    // Byte channels too.
    let (btx, brx) = byte_channel(256).ctx("byte_channel")?;
    let mut c = Reap(
        forkipc::fork(btx, |btx| -> i32 {
            let _ = btx.send(b"last words");
            panic!("byte sender panicked")
        })
        .ctx("fork byte sender")?,
    );
    ensure!(
        brx.recv().as_deref() == Ok(&b"last words"[..]),
        "byte message lost"
    );
    ensure!(brx.recv().is_err(), "byte recv after the panic");
    ensure!(
        brx.disconnect_reason() == Some(DisconnectReason::PeerPanicked),
        "byte receiver's reason {:?}",
        brx.disconnect_reason()
    );
    let _ = outcome_of(&mut c, "byte sender child")?;
    Ok(())
}

fn clean_drop_and_death_are_still_told_apart() -> CaseResult {
    let (tx, rx) = channel::<u64>(4).ctx("channel")?;
    let mut c = Reap(forkipc::fork(tx, |tx| i32::from(tx.send(5).is_err())).ctx("fork")?);
    ensure!(rx.recv() == Ok(5) && rx.recv().is_err(), "clean drop");
    ensure!(
        rx.disconnect_reason() == Some(DisconnectReason::PeerDropped),
        "clean drop: {:?}",
        rx.disconnect_reason()
    );
    ensure!(
        outcome_of(&mut c, "clean")? == Outcome::Exited(0),
        "clean exit"
    );

    let (tx, rx) = channel::<u64>(4).ctx("channel")?;
    let mut c = Reap(
        forkipc::fork(tx, |tx| -> i32 {
            let _keep = &tx;
            std::process::abort()
        })
        .ctx("fork")?,
    );
    ensure!(rx.recv().is_err(), "recv from an aborted peer");
    ensure!(
        rx.disconnect_reason() == Some(DisconnectReason::PeerDied),
        "abort: {:?}",
        rx.disconnect_reason()
    );
    ensure!(
        outcome_of(&mut c, "aborted")? == Outcome::Signaled(libc::SIGABRT),
        "abort outcome"
    );

    // An endpoint dropped by a panic that is caught inside the child still says "panicked":
    // it was the panic that dropped it.
    let (tx, rx) = channel::<u64>(4).ctx("channel")?;
    let mut c = Reap(
        forkipc::fork(tx, |tx| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || -> u8 {
                let _owned = tx;
                panic!("inner")
            }));
            if r.is_err() { 0 } else { 1 }
        })
        .ctx("fork")?,
    );
    ensure!(rx.recv().is_err(), "recv");
    ensure!(
        rx.disconnect_reason() == Some(DisconnectReason::PeerPanicked),
        "caught panic: {:?}",
        rx.disconnect_reason()
    );
    ensure!(
        outcome_of(&mut c, "caught")? == Outcome::Exited(0),
        "caught exit"
    );
    Ok(())
}

#[repr(C)]
struct HookCounts {
    first: AtomicU32,
    chained: AtomicU32,
    replacing: AtomicU32,
}

// SAFETY: `repr(C)`, atomics only.
unsafe impl forkipc::Shareable for HookCounts {}

fn user_panic_hooks_still_run() -> CaseResult {
    // Leaked: the hooks are process-global and need `'static` data (the case's process ends
    // with the case).
    let region: &'static AnonRegion = Box::leak(Box::new(AnonRegion::new(4096).ctx("region")?));
    let n: &'static HookCounts = region
        .alloc(HookCounts {
            first: AtomicU32::new(0),
            chained: AtomicU32::new(0),
            replacing: AtomicU32::new(0),
        })
        .ctx("alloc")?;
    // A user's hook set before the first fork: forkipc chains to it.
    std::panic::set_hook(Box::new(move |_| {
        n.first.fetch_add(1, Ordering::Relaxed);
    }));
    let mut c = spawn("panics under the user's hook", || panic!("one"))?;
    match outcome_of(&mut c, "first hook")? {
        Outcome::Panicked {
            message,
            location: Some(_),
        } if message == "one" => {}
        o => return Err(format!("under a user's hook: {o:?}")),
    }
    ensure!(
        n.first.load(Ordering::Relaxed) == 1,
        "the user's hook did not run in the child"
    );

    // A hook set later that chains (take_hook): both run, the location is still known.
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        n.chained.fetch_add(1, Ordering::Relaxed);
        prev(info);
    }));
    let mut c = spawn("panics under a chained hook", || panic!("two"))?;
    match outcome_of(&mut c, "chained hook")? {
        Outcome::Panicked {
            message,
            location: Some(_),
        } if message == "two" => {}
        o => return Err(format!("under a chained hook: {o:?}")),
    }
    ensure!(
        n.first.load(Ordering::Relaxed) == 2 && n.chained.load(Ordering::Relaxed) == 1,
        "hooks ran {} / {} times",
        n.first.load(Ordering::Relaxed),
        n.chained.load(Ordering::Relaxed)
    );

    // A hook set later that replaces everything: the message is still captured, the location
    // is unknown.
    std::panic::set_hook(Box::new(move |_| {
        n.replacing.fetch_add(1, Ordering::Relaxed);
    }));
    let mut c = spawn("panics under a replacing hook", || panic!("three"))?;
    let o = outcome_of(&mut c, "replacing hook")?;
    ensure!(
        o == Outcome::Panicked {
            message: "three".into(),
            location: None
        },
        "under a replacing hook: {o:?}"
    );
    ensure!(
        n.replacing.load(Ordering::Relaxed) == 1,
        "the replacing hook did not run"
    );
    let _ = std::panic::take_hook();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// wait_or_kill.

fn wait_or_kill_kills_a_sleeper_within_the_deadline() -> CaseResult {
    let mut c = spawn("sleeper", || {
        linger(LONG);
        0
    })?;
    let pid = c.id();
    let want = Duration::from_millis(200);
    let t = Instant::now();
    let st = c.wait_or_kill(want).ctx("wait_or_kill")?;
    let took = t.elapsed();
    println!(
        "    wait_or_kill(200 ms) on a sleeper returned after {} us",
        took.as_micros()
    );
    ensure!(st.signal() == Some(libc::SIGKILL), "status {st:?}");
    ensure!(took >= want, "returned early: {took:?}");
    ensure!(took < want + Duration::from_secs(2), "overran: {took:?}");
    ensure!(
        c.outcome() == Some(Outcome::Signaled(libc::SIGKILL)),
        "outcome {:?}",
        c.outcome()
    );
    // Reaped: the pid is no longer our child.
    let mut status = 0;
    // SAFETY: `status` is writable; WNOHANG never blocks.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    ensure!(
        r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD),
        "child {pid} not reaped: waitpid gave {r}"
    );
    ensure!(c.try_wait().ctx("try_wait")? == Some(st), "try_wait after");

    // A zero timeout kills at once.
    let mut c = spawn("sleeper 2", || {
        linger(LONG);
        0
    })?;
    let t = Instant::now();
    let st = c.wait_or_kill(Duration::ZERO).ctx("wait_or_kill(0)")?;
    ensure!(st.signal() == Some(libc::SIGKILL), "status {st:?}");
    ensure!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );

    // A stopped child is killed too.
    let mut c = spawn("stopped", || {
        linger(LONG);
        0
    })?;
    c.signal(libc::SIGSTOP).ctx("SIGSTOP")?;
    let st = c
        .wait_or_kill(Duration::from_millis(50))
        .ctx("wait_or_kill stopped")?;
    ensure!(st.signal() == Some(libc::SIGKILL), "stopped child: {st:?}");
    Ok(())
}

fn wait_or_kill_returns_an_exit_in_time() -> CaseResult {
    let mut c = spawn("quick", || {
        std::thread::sleep(Duration::from_millis(20));
        6
    })?;
    let st = c.wait_or_kill(LONG).ctx("wait_or_kill")?;
    ensure!(st.code() == Some(6), "status {st:?}");
    ensure!(c.outcome() == Some(Outcome::Exited(6)), "{:?}", c.outcome());

    let mut c = spawn("panics in time", || panic!("in time"))?;
    let st = c.wait_or_kill(Duration::MAX).ctx("wait_or_kill(MAX)")?;
    ensure!(st.code() == Some(101), "status {st:?}");
    ensure!(
        matches!(c.outcome(), Some(Outcome::Panicked { ref message, .. }) if message == "in time"),
        "{:?}",
        c.outcome()
    );
    // Again, once reaped: the same status, no kill.
    ensure!(
        c.wait_or_kill(Duration::ZERO).ctx("again")? == st,
        "second call"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// fork_unchecked.

fn fork_unchecked_children_still_work() -> CaseResult {
    // A second thread, parked for the whole case, so the process really is multithreaded.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let parked = std::thread::spawn(move || {
        let _ = stop_rx.recv();
    });
    let r = (|| -> CaseResult {
        ensure!(
            matches!(
                forkipc::fork((), |()| 0),
                Err(forkipc::Error::MultiThreaded)
            ),
            "fork from a multithreaded process"
        );
        // SAFETY: the other thread is parked in `recv` and holds no lock the children use;
        // the children only return, panic (std's panic path), or send on a channel.
        let mut c = Reap(unsafe { forkipc::fork_unchecked((), |()| 5) }.ctx("fork_unchecked 5")?);
        let o = outcome_of(&mut c, "fork_unchecked 5")?;
        ensure!(o == Outcome::Exited(5), "fork_unchecked returning 5: {o:?}");

        // SAFETY: as above.
        let mut c = Reap(
            unsafe { forkipc::fork_unchecked((), |()| -> i32 { panic!("unchecked panic") }) }
                .ctx("fork_unchecked panic")?,
        );
        match outcome_of(&mut c, "fork_unchecked panic")? {
            Outcome::Panicked {
                message,
                location: Some(_),
            } if message == "unchecked panic" => {}
            o => return Err(format!("fork_unchecked panicking: {o:?}")),
        }

        let (tx, rx) = channel::<u64>(4).ctx("channel")?;
        // SAFETY: as above; sending on an owned endpoint allocates nothing.
        let mut c = Reap(
            unsafe { forkipc::fork_unchecked(tx, |tx| i32::from(tx.send(77).is_err())) }
                .ctx("fork_unchecked sender")?,
        );
        ensure!(rx.recv() == Ok(77), "message from a fork_unchecked child");
        ensure!(
            rx.recv().is_err() && rx.disconnect_reason() == Some(DisconnectReason::PeerDropped),
            "after the fork_unchecked child: {:?}",
            rx.disconnect_reason()
        );
        let st = c.wait_or_kill(LONG).ctx("wait_or_kill")?;
        ensure!(st.success(), "fork_unchecked sender: {st:?}");
        Ok(())
    })();
    let _ = stop_tx.send(());
    let _ = parked.join();
    r
}
