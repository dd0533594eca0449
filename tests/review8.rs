//! Adversarial review 8: commits a0feaa0 (accept_run over a deque range, enc_jobs in place,
//! fixed-size commit) and cb970df (keeper: busy_since, WAKE, hold_until follows the keeper).
//! Each case passes only if the promised behaviour holds; a FAILED line is a finding. The
//! review found three defects in `keeper`, fixed in the commit that added this file; the
//! `regression_*` cases failed before it (the overflow one in a build with overflow checks).
//!
//! Run: cargo test --release --all-features --test review8 -- [case-substring]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use forkipc::{JobError, PoolBuilder};
use support::{Context, Outcome, counters, find_pool_region, no_children, shared_u64, slot_word};

fn main() {
    support::run(cases![
        accept_run_exactly_once_with_put_back_jobs_and_dropped_handles,
        accept_run_with_parked_jobs_in_flight,
        big_plain_jobs_round_trip,
        regression_stopped_keeper_with_a_full_ring_does_not_hold_the_queue,
        stopped_worker_given_a_batch_small_jobs_spread_after_wake,
        pinned_tiny_jobs_with_max_jobs_per_worker,
        regression_compromised_cost_at_does_not_hold_the_queue_for_ever,
        regression_compromised_cost_at_max_does_not_panic_the_owner,
        compromised_cost_at_kept_current_does_not_hold_the_queue_for_ever,
    ]);
}

fn f(x: u64) -> u64 {
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 7
}

/// Workers abort on some jobs (their unstarted jobs go to `again` and are re-sent first, so
/// frames hold non-consecutive ids), handles are dropped (Abandoned states in the middle of a
/// run), some joined out of order: every kept handle gets f(x) exactly once, or WorkerDied
/// for the aborting jobs; every non-aborting job ran exactly once.
fn accept_run_exactly_once_with_put_back_jobs_and_dropped_handles() -> Outcome {
    const N: usize = 30_000;
    const MAP: usize = 5_000;
    let ran = counters(N + MAP)?;
    let bad = |x: u64| x % 2_503 == 17;
    let pool = PoolBuilder::new()
        .workers(2)
        .queue_capacity(4_096)
        .build(move |x: u64| {
            ran[x as usize].fetch_add(1, Ordering::SeqCst);
            if bad(x) {
                std::process::abort();
            }
            f(x)
        })
        .ctx("pool")?;
    let mut kept = Vec::new();
    for x in 0..N as u64 {
        let h = pool.submit(x).ctx("submit")?;
        if x % 7 != 3 {
            kept.push((x, h));
        }
        // Join some now and then, newest first (takes results out of order).
        if x % 1_000 == 999 {
            for _ in 0..3 {
                if let Some((y, h)) = kept.pop() {
                    let r = h.join();
                    check(y, r, bad(y))?;
                }
            }
        }
    }
    for (y, h) in kept {
        check(y, h.join(), bad(y))?;
    }
    // Map after all that: consecutive ids, fast path.
    let mut i = N as u64;
    for r in pool.map(N as u64..(N + MAP) as u64) {
        check(i, r, bad(i))?;
        i += 1;
    }
    ensure!(i == (N + MAP) as u64, "{i} map results");
    for (x, c) in ran.iter().enumerate().take(N + MAP) {
        let c = c.load(Ordering::SeqCst);
        ensure!(c == 1, "job {x} ran {c} times");
    }
    pool.shutdown().ctx("shutdown")?;
    ensure!(no_children(), "a worker was left unreaped");
    Ok(())
}

fn check(y: u64, r: Result<u64, JobError>, bad: bool) -> Outcome {
    if bad {
        ensure!(
            matches!(r, Err(JobError::WorkerDied(_))),
            "aborting job {y}: {r:?}"
        );
    } else {
        ensure!(r == Ok(f(y)), "job {y}: {r:?}");
    }
    Ok(())
}

