//! Many children: `Select` and `Pool`, each against what a user would otherwise write, in the
//! same run (same CPUs, same repetition scheme).
//!
//! * Select round trips: a ping-pong over one duplex while the parent waits in a `Select`
//!   watching `k` duplexes (the other `k - 1` idle), against the same ping-pong with a plain
//!   `recv`: what watching `k` endpoints costs a conversation on one of them.
//! * Select streams: the child sends 64 B messages round-robin over `k` channels, the parent
//!   takes whichever is ready, against one channel drained with `recv`.
//! * Pool round trips: `submit` + `join` of one tiny job, against a duplex round trip.
//! * Pool streams: `pool.map` of tiny jobs (`x * x`), with 1 and 2 workers, against a
//!   hand-written channel pipeline (one duplex per worker process, kept full with `try_send`)
//!   and a thread pool over crossbeam-channel with as many threads.
//!
//! Every child process and worker thread runs on CPU 1, the parent on CPU 0 (with 2 workers,
//! both share CPU 1: the same for every system compared).

use forkipc::{PoolBuilder, Select, WaitPolicy, channel, duplex};

use crate::support::{
    CHILD_CPU, Gate, Row, Session, Unit, fork_ipc, iters, ns_per_op, per_sec, pin_to_cpu,
    reap_child, rounds, time,
};

pub const DUPLEX_RTT: &str = "duplex<u64> RTT, recv (no Select)";
pub const SELECT_RTT_1: &str = "Select watching 1 duplex, RTT";
pub const SELECT_RTT_8: &str = "Select watching 8 duplexes, RTT";
pub const SELECT_RTT_64: &str = "Select watching 64 duplexes, RTT";
pub const ONE_CHANNEL_64B: &str = "one channel<[u64; 8]>, recv";
pub const SELECT_64B_1: &str = "Select over 1 channel<[u64; 8]>";
pub const SELECT_64B_8: &str = "Select over 8 channels<[u64; 8]>";
pub const SELECT_64B_64: &str = "Select over 64 channels<[u64; 8]>";
pub const POOL_RTT: &str = "Pool submit + join, 1 worker";
pub const PIPELINE_1: &str = "channel pipeline, 1 child (jobs/s)";
pub const PIPELINE_2: &str = "channel pipeline, 2 children (jobs/s)";
pub const THREADS_1: &str = "crossbeam thread pool, 1 thread (jobs/s)";
pub const THREADS_2: &str = "crossbeam thread pool, 2 threads (jobs/s)";
pub const POOL_MAP_1: &str = "Pool::map, 1 worker (jobs/s)";
pub const POOL_MAP_2: &str = "Pool::map, 2 workers (jobs/s)";

const RTT_CAPACITY: usize = 16;

pub const SAME_CPU_PIPE: &str = "pipe RTT, both on CPU 0";
pub const SAME_CPU_ADAPTIVE: &str = "duplex<u64> RTT, both on CPU 0, Adaptive";
pub const SAME_CPU_BLOCK: &str = "duplex<u64> RTT, both on CPU 0, Block";
pub const FANOUT_ADAPTIVE: &str = "fan-out to 3 echo children, unpinned, Adaptive (per round)";
pub const FANOUT_BLOCK: &str = "fan-out to 3 echo children, unpinned, Block (per round)";

/// Waiting when CPUs are shared: a round trip with both processes on one CPU (against a pipe
/// on one CPU), and a parent with 3 echo children on the machine's 2 CPUs, unpinned (4
/// runnable processes), with the default wait against `WaitPolicy::Block`.
pub fn shared_cpus() -> Vec<Session> {
    let ns = |name| Row::new(name, Unit::Nanos);
    vec![
        crate::baselines::pipe_pingpong_rtt_same_cpu(ns(SAME_CPU_PIPE)),
        same_cpu_rtt(
            ns(SAME_CPU_ADAPTIVE).vs(SAME_CPU_PIPE),
            WaitPolicy::default(),
        ),
        same_cpu_rtt(ns(SAME_CPU_BLOCK).vs(SAME_CPU_PIPE), WaitPolicy::Block),
        fan_out(ns(FANOUT_BLOCK), WaitPolicy::Block),
        fan_out(ns(FANOUT_ADAPTIVE).vs(FANOUT_BLOCK), WaitPolicy::default()),
    ]
}

