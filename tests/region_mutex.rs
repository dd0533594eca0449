//! Fork tests for the foundation: `AnonRegion`, `ShmMutex` (robust, process-shared), and
//! `fork`/`Child`.
//!
//! Every case runs in its own forked process (see `support`). Children are wrapped in [`Reap`],
//! which kills and reaps them on every exit path; every wait has a deadline.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkipc::{
    AnonRegion, Error, LockError, NotRecoverableError, Shareable, ShmMutex, TryLockError,
};
use support::{Context, Outcome, Reap, proc_state, spawn_fn, wait_for};

fn main() {
    support::run(cases![
        region_shared_both_ways,
        mutex_counter_exact,
        three_processes_contend_with_lock_timeout_and_try_lock,
        holder_sigkilled_owner_died,
        owner_death_reported_by_try_lock_and_lock_timeout,
        holder_exits_without_unlock_owner_died,
        owner_died_guard_holder_killed_again_reports_owner_died,
        two_waiters_after_owner_death_both_proceed,
        not_recoverable_seen_by_third_process,
        lock_timeout_and_try_lock,
        fork_refused_when_multithreaded,
        panicking_child_fails,
        child_wait_timeout_and_kill,
        bad_sizes_are_errors,
        mutex_holder_thread_exit_reports_owner_died,
        guard_held_across_fork_stays_with_parent,
        guard_copy_in_child_is_inert,
        into_guard_recovers_after_owner_death,
        into_guard_dropped_unrepaired_is_not_recoverable,
        lock_or_recover_repairs_only_after_owner_death,
        lock_or_recover_repair_panic_leaves_not_recoverable,
    ]);
}

/// Generous deadline for waiting on children and flags.
const LONG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Waits for a child and requires exit status 0.
fn expect_ok(child: &mut Reap, what: &str) -> Outcome {
    support::expect_success(&mut child.0, LONG).map_err(|e| format!("{what}: {e}"))
}

/// Like `wait_for`, as an `Outcome`.
fn await_stage(a: &AtomicU32, want: u32, what: &str) -> Outcome {
    if wait_for(a, want, LONG) {
        Ok(())
    } else {
        Err(format!(
            "timed out waiting for {what} (stage {} < {want})",
            a.load(Ordering::Relaxed)
        ))
    }
}

/// Whether the mutex word has its waiters bit set (read through the public `Debug`).
fn has_waiters<T>(m: &ShmMutex<T>) -> bool {
    format!("{m:?}").contains("waiters: true")
}

