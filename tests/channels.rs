//! Fork tests of the user-facing channels: typed, duplex and byte channels between a process
//! and the children it forks; ordering, back-pressure, timeouts, disconnect by drop and by
//! death (SIGKILL), stopped peers, inert inherited copies, and resource use.
//!
//! Each case runs in its own forked process (see `support`). Children report failures through
//! their exit status (and a line on stderr); the parent reaps every child, also on failure.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use forkipc::bytemuck::{CheckedBitPattern, NoUninit, Pod, Zeroable};
use forkipc::{
    Child, DisconnectReason, Plain, Receiver, RecvError, RecvTimeoutError, SendError,
    SendTimeoutError, Sender, TooLarge, TryRecvError, TrySendError, WaitPolicy, byte_channel,
    byte_duplex, channel, duplex, fork,
};
use support::{Context, Outcome, expect_success, kill_and_reap, proc_state, wait_child};

/// Deadline for a child to exit.
const WAIT: Duration = Duration::from_secs(30);
/// Deadline for a message that should arrive (only a bug makes it that slow).
const RECV: Duration = Duration::from_secs(10);
/// Generous bound on death detection (the contract is 100 ms; measured values are printed).
const DEATH_BOUND: Duration = Duration::from_secs(2);

fn main() {
    support::run(cases![
        ordered_stream_million_u64,
        duplex_100k_round_trips,
        byte_messages_random_lengths,
        timeouts_and_empty,
        full_backpressure_hands_value_back,
        idle_blocked_recv_uses_little_cpu,
        child_death_mid_stream,
        blocked_recv_sees_peer_killed_by_sibling,
        recv_after_idle_peer_killed,
        parent_death_seen_by_child,
        blocked_sender_sees_receiver_death,
        dropped_end_in_live_process,
        dropped_receiver_fails_blocked_send,
        stopped_peer_is_not_dead,
        inert_copies,
        two_hundred_channels_no_extra_fds,
        channel_create_drop_leaves_no_mapping,
        tuples_transfer,
        regression_typed_bool_with_invalid_bits_is_corrupted_not_ub,
        deadlines_bound_sequences_of_calls,
        byte_duplex_round_trips_across_fork,
        mistakes_name_their_fix,
        one_reservation_at_a_time,
    ]);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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

/// On failure, kills and reaps `child` so that nothing outlives the case; passes `r` through.
fn cleanup(child: &mut Child, r: Outcome) -> Outcome {
    if r.is_err() {
        kill_and_reap(child);
    }
    r
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Forks a "killer" that sleeps `delay`, SIGKILLs `victim` (a sibling, so the caller can stay
/// blocked in a channel operation meanwhile) and reports the CLOCK_MONOTONIC time just before
/// the kill.
fn spawn_killer(victim: u32, delay: Duration) -> Result<(Child, Receiver<u64>), String> {
    let (ktx, krx) = channel::<u64>(1).ctx("killer channel")?;
    let child = fork(ktx, move |ktx| {
        child_main(|| {
            std::thread::sleep(delay);
            let t = support::mono_ns();
            // SAFETY: kill has no memory-safety preconditions; `victim` is our parent's
            // unreaped child, so the pid cannot have been reused.
            let r = unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
            ensure!(
                r == 0,
                "kill({victim}): {}",
                std::io::Error::last_os_error()
            );
            ktx.send(t).ctx("report kill time")
        })
    })
    .ctx("fork killer")?;
    Ok((child, krx))
}

/// Waits for `child` and requires that SIGKILL ended it.
fn expect_killed(child: &mut Child) -> Outcome {
    let st = wait_child(child, WAIT)?;
    ensure!(
        st.signal() == Some(libc::SIGKILL),
        "child {} should have been SIGKILLed: {st:?}",
        child.id()
    );
    Ok(())
}

/// Receives `count` values that must continue the sequence at `*next`.
fn expect_sequence(rx: &Receiver<u64>, next: &mut u64, count: u64) -> Outcome {
    for _ in 0..count {
        let v = rx
            .recv_timeout(RECV)
            .ctx(&format!("receiving value {next}"))?;
        ensure!(v == *next, "got {v}, expected {next} (lost or duplicated)");
        *next += 1;
    }
    Ok(())
}

/// A request for the duplex worker: plain integers, fixed layout, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
struct Request {
    id: u64,
    a: u32,
    b: u32,
}

/// The worker's answer to a `Request`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
struct Reply {
    id: u64,
    sum: u64,
    product: u64,
}

fn answer(r: Request) -> Reply {
    Reply {
        id: r.id,
        sum: u64::from(r.a) + u64::from(r.b),
        product: u64::from(r.a) * u64::from(r.b),
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// A million u64 from child to parent arrive in order, none lost or duplicated; when the child
/// exits (dropping its sender) `iter()` ends and the reason is `PeerDropped`.
fn ordered_stream_million_u64() -> Outcome {
    const N: u64 = 1_000_000;
    let (tx, rx) = channel::<u64>(1024).ctx("channel")?;
    let mut child = fork(tx, |tx| {
        child_main(|| {
            for i in 0..N {
                tx.send(i).ctx(&format!("send {i}"))?;
            }
            Ok(())
        })
    })
    .ctx("fork")?;
    let start = Instant::now();
    let r = (|| {
        let mut next = 0u64;
        for v in rx.iter() {
            ensure!(v == next, "got {v}, expected {next}");
            next += 1;
        }
        ensure!(next == N, "iter() ended after {next} of {N} values");
        ensure!(
            rx.disconnect_reason() == Some(DisconnectReason::PeerDropped),
            "reason after the child dropped its sender: {:?}",
            rx.disconnect_reason()
        );
        Ok(())
    })();
    let secs = start.elapsed().as_secs_f64();
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)?;
    println!(
        "    measured: {N} u64 in {:.1} ms ({:.1} M msg/s)",
        secs * 1e3,
        N as f64 / secs / 1e6
    );
    Ok(())
}

/// 100 000 request/reply round trips with a child worker over a duplex of repr(C) structs;
/// dropping the parent's end ends the worker's `iter()` and the child exits 0.
fn duplex_100k_round_trips() -> Outcome {
    const N: u64 = 100_000;
    let (me, worker) = duplex::<Request, Reply>(64).ctx("duplex")?;
    let mut child = fork(worker, |w| {
        child_main(|| {
            let mut served = 0u64;
            for req in w.iter() {
                w.send(answer(req)).ctx("worker reply")?;
                served += 1;
            }
            ensure!(served == N, "worker served {served} of {N}");
            ensure!(
                w.receiver().disconnect_reason() == Some(DisconnectReason::PeerDropped),
                "worker's reason: {:?}",
                w.receiver().disconnect_reason()
            );
            Ok(())
        })
    })
    .ctx("fork")?;
    let start = Instant::now();
    let r = (|| {
        let mut rng = support::Rng::new(0x5eed_d00b);
        for id in 0..N {
            let req = Request {
                id,
                a: rng.next_u64() as u32,
                b: rng.next_u64() as u32,
            };
            me.send(req).ctx("request")?;
            let rep = me.recv_timeout(RECV).ctx(&format!("reply {id}"))?;
            ensure!(rep == answer(req), "reply {rep:?} to {req:?}");
        }
        ensure!(
            me.try_recv() == Err(TryRecvError::Empty),
            "no extra reply expected"
        );
        Ok(())
    })();
    let secs = start.elapsed().as_secs_f64();
    drop(me);
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)?;
    println!(
        "    measured: {N} round trips in {:.1} ms ({:.2} us each)",
        secs * 1e3,
        secs * 1e6 / N as f64
    );
    Ok(())
}

/// Byte messages of random length 0..=20 000 (plus the edge lengths) cross the fork intact;
/// `recv` and `recv_into` agree; a message over `max_message_len()` is refused with `TooLarge`
/// by every send flavour and has no effect.
fn byte_messages_random_lengths() -> Outcome {
    const N: usize = 3_000;
    const SEED: u64 = 0xb17e_5eed;
    let (tx, rx) = byte_channel(65536).ctx("byte_channel")?;
    let max = tx.max_message_len();
    ensure!(
        max == 65536 / 2 - 16,
        "max_message_len {max}, documented cap/2-16"
    );
    ensure!(rx.max_message_len() == max, "receiver's max differs");

    let big = vec![7u8; max + 1];
    let too_large = TooLarge { len: max + 1, max };
    ensure!(
        tx.send(&big) == Err(SendError::Refused((), too_large)),
        "send of max+1 bytes"
    );
    ensure!(
        tx.try_send(&big) == Err(TrySendError::Refused((), too_large)),
        "try_send of max+1 bytes"
    );
    ensure!(
        tx.send_timeout(&big, Duration::from_millis(10))
            == Err(SendTimeoutError::Refused((), too_large)),
        "send_timeout of max+1 bytes"
    );
    ensure!(
        rx.try_recv() == Err(TryRecvError::Empty),
        "a refused message must leave nothing behind"
    );

    // The same deterministic sequence on both sides: edge lengths first, then random ones.
    let message = |rng: &mut support::Rng, i: usize, buf: &mut Vec<u8>| {
        let edges = [0usize, 1, 7, 8, 9, 20_000, max];
        let len = match edges.get(i) {
            Some(&l) => l,
            None => rng.below(20_001) as usize,
        };
        buf.resize(len, 0);
        rng.fill(buf);
    };
    println!("    seed {SEED:#x}");
    let mut child = fork(tx, |tx| {
        child_main(|| {
            let mut rng = support::Rng::new(SEED);
            let mut buf = Vec::new();
            for i in 0..N {
                message(&mut rng, i, &mut buf);
                tx.send(&buf)
                    .ctx(&format!("send message {i} ({} bytes)", buf.len()))?;
            }
            Ok(())
        })
    })
    .ctx("fork")?;
    let r = (|| {
        let mut rng = support::Rng::new(SEED);
        let mut want = Vec::new();
        let mut got = Vec::new();
        for i in 0..N {
            message(&mut rng, i, &mut want);
            if i % 2 == 0 {
                got = rx.recv_timeout(RECV).ctx(&format!("recv message {i}"))?;
            } else {
                let n = rx
                    .recv_into(&mut got)
                    .ctx(&format!("recv_into message {i}"))?;
                ensure!(
                    n == got.len(),
                    "recv_into returned {n}, buffer {}",
                    got.len()
                );
            }
            ensure!(
                got.len() == want.len(),
                "message {i}: {} bytes, expected {}",
                got.len(),
                want.len()
            );
            if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
                return Err(format!(
                    "message {i} ({} bytes) differs at byte {at}",
                    got.len()
                ));
            }
        }
        ensure!(rx.recv().is_err(), "recv after the last message must fail");
        Ok(())
    })();
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)
}

/// Empty channel: `try_recv` is `Empty`, `recv_timeout(50ms)` times out after at least 50 ms,
/// `recv_timeout(ZERO)` times out at once; `recv_timeout(MAX)` receives a later message;
/// `send_timeout(MAX)` blocks on a full ring until room appears; `recv_timeout(ZERO)` still
/// takes a ready message; after the sender left, every flavour reports `Disconnected`.
fn timeouts_and_empty() -> Outcome {
    const N: u64 = 1_000;
    let (tx, rx) = channel::<u64>(4).ctx("channel")?;
    ensure!(
        rx.try_recv() == Err(TryRecvError::Empty),
        "try_recv on an empty channel"
    );
    let t = Instant::now();
    let r = rx.recv_timeout(Duration::from_millis(50));
    let waited = t.elapsed();
    ensure!(
        r == Err(RecvTimeoutError::Timeout),
        "recv_timeout(50ms): {r:?}"
    );
    ensure!(
        waited >= Duration::from_millis(50),
        "recv_timeout(50ms) returned after {waited:?}"
    );
    println!("    measured: recv_timeout(50ms) returned after {waited:?}");
    ensure!(
        rx.recv_timeout(Duration::ZERO) == Err(RecvTimeoutError::Timeout),
        "recv_timeout(ZERO) on an empty channel"
    );
    ensure!(rx.disconnect_reason().is_none(), "spurious disconnect");

    let mut child = fork(tx, |tx| {
        child_main(|| {
            std::thread::sleep(Duration::from_millis(200));
            // The ring holds only a few messages: most of these block until the parent reads.
            for i in 0..N {
                tx.send_timeout(i, Duration::MAX)
                    .ctx(&format!("send_timeout(MAX) {i}"))?;
            }
            Ok(())
        })
    })
    .ctx("fork")?;
    let r = (|child: &mut Child| {
        let t = Instant::now();
        let first = rx.recv_timeout(Duration::MAX).ctx("recv_timeout(MAX)")?;
        ensure!(first == 0, "first value {first}");
        println!(
            "    measured: recv_timeout(MAX) got a message sent ~200 ms later after {:?}",
            t.elapsed()
        );
        // Let the child fill the ring and block in send_timeout(MAX).
        std::thread::sleep(Duration::from_millis(50));
        for want in 1..N - 1 {
            let v = rx.recv_timeout(Duration::MAX).ctx("recv_timeout(MAX)")?;
            ensure!(v == want, "got {v}, expected {want}");
        }
        // The last message is sent before the child exits; once it has, a zero timeout must
        // still take it.
        expect_success(child, WAIT)?;
        let last = rx.recv_timeout(Duration::ZERO);
        ensure!(
            last == Ok(N - 1),
            "recv_timeout(ZERO) with a message ready: {last:?}"
        );
        ensure!(
            rx.recv_timeout(Duration::ZERO) == Err(RecvTimeoutError::Disconnected),
            "recv_timeout(ZERO) after the sender left"
        );
        ensure!(
            rx.recv_timeout(Duration::MAX) == Err(RecvTimeoutError::Disconnected),
            "recv_timeout(MAX) after the sender left"
        );
        ensure!(
            rx.try_recv() == Err(TryRecvError::Disconnected),
            "try_recv after the sender left"
        );
        ensure!(
            rx.recv() == Err(RecvError::Disconnected),
            "recv after the sender left"
        );
        Ok(())
    })(&mut child);
    cleanup(&mut child, r)
}

/// A channel holds at least `capacity` messages; `try_send` on a full ring hands back the very
/// value (`Full(v)`), `send_timeout` hands it back as `Timeout(v)`, and neither leaves anything
/// in the ring. Same for byte channels (`Full`, `Timeout`).
fn full_backpressure_hands_value_back() -> Outcome {
    fn fill_and_check<T: Plain + PartialEq + std::fmt::Debug>(
        capacity: usize,
        make: impl Fn(u64) -> T,
    ) -> Outcome {
        let (tx, rx) = channel::<T>(capacity).ctx("channel")?;
        let mut n = 0u64;
        loop {
            match tx.try_send(make(n)) {
                Ok(()) => n += 1,
                Err(TrySendError::Full(v)) => {
                    ensure!(v == make(n), "Full handed back {v:?}, sent {:?}", make(n));
                    break;
                }
                Err(e) => return Err(format!("try_send {n}: {e:?}")),
            }
            ensure!(n < 1 << 24, "capacity {capacity}: never full");
        }
        ensure!(
            n >= capacity as u64,
            "capacity {capacity}: only {n} messages fit ({})",
            std::any::type_name::<T>()
        );
        let probe = make(u64::MAX);
        let t = Instant::now();
        match tx.send_timeout(probe, Duration::from_millis(20)) {
            Err(SendTimeoutError::Timeout(v)) => ensure!(v == probe, "Timeout handed back {v:?}"),
            other => return Err(format!("send_timeout on a full ring: {other:?}")),
        }
        ensure!(
            t.elapsed() >= Duration::from_millis(20),
            "send_timeout(20ms) gave up after {:?}",
            t.elapsed()
        );
        match tx.send_timeout(probe, Duration::ZERO) {
            Err(SendTimeoutError::Timeout(v)) => ensure!(v == probe, "Timeout handed back {v:?}"),
            other => return Err(format!("send_timeout(ZERO) on a full ring: {other:?}")),
        }
        let got: Vec<T> = rx.try_iter().collect();
        let want: Vec<T> = (0..n).map(&make).collect();
        ensure!(
            got == want,
            "drained {} messages, expected exactly the {n} accepted ones",
            got.len()
        );
        ensure!(rx.try_recv() == Err(TryRecvError::Empty), "ring not empty");
        // Room again: a send succeeds.
        tx.try_send(make(1)).ctx("try_send after draining")?;
        println!(
            "    capacity {capacity} of {}: {n} messages fit",
            std::any::type_name::<T>()
        );
        Ok(())
    }
    for cap in [1, 3, 100, 1000] {
        fill_and_check::<u64>(cap, |i| i)?;
    }
    fill_and_check::<[u64; 5]>(7, |i| [i, !i, i ^ 0x55, 3, i.wrapping_mul(7)])?;
    fill_and_check::<u8>(10, |i| i as u8)?;
    fill_and_check::<Request>(33, |i| Request {
        id: i,
        a: i as u32,
        b: !(i as u32),
    })?;

    // Byte channel.
    let (tx, rx) = byte_channel(1024).ctx("byte_channel")?;
    let msg = [0xabu8; 100];
    let mut n = 0;
    loop {
        match tx.try_send(&msg) {
            Ok(()) => n += 1,
            Err(TrySendError::Full(())) => break,
            Err(e) => return Err(format!("byte try_send {n}: {e:?}")),
        }
        ensure!(n < 1 << 20, "byte ring never full");
    }
    ensure!(n >= 1, "not a single message fit");
    let r = tx.send_timeout(&msg, Duration::from_millis(20));
    ensure!(
        r == Err(SendTimeoutError::Timeout(())),
        "byte send_timeout when full: {r:?}"
    );
    let got = rx.try_iter().count();
    ensure!(got == n, "drained {got} byte messages, {n} were accepted");
    println!("    byte_channel(1024): {n} messages of 100 bytes fit");
    Ok(())
}

/// A process blocked in `recv_timeout(2 s)` on a live but idle peer sleeps instead of spinning:
/// under 5% CPU, with the default policy and with `WaitPolicy::Block`.
fn idle_blocked_recv_uses_little_cpu() -> Outcome {
    let (tx, rx) = channel::<u64>(16).ctx("channel")?;
    let (stop_tx, stop_rx) = channel::<u64>(1).ctx("stop channel")?;
    let mut child = fork((tx, stop_rx), |(tx, stop_rx)| {
        child_main(|| {
            // Alive and idle until the parent drops `stop_tx`.
            let r = stop_rx.recv_timeout(WAIT);
            ensure!(r == Err(RecvTimeoutError::Disconnected), "stop: {r:?}");
            drop(tx);
            Ok(())
        })
    })
    .ctx("fork")?;
    let r = (|| {
        for (policy, wait) in [
            (None, Duration::from_secs(2)),
            (Some(WaitPolicy::Block), Duration::from_secs(1)),
        ] {
            if let Some(p) = policy {
                rx.set_wait_policy(p);
            }
            let cpu0 = support::cpu_time();
            let t0 = Instant::now();
            let r = rx.recv_timeout(wait);
            let wall = t0.elapsed();
            let cpu = support::cpu_time() - cpu0;
            ensure!(
                r == Err(RecvTimeoutError::Timeout),
                "idle recv_timeout: {r:?}"
            );
            let pct = 100.0 * cpu.as_secs_f64() / wall.as_secs_f64();
            println!(
                "    measured: blocked recv_timeout({wait:?}), policy {:?}: {cpu:?} CPU in \
                 {wall:?} = {pct:.2}%",
                rx.wait_policy()
            );
            let low = pct < 5.0;
            ensure!(low, "blocked receiver used {pct:.2}% CPU");
        }
        Ok(())
    })();
    drop(stop_tx);
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)
}