/// A slow job on one worker with a window behind it while the other worker's results are
/// taken far ahead: the slow worker's jobs get parked (id < base) while in flight, and their
/// results then arrive through accept_run's slow fallback.
fn accept_run_with_parked_jobs_in_flight() -> Outcome {
    const N: u64 = 20_000;
    let pool = PoolBuilder::new()
        .workers(2)
        .queue_capacity(64)
        .build(move |x: u64| {
            if x == 0 {
                std::thread::sleep(Duration::from_millis(400));
            }
            f(x)
        })
        .ctx("pool")?;
    let mut hs = std::collections::VecDeque::new();
    for x in 0..N {
        hs.push_back((x, pool.submit(x).ctx("submit")?));
        // Keep the first 600 handles; join the rest as they come (in order), which settles
        // jobs far ahead of the slow one.
        if hs.len() > 700 {
            let (y, h) = hs.remove(600).ctx("remove")?;
            ensure!(h.join() == Ok(f(y)), "job {y}");
        }
    }
    while let Some((y, h)) = hs.pop_back() {
        let r = h.join();
        ensure!(r == Ok(f(y)), "job {y}: {r:?}");
    }
    pool.shutdown().ctx("shutdown")?;
    Ok(())
}

/// Plain jobs of 1 KiB (frames cut by MAX_FRAME, not BATCH) through enc_jobs' in-place path.
fn big_plain_jobs_round_trip() -> Outcome {
    let pool = PoolBuilder::new()
        .workers(2)
        .build(|j: [u8; 1024]| -> [u8; 1024] {
            let mut o = j;
            o.reverse();
            o
        })
        .ctx("pool")?;
    let mk = |i: u32| {
        let mut j = [0u8; 1024];
        j[..4].copy_from_slice(&i.to_le_bytes());
        j[1020..].copy_from_slice(&(!i).to_le_bytes());
        j
    };
    let mut i = 0u32;
    for r in pool.map((0..3_000u32).map(mk)) {
        let mut want = mk(i);
        want.reverse();
        ensure!(r.as_ref().is_ok_and(|o| *o == want), "job {i} wrong");
        i += 1;
    }
    ensure!(i == 3_000, "{i} results");
    pool.shutdown().ctx("shutdown")?;
    Ok(())
}

/// SIGSTOPs worker `pid` and forks a helper that, `d` later, stores in `during[0]` how many
/// of the jobs counted in `ran` have run meanwhile, then SIGCONTs the worker.
fn stop_for(
    pid: u32,
    d: Duration,
    ran: &'static [std::sync::atomic::AtomicU32],
    during: &'static [std::sync::atomic::AtomicU64],
) -> Result<support::Reap, String> {
    support::stop_process(pid)?;
    support::spawn_fn("continuer", move || {
        std::thread::sleep(d);
        let n = ran.iter().filter(|c| c.load(Ordering::SeqCst) > 0).count();
        during[0].store(n as u64, Ordering::SeqCst);
        support::signal(pid, libc::SIGCONT);
        Ok(())
    })
}

/// Two workers pinned to one CPU (the owner elsewhere), 1 KiB plain jobs (31 to a frame, so
/// two frames fill a worker's 64 KiB job ring). Worker 0 is SIGSTOPped while idle; then a map
/// starts. Dispatch gives worker 0 the first batch (busy_since = now, not begun), so for
/// WAKE (2 ms) `keeper` says Send(worker 0) for every batch; the third one finds its job ring
/// full, `dispatch` returned on `Full` with `hold_until` cleared by the `Send`, and `pump`
/// slept with no timeout until worker 0 sent a result. Worker 1 sat idle with the queue full
/// for as long as worker 0 was stopped (here 1.5 s), far past WAKE.
fn regression_stopped_keeper_with_a_full_ring_does_not_hold_the_queue() -> Outcome {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        println!("    skipped: needs 2 CPUs");
        return Ok(());
    }
    const WARM: u32 = 3_000;
    const M: u32 = 2_000;
    let ran = counters((WARM + M) as usize)?;
    let during = shared_u64(2)?;
    let pool = support::kib_pool(true, ran)?;
    ensure!(
        pool.map((0..WARM).map(support::kib_job)).all(|r| r.is_ok()),
        "warm-up map failed"
    );
    let ids = pool.worker_ids();
    ensure!(ids.len() == 2, "workers: {ids:?}");
    let w0 = ids[0];
    let mut helper = stop_for(
        w0,
        Duration::from_millis(1_500),
        &ran[WARM as usize..],
        during,
    )?;
    let t = Instant::now();
    let mut i = WARM;
    for r in pool.map((WARM..WARM + M).map(support::kib_job)) {
        ensure!(r == Ok(i), "result {i}: {r:?}");
        i += 1;
    }
    let took = t.elapsed();
    helper.expect_success("continuer", Duration::from_secs(10))?;
    support::signal(w0, libc::SIGCONT);
    ensure!(i == WARM + M, "{} results", i - WARM);
    let n = during[0].load(Ordering::SeqCst);
    println!("    map took {took:?}; jobs run while worker 0 was stopped (1.5 s): {n} of {M}");
    pool.shutdown().ctx("shutdown")?;
    ensure!(
        n > 0,
        "worker 1 ran none of the map's jobs in the 1.5 s worker 0 was stopped: the queue was \
         held for the stopped worker far past WAKE"
    );
    Ok(())
}