/// Waits until process `pid` sleeps and the mutex announces a sleeper, then a little more so
/// the sleeper is really inside `futex_wait`.
fn await_sleeper<T>(pid: u32, m: &ShmMutex<T>, what: &str) -> Outcome {
    let start = Instant::now();
    while !(has_waiters(m) && proc_state(pid) == Some('S')) {
        ensure!(
            start.elapsed() < LONG,
            "{what} (pid {pid}) never went to sleep on the mutex: state {:?}, {m:?}",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(30));
    Ok(())
}

/// Whether `addr` is a multiple of the power of two `align`.
fn aligned(addr: usize, align: usize) -> bool {
    addr & (align - 1) == 0
}

/// Sleeps in short naps for up to `limit` (a holder waiting to be killed).
fn linger(limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child's side of a common start: announce readiness, then spin (not sleep) until `go`, so
/// the contenders really start together.
fn start_line(ready: &AtomicU32, go: &AtomicU32) -> Outcome {
    ready.fetch_add(1, Ordering::AcqRel);
    let start = Instant::now();
    let mut n = 0u32;
    while go.load(Ordering::Acquire) == 0 {
        std::hint::spin_loop();
        n = n.wrapping_add(1);
        if n & 4095 == 0 && start.elapsed() > LONG {
            return Err("timed out at the start line".into());
        }
    }
    Ok(())
}

/// The parent's side: wait until `n` children are ready, then fire.
fn fire(ready: &AtomicU32, n: u32, go: &AtomicU32) -> Outcome {
    await_stage(ready, n, "the contenders to get ready")?;
    go.store(1, Ordering::Release);
    Ok(())
}

/// Two fields that must always be equal when the lock is free.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pair {
    a: u64,
    b: u64,
}

// SAFETY: two plain integers, `repr(C)`: no pointers, no drop glue.
unsafe impl Shareable for Pair {}

/// Checks the invariant, then breaks it and restores it with a compiler-visible gap between the
/// two writes. Returns whether the invariant held on entry.
fn bump_pair(p: &mut Pair) -> bool {
    let ok = p.a == p.b;
    p.a += 1;
    std::hint::black_box(&mut *p);
    // A little work inside the critical section, so the others do contend.
    for i in 0..16u32 {
        std::hint::black_box(i);
    }
    p.b = p.a;
    ok
}

fn describe_lock<T>(r: &Result<forkipc::ShmMutexGuard<'_, T>, LockError<'_, T>>) -> String {
    match r {
        Ok(_) => "Ok(guard)".into(),
        Err(e) => format!("Err({e:?})"),
    }
}

fn describe_try<T>(r: &Result<forkipc::ShmMutexGuard<'_, T>, TryLockError<'_, T>>) -> String {
    match r {
        Ok(_) => "Ok(guard)".into(),
        Err(e) => format!("Err({e:?})"),
    }
}

/// Locks a mutex that must be healthy.
fn lock_ok<'a, T>(m: &'a ShmMutex<T>, what: &str) -> Result<forkipc::ShmMutexGuard<'a, T>, String> {
    m.lock().map_err(|e| format!("{what}: lock() gave {e:?}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Regions.

/// A user-defined shared struct: atomics, an array of atomics and a mutex.
#[repr(C)]
struct Board {
    stage: AtomicU32,
    child_pid: AtomicU32,
    from_parent: AtomicU64,
    from_child: AtomicU64,
    bytes: [AtomicU8; 32],
    table: ShmMutex<[u64; 4]>,
}

// SAFETY: `repr(C)`, every field is `Shareable` (atomics, arrays of atomics, a mutex of an
// array of integers).
unsafe impl Shareable for Board {}

impl Board {
    fn new() -> Board {
        Board {
            stage: AtomicU32::new(0),
            child_pid: AtomicU32::new(0),
            from_parent: AtomicU64::new(0),
            from_child: AtomicU64::new(0),
            bytes: [const { AtomicU8::new(0) }; 32],
            table: ShmMutex::new([0; 4]),
        }
    }
}

fn region_shared_both_ways() -> Outcome {
    let region = AnonRegion::new(8192).ctx("AnonRegion::new")?;
    ensure!(region.len() == 8192, "len {}", region.len());
    // SAFETY: the mapping is `len` readable bytes and nothing has been placed in it yet.
    let all_zero = unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len()) }
        .iter()
        .all(|&b| b == 0);
    ensure!(all_zero, "a fresh region is not zero-filled");

    let before = region.alloc(0xDEAD_BEEF_u64).ctx("alloc u64")?;
    let board = region.alloc(Board::new()).ctx("alloc Board")?;
    let base = region.as_ptr() as usize;
    let at = board as *const Board as usize;
    ensure!(
        at >= base && at + size_of::<Board>() <= base + region.len(),
        "Board placed outside the region: {at:#x} not in {base:#x}+{}",
        region.len()
    );
    ensure!(
        aligned(at, align_of::<Board>()),
        "Board misaligned at {at:#x}"
    );

    let mut child = spawn_fn("region child", move || {
        await_stage(&board.stage, 1, "the parent's writes")?;
        ensure!(
            *before == 0xDEAD_BEEF,
            "value placed before fork: {:#x}",
            *before
        );
        let v = board.from_parent.load(Ordering::Relaxed);
        ensure!(v == 0x1234_5678_9abc, "child sees from_parent = {v:#x}");
        for (i, b) in board.bytes.iter().enumerate() {
            let got = b.load(Ordering::Relaxed);
            ensure!(got == i as u8 * 3, "child sees bytes[{i}] = {got}");
        }
        // Now write back.
        board.from_child.store(0xfeed_f00d, Ordering::Relaxed);
        for (i, b) in board.bytes.iter().enumerate() {
            b.store(255 - i as u8, Ordering::Relaxed);
        }
        *lock_ok(&board.table, "child table")? = [1, 2, 3, 4];
        // SAFETY: getpid has no preconditions.
        board
            .child_pid
            .store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
        board.stage.store(2, Ordering::Release);
        // Stay alive until the parent has seen the writes, so it reads them from a live peer.
        await_stage(&board.stage, 3, "the parent's acknowledgement")?;
        Ok(())
    })?;

    // Written after the fork: only shared memory can carry it.
    board.from_parent.store(0x1234_5678_9abc, Ordering::Relaxed);
    for (i, b) in board.bytes.iter().enumerate() {
        b.store(i as u8 * 3, Ordering::Relaxed);
    }
    board.stage.store(1, Ordering::Release);

    await_stage(&board.stage, 2, "the child's writes")?;
    let v = board.from_child.load(Ordering::Relaxed);
    ensure!(
        v == 0xfeed_f00d,
        "parent sees from_child = {v:#x} (child alive)"
    );
    board.stage.store(3, Ordering::Release);
    expect_ok(&mut child, "region child")?;

    // After wait.
    let v = board.from_child.load(Ordering::Relaxed);
    ensure!(
        v == 0xfeed_f00d,
        "parent sees from_child = {v:#x} after wait"
    );
    for (i, b) in board.bytes.iter().enumerate() {
        let got = b.load(Ordering::Relaxed);
        ensure!(got == 255 - i as u8, "parent sees bytes[{i}] = {got}");
    }
    let t = *lock_ok(&board.table, "parent table")?;
    ensure!(t == [1, 2, 3, 4], "parent sees table {t:?}");
    let pid = board.child_pid.load(Ordering::Relaxed);
    ensure!(
        pid == child.id(),
        "child reported pid {pid}, Child::id() is {}",
        child.id()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Mutual exclusion.

#[repr(C)]
struct Counters {
    ready: AtomicU32,
    go: AtomicU32,
    child_span: [AtomicU64; 2],
    counter: ShmMutex<u64>,
    pair: ShmMutex<Pair>,
}

// SAFETY: `repr(C)`, all fields `Shareable`.
unsafe impl Shareable for Counters {}

/// Increments both mutexes `n` times; returns the number of invariant violations seen.
fn hammer(c: &Counters, n: u64) -> Result<u64, String> {
    let mut violations = 0;
    for _ in 0..n {
        *lock_ok(&c.counter, "counter")? += 1;
        let mut p = lock_ok(&c.pair, "pair")?;
        if !bump_pair(&mut p) {
            violations += 1;
        }
    }
    Ok(violations)
}

fn mutex_counter_exact() -> Outcome {
    const N: u64 = 200_000;
    let region = AnonRegion::new(4096).ctx("region")?;
    let c = region
        .alloc(Counters {
            ready: AtomicU32::new(0),
            go: AtomicU32::new(0),
            child_span: [AtomicU64::new(0), AtomicU64::new(0)],
            counter: ShmMutex::new(0),
            pair: ShmMutex::new(Pair { a: 0, b: 0 }),
        })
        .ctx("alloc")?;
    let mut child = spawn_fn("counter child", move || {
        start_line(&c.ready, &c.go)?;
        c.child_span[0].store(support::mono_ns(), Ordering::Relaxed);
        let v = hammer(c, N)?;
        c.child_span[1].store(support::mono_ns(), Ordering::Relaxed);
        ensure!(v == 0, "child saw the pair invariant broken {v} times");
        Ok(())
    })?;
    fire(&c.ready, 1, &c.go)?;
    let (p0, start) = (support::mono_ns(), Instant::now());
    let v = hammer(c, N)?;
    let p1 = support::mono_ns();
    expect_ok(&mut child, "counter child")?;
    let ms = start.elapsed().as_millis();
    let (c0, c1) = (
        c.child_span[0].load(Ordering::Relaxed),
        c.child_span[1].load(Ordering::Relaxed),
    );
    let overlap = p1.min(c1).saturating_sub(p0.max(c0)) / 1_000_000;
    ensure!(v == 0, "parent saw the pair invariant broken {v} times");
    let total = *lock_ok(&c.counter, "final counter")?;
    ensure!(
        total == 2 * N,
        "counter ended at {total}, expected {}",
        2 * N
    );
    let p = *lock_ok(&c.pair, "final pair")?;
    ensure!(p == Pair { a: 2 * N, b: 2 * N }, "pair ended at {p:?}");
    println!("    2 processes x {N} x 2 locks: {ms} ms, the two ran concurrently for {overlap} ms");
    Ok(())
}

#[repr(C)]
struct Contention {
    ready: AtomicU32,
    go: AtomicU32,
    m: ShmMutex<Pair>,
    timeouts: AtomicU64,
    would_blocks: AtomicU64,
    /// Start and end (CLOCK_MONOTONIC ns) of each contender's loop: parent, timed, trying.
    spans: [[AtomicU64; 2]; 3],
}

// SAFETY: `repr(C)`, all fields `Shareable`.
unsafe impl Shareable for Contention {}

impl Contention {
    /// Runs `n` critical sections through `take` (which returns `None` to retry), recording the
    /// span of the loop in `spans[who]`.
    fn run<'a>(
        &'a self,
        who: usize,
        n: u64,
        mut take: impl FnMut() -> Result<Option<forkipc::ShmMutexGuard<'a, Pair>>, String>,
    ) -> Outcome {
        self.spans[who][0].store(support::mono_ns(), Ordering::Relaxed);
        let mut done = 0;
        while done < n {
            if let Some(mut g) = take()? {
                ensure!(bump_pair(&mut g), "invariant broken: {:?}", *g);
                done += 1;
            }
        }
        self.spans[who][1].store(support::mono_ns(), Ordering::Relaxed);
        Ok(())
    }

    /// Milliseconds during which all three loops ran at once.
    fn overlap_ms(&self) -> u64 {
        let from = self
            .spans
            .iter()
            .map(|s| s[0].load(Ordering::Relaxed))
            .max();
        let to = self
            .spans
            .iter()
            .map(|s| s[1].load(Ordering::Relaxed))
            .min();
        to.unwrap_or(0).saturating_sub(from.unwrap_or(0)) / 1_000_000
    }
}

fn three_processes_contend_with_lock_timeout_and_try_lock() -> Outcome {
    const N: u64 = 50_000;
    let region = AnonRegion::new(4096).ctx("region")?;
    let c = region
        .alloc(Contention {
            ready: AtomicU32::new(0),
            go: AtomicU32::new(0),
            m: ShmMutex::new(Pair { a: 0, b: 0 }),
            timeouts: AtomicU64::new(0),
            would_blocks: AtomicU64::new(0),
            spans: [const { [const { AtomicU64::new(0) }; 2] }; 3],
        })
        .ctx("alloc")?;
    let mut timed = spawn_fn("lock_timeout child", move || {
        start_line(&c.ready, &c.go)?;
        c.run(1, N, || match c.m.lock_timeout(Duration::from_micros(2)) {
            Ok(g) => Ok(Some(g)),
            Err(TryLockError::TimedOut) => {
                c.timeouts.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(format!("lock_timeout gave {e:?}")),
        })
    })?;
    let mut trying = spawn_fn("try_lock child", move || {
        start_line(&c.ready, &c.go)?;
        c.run(2, N, || match c.m.try_lock() {
            Ok(g) => Ok(Some(g)),
            Err(TryLockError::WouldBlock) => {
                c.would_blocks.fetch_add(1, Ordering::Relaxed);
                std::hint::spin_loop();
                Ok(None)
            }
            Err(e) => Err(format!("try_lock gave {e:?}")),
        })
    })?;
    fire(&c.ready, 2, &c.go)?;
    let start = Instant::now();
    c.run(0, N, || lock_ok(&c.m, "parent").map(Some))?;
    expect_ok(&mut timed, "lock_timeout child")?;
    expect_ok(&mut trying, "try_lock child")?;
    let p = *lock_ok(&c.m, "final")?;
    ensure!(
        p == Pair { a: 3 * N, b: 3 * N },
        "pair ended at {p:?}, expected {}",
        3 * N
    );
    println!(
        "    3 processes x {N}: {} ms (all three at once for {} ms), {} lock_timeout(2 us) \
         timeouts, {} try_lock WouldBlocks",
        start.elapsed().as_millis(),
        c.overlap_ms(),
        c.timeouts.load(Ordering::Relaxed),
        c.would_blocks.load(Ordering::Relaxed)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3-4. Owner death.

#[repr(C)]
struct Deathbed {
    stage: AtomicU32,
    kill_ns: AtomicU64,
    woke_ns: AtomicU64,
    released_ns: AtomicU64,
    m: ShmMutex<Pair>,
}

// SAFETY: `repr(C)`, all fields `Shareable`.
unsafe impl Shareable for Deathbed {}

impl Deathbed {
    fn new() -> Deathbed {
        Deathbed {
            stage: AtomicU32::new(0),
            kill_ns: AtomicU64::new(0),
            woke_ns: AtomicU64::new(0),
            released_ns: AtomicU64::new(0),
            m: ShmMutex::new(Pair { a: 0, b: 0 }),
        }
    }
}

/// Forks a child that locks `d.m`, leaves the pair half-updated (`a = mark`, `b` unchanged),
/// sets `d.stage = stage` and sleeps holding the lock until killed.
fn spawn_holder(d: &Deathbed, mark: u64, stage: u32) -> Result<Reap, String> {
    spawn_fn("holder", move || {
        let mut g = lock_ok(&d.m, "holder")?;
        g.a = mark;
        d.stage.store(stage, Ordering::Release);
        linger(LONG);
        drop(g);
        Err("holder was not killed".into())
    })
}

/// Forks a child that sleeps `delay`, stores the CLOCK_MONOTONIC time in `d.kill_ns` and
/// SIGKILLs `victim`.
fn spawn_killer(d: &Deathbed, victim: u32, delay: Duration) -> Result<Reap, String> {
    spawn_fn("killer", move || {
        std::thread::sleep(delay);
        d.kill_ns.store(support::mono_ns(), Ordering::Release);
        // SAFETY: kill has no memory-safety preconditions; `victim` is our sibling, unreaped
        // (the parent is blocked in `lock` and reaps it only afterwards).
        let r = unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
        ensure!(r == 0, "kill: {}", std::io::Error::last_os_error());
        Ok(())
    })
}

/// Requires that `child` died of SIGKILL.
fn expect_sigkilled(child: &mut Reap, what: &str) -> Outcome {
    let st = support::wait_child(&mut child.0, LONG)?;
    ensure!(
        st.signal() == Some(libc::SIGKILL),
        "{what} should have died of SIGKILL: {st:?}"
    );
    Ok(())
}

fn holder_sigkilled_owner_died() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let d = region.alloc(Deathbed::new()).ctx("alloc")?;
    *lock_ok(&d.m, "setup")? = Pair { a: 6, b: 6 };

    let mut holder = spawn_holder(d, 7, 1)?;
    await_stage(&d.stage, 1, "the holder to lock")?;
    // The killer fires while the parent is asleep in `lock()`.
    let mut killer = spawn_killer(d, holder.id(), Duration::from_millis(100))?;
    let start = Instant::now();
    let r = d.m.lock();
    let back_ns = support::mono_ns();
    let blocked = start.elapsed();
    let latency = Duration::from_nanos(back_ns.saturating_sub(d.kill_ns.load(Ordering::Acquire)));
    let mut g = match r {
        Err(LockError::OwnerDied(g)) => g,
        other => {
            return Err(format!(
                "lock() after the holder's death gave {}",
                describe_lock(&other)
            ));
        }
    };
    println!(
        "    SIGKILL -> OwnerDied: {} us (blocked in lock() for {} ms)",
        latency.as_micros(),
        blocked.as_millis()
    );
    ensure!(
        latency < Duration::from_secs(2),
        "death noticed only after {latency:?}"
    );
    ensure!(
        g.is_inconsistent(),
        "an OwnerDied guard should be inconsistent"
    );
    ensure!(
        *g == Pair { a: 7, b: 6 },
        "the dead holder's write is not visible: {:?}",
        *g
    );
    // Repair.
    g.b = g.a;
    g.mark_consistent();
    ensure!(!g.is_inconsistent(), "mark_consistent did not stick");
    drop(g);
    expect_sigkilled(&mut holder, "holder")?;
    expect_ok(&mut killer, "killer")?;

    ensure!(
        !d.m.is_not_recoverable(),
        "repaired mutex reports not recoverable"
    );
    {
        let g = lock_ok(&d.m, "after repair")?;
        ensure!(*g == Pair { a: 7, b: 7 }, "repaired data lost: {:?}", *g);
    }
    match d.m.try_lock() {
        Ok(g) => drop(g),
        other => {
            return Err(format!(
                "try_lock after repair gave {}",
                describe_try(&other)
            ));
        }
    }
    let mut other = spawn_fn("locker after repair", move || {
        let mut g = lock_ok(&d.m, "other child")?;
        ensure!(*g == Pair { a: 7, b: 7 }, "child sees {:?}", *g);
        *g = Pair { a: 8, b: 8 };
        Ok(())
    })?;
    expect_ok(&mut other, "locker after repair")?;
    let g = lock_ok(&d.m, "final")?;
    ensure!(*g == Pair { a: 8, b: 8 }, "final {:?}", *g);
    Ok(())
}

fn owner_death_reported_by_try_lock_and_lock_timeout() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let d = region.alloc(Deathbed::new()).ctx("alloc")?;

    // try_lock on a word whose owner is already dead.
    let mut h1 = spawn_holder(d, 1, 1)?;
    await_stage(&d.stage, 1, "holder 1")?;
    h1.kill().ctx("kill holder 1")?;
    expect_sigkilled(&mut h1, "holder 1")?;
    match d.m.try_lock() {
        Err(TryLockError::OwnerDied(mut g)) => {
            ensure!(g.a == 1, "holder 1's write not visible: {:?}", *g);
            g.b = g.a;
            g.mark_consistent();
        }
        other => {
            return Err(format!(
                "try_lock after death gave {}",
                describe_try(&other)
            ));
        }
    }

    // lock_timeout asleep while the holder is killed.
    let mut h2 = spawn_holder(d, 2, 2)?;
    await_stage(&d.stage, 2, "holder 2")?;
    let mut killer = spawn_killer(d, h2.id(), Duration::from_millis(100))?;
    let r = d.m.lock_timeout(Duration::from_secs(10));
    let latency =
        Duration::from_nanos(support::mono_ns().saturating_sub(d.kill_ns.load(Ordering::Acquire)));
    match r {
        Err(TryLockError::OwnerDied(mut g)) => {
            ensure!(g.a == 2, "holder 2's write not visible: {:?}", *g);
            g.b = g.a;
            g.mark_consistent();
        }
        other => {
            return Err(format!(
                "lock_timeout during death gave {}",
                describe_try(&other)
            ));
        }
    }
    println!(
        "    SIGKILL -> lock_timeout OwnerDied: {} us",
        latency.as_micros()
    );
    ensure!(
        latency < Duration::from_secs(2),
        "death noticed only after {latency:?}"
    );
    expect_sigkilled(&mut h2, "holder 2")?;
    expect_ok(&mut killer, "killer")?;

    // lock_timeout(Duration::MAX) asleep while the holder is killed.
    let mut h3 = spawn_holder(d, 3, 3)?;
    await_stage(&d.stage, 3, "holder 3")?;
    let mut killer = spawn_killer(d, h3.id(), Duration::from_millis(50))?;
    match d.m.lock_timeout(Duration::MAX) {
        Err(TryLockError::OwnerDied(mut g)) => {
            g.b = g.a;
            g.mark_consistent();
        }
        other => {
            return Err(format!(
                "lock_timeout(MAX) during death gave {}",
                describe_try(&other)
            ));
        }
    }
    expect_sigkilled(&mut h3, "holder 3")?;
    expect_ok(&mut killer, "killer")?;
    let g = lock_ok(&d.m, "final")?;
    ensure!(*g == Pair { a: 3, b: 3 }, "final {:?}", *g);
    Ok(())
}

fn holder_exits_without_unlock_owner_died() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let m = region.alloc(ShmMutex::new(0u64)).ctx("alloc")?;
    let mut child = spawn_fn("exits holding", move || {
        let mut g = lock_ok(m, "child")?;
        *g = 9;
        std::mem::forget(g);
        Ok(())
    })?;
    expect_ok(&mut child, "exits holding")?;
    match m.lock() {
        Err(LockError::OwnerDied(mut g)) => {
            ensure!(*g == 9, "data {}", *g);
            g.mark_consistent();
        }
        other => {
            return Err(format!(
                "lock() after a holder exited gave {}",
                describe_lock(&other)
            ));
        }
    }
    let g = lock_ok(m, "after repair")?;
    ensure!(*g == 9, "data {}", *g);
    Ok(())
}

fn owner_died_guard_holder_killed_again_reports_owner_died() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let d = region.alloc(Deathbed::new()).ctx("alloc")?;
    let mut h1 = spawn_holder(d, 1, 1)?;
    await_stage(&d.stage, 1, "holder 1")?;
    h1.kill().ctx("kill")?;
    expect_sigkilled(&mut h1, "holder 1")?;

    // The second holder takes the OwnerDied guard and dies before repairing.
    let mut h2 = spawn_fn("owner-died holder", move || {
        match d.m.lock() {
            Err(LockError::OwnerDied(mut g)) => {
                g.a = 2;
                d.stage.store(2, Ordering::Release);
                linger(LONG);
                g.mark_consistent();
            }
            other => return Err(format!("lock() gave {}", describe_lock(&other))),
        }
        Err("not killed".into())
    })?;
    await_stage(&d.stage, 2, "holder 2")?;
    h2.kill().ctx("kill")?;
    expect_sigkilled(&mut h2, "holder 2")?;

    ensure!(
        !d.m.is_not_recoverable(),
        "a second death made the mutex not recoverable"
    );
    match d.m.lock() {
        Err(LockError::OwnerDied(mut g)) => {
            ensure!(g.a == 2, "holder 2's write not visible: {:?}", *g);
            g.b = g.a;
            g.mark_consistent();
        }
        other => {
            return Err(format!(
                "lock() after second death gave {}",
                describe_lock(&other)
            ));
        }
    }
    let g = lock_ok(&d.m, "after repair")?;
    ensure!(*g == Pair { a: 2, b: 2 }, "final {:?}", *g);
    Ok(())
}