/// A child streaming sequence numbers is SIGKILLed by the parent mid-stream: the parent gets a
/// gap-free prefix 0..k, then `RecvError` promptly, with reason `PeerDied`.
fn child_death_mid_stream() -> Outcome {
    let (tx, rx) = channel::<u64>(256).ctx("channel")?;
    let mut child = fork(tx, |tx| {
        child_main(|| {
            let mut i = 0u64;
            while tx.send(i).is_ok() {
                i += 1;
            }
            Err(format!("send {i} failed before the kill"))
        })
    })
    .ctx("fork")?;
    let r = (|child: &mut Child| {
        let mut next = 0u64;
        expect_sequence(&rx, &mut next, 50_000)?;
        ensure!(
            rx.disconnect_reason().is_none(),
            "disconnected before the kill"
        );
        let t_kill = Instant::now();
        child.kill().ctx("kill")?;
        // Drain until `RecvError`: whatever remains must continue the sequence.
        while let Ok(v) = rx.recv() {
            ensure!(v == next, "got {v}, expected {next} after the kill");
            next += 1;
        }
        let latency = t_kill.elapsed();
        println!(
            "    measured: kill -> RecvError in {:.2} ms (received a gap-free 0..{next})",
            latency.as_secs_f64() * 1e3
        );
        ensure!(latency < DEATH_BOUND, "death noticed after {latency:?}");
        ensure!(
            rx.disconnect_reason() == Some(DisconnectReason::PeerDied),
            "reason: {:?}",
            rx.disconnect_reason()
        );
        // Polling must notice the death too, not report `Empty` forever.
        let polled = rx.try_recv();
        ensure!(
            polled == Err(TryRecvError::Disconnected),
            "try_recv after the death: {polled:?}"
        );
        expect_killed(child)
    })(&mut child);
    cleanup(&mut child, r)
}