/// A compromised worker (job 0) writes its slot: cost 1, cost_at close to u64::MAX (and the
/// same `cpu` in both slots), then sleeps in its job with a full window behind it. `keeper`'s
/// `patient_until = since + KEEP` was then centuries away, so every batch was held for that
/// worker for as long as it lived (a hold now ends `WAKE` after it began, whatever the slots
/// say).
fn regression_compromised_cost_at_does_not_hold_the_queue_for_ever() -> Outcome {
    compromised_cost_at(u64::MAX - 1_000_000_000_000)
}

/// As above with cost_at = u64::MAX: `since + keep_ns` overflows (a panic in the owner in a
/// build with overflow checks, e.g. `cargo test` without --release).
fn regression_compromised_cost_at_max_does_not_panic_the_owner() -> Outcome {
    compromised_cost_at(u64::MAX)
}

/// As above, with a plausible `cost_at` (never in the future: the worker rewrites it with the
/// clock every 20 us while it sleeps in its job): clamping `cost_at` to now would not bound
/// the hold; only a bound from the first hold (as before cb970df) does.
fn compromised_cost_at_kept_current_does_not_hold_the_queue_for_ever() -> Outcome {
    compromised_cost_at(0)
}

/// `cost_at`: the value written, or 0 for "kept at the clock's value".
fn compromised_cost_at(cost_at: u64) -> Outcome {
    const N: u64 = 4_000;
    const EVIL_SLEEP: Duration = Duration::from_secs(4);
    let flag = counters(1)?;
    let ran = counters(N as usize + 1)?;
    const W: usize = 3;
    let pool = PoolBuilder::new()
        .workers(W)
        .queue_capacity(100_000)
        .build(move |x: u64| -> u64 {
            ran[x as usize].fetch_add(1, Ordering::SeqCst);
            if x == 0 {
                if let Some((region, k)) = find_pool_region(W, 0) {
                    for j in 0..W {
                        slot_word(region, j, 6).store(1, Ordering::SeqCst);
                    }
                    slot_word(region, k, 4).store(1, Ordering::SeqCst);
                    slot_word(region, k, 5).store(cost_at, Ordering::SeqCst);
                    flag[0].store(1, Ordering::SeqCst);
                    if cost_at == 0 {
                        let t = Instant::now();
                        while t.elapsed() < EVIL_SLEEP {
                            slot_word(region, k, 5).store(support::mono_ns(), Ordering::SeqCst);
                        }
                        return f(x);
                    }
                } else {
                    flag[0].store(2, Ordering::SeqCst);
                }
                std::thread::sleep(EVIL_SLEEP);
            }
            f(x)
        })
        .ctx("pool")?;
    let h0 = pool.submit(0).ctx("submit 0")?;
    ensure!(
        support::wait_until(Duration::from_secs(5), || flag[0].load(Ordering::SeqCst)
            != 0),
        "evil job did not start"
    );
    ensure!(
        flag[0].load(Ordering::SeqCst) == 1,
        "test setup: pool region not found"
    );
    let t = Instant::now();
    let mut hs = Vec::new();
    for x in 1..=N {
        hs.push(pool.submit(x).ctx("submit")?);
    }
    // Give the pool 2 s (of the evil job's 6) to run what the honest worker can take.
    let last = hs.pop().ctx("last")?;
    let r = last.join_timeout(Duration::from_secs(2));
    // Jobs already sent run without the owner: let the honest workers finish theirs.
    std::thread::sleep(Duration::from_millis(300));
    let done = ran[1..]
        .iter()
        .filter(|c| c.load(Ordering::SeqCst) > 0)
        .count();
    println!(
        "    after {:?}: {done} of {N} jobs ran; last job: {r:?}",
        t.elapsed()
    );
    for h in hs {
        let _ = h.join();
    }
    let _ = h0.join();
    pool.shutdown().ctx("shutdown")?;
    ensure!(
        done as u64 >= N - 512,
        "only {done} of {N} jobs ran in 2 s while the compromised worker slept: the queue was \
         held for it (keeper) instead of going to the idle worker"
    );
    Ok(())
}