#[repr(C)]
struct Waiters {
    started: AtomicU32,
    owner_died: AtomicU32,
    plain: AtomicU32,
    d: Deathbed,
}

// SAFETY: `repr(C)`, all fields `Shareable`.
unsafe impl Shareable for Waiters {}

fn two_waiters_after_owner_death_both_proceed() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let w = region
        .alloc(Waiters {
            started: AtomicU32::new(0),
            owner_died: AtomicU32::new(0),
            plain: AtomicU32::new(0),
            d: Deathbed::new(),
        })
        .ctx("alloc")?;
    let mut holder = spawn_holder(&w.d, 0, 1)?;
    await_stage(&w.d.stage, 1, "holder")?;
    let waiter = move || -> Outcome {
        w.started.fetch_add(1, Ordering::AcqRel);
        match w.d.m.lock() {
            Err(LockError::OwnerDied(mut g)) => {
                w.owner_died.fetch_add(1, Ordering::AcqRel);
                g.b += 1;
                g.a = g.b;
                g.mark_consistent();
            }
            Ok(mut g) => {
                w.plain.fetch_add(1, Ordering::AcqRel);
                ensure!(g.a == g.b, "invariant broken: {:?}", *g);
                g.b += 1;
                g.a = g.b;
            }
            Err(e) => return Err(format!("waiter: lock() gave {e:?}")),
        }
        Ok(())
    };
    let mut w1 = spawn_fn("waiter 1", waiter)?;
    let mut w2 = spawn_fn("waiter 2", waiter)?;
    await_stage(&w.started, 2, "both waiters")?;
    await_sleeper(w1.id(), &w.d.m, "waiter 1")?;
    await_sleeper(w2.id(), &w.d.m, "waiter 2")?;
    let t = Instant::now();
    holder.kill().ctx("kill holder")?;
    expect_ok(&mut w1, "waiter 1")?;
    expect_ok(&mut w2, "waiter 2")?;
    println!(
        "    kill -> both waiters done: {} ms",
        t.elapsed().as_millis()
    );
    expect_sigkilled(&mut holder, "holder")?;
    let (od, pl) = (
        w.owner_died.load(Ordering::Acquire),
        w.plain.load(Ordering::Acquire),
    );
    ensure!(
        od == 1 && pl == 1,
        "expected one OwnerDied and one plain lock, got {od} and {pl}"
    );
    let g = lock_ok(&w.d.m, "final")?;
    ensure!(*g == Pair { a: 2, b: 2 }, "final {:?}", *g);
    Ok(())
}