/// The parent is blocked in `recv()` (nothing in flight) when a sibling process SIGKILLs the
/// sender's process: the parent wakes with `RecvError` (reason `PeerDied`) promptly.
fn blocked_recv_sees_peer_killed_by_sibling() -> Outcome {
    let (tx, rx) = channel::<u64>(64).ctx("channel")?;
    let mut victim = fork(tx, |tx| {
        child_main(|| {
            for i in 0..10 {
                tx.send(i).ctx("send")?;
            }
            std::thread::sleep(WAIT);
            Err("not killed".into())
        })
    })
    .ctx("fork victim")?;
    let r = (|| {
        let mut next = 0;
        expect_sequence(&rx, &mut next, 10)?;
        ensure!(
            rx.disconnect_reason().is_none(),
            "disconnected before the kill"
        );
        let (mut killer, krx) = spawn_killer(victim.id(), Duration::from_millis(100))?;
        let t0 = Instant::now();
        let res = rx.recv();
        let t_err = support::mono_ns();
        let blocked = t0.elapsed();
        let r = (|| {
            ensure!(
                res == Err(RecvError::Disconnected),
                "recv while blocked: {res:?}"
            );
            ensure!(
                rx.disconnect_reason() == Some(DisconnectReason::PeerDied),
                "reason: {:?}",
                rx.disconnect_reason()
            );
            let t_kill = krx.recv_timeout(RECV).ctx("kill time")?;
            let latency = t_err.saturating_sub(t_kill);
            println!(
                "    measured: blocked recv() woke {:.2} ms after the kill (blocked {blocked:?})",
                ms(latency)
            );
            ensure!(
                Duration::from_nanos(latency) < DEATH_BOUND,
                "death noticed after {:.1} ms",
                ms(latency)
            );
            ensure!(
                blocked >= Duration::from_millis(50),
                "recv returned after {blocked:?}, before the kill"
            );
            Ok(())
        })();
        cleanup(&mut killer, r)?;
        expect_success(&mut killer, WAIT)?;
        expect_killed(&mut victim)
    })();
    cleanup(&mut victim, r)
}

/// The sender has gone idle (everything received) and is SIGKILLed; a `recv_timeout` called
/// right after the kill returns `Disconnected` (reason `PeerDied`) promptly.
fn recv_after_idle_peer_killed() -> Outcome {
    let (tx, rx) = channel::<u64>(64).ctx("channel")?;
    let mut victim = fork(tx, |tx| {
        child_main(|| {
            for i in 0..10 {
                tx.send(i).ctx("send")?;
            }
            std::thread::sleep(WAIT);
            Err("not killed".into())
        })
    })
    .ctx("fork victim")?;
    let r = (|victim: &mut Child| {
        let mut next = 0;
        expect_sequence(&rx, &mut next, 10)?;
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        victim.kill().ctx("kill")?;
        let res = rx.recv_timeout(RECV);
        let latency = t0.elapsed();
        ensure!(
            res == Err(RecvTimeoutError::Disconnected),
            "recv_timeout after the kill: {res:?} after {latency:?}"
        );
        println!(
            "    measured: kill -> Disconnected in {:.2} ms",
            latency.as_secs_f64() * 1e3
        );
        ensure!(latency < DEATH_BOUND, "death noticed after {latency:?}");
        ensure!(
            rx.disconnect_reason() == Some(DisconnectReason::PeerDied),
            "reason: {:?}",
            rx.disconnect_reason()
        );
        expect_killed(victim)
    })(&mut victim);
    cleanup(&mut victim, r)
}

const READY: u64 = 1;
const DONE: u64 = 2;
const FAILED: u64 = 3;

