//! Fork tests for `Select`: many children, every endpoint kind, deaths, idleness, scale,
//! fairness, removal.
//!
//! Every case runs in its own forked process (see `support`); every wait has a deadline and
//! every child is killed and reaped on every exit path.

mod support;

use std::time::{Duration, Instant};

use forkipc::{DisconnectReason, Receiver, Select, Sender, TryRecvError, WaitPolicy};
use support::{Context, Outcome};

fn main() {
    support::run(cases![
        fan_in_many_children_keeps_per_child_order,
        every_endpoint_kind_in_one_select,
        blocked_select_sees_a_death,
        death_seen_with_more_peers_than_futex_waitv_takes,
        idle_select_uses_no_cpu_and_no_wakeups,
        select_over_512_receivers,
        fairness_among_ready_operations,
        removed_operation_is_not_reported,
        regression_select_killed_after_a_death_wake_up_hands_it_on,
        plain_sleeper_killed_after_a_death_wake_up_hands_it_on,
        select_killed_after_a_death_wake_up_hands_it_to_another_select,
        multithreaded_sleeper_killed_after_a_death_wake_up_hands_it_on,
    ]);
}

const LONG: Duration = Duration::from_secs(30);

use support::ReapAll as Reap;

fn fan_in_many_children_keeps_per_child_order() -> Outcome {
    const CHILDREN: usize = 16;
    const PER: u64 = 20_000;
    let mut rxs = Vec::new();
    let mut kids = Reap(Vec::new());
    for k in 0..CHILDREN {
        let (tx, rx) = forkipc::channel::<[u64; 2]>(64).ctx("channel")?;
        kids.0.push(
            forkipc::fork(tx, move |tx| {
                for i in 0..PER {
                    if tx.send([k as u64, i]).is_err() {
                        return 1;
                    }
                }
                0
            })
            .ctx("fork")?,
        );
        rxs.push(rx);
    }
    let mut sel = Select::new();
    for rx in &rxs {
        sel.recv(rx);
    }
    let mut next = [0u64; CHILDREN];
    let mut open = CHILDREN;
    let start = Instant::now();
    while open > 0 {
        ensure!(start.elapsed() < LONG, "fan-in did not finish: {next:?}");
        let i = sel.ready_timeout(LONG).ctx("ready")?;
        match rxs[i].try_recv() {
            Ok([k, seq]) => {
                ensure!(k as usize == i, "message from child {k} on channel {i}");
                ensure!(seq == next[i], "child {i}: got {seq}, expected {}", next[i]);
                next[i] += 1;
            }
            Err(TryRecvError::Disconnected) => {
                sel.remove(i);
                open -= 1;
            }
            Err(TryRecvError::Empty) => return Err(format!("operation {i} was ready but empty")),
        }
    }
    ensure!(next.iter().all(|&n| n == PER), "counts {next:?}");
    for c in &mut kids.0 {
        support::expect_success(c, LONG)?;
    }
    Ok(())
}