fn not_recoverable_seen_by_third_process() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let d = region.alloc(Deathbed::new()).ctx("alloc")?;
    let mut holder = spawn_holder(d, 1, 1)?;
    await_stage(&d.stage, 1, "holder")?;
    holder.kill().ctx("kill")?;
    expect_sigkilled(&mut holder, "holder")?;

    // B takes the OwnerDied guard and, once a waiter sleeps, drops it unrepaired.
    let mut b = spawn_fn("abandoner", move || {
        let g = match d.m.lock() {
            Err(LockError::OwnerDied(g)) => g,
            other => return Err(format!("lock() gave {}", describe_lock(&other))),
        };
        d.stage.store(2, Ordering::Release);
        await_stage(&d.stage, 3, "the parent's go")?;
        d.released_ns.store(support::mono_ns(), Ordering::Release);
        drop(g); // without mark_consistent
        Ok(())
    })?;
    await_stage(&d.stage, 2, "the abandoner to hold")?;
    let mut w = spawn_fn("sleeping waiter", move || {
        let r = d.m.lock();
        d.woke_ns.store(support::mono_ns(), Ordering::Release);
        match r {
            Err(LockError::NotRecoverable) => Ok(()),
            other => Err(format!(
                "sleeping waiter: lock() gave {}",
                describe_lock(&other)
            )),
        }
    })?;
    await_sleeper(w.id(), &d.m, "sleeping waiter")?;
    d.stage.store(3, Ordering::Release);
    expect_ok(&mut b, "abandoner")?;
    expect_ok(&mut w, "sleeping waiter")?;
    let wake = Duration::from_nanos(
        d.woke_ns
            .load(Ordering::Acquire)
            .saturating_sub(d.released_ns.load(Ordering::Acquire)),
    );
    println!(
        "    unrepaired release -> sleeping waiter NotRecoverable: {} us",
        wake.as_micros()
    );
    ensure!(
        wake < Duration::from_secs(2),
        "sleeping waiter woke only after {wake:?}"
    );

    // A third process, that never saw the death.
    let mut third = spawn_fn("third process", move || {
        ensure!(d.m.is_not_recoverable(), "is_not_recoverable() is false");
        let r = d.m.lock();
        ensure!(
            matches!(r, Err(LockError::NotRecoverable)),
            "lock() gave {}",
            describe_lock(&r)
        );
        drop(r);
        let r = d.m.try_lock();
        ensure!(
            matches!(r, Err(TryLockError::NotRecoverable)),
            "try_lock() gave {}",
            describe_try(&r)
        );
        drop(r);
        for t in [Duration::ZERO, Duration::from_millis(50), Duration::MAX] {
            let r = d.m.lock_timeout(t);
            ensure!(
                matches!(r, Err(TryLockError::NotRecoverable)),
                "lock_timeout({t:?}) gave {}",
                describe_try(&r)
            );
        }
        Ok(())
    })?;
    expect_ok(&mut third, "third process")?;
    // And the parent.
    let r = d.m.lock();
    ensure!(
        matches!(r, Err(LockError::NotRecoverable)),
        "parent lock() gave {}",
        describe_lock(&r)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Timeouts.

fn lock_timeout_and_try_lock() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let d = region.alloc(Deathbed::new()).ctx("alloc")?;
    let mut holder = spawn_fn("holder", move || {
        let mut g = lock_ok(&d.m, "holder")?;
        g.a = 11;
        d.stage.store(1, Ordering::Release);
        await_stage(&d.stage, 2, "release")?;
        std::thread::sleep(Duration::from_millis(100));
        g.a = 12;
        g.b = 12;
        Ok(())
    })?;
    await_stage(&d.stage, 1, "holder")?;

    let r = d.m.try_lock();
    ensure!(
        matches!(r, Err(TryLockError::WouldBlock)),
        "try_lock gave {}",
        describe_try(&r)
    );
    drop(r);
    for want in [Duration::from_millis(50), Duration::from_millis(120)] {
        let t = Instant::now();
        let r = d.m.lock_timeout(want);
        let took = t.elapsed();
        ensure!(
            matches!(r, Err(TryLockError::TimedOut)),
            "lock_timeout gave {}",
            describe_try(&r)
        );
        drop(r);
        println!(
            "    lock_timeout({} ms) on a held lock returned after {} us",
            want.as_millis(),
            took.as_micros()
        );
        ensure!(
            took >= want,
            "lock_timeout({want:?}) gave up after {took:?}"
        );
        ensure!(
            took < want + Duration::from_secs(2),
            "lock_timeout({want:?}) took {took:?}"
        );
    }
    let r = d.m.lock_timeout(Duration::ZERO);
    ensure!(
        matches!(r, Err(TryLockError::TimedOut)),
        "lock_timeout(0) gave {}",
        describe_try(&r)
    );
    drop(r);

    d.stage.store(2, Ordering::Release);
    let t = Instant::now();
    match d.m.lock_timeout(Duration::MAX) {
        Ok(g) => ensure!(
            *g == Pair { a: 12, b: 12 },
            "holder's writes not visible: {:?}",
            *g
        ),
        other => return Err(format!("lock_timeout(MAX) gave {}", describe_try(&other))),
    }
    println!(
        "    lock_timeout(MAX) waited {} ms for the release",
        t.elapsed().as_millis()
    );
    expect_ok(&mut holder, "holder")?;

    for t in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ] {
        let r = d.m.lock_timeout(t);
        ensure!(
            r.is_ok(),
            "lock_timeout({t:?}) on a free lock gave {}",
            describe_try(&r)
        );
    }
    let r = d.m.try_lock();
    ensure!(
        r.is_ok(),
        "try_lock on a free lock gave {}",
        describe_try(&r)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6-8. fork and Child.

fn fork_refused_when_multithreaded() -> Outcome {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let _ = rx.recv();
    });
    let r = forkipc::fork((), |()| 0);
    let refused = match r {
        Err(Error::MultiThreaded) => Ok(()),
        Err(e) => Err(format!(
            "fork with 2 threads gave {e:?}, expected MultiThreaded"
        )),
        Ok(child) => {
            drop(Reap(child));
            Err("fork with 2 threads succeeded".to_string())
        }
    };
    let _ = tx.send(());
    thread
        .join()
        .map_err(|_| "helper thread panicked".to_string())?;
    refused?;

    // The exited thread may linger in /proc for a moment.
    let start = Instant::now();
    loop {
        match forkipc::fork((), |()| 0) {
            Ok(child) => {
                let mut child = Reap(child);
                return expect_ok(&mut child, "child after the thread ended");
            }
            Err(Error::MultiThreaded) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("fork after the thread ended: {e:?}")),
        }
    }
}