/// The grandchild's side of `parent_death_seen_by_child`.
fn grandchild(rx: Receiver<u64>, report: Sender<[u64; 4]>) -> Outcome {
    let r = (|| {
        for want in 1..=3 {
            let v = rx.recv_timeout(RECV).ctx("G: recv")?;
            ensure!(v == want, "G: got {v}, expected {want}");
        }
        report
            .send([READY, u64::from(std::process::id()), 0, 0])
            .ctx("G: report ready")?;
        let res = rx.recv_timeout(RECV);
        let t = support::mono_ns();
        ensure!(
            res == Err(RecvTimeoutError::Disconnected),
            "G: after its parent's death: {res:?}"
        );
        ensure!(
            rx.disconnect_reason() == Some(DisconnectReason::PeerDied),
            "G: reason {:?}",
            rx.disconnect_reason()
        );
        report.send([DONE, t, 0, 0]).ctx("G: report done")
    })();
    if r.is_err() {
        let _ = report.send([FAILED, u64::from(std::process::id()), 0, 0]);
    }
    r
}

/// The process that dies is the receiver's parent: P forks C; C creates a channel and forks G
/// with the receiver, sends 1, 2, 3 and idles; P SIGKILLs C. G gets 1, 2, 3, then
/// `Disconnected` (`PeerDied`) promptly, and reports through a channel P made before both forks
/// (its sender handed down through both). P is a child subreaper, so it reaps G too.
fn parent_death_seen_by_child() -> Outcome {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag; no memory is involved.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    ensure!(r == 0, "prctl: {}", std::io::Error::last_os_error());
    let (report_tx, report_rx) = channel::<[u64; 4]>(16).ctx("report channel")?;
    let mut c = fork(report_tx, |report| {
        child_main(|| {
            let (tx, rx) = channel::<u64>(16).ctx("C: channel")?;
            let mut g = fork((rx, report), |(rx, report)| {
                child_main(|| grandchild(rx, report))
            })
            .ctx("C: fork G")?;
            for v in 1..=3 {
                tx.send(v).ctx("C: send")?;
            }
            // Wait to be killed; give up (and clean up) after a while.
            let st = g.wait_timeout(WAIT);
            kill_and_reap(&mut g);
            Err(format!("C: not killed; G ended with {st:?}"))
        })
    })
    .ctx("fork C")?;
    let r = (|c: &mut Child| {
        let m = report_rx.recv_timeout(RECV).ctx("G's ready report")?;
        ensure!(m[0] == READY, "G reported {m:?}");
        let g_pid = m[1] as libc::pid_t;
        // Let G block in recv_timeout before its parent dies.
        std::thread::sleep(Duration::from_millis(50));
        let t_kill = support::mono_ns();
        c.kill().ctx("kill C")?;
        expect_killed(c)?;
        // C is reaped, so G has been reparented to us (the subreaper).
        let m = report_rx.recv_timeout(RECV);
        let g_status = support::wait_pid(g_pid, WAIT);
        let m = m.ctx("G's final report")?;
        ensure!(m[0] == DONE, "G reported {m:?} (see its stderr)");
        let latency = m[1].saturating_sub(t_kill);
        println!(
            "    measured: grandchild saw its parent's death {:.2} ms after the kill",
            ms(latency)
        );
        ensure!(
            Duration::from_nanos(latency) < DEATH_BOUND,
            "death noticed after {:.1} ms",
            ms(latency)
        );
        let st = g_status?;
        ensure!(st.success(), "G exited with {st:?}");
        Ok(())
    })(&mut c);
    cleanup(&mut c, r)
}

/// A sender blocked in `send()` on a full ring whose receiver's process is SIGKILLed gets
/// `SendError` handing its value back, promptly, with reason `PeerDied`; later sends fail too.
fn blocked_sender_sees_receiver_death() -> Outcome {
    let (tx, rx) = channel::<u64>(4).ctx("channel")?;
    let mut victim = fork(rx, |rx| {
        child_main(|| {
            let _rx = rx;
            std::thread::sleep(WAIT);
            Err("not killed".into())
        })
    })
    .ctx("fork receiver")?;
    let r = (|| {
        let mut n = 0u64;
        loop {
            match tx.try_send(n) {
                Ok(()) => n += 1,
                Err(TrySendError::Full(v)) => {
                    ensure!(v == n, "Full handed back {v}, sent {n}");
                    break;
                }
                Err(e) => return Err(format!("try_send {n}: {e:?}")),
            }
        }
        ensure!(
            tx.disconnect_reason().is_none(),
            "disconnected before the kill"
        );
        let (mut killer, krx) = spawn_killer(victim.id(), Duration::from_millis(100))?;
        let t0 = Instant::now();
        let res = tx.send(0xdead);
        let t_err = support::mono_ns();
        let blocked = t0.elapsed();
        let r = (|| {
            match res {
                Err(SendError::Disconnected(v)) => {
                    ensure!(v == 0xdead, "SendError handed back {v:#x}")
                }
                Ok(()) => return Err("send on a full ring of a dead receiver succeeded".into()),
            }
            ensure!(
                tx.disconnect_reason() == Some(DisconnectReason::PeerDied),
                "reason: {:?}",
                tx.disconnect_reason()
            );
            ensure!(tx.is_disconnected(), "is_disconnected");
            let t_kill = krx.recv_timeout(RECV).ctx("kill time")?;
            let latency = t_err.saturating_sub(t_kill);
            println!(
                "    measured: blocked send() failed {:.2} ms after the receiver's kill \
                 (blocked {blocked:?})",
                ms(latency)
            );
            ensure!(
                Duration::from_nanos(latency) < DEATH_BOUND,
                "death noticed after {:.1} ms",
                ms(latency)
            );
            ensure!(
                blocked >= Duration::from_millis(50),
                "send returned after {blocked:?}, before the kill"
            );
            // On a full ring, polling must notice the death too, not report `Full` forever.
            let polled = tx.try_send(5);
            ensure!(
                matches!(polled, Err(TrySendError::Disconnected(5))),
                "try_send after the death: {polled:?}"
            );
            ensure!(
                matches!(
                    tx.send_timeout(6, Duration::from_millis(10)),
                    Err(SendTimeoutError::Disconnected(6))
                ),
                "send_timeout after the death"
            );
            Ok(())
        })();
        cleanup(&mut killer, r)?;
        expect_success(&mut killer, WAIT)?;
        expect_killed(&mut victim)
    })();
    cleanup(&mut victim, r)
}

/// A child drops its sender but stays alive: the parent drains everything, then gets
/// `RecvError` with reason `PeerDropped` (not `PeerDied`) while the child still runs.
fn dropped_end_in_live_process() -> Outcome {
    const N: u64 = 1_000;
    let (tx, rx) = channel::<u64>(64).ctx("channel")?;
    let (stop_tx, stop_rx) = channel::<u64>(1).ctx("stop channel")?;
    let mut child = fork((tx, stop_rx), |(tx, stop_rx)| {
        child_main(|| {
            for i in 0..N {
                tx.send(i).ctx("send")?;
            }
            drop(tx);
            // Stay alive until the parent drops `stop_tx`.
            let r = stop_rx.recv_timeout(WAIT);
            ensure!(r == Err(RecvTimeoutError::Disconnected), "stop: {r:?}");
            ensure!(
                stop_rx.disconnect_reason() == Some(DisconnectReason::PeerDropped),
                "stop reason: {:?}",
                stop_rx.disconnect_reason()
            );
            Ok(())
        })
    })
    .ctx("fork")?;
    let r = (|child: &mut Child| {
        let mut next = 0;
        expect_sequence(&rx, &mut next, N)?;
        let res = rx.recv_timeout(RECV);
        ensure!(
            res == Err(RecvTimeoutError::Disconnected),
            "after the drop: {res:?}"
        );
        ensure!(
            rx.recv() == Err(RecvError::Disconnected),
            "recv after the drop"
        );
        ensure!(
            rx.try_recv() == Err(TryRecvError::Disconnected),
            "try_recv after the drop"
        );
        ensure!(rx.iter().next().is_none(), "iter after the drop");
        ensure!(
            rx.disconnect_reason() == Some(DisconnectReason::PeerDropped),
            "reason: {:?}",
            rx.disconnect_reason()
        );
        ensure!(
            child.try_wait().ctx("try_wait")?.is_none(),
            "the child should still be alive"
        );
        Ok(())
    })(&mut child);
    drop(stop_tx);
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)
}