fn same_cpu_rtt(row: Row, policy: WaitPolicy) -> Session {
    let n = iters(3_000);
    let (me, peer) = duplex::<u64, u64>(RTT_CAPACITY).expect("duplex");
    me.set_wait_policy(policy);
    let gate = Gate::new();
    let child = fork_ipc(crate::support::PARENT_CPU, peer, |peer| {
        peer.set_wait_policy(policy);
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                let got = peer.recv().map_err(|e| e.to_string())?;
                peer.send(got).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    });
    let mut i = 0u64;
    let rep = move || {
        gate.open_next();
        let elapsed = time(|| {
            for _ in 0..n {
                i += 1;
                me.send(i).expect("send");
                assert_eq!(me.recv().expect("recv"), i, "wrong echo");
            }
        });
        ns_per_op(elapsed, n)
    };
    Session::new(row, rep, move || reap_child(child))
}

/// Lets the calling process run on every CPU.
fn unpin() {
    let mut set = nix::sched::CpuSet::new();
    for cpu in 0..2 {
        let _ = set.set(cpu);
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
}

fn fan_out(row: Row, policy: WaitPolicy) -> Session {
    let n = iters(5_000);
    let mut mine = Vec::new();
    let mut children = Vec::new();
    for _ in 0..3 {
        let (a, b) = duplex::<u64, u64>(RTT_CAPACITY).expect("duplex");
        a.set_wait_policy(policy);
        children.push(fork_ipc(CHILD_CPU, b, move |d| {
            unpin();
            d.set_wait_policy(policy);
            for x in d.iter() {
                d.send(x).map_err(|e| e.to_string())?;
            }
            Ok(())
        }));
        mine.push(a);
    }
    let mine = std::rc::Rc::new(std::cell::RefCell::new(mine));
    let ends = mine.clone();
    let mut i = 0u64;
    let rep = move || {
        let mine = mine.borrow();
        unpin();
        let elapsed = time(|| {
            for _ in 0..n {
                i += 1;
                for d in mine.iter() {
                    d.send(i).expect("send");
                }
                for d in mine.iter() {
                    assert_eq!(d.recv().expect("recv"), i, "wrong echo");
                }
            }
        });
        pin_to_cpu(crate::support::PARENT_CPU);
        ns_per_op(elapsed, n)
    };
    Session::new(row, rep, move || {
        ends.borrow_mut().clear();
        for c in children {
            reap_child(c);
        }
    })
}

pub fn select_rtt() -> Vec<Session> {
    let ns = |name| Row::new(name, Unit::Nanos);
    vec![
        duplexes_rtt(ns(DUPLEX_RTT), 1, false),
        duplexes_rtt(ns(SELECT_RTT_1).vs(DUPLEX_RTT), 1, true),
        duplexes_rtt(ns(SELECT_RTT_8).vs(DUPLEX_RTT), 8, true),
        duplexes_rtt(ns(SELECT_RTT_64).vs(DUPLEX_RTT), 64, true),
        pool_rtt(ns(POOL_RTT).vs(DUPLEX_RTT)),
    ]
}

pub fn select_streams() -> Vec<Session> {
    let msgs = |name| Row::new(name, Unit::MsgsPerSec);
    vec![
        channels_stream(msgs(ONE_CHANNEL_64B), 1, false),
        channels_stream(msgs(SELECT_64B_1).vs(ONE_CHANNEL_64B), 1, true),
        channels_stream(msgs(SELECT_64B_8).vs(ONE_CHANNEL_64B), 8, true),
        channels_stream(msgs(SELECT_64B_64).vs(ONE_CHANNEL_64B), 64, true),
    ]
}

pub fn pool_streams() -> Vec<Session> {
    let jobs = |name| Row::new(name, Unit::MsgsPerSec);
    vec![
        pipeline(jobs(PIPELINE_1), 1),
        pipeline(jobs(PIPELINE_2), 2),
        thread_pool(jobs(THREADS_1), 1),
        thread_pool(jobs(THREADS_2), 2),
        pool_map(jobs(POOL_MAP_1).vs(PIPELINE_1).vs(THREADS_1), 1),
        pool_map(jobs(POOL_MAP_2).vs(PIPELINE_2).vs(THREADS_2), 2),
    ]
}

/// Ping-pong over duplex 0 while the parent waits with a `Select` over all `k` (or with `recv`
/// if not `select`).
fn duplexes_rtt(row: Row, k: usize, select: bool) -> Session {
    let n = iters(200_000);
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..k {
        let (a, b) = duplex::<u64, u64>(RTT_CAPACITY).expect("duplex");
        mine.push(a);
        theirs.push(b);
    }
    let gate = Gate::new();
    let child = fork_ipc(CHILD_CPU, theirs, |theirs| {
        let mut i = 0u64;
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                let d = &theirs[0];
                i += 1;
                let got = d.recv().map_err(|e| format!("echo {i}: {e}"))?;
                d.send(got).map_err(|e| format!("echo {i}: {e}"))?;
            }
        }
        Ok(())
    });
    let mut i = 0u64;
    let rep = move || {
        gate.open_next();
        let mut sel = Select::new();
        for d in &mine {
            sel.recv(d);
        }
        let elapsed = time(|| {
            for _ in 0..n {
                let idx = 0;
                i += 1;
                mine[idx].send(i).expect("send (did the child die?)");
                let echo = if select {
                    let r = sel.ready();
                    assert_eq!(r, idx, "Select reported the wrong duplex");
                    mine[idx].try_recv().expect("ready but empty")
                } else {
                    mine[idx].recv().expect("recv (did the child die?)")
                };
                assert_eq!(echo, i, "wrong echo");
            }
        });
        ns_per_op(elapsed, n)
    };
    Session::new(row, rep, move || reap_child(child))
}