fn panicking_child_fails() -> Outcome {
    let mut c = Reap(
        forkipc::fork((), |()| -> i32 {
            std::panic::set_hook(Box::new(|_| {}));
            panic!("deliberate panic in a child")
        })
        .ctx("fork panicking")?,
    );
    let st = support::wait_child(&mut c, LONG)?;
    ensure!(
        !st.success() && st.code() == Some(101),
        "panicking child: {st:?}"
    );

    let mut c = Reap(forkipc::fork((), |()| 7).ctx("fork 7")?);
    let st = support::wait_child(&mut c, LONG)?;
    ensure!(
        !st.success() && st.code() == Some(7),
        "child returning 7: {st:?}"
    );

    let mut c = Reap(forkipc::fork((), |()| 0).ctx("fork 0")?);
    let st = support::wait_child(&mut c, LONG)?;
    ensure!(
        st.success() && st.code() == Some(0),
        "child returning 0: {st:?}"
    );

    let mut c = Reap(
        forkipc::fork((), |()| {
            linger(LONG);
            0
        })
        .ctx("fork sleeper")?,
    );
    c.kill().ctx("kill")?;
    let st = support::wait_child(&mut c, LONG)?;
    ensure!(
        st.signal() == Some(libc::SIGKILL) && st.code().is_none(),
        "killed child: {st:?}"
    );

    let mut c = Reap(forkipc::fork((), |()| std::process::abort()).ctx("fork abort")?);
    let st = support::wait_child(&mut c, LONG)?;
    ensure!(st.signal() == Some(libc::SIGABRT), "aborting child: {st:?}");
    Ok(())
}