/// The reverse: the parent drops its receiver while the child is blocked in `send()` on a full
/// ring; the child gets `SendError(v)` with its value, reason `PeerDropped`, and every later
/// send fails the same way.
fn dropped_receiver_fails_blocked_send() -> Outcome {
    let (tx, rx) = channel::<u64>(4).ctx("channel")?;
    let mut child = fork(tx, |tx| {
        child_main(|| {
            let mut i = 0u64;
            let t0 = Instant::now();
            let v = loop {
                match tx.send(i) {
                    Ok(()) => i += 1,
                    Err(SendError::Disconnected(v)) => break v,
                }
                ensure!(i < 1 << 20, "the ring never filled");
            };
            ensure!(v == i, "SendError handed back {v}, sent {i}");
            ensure!(i >= 4, "only {i} sends succeeded");
            ensure!(
                t0.elapsed() >= Duration::from_millis(50),
                "send failed after {:?}, before the drop",
                t0.elapsed()
            );
            ensure!(
                tx.disconnect_reason() == Some(DisconnectReason::PeerDropped),
                "reason: {:?}",
                tx.disconnect_reason()
            );
            ensure!(
                matches!(tx.try_send(7), Err(TrySendError::Disconnected(7))),
                "try_send after the drop"
            );
            ensure!(
                matches!(
                    tx.send_timeout(8, Duration::from_secs(1)),
                    Err(SendTimeoutError::Disconnected(8))
                ),
                "send_timeout after the drop"
            );
            ensure!(
                tx.send(9) == Err(SendError::Disconnected(9)),
                "send after the drop"
            );
            Ok(())
        })
    })
    .ctx("fork")?;
    // Let the child fill the ring and block.
    std::thread::sleep(Duration::from_millis(100));
    drop(rx);
    expect_success(&mut child, WAIT)
}

/// SIGSTOP is not death: a receiver waiting on a stopped sender times out (never
/// `Disconnected`), `disconnect_reason()` stays `None`, and after SIGCONT the stream continues
/// with nothing lost.
fn stopped_peer_is_not_dead() -> Outcome {
    let (tx, rx) = channel::<u64>(256).ctx("channel")?;
    let mut child = fork(tx, |tx| {
        child_main(|| {
            let mut i = 0u64;
            while tx.send(i).is_ok() {
                i += 1;
            }
            ensure!(
                tx.disconnect_reason() == Some(DisconnectReason::PeerDropped),
                "child's reason: {:?}",
                tx.disconnect_reason()
            );
            Ok(())
        })
    })
    .ctx("fork")?;
    let r = (|child: &mut Child| {
        let mut next = 0u64;
        expect_sequence(&rx, &mut next, 10_000)?;
        child.signal(libc::SIGSTOP).ctx("SIGSTOP")?;
        let t = Instant::now();
        while proc_state(child.id()) != Some('T') {
            ensure!(t.elapsed() < RECV, "child never stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Drain what was in flight, then wait on the stopped sender.
        let stalled = loop {
            let t = Instant::now();
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(v) => {
                    ensure!(v == next, "got {v}, expected {next}");
                    next += 1;
                }
                Err(RecvTimeoutError::Timeout) => break t.elapsed(),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "a stopped sender was taken for disconnected ({:?})",
                        rx.disconnect_reason()
                    ));
                }
            }
        };
        ensure!(
            stalled >= Duration::from_millis(500),
            "recv_timeout(500ms) timed out after {stalled:?}"
        );
        ensure!(
            rx.disconnect_reason().is_none(),
            "stopped sender: reason {:?}",
            rx.disconnect_reason()
        );
        ensure!(
            rx.try_recv() == Err(TryRecvError::Empty),
            "try_recv while stopped"
        );
        println!(
            "    stopped after {next} values; recv_timeout(500ms) timed out after {stalled:?}"
        );
        child.signal(libc::SIGCONT).ctx("SIGCONT")?;
        expect_sequence(&rx, &mut next, 10_000)?;
        Ok(())
    })(&mut child);
    if r.is_err() {
        let _ = child.signal(libc::SIGCONT);
    }
    drop(rx);
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)
}

/// Copies a process does not own are inert there. In the child, its inherited copies of the
/// parent's `Receiver`, `Sender`, `ByteReceiver` and `ByteSender` report `Disconnected`
/// (reason `NotOwner`) and give values back, and dropping them closes nothing: the parent's
/// ends keep working. In the parent, dropping the forgotten copy of the end handed to the child
/// did not close it either: the child still sends through it afterwards.
fn inert_copies() -> Outcome {
    const N: u64 = 1_000;
    const CHECKED: u64 = u64::MAX;
    let (tx, rx) = channel::<u64>(64).ctx("channel")?;
    let (tx_b, rx_b) = channel::<u64>(4).ctx("channel b")?;
    let (btx, brx) = byte_channel(1024).ctx("byte_channel")?;
    let (go_tx, go_rx) = channel::<u64>(1).ctx("go channel")?;
    let mut kept_rx = Some(rx);
    let mut kept_tx_b = Some(tx_b);
    let mut kept_brx = Some(brx);
    let mut kept_btx = Some(btx);
    let mut child = fork((tx, go_rx), |(tx, go_rx)| {
        child_main(|| {
            let not_owner = Some(DisconnectReason::NotOwner);
            let rx = kept_rx.take().ctx("rx copy")?;
            ensure!(
                rx.disconnect_reason() == not_owner,
                "rx copy: {:?}",
                rx.disconnect_reason()
            );
            ensure!(
                rx.try_recv() == Err(TryRecvError::Disconnected),
                "rx copy try_recv"
            );
            ensure!(
                rx.recv_timeout(Duration::from_millis(10)) == Err(RecvTimeoutError::Disconnected),
                "rx copy recv_timeout"
            );
            ensure!(rx.recv() == Err(RecvError::Disconnected), "rx copy recv");
            ensure!(rx.iter().next().is_none(), "rx copy iter");
            drop(rx);

            let tx_b = kept_tx_b.take().ctx("tx_b copy")?;
            ensure!(
                tx_b.disconnect_reason() == not_owner,
                "tx_b: {:?}",
                tx_b.disconnect_reason()
            );
            ensure!(
                tx_b.send(11) == Err(SendError::Disconnected(11)),
                "tx_b copy send"
            );
            ensure!(
                matches!(tx_b.try_send(12), Err(TrySendError::Disconnected(12))),
                "tx_b copy try_send"
            );
            ensure!(
                matches!(
                    tx_b.send_timeout(13, Duration::from_millis(10)),
                    Err(SendTimeoutError::Disconnected(13))
                ),
                "tx_b copy send_timeout"
            );
            drop(tx_b);

            let brx = kept_brx.take().ctx("brx copy")?;
            ensure!(
                brx.disconnect_reason() == not_owner,
                "brx: {:?}",
                brx.disconnect_reason()
            );
            ensure!(
                brx.try_recv() == Err(TryRecvError::Disconnected),
                "brx copy try_recv"
            );
            ensure!(brx.recv().is_err(), "brx copy recv");
            drop(brx);

            let btx = kept_btx.take().ctx("btx copy")?;
            ensure!(
                btx.disconnect_reason() == not_owner,
                "btx: {:?}",
                btx.disconnect_reason()
            );
            ensure!(
                btx.send(b"x") == Err(SendError::Disconnected(())),
                "btx copy send"
            );
            drop(btx);

            // Tell the parent the copies are gone, then wait until it has checked its ends.
            tx.send(CHECKED).ctx("send CHECKED")?;
            ensure!(go_rx.recv_timeout(RECV) == Ok(1), "go");
            for i in 0..N {
                tx.send(i).ctx("send")?;
            }
            Ok(())
        })
    })
    .ctx("fork")?;
    let r = (|| {
        let rx = kept_rx.take().ctx("rx")?;
        let tx_b = kept_tx_b.take().ctx("tx_b")?;
        let brx = kept_brx.take().ctx("brx")?;
        let btx = kept_btx.take().ctx("btx")?;
        // The parent dropped its copy of `tx` inside `fork`: the channel is still open.
        let first = rx.recv_timeout(RECV).ctx("CHECKED")?;
        ensure!(first == CHECKED, "got {first}");
        ensure!(
            rx.disconnect_reason().is_none(),
            "rx: {:?}",
            rx.disconnect_reason()
        );
        // The child's drops of its inert copies closed nothing.
        ensure!(
            rx_b.disconnect_reason().is_none(),
            "rx_b: {:?}",
            rx_b.disconnect_reason()
        );
        ensure!(
            tx_b.disconnect_reason().is_none(),
            "tx_b: {:?}",
            tx_b.disconnect_reason()
        );
        tx_b.send(5).ctx("tx_b send")?;
        ensure!(
            rx_b.try_recv() == Ok(5),
            "rx_b after the child dropped its copies"
        );
        ensure!(
            rx_b.try_recv() == Err(TryRecvError::Empty),
            "the inert copy sent nothing"
        );
        ensure!(
            brx.disconnect_reason().is_none(),
            "brx: {:?}",
            brx.disconnect_reason()
        );
        btx.send(b"hi").ctx("btx send")?;
        ensure!(
            brx.try_recv().as_deref() == Ok(&b"hi"[..]),
            "brx after the child's drops"
        );
        ensure!(
            brx.try_recv() == Err(TryRecvError::Empty),
            "the inert copy sent nothing"
        );
        go_tx.send(1).ctx("go")?;
        let mut next = 0;
        expect_sequence(&rx, &mut next, N)?;
        ensure!(
            rx.recv_timeout(RECV).is_err(),
            "the child's exit ends the stream"
        );
        ensure!(
            rx.disconnect_reason() == Some(DisconnectReason::PeerDropped),
            "rx at the end: {:?}",
            rx.disconnect_reason()
        );
        Ok(())
    })();
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)
}

