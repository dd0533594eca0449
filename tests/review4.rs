//! Adversarial review 4: the batched `Pool` (pool/{mod,wire,worker,dispatch,accounting}.rs).
//! Each case passes only if the promised behaviour holds; a FAILED line is a finding.
//!
//! Run: cargo test --release --test review4 [--features serde] -- [case-substring]
//! (FORKIPC_CASE_TIMEOUT=secs bounds each case; default 120.)

#![allow(clippy::needless_range_loop)]

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use forkipc::{JobError, Pool, PoolBuilder};
use support::{Context, Outcome, counters, find_pool_region, shared_maps, shared_u64, slot_word};

fn main() {
    #[allow(unused_mut)]
    let mut list = cases![
        pool_job_ring_closed_by_live_worker_hangs,
        pool_map_iterator_that_submits_panics_owner,
        pool_compromised_worker_scribbles_slots_and_scratches,
        pool_forged_own_scratch_records_then_death,
        pool_random_sigkills_exactly_once,
        pool_timeouts_with_recycling_exactly_once,
        pool_panics_with_batches_behind,
        pool_drop_with_batches_in_flight_reaps_all,
        pool_owner_death_with_batches_in_flight,
        pool_two_maps_interleaved_and_unjoined_handles,
    ];
    #[cfg(feature = "serde")]
    list.extend(cases![
        pool_serde_codec_failures_with_batches,
        pool_serde_job_serialize_panic_then_submit,
    ]);
    support::run(list);
}

const LONG: Duration = Duration::from_secs(30);

use support::ReapAll as Reap;

/// x86_64 ring layout: head @0, rx SideState @128 (closed word @132), tx @256, data @384.
const DATA: usize = 384;
const RX_CLOSED: usize = 132;
const RING_64K: usize = 69632;

/// Pool region layout (pool/worker.rs): header 64 B, `n` slots of 64 B, then `n` scratches of
/// `SCRATCH` bytes. Slot words: current @0, started @8, pending @16, flushes @24.
const SCRATCH: usize = support::POOL_SCRATCH;

fn scratch_ptr(region: usize, n: usize, k: usize) -> *mut u8 {
    (region + 64 + support::POOL_SLOT * n + SCRATCH * k) as *mut u8
}