fn child_wait_timeout_and_kill() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let pid_seen = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let mut c = Reap(
        forkipc::fork((), move |()| {
            // SAFETY: getpid has no preconditions.
            pid_seen.store(unsafe { libc::getpid() } as u32, Ordering::Release);
            linger(LONG);
            0
        })
        .ctx("fork sleeper")?,
    );
    await_stage(pid_seen, 1, "the child's pid")?;
    let seen = pid_seen.load(Ordering::Acquire);
    ensure!(
        seen == c.id(),
        "child's getpid() {seen} != Child::id() {}",
        c.id()
    );

    let r = c.wait_timeout(Duration::ZERO).ctx("wait_timeout(0)")?;
    ensure!(r.is_none(), "wait_timeout(0) on a sleeping child: {r:?}");
    let r = c.try_wait().ctx("try_wait")?;
    ensure!(r.is_none(), "try_wait on a sleeping child: {r:?}");
    let want = Duration::from_millis(200);
    let t = Instant::now();
    let r = c.wait_timeout(want).ctx("wait_timeout")?;
    let took = t.elapsed();
    ensure!(r.is_none(), "wait_timeout on a sleeping child: {r:?}");
    println!(
        "    wait_timeout(200 ms) on a sleeping child returned after {} us",
        took.as_micros()
    );
    ensure!(took >= want, "wait_timeout returned early: {took:?}");
    ensure!(
        took < want + Duration::from_secs(2),
        "wait_timeout overran: {took:?}"
    );

    c.kill().ctx("kill")?;
    let st = c.wait().ctx("wait")?;
    ensure!(st.signal() == Some(libc::SIGKILL), "killed child: {st:?}");
    let again = c.wait().ctx("second wait")?;
    ensure!(again == st, "second wait gave {again:?}, first {st:?}");
    c.kill().ctx("kill after reaping")?;
    let r = c
        .wait_timeout(Duration::ZERO)
        .ctx("wait_timeout after reaping")?;
    ensure!(r == Some(st), "wait_timeout after reaping: {r:?}");

    let mut e = Reap(
        forkipc::fork((), |()| {
            std::thread::sleep(Duration::from_millis(50));
            5
        })
        .ctx("fork exiting")?,
    );
    let t = Instant::now();
    let r = e.wait_timeout(Duration::MAX).ctx("wait_timeout(MAX)")?;
    ensure!(
        r.and_then(|s| s.code()) == Some(5),
        "wait_timeout(MAX) on an exiting child: {r:?}"
    );
    ensure!(
        t.elapsed() < Duration::from_secs(10),
        "wait_timeout(MAX) took {:?}",
        t.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 9. Sizes.

#[repr(C, align(64))]
struct Line([u8; 64]);

// SAFETY: plain bytes.
unsafe impl Shareable for Line {}

fn bad_sizes_are_errors() -> Outcome {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;

    let r = AnonRegion::new(0);
    ensure!(matches!(r, Err(Error::ZeroSize)), "new(0): {r:?}");
    for len in [usize::MAX, usize::MAX - page + 2, isize::MAX as usize + 1] {
        let r = AnonRegion::new(len);
        ensure!(
            matches!(r, Err(Error::SizeOverflow)),
            "new({len:#x}): {r:?}"
        );
    }
    let r = AnonRegion::new(1).ctx("new(1)")?;
    ensure!(r.len() == page, "new(1).len() = {}, page {page}", r.len());
    let r = AnonRegion::new(page + 1).ctx("new(page+1)")?;
    ensure!(r.len() == 2 * page, "new(page+1).len() = {}", r.len());

    // Alignment.
    let region = AnonRegion::new(page).ctx("region")?;
    let byte = region.alloc(1u8).ctx("alloc u8")?;
    let word = region.alloc(2u64).ctx("alloc u64")?;
    let wide = region.alloc(3u128).ctx("alloc u128")?;
    let line = region.alloc(Line([4; 64])).ctx("alloc Line")?;
    let addr = |p: usize| p - region.as_ptr() as usize;
    ensure!(
        addr(byte as *const u8 as usize) == 0,
        "first value not at the start"
    );
    let w = word as *const u64 as usize;
    ensure!(
        aligned(w, 8) && addr(w) == 8,
        "u64 after a u8 at offset {}",
        addr(w)
    );
    let x = wide as *const u128 as usize;
    ensure!(
        aligned(x, align_of::<u128>()),
        "u128 misaligned at offset {}",
        addr(x)
    );
    let l = line as *const Line as usize;
    ensure!(aligned(l, 64), "align(64) value at offset {}", addr(l));
    ensure!(
        *byte == 1 && *word == 2 && *wide == 3 && line.0 == [4; 64],
        "values not written"
    );
    ensure!(
        region.remaining() == page - addr(l) - 64,
        "remaining {} after placing up to {}",
        region.remaining(),
        addr(l) + 64
    );

    // Filling up.
    let region = AnonRegion::new(page).ctx("region")?;
    let half = region.alloc([0u8; 2048]).ctx("alloc half")?;
    ensure!(half.len() == 2048, "len");
    let r = region.alloc([0u8; 4096]);
    ensure!(
        matches!(r, Err(Error::RegionFull)),
        "alloc past the end: {r:?}"
    );
    region.alloc([0u8; 2048]).ctx("alloc the rest exactly")?;
    ensure!(
        region.remaining() == page - 4096,
        "remaining {}",
        region.remaining()
    );
    let fill = page - 4096;
    if fill > 0 {
        // Pages larger than 4 KiB: fill the rest with u64s.
        for _ in 0..fill / 8 {
            region.alloc(0u64).ctx("filling")?;
        }
    }
    let r = region.alloc(0u8);
    ensure!(
        matches!(r, Err(Error::RegionFull)),
        "alloc in a full region: {r:?}"
    );
    let r = region.alloc(ShmMutex::new(0u64));
    ensure!(
        matches!(r, Err(Error::RegionFull)),
        "mutex in a full region: {:?}",
        r.err()
    );

    // Channels.
    let r = forkipc::channel::<u64>(0);
    ensure!(
        matches!(r, Err(Error::ZeroSize)),
        "channel(0): {:?}",
        r.err()
    );
    let r = forkipc::byte_channel(0);
    ensure!(
        matches!(r, Err(Error::ZeroSize)),
        "byte_channel(0): {:?}",
        r.err()
    );
    let r = forkipc::duplex::<u64, u32>(0);
    ensure!(
        matches!(r, Err(Error::ZeroSize)),
        "duplex(0): {:?}",
        r.err()
    );
    let r = forkipc::channel::<[u8; 1 << 20]>(usize::MAX / 2);
    ensure!(
        r.is_err(),
        "channel::<[u8; 1 MiB]>(usize::MAX / 2) succeeded"
    );
    println!("    channel::<[u8; 1 MiB]>(usize::MAX / 2): {:?}", r.err());
    let r = forkipc::channel::<u64>(usize::MAX);
    ensure!(r.is_err(), "channel::<u64>(usize::MAX) succeeded");
    let r = forkipc::byte_channel(usize::MAX);
    ensure!(r.is_err(), "byte_channel(usize::MAX) succeeded");
    println!("    byte_channel(usize::MAX): {:?}", r.err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 10. A holding thread that exits (single process, threads, no fork afterwards).

fn mutex_holder_thread_exit_reports_owner_died() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let m = region.alloc(ShmMutex::new(0u64)).ctx("alloc")?;
    let flag = region.alloc(AtomicU32::new(0)).ctx("alloc flag")?;

    // A thread locks and exits without unlocking; then the main thread locks.
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Ok(mut g) = m.lock() {
                *g = 5;
                std::mem::forget(g);
            }
        });
    });
    match m.lock() {
        Err(LockError::OwnerDied(mut g)) => {
            ensure!(*g == 5, "thread's write not visible: {}", *g);
            g.mark_consistent();
        }
        other => {
            return Err(format!(
                "lock() after the holder thread exited gave {}",
                describe_lock(&other)
            ));
        }
    }

    // The main thread sleeps in lock() while the holding thread exits.
    let latency = std::thread::scope(|s| -> Result<Duration, String> {
        let exit_ns = region.alloc(AtomicU64::new(0)).ctx("alloc")?;
        s.spawn(|| {
            if let Ok(mut g) = m.lock() {
                *g = 6;
                flag.store(1, Ordering::Release);
                std::thread::sleep(Duration::from_millis(100));
                std::mem::forget(g);
                exit_ns.store(support::mono_ns(), Ordering::Release);
            }
        });
        await_stage(flag, 1, "the holder thread")?;
        let r = m.lock();
        let back = support::mono_ns();
        match r {
            Err(LockError::OwnerDied(mut g)) => {
                ensure!(*g == 6, "thread's write not visible: {}", *g);
                g.mark_consistent();
            }
            other => {
                return Err(format!(
                    "lock() during thread exit gave {}",
                    describe_lock(&other)
                ));
            }
        }
        Ok(Duration::from_nanos(
            back.saturating_sub(exit_ns.load(Ordering::Acquire)),
        ))
    })?;
    println!(
        "    holder thread exit -> OwnerDied: {} us",
        latency.as_micros()
    );
    ensure!(
        latency < Duration::from_secs(2),
        "noticed after {latency:?}"
    );
    let g = lock_ok(m, "after repair")?;
    ensure!(*g == 6, "data {}", *g);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 11. Guards and fork.