/// Channels hold no file descriptor: 200 live channels leave the fd count unchanged.
fn two_hundred_channels_no_extra_fds() -> Outcome {
    // The first channel sets up process-wide state (the presence table); count after it.
    let warm = channel::<u64>(16).ctx("first channel")?;
    let before = support::fd_count();
    let mut keep = Vec::new();
    for i in 0..200u64 {
        let (tx, rx) = channel::<u64>(16).ctx(&format!("channel {i}"))?;
        tx.send(i).ctx("send")?;
        keep.push((tx, rx));
    }
    let during = support::fd_count();
    for (i, (_, rx)) in keep.iter().enumerate() {
        ensure!(rx.try_recv() == Ok(i as u64), "channel {i} does not work");
    }
    println!("    fds: {before} before, {during} with 200 live channels");
    ensure!(during == before, "fd count went from {before} to {during}");
    drop(keep);
    drop(warm);
    Ok(())
}

/// Creating and dropping 1 000 channels (typed, duplex, byte) leaves no mapping behind.
fn channel_create_drop_leaves_no_mapping() -> Outcome {
    drop(channel::<u64>(16).ctx("first channel")?);
    let before = support::mapping_count();
    {
        let _live: Vec<_> = (0..10)
            .map(|_| channel::<u64>(64))
            .collect::<Result<_, _>>()
            .ctx("10 channels")?;
        let during = support::mapping_count();
        ensure!(
            during > before,
            "mapping_count does not see live channels ({before} -> {during})"
        );
    }
    for i in 0..1_000 {
        match i % 3 {
            0 => drop(channel::<u64>(64).ctx("channel")?),
            1 => drop(duplex::<u64, Request>(8).ctx("duplex")?),
            _ => drop(byte_channel(4096).ctx("byte_channel")?),
        }
    }
    let after = support::mapping_count();
    println!("    mappings: {before} before, {after} after creating and dropping 1000 channels");
    ensure!(
        after == before,
        "mapping count went from {before} to {after}"
    );
    Ok(())
}

/// `fork` hands over a tuple of three different endpoint types, and a nested tuple holding a
/// duplex end and a byte receiver; each works in the child and the parent's ends keep working.
fn tuples_transfer() -> Outcome {
    const N: u32 = 100;
    let (tx1, rx1) = channel::<u64>(16).ctx("channel 1")?;
    let (tx2, rx2) = channel::<[u32; 3]>(16).ctx("channel 2")?;
    let (byte_tx, byte_rx) = byte_channel(4096).ctx("byte_channel")?;
    let mut child = fork((tx1, rx2, byte_tx), |(tx1, rx2, byte_tx)| {
        child_main(|| {
            for arr in rx2.iter() {
                tx1.send(arr.iter().map(|&x| u64::from(x)).sum())
                    .ctx("tx1")?;
                byte_tx.send(format!("{arr:?}").as_bytes()).ctx("byte_tx")?;
            }
            Ok(())
        })
    })
    .ctx("fork")?;
    let r = (|| {
        for k in 0..N {
            let arr = [k, k + 1, 2 * k];
            tx2.send(arr).ctx("tx2")?;
            let sum = rx1.recv_timeout(RECV).ctx("rx1")?;
            ensure!(sum == u64::from(4 * k + 1), "sum {sum} for {arr:?}");
            let text = byte_rx.recv_timeout(RECV).ctx("byte_rx")?;
            ensure!(text == format!("{arr:?}").as_bytes(), "bytes for {arr:?}");
        }
        Ok(())
    })();
    drop(tx2);
    let r = r.and_then(|()| {
        ensure!(
            rx1.recv_timeout(RECV).is_err(),
            "rx1 should end with the child"
        );
        ensure!(
            byte_rx.recv_timeout(RECV).is_err(),
            "byte_rx should end with the child"
        );
        Ok(())
    });
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)?;

    // Nested tuple: (Duplex, (ByteReceiver, ())).
    let (me, worker) = duplex::<u64, u64>(8).ctx("duplex")?;
    let (btx, brx) = byte_channel(256).ctx("byte_channel 2")?;
    let mut child = fork((worker, (brx, ())), |(w, (brx, ()))| {
        child_main(|| {
            let msg = brx.recv_timeout(RECV).ctx("brx")?;
            for x in w.iter() {
                w.send(x * msg.len() as u64).ctx("reply")?;
            }
            Ok(())
        })
    })
    .ctx("fork 2")?;
    let r = (|| {
        btx.send(b"three").ctx("btx")?;
        for x in 1..=50u64 {
            me.send(x).ctx("me send")?;
            let y = me.recv_timeout(RECV).ctx("me recv")?;
            ensure!(y == 5 * x, "worker answered {y} for {x}");
        }
        Ok(())
    })();
    drop(me);
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)
}

/// A command with invalid bit patterns (only 1 and 2 are values), validated on receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, CheckedBitPattern, NoUninit)]
#[bytemuck(crate = "forkipc::bytemuck")]
#[repr(u8)]
enum Switch {
    On = 1,
    Off = 2,
}

/// Stores `header` at index `idx` of a ring's data area (Release, as a commit does), after
/// copying `payload` behind it: what a peer writing the shared memory directly can do.
fn forge_record(data: *mut u8, cap: usize, idx: usize, header: u64, payload: &[u8]) {
    assert!(idx.is_multiple_of(8) && idx + 8 + payload.len() <= cap);
    // SAFETY: `idx + 8 + payload.len() <= cap` (asserted): the bytes lie in the data area,
    // mapped while the channel lives. Only this single-threaded process uses the ring now.
    unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), data.add(idx + 8), payload.len()) };
    // SAFETY: `idx` is 8-aligned inside the data area, which is 8-aligned; the consumer reads
    // headers only atomically.
    let h = unsafe { std::sync::atomic::AtomicU64::from_ptr(data.add(idx).cast::<u64>()) };
    h.store(header, std::sync::atomic::Ordering::Release);
}

const MSG: u64 = 1 << 32;
const PAD: u64 = 2 << 32;

