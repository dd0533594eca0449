//! Regression tests from an adversarial review of the issue-8 soundness fixes: each case tries
//! to break one claim, and fails when the claim is broken (the message says how). The
//! `regression_*` cases failed on the code the review read (aac8260) and pass since the fixes
//! that followed it; two more findings are now compile errors, checked by `compile_fail`
//! doctests (`ShmMutexGuard` is not `Sync`; `AtomicBool` is not `Shareable`). The other
//! cases are claims the review checked and found to hold.
//!
//! Run: cargo test --release --test review            (all)
//!      cargo test --release --test review -- NAME    (one)

mod support;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use forkipc::{AnonRegion, RecvTimeoutError, ShmMutex, TryLockError};
use support::{
    Context, Outcome, Reap, await_asleep, cpu_blocker, leak, pin_to, spawn_fn, wait_for,
};

fn main() {
    support::run(cases![
        regression_woken_waiter_that_times_out_hands_the_wake_on,
        presence_entry_control_without_scribble,
        regression_presence_entry_scribble_cannot_hide_lock_deaths,
        regression_presence_linked_while_32_locks_are_held,
        regression_region_beyond_the_registry_is_refused,
        regression_fork_returns_while_a_peer_forges_the_reserved_slot,
        regression_thread_exit_walk_cannot_be_steered_into_private_memory,
        regression_forged_deaths_do_not_exhaust_robust_slots,
        regression_fork_into_another_pid_namespace_is_refused,
        glibc_robust_mutexes_interleave_with_ours,
        peer_clearing_our_wait_word_costs_only_retries,
    ]);
}

const LONG: Duration = Duration::from_secs(20);

/// The presence table (4096 slots of two pages: 32 MiB of shared anonymous mapping, in which
/// each slot holder has made its own slot's entry page private), found the way any
/// compromised process in the tree can: /proc/self/maps.
fn find_presence_table() -> Option<usize> {
    const SPAN: usize = 4096 * 2 * 4096;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut ranges = Vec::new();
    for l in maps.lines() {
        let mut it = l.split_whitespace();
        let range = it.next()?;
        let perms = it.next()?;
        let (a, b) = range.split_once('-')?;
        ranges.push((
            usize::from_str_radix(a, 16).ok()?,
            usize::from_str_radix(b, 16).ok()?,
            perms.to_string(),
        ));
    }
    for (i, (a, _, perms)) in ranges.iter().enumerate() {
        if perms != "rw-s" {
            continue;
        }
        // Consecutive mappings from `a` that cover exactly the table's span.
        let mut end = *a;
        for (s, e, _) in &ranges[i..] {
            if *s != end {
                break;
            }
            end = *e;
            if end - a == SPAN {
                return Some(*a);
            }
        }
    }
    None
}

const TID_MASK: u32 = 0x3fff_ffff;
const OWNER_DIED: u32 = 0x4000_0000;

fn slot_word(table: usize, i: usize) -> &'static AtomicU32 {
    // SAFETY: the table is a live, never-unmapped mapping of 4096 two-page slots; the word is
    // 32 bytes before the end of the slot's first page.
    unsafe { &*((table + i * 8192 + 4096 - 32) as *const AtomicU32) }
}

fn slot_next(table: usize, i: usize) -> &'static AtomicUsize {
    // SAFETY: as above; the entry (`next`) is 32 bytes after the word: the first word of the
    // slot's second page (the holder's private page; in this process, whatever is there).
    unsafe { &*((table + i * 8192 + 4096) as *const AtomicUsize) }
}

// ---------------------------------------------------------------------------------------------
// 1. ShmMutex: the unlock clears WAITERS and wakes one sleeper; if that sleeper is a
//    lock_timeout whose deadline has passed when it runs, it returns TimedOut without taking
//    the lock or re-setting WAITERS. A later unlock does not wake the remaining sleeper.