/// Forks a child that tries to take the lock right now and requires `WouldBlock`.
fn expect_held_elsewhere<T>(m: &ShmMutex<T>) -> Outcome {
    let mut checker = spawn_fn("checker", move || {
        let r = m.try_lock();
        ensure!(
            matches!(r, Err(TryLockError::WouldBlock)),
            "try_lock while the parent holds the lock gave {}",
            describe_try(&r)
        );
        drop(r);
        let r = m.lock_timeout(Duration::from_millis(20));
        ensure!(
            matches!(r, Err(TryLockError::TimedOut)),
            "lock_timeout while the parent holds the lock gave {}",
            describe_try(&r)
        );
        Ok(())
    })?;
    expect_ok(&mut checker, "checker")
}

fn guard_held_across_fork_stays_with_parent() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let m = region.alloc(ShmMutex::new(0u64)).ctx("alloc")?;
    let mut g = lock_ok(m, "parent")?;
    *g = 1;
    // A child forked while the parent holds the lock: its copy of the guard is never dropped
    // (the child leaves with `_exit`), and its exit must not release or poison the lock.
    let mut plain = Reap(forkipc::fork((), |()| 0).ctx("fork")?);
    expect_ok(&mut plain, "plain child")?;
    expect_held_elsewhere(m)?;
    drop(g);
    let mut next = spawn_fn("next locker", move || {
        let mut g = lock_ok(m, "next locker")?;
        ensure!(*g == 1, "data {}", *g);
        *g = 2;
        Ok(())
    })?;
    expect_ok(&mut next, "next locker")?;
    let g = lock_ok(m, "final")?;
    ensure!(*g == 2, "final {}", *g);
    Ok(())
}

fn guard_copy_in_child_is_inert() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let m = region.alloc(ShmMutex::new(0u64)).ctx("alloc")?;
    let stage = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let mut g = lock_ok(m, "parent")?;
    *g = 1;
    // Safe code: the guard moves into the child's closure. In the parent the closure (and so
    // the guard) is dropped when `fork` returns, which unlocks there; the child gets its own
    // copy of the guard and drops it later, when the parent holds the lock again (same TID).
    let mut child = spawn_fn("guard dropper", move || {
        await_stage(stage, 1, "the parent to lock again")?;
        drop(g);
        stage.store(2, Ordering::Release);
        Ok(())
    })?;
    let g2 = match m.try_lock() {
        Ok(g2) => g2,
        other => {
            return Err(format!(
                "the parent's guard moved into the fork closure was not released in the parent: \
                 try_lock gave {}",
                describe_try(&other)
            ));
        }
    };
    let before = format!("{m:?}");
    stage.store(1, Ordering::Release);
    await_stage(stage, 2, "the child to drop its copy")?;
    expect_ok(&mut child, "guard dropper")?;
    let after = format!("{m:?}");
    // The parent holds g2: nobody else may take the lock.
    expect_held_elsewhere(m).map_err(|e| {
        format!(
            "{e}\n    (the word while the parent holds the lock: before the child's drop \
             {before}, after {after})"
        )
    })?;
    drop(g2);
    let mut next = spawn_fn("next locker", move || {
        let mut g = lock_ok(m, "next locker")?;
        *g += 1;
        Ok(())
    })?;
    expect_ok(&mut next, "next locker")?;
    let g = lock_ok(m, "final")?;
    ensure!(*g == 2, "final {}", *g);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 11. Recovery ergonomics: `into_guard` and `lock_or_recover`.

/// Forks a child that locks `m`, sets `a = mark` (breaking the pair) and exits holding the
/// lock: the next locker gets `OwnerDied`.
fn die_holding(m: &ShmMutex<Pair>, mark: u64) -> Outcome {
    let mut child = spawn_fn("dies holding", move || {
        let mut g = lock_ok(m, "dying holder")?;
        g.a = mark;
        std::mem::forget(g);
        Ok(())
    })?;
    expect_ok(&mut child, "dies holding")
}