/// Regression (issue 8, defect 4: decoding memory the peer can still write). A typed receiver
/// turned the ring's bytes into a `T` unchecked, so a peer that wrote byte 7 where a `bool`
/// goes made safe code hold a `bool` that is neither `true` nor `false` (undefined behaviour).
/// Now the bytes are copied out and validated: the receiver disconnects (`Corrupted`) and never
/// returns the value. Checked on the fast path (the record at the head) and on the general one
/// (a record behind a padding record), for `bool` and for a derived enum.
fn regression_typed_bool_with_invalid_bits_is_corrupted_not_ub() -> Outcome {
    // Fast path: a committed 1-byte record at the head holding 7.
    let (tx, rx) = channel::<bool>(4).ctx("channel::<bool>")?;
    let (_, data, cap) = forkipc::__testing::typed_ring_memory(&rx);
    forge_record(data, cap, 0, MSG | 1, &[7]);
    match rx.try_recv() {
        Ok(b) => {
            return Err(format!(
                "try_recv made a bool of byte 7 (as u8: {})",
                b as u8
            ));
        }
        Err(TryRecvError::Disconnected) => {}
        Err(e) => return Err(format!("try_recv of byte 7: {e:?}, expected Disconnected")),
    }
    ensure!(
        rx.disconnect_reason() == Some(DisconnectReason::Corrupted),
        "reason {:?}, expected Corrupted",
        rx.disconnect_reason()
    );
    ensure!(
        rx.recv_timeout(RECV) == Err(RecvTimeoutError::Disconnected),
        "a corrupted channel must stay disconnected"
    );
    drop((tx, rx));

    // General path: valid messages move the head to the last 16 bytes of the data area; a
    // forged padding record there sends the consumer to a forged record at index 0.
    for (what, forged) in [("byte 7", 7u8), ("byte 0", 0)] {
        let (tx, rx) = channel::<Switch>(4).ctx("channel::<Switch>")?;
        let (_, data, cap) = forkipc::__testing::typed_ring_memory(&rx);
        for i in 0..(cap - 16) / 16 {
            let v = if i % 2 == 0 { Switch::On } else { Switch::Off };
            tx.send(v).ctx("send")?;
            ensure!(rx.recv_timeout(RECV) == Ok(v), "message {i} of the warm-up");
        }
        forge_record(data, cap, 0, MSG | 1, &[forged]);
        forge_record(data, cap, cap - 16, PAD | 8, &[]);
        match rx.recv_timeout(RECV) {
            Ok(v) => {
                return Err(format!("recv made a Switch of {what} (as u8: {})", v as u8));
            }
            Err(RecvTimeoutError::Disconnected) => {}
            Err(e) => return Err(format!("recv of {what}: {e:?}, expected Disconnected")),
        }
        ensure!(
            rx.disconnect_reason() == Some(DisconnectReason::Corrupted),
            "{what}: reason {:?}, expected Corrupted",
            rx.disconnect_reason()
        );
        ensure!(
            rx.try_recv() == Err(TryRecvError::Disconnected),
            "{what}: a corrupted channel must stay disconnected"
        );
    }

    // A valid forged value still arrives: only impossible bits disconnect.
    let (_tx, rx) = channel::<bool>(4).ctx("channel::<bool>")?;
    let (_, data, cap) = forkipc::__testing::typed_ring_memory(&rx);
    forge_record(data, cap, 0, MSG | 1, &[1]);
    ensure!(rx.try_recv() == Ok(true), "a forged valid bool");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------------------------

/// `elapsed` lies in `[at_least, at_least + 2 s)`: a deadline was neither cut short nor
/// overrun by more than a loaded machine explains.
fn ensure_waited(what: &str, elapsed: Duration, at_least: Duration) -> Outcome {
    ensure!(
        elapsed >= at_least && elapsed < at_least + Duration::from_secs(2),
        "{what} returned after {elapsed:?}, expected at least {at_least:?}"
    );
    Ok(())
}

/// `send_deadline` and `recv_deadline` on typed and byte channels and on a duplex: one overall
/// deadline bounds a sequence of calls across fork (the child's messages arrive, then its exit
/// is `Disconnected`, not a timeout); an empty channel times out at the deadline, not before; a
/// deadline already past still takes a ready message or free room, and otherwise times out at
/// once; a full ring times out and hands the value back, having sent nothing; a deadline
/// centuries away is accepted.
fn deadlines_bound_sequences_of_calls() -> Outcome {
    const GAP: Duration = Duration::from_millis(30);
    let far = Instant::now() + Duration::from_secs(300 * 365 * 86_400);

    // Typed, across fork: three messages GAP apart under one deadline, then the disconnect.
    let (tx, rx) = channel::<u64>(4).ctx("channel")?;
    let mut child = fork(tx, |tx| {
        child_main(|| {
            for i in 0..3u64 {
                std::thread::sleep(GAP);
                tx.send_deadline(i, Instant::now() + RECV)
                    .ctx("send_deadline")?;
            }
            Ok(())
        })
    })
    .ctx("fork")?;
    let r = (|| {
        let deadline = Instant::now() + RECV;
        for want in 0..3u64 {
            let got = rx.recv_deadline(deadline).ctx("recv_deadline")?;
            ensure!(got == want, "got {got}, expected {want}");
        }
        let end = rx.recv_deadline(deadline);
        ensure!(
            end == Err(RecvTimeoutError::Disconnected),
            "after the child's exit: {end:?}"
        );
        Ok(())
    })();
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)?;

    // Typed, one process: empty, past, full, far.
    let (tx, rx) = channel::<u64>(1).ctx("channel")?;
    let t = Instant::now();
    let r = rx.recv_deadline(t + Duration::from_millis(50));
    ensure!(r == Err(RecvTimeoutError::Timeout), "empty: {r:?}");
    ensure_waited(
        "recv_deadline(+50ms)",
        t.elapsed(),
        Duration::from_millis(50),
    )?;
    let t = Instant::now();
    let r = rx.recv_deadline(t - Duration::from_millis(1));
    ensure!(r == Err(RecvTimeoutError::Timeout), "past, empty: {r:?}");
    ensure_waited("recv_deadline(past)", t.elapsed(), Duration::ZERO)?;
    tx.send_deadline(1, Instant::now() - Duration::from_millis(1))
        .ctx("send_deadline(past) with room")?;
    ensure!(
        rx.recv_deadline(Instant::now() - Duration::from_millis(1)) == Ok(1),
        "recv_deadline(past) with a message ready"
    );
    let mut n = 0u64;
    while tx.try_send(n).is_ok() {
        n += 1;
    }
    let t = Instant::now();
    let r = tx.send_deadline(77, t + Duration::from_millis(40));
    ensure!(
        r == Err(SendTimeoutError::Timeout(77)),
        "full ring: {r:?} (the value comes back)"
    );
    ensure_waited(
        "send_deadline(+40ms)",
        t.elapsed(),
        Duration::from_millis(40),
    )?;
    for want in 0..n {
        ensure!(rx.recv_deadline(far) == Ok(want), "draining {want} of {n}");
    }
    ensure!(
        rx.try_recv() == Err(TryRecvError::Empty),
        "the timed-out send left something behind"
    );
    tx.send_deadline(5, far).ctx("send_deadline(far)")?;
    ensure!(rx.recv_deadline(far) == Ok(5), "recv_deadline(far)");

    // Byte channel: the same, with () handed back.
    let (btx, brx) = byte_channel(64).ctx("byte_channel")?;
    let t = Instant::now();
    let r = brx.recv_deadline(t + Duration::from_millis(50));
    ensure!(r == Err(RecvTimeoutError::Timeout), "byte, empty: {r:?}");
    ensure_waited(
        "byte recv_deadline(+50ms)",
        t.elapsed(),
        Duration::from_millis(50),
    )?;
    btx.send_deadline(b"abc", Instant::now() - Duration::from_millis(1))
        .ctx("byte send_deadline(past) with room")?;
    let got = brx.recv_deadline(Instant::now() - Duration::from_millis(1));
    ensure!(
        got.as_deref() == Ok(&b"abc"[..]),
        "byte, past, ready: {got:?}"
    );
    while btx.try_send(&[1; 16]).is_ok() {}
    let t = Instant::now();
    let r = btx.send_deadline(&[2; 16], t + Duration::from_millis(40));
    ensure!(r == Err(SendTimeoutError::Timeout(())), "byte, full: {r:?}");
    ensure_waited(
        "byte send_deadline(+40ms)",
        t.elapsed(),
        Duration::from_millis(40),
    )?;
    let big = vec![0u8; btx.max_message_len() + 1];
    let r = btx.send_deadline(&big, far);
    ensure!(r.is_err_and(|e| e.is_refused()), "byte, too large: {r:?}");

    // Duplex, across fork: a worker answering under the client's deadline.
    let (me, worker) = duplex::<u64, u64>(4).ctx("duplex")?;
    let mut child = fork(worker, |w| {
        child_main(|| {
            while let Ok(x) = w.recv_deadline(Instant::now() + RECV) {
                w.send_deadline(x + 1, Instant::now() + RECV)
                    .ctx("worker send_deadline")?;
            }
            Ok(())
        })
    })
    .ctx("fork worker")?;
    let r = (|| {
        let deadline = Instant::now() + RECV;
        for x in 0..100u64 {
            me.send_deadline(x, deadline).ctx("send_deadline")?;
            ensure!(me.recv_deadline(deadline) == Ok(x + 1), "reply to {x}");
        }
        Ok(())
    })();
    drop(me);
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)
}