/// The child streams `[u64; 8]` round-robin over `k` channels; the parent takes every message.
fn channels_stream(row: Row, k: usize, select: bool) -> Session {
    let n = iters(3_000_000);
    let mut txs = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..k {
        let (tx, rx) = channel::<[u64; 8]>(1024).expect("channel");
        txs.push(tx);
        rxs.push(rx);
    }
    let gate = Gate::new();
    let child = fork_ipc(CHILD_CPU, txs, |txs| {
        let mut seq = 0u64;
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                let tx = &txs[(seq % k as u64) as usize];
                tx.send([seq; 8])
                    .map_err(|e| format!("message {seq}: {e}"))?;
                seq += 1;
            }
        }
        Ok(())
    });
    let mut expect = vec![0u64; k];
    for (j, e) in expect.iter_mut().enumerate() {
        *e = j as u64;
    }
    let rep = move || {
        gate.open_next();
        let mut sel = Select::new();
        for rx in &rxs {
            sel.recv(rx);
        }
        let elapsed = time(|| {
            let mut got = 0;
            while got < n {
                let (j, m) = if select {
                    let j = sel.ready();
                    match rxs[j].try_recv() {
                        Ok(m) => (j, m),
                        // The child has sent its last round and closed this channel (the
                        // others may still hold messages of the last round).
                        Err(_) => {
                            sel.remove(j);
                            continue;
                        }
                    }
                } else {
                    (0, rxs[0].recv().expect("recv (did the child die?)"))
                };
                assert_eq!(m[7], expect[j], "channel {j} delivered a wrong message");
                expect[j] += k as u64;
                got += 1;
            }
        });
        per_sec(elapsed, n)
    };
    Session::new(row, rep, move || reap_child(child))
}

/// Builds a pool whose workers run on the child CPU: they inherit the owner's CPU affinity at
/// fork, so the owner builds it pinned there, then pins itself back. Their `work` is then the
/// same bare function as the pipeline children's (no per-job pinning check).
fn pool_on_child_cpu<J, R>(
    builder: PoolBuilder,
    work: impl Fn(J) -> R + 'static,
) -> forkipc::Pool<J, R>
where
    J: forkipc::Plain + 'static,
    R: forkipc::Plain + 'static,
{
    pin_to_cpu(CHILD_CPU);
    let pool = builder.build(work).expect("pool");
    pin_to_cpu(crate::support::PARENT_CPU);
    pool
}

/// `submit` + `join` of one tiny job on a 1-worker pool.
fn pool_rtt(row: Row) -> Session {
    let n = iters(200_000);
    let pool = pool_on_child_cpu(PoolBuilder::new().workers(1), |x: u64| x + 1);
    let mut i = 0u64;
    let rep = move || {
        let elapsed = time(|| {
            for _ in 0..n {
                i += 1;
                let r = pool.submit(i).expect("submit").join().expect("job");
                assert_eq!(r, i + 1);
            }
        });
        ns_per_op(elapsed, n)
    };
    Session::new(row, rep, || {})
}