fn into_guard_recovers_after_owner_death() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let m = region
        .alloc(ShmMutex::new(Pair { a: 0, b: 0 }))
        .ctx("alloc")?;

    // lock().or_else(LockError::into_guard): the guard, held and inconsistent.
    die_holding(m, 1)?;
    let mut g = m
        .lock()
        .or_else(LockError::into_guard)
        .map_err(|e| format!("lock + into_guard after a death: {e:?}"))?;
    ensure!(
        g.is_inconsistent(),
        "into_guard's guard is not marked inconsistent"
    );
    ensure!(*g == Pair { a: 1, b: 0 }, "holder's write lost: {:?}", *g);
    g.b = g.a;
    g.mark_consistent();
    drop(g);
    let g = lock_ok(m, "after repair")?;
    ensure!(
        !g.is_inconsistent() && *g == Pair { a: 1, b: 1 },
        "{:?}",
        *g
    );
    drop(g);

    // try_lock and lock_timeout too; other errors are handed back unchanged.
    die_holding(m, 2)?;
    let r = m.try_lock();
    ensure!(
        r.as_ref().is_err_and(TryLockError::is_owner_died),
        "try_lock after a death: {}",
        describe_try(&r)
    );
    let mut g = r
        .or_else(TryLockError::into_guard)
        .map_err(|e| format!("try_lock + into_guard: {e:?}"))?;
    ensure!(g.is_inconsistent(), "try_lock's guard not inconsistent");
    // Held by us: another process sees WouldBlock / TimedOut handed back by into_guard.
    let mut other = spawn_fn("contender", move || {
        let r = m.try_lock().or_else(TryLockError::into_guard);
        ensure!(
            matches!(r, Err(TryLockError::WouldBlock)),
            "try_lock on a held mutex: {}",
            describe_try(&r)
        );
        drop(r);
        let r = m
            .lock_timeout(Duration::from_millis(20))
            .or_else(TryLockError::into_guard);
        ensure!(
            matches!(r, Err(TryLockError::TimedOut)),
            "lock_timeout on a held mutex: {}",
            describe_try(&r)
        );
        Ok(())
    })?;
    expect_ok(&mut other, "contender")?;
    g.b = g.a;
    g.mark_consistent();
    drop(g);

    die_holding(m, 3)?;
    let mut g = m
        .lock_timeout(LONG)
        .or_else(TryLockError::into_guard)
        .map_err(|e| format!("lock_timeout + into_guard: {e:?}"))?;
    ensure!(g.is_inconsistent() && g.a == 3, "lock_timeout: {:?}", *g);
    g.b = g.a;
    g.mark_consistent();
    drop(g);
    let g = lock_ok(m, "final")?;
    ensure!(*g == Pair { a: 3, b: 3 }, "final {:?}", *g);
    Ok(())
}

fn into_guard_dropped_unrepaired_is_not_recoverable() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let m = region
        .alloc(ShmMutex::new(Pair { a: 0, b: 0 }))
        .ctx("alloc")?;
    die_holding(m, 1)?;
    let g = m
        .lock()
        .or_else(LockError::into_guard)
        .map_err(|e| format!("lock + into_guard: {e:?}"))?;
    drop(g); // without mark_consistent
    ensure!(
        m.is_not_recoverable(),
        "dropped unrepaired, still recoverable"
    );
    let mut third = spawn_fn("third process", move || {
        let r = m.lock().or_else(LockError::into_guard);
        ensure!(
            matches!(r, Err(LockError::NotRecoverable)),
            "lock + into_guard: {}",
            describe_lock(&r)
        );
        drop(r);
        let r = m.lock_or_recover(|_| panic!("repair must not run"));
        ensure!(
            matches!(r, Err(NotRecoverableError)),
            "lock_or_recover on a not-recoverable mutex: {:?}",
            r.as_ref().map(|g| **g)
        );
        drop(r);
        let r = m.try_lock().or_else(TryLockError::into_guard);
        ensure!(
            matches!(r, Err(TryLockError::NotRecoverable)),
            "try_lock + into_guard: {}",
            describe_try(&r)
        );
        Ok(())
    })?;
    expect_ok(&mut third, "third process")?;
    ensure!(
        NotRecoverableError.to_string() == "the lock is not recoverable",
        "display"
    );
    Ok(())
}

fn lock_or_recover_repairs_only_after_owner_death() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let m = region
        .alloc(ShmMutex::new(Pair { a: 0, b: 0 }))
        .ctx("alloc")?;
    let mut repairs = 0;
    {
        let mut g = m
            .lock_or_recover(|_| repairs += 1)
            .map_err(|e| format!("healthy mutex: {e}"))?;
        g.a += 1;
        g.b += 1;
    }
    ensure!(repairs == 0, "repair ran on a healthy mutex");

    // A holder killed mid-update (SIGKILL, not a clean exit).
    let d = region.alloc(Deathbed::new()).ctx("alloc deathbed")?;
    let mut holder = spawn_holder(d, 7, 1)?;
    await_stage(&d.stage, 1, "holder")?;
    holder.kill().ctx("kill")?;
    expect_sigkilled(&mut holder, "holder")?;
    let mut seen = None;
    let g =
        d.m.lock_or_recover(|p| {
            repairs += 1;
            seen = Some(*p);
            p.b = p.a;
        })
        .map_err(|e| format!("after a holder's death: {e}"))?;
    ensure!(repairs == 1, "repair ran {repairs} times");
    ensure!(seen == Some(Pair { a: 7, b: 0 }), "repair saw {seen:?}");
    ensure!(
        !g.is_inconsistent(),
        "guard still inconsistent after the repair"
    );
    ensure!(*g == Pair { a: 7, b: 7 }, "after repair {:?}", *g);
    drop(g);

    // Repaired for everyone: a child locks plainly.
    let mut child = spawn_fn("after recovery", move || {
        let g = lock_ok(&d.m, "child after recovery")?;
        ensure!(*g == Pair { a: 7, b: 7 }, "child sees {:?}", *g);
        Ok(())
    })?;
    expect_ok(&mut child, "after recovery")?;
    let _g =
        d.m.lock_or_recover(|_| repairs += 1)
            .map_err(|e| format!("after recovery: {e}"))?;
    ensure!(repairs == 1, "repair ran again on a recovered mutex");
    Ok(())
}

fn lock_or_recover_repair_panic_leaves_not_recoverable() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let m = region
        .alloc(ShmMutex::new(Pair { a: 0, b: 0 }))
        .ctx("alloc")?;
    die_holding(m, 4)?;
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _g = m.lock_or_recover(|_| panic!("cannot repair"));
    }));
    std::panic::set_hook(prev);
    ensure!(r.is_err(), "the repair's panic did not propagate");
    ensure!(
        m.is_not_recoverable(),
        "a repair that panicked left the mutex recoverable"
    );
    let mut child = spawn_fn("after the failed repair", move || {
        let r = m.lock();
        ensure!(
            matches!(r, Err(LockError::NotRecoverable)),
            "lock() gave {}",
            describe_lock(&r)
        );
        Ok(())
    })?;
    expect_ok(&mut child, "after the failed repair")
}