fn regression_woken_waiter_that_times_out_hands_the_wake_on() -> Outcome {
    pin_to(0)?;
    let region = leak(AnonRegion::new(4096).ctx("region")?);
    let m = region.alloc(ShmMutex::new(0u64)).ctx("alloc")?;
    let stage = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let w1_start = region.alloc(AtomicU64::new(0)).ctx("alloc")?;
    let w1_result = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let w2_result = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let w2_ms = region.alloc(AtomicU64::new(0)).ctx("alloc")?;
    let released_at = region.alloc(AtomicU64::new(0)).ctx("alloc")?;
    let blocker_running = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let blocker_stop = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    // H: holds, then (stage 2) unlocks and at once locks again, then (stage 4) unlocks.
    let _h = spawn_fn("child", move || {
        pin_to(0)?;
        let g = m.lock().ok().ctx("H lock")?;
        stage.store(1, Ordering::SeqCst);
        ensure!(wait_for(stage, 2, LONG), "stage 2");
        drop(g);
        let g = m.lock().ok().ctx("H relock")?; // the unfair fast path: no WAITERS
        stage.store(3, Ordering::SeqCst);
        ensure!(wait_for(stage, 4, LONG), "stage 4");
        released_at.store(support::mono_ns(), Ordering::SeqCst);
        drop(g);
        stage.store(5, Ordering::SeqCst);
        Ok(())
    })?;
    ensure!(wait_for(stage, 1, LONG), "H never locked");
    const W1_TIMEOUT: Duration = Duration::from_millis(400);
    // W1 (first sleeper in the futex queue): a bounded lock attempt.
    let mut w1 = spawn_fn("child", move || {
        pin_to(1)?;
        w1_start.store(support::mono_ns(), Ordering::SeqCst);
        let r = m.lock_timeout(W1_TIMEOUT);
        w1_result.store(
            match r {
                Ok(_) | Err(TryLockError::OwnerDied(_)) => 1,
                Err(TryLockError::TimedOut) => 2,
                _ => 3,
            },
            Ordering::SeqCst,
        );
        Ok(())
    })?;
    await_asleep(w1.id(), LONG)?;
    // W2 (second sleeper): would be `lock()`; bounded here so the test ends.
    let mut w2 = spawn_fn("child", move || {
        pin_to(0)?;
        let r = m.lock_timeout(Duration::from_secs(3));
        let got = support::mono_ns();
        w2_result.store(
            match r {
                Ok(_) | Err(TryLockError::OwnerDied(_)) => 1,
                Err(TryLockError::TimedOut) => 2,
                _ => 3,
            },
            Ordering::SeqCst,
        );
        w2_ms.store(
            got.saturating_sub(released_at.load(Ordering::SeqCst)) / 1_000_000,
            Ordering::SeqCst,
        );
        Ok(())
    })?;
    await_asleep(w2.id(), LONG)?;
    // W1 cannot run (its CPU is taken) while its deadline passes and H unlocks.
    let _blocker = cpu_blocker(1, blocker_running, blocker_stop)?;
    ensure!(wait_for(blocker_running, 1, LONG), "blocker never ran");
    let deadline = w1_start.load(Ordering::SeqCst) + W1_TIMEOUT.as_nanos() as u64;
    while support::mono_ns() < deadline + 10_000_000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    stage.store(2, Ordering::SeqCst); // H: unlock (wakes W1, still queued) + relock
    ensure!(wait_for(stage, 3, LONG), "H never relocked");
    blocker_stop.store(1, Ordering::SeqCst); // W1 runs: held by H, deadline passed
    support::wait_child(&mut w1.0, LONG)?;
    ensure!(
        w1_result.load(Ordering::SeqCst) == 2,
        "setup: W1 result {}",
        w1_result.load(Ordering::SeqCst)
    );
    stage.store(4, Ordering::SeqCst); // H unlocks for good
    ensure!(wait_for(stage, 5, LONG), "H never unlocked");
    std::thread::sleep(Duration::from_millis(100));
    let free_now = m.try_lock().is_ok();
    support::wait_child(&mut w2.0, LONG)?;
    ensure!(
        w2_result.load(Ordering::SeqCst) == 1,
        "W2 slept on a FREE lock (try_lock from a third process succeeded: {free_now}) until its \
         own timeout: result {} (2 = TimedOut), {} ms after H's last unlock. With lock() it \
         would sleep forever.",
        w2_result.load(Ordering::SeqCst),
        w2_ms.load(Ordering::SeqCst)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Any process of the tree maps the presence table. The presence word is linked first, and
//    its `next` field is in the table: scribbling it makes the kernel's walk at the victim's
//    death fault right after the presence word, so none of the victim's lock words (in a region
//    the attacker does not even map) is marked OWNER_DIED. Its peers hang in `lock()`.

fn presence_entry_control_without_scribble() -> Outcome {
    presence_scribble(false)
}

fn regression_presence_entry_scribble_cannot_hide_lock_deaths() -> Outcome {
    presence_scribble(true)
}

fn presence_scribble(scribble: bool) -> Outcome {
    let r1 = leak(AnonRegion::new(4096).ctx("region")?);
    let stage = r1.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let v_pid = r1.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let a_result = r1.alloc(AtomicU32::new(0)).ctx("alloc")?;
    // The first channel makes the presence table: every later child maps it.
    let (tx, rx) = forkipc::channel::<u64>(4).ctx("channel")?;
    // A: the compromised process (no endpoints at all).
    let _a = spawn_fn("child", move || {
        ensure!(wait_for(stage, 1, LONG), "V never started");
        let vp = v_pid.load(Ordering::SeqCst);
        let table = find_presence_table().ctx("presence table")?;
        let mut found = false;
        for i in 0..4096 {
            if slot_word(table, i).load(Ordering::SeqCst) & TID_MASK == vp {
                if scribble {
                    slot_next(table, i).store(0x10, Ordering::SeqCst);
                }
                found = true;
            }
        }
        a_result.store(if found { 1 } else { 2 }, Ordering::SeqCst);
        stage.store(2, Ordering::SeqCst);
        Ok(())
    })?;
    // Made after A was forked: A does not map it.
    let r3 = leak(AnonRegion::new(4096).ctx("region")?);
    let m3 = r3.alloc(ShmMutex::new(0u64)).ctx("alloc")?;
    // V: owns the sender, holds m3.
    let v = forkipc::fork(tx, move |_tx| {
        let _g = m3.lock();
        v_pid.store(std::process::id(), Ordering::SeqCst);
        stage.store(1, Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .ctx("fork V")?;
    let mut v = Reap(v);
    ensure!(wait_for(stage, 2, LONG), "A never finished");
    ensure!(
        a_result.load(Ordering::SeqCst) == 1,
        "A did not find V's slot"
    );
    v.0.kill().ctx("kill V")?;
    support::wait_child(&mut v.0, LONG)?;
    let r = rx.recv_timeout(Duration::from_secs(2));
    ensure!(
        r == Err(RecvTimeoutError::Disconnected),
        "presence itself: {r:?}"
    );
    let t = Instant::now();
    match m3.lock_timeout(Duration::from_secs(3)) {
        Err(TryLockError::OwnerDied(mut g)) => {
            g.mark_consistent();
            Ok(())
        }
        other => Err(format!(
            "V was SIGKILLed and reaped holding m3 (in a region A never mapped), but lock_timeout \
             returned {other:?} after {:?}; lock() would hang for ever",
            t.elapsed()
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Honest code: a thread that holds 32 robust locks when the process first needs presence
//    (its first channel) gets a presence slot that is never linked: the process's death is
//    invisible to its peers for ever (README promises 100 ms).

fn regression_presence_linked_while_32_locks_are_held() -> Outcome {
    let shared = leak(AnonRegion::new(4096).ctx("region")?);
    let result = shared.alloc(AtomicU32::new(0)).ctx("alloc")?; // 1 Disconnected, 2 Timeout
    let c_pid = shared.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let stage = shared.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let mut p = spawn_fn("child", move || {
        let region = AnonRegion::new(64 * 1024).ctx("region")?;
        let shards: Vec<&ShmMutex<u64>> = (0..32)
            .map(|_| region.alloc(ShmMutex::new(0u64)).unwrap())
            .collect();
        // Lock every shard (e.g. to take a consistent snapshot)...
        let guards: Vec<_> = shards.iter().map(|m| m.lock().ok().unwrap()).collect();
        // ...and, meanwhile, make this process's first channel.
        let (tx, rx) = forkipc::channel::<u64>(4).ctx("channel")?;
        drop(guards);
        let c = forkipc::fork(rx, move |rx| {
            c_pid.store(std::process::id(), Ordering::SeqCst);
            stage.store(1, Ordering::SeqCst);
            let r = rx.recv_timeout(Duration::from_secs(3));
            result.store(
                match r {
                    Err(RecvTimeoutError::Disconnected) => 1,
                    Err(RecvTimeoutError::Timeout) => 2,
                    Ok(_) => 3,
                },
                Ordering::SeqCst,
            );
            0
        })
        .ctx("fork C")?;
        std::mem::forget(c);
        let _keep = tx;
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })?;
    ensure!(wait_for(stage, 1, LONG), "C never started");
    std::thread::sleep(Duration::from_millis(100));
    p.0.kill().ctx("kill P")?;
    let ok = wait_for(result, 1, Duration::from_secs(10));
    // SAFETY: C is our grandchild (reparented); cleanup only.
    unsafe { libc::kill(c_pid.load(Ordering::SeqCst) as i32, libc::SIGKILL) };
    ensure!(ok, "C never reported");
    ensure!(
        result.load(Ordering::SeqCst) == 1,
        "P was SIGKILLed, but its child's recv_timeout(3 s) returned {} (2 = Timeout); \
         recv() would block for ever",
        result.load(Ordering::SeqCst)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Honest code: the region registry has 4096 records. The 4097th live region is silently
//    unregistered, so its mutexes are never linked: a holder's death is never reported.

fn regression_region_beyond_the_registry_is_refused() -> Outcome {
    // Every region is recorded so that its locks can be robust; past the record's capacity a
    // region is refused, loudly, instead of being handed out with locks that silently are not.
    let mut keep: Vec<AnonRegion> = Vec::new();
    let err = loop {
        match AnonRegion::new(4096) {
            Ok(r) => keep.push(r),
            Err(e) => break e,
        }
        ensure!(
            keep.len() <= 4096,
            "more than 4096 live regions were handed out"
        );
    };
    ensure!(
        matches!(err, forkipc::Error::TooManyRegions),
        "after {} regions: {err:?}, expected TooManyRegions",
        keep.len()
    );
    keep.pop();
    let r = leak(AnonRegion::new(4096).ctx("a region once one was dropped")?);
    let m = r.alloc(ShmMutex::new(0u64)).ctx("alloc")?;
    let held = r.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let mut h = spawn_fn("child", move || {
        let _g = m.lock();
        held.store(1, Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })?;
    ensure!(wait_for(held, 1, LONG), "H never locked");
    h.0.kill().ctx("kill")?;
    support::wait_child(&mut h.0, LONG)?;
    drop(keep);
    match m.lock_timeout(Duration::from_secs(3)) {
        Err(TryLockError::OwnerDied(_)) => Ok(()),
        other => Err(format!(
            "holder SIGKILLed and reaped; lock_timeout(3 s) returned {other:?}: not robust"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// 5. fork's await_adoption loops (5 ms naps) while the reserved slot still names the parent's
//    TID and the child lives. Any process of the tree can write the parent's TID back after
//    the child took the slot: the parent's `fork()` does not return until the child exits.

fn regression_fork_returns_while_a_peer_forges_the_reserved_slot() -> Outcome {
    let shared = leak(AnonRegion::new(4096).ctx("region")?);
    let stop = shared.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let ready = shared.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let (tx, rx) = forkipc::channel::<u64>(4).ctx("channel")?; // table + our presence
    let me = std::process::id();
    let _a = spawn_fn("child", move || {
        let table = find_presence_table().ctx("table")?;
        // claim() scans from pid % 4096: the parent's next reservation is the first free slot.
        let start = me as usize % 4096;
        let target = (0..4096)
            .map(|k| (start + k) % 4096)
            .find(|&i| slot_word(table, i).load(Ordering::SeqCst) & TID_MASK == 0)
            .ctx("free slot")?;
        let w = slot_word(table, target);
        ready.store(1, Ordering::SeqCst);
        while stop.load(Ordering::Relaxed) == 0 {
            let v = w.load(Ordering::Relaxed);
            let tid = v & TID_MASK;
            if tid != 0 && tid != me && v & OWNER_DIED == 0 {
                w.store(me | (v & 0x8000_0000), Ordering::Relaxed); // "still reserved"
            }
            std::hint::spin_loop();
        }
        Ok(())
    })?;
    ensure!(wait_for(ready, 1, LONG), "A not ready");
    let t = Instant::now();
    let c = forkipc::fork(rx, |_rx| {
        std::thread::sleep(Duration::from_secs(3));
        0
    })
    .ctx("fork")?;
    let took = t.elapsed();
    stop.store(1, Ordering::SeqCst);
    let mut c = Reap(c);
    support::wait_child(&mut c.0, LONG)?;
    drop(tx);
    ensure!(
        took < Duration::from_millis(2500),
        "fork() returned only after {took:?} (its wait for the child's adoption is bounded at \
         2 s; before that bound, a child that never exits kept fork() from returning at all)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. `Shareable` promises "valid for every bit pattern", yet AtomicBool is Shareable; std
//    documents AtomicBool as having bool's bit validity. A peer writing 7 (its memory, its
//    values) leaves this process holding a `&AtomicBool` to an invalid value; observable:
//    every CAS loop on it spins for ever.

// ---------------------------------------------------------------------------------------------
// 7. A thread that exits with a linked entry (a guard leaked with mem::forget) makes the
//    kernel walk its list while the process lives. The entry's `next` is in shared memory; a
//    peer points it into our *private* memory (same layout after fork), and the kernel writes
//    OWNER_DIED into any u32 there that holds the thread's TID.

static PRIVATE: [AtomicU32; 16] = [const { AtomicU32::new(0) }; 16];

fn regression_thread_exit_walk_cannot_be_steered_into_private_memory() -> Outcome {
    let r = leak(AnonRegion::new(4096).ctx("region")?);
    let m = r.alloc(ShmMutex::new(0u64)).ctx("alloc")?;
    let stage = r.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let m_addr = m as *const ShmMutex<u64> as usize;
    // The peer: once our thread holds `m`, points the entry's `next` (offset 32 of the word)
    // at &PRIVATE[8] + 32... i.e. an "entry" whose futex word is PRIVATE[0] (entry - 32).
    let target_entry = &PRIVATE[0] as *const AtomicU32 as usize + 32;
    let mut peer = spawn_fn("child", move || {
        ensure!(wait_for(stage, 1, LONG), "stage 1");
        // SAFETY: (arbitrary peer code) offset 32 of the lock word lies in the shared region.
        unsafe { ((m_addr + 32) as *const AtomicUsize).as_ref().unwrap() }
            .store(target_entry, Ordering::SeqCst);
        stage.store(2, Ordering::SeqCst);
        Ok(())
    })?;
    let t = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        PRIVATE[0].store(tid, Ordering::SeqCst); // e.g. a record of which thread did what
        std::mem::forget(m.lock()); // safe code
        stage.store(1, Ordering::SeqCst);
        while stage.load(Ordering::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        tid
    });
    let tid = t.join().map_err(|_| "thread panicked".to_string())?;
    support::expect_success(&mut peer.0, LONG)?;
    std::thread::sleep(Duration::from_millis(50));
    let now = PRIVATE[0].load(Ordering::SeqCst);
    ensure!(
        now == tid,
        "process-private static changed from {tid:#x} to {now:#x} when a thread exited: the \
         kernel's robust-list walk, steered by a peer, wrote outside the shared mappings"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. A compromised process writes OWNER_DIED into our presence word. Each later channel we
//    make claims a new slot and links it *first* again; the old entries stay linked for good.
//    After 32 of them the thread's segment is full: the next presence is silently unlinked
//    (and no lock of that thread is robust any more). Our death is then invisible.

fn regression_forged_deaths_do_not_exhaust_robust_slots() -> Outcome {
    let shared = leak(AnonRegion::new(4096).ctx("region")?);
    let stage = shared.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let p_pid = shared.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let result = shared.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let c_pid = shared.alloc(AtomicU32::new(0)).ctx("alloc")?;
    const ROUNDS: u32 = 33;
    // P: a server that makes a channel per request (no threads, nothing unusual).
    let mut p = spawn_fn("child", move || {
        p_pid.store(std::process::id(), Ordering::SeqCst);
        // A: one compromised worker, forked before P's first channel so it maps the table
        // only if the table exists: make it first.
        let (t0, r0) = forkipc::channel::<u64>(1).ctx("channel")?;
        let a = forkipc::fork((), move |()| {
            let me = p_pid.load(Ordering::SeqCst);
            let table = find_presence_table().expect("table");
            for round in 0..ROUNDS {
                if !wait_for(stage, 2 * round + 1, LONG) {
                    return 1;
                }
                for i in 0..4096 {
                    let w = slot_word(table, i);
                    let v = w.load(Ordering::SeqCst);
                    if v & TID_MASK == me {
                        // "P died", and the slot is not free for P to claim again
                        w.store(OWNER_DIED | 0x3fff_fff0, Ordering::SeqCst);
                    }
                }
                stage.store(2 * round + 2, Ordering::SeqCst);
            }
            0
        })
        .ctx("fork A")?;
        std::mem::forget(a);
        drop((t0, r0));
        stage.store(1, Ordering::SeqCst);
        for round in 0..ROUNDS {
            ensure!(wait_for(stage, 2 * round + 2, LONG), "A round {round}");
            let (t, r) = forkipc::channel::<u64>(1).ctx("channel")?; // a request
            drop((t, r));
            if round + 1 < ROUNDS {
                stage.store(2 * round + 3, Ordering::SeqCst);
            }
        }
        // A normal request now: a worker C receives from us.
        let (tx, rx) = forkipc::channel::<u64>(4).ctx("channel")?;
        let c = forkipc::fork(rx, move |rx| {
            c_pid.store(std::process::id(), Ordering::SeqCst);
            let r = rx.recv_timeout(Duration::from_secs(3));
            result.store(
                match r {
                    Err(RecvTimeoutError::Disconnected) => 1,
                    Err(RecvTimeoutError::Timeout) => 2,
                    Ok(_) => 3,
                },
                Ordering::SeqCst,
            );
            0
        })
        .ctx("fork C")?;
        std::mem::forget(c);
        let _keep = tx;
        stage.store(1000, Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })?;
    ensure!(wait_for(stage, 1000, LONG), "P never got there");
    std::thread::sleep(Duration::from_millis(100));
    p.0.kill().ctx("kill P")?;
    let ok = wait_for(result, 1, Duration::from_secs(10));
    // SAFETY: cleanup of a reparented grandchild.
    unsafe { libc::kill(c_pid.load(Ordering::SeqCst) as i32, libc::SIGKILL) };
    ensure!(ok, "C never reported");
    ensure!(
        result.load(Ordering::SeqCst) == 1,
        "after {ROUNDS} forged deaths, P's real SIGKILL went unnoticed: C's recv_timeout(3 s) \
         returned {} (2 = Timeout); recv() would block for ever",
        result.load(Ordering::SeqCst)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 9. Honest code, sandboxed workers each in its own PID namespace (safe: nix::sched::unshare).
//    Both are TID 1 in their namespace. W2 sleeps in lock() (its word in list_op_pending) and
//    is killed: the kernel's pending handling compares the word's TID (1, W1's) with W2's own
//    namespaced TID (1) and marks the lock OWNER_DIED while W1 still holds it. The next locker
//    gets OwnerDied(guard) while W1's guard is alive: two holders, two `&mut T`.

fn regression_fork_into_another_pid_namespace_is_refused() -> Outcome {
    // Two sandboxed workers, each made after `unshare(CLONE_NEWPID)`, would both be TID 1: the
    // kernel's robust-futex handling compares thread ids, so a waiter of one killed while the
    // other held a lock marked the lock dead under its live holder. `fork` now refuses to
    // fork into another PID namespace.
    let mut s = spawn_fn("child", move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).ctx("unshare")?;
        match forkipc::fork((), |()| 0) {
            Err(forkipc::Error::PidNamespace) => Ok(()),
            Ok(mut c) => {
                let _ = c.wait();
                Err("fork made a child in another PID namespace".into())
            }
            Err(e) => Err(format!("fork failed otherwise: {e:?}")),
        }
    })?;
    support::expect_success(&mut s.0, LONG)
}

// ---------------------------------------------------------------------------------------------
// 10. One process, safe code, no peer: a guard leaked (Box::leak) and shared with another
//     thread (ShmMutexGuard is Sync) outlives the thread that locked. When that thread exits,
//     the kernel's robust-list walk marks the word OWNER_DIED, so the next `lock()` succeeds
//     (OwnerDied) while the leaked guard still derefs (check_holder only compares the
//     process): a `&u64` and a `&mut u64` to the same data. The optimiser relies on that not
//     happening: below, it reads the `&u64` before and after a write through the `&mut` and
//     gets the old value twice, while memory holds the new one.

// ---------------------------------------------------------------------------------------------
// 11. (expected to pass) glibc robust pthread mutexes interleaved with ours in one thread,
//     including one locked before our segment exists and unlocked after; then SIGKILL: every
//     held lock, glibc's and ours, must be reported owner-died.

unsafe fn init_robust(p: *mut libc::pthread_mutex_t) {
    // SAFETY: test code; `p` points at zeroed shared memory.
    unsafe {
        let mut a: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut a);
        libc::pthread_mutexattr_setpshared(&mut a, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutexattr_setrobust(&mut a, libc::PTHREAD_MUTEX_ROBUST);
        libc::pthread_mutex_init(p, &a);
    }
}

fn glibc_robust_mutexes_interleave_with_ours() -> Outcome {
    let r = leak(AnonRegion::new(8192).ctx("region")?);
    let base = r.as_ptr() as usize;
    let sz = std::mem::size_of::<libc::pthread_mutex_t>();
    let g = |i: usize| (base + 4096 + i * 64) as *mut libc::pthread_mutex_t;
    assert!(sz <= 64);
    // SAFETY: test code.
    unsafe { (0..5).for_each(|i| init_robust(g(i))) };
    let ms: Vec<&'static ShmMutex<u64>> = (0..4)
        .map(|_| r.alloc(ShmMutex::new(0u64)).unwrap())
        .collect();
    let stage = r.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let ms2 = ms.clone();
    let mut c = spawn_fn("child", move || {
        // SAFETY: test code: glibc robust mutexes in shared memory.
        unsafe {
            libc::pthread_mutex_lock(g(4)); // held for good, behind our END
            libc::pthread_mutex_lock(g(0)); // before our segment exists
            std::mem::forget(ms2[0].lock()); // our segment is made here
            libc::pthread_mutex_lock(g(1));
            libc::pthread_mutex_unlock(g(0)); // glibc unlinks an entry behind our END
            let t = ms2[1].lock();
            libc::pthread_mutex_lock(g(2));
            std::mem::forget(ms2[2].lock());
            drop(t);
            libc::pthread_mutex_unlock(g(1));
            libc::pthread_mutex_lock(g(3));
            std::mem::forget(ms2[3].lock());
        }
        stage.store(1, Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })?;
    ensure!(wait_for(stage, 1, LONG), "child never got there");
    c.0.kill().ctx("kill")?;
    support::wait_child(&mut c.0, LONG)?;
    let mut report = Vec::new();
    for (i, want_dead) in [(0, false), (1, false), (2, true), (3, true), (4, true)] {
        // SAFETY: test code.
        let rc = unsafe { libc::pthread_mutex_trylock(g(i)) };
        let dead = rc == libc::EOWNERDEAD;
        if dead != want_dead || (rc != 0 && rc != libc::EOWNERDEAD) {
            report.push(format!("glibc m{i}: rc {rc}"));
        }
    }
    for (i, want_dead) in [(0, true), (1, false), (2, true), (3, true)] {
        let rr = ms[i].try_lock();
        let dead = matches!(rr, Err(TryLockError::OwnerDied(_)));
        let free = rr.is_ok();
        if dead != want_dead || !(dead || free) {
            report.push(format!("ours m{i}: {rr:?}"));
        }
    }
    ensure!(report.is_empty(), "{report:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 12. (expected to pass) A blocked sender sleeps on its wait word (expected 1). The compromised receiver keeps
//     storing 0 there: every futex wait returns EAGAIN at once and the loop goes round again,
//     each time through `barrier::heavy()`, i.e. a membarrier(GLOBAL_EXPEDITED) that IPIs
//     every CPU running a registered process. Checked: once queued, later stores do not wake it,
//     so the loop lasts only until one wait gets queued (or costs the attacker one FUTEX_WAKE per
//     victim round: no amplification beyond what the attacker can do with membarrier itself).

fn peer_clearing_our_wait_word_costs_only_retries() -> Outcome {
    let (tx, rx) = forkipc::channel::<u64>(1).ctx("channel")?;
    let (hdr, _, _) = forkipc::__testing::typed_ring_memory(&rx);
    let tx_wait = hdr as usize + 256; // RingHeader: head | rx | tx, 128-byte lines
    let mut c = forkipc::fork(rx, move |_rx| {
        let w = tx_wait as *const AtomicU32;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            // SAFETY: (arbitrary peer code) the producer's wait word, in the ring mapping.
            unsafe { (*w).store(0, Ordering::Relaxed) };
        }
        0
    })
    .ctx("fork")?;
    while tx.try_send(1).is_ok() {}
    tx.set_wait_policy(forkipc::WaitPolicy::Block);
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: probe: is the child really clearing that word?
    let probe = unsafe { &*(tx_wait as *const AtomicU32) };
    probe.store(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2));
    println!("    probe after 2 ms: {}", probe.load(Ordering::SeqCst));
    let cpu0 = support::cpu_time();
    let t0 = Instant::now();
    let r = tx.send_timeout(2, Duration::from_secs(1));
    let cpu = support::cpu_time() - cpu0;
    let wall = t0.elapsed();
    support::wait_child(&mut c, LONG)?;
    println!("    cpu {cpu:?} wall {wall:?} r {r:?}");
    ensure!(
        cpu < wall / 10,
        "a Block-policy sender waiting {wall:?} for room ({r:?}) burnt {cpu:?} of CPU \
         (busy loop of EAGAIN futex waits + membarrier IPIs)"
    );
    Ok(())
}