fn every_endpoint_kind_in_one_select() -> Outcome {
    let (ttx, trx) = forkipc::channel::<u64>(4).ctx("channel")?;
    let (btx, brx) = forkipc::byte_channel(256).ctx("byte channel")?;
    let (mine, theirs) = forkipc::duplex::<u64, u64>(4).ctx("duplex")?;
    let (full_tx, full_rx) = forkipc::channel::<u64>(1).ctx("channel")?;
    #[cfg(feature = "serde")]
    let (stx, srx) = forkipc::serde_channel::<String>(1024).ctx("serde channel")?;
    while full_tx.try_send(0).is_ok() {}
    let go = forkipc::AnonRegion::new(4096).ctx("region")?;
    let stage = go
        .alloc(std::sync::atomic::AtomicU32::new(0))
        .ctx("alloc")?;
    #[cfg(feature = "serde")]
    let ends = (ttx, btx, theirs, full_rx, stx);
    #[cfg(not(feature = "serde"))]
    let ends = (ttx, btx, theirs, full_rx);
    let child = forkipc::fork(ends, move |e| {
        let wait_stage = |n: u32| {
            while stage.load(std::sync::atomic::Ordering::SeqCst) < n {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        wait_stage(1);
        let _ = e.0.send(1);
        wait_stage(2);
        let _ = e.1.send(b"bytes");
        wait_stage(3);
        let _ = e.2.send(3);
        wait_stage(4);
        let _ = e.3.recv(); // makes room in the full channel
        #[cfg(feature = "serde")]
        {
            wait_stage(5);
            let _ = e.4.send(&"serde".to_string());
        }
        wait_stage(99);
        0
    })
    .ctx("fork")?;
    let mut kids = Reap(vec![child]);
    let mut sel = Select::new();
    let i_typed = sel.recv(&trx);
    let i_bytes = sel.recv(&brx);
    let i_duplex = sel.recv(&mine);
    let i_room = sel.send(&full_tx);
    #[cfg(feature = "serde")]
    let i_serde = sel.recv(&srx);
    ensure!(sel.try_ready().is_err(), "nothing is ready yet");
    #[cfg_attr(not(feature = "serde"), allow(unused_mut))]
    let mut expect = vec![(1, i_typed), (2, i_bytes), (3, i_duplex), (4, i_room)];
    #[cfg(feature = "serde")]
    expect.push((5, i_serde));
    for (st, want) in expect {
        std::thread::sleep(Duration::from_millis(20)); // let the select go to sleep first
        stage.store(st, std::sync::atomic::Ordering::SeqCst);
        let got = sel.ready_timeout(Duration::from_secs(5)).ctx("ready")?;
        ensure!(
            got == want,
            "stage {st}: operation {got} ready, expected {want}"
        );
        match st {
            1 => ensure!(trx.try_recv() == Ok(1), "typed"),
            2 => ensure!(
                brx.try_recv().ok().as_deref() == Some(&b"bytes"[..]),
                "bytes"
            ),
            3 => ensure!(mine.try_recv() == Ok(3), "duplex"),
            4 => ensure!(full_tx.try_send(9).is_ok(), "room to send"),
            _ => {
                #[cfg(feature = "serde")]
                ensure!(srx.try_recv().ok().as_deref() == Some("serde"), "serde");
            }
        }
        sel.remove(want);
    }
    stage.store(99, std::sync::atomic::Ordering::SeqCst);
    support::expect_success(&mut kids.0[0], LONG)?;
    Ok(())
}

fn blocked_select_sees_a_death() -> Outcome {
    let (tx, rx) = forkipc::channel::<u64>(4).ctx("channel")?;
    let (_tx2, rx2) = forkipc::channel::<u64>(4).ctx("channel")?; // a live, silent peer (us)
    let child = forkipc::fork(tx, |_tx| {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .ctx("fork")?;
    let mut kids = Reap(vec![child]);
    let mut sel = Select::new();
    let i = sel.recv(&rx);
    sel.recv(&rx2);
    let pid = kids.0[0].id();
    // Kill from a forked helper after the select is asleep.
    let helper = forkipc::fork((), move |()| {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        0
    })
    .ctx("fork killer")?;
    kids.0.push(helper);
    let start = Instant::now();
    let got = sel.ready_timeout(Duration::from_secs(10)).ctx("ready")?;
    let took = start.elapsed();
    ensure!(
        got == i,
        "operation {got} ready, expected the dead peer's {i}"
    );
    ensure!(
        took < Duration::from_secs(2),
        "the death took {took:?} to be seen"
    );
    ensure!(
        rx.try_recv() == Err(TryRecvError::Disconnected),
        "try_recv after the death"
    );
    ensure!(
        rx.disconnect_reason() == Some(DisconnectReason::PeerDied),
        "reason"
    );
    Ok(())
}

fn death_seen_with_more_peers_than_futex_waitv_takes() -> Outcome {
    const PEERS: usize = 130;
    let mut rxs: Vec<Receiver<u64>> = Vec::new();
    let mut kids = Reap(Vec::new());
    for _ in 0..PEERS {
        let (tx, rx) = forkipc::channel::<u64>(1).ctx("channel")?;
        kids.0.push(
            forkipc::fork(tx, |_tx| {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .ctx("fork")?,
        );
        rxs.push(rx);
    }
    let mut sel = Select::new();
    for rx in &rxs {
        sel.recv(rx);
    }
    ensure!(sel.try_ready().is_err(), "nothing ready");
    let victim = PEERS - 1; // beyond the first 126 watched presence words
    let pid = kids.0[victim].id();
    kids.0.push(
        forkipc::fork((), move |()| {
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            0
        })
        .ctx("fork killer")?,
    );
    let start = Instant::now();
    let got = sel.ready_timeout(Duration::from_secs(10)).ctx("ready")?;
    ensure!(got == victim, "operation {got} ready, expected {victim}");
    ensure!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    Ok(())
}

fn idle_select_uses_no_cpu_and_no_wakeups() -> Outcome {
    let mut txs: Vec<Sender<u64>> = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..8 {
        let (tx, rx) = forkipc::channel::<u64>(4).ctx("channel")?;
        txs.push(tx);
        rxs.push(rx);
    }
    let child = forkipc::fork(txs, |_txs| {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .ctx("fork")?;
    let _kids = Reap(vec![child]);
    let mut sel = Select::new();
    for rx in &rxs {
        sel.recv(rx);
    }
    let (r, cpu, switches) = support::cost_of(|| sel.ready_timeout(Duration::from_secs(1)));
    ensure!(r.is_err(), "nothing should be ready: {r:?}");
    // The spin phase costs 50 µs; sleeping costs nothing. (Not a speed claim: a busy or
    // periodically waking select would use hundreds of milliseconds / switches.)
    ensure!(
        cpu < Duration::from_millis(30),
        "an idle select used {cpu:?} of CPU in 1 s"
    );
    ensure!(
        switches <= 3,
        "an idle select woke up {switches} times in 1 s"
    );
    Ok(())
}

fn select_over_512_receivers() -> Outcome {
    const CHILDREN: usize = 8;
    const PER: usize = 64;
    let mut rxs = Vec::new();
    let mut kids = Reap(Vec::new());
    for k in 0..CHILDREN {
        let mut txs = Vec::new();
        for _ in 0..PER {
            let (tx, rx) = forkipc::channel::<u64>(1).ctx("channel")?;
            txs.push(tx);
            rxs.push(rx);
        }
        kids.0.push(
            forkipc::fork(txs, move |txs| {
                std::thread::sleep(Duration::from_millis(50));
                // Backwards, so the last operations are ready first.
                for (j, tx) in txs.iter().enumerate().rev() {
                    if tx.send((k * PER + j) as u64).is_err() {
                        return 1;
                    }
                }
                0
            })
            .ctx("fork")?,
        );
    }
    let mut sel = Select::new();
    for rx in &rxs {
        sel.recv(rx);
    }
    let mut got = vec![false; rxs.len()];
    let mut closed = 0;
    let start = Instant::now();
    while closed < rxs.len() {
        ensure!(start.elapsed() < LONG, "not done: {closed} closed");
        let i = sel.ready_timeout(LONG).ctx("ready")?;
        match rxs[i].try_recv() {
            Ok(v) => {
                ensure!(v as usize == i, "channel {i} carried {v}");
                ensure!(!got[i], "channel {i} delivered twice");
                got[i] = true;
            }
            Err(TryRecvError::Disconnected) => {
                ensure!(got[i], "channel {i} closed before its message");
                sel.remove(i);
                closed += 1;
            }
            Err(TryRecvError::Empty) => return Err(format!("operation {i} ready but empty")),
        }
    }
    for c in &mut kids.0 {
        support::expect_success(c, LONG)?;
    }
    Ok(())
}

fn fairness_among_ready_operations() -> Outcome {
    // Every operation stays ready for the whole measurement (each ring holds 100 messages and
    // only a quarter are taken), so what is measured is the choice, not the scheduler.
    const N: usize = 4;
    const FILL: u64 = 100;
    let mut txs = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..N {
        let (tx, rx) = forkipc::channel::<u64>(128).ctx("channel")?;
        txs.push(tx);
        rxs.push(rx);
    }
    let region = forkipc::AnonRegion::new(4096).ctx("region")?;
    let filled = region
        .alloc(std::sync::atomic::AtomicU32::new(0))
        .ctx("alloc")?;
    let child = forkipc::fork(txs, move |txs| {
        for tx in &txs {
            for i in 0..FILL {
                if tx.send(i).is_err() {
                    return 1;
                }
            }
        }
        filled.store(1, std::sync::atomic::Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .ctx("fork")?;
    let _kids = Reap(vec![child]);
    let start = Instant::now();
    while filled.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        ensure!(start.elapsed() < LONG, "the rings were never filled");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut sel = Select::new();
    for rx in &rxs {
        sel.recv(rx);
    }
    let mut picks = [0u64; N];
    let rounds = FILL * N as u64 / 4;
    for _ in 0..rounds {
        let i = sel.ready_timeout(LONG).ctx("ready")?;
        picks[i] += 1;
        ensure!(
            rxs[i].try_recv().is_ok(),
            "operation {i} ready but no message"
        );
    }
    let share = rounds / N as u64;
    ensure!(
        picks.iter().all(|&p| p + 1 >= share && p <= share + 1),
        "always-ready operations were not chosen in turn: {picks:?} of {rounds}"
    );
    Ok(())
}

fn removed_operation_is_not_reported() -> Outcome {
    let (tx1, rx1) = forkipc::channel::<u64>(4).ctx("channel")?;
    let (tx2, rx2) = forkipc::channel::<u64>(4).ctx("channel")?;
    rx1.set_wait_policy(WaitPolicy::Block);
    let child = forkipc::fork((tx1, tx2), |(tx1, tx2)| {
        let _ = tx1.send(1);
        std::thread::sleep(Duration::from_millis(200));
        let _ = tx2.send(2);
        std::thread::sleep(Duration::from_millis(200));
        0
    })
    .ctx("fork")?;
    let mut kids = Reap(vec![child]);
    let mut sel = Select::new();
    let a = sel.recv(&rx1);
    let b = sel.recv(&rx2);
    sel.remove(a);
    let got = sel.ready_timeout(Duration::from_secs(5)).ctx("ready")?;
    ensure!(got == b, "a removed operation was reported ({got})");
    ensure!(
        rx2.try_recv() == Ok(2),
        "the message on the watched channel"
    );
    ensure!(
        rx1.try_recv() == Ok(1),
        "the unwatched channel still holds its message"
    );
    support::expect_success(&mut kids.0[0], LONG)?;
    Ok(())
}

/// The kernel wakes *one* sleeper on a presence word when its owner dies. A `Select` watching
/// several peer processes sleeps on several presence words but can name only one word in its
/// thread's `list_op_pending`: it used to name its first peer's. Killed right after the kernel
/// woke it for the death of another peer (before it passed the news on), it swallowed that
/// wake-up, and a plain `recv` sleeping on the same dead peer slept for ever.
///
/// Here S watches Q (alive) first and P second and sleeps first on P; Z sleeps on a channel
/// from Q, then X on a channel from P. P is killed: the kernel wakes S, which kills itself at
/// once (test hook). X must still see the death. (`Select`s now sleep on a presence word of
/// their own, `sel`, so X gets its own wake-up on `word`.)
fn regression_select_killed_after_a_death_wake_up_hands_it_on() -> Outcome {
    killed_after_a_death_wake_up(Kind::Select, Kind::Plain, Kind::Plain)
}

/// As above with a plain `recv` as the first sleeper on P: the kernel's wake-up reaches it, it
/// is killed, and the kernel's handling of its `list_op_pending` (P's word) wakes X.
fn plain_sleeper_killed_after_a_death_wake_up_hands_it_on() -> Outcome {
    killed_after_a_death_wake_up(Kind::Plain, Kind::Plain, Kind::Plain)
}

/// All three are `Select`s: S (Q, then P) is woken for P's death and killed; its pending word
/// is the relay, whose one wake-up reaches Z (asleep first on the relay, its own peer alive),
/// and Z's scan must wake X (a `Select` over P's channel).
fn select_killed_after_a_death_wake_up_hands_it_to_another_select() -> Outcome {
    killed_after_a_death_wake_up(Kind::Select, Kind::Select, Kind::Select)
}

/// How a sleeper in these tests waits on its channel(s).
#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Select,
}

/// Blocks on `rx` (a plain `recv`, or a `Select` over it alone) and reports the peer's death
/// as exit status 0.
fn block_until_peer_died(rx: &Receiver<u64>, kind: Kind) -> i32 {
    let died = match kind {
        Kind::Plain => rx.recv().is_err(),
        Kind::Select => {
            let mut sel = Select::new();
            let i = sel.recv(rx);
            sel.ready() == i && rx.try_recv() == Err(TryRecvError::Disconnected)
        }
    };
    if died && rx.disconnect_reason() == Some(DisconnectReason::PeerDied) {
        0
    } else {
        1
    }
}

/// Whether `pid` went to sleep within 10 s and still sleeps 100 ms later.
fn asleep(pid: u32) -> bool {
    support::await_asleep(pid, Duration::from_secs(10)).is_ok() && {
        std::thread::sleep(Duration::from_millis(50));
        support::proc_state(pid) == Some('S')
    }
}

fn killed_after_a_death_wake_up(s_kind: Kind, z_kind: Kind, x_kind: Kind) -> Outcome {
    let (q_tx_s, q_rx_s) = forkipc::channel::<u64>(4).ctx("channel")?;
    let (p_tx_s, p_rx_s) = forkipc::channel::<u64>(4).ctx("channel")?;
    let (q_tx_z, q_rx_z) = forkipc::channel::<u64>(4).ctx("channel")?;
    let (p_tx_x, p_rx_x) = forkipc::channel::<u64>(4).ctx("channel")?;
    let idle = |_ends| -> i32 {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let mut kids = Reap(Vec::new());
    kids.0
        .push(forkipc::fork((q_tx_s, q_tx_z), idle).ctx("fork Q")?);
    kids.0
        .push(forkipc::fork((p_tx_s, p_tx_x), idle).ctx("fork P")?);
    // S: the first sleeper on P; kills itself when woken.
    let s = forkipc::fork((q_rx_s, p_rx_s), move |(q, p)| {
        forkipc::__testing::kill_self_after_next_presence_wake();
        match s_kind {
            Kind::Select => {
                // Q's channel first: its word is the one an old `Select` named.
                let mut sel = Select::new();
                sel.recv(&q);
                sel.recv(&p);
                let _ = sel.ready();
            }
            Kind::Plain => {
                let _ = p.recv();
            }
        }
        2 // not reached: woken, it kills itself
    })
    .ctx("fork S")?;
    let s_pid = s.id();
    kids.0.push(s);
    ensure!(asleep(s_pid), "S did not go to sleep");
    // Z: asleep on a channel from Q (never returns).
    kids.0.push(
        forkipc::fork(q_rx_z, move |rx| {
            let _ = block_until_peer_died(&rx, z_kind);
            3
        })
        .ctx("fork Z")?,
    );
    let z_pid = kids.0[3].id();
    ensure!(asleep(z_pid), "Z did not go to sleep");
    kill_p_and_expect_x_to_hear(&mut kids, p_rx_x, x_kind, 1, 2)?;
    // Z was woken by the relay and ran the scan; its peer lives, so it must go back to sleep
    // (not spin, not return). Right after X exits Z may still be on its way back.
    ensure!(
        asleep(z_pid),
        "Z, whose peer lives, did not go back to sleep"
    );
    Ok(())
}

/// S has two threads asleep on channels from P; the first is the oldest sleeper on P's word,
/// so the kernel wakes it, and S kills itself (both threads name the relay). X, asleep on P
/// too, must still hear of P's death. (From the relay's review.)
fn multithreaded_sleeper_killed_after_a_death_wake_up_hands_it_on() -> Outcome {
    let (a_tx, a_rx) = forkipc::channel::<u64>(4).ctx("channel")?;
    let (b_tx, b_rx) = forkipc::channel::<u64>(4).ctx("channel")?;
    let (x_tx, x_rx) = forkipc::channel::<u64>(4).ctx("channel")?;
    let mut kids = Reap(Vec::new());
    kids.0.push(
        forkipc::fork((a_tx, b_tx, x_tx), |_e| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .ctx("fork P")?,
    );
    let s = forkipc::fork((a_rx, b_rx), move |(a, b)| {
        forkipc::__testing::kill_self_after_next_presence_wake();
        let first = std::thread::spawn(move || {
            let _ = a.recv();
        });
        std::thread::sleep(Duration::from_millis(200));
        let _ = b.recv();
        let _ = first.join();
        2 // not reached: woken, it kills itself
    })
    .ctx("fork S")?;
    let s_pid = s.id();
    kids.0.push(s);
    ensure!(asleep(s_pid), "S did not go to sleep");
    std::thread::sleep(Duration::from_millis(200));
    kill_p_and_expect_x_to_hear(&mut kids, x_rx, Kind::Plain, 0, 1)
}

/// Forks X, asleep on `x_rx` (a channel from P, `kids.0[p]`) as `x_kind` says, waits until it
/// sleeps, kills P, and requires that S (`kids.0[s]`, armed to kill itself when woken) was
/// woken and that X then hears of P's death.
fn kill_p_and_expect_x_to_hear(
    kids: &mut Reap,
    x_rx: Receiver<u64>,
    x_kind: Kind,
    p: usize,
    s: usize,
) -> Outcome {
    kids.0
        .push(forkipc::fork(x_rx, move |rx| block_until_peer_died(&rx, x_kind)).ctx("fork X")?);
    let x = kids.0.len() - 1;
    ensure!(asleep(kids.0[x].id()), "X did not go to sleep");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(kids.0[p].id() as i32, libc::SIGKILL) };
    let st = support::wait_child(&mut kids.0[s], Duration::from_secs(10))?;
    {
        use std::os::unix::process::ExitStatusExt;
        ensure!(
            st.signal() == Some(libc::SIGKILL),
            "S was not woken by the death (it should have killed itself): {st:?}"
        );
    }
    let st = support::wait_child(&mut kids.0[x], Duration::from_secs(10))
        .map_err(|e| format!("X never heard of P's death: {e}"))?;
    ensure!(st.success(), "X: {st:?}");
    Ok(())
}