/// `pool.map` of `x * x` over `iters(2M)` jobs: every result checked to be a value (not a
/// `JobError`) and summed; the sum is checked, as the pipeline's.
fn pool_map(row: Row, workers: usize) -> Session {
    let n = iters(2_000_000);
    let pool = pool_on_child_cpu(PoolBuilder::new().workers(workers), |x: u64| {
        x.wrapping_mul(x)
    });
    let rep = move || {
        let mut sum = 0u64;
        let elapsed = time(|| {
            for r in pool.map(0..n) {
                sum = sum.wrapping_add(r.expect("job"));
            }
        });
        assert_eq!(sum, expected_sum(n), "wrong results");
        per_sec(elapsed, n)
    };
    Session::new(row, rep, || {})
}

fn expected_sum(n: u64) -> u64 {
    (0..n).fold(0u64, |s, x| s.wrapping_add(x.wrapping_mul(x)))
}

/// What a competent user writes by hand with forkipc channels: one `duplex` per worker process,
/// streaming (not lock-step): the parent keeps each job ring full with `try_send` (the ring's
/// 1 024 slots are the bounded window, far more than the pool's 128 in flight per worker) and
/// takes every result that is there with `try_recv`, spinning, never sleeping. The children
/// run the same bare `x * x` as the pool's workers, pinned the same way. The results are
/// summed and the sum checked, as `pool_map` does; unlike `Pool::map`, the pipeline does not
/// put them back in input order, nor survive a crash.
fn pipeline(row: Row, workers: usize) -> Session {
    let n = iters(2_000_000);
    let mut mine = Vec::new();
    let mut children = Vec::new();
    for _ in 0..workers {
        let (a, b) = duplex::<u64, u64>(1024).expect("duplex");
        children.push(fork_ipc(CHILD_CPU, b, |d| {
            d.set_wait_policy(WaitPolicy::default());
            for x in d.iter() {
                d.send(x.wrapping_mul(x)).map_err(|e| e.to_string())?;
            }
            Ok(())
        }));
        mine.push(a);
    }
    // Shared with `finish`, which drops the parent's ends (so the children's loops end)
    // before reaping them.
    let mine = std::rc::Rc::new(std::cell::RefCell::new(mine));
    let ends = mine.clone();
    let rep = move || {
        let mine = mine.borrow();
        let mut sum = 0u64;
        let elapsed = time(|| {
            let (mut sent, mut got) = (0u64, 0u64);
            while got < n {
                for d in mine.iter() {
                    while sent < n && d.try_send(sent).is_ok() {
                        sent += 1;
                    }
                    while let Ok(r) = d.try_recv() {
                        sum = sum.wrapping_add(r);
                        got += 1;
                    }
                }
            }
        });
        assert_eq!(sum, expected_sum(n), "wrong results");
        per_sec(elapsed, n)
    };
    Session::new(row, rep, move || {
        ends.borrow_mut().clear();
        for c in children {
            reap_child(c);
        }
    })
}

/// A thread pool over crossbeam-channel: `threads` workers on the child CPU, a bounded job
/// channel and a bounded result channel, kept full with `try_send`. Threads are started and
/// joined inside each repetition (the bench forks only while single-threaded).
fn thread_pool(row: Row, threads: usize) -> Session {
    let n = iters(2_000_000);
    let rep = move || {
        let (job_tx, job_rx) = crossbeam_channel::bounded::<u64>(1024);
        let (res_tx, res_rx) = crossbeam_channel::bounded::<u64>(1024);
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (job_rx, res_tx) = (job_rx.clone(), res_tx.clone());
                std::thread::spawn(move || {
                    pin_to_cpu(CHILD_CPU);
                    for x in job_rx {
                        if res_tx.send(x.wrapping_mul(x)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        drop((job_rx, res_tx));
        let mut sum = 0u64;
        let elapsed = time(|| {
            let (mut sent, mut got) = (0u64, 0u64);
            while got < n {
                while sent < n && job_tx.try_send(sent).is_ok() {
                    sent += 1;
                }
                while let Ok(r) = res_rx.try_recv() {
                    sum = sum.wrapping_add(r);
                    got += 1;
                }
            }
        });
        drop(job_tx);
        for h in handles {
            h.join().expect("worker thread");
        }
        assert_eq!(sum, expected_sum(n), "wrong results");
        per_sec(elapsed, n)
    };
    Session::new(row, rep, || {})
}