// ---------------------------------------------------------------------------------------------
// Byte duplex
// ---------------------------------------------------------------------------------------------

/// A byte duplex carries 5 000 requests of random length (0 up to the maximum) to a forked
/// worker and their answers (each request reversed, then its length) back, in order; the
/// worker sees the client's drop as the end of its `iter()` and both ends report why they are
/// disconnected. The worker also answers through a zero-copy grant (`reserve` takes `&self`).
fn byte_duplex_round_trips_across_fork() -> Outcome {
    const N: usize = 5_000;
    const SEED: u64 = 0x00d0_0b1e;
    let (me, worker) = byte_duplex(4096).ctx("byte_duplex")?;
    let max = me.max_message_len();
    ensure!(
        worker.max_message_len() == max,
        "both directions have the same maximum"
    );
    let mut child = fork(worker, move |w| {
        child_main(|| {
            let mut served = 0usize;
            for req in w.iter() {
                let mut rep: Vec<u8> = req.iter().rev().copied().collect();
                rep.extend_from_slice(&(req.len() as u32).to_le_bytes());
                if served.is_multiple_of(2) || rep.len() > max {
                    // Too long to answer in one message: send the length alone.
                    let rep = if rep.len() > max {
                        &rep[rep.len() - 4..]
                    } else {
                        &rep[..]
                    };
                    w.send(rep).ctx("worker send")?;
                } else {
                    let mut g = w.reserve(rep.len()).ctx("worker reserve")?;
                    g.copy_from_slice(&rep);
                    g.commit();
                }
                served += 1;
            }
            ensure!(served == N, "worker served {served} of {N}");
            ensure!(
                w.disconnect_reason() == Some(DisconnectReason::PeerDropped),
                "worker's reason: {:?}",
                w.disconnect_reason()
            );
            Ok(())
        })
    })
    .ctx("fork")?;
    let r = (|| {
        let mut rng = support::Rng::new(SEED);
        let mut req = Vec::new();
        let mut rep = Vec::new();
        for i in 0..N {
            let len = match i {
                0 => 0,
                1 => max,
                _ => rng.below(max as u64 + 1) as usize,
            };
            req.resize(len, 0);
            rng.fill(&mut req);
            me.send(&req).ctx(&format!("request {i} ({len} bytes)"))?;
            let n = me.recv_into(&mut rep).ctx(&format!("reply {i}"))?;
            let (body, tail) = rep.split_at(n - 4);
            ensure!(
                tail == (len as u32).to_le_bytes(),
                "reply {i}: wrong length {tail:?}"
            );
            if len + 4 > max {
                ensure!(body.is_empty(), "reply {i}: a body that cannot fit");
            } else {
                ensure!(
                    body.iter().eq(req.iter().rev()),
                    "reply {i}: body is not the request reversed"
                );
            }
        }
        ensure!(
            me.try_recv() == Err(TryRecvError::Empty),
            "no extra reply expected"
        );
        ensure!(me.disconnect_reason().is_none(), "spurious disconnect");
        Ok(())
    })();
    drop(me);
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)
}

// ---------------------------------------------------------------------------------------------
// Mistakes made loud
// ---------------------------------------------------------------------------------------------

/// Mistakes name their fix. An endpoint that the child closure captures instead of receiving it
/// in `ends` is an inert copy in the child: `send` reports `Disconnected` with the value, the
/// reason is `NotOwner`, whose `Display` says to pass it to `fork` in `ends`, and a debug build
/// writes that once to stderr (read back through a pipe; a release build writes nothing). The
/// parent's end, never handed over, still works. Then `fork` from a process with a second
/// thread is refused with `MultiThreaded`, whose `Display` says why and names the fix for tests
/// (`harness = false`).
fn mistakes_name_their_fix() -> Outcome {
    let (tx, rx) = channel::<u64>(4).ctx("channel")?;
    let mut child = fork((), |()| {
        child_main(|| {
            // stderr into a pipe for the duration, to see the note.
            let mut fds = [0; 2];
            // SAFETY: `fds` is a writable array of two ints.
            let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
            ensure!(r == 0, "pipe2: {}", std::io::Error::last_os_error());
            // SAFETY: dup and dup2 only manipulate this process's descriptor table.
            let saved = unsafe { libc::dup(2) };
            // SAFETY: as above; `fds[1]` is the pipe's write end, open.
            unsafe { libc::dup2(fds[1], 2) };
            let first = tx.send(7); // `tx` is the parent's, captured by the closure
            let second = tx.try_send(8);
            let mut buf = [0u8; 4096];
            // SAFETY: `buf` is writable for its length; the read end is non-blocking.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            // SAFETY: restore stderr (for `child_main`'s report) and close what we opened.
            unsafe {
                libc::dup2(saved, 2);
                libc::close(saved);
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            let note = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();

            ensure!(first == Err(SendError::Disconnected(7)), "send: {first:?}");
            ensure!(
                matches!(second, Err(TrySendError::Disconnected(8))),
                "try_send: {second:?}"
            );
            let reason = tx.disconnect_reason();
            ensure!(
                reason == Some(DisconnectReason::NotOwner),
                "reason: {reason:?}"
            );
            let text = reason.map(|r| r.to_string()).unwrap_or_default();
            ensure!(
                text.contains("pass it to fork() in `ends`"),
                "the reason does not name the fix: {text:?}"
            );
            if cfg!(debug_assertions) {
                ensure!(
                    note.matches("pass it in `ends`").count() == 1,
                    "a debug build must say it once on stderr: {note:?}"
                );
            } else {
                ensure!(note.is_empty(), "a release build wrote: {note:?}");
            }
            println!("    the child was told: {text}");
            Ok(())
        })
    })
    .ctx("fork")?;
    let r = (|| {
        tx.send(1).ctx("the parent's own end")?;
        ensure!(rx.recv_timeout(RECV) == Ok(1), "parent round trip");
        Ok(())
    })();
    cleanup(&mut child, r)?;
    expect_success(&mut child, WAIT)?;

    // A second thread, then fork.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let _ = stop_rx.recv();
    });
    let r = fork((), |()| 0);
    let _ = stop_tx.send(());
    let _ = thread.join();
    match r {
        Err(e @ forkipc::Error::MultiThreaded) => {
            let text = e.to_string();
            println!("    fork with two threads: {text}");
            ensure!(
                text.contains("more than one thread") && text.contains("harness = false"),
                "MultiThreaded does not say why or how to fix it: {text:?}"
            );
            Ok(())
        }
        Err(e) => Err(format!("fork with two threads: {e:?}")),
        Ok(mut c) => {
            kill_and_reap(&mut c);
            Err("fork with two threads succeeded".into())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reservations
// ---------------------------------------------------------------------------------------------

/// Runs `f`, silencing the panic message, and says whether it panicked.
fn panics<R>(f: impl FnOnce() -> R) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.is_err()
}

/// `ByteSender::reserve` takes `&self`, like `send`, and a sender still hands out one
/// reservation at a time (a second would cover the same ring bytes): while a grant lives,
/// another `reserve`, `try_reserve` or send panics and changes nothing; the live grant then
/// commits normally, and once it is committed or dropped the sender works again.
fn one_reservation_at_a_time() -> Outcome {
    let (tx, rx) = byte_channel(4096).ctx("byte_channel")?;
    let mut g = tx.reserve(8).ctx("reserve")?;
    ensure!(
        panics(|| tx.try_reserve(8).map(|g| g.len())),
        "a second try_reserve"
    );
    ensure!(
        panics(|| tx.reserve(8).map(|g| g.len())),
        "a second reserve"
    );
    ensure!(panics(|| tx.send(b"x")), "send while a grant lives");
    ensure!(panics(|| tx.try_send(b"x")), "try_send while a grant lives");
    g.copy_from_slice(b"12345678");
    g.commit();
    tx.send(b"after").ctx("send after the commit")?;
    drop(tx.reserve(4).ctx("reserve, then drop")?);
    tx.send(b"again").ctx("send after a dropped grant")?;
    for want in [&b"12345678"[..], b"after", b"again"] {
        let got = rx.try_recv().ctx("try_recv")?;
        ensure!(got == want, "got {got:?}, expected {want:?}");
    }
    ensure!(
        rx.try_recv() == Err(TryRecvError::Empty),
        "the refused calls sent something"
    );
    Ok(())
}