/// A result record `[id][kind][len][payload]`.
fn rec(id: u64, kind: u8, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = id.to_le_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

fn pid_gone(pid: u32) -> bool {
    matches!(support::proc_state(pid), None | Some('Z'))
}

// ---------------------------------------------------------------------------------------------
// 1. A compromised worker closes the consumer side of its *job* ring and stays alive (blocked
// in its `recv`). The owner's `try_send` then fails with `Disconnected`; `dispatch` calls
// `retire_if_dead`, which looks only at the *results* ring (still open), so the worker is
// kept and dispatch returns ("still there (full)"). It is the least loaded worker (load 0),
// so every later dispatch picks it first and returns again: no job is ever sent anywhere, no
// deadline is armed (nothing is in flight), and the owner sleeps for ever in `Select`.
fn pool_job_ring_closed_by_live_worker_hangs() -> Outcome {
    const MAGIC: u32 = 0x00C0_FFEE;
    let st = shared_u64(4)?;
    let owner = forkipc::fork((), move |()| {
        let Ok(pool) = PoolBuilder::new()
            .workers(2)
            .job_timeout(Duration::from_millis(500))
            .build(|x: u32| -> u32 {
                if x == MAGIC {
                    // The job ring: first message is this job's frame `[id 0][len 4][MAGIC]`.
                    for (a, len) in shared_maps() {
                        if len != RING_64K {
                            continue;
                        }
                        // SAFETY: a live shared mapping of at least RING_64K bytes.
                        unsafe {
                            let h = std::ptr::read_volatile((a + DATA) as *const u64);
                            let id = std::ptr::read_volatile((a + DATA + 8) as *const u64);
                            let p = std::ptr::read_volatile((a + DATA + 20) as *const u32);
                            if h == (1u64 << 32 | 16) && id == 0 && p == MAGIC {
                                (*((a + RX_CLOSED) as *const AtomicU32)).store(1, Ordering::SeqCst);
                                return 1;
                            }
                        }
                    }
                    return 999;
                }
                x
            })
        else {
            return 1;
        };
        for (i, p) in pool.worker_ids().into_iter().enumerate() {
            st[2 + i].store(u64::from(p), Ordering::SeqCst);
        }
        let r0 = pool
            .submit(MAGIC)
            .ok()
            .map(|h| h.join_timeout(Duration::from_secs(5)));
        if r0 != Some(Ok(1)) {
            st[1].store(100, Ordering::SeqCst);
            st[0].store(1, Ordering::SeqCst);
            std::mem::forget(pool);
            return 0;
        }
        // Jobs after it: each must run (on the other worker or a replacement).
        let mut bad = 0;
        for x in 1..=4u32 {
            let r = pool
                .submit(x)
                .ok()
                .map(|h| h.join_timeout(Duration::from_secs(3)));
            if r != Some(Ok(x)) {
                bad += 1;
            }
        }
        st[1].store(bad, Ordering::SeqCst);
        st[0].store(1, Ordering::SeqCst);
        std::mem::forget(pool); // dropping it would wait for ever for the stranded jobs
        0
    })
    .ctx("fork owner")?;
    let mut kids = Reap(vec![owner]);
    let ok = support::wait_until(Duration::from_secs(30), || {
        st[0].load(Ordering::SeqCst) != 0
    });
    let _ = support::wait_child(&mut kids.0[0], Duration::from_secs(5));
    for i in 2..4 {
        let w = st[i].load(Ordering::SeqCst) as i32;
        if w > 0 {
            // SAFETY: a worker of the (now dead) owner; PDEATHSIG normally got it already.
            unsafe { libc::kill(w, libc::SIGKILL) };
        }
    }
    drop(kids);
    ensure!(ok, "the owner never answered");
    let bad = st[1].load(Ordering::SeqCst);
    ensure!(
        bad != 100,
        "test setup: the worker did not find its job ring"
    );
    ensure!(
        bad == 0,
        "{bad} of 4 jobs submitted after a live worker closed its job ring never ran \
         (join_timeout 3 s each; job_timeout 500 ms did not help): the owner keeps the worker \
         and dispatch stops at it every time"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. `Map::next` pulls the user's iterator while it holds the pool's `RefCell` borrowed: an
// iterator that calls `submit` (or `worker_ids`, or drops a `JobHandle`) panics the owner
// with "already borrowed" (or silently skips the drop's `abandon`).
fn pool_map_iterator_that_submits_panics_owner() -> Outcome {
    let pool = Pool::new(2, |x: u32| x + 1).ctx("pool")?;
    let handles = std::cell::RefCell::new(Vec::new());
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.map((0..10u32).inspect(|&x| {
            if let Ok(h) = pool.submit(x + 100) {
                handles.borrow_mut().push(h);
            }
        }))
        .collect::<Vec<_>>()
    }));
    let Ok(got) = got else {
        std::mem::forget(handles);
        return Err(
            "Pool::map over an iterator that calls pool.submit panicked the owner \
                    (RefCell already borrowed: Map::next pulls the iterator inside its borrow)"
                .into(),
        );
    };
    ensure!(
        got == (1..=10u32).map(Ok).collect::<Vec<_>>(),
        "map results {got:?}"
    );
    for (x, h) in (100..110u32).zip(handles.into_inner()) {
        let r = h.join();
        ensure!(r == Ok(x + 1), "submitted job {x}: {r:?}");
    }
    // Between `next` calls a submit works too.
    let mut m = pool.map(0..600u32);
    let a = m.next();
    let h = pool.submit(7).ctx("submit")?;
    let rest: Vec<_> = m.collect();
    ensure!(
        a == Some(Ok(1)) && rest.len() == 599,
        "map with a submit in between"
    );
    ensure!(h.join() == Ok(8), "the submit between");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Compromised workers scribble: their own slot (pending huge / odd / not a record
// boundary, flushes bumped and rewound, current set to other ids, started 0), their own
// scratch (random bytes, records with ids of other workers' jobs, duplicates, huge lengths,
// lengths cut mid-record), and OTHER workers' scratches and pending with random bytes
// (no valid ids). The owner must not panic or hang, and every job of the honest runs must get
// its own value, exactly once.
fn pool_compromised_worker_scribbles_slots_and_scratches() -> Outcome {
    const N: u64 = 30_000;
    const W: usize = 3;
    let ran = counters(N as usize)?;
    let scribbled = shared_u64(2)?;
    let pool = PoolBuilder::new()
        .workers(W)
        .build(move |x: u64| -> u64 {
            ran[x as usize].fetch_add(1, Ordering::SeqCst);
            if x % 997 != 13 {
                return x * 3;
            }
            let Some((region, k)) = find_pool_region(W, x) else {
                scribbled[1].fetch_add(1, Ordering::SeqCst);
                return x * 3;
            };
            scribbled[0].fetch_add(1, Ordering::SeqCst);
            let mut rng = support::Rng::new(x);
            let mine = scratch_ptr(region, W, k);
            // Own scratch: a forged stream. Ids of jobs not ours (far ahead, long done, the
            // sentinel values), a duplicate, a huge length, then garbage.
            let mut s = Vec::new();
            s.extend(rec(x + 5000, 0, 8, &7u64.to_le_bytes()));
            s.extend(rec(x.wrapping_sub(1), 0, 8, &7u64.to_le_bytes()));
            s.extend(rec(x.wrapping_sub(1), 0, 8, &7u64.to_le_bytes()));
            s.extend(rec(u64::MAX, 0, 8, &7u64.to_le_bytes()));
            s.extend(rec(u64::MAX - 1, 1, 3, b"abc"));
            s.extend(rec(x + 7000, 0, u32::MAX, &[1, 2, 3]));
            let mut junk = vec![0u8; 700];
            rng.fill(&mut junk);
            s.extend(junk);
            // SAFETY: within this worker's scratch (a compromised worker writes what it likes).
            unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), mine, s.len()) };
            let variants = [u64::MAX, SCRATCH as u64 + 1, 13 + 8 + 5, s.len() as u64, 1];
            // Other workers: random bytes and a random pending.
            for j in 0..W {
                if j == k {
                    continue;
                }
                let mut junk = vec![0u8; 256];
                rng.fill(&mut junk);
                // Keep ids out of any live range: top byte 0xEE.
                for c in junk.chunks_mut(21) {
                    if c.len() >= 8 {
                        c[7] = 0xEE;
                    }
                }
                // SAFETY: inside worker j's scratch.
                unsafe {
                    std::ptr::copy_nonoverlapping(junk.as_ptr(), scratch_ptr(region, W, j), 256)
                };
                slot_word(region, j, 2).store(rng.below(1 << 20), Ordering::SeqCst);
            }
            for (i, v) in variants.iter().enumerate() {
                slot_word(region, k, 2).store(*v, Ordering::SeqCst);
                if i % 2 == 0 {
                    slot_word(region, k, 3).fetch_add(1, Ordering::SeqCst);
                } else {
                    slot_word(region, k, 3).fetch_sub(1, Ordering::SeqCst);
                }
                // Let the owner fall asleep and harvest this.
                std::thread::sleep(Duration::from_millis(3));
            }
            slot_word(region, k, 1).store(0, Ordering::SeqCst);
            x * 3
        })
        .ctx("pool")?;
    let start = Instant::now();
    let mut wrong = Vec::new();
    for (x, r) in (0..N).zip(pool.map(0..N)) {
        // The scribbling job x forges a result (7) for x - 1, which may still be in flight on
        // the same (compromised) worker when the owner reads its scratch: within the threat
        // model (a compromised worker can garble its own in-flight jobs), so that one value is
        // allowed for exactly those jobs. Every other job must get its own value.
        let forgeable = (x + 1) % 997 == 13 && r == Ok(7);
        if r != Ok(x * 3) && !forgeable {
            wrong.push((x, r));
        }
    }
    let took = start.elapsed();
    pool.shutdown().ctx("shutdown")?;
    let (hit, miss) = (
        scribbled[0].load(Ordering::SeqCst),
        scribbled[1].load(Ordering::SeqCst),
    );
    ensure!(
        hit > 0,
        "test setup: no worker found the pool region ({miss} misses)"
    );
    wrong.truncate(10);
    ensure!(
        wrong.is_empty(),
        "wrong results after scribbles ({hit} scribbling jobs, {took:?}): {wrong:?}"
    );
    let twice = support::not_run_once(&ran[..N as usize]);
    ensure!(
        twice.is_empty(),
        "jobs not run exactly once (job, runs): {twice:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. A compromised worker appends to its own scratch records of jobs of OTHER workers
// (in flight there), a record cut short (not a record boundary), and then dies
// (SIGKILL itself) with `pending` pointing past the end: retire takes its scratch. The other
// worker's job must keep its own value; the dead worker's job fails WorkerDied; the jobs behind
// it run once.
fn pool_forged_own_scratch_records_then_death() -> Outcome {
    const N: u64 = 4000;
    const W: usize = 3;
    let ran = counters(N as usize)?;
    let pool = PoolBuilder::new()
        .workers(W)
        .build(move |x: u64| -> u64 {
            ran[x as usize].fetch_add(1, Ordering::SeqCst);
            if x % 500 != 250 {
                if x % 500 > 240 && x % 500 < 260 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                return x * 3;
            }
            if let Some((region, k)) = find_pool_region(W, x) {
                // Ids the other workers are running now.
                let mut s = Vec::new();
                for j in 0..W {
                    if j != k {
                        let other = slot_word(region, j, 0).load(Ordering::SeqCst);
                        s.extend(rec(other, 0, 8, &0xBAD_u64.to_le_bytes()));
                    }
                }
                s.extend(rec(x, 0, 8, &0xBAD_u64.to_le_bytes())[..17].iter().copied());
                // After the records it committed honestly (erasing those would only make the
                // owner run its own finished jobs again: it cannot tell them from unstarted
                // ones, an inherent limit, not tested here).
                let at = (slot_word(region, k, 2).load(Ordering::SeqCst) as usize).min(16_000);
                // SAFETY: this worker's scratch (at + s.len() < SCRATCH).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        s.as_ptr(),
                        scratch_ptr(region, W, k).add(at),
                        s.len(),
                    )
                };
                slot_word(region, k, 2).store(u64::MAX / 2, Ordering::SeqCst);
            }
            // SAFETY: killing itself.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            loop {
                std::hint::spin_loop();
            }
        })
        .ctx("pool")?;
    let mut bad = Vec::new();
    for (x, r) in (0..N).zip(pool.map(0..N)) {
        let ok = if x % 500 == 250 {
            // Its own job: failed, or the value it forged (a compromised worker may make
            // its own jobs wrong).
            matches!(r, Err(JobError::WorkerDied(_)) | Ok(0xBAD))
        } else {
            r == Ok(x * 3)
        };
        if !ok {
            bad.push((x, r));
        }
    }
    pool.shutdown().ctx("shutdown")?;
    bad.truncate(10);
    ensure!(bad.is_empty(), "wrong outcomes: {bad:?}");
    let twice = support::not_run_once(&ran[..N as usize]);
    ensure!(
        twice.is_empty(),
        "jobs not run exactly once (job, runs): {twice:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. An external killer SIGKILLs random workers at random moments while `map` streams tiny
// jobs (mid-batch, mid-commit, mid-flush, between the slot and the job, during the owner's
// scratch copy). Every job: Ok with its value and run exactly once, or WorkerDied(SIGKILL)
// and run at most once. None lost (map yields all), none twice.
fn pool_random_sigkills_exactly_once() -> Outcome {
    const N: u64 = 2_000_000;
    const W: usize = 3;
    let ran = counters(N as usize)?;
    let ctl = shared_u64(8)?; // 0 done, 1 kills, 2..5 worker pids, 6 owner pid
    ctl[6].store(u64::from(support::getpid()), Ordering::SeqCst);
    let killer = forkipc::fork((), move |()| {
        let mut rng = support::Rng::new(0x5eed ^ support::mono_ns());
        while ctl[0].load(Ordering::SeqCst) == 0 {
            let k = rng.below(W as u64) as usize;
            let pid = ctl[2 + k].load(Ordering::SeqCst) as i32;
            if pid > 0 {
                // Only a child of the owner (no stray pid reuse).
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u64>().ok());
                if ppid == Some(ctl[6].load(Ordering::SeqCst)) {
                    // SAFETY: a worker of the pool under test.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    ctl[1].fetch_add(1, Ordering::SeqCst);
                }
            }
            let us = rng.below(1500);
            if us < 100 {
                support::spin_for(Duration::from_micros(us));
            } else {
                std::thread::sleep(Duration::from_micros(us));
            }
        }
        0
    })
    .ctx("fork killer")?;
    let mut kids = Reap(vec![killer]);
    let pool = PoolBuilder::new()
        .workers(W)
        .build(move |x: u64| -> u64 {
            ran[x as usize].fetch_add(1, Ordering::SeqCst);
            support::spin_for(Duration::from_nanos(300));
            x ^ 0x5555
        })
        .ctx("pool")?;
    let publish = |pool: &Pool<u64, u64>| {
        for (i, p) in pool.worker_ids().into_iter().take(W).enumerate() {
            ctl[2 + i].store(u64::from(p), Ordering::SeqCst);
        }
    };
    publish(&pool);
    let (mut ok, mut died) = (0u64, 0u64);
    let mut bad = Vec::new();
    let start = Instant::now();
    let mut m = pool.map(0..N);
    let mut x = 0u64;
    for r in m.by_ref() {
        let c = ran[x as usize].load(Ordering::SeqCst);
        match r {
            Ok(v) if v == x ^ 0x5555 && c == 1 => ok += 1,
            Err(JobError::WorkerDied(_)) if c <= 1 => died += 1,
            r => bad.push((x, r, c)),
        }
        x += 1;
        if x.is_multiple_of(512) {
            publish(&pool);
        }
        if start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    drop(m);
    ctl[0].store(1, Ordering::SeqCst);
    support::wait_child(&mut kids.0[0], LONG)?;
    kids.0.clear();
    pool.shutdown().ctx("shutdown")?;
    let kills = ctl[1].load(Ordering::SeqCst);
    println!(
        "    {x} jobs in {:?}: {ok} ok, {died} WorkerDied, {kills} kills",
        start.elapsed()
    );
    ensure!(x == N, "map stopped after {x} of {N} jobs in 60 s");
    bad.truncate(10);
    ensure!(bad.is_empty(), "bad outcomes (job, result, runs): {bad:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. job_timeout races: jobs whose run time straddles the timeout (kill vs completion), tiny
// jobs right behind them in the same batch, and max_jobs_per_worker recycling while batches
// are in flight. Every job: Ok (run once), or TimedOut (a slow job, run once); nothing else,
// nothing lost or twice.
fn pool_timeouts_with_recycling_exactly_once() -> Outcome {
    const N: u64 = 3000;
    let ran = counters(N as usize)?;
    let pool = PoolBuilder::new()
        .workers(2)
        .job_timeout(Duration::from_millis(60))
        .max_jobs_per_worker(37)
        .build(move |x: u64| -> u64 {
            ran[x as usize].fetch_add(1, Ordering::SeqCst);
            if x % 97 == 3 {
                // 40..80 ms: around the 60 ms timeout.
                std::thread::sleep(Duration::from_millis(40 + support::mix(x) % 41));
            }
            x + 1
        })
        .ctx("pool")?;
    let start = Instant::now();
    let mut bad = Vec::new();
    let (mut timed, mut late_ok) = (0, 0);
    for (x, r) in (0..N).zip(pool.map(0..N)) {
        let c = ran[x as usize].load(Ordering::SeqCst);
        match r {
            Ok(v) if v == x + 1 && c == 1 => {
                if x % 97 == 3 {
                    late_ok += 1;
                }
            }
            Err(JobError::TimedOut) if x % 97 == 3 && c == 1 => timed += 1,
            r => bad.push((x, r, c)),
        }
    }
    let took = start.elapsed();
    pool.shutdown().ctx("shutdown")?;
    println!("    {took:?}: {timed} timed out, {late_ok} slow ones finished");
    bad.truncate(10);
    ensure!(bad.is_empty(), "bad outcomes (job, result, runs): {bad:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Panicking jobs with whole batches behind them, on every worker: only the panicking jobs
// fail, with their messages; the rest run once.
fn pool_panics_with_batches_behind() -> Outcome {
    std::panic::set_hook(Box::new(|_| {}));
    const N: u64 = 50_000;
    let ran = counters(N as usize)?;
    let pool = PoolBuilder::new()
        .workers(3)
        .build(move |x: u64| -> u64 {
            ran[x as usize].fetch_add(1, Ordering::SeqCst);
            if x.is_multiple_of(7) {
                panic!("p{x}");
            }
            if x.is_multiple_of(1001) {
                std::panic::panic_any(x);
            }
            x
        })
        .ctx("pool")?;
    let mut bad = Vec::new();
    for (x, r) in (0..N).zip(pool.map(0..N)) {
        let want = if x % 7 == 0 {
            Err(JobError::Panicked {
                message: format!("p{x}"),
            })
        } else if x % 1001 == 0 {
            Err(JobError::Panicked {
                message: "Box<dyn Any>".into(),
            })
        } else {
            Ok(x)
        };
        if r != want {
            bad.push((x, r));
        }
    }
    pool.shutdown().ctx("shutdown")?;
    bad.truncate(10);
    ensure!(bad.is_empty(), "wrong outcomes: {bad:?}");
    let twice = support::not_run_once(&ran[..N as usize]);
    ensure!(
        twice.is_empty(),
        "jobs not run exactly once (job, runs): {twice:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Dropping the pool with full batches in flight and a full queue, handles kept: every
// queued job finishes (handles joined after the drop), every worker is reaped (no zombie),
// and a worker killed during the drain is replaced and its jobs finish.
fn pool_drop_with_batches_in_flight_reaps_all() -> Outcome {
    const N: u64 = 6000;
    let ran = counters(N as usize)?;
    let pool = PoolBuilder::new()
        .workers(2)
        .queue_capacity(3000)
        .build(move |x: u64| -> u64 {
            ran[x as usize].fetch_add(1, Ordering::SeqCst);
            if x.is_multiple_of(64) {
                support::spin_for(Duration::from_micros(300));
            }
            x * 2
        })
        .ctx("pool")?;
    let pids = pool.worker_ids();
    let handles: Vec<_> = (0..N)
        .map(|x| pool.submit(x))
        .collect::<Result<_, _>>()
        .ctx("submit")?;
    // SAFETY: a worker of this pool.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let later_pids = pool.worker_ids();
    drop(pool);
    let mut bad = Vec::new();
    for (x, h) in (0..N).zip(handles) {
        let r = h.join();
        let c = ran[x as usize].load(Ordering::SeqCst);
        let ok = match &r {
            Ok(v) => *v == x * 2 && c == 1,
            Err(JobError::WorkerDied(_)) => c <= 1,
            Err(_) => false,
        };
        if !ok {
            bad.push((x, r, c));
        }
    }
    bad.truncate(10);
    ensure!(
        bad.is_empty(),
        "outcomes after drop (job, result, runs): {bad:?}"
    );
    for p in pids.iter().chain(&later_pids) {
        ensure!(
            support::proc_state(*p).is_none(),
            "worker {p} not reaped after drop"
        );
    }
    // No child of ours left at all.
    // SAFETY: waitpid with WNOHANG on any child.
    let w = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    ensure!(
        w == -1,
        "a child is left after the pool was dropped (waitpid -> {w})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 9. The owner dies (SIGKILL) while batches are in flight, some workers inside a long job,
// others blocked sending results or waiting for jobs: every worker exits.
fn pool_owner_death_with_batches_in_flight() -> Outcome {
    // SAFETY: prctl with integer arguments: orphans become our children, so we can reap them.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let st = shared_u64(5)?;
    let mut owner = forkipc::fork((), move |()| {
        let Ok(pool) = PoolBuilder::new().workers(3).build(|x: u64| -> u64 {
            if x == 5 {
                loop {
                    std::hint::spin_loop();
                }
            }
            if x == 9 {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            x
        }) else {
            return 1;
        };
        for (i, p) in pool.worker_ids().into_iter().enumerate() {
            st[1 + i].store(u64::from(p), Ordering::SeqCst);
        }
        let hs: Vec<_> = (0..5000u64).filter_map(|x| pool.submit(x).ok()).collect();
        st[0].store(1, Ordering::SeqCst);
        // Keep the handles; stop taking results (workers fill their result rings).
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let _ = &hs;
        }
    })
    .ctx("fork owner")?;
    ensure!(
        support::wait_until(LONG, || st[0].load(Ordering::SeqCst) != 0),
        "owner did not start"
    );
    std::thread::sleep(Duration::from_millis(100));
    owner.kill().ctx("kill")?;
    support::wait_child(&mut owner, LONG)?;
    let pids: Vec<u32> = (1..4)
        .map(|i| st[i].load(Ordering::SeqCst) as u32)
        .collect();
    let gone = support::wait_until(Duration::from_secs(5), || pids.iter().all(|&p| pid_gone(p)));
    let states: Vec<_> = pids.iter().map(|&p| support::proc_state(p)).collect();
    for &p in &pids {
        // SAFETY: orphaned workers (ours to reap: we are their subreaper).
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
        let _ = support::wait_pid(p as i32, Duration::from_secs(3));
    }
    ensure!(
        gone,
        "workers still alive 5 s after the owner died: states {states:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 10. Two `map`s interleaved, handles kept unjoined among them, one `map` dropped mid-way:
// results in order, every job once, memory bounded over a long input.
fn pool_two_maps_interleaved_and_unjoined_handles() -> Outcome {
    let pool = Pool::new(2, |x: u64| x.wrapping_mul(31)).ctx("pool")?;
    let n = 1_500_000u64;
    let mut kept = Vec::new();
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let mut a = pool.map(0..n);
    let mut b = pool.map(n..2 * n);
    let dropped = pool.map(0..100_000u64);
    let before = rss();
    let mut mid = 0;
    for i in 0..n {
        let ra = a.next();
        let rb = b.next();
        ensure!(
            ra == Some(Ok(i.wrapping_mul(31))) && rb == Some(Ok((n + i).wrapping_mul(31))),
            "item {i}: {ra:?} {rb:?}"
        );
        if i % 100_000 == 0 {
            kept.push(pool.submit(i).ctx("submit")?);
        }
        if i == n / 3 {
            mid = rss();
        }
    }
    ensure!(
        a.next().is_none() && b.next().is_none(),
        "maps longer than their input"
    );
    drop((a, b, dropped));
    let grown = rss().saturating_sub(mid);
    for (i, h) in kept.into_iter().enumerate() {
        let x = i as u64 * 100_000;
        ensure!(h.join() == Ok(x.wrapping_mul(31)), "kept handle {x}");
    }
    ensure!(
        grown < 8 * 1024,
        "RSS grew {grown} KiB over the last two thirds of two interleaved maps (start {before} KiB)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 11. serde jobs that fail to encode in the owner, to decode in the worker, results that fail
// to encode in the worker, mixed into long batches: each fails alone with Codec; the others
// run once with their values.
#[cfg(feature = "serde")]
mod serde_cases {
    use serde::de::Error as _;
    use serde::ser::Error as _;

    /// Encodes as a u64, except: 1 fails to encode; 3 panics while encoding. 2 fails to
    /// decode (in the worker).
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Job(pub u64);

    impl serde::Serialize for Job {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.0 % 1000 {
                1 => Err(S::Error::custom("job refuses to encode")),
                3 => panic!("Serialize panicked"),
                _ => s.serialize_u64(self.0),
            }
        }
    }

    impl<'de> serde::Deserialize<'de> for Job {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Job, D::Error> {
            let v = u64::deserialize(d)?;
            if v % 1000 == 2 {
                return Err(D::Error::custom("impossible"));
            }
            Ok(Job(v))
        }
    }

    /// A result that fails to encode in the worker when odd-thousand-4.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Res(pub u64);

    impl serde::Serialize for Res {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self.0 % 1000 == 4 {
                return Err(S::Error::custom("result refuses to encode"));
            }
            s.serialize_u64(self.0)
        }
    }

    impl<'de> serde::Deserialize<'de> for Res {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Res, D::Error> {
            u64::deserialize(d).map(Res)
        }
    }
}

#[cfg(feature = "serde")]
fn pool_serde_codec_failures_with_batches() -> Outcome {
    use serde_cases::{Job, Res};
    const N: u64 = 20_000;
    let ran = counters(N as usize)?;
    let pool = PoolBuilder::new()
        .workers(3)
        .build_serde(move |j: Job| -> Res {
            ran[j.0 as usize].fetch_add(1, Ordering::SeqCst);
            Res(j.0)
        })
        .ctx("pool")?;
    let mut bad = Vec::new();
    let jobs = (0..N).filter(|x| x % 1000 != 3).map(Job);
    for (j, r) in jobs.clone().zip(pool.map(jobs)) {
        let x = j.0;
        let c = ran[x as usize].load(Ordering::SeqCst);
        let ok = match x % 1000 {
            1 | 2 => matches!(r, Err(JobError::Codec { .. })) && c == 0,
            4 => matches!(r, Err(JobError::Codec { .. })) && c == 1,
            _ => r == Ok(Res(x)) && c == 1,
        };
        if !ok {
            bad.push((x, r, c));
        }
    }
    pool.shutdown().ctx("shutdown")?;
    bad.truncate(10);
    ensure!(
        bad.is_empty(),
        "wrong outcomes (job, result, runs): {bad:?}"
    );
    Ok(())
}

/// A job whose `Serialize` panics in the owner (inside `submit`), caught by the caller: the
/// pool must stay usable (later jobs run and end). It kept the half-written record (id, length
/// 0) in its queue without counting it, so the next submit's dispatch sent that record instead
/// and cleared the queue: the next job never ran and its `join` waited for ever.
#[cfg(feature = "serde")]
fn pool_serde_job_serialize_panic_then_submit() -> Outcome {
    use serde_cases::{Job, Res};
    std::panic::set_hook(Box::new(|_| {}));
    let st = shared_u64(2)?;
    let owner = forkipc::fork((), move |()| {
        let Ok(pool) = PoolBuilder::new()
            .workers(2)
            .build_serde(|j: Job| -> Res { Res(j.0) })
        else {
            return 1;
        };
        let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.submit(Job(3))));
        if p.is_ok() {
            return 2;
        }
        let mut bad = 0;
        for x in [10u64, 11, 12] {
            let r = pool
                .submit(Job(x))
                .ok()
                .map(|h| h.join_timeout(Duration::from_secs(3)));
            if r != Some(Ok(Res(x))) {
                bad += 1;
            }
        }
        let m: Vec<_> = pool.map((20..30).map(Job)).take(10).collect();
        if m != (20..30).map(|x| Ok(Res(x))).collect::<Vec<_>>() {
            bad += 10;
        }
        st[1].store(bad, Ordering::SeqCst);
        st[0].store(1, Ordering::SeqCst);
        std::mem::forget(pool);
        0
    })
    .ctx("fork owner")?;
    let kids = Reap(vec![owner]);
    let ok = support::wait_until(Duration::from_secs(20), || {
        st[0].load(Ordering::SeqCst) != 0
    });
    drop(kids);
    ensure!(
        ok,
        "the owner hung after a job's Serialize panicked in submit"
    );
    let bad = st[1].load(Ordering::SeqCst);
    ensure!(
        bad == 0,
        "after a caught Serialize panic in submit: {bad} (1 per lost submit, 10 if map was wrong)"
    );
    Ok(())
}