/// As `regression_stopped_keeper_with_a_full_ring_does_not_hold_the_queue` with `u64` jobs (a
/// full window, 512 jobs, fits the job ring): the hold is bounded (WAKE), worker 1 goes on.
fn stopped_worker_given_a_batch_small_jobs_spread_after_wake() -> Outcome {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        println!("    skipped: needs 2 CPUs");
        return Ok(());
    }
    const WARM: u64 = 20_000;
    const M: u64 = 20_000;
    let ran = counters((WARM + M) as usize)?;
    let during = shared_u64(1)?;
    let pool = support::pool_on_cpu1(true, PoolBuilder::new().workers(2), move |x: u64| {
        ran[x as usize].fetch_add(1, Ordering::SeqCst);
        x
    })?;
    ensure!(pool.map(0..WARM).all(|r| r.is_ok()), "warm-up map failed");
    let w0 = pool.worker_ids()[0];
    let mut helper = stop_for(
        w0,
        Duration::from_millis(1_000),
        &ran[WARM as usize..],
        during,
    )?;
    let mut i = WARM;
    for r in pool.map(WARM..WARM + M) {
        ensure!(r == Ok(i), "result {i}: {r:?}");
        i += 1;
    }
    helper.expect_success("continuer", Duration::from_secs(10))?;
    support::signal(w0, libc::SIGCONT);
    ensure!(i == WARM + M, "{} results", i - WARM);
    for x in WARM..WARM + M {
        let c = ran[x as usize].load(Ordering::SeqCst);
        ensure!(c == 1, "job {x} ran {c} times");
    }
    let n = during[0].load(Ordering::SeqCst);
    println!("    jobs run while worker 0 was stopped (1 s): {n} of {M}");
    pool.shutdown().ctx("shutdown")?;
    ensure!(
        n > 0,
        "worker 1 ran none of the map's jobs while worker 0 was stopped"
    );
    Ok(())
}

/// Pinned workers, tiny jobs, workers recycled every 700 jobs: a keeper at its quota holds
/// batches (`dispatched >= max`); every job still runs once, in order, in reasonable time.
fn pinned_tiny_jobs_with_max_jobs_per_worker() -> Outcome {
    const N: u64 = 30_000;
    let ran = counters(N as usize)?;
    let builder = PoolBuilder::new().workers(2).max_jobs_per_worker(700);
    let pool = support::pool_on_cpu1(true, builder, move |x: u64| {
        ran[x as usize].fetch_add(1, Ordering::SeqCst);
        f(x)
    })?;
    let t = Instant::now();
    let mut i = 0;
    for r in pool.map(0..N) {
        ensure!(r == Ok(f(i)), "result {i}: {r:?}");
        i += 1;
    }
    ensure!(i == N, "{i} results");
    println!("    {N} jobs, recycled every 700: {:?}", t.elapsed());
    ensure!(
        support::not_run_once(ran).is_empty(),
        "{:?}",
        support::not_run_once(ran)
    );
    pool.shutdown().ctx("shutdown")?;
    ensure!(no_children(), "a worker was left unreaped");
    Ok(())
}
