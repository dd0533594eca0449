//! Fault campaign: forkipc's promises under SIGKILL, SIGSTOP, scribbled shared memory and
//! arbitrary ring contents, with numbers anyone can rerun.
//!
//! ```text
//! cargo test --release --test fault_campaign                       # CI size (400 kills, ~20 s)
//! cargo test --release --test fault_campaign -- --kills 10000      # long run
//! cargo test --release --test fault_campaign -- --kills 10000 --seed 42
//! FORKIPC_CAMPAIGN_KILLS=10000 FORKIPC_CAMPAIGN_SEED=42 cargo test --release --test fault_campaign
//! cargo test --release --test fault_campaign -- mutex              # only cases whose name matches
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ring_consumer -- -max_total_time=60   # fuzzing
//! ```
//!
//! `--kills N` is the total number of SIGKILLs, split over the nine kill cases (24% child
//! killed mid-stream, 14% streamer killed under a grandchild receiver, 10% receiver killed under
//! a blocked sender, 16% mutex holder killed, 8% a woken mutex waiter and the holder, 8% a woken
//! receiver (a plain `recv` or a `Select`) and the sender, 8% the owner of a forgotten guard, 6% a pool worker or the pool's
//! owner, 6% a peer of a process blocked in `Select`). The flags are taken out of the
//! argument list (the runner in `support` reads the remaining words as case-name filters) by
//! re-executing this binary with them moved into `FORKIPC_CAMPAIGN_KILLS` /
//! `FORKIPC_CAMPAIGN_SEED`. The per-case deadline (`FORKIPC_CASE_TIMEOUT`) is raised with the
//! kill count unless set.
//!
//! The woken-waiter and forgotten-guard cases count a survivor that is not served within
//! `HANG_DEADLINE` (and a victim that crashes) as a broken trial, kill and reap everything, and
//! go on; the case fails at the end, or at once at the first broken trial unless
//! `FORKIPC_CAMPAIGN_MAX_HANGS=N` raises that cap (to measure how often a defect shows; each
//! hang costs `HANG_DEADLINE`).
//!
//! Kill moments are random (a seeded `Rng`; the kill's timing relative to the victim still
//! depends on scheduling, so a failure names the trial seed, which fixes everything but that
//! timing). Without `--seed`, every run takes a new seed from the clock and the pid, so CI
//! explores; the seed and the command that replays the run are printed at the start and in the
//! summary. Every case asserts the promise (no lost, duplicated or torn message; `PeerDied`
//! after the kill; `OwnerDied` or a clean lock, never a hang or two holders) and records counts
//! and latencies in a shared-memory tally; when the run ends, the binary prints a summary block
//! for the README.

mod support;

#[path = "support/fuzz_body.rs"]
mod fuzz_body;

use std::os::unix::process::ExitStatusExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkipc::{
    AnonRegion, ByteReceiver, ByteSender, DisconnectReason, JobError, LockError, PoolBuilder,
    Receiver, RecvTimeoutError, Select, SendTimeoutError, Sender, Shareable, ShmMutex,
    TryLockError, TryRecvError,
};
use support::{Context, Outcome, Reap, Rng, getpid, mix, proc_state, spawn, spin_for, wait_until};

const DEFAULT_KILLS: u64 = 400;
/// Generous bound for anything that must happen "promptly" (death detection must be < 100 ms;
/// this is the failure threshold, the 100 ms promise is counted and reported).
const DETECT_BOUND: Duration = Duration::from_secs(2);
const PROMISE: Duration = Duration::from_millis(100);
/// Deadline for waits that only a bug could make long.
const LONG: Duration = Duration::from_secs(10);

fn main() {
    reexec_without_flags();
    let cfg = Config::from_env();
    if std::env::var_os("FORKIPC_CASE_TIMEOUT").is_none() {
        // The largest case gets a third of the kills; allow 60 ms per kill on top of the
        // default, and the broken trials each case may wait out.
        let secs = 120 + cfg.total_kills * 60 / 1000 + cfg.max_hangs * HANG_DEADLINE.as_secs();
        // SAFETY: still single-threaded: nothing else reads or writes the environment.
        unsafe { std::env::set_var("FORKIPC_CASE_TIMEOUT", secs.to_string()) };
    }
    // Printed now as well as in the summary: a run killed from outside never prints that.
    println!(
        "fault campaign: seed {:#x}, {} kills; replay: {}",
        cfg.seed,
        cfg.total_kills,
        replay_command(&cfg)
    );
    let _ = CONFIG.set(cfg);
    let _ = STATS.set(Stats::new_shared());
    let _ = START.set(Instant::now());
    // SAFETY: `print_summary` is a plain `extern "C" fn()`; it runs once at exit.
    unsafe { libc::atexit(print_summary) };
    support::run(cases![
        child_killed_mid_stream,
        parent_side_killed_mid_stream,
        sender_blocked_receiver_killed,
        mutex_holder_killed_at_random_points,
        woken_waiter_killed_mutex,
        woken_waiter_killed_presence,
        forgotten_guard_owner_killed,
        pool_worker_killed,
        select_peer_killed,
        try_recv_reports_disconnected_after_peer_death,
        stopped_is_not_dead,
        scribbled_memory,
        fuzz_corpus_deterministic,
        scribbled_lock_word_while_held_then_relock_keeps_death_detected,
        scribbled_lock_word_while_held_then_unmap_does_not_crash,
        killed_inside_fork_is_reported_dead,
    ]);
}

// ---------------------------------------------------------------------------------------------
// Configuration.

#[derive(Clone, Copy, Debug)]
struct Config {
    seed: u64,
    /// `--seed` / `FORKIPC_CAMPAIGN_SEED` was given (else the seed came from the clock).
    seed_given: bool,
    total_kills: u64,
    kills_child: u64,
    kills_parent_side: u64,
    kills_sender: u64,
    kills_mutex: u64,
    kills_woken_mutex: u64,
    kills_woken_presence: u64,
    kills_forgotten: u64,
    kills_pool: u64,
    kills_select: u64,
    /// A pattern that can hang on a known defect stops after this many hangs (each costs
    /// `HANG_DEADLINE`); `FORKIPC_CAMPAIGN_MAX_HANGS` raises it to measure how often one shows.
    max_hangs: u64,
}

static CONFIG: OnceLock<Config> = OnceLock::new();
static START: OnceLock<Instant> = OnceLock::new();

impl Config {
    fn from_env() -> Config {
        let num = |name: &str| {
            std::env::var(name).ok().and_then(|s| {
                let s = s.trim();
                match s.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16).ok(),
                    None => s.parse().ok(),
                }
            })
        };
        let total = num("FORKIPC_CAMPAIGN_KILLS")
            .unwrap_or(DEFAULT_KILLS)
            .max(4);
        let given = num("FORKIPC_CAMPAIGN_SEED");
        let seed = given.unwrap_or_else(fresh_seed);
        let share = |pct: u64| total * pct / 100;
        let (kills_child, kills_parent_side, kills_sender, kills_mutex) =
            (share(24), share(14), share(10), share(16));
        let (kills_pool, kills_select) = (share(6), share(6));
        // The woken-waiter trials deliver two SIGKILLs each.
        let (kills_woken_mutex, kills_woken_presence) = (share(8) & !1, share(8) & !1);
        Config {
            seed,
            seed_given: given.is_some(),
            total_kills: total,
            kills_child,
            kills_parent_side,
            kills_sender,
            kills_mutex,
            kills_woken_mutex,
            kills_woken_presence,
            kills_forgotten: total
                - kills_child
                - kills_parent_side
                - kills_sender
                - kills_mutex
                - kills_woken_mutex
                - kills_woken_presence
                - kills_pool
                - kills_select,
            kills_pool,
            kills_select,
            max_hangs: num("FORKIPC_CAMPAIGN_MAX_HANGS").unwrap_or(1).max(1),
        }
    }
}

/// A new seed for every run that names none, so CI explores instead of replaying one run:
/// the clock's nanoseconds and the pid, mixed.
fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix(t ^ u64::from(getpid()).rotate_left(32))
}

fn replay_command(cfg: &Config) -> String {
    format!(
        "cargo test --release --test fault_campaign -- --kills {} --seed {:#x}",
        cfg.total_kills, cfg.seed
    )
}

fn config() -> Config {
    *CONFIG.get().expect("the configuration is set in main")
}

/// Moves `--kills N` / `--seed S` (or `--kills=N`) into the environment and re-executes, so
/// the runner sees only case-name filters.
fn reexec_without_flags() {
    use std::os::unix::process::CommandExt;
    let args: Vec<String> = std::env::args().collect();
    let mut rest = Vec::new();
    let mut env = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        let flag = [
            ("--kills", "FORKIPC_CAMPAIGN_KILLS"),
            ("--seed", "FORKIPC_CAMPAIGN_SEED"),
        ]
        .into_iter()
        .find(|(f, _)| a == f || a.starts_with(&format!("{f}=")));
        match flag {
            Some((f, var)) => {
                let value = if a == f {
                    i += 1;
                    args.get(i).cloned().unwrap_or_default()
                } else {
                    a[f.len() + 1..].to_string()
                };
                env.push((var, value));
            }
            None => rest.push(a.clone()),
        }
        i += 1;
    }
    if env.is_empty() {
        return;
    }
    let err = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args(rest)
        .envs(env)
        .exec();
    panic!("re-executing the campaign failed: {err}");
}

// ---------------------------------------------------------------------------------------------
// The shared tally: one anonymous shared mapping made by `main` before the runner forks any
// case, so every case process and every child they fork adds to the same counters.

const SAMPLES: usize = 1 << 16;

#[repr(C)]
struct Stats {
    kills: [AtomicU64; KINDS],
    case_ns: [AtomicU64; KINDS],
    /// Trials whose survivor was not served within `HANG_DEADLINE`, or whose victim crashed.
    broken: [AtomicU64; KINDS],
    msgs_checked: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    torn: AtomicU64,
    wrong: AtomicU64,
    try_recv_after_death_empty: AtomicU64,
    try_recv_after_death_disconnected: AtomicU64,
    sender_blocked_at_kill: AtomicU64,
    parent_side_before_g: AtomicU64,
    /// S killed after forking G but before G took over its ends: G left unstarted.
    parent_side_g_unstarted: AtomicU64,
    mutex_clean: AtomicU64,
    mutex_owner_died_waiter: AtomicU64,
    mutex_owner_died_parent: AtomicU64,
    mutex_exact_increments: AtomicU64,
    stop_checks: AtomicU64,
    scribble_iters: AtomicU64,
    scribble_ops: AtomicU64,
    scribble_values: AtomicU64,
    scribble_disconnected: AtomicU64,
    scribble_timeouts: AtomicU64,
    scribble_lock_outcomes: [AtomicU64; 4],
    fuzz_inputs: AtomicU64,
    fuzz_messages: AtomicU64,
    fuzz_corrupted_runs: AtomicU64,
    /// Woken-waiter trials and broken ones, by variant (mutex, presence) and kill order.
    woken_trials: [[AtomicU64; ORDERS]; 2],
    woken_broken: [[AtomicU64; ORDERS]; 2],
    /// Held-off trials in which this process could spin at SCHED_FIFO.
    woken_fifo: AtomicU64,
    woken_w2_ok: AtomicU64,
    woken_w2_owner_died: AtomicU64,
    woken_w1_locked: AtomicU64,
    woken_r2_peer_died: AtomicU64,
    /// Presence trials whose woken receiver R1 was a `Select` (a live peer watched first).
    woken_r1_select: AtomicU64,
    forgot_trials: [AtomicU64; SCRIPTS],
    forgot_broken: [AtomicU64; SCRIPTS],
    forgot_served: AtomicU64,
    forgot_crashed: AtomicU64,
    /// Pool trials by victim (worker, owner) and by what the pool was doing at the kill.
    pool_moments: [[AtomicU64; MOMENTS]; 2],
    /// Jobs that returned their value and ran exactly once.
    pool_jobs_once: AtomicU64,
    /// Jobs that failed with WorkerDied(SIGKILL) (and ran at most once).
    pool_jobs_died: AtomicU64,
    /// Workers that exited on their own after their owner was killed.
    pool_orphans_exited: AtomicU64,
    sel_channels: AtomicU64,
    sel_victim_channels: AtomicU64,
    /// Messages of the killed select peer, all delivered before its PeerDied.
    sel_victim_msgs: AtomicU64,
    /// Channels on which the send in flight at the kill was delivered too.
    sel_inflight: AtomicU64,
    /// Trials in which the selector was asleep (state S) when the peer was killed.
    sel_asleep: AtomicU64,
    det_n: AtomicU64,
    det: [AtomicU64; SAMPLES],
    /// Worker kill -> the owner took the running job's WorkerDied.
    pdet_n: AtomicU64,
    pdet: [AtomicU64; SAMPLES],
    /// Owner kill -> its last worker exited.
    odet_n: AtomicU64,
    odet: [AtomicU64; SAMPLES],
    /// Peer kill -> Select reported the last of its channels Disconnected(PeerDied).
    sdet_n: AtomicU64,
    sdet: [AtomicU64; SAMPLES],
    /// Last kill -> the survivor of a woken-waiter or forgotten-guard trial is served.
    wdet_n: AtomicU64,
    wdet: [AtomicU64; SAMPLES],
    mdet_n: AtomicU64,
    mdet: [AtomicU64; SAMPLES],
}

// SAFETY: atomics and arrays of atomics only: no pointers, no drop glue.
unsafe impl Shareable for Stats {}

static STATS: OnceLock<&'static Stats> = OnceLock::new();

const K_CHILD: usize = 0;
const K_PARENT_SIDE: usize = 1;
const K_SENDER: usize = 2;
const K_MUTEX: usize = 3;
const K_WOKEN_MUTEX: usize = 4;
const K_WOKEN_PRESENCE: usize = 5;
const K_FORGOTTEN: usize = 6;
const K_POOL: usize = 7;
const K_SELECT: usize = 8;
const KINDS: usize = 9;

impl Stats {
    fn new_shared() -> &'static Stats {
        let region = AnonRegion::new(std::mem::size_of::<Stats>()).expect("stats region");
        let p = region.as_ptr() as *const Stats;
        // The tally lives until the process exits.
        std::mem::forget(region);
        // SAFETY: the mapping is zero-filled, page-aligned, at least `size_of::<Stats>()` bytes
        // and never unmapped; all-zero atomics are valid values.
        unsafe { &*p }
    }
}

fn stats() -> &'static Stats {
    STATS.get().expect("stats are set up in main")
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn record_sample(n: &AtomicU64, arr: &[AtomicU64; SAMPLES], ns: u64) {
    let i = n.fetch_add(1, Ordering::Relaxed) as usize;
    if i < SAMPLES {
        arr[i].store(ns, Ordering::Relaxed);
    }
}

fn record_detect(d: Duration) {
    let s = stats();
    record_sample(&s.det_n, &s.det, d.as_nanos() as u64);
}

fn record_mutex_detect(ns: u64) {
    let s = stats();
    record_sample(&s.mdet_n, &s.mdet, ns);
}

fn samples(n: &AtomicU64, arr: &[AtomicU64; SAMPLES]) -> Vec<u64> {
    let n = (n.load(Ordering::Relaxed) as usize).min(SAMPLES);
    let mut v: Vec<u64> = arr[..n].iter().map(|a| a.load(Ordering::Relaxed)).collect();
    v.sort_unstable();
    v
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn us(ns: u64) -> String {
    format!("{:.1} µs", ns as f64 / 1000.0)
}

extern "C" fn print_summary() {
    let (Some(s), Some(start)) = (STATS.get(), START.get()) else {
        return;
    };
    let cfg = config();
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let kills: Vec<u64> = s.kills.iter().map(ld).collect();
    let total: u64 = kills.iter().sum();
    let kill_secs: f64 = s.case_ns.iter().map(|a| ld(a) as f64 / 1e9).sum();
    let det = samples(&s.det_n, &s.det);
    let mdet = samples(&s.mdet_n, &s.mdet);
    let wdet = samples(&s.wdet_n, &s.wdet);
    let over = det
        .iter()
        .filter(|&&d| d > PROMISE.as_nanos() as u64)
        .count();
    let mover = mdet
        .iter()
        .filter(|&&d| d > PROMISE.as_nanos() as u64)
        .count();
    let mut out = String::new();
    let mut line = |t: String| {
        out.push_str(&t);
        out.push('\n');
    };
    line(String::new());
    line("---- forkipc fault campaign ------------------------------------------------".into());
    line(format!(
        "seed {:#x} ({}), {} kills requested; rerun: {}",
        cfg.seed,
        if cfg.seed_given {
            "given"
        } else {
            "from the clock"
        },
        cfg.total_kills,
        replay_command(&cfg)
    ));
    line(format!(
        "SIGKILLs delivered          {total} in {kill_secs:.1} s of kill cases ({:.0} kills/s); whole run {:.1} s",
        if kill_secs > 0.0 {
            total as f64 / kill_secs
        } else {
            0.0
        },
        start.elapsed().as_secs_f64()
    ));
    line(format!(
        "  child streamer killed     {:>6}   (parent receives typed [u64; 8] + byte messages)",
        kills[K_CHILD]
    ));
    line(format!(
        "  parent-side streamer      {:>6}   (grandchild receives; verdict via channel; killed before forking it: {}, before it took over its ends: {})",
        kills[K_PARENT_SIDE],
        ld(&s.parent_side_before_g),
        ld(&s.parent_side_g_unstarted)
    ));
    line(format!(
        "  receiver under a sender   {:>6}   (sender blocked on a full ring at the kill: {})",
        kills[K_SENDER],
        ld(&s.sender_blocked_at_kill)
    ));
    line(format!("  mutex holder killed       {:>6}", kills[K_MUTEX]));
    let by_order = |v: usize| {
        let t: Vec<u64> = s.woken_trials[v].iter().map(ld).collect();
        let b: Vec<u64> = s.woken_broken[v].iter().map(ld).collect();
        format!(
            "victim then holder {}/{}, holder then victim {}/{}, victim held off: first {}/{}, after the wake {}/{}",
            b[0], t[0], b[1], t[1], b[2], t[2], b[3], t[3]
        )
    };
    line(format!(
        "  woken waiter W1 + holder  {:>6}   (W2 then locked: Ok {}, OwnerDied {}; W1 had locked first: {}; hung {})",
        kills[K_WOKEN_MUTEX],
        ld(&s.woken_w2_ok),
        ld(&s.woken_w2_owner_died),
        ld(&s.woken_w1_locked),
        ld(&s.broken[K_WOKEN_MUTEX])
    ));
    line(format!("      hung/trials by kill order: {}", by_order(0)));
    line(format!(
        "  woken receiver R1 + sender{:>6}   (R2 then saw Disconnected(PeerDied): {}; hung {})",
        kills[K_WOKEN_PRESENCE],
        ld(&s.woken_r2_peer_died),
        ld(&s.broken[K_WOKEN_PRESENCE])
    ));
    line(format!(
        "      R1 a Select watching a live peer first, then S: {} of those trials",
        ld(&s.woken_r1_select)
    ));
    line(format!("      hung/trials by kill order: {}", by_order(1)));
    line(format!(
        "      (a victim held off: this process spun at SCHED_FIFO in {} of those trials, else the victim at SCHED_IDLE only)",
        ld(&s.woken_fifo)
    ));
    let ft: Vec<u64> = s.forgot_trials.iter().map(ld).collect();
    let fb: Vec<u64> = s.forgot_broken.iter().map(ld).collect();
    line(format!(
        "  owner of a forgotten guard{:>6}   (receiver saw PeerDied and waiter got OwnerDied: {}; broken {}, of which the owner crashed first: {})",
        kills[K_FORGOTTEN],
        ld(&s.forgot_served),
        ld(&s.broken[K_FORGOTTEN]),
        ld(&s.forgot_crashed)
    ));
    line(format!(
        "      broken/trials by script: {}",
        (0..SCRIPTS)
            .map(|i| format!("{} {}/{}", SCRIPT_NAMES[i], fb[i], ft[i]))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let pm = |v: usize| {
        (0..MOMENTS)
            .map(|m| format!("{} {}", MOMENT_NAMES[m], ld(&s.pool_moments[v][m])))
            .collect::<Vec<_>>()
            .join(", ")
    };
    line(format!(
        "  pool worker or owner      {:>6}   (jobs returned and ran once: {}; failed WorkerDied(SIGKILL), ran at most once: {}; replacement forked, shutdown left no child)",
        kills[K_POOL],
        ld(&s.pool_jobs_once),
        ld(&s.pool_jobs_died)
    ));
    line(format!("      worker killed: {}", pm(0)));
    line(format!(
        "      owner killed:  {}; its workers then exited on their own: {}",
        pm(1),
        ld(&s.pool_orphans_exited)
    ));
    line(format!(
        "  select peer killed        {:>6}   ({} channels watched, {} of them the victim's; its messages delivered before PeerDied: {}, the send in flight too: {}; selector asleep at the kill: {})",
        kills[K_SELECT],
        ld(&s.sel_channels),
        ld(&s.sel_victim_channels),
        ld(&s.sel_victim_msgs),
        ld(&s.sel_inflight),
        ld(&s.sel_asleep)
    ));
    line(format!(
        "messages checked            {}  (sequence, checksum and full content)",
        ld(&s.msgs_checked)
    ));
    line(format!(
        "lost / duplicated / torn    {} / {} / {}   (wrong content: {})",
        ld(&s.lost),
        ld(&s.duplicated),
        ld(&s.torn),
        ld(&s.wrong)
    ));
    line(format!(
        "kill -> Disconnected(PeerDied), n={}: p50 {}  p99 {}  worst {}  (> 100 ms: {over})",
        det.len(),
        us(pct(&det, 0.5)),
        us(pct(&det, 0.99)),
        us(det.last().copied().unwrap_or(0)),
    ));
    let latency = |what: &str, v: &[u64]| {
        format!(
            "{what}, n={}: p50 {}  p99 {}  worst {}  (> 100 ms: {})",
            v.len(),
            us(pct(v, 0.5)),
            us(pct(v, 0.99)),
            us(v.last().copied().unwrap_or(0)),
            v.iter().filter(|&&d| d > PROMISE.as_nanos() as u64).count()
        )
    };
    line(latency(
        "kill -> Select delivered the peer's backlog and reported its channels PeerDied",
        &samples(&s.sdet_n, &s.sdet),
    ));
    line(latency(
        "kill -> the pool fails the worker's running job with WorkerDied",
        &samples(&s.pdet_n, &s.pdet),
    ));
    line(latency(
        "kill of the pool's owner -> its last worker exited",
        &samples(&s.odet_n, &s.odet),
    ));
    line(format!(
        "try_recv after PeerDied     Empty {}, Disconnected {}",
        ld(&s.try_recv_after_death_empty),
        ld(&s.try_recv_after_death_disconnected)
    ));
    line(format!(
        "mutex trials                clean {}, OwnerDied -> repaired by the blocked waiter {}, by the next locker {}",
        ld(&s.mutex_clean),
        ld(&s.mutex_owner_died_waiter),
        ld(&s.mutex_owner_died_parent)
    ));
    line(format!(
        "  exact increments by 2 live processes after recovery: {} (all counted exactly)",
        ld(&s.mutex_exact_increments)
    ));
    line(format!(
        "  kill -> waiter's OwnerDied, n={}: p50 {}  p99 {}  worst {}  (> 100 ms: {mover})",
        mdet.len(),
        us(pct(&mdet, 0.5)),
        us(pct(&mdet, 0.99)),
        us(mdet.last().copied().unwrap_or(0)),
    ));
    line(format!(
        "last kill -> survivor served (woken waiter, forgotten guard), n={}: p50 {}  p99 {}  worst {}  (> 100 ms: {})",
        wdet.len(),
        us(pct(&wdet, 0.5)),
        us(pct(&wdet, 0.99)),
        us(wdet.last().copied().unwrap_or(0)),
        wdet.iter()
            .filter(|&&d| d > PROMISE.as_nanos() as u64)
            .count()
    ));
    line(format!(
        "SIGSTOP 2 s checks          {} (Timeout / TimedOut, never reported dead, nothing lost)",
        ld(&s.stop_checks)
    ));
    let lo: Vec<u64> = s.scribble_lock_outcomes.iter().map(ld).collect();
    line(format!(
        "scribbled memory            {} iterations, {} survivor ops: {} values, {} disconnects, {} timeouts; lock Ok/TimedOut/OwnerDied/NotRecoverable {}/{}/{}/{}",
        ld(&s.scribble_iters),
        ld(&s.scribble_ops),
        ld(&s.scribble_values),
        ld(&s.scribble_disconnected),
        ld(&s.scribble_timeouts),
        lo[0],
        lo[1],
        lo[2],
        lo[3]
    ));
    line(format!(
        "fuzz corpus (deterministic) {} inputs, {} messages returned, {} rings found corrupt",
        ld(&s.fuzz_inputs),
        ld(&s.fuzz_messages),
        ld(&s.fuzz_corrupted_runs)
    ));
    line("----------------------------------------------------------------------------".into());
    print!("{out}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------------------------
// The message stream: message `seq` of a trial is fully determined by (trial seed, seq): which
// channel carries it, its length and its content. The receiver regenerates each expected
// message and compares, and classifies any difference as lost (a gap), duplicated, torn (the
// checksum over the received bytes fails) or wrong.

const BYTE_HDR: usize = 24;
const MAX_PAYLOAD: usize = 4096;
const TYPED_SALT: u64 = 0x7479_7065;

fn msg_hash(tseed: u64, seq: u64) -> u64 {
    mix(tseed ^ mix(seq))
}

/// Message `seq` goes over the typed channel (else the byte channel).
fn on_typed(tseed: u64, seq: u64) -> bool {
    msg_hash(tseed, seq).is_multiple_of(3)
}

fn typed_msg(tseed: u64, seq: u64) -> [u64; 8] {
    let h = msg_hash(tseed, seq);
    let mut w = [0u64; 8];
    w[0] = seq;
    for (i, x) in w.iter_mut().enumerate().take(7).skip(1) {
        *x = mix(h.wrapping_add(i as u64));
    }
    w[7] = typed_checksum(&w);
    w
}

fn typed_checksum(w: &[u64; 8]) -> u64 {
    let mut b = [0u8; 56];
    for (i, x) in w[..7].iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&x.to_le_bytes());
    }
    fnv(TYPED_SALT, &b)
}

/// Byte message `seq`: `seq | payload len | checksum(seq, payload)` then the payload.
fn byte_msg(tseed: u64, seq: u64, buf: &mut Vec<u8>) {
    let h = msg_hash(tseed, seq);
    let len = ((h >> 20) % (MAX_PAYLOAD as u64 + 1)) as usize;
    buf.clear();
    buf.resize(BYTE_HDR + len, 0);
    let mut s = h;
    for chunk in buf[BYTE_HDR..].chunks_mut(8) {
        s = mix(s);
        chunk.copy_from_slice(&s.to_le_bytes()[..chunk.len()]);
    }
    let ck = fnv(seq, &buf[BYTE_HDR..]);
    buf[0..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&(len as u64).to_le_bytes());
    buf[16..24].copy_from_slice(&ck.to_le_bytes());
}

/// Sends the stream forever (until killed); pauses now and then if `pause`, so the receiver
/// also gets to sleep in the kernel. Returns (an exit status) only if a send fails.
fn stream_forever(tseed: u64, pause: bool, ttx: &Sender<[u64; 8]>, btx: &ByteSender) -> i32 {
    let mut rng = Rng::new(tseed ^ 0x5bd1_e995);
    let mut buf = Vec::with_capacity(BYTE_HDR + MAX_PAYLOAD);
    let mut seq = 0u64;
    loop {
        if pause && rng.below(32) == 0 {
            spin_for(Duration::from_micros(rng.below(300)));
        }
        let ok = if on_typed(tseed, seq) {
            ttx.send(typed_msg(tseed, seq)).is_ok()
        } else {
            byte_msg(tseed, seq, &mut buf);
            btx.send(&buf).is_ok()
        };
        if !ok {
            eprintln!("streamer: send of message {seq} failed while we were alive");
            return 3;
        }
        seq += 1;
    }
}

enum Step {
    Msg,
    /// The receive that the next message was due on reported `Disconnected`.
    Disconnected {
        typed: bool,
    },
}

/// Receives a trial's stream in order and checks every message.
struct StreamCheck {
    tseed: u64,
    /// The next expected sequence number = messages verified so far.
    next: u64,
    buf: Vec<u8>,
}

impl StreamCheck {
    fn new(tseed: u64) -> StreamCheck {
        StreamCheck {
            tseed,
            next: 0,
            buf: Vec::with_capacity(BYTE_HDR + MAX_PAYLOAD),
        }
    }

    fn step(
        &mut self,
        trx: &Receiver<[u64; 8]>,
        brx: &ByteReceiver,
        timeout: Duration,
    ) -> Result<Step, String> {
        let typed = on_typed(self.tseed, self.next);
        let r = if typed {
            trx.recv_timeout(timeout).map(|w| self.check_typed(&w))
        } else {
            brx.recv_timeout(timeout)
                .map(|v| self.check_bytes(&v, brx.max_message_len()))
        };
        match r {
            Ok(Ok(())) => {
                self.next += 1;
                Ok(Step::Msg)
            }
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "hang: neither message {} nor a disconnect within {timeout:?}",
                self.next
            )),
            Err(RecvTimeoutError::Disconnected) => Ok(Step::Disconnected { typed }),
        }
    }

    fn seq_ok(&self, got: u64, what: &str) -> Outcome {
        let s = stats();
        if got < self.next {
            bump(&s.duplicated);
            return Err(format!(
                "DUPLICATE {what}: got seq {got} again while expecting {}",
                self.next
            ));
        }
        if got > self.next {
            bump(&s.lost);
            return Err(format!(
                "LOST {what}: expected seq {}, got {got}",
                self.next
            ));
        }
        Ok(())
    }

    fn check_typed(&self, w: &[u64; 8]) -> Outcome {
        let s = stats();
        if typed_checksum(w) != w[7] {
            bump(&s.torn);
            return Err(format!(
                "TORN typed message at position {}: {w:x?}",
                self.next
            ));
        }
        self.seq_ok(w[0], "typed message")?;
        if *w != typed_msg(self.tseed, self.next) {
            bump(&s.wrong);
            return Err(format!("WRONG typed message {}: {w:x?}", self.next));
        }
        Ok(())
    }

    fn check_bytes(&mut self, v: &[u8], max: usize) -> Outcome {
        let s = stats();
        let word = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        if v.len() > max {
            bump(&s.torn);
            return Err(format!("a {}-byte message exceeds the max {max}", v.len()));
        }
        if v.len() < BYTE_HDR
            || word(8) != (v.len() - BYTE_HDR) as u64
            || fnv(word(0), &v[BYTE_HDR..]) != word(16)
        {
            bump(&s.torn);
            return Err(format!(
                "TORN byte message at position {} ({} bytes, head {:x?})",
                self.next,
                v.len(),
                &v[..v.len().min(32)]
            ));
        }
        self.seq_ok(word(0), "byte message")?;
        byte_msg(self.tseed, self.next, &mut self.buf);
        if v != self.buf.as_slice() {
            bump(&s.wrong);
            return Err(format!("WRONG byte message {}", self.next));
        }
        Ok(())
    }

    /// After `step` reported the disconnect: both channels must say `PeerDied`, and the other
    /// channel must hold nothing (a message there would come after the missing one: a loss).
    fn finish(&self, trx: &Receiver<[u64; 8]>, brx: &ByteReceiver, typed: bool) -> Outcome {
        let s = stats();
        let r1 = if typed {
            trx.disconnect_reason()
        } else {
            brx.disconnect_reason()
        };
        ensure!(
            r1 == Some(DisconnectReason::PeerDied),
            "after {} messages the {} channel disconnected with reason {r1:?}, not PeerDied",
            self.next,
            if typed { "typed" } else { "byte" }
        );
        let other = if typed {
            other_byte_seq(brx)
        } else {
            other_typed_seq(trx)
        };
        match other {
            Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "hang: the other channel neither delivered nor disconnected within {LONG:?}"
                ));
            }
            Ok(seq) => {
                bump(&s.lost);
                return Err(format!(
                    "LOST: message {} never came, but seq {seq} was on the other channel",
                    self.next
                ));
            }
        }
        for r in [trx.disconnect_reason(), brx.disconnect_reason()] {
            ensure!(
                r == Some(DisconnectReason::PeerDied),
                "a channel's disconnect_reason() is {r:?} after the peer was killed"
            );
        }
        // Observation (see the case `try_recv_reports_disconnected_after_peer_death`).
        for r in [trx.try_recv().map(|_| ()), brx.try_recv().map(|_| ())] {
            match r {
                Err(TryRecvError::Empty) => bump(&s.try_recv_after_death_empty),
                Err(TryRecvError::Disconnected) => bump(&s.try_recv_after_death_disconnected),
                Ok(()) => return Err("try_recv returned a message after the disconnect".into()),
            }
        }
        s.msgs_checked.fetch_add(self.next, Ordering::Relaxed);
        Ok(())
    }
}

fn other_byte_seq(brx: &ByteReceiver) -> Result<u64, RecvTimeoutError> {
    brx.recv_timeout(LONG).map(|v| {
        v.get(..8)
            .map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().expect("8")))
    })
}

fn other_typed_seq(trx: &Receiver<[u64; 8]>) -> Result<u64, RecvTimeoutError> {
    trx.recv_timeout(LONG).map(|w| w[0])
}

/// When the killer strikes.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// Once the receiver has verified this many messages.
    Msgs(u64),
    /// This long after the victim started streaming.
    Delay(Duration),
    /// This long after the victim was forked, whatever it has done by then (the parent-side
    /// streamer may still be making its channels or be inside `fork`).
    Early(Duration),
}

impl KillAt {
    fn pick(rng: &mut Rng) -> KillAt {
        if rng.below(2) == 0 {
            KillAt::Msgs(rng.below(3000))
        } else {
            KillAt::Delay(Duration::from_micros(rng.below(5000)))
        }
    }
}

fn typed_cap(rng: &mut Rng) -> usize {
    [1usize, 4, 32, 512][rng.below(4) as usize]
}

fn byte_cap(rng: &mut Rng) -> usize {
    [16384usize, 65536][rng.below(2) as usize]
}

/// Runs `n` trials of `trial`, naming the failing one, and books the case's time.
fn run_trials(
    kind: usize,
    salt: u64,
    n: u64,
    mut trial: impl FnMut(&mut Rng, u64) -> Outcome,
) -> Outcome {
    run_trials_counting_broken(kind, salt, n, 1, |rng, tseed| {
        trial(rng, tseed).map(|()| TrialEnd::Passed)
    })
}

/// How a trial ended, when it did not fail outright.
enum TrialEnd {
    Passed,
    /// The promise was broken in a way that left nothing behind (a survivor not served within
    /// `HANG_DEADLINE`, then killed and reaped; a victim that crashed): counted, and the trials
    /// go on, so that a run tells how often a defect shows.
    Broken(String),
}

/// As `run_trials`, for trials that deliver `kills_per_trial` SIGKILLs each and may end
/// `Broken`: the case fails at the end (or at the `max_hangs`-th broken trial) naming the
/// first broken trial.
fn run_trials_counting_broken(
    kind: usize,
    salt: u64,
    n: u64,
    kills_per_trial: u64,
    mut trial: impl FnMut(&mut Rng, u64) -> Result<TrialEnd, String>,
) -> Outcome {
    let cfg = config();
    let start = Instant::now();
    let mut rng = Rng::new(cfg.seed ^ salt);
    let mut res = Ok(());
    let (mut done, mut broken, mut first) = (0, 0, String::new());
    for i in 0..n {
        let tseed = rng.next_u64();
        let mut trng = Rng::new(tseed);
        let name = format!(
            "trial {i} of {n} (trial seed {tseed:#x}, campaign seed {:#x})",
            cfg.seed
        );
        match trial(&mut trng, tseed) {
            Ok(TrialEnd::Passed) => {}
            Ok(TrialEnd::Broken(e)) => {
                broken += 1;
                bump(&stats().broken[kind]);
                if first.is_empty() {
                    first = format!("{name}: {e}");
                }
            }
            Err(e) => {
                res = Err(format!("{name}: {e}"));
                break;
            }
        }
        done += 1;
        stats().kills[kind].fetch_add(kills_per_trial, Ordering::Relaxed);
        if broken >= cfg.max_hangs {
            break;
        }
    }
    stats().case_ns[kind].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    if res.is_ok() && broken > 0 {
        res = Err(format!(
            "{broken} of {done} trials broken{}; the first: {first}",
            if done < n {
                format!(
                    " (stopped there; {n} were planned, FORKIPC_CAMPAIGN_MAX_HANGS raises the cap)"
                )
            } else {
                String::new()
            }
        ));
    }
    res
}

// ---------------------------------------------------------------------------------------------
// 1a. A child streams over a typed and a byte channel; the parent receives, verifies, and
// SIGKILLs it at a random moment.

fn child_killed_mid_stream() -> Outcome {
    let n = config().kills_child;
    run_trials(K_CHILD, 0xa11ce, n, child_killed_trial)
}

fn child_killed_trial(rng: &mut Rng, tseed: u64) -> Outcome {
    let (ttx, trx) = forkipc::channel::<[u64; 8]>(typed_cap(rng)).ctx("channel")?;
    let (btx, brx) = forkipc::byte_channel(byte_cap(rng)).ctx("byte_channel")?;
    let child_pauses = rng.below(4) == 0;
    let parent_pauses = rng.below(3) == 0;
    let plan = KillAt::pick(rng);
    let child = forkipc::fork((ttx, btx), move |(ttx, btx)| {
        stream_forever(tseed, child_pauses, &ttx, &btx)
    })
    .ctx("fork streamer")?;
    let mut child = Reap(child);
    let start = Instant::now();
    let mut check = StreamCheck::new(tseed);
    let mut killed: Option<Instant> = None;
    let typed = loop {
        if killed.is_none() {
            let due = match plan {
                KillAt::Msgs(k) => check.next >= k,
                KillAt::Delay(d) | KillAt::Early(d) => start.elapsed() >= d,
            };
            if due {
                killed = Some(Instant::now());
                child.kill().ctx("kill")?;
            }
        }
        match check.step(&trx, &brx, LONG)? {
            Step::Msg => {}
            Step::Disconnected { typed } => break typed,
        }
        if parent_pauses && killed.is_none() && rng.below(64) == 0 {
            spin_for(Duration::from_micros(rng.below(200)));
        }
    };
    let Some(kill_time) = killed else {
        return Err(format!(
            "Disconnected after {} messages, before the kill ({plan:?})",
            check.next
        ));
    };
    let detect = kill_time.elapsed();
    record_detect(detect);
    ensure!(
        detect < DETECT_BOUND,
        "kill -> Disconnected took {detect:?} ({plan:?})"
    );
    check.finish(&trx, &brx, typed)?;
    child.expect_killed("the streamer", LONG)
}

// ---------------------------------------------------------------------------------------------
// 1b. The receiver's peer that dies is its parent: the case process C forks a streamer S, S
// makes the channels and forks a grandchild G that receives; C kills S (one trial in 8 early,
// maybe before G exists: then C's verdict channel, still S's, must report the death). G checks
// the stream and the disconnect and reports a verdict to C over a channel C made before forking
// S, handed down through both forks. C is a child subreaper, so orphaned G is reparented to C
// and reaped.

/// Control words shared by C, S and G (in an `AnonRegion` made by C).
#[repr(C)]
struct Ctl {
    g_pid: AtomicU64,
    progress: AtomicU64,
    t_kill: AtomicU64,
    last_send_start: AtomicU64,
    detect_ns: AtomicU64,
    blocked: AtomicU64,
    stop: AtomicU64,
    count: AtomicU64,
    owner_died_seen: AtomicU64,
    started: AtomicU64,
}

// SAFETY: atomics only.
unsafe impl Shareable for Ctl {}

impl Ctl {
    fn new() -> Ctl {
        Ctl {
            g_pid: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            t_kill: AtomicU64::new(0),
            last_send_start: AtomicU64::new(0),
            detect_ns: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            stop: AtomicU64::new(0),
            count: AtomicU64::new(0),
            owner_died_seen: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    fn reset(&self) {
        for a in [
            &self.g_pid,
            &self.progress,
            &self.t_kill,
            &self.last_send_start,
            &self.detect_ns,
            &self.blocked,
            &self.stop,
            &self.count,
            &self.owner_died_seen,
            &self.started,
        ] {
            a.store(0, Ordering::SeqCst);
        }
    }
}

/// Verdict words sent by G: [status (0 ok), messages verified, detection ns, G's pid].
type Verdict = [u64; 8];

fn set_subreaper() -> Outcome {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    ensure!(
        r == 0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Reaps every exited child of this (subreaper) process.
fn reap_strays() {
    loop {
        let mut st = 0;
        // SAFETY: `st` is writable.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

fn parent_side_killed_mid_stream() -> Outcome {
    set_subreaper()?;
    let region = AnonRegion::new(4096).ctx("region")?;
    let ctl: &Ctl = region.alloc(Ctl::new()).ctx("alloc")?;
    let n = config().kills_parent_side;
    let res = run_trials(K_PARENT_SIDE, 0xb0b, n, |rng, tseed| {
        let r = parent_side_trial(rng, tseed, ctl);
        if r.is_err() {
            // G may not exist (S died first), or exist without having named itself yet.
            let g = ctl.g_pid.load(Ordering::SeqCst);
            let g = if g == 0 && has_children() == Ok(true) {
                wait_until(LONG, || ctl.g_pid.load(Ordering::SeqCst) != 0);
                ctl.g_pid.load(Ordering::SeqCst)
            } else {
                g
            };
            if g != 0 {
                // SAFETY: plain kill of a pid that is our (reparented) descendant.
                unsafe { libc::kill(g as libc::pid_t, libc::SIGKILL) };
                let _ = support::wait_pid(g as libc::pid_t, LONG);
            }
        }
        r
    });
    reap_strays();
    res
}

fn parent_side_trial(rng: &mut Rng, tseed: u64, ctl: &Ctl) -> Outcome {
    ctl.reset();
    let (vtx, vrx) = forkipc::channel::<Verdict>(4).ctx("verdict channel")?;
    // One trial in 8 kills S early: before, while or just after it forks G.
    let plan = if rng.below(8) == 0 {
        KillAt::Early(Duration::from_micros(rng.below(600)))
    } else {
        KillAt::pick(rng)
    };
    let (tcap, bcap, pause) = (typed_cap(rng), byte_cap(rng), rng.below(4) == 0);
    let s = forkipc::fork(vtx, move |vtx| {
        let (Ok((ttx, trx)), Ok((btx, brx))) = (
            forkipc::channel::<[u64; 8]>(tcap),
            forkipc::byte_channel(bcap),
        ) else {
            return 2;
        };
        let g = forkipc::fork((trx, brx, vtx), move |(trx, brx, vtx)| {
            // G names itself: S may be killed between the fork and any store of its own.
            ctl.g_pid.store(u64::from(getpid()), Ordering::SeqCst);
            grandchild_receiver(tseed, &trx, &brx, &vtx, ctl)
        });
        if g.is_err() {
            return 2;
        }
        stream_forever(tseed, pause, &ttx, &btx)
    })
    .ctx("fork streamer S")?;
    let mut s = Reap(s);
    let ready = match plan {
        KillAt::Msgs(k) => wait_until(LONG, || ctl.progress.load(Ordering::SeqCst) >= k),
        KillAt::Delay(d) => {
            let ok = wait_until(LONG, || ctl.g_pid.load(Ordering::SeqCst) != 0);
            spin_for(d);
            ok
        }
        KillAt::Early(d) => {
            spin_for(d);
            true
        }
    };
    ensure!(
        ready,
        "the grandchild made no progress within {LONG:?} ({plan:?})"
    );
    ctl.t_kill.store(support::mono_ns(), Ordering::SeqCst);
    s.kill().ctx("kill S")?;
    s.expect_killed("the streamer S", LONG)?;
    // S is reaped. Had it forked G, G would be our child now (the kernel reparents an exiting
    // process's children before the process can be reaped, and a fork that a SIGKILL
    // interrupts creates no child). No child: S died before G existed.
    if !has_children()? {
        streamer_died_before_grandchild(ctl, &vrx, plan)?;
        bump(&stats().parent_side_before_g);
        return Ok(());
    }
    // G exists. It names itself first thing, unless S died before G could take over its ends:
    // then forkipc's fork makes G leave at once, without running its closure.
    ensure!(
        wait_until(LONG, || ctl.g_pid.load(Ordering::SeqCst) != 0
            || exited_child().is_some()),
        "G exists but neither started nor exited within {LONG:?}"
    );
    if ctl.g_pid.load(Ordering::SeqCst) == 0
        && let Some(g) = exited_child()
    {
        return grandchild_left_unstarted(ctl, &vrx, plan, g);
    }
    let g_pid = ctl.g_pid.load(Ordering::SeqCst);
    let verdict = vrx.recv_timeout(LONG);
    // G is our child now (we are its subreaper): reap it.
    let g_status = support::wait_pid(g_pid as libc::pid_t, LONG)?;
    let v = match verdict {
        Ok(v) => v,
        Err(e) => {
            return Err(format!(
                "no verdict from the grandchild ({e:?}); it ended with {g_status:?}"
            ));
        }
    };
    ensure!(
        v[0] == 0 && g_status.success(),
        "the grandchild's checks failed after {} messages (see stderr); status {g_status:?}",
        v[1]
    );
    ensure!(v[3] == g_pid, "verdict from pid {} but G is {g_pid}", v[3]);
    Ok(())
}

/// S was killed before G took over the verdict channel's sender (before S forked G, or in the
/// fork, before G adopted the ends): the sender's owner is dead, and the channel must report
/// that death to us.
fn streamer_died_before_grandchild(ctl: &Ctl, vrx: &Receiver<Verdict>, plan: KillAt) -> Outcome {
    let r = vrx.recv_timeout(DETECT_BOUND);
    let detect =
        Duration::from_nanos(support::mono_ns().saturating_sub(ctl.t_kill.load(Ordering::SeqCst)));
    ensure!(
        r == Err(RecvTimeoutError::Disconnected)
            && vrx.disconnect_reason() == Some(DisconnectReason::PeerDied),
        "S was killed before G took over its ends ({plan:?}); the verdict channel, whose \
         sender S held, \
         returned {r:?} after {detect:?} with disconnect_reason() {:?}, not \
         Disconnected(PeerDied){}",
        vrx.disconnect_reason(),
        if r == Err(RecvTimeoutError::Timeout) {
            ": S's death is never reported (killed inside forkipc::fork, after the \
             sender was handed to G's reserved presence slot but before G existed?)"
        } else {
            ""
        }
    );
    record_detect(detect);
    Ok(())
}

/// Exit status of a forked child whose parent died inside `forkipc::fork`, before the child
/// could take over its ends (`PARENT_DIED_IN_FORK` in src/process.rs): it leaves at once.
const PARENT_DIED_IN_FORK: i32 = 125;

/// S was killed right after forking G, before G could take over the ends S handed it: G left
/// at once (without naming itself). It must have left with `PARENT_DIED_IN_FORK`, and the
/// verdict channel, whose sender G never took over, must report the death to us.
fn grandchild_left_unstarted(ctl: &Ctl, vrx: &Receiver<Verdict>, plan: KillAt, g: u32) -> Outcome {
    let st = support::wait_pid(g as libc::pid_t, LONG)?;
    ensure!(
        st.code() == Some(PARENT_DIED_IN_FORK),
        "G (pid {g}) ended with {st:?} without ever starting ({plan:?}); expected exit status \
         {PARENT_DIED_IN_FORK} (its parent died inside fork)"
    );
    streamer_died_before_grandchild(ctl, vrx, plan)?;
    bump(&stats().parent_side_g_unstarted);
    Ok(())
}

/// The pid of an exited, not yet reaped child of this process, if there is one (it is left
/// reapable).
fn exited_child() -> Option<u32> {
    // SAFETY: a zeroed siginfo_t is a valid out-buffer.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is writable; WNOWAIT leaves the child reapable.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info`, or left it zeroed (si_pid 0) when nothing exited.
    let pid = unsafe { info.si_pid() };
    (r == 0 && pid > 0).then_some(pid as u32)
}

/// Whether this process has any child (running or exited, not yet reaped).
fn has_children() -> Result<bool, String> {
    // SAFETY: a zeroed siginfo_t is a valid out-buffer.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is writable; WNOWAIT leaves any exited child reapable.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ECHILD) => Ok(false),
        e => Err(format!("waitid(P_ALL): {e}")),
    }
}

fn grandchild_receiver(
    tseed: u64,
    trx: &Receiver<[u64; 8]>,
    brx: &ByteReceiver,
    vtx: &Sender<Verdict>,
    ctl: &Ctl,
) -> i32 {
    let mut check = StreamCheck::new(tseed);
    let res = (|| -> Result<u64, String> {
        loop {
            match check.step(trx, brx, LONG)? {
                Step::Msg => ctl.progress.store(check.next, Ordering::SeqCst),
                Step::Disconnected { typed } => {
                    let now = support::mono_ns();
                    let t_kill = ctl.t_kill.load(Ordering::SeqCst);
                    ensure!(
                        t_kill != 0,
                        "Disconnected after {} messages, before S was killed",
                        check.next
                    );
                    let detect = Duration::from_nanos(now.saturating_sub(t_kill));
                    record_detect(detect);
                    ensure!(
                        detect < DETECT_BOUND,
                        "kill -> Disconnected took {detect:?}"
                    );
                    check.finish(trx, brx, typed)?;
                    return Ok(detect.as_nanos() as u64);
                }
            }
        }
    })();
    let mut v = [0u64; 8];
    match res {
        Ok(ns) => v[2] = ns,
        Err(e) => {
            eprintln!("grandchild G (trial seed {tseed:#x}): {e}");
            v[0] = 1;
        }
    }
    v[1] = check.next;
    v[3] = u64::from(getpid());
    if vtx.send_timeout(v, LONG).is_err() {
        return 4;
    }
    0
}

// ---------------------------------------------------------------------------------------------
// 1b'. A sender blocked on a full ring; the receiver's process is killed: the sender gets
// Disconnected (PeerDied) promptly. C forks a receiver R (reads a random number of messages,
// then stops reading) and a sender S (sends until an error), and kills R.

fn sender_blocked_receiver_killed() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let ctl: &Ctl = region.alloc(Ctl::new()).ctx("alloc")?;
    let n = config().kills_sender;
    run_trials(K_SENDER, 0x5e0d, n, |rng, tseed| {
        sender_blocked_trial(rng, tseed, ctl)
    })
}

fn sender_blocked_trial(rng: &mut Rng, tseed: u64, ctl: &Ctl) -> Outcome {
    ctl.reset();
    let use_bytes = rng.below(2) == 0;
    let stop_after = rng.below(300);
    let slow_reader = rng.below(3) == 0;
    let delay = Duration::from_micros(rng.below(5000));
    let cap = typed_cap(rng);
    // Typed or byte channel: the sender's side is the same ring either way.
    let (mut r, mut s) = if use_bytes {
        let (tx, rx) = forkipc::byte_channel(16384).ctx("byte_channel")?;
        let r = spawn("receiver R", rx, move |rx| {
            let mut n = 0;
            loop {
                if n < stop_after || slow_reader {
                    match rx.recv_timeout(LONG) {
                        Ok(_) => n += 1,
                        Err(e) => return Err(format!("receiver: {e:?}")),
                    }
                    ctl.progress.store(n, Ordering::SeqCst);
                    if slow_reader {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
        let s = spawn("sender S", tx, move |tx| {
            let mut buf = Vec::new();
            for seq in 0.. {
                byte_msg(tseed, seq, &mut buf);
                ctl.last_send_start
                    .store(support::mono_ns(), Ordering::SeqCst);
                match tx.send_timeout(&buf, LONG) {
                    Ok(()) => {}
                    Err(SendTimeoutError::Disconnected(())) => {
                        return sender_saw_disconnect(ctl, tx.disconnect_reason());
                    }
                    Err(e) => return Err(format!("send {seq}: {e:?}")),
                }
            }
            Ok(())
        })?;
        (r, s)
    } else {
        let (tx, rx) = forkipc::channel::<[u64; 8]>(cap).ctx("channel")?;
        let r = spawn("receiver R", rx, move |rx| {
            let mut n = 0;
            loop {
                if n < stop_after || slow_reader {
                    match rx.recv_timeout(LONG) {
                        Ok(_) => n += 1,
                        Err(e) => return Err(format!("receiver: {e:?}")),
                    }
                    ctl.progress.store(n, Ordering::SeqCst);
                    if slow_reader {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
        let s = spawn("sender S", tx, move |tx| {
            for seq in 0.. {
                ctl.last_send_start
                    .store(support::mono_ns(), Ordering::SeqCst);
                match tx.send_timeout(typed_msg(tseed, seq), LONG) {
                    Ok(()) => {}
                    Err(SendTimeoutError::Disconnected(_)) => {
                        return sender_saw_disconnect(ctl, tx.disconnect_reason());
                    }
                    Err(e) => return Err(format!("send {seq}: {e:?}")),
                }
            }
            Ok(())
        })?;
        (r, s)
    };
    let target = stop_after.min(50);
    ensure!(
        wait_until(LONG, || ctl.progress.load(Ordering::SeqCst) >= target),
        "the receiver made no progress"
    );
    spin_for(delay);
    ctl.t_kill.store(support::mono_ns(), Ordering::SeqCst);
    r.kill().ctx("kill R")?;
    r.expect_killed("the receiver R", LONG)?;
    s.expect_success("the sender S", LONG)?;
    let ns = ctl.detect_ns.load(Ordering::SeqCst);
    record_detect(Duration::from_nanos(ns));
    if ctl.blocked.load(Ordering::SeqCst) != 0 {
        bump(&stats().sender_blocked_at_kill);
    }
    Ok(())
}

fn sender_saw_disconnect(ctl: &Ctl, reason: Option<DisconnectReason>) -> Outcome {
    let now = support::mono_ns();
    let t_kill = ctl.t_kill.load(Ordering::SeqCst);
    ensure!(
        t_kill != 0,
        "sender got Disconnected before the receiver was killed"
    );
    ensure!(
        reason == Some(DisconnectReason::PeerDied),
        "sender's disconnect_reason() is {reason:?}, not PeerDied"
    );
    let detect = Duration::from_nanos(now.saturating_sub(t_kill));
    ensure!(
        detect < DETECT_BOUND,
        "kill -> Disconnected took {detect:?}"
    );
    ctl.detect_ns
        .store(detect.as_nanos() as u64, Ordering::SeqCst);
    let started = ctl.last_send_start.load(Ordering::SeqCst);
    ctl.blocked
        .store(u64::from(started < t_kill), Ordering::SeqCst);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1c. A mutex holder A loops lock -> a += 1, busy delay, b += 1 -> unlock and is killed at a
// random moment (inside lock(), the critical section, unlock(), or outside). Sometimes a
// contender B loops on the lock at the same time (it sees a == b on every clean lock, repairs
// after OwnerDied). Then the parent locks: Ok (invariant holds) or OwnerDied (repair, mark
// consistent), never a hang; then two live processes increment `c` concurrently and the total
// must be exact (never two holders).

/// The guarded state: `[a, b, c]`, invariant `a == b`; `c` counts increments by live lockers.
type Guarded = [u64; 3];

const EXACT_K: u64 = 200;

fn mutex_holder_killed_at_random_points() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let m: &ShmMutex<Guarded> = region.alloc(ShmMutex::new([0; 3])).ctx("alloc mutex")?;
    let ctl: &Ctl = region.alloc(Ctl::new()).ctx("alloc ctl")?;
    let n = config().kills_mutex;
    run_trials(K_MUTEX, 0x3a7e, n, |rng, _| mutex_trial(rng, m, ctl))
}

fn lock_checked<'a>(
    m: &'a ShmMutex<Guarded>,
    who: &str,
) -> Result<(forkipc::ShmMutexGuard<'a, Guarded>, bool), String> {
    match m.lock_timeout(LONG) {
        Ok(g) => {
            ensure!(
                g[0] == g[1],
                "{who}: clean lock but the invariant is broken ({:?}): two holders?",
                *g
            );
            Ok((g, false))
        }
        Err(TryLockError::OwnerDied(mut g)) => {
            g[1] = g[0];
            g.mark_consistent();
            Ok((g, true))
        }
        Err(TryLockError::TimedOut) => {
            Err(format!("{who}: lock_timeout({LONG:?}) timed out: hang"))
        }
        Err(e) => Err(format!("{who}: lock failed: {e:?}")),
    }
}

fn mutex_trial(rng: &mut Rng, m: &ShmMutex<Guarded>, ctl: &Ctl) -> Outcome {
    ctl.reset();
    let c_start = {
        let (g, died) = lock_checked(m, "parent (start)")?;
        ensure!(!died, "OwnerDied at the start of a trial");
        g[2]
    };
    let hseed = rng.next_u64();
    let mut a = spawn("holder A", (), move |()| {
        let mut r = Rng::new(hseed);
        loop {
            let mut g = match m.lock() {
                Ok(g) => g,
                Err(e) => return Err(format!("holder: {e:?}")),
            };
            g[0] += 1;
            for _ in 0..r.below(200) {
                std::hint::spin_loop();
            }
            g[1] += 1;
            drop(g);
            ctl.started.fetch_add(1, Ordering::SeqCst);
            for _ in 0..r.below(100) {
                std::hint::spin_loop();
            }
        }
    })?;
    let contender = rng.below(2) == 0;
    let mut b = if contender {
        Some(spawn("contender B", (), move |()| {
            let mut n = 0;
            while ctl.stop.load(Ordering::SeqCst) == 0 {
                let (mut g, died) = lock_checked(m, "contender")?;
                if died {
                    let t_kill = ctl.t_kill.load(Ordering::SeqCst);
                    ensure!(t_kill != 0, "contender: OwnerDied while the holder lives");
                    record_mutex_detect(support::mono_ns().saturating_sub(t_kill));
                    ctl.owner_died_seen.fetch_add(1, Ordering::SeqCst);
                }
                g[2] += 1;
                n += 1;
            }
            ctl.count.store(n, Ordering::SeqCst);
            Ok(())
        })?)
    } else {
        None
    };
    let iters = rng.below(300);
    ensure!(
        wait_until(LONG, || ctl.started.load(Ordering::SeqCst) >= iters),
        "the holder made no progress"
    );
    spin_for(Duration::from_micros(rng.below(1000)));
    ctl.t_kill.store(support::mono_ns(), Ordering::SeqCst);
    a.kill().ctx("kill A")?;
    a.expect_killed("the holder A", LONG)?;
    let (g, parent_died) = lock_checked(m, "parent after the kill")?;
    drop(g);
    // Two live processes now: the parent and E (plus B if present) increment `c` exactly.
    let mut e = spawn("incrementer E", (), move |()| {
        for _ in 0..EXACT_K {
            let (mut g, died) = lock_checked(m, "incrementer")?;
            ensure!(
                !died,
                "incrementer: OwnerDied, but nobody died since the recovery"
            );
            g[2] += 1;
        }
        Ok(())
    })?;
    for _ in 0..EXACT_K {
        let (mut g, died) = lock_checked(m, "parent incrementing")?;
        ensure!(
            !died,
            "parent: OwnerDied, but nobody died since the recovery"
        );
        g[2] += 1;
    }
    e.expect_success("the incrementer E", LONG)?;
    ctl.stop.store(1, Ordering::SeqCst);
    if let Some(b) = b.as_mut() {
        b.expect_success("the contender B", LONG)?;
    }
    let waiter_died = ctl.owner_died_seen.load(Ordering::SeqCst);
    let b_count = ctl.count.load(Ordering::SeqCst);
    let (g, died) = lock_checked(m, "parent (end)")?;
    ensure!(!died, "OwnerDied at the end of a trial");
    let want = c_start + 2 * EXACT_K + b_count;
    ensure!(
        g[2] == want,
        "counter {} != {want} after exact increments: lost or doubled critical sections",
        g[2]
    );
    drop(g);
    ensure!(
        waiter_died + u64::from(parent_died) <= 1,
        "OwnerDied reported {} times for one death",
        waiter_died + u64::from(parent_died)
    );
    let s = stats();
    s.mutex_exact_increments
        .fetch_add(2 * EXACT_K + b_count, Ordering::Relaxed);
    if parent_died {
        bump(&s.mutex_owner_died_parent);
    } else if waiter_died == 1 {
        bump(&s.mutex_owner_died_waiter);
    } else {
        bump(&s.mutex_clean);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1d. A woken waiter killed. When a robust-futex owner dies, the kernel marks the word and wakes
// *one* waiter; if that waiter is itself killed before it acts, nobody else is woken unless its
// own death hands the wake-up on (glibc keeps `list_op_pending` pointed at the mutex while a
// waiter sleeps, so the kernel's exit handling of the dead waiter wakes the next one).
//
// Mutex variant: holder H locks; W1, then W2, sleep in `lock`; W1 and H are SIGKILLed; W2 must
// get the lock (`Ok` if W1 took it and unlocked cleanly, else `OwnerDied`) within
// `HANG_DEADLINE`. Presence variant: one sender S holds the sending ends of two channels;
// receivers R1, then R2, sleep in `recv` (on S's presence word among others); R1 and S are
// SIGKILLed; R2 must see `Disconnected(PeerDied)` after every message S sent it.
//
// Kill orders: victim then holder, or holder then victim, a random gap apart; and the review's
// deterministic recipe, where the victim cannot leave the futex queue before the holder's death
// wakes it: the sleeping victim is moved to this process's CPU at SCHED_IDLE, and this process
// spins there (at SCHED_FIFO where permitted) from the victim's kill until the holder is dead,
// so the kernel's one wake-up goes to a process that can only die. "After the wake" kills the
// holder first and the victim as soon as the holder's death shows.

/// Everything a survivor is owed must arrive within this; a longer wait is a hang: the survivor
/// is killed and reaped, and the trial counted as broken.
const HANG_DEADLINE: Duration = Duration::from_secs(5);
/// Longest this process keeps a CPU to itself waiting for the holder's death to be handled.
const HOLD_MAX: Duration = Duration::from_millis(20);
const ORDERS: usize = 4;

/// The mutex's data: `[a, b]`, equal outside critical sections.
type Pair = [u64; 2];

/// What a trial's processes report (in a region made for the trial).
#[derive(Default)]
#[repr(C)]
struct Watch {
    holder_ready: AtomicU64,
    victim_ready: AtomicU64,
    survivor_ready: AtomicU64,
    /// What the victim got before it was killed (a `GOT_` code, 0 for nothing), and when; in
    /// the forgotten-guard trials, the receiver's outcome.
    victim_got: AtomicU64,
    victim_ns: AtomicU64,
    victim_releasing: AtomicU64,
    victim_released: AtomicU64,
    /// What the survivor got (a `GOT_` code, 0 while still waiting), and when.
    survivor_got: AtomicU64,
    survivor_ns: AtomicU64,
    waiter_pid: AtomicU64,
    go: AtomicU64,
    /// The forgotten-guard owner has done its script's steps (it now relocks or idles).
    scripted: AtomicU64,
}

// SAFETY: atomics only.
unsafe impl Shareable for Watch {}

const GOT_OK: u64 = 1;
const GOT_OWNER_DIED: u64 = 2;
const GOT_NOT_RECOVERABLE: u64 = 3;
const GOT_BROKEN_INVARIANT: u64 = 4;
const GOT_PEER_DIED: u64 = 5;
const GOT_OTHER_DISCONNECT: u64 = 6;
const GOT_MESSAGE: u64 = 7;

fn got_name(code: u64) -> &'static str {
    match code {
        0 => "nothing",
        GOT_OK => "Ok",
        GOT_OWNER_DIED => "OwnerDied",
        GOT_NOT_RECOVERABLE => "NotRecoverable",
        GOT_BROKEN_INVARIANT => "Ok with the data mid-update (two holders?)",
        GOT_PEER_DIED => "Disconnected(PeerDied)",
        GOT_OTHER_DISCONNECT => "Disconnected for another reason",
        GOT_MESSAGE => "a message nobody sent",
        _ => "an unknown code",
    }
}

/// Sleeps until killed.
fn park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A mutex's lock word (its first 4 bytes), read the way the kernel reads it.
fn lock_word<T>(m: &ShmMutex<T>) -> u32 {
    // SAFETY: `ShmMutex` is repr(C) and starts with its 32-bit futex word, which lives as long
    // as `m`; an atomic load of it races with nothing unsafe.
    unsafe { (*(m as *const ShmMutex<T> as *const AtomicU32)).load(Ordering::SeqCst) }
}

const FUTEX_WAITERS: u32 = 0x8000_0000;
const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

/// The system call process `pid` is blocked in, by number, if it is blocked in one and
/// /proc/PID/syscall is readable.
fn blocked_syscall(pid: u32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Whether `pid` sleeps in a futex wait; where /proc/PID/syscall is unreadable, whether it
/// sleeps at all.
fn asleep_in_futex(pid: u32) -> bool {
    proc_state(pid) == Some('S')
        && match std::fs::read_to_string(format!("/proc/{pid}/syscall")) {
            Ok(_) => blocked_syscall(pid)
                .is_some_and(|n| n == libc::SYS_futex || n == libc::SYS_futex_waitv),
            Err(_) => true,
        }
}

/// What process `pid` is doing, for a hang report.
fn describe(pid: u32) -> String {
    let call = match blocked_syscall(pid) {
        Some(n) if n == libc::SYS_futex => "futex".to_string(),
        Some(n) if n == libc::SYS_futex_waitv => "futex_waitv".to_string(),
        Some(n) => format!("#{n}"),
        None => "none (or unreadable)".to_string(),
    };
    format!(
        "pid {pid} is in state {:?}, blocked in syscall {call}",
        proc_state(pid)
    )
}

/// Waits until `ready` is set (`pid` says it is about to block), then until `pid` sleeps in a
/// futex wait.
fn await_blocked(ready: &AtomicU64, pid: u32, what: &str) -> Outcome {
    ensure!(
        wait_until(LONG, || ready.load(Ordering::SeqCst) == 1),
        "{what} never got to the point where it blocks"
    );
    await_futex_sleep(pid, what)
}

fn await_futex_sleep(pid: u32, what: &str) -> Outcome {
    ensure!(
        wait_until(LONG, || asleep_in_futex(pid)),
        "{what} never went to sleep in a futex wait: {}",
        describe(pid)
    );
    Ok(())
}

/// Whether child `pid` has exited (it is left reapable).
fn exited(pid: u32) -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-buffer.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is writable; WNOWAIT leaves the child reapable.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info`, or left it zeroed (si_pid 0) when nothing exited.
    r == -1 || unsafe { info.si_pid() } != 0
}

/// Reaps child `pid` if it has exited; `None` while it runs.
fn reap_if_exited(pid: u32) -> Result<Option<std::process::ExitStatus>, String> {
    let mut st = 0;
    // SAFETY: `st` is writable; `pid` is our own unreaped child.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut st, libc::WNOHANG) };
    match r {
        0 => Ok(None),
        r if r == pid as libc::pid_t => Ok(Some(std::process::ExitStatus::from_raw(st))),
        _ => Err(format!(
            "waitpid({pid}): {}",
            std::io::Error::last_os_error()
        )),
    }
}

/// A descendant we have no `Child` handle for (the forgotten-guard waiter, P's child until P
/// dies, ours after): killed, and reaped if it is ours by then, when dropped unless disarmed.
struct Stray(Option<u32>);

impl Drop for Stray {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: nobody but us reaps `pid` (P never waits for it), so until we do, the pid
            // names it (alive or a zombie) and cannot have been reused.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            // Fails harmlessly while it is still P's child; then `reap_strays` reaps it.
            let _ = support::wait_pid(pid as libc::pid_t, LONG);
        }
    }
}

fn this_process() -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(0)
}

/// Two CPUs this process may use (the victim's and the holder's), if it may use two.
fn two_cpus() -> Option<(usize, usize)> {
    let set = nix::sched::sched_getaffinity(this_process()).ok()?;
    let mut cpus = (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false));
    Some((cpus.next()?, cpus.next()?))
}

/// Pins process `pid` (0: this one) to `cpu`.
fn pin(pid: u32, cpu: usize) -> Outcome {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).ctx("CpuSet::set")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid as i32), &set)
        .ctx("sched_setaffinity")
}

/// Sets the scheduling policy of `pid` (0: this process); false if refused.
fn set_policy(pid: u32, policy: libc::c_int, priority: libc::c_int) -> bool {
    let p = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `p` is a valid sched_param that the call only reads.
    unsafe { libc::sched_setscheduler(pid as libc::pid_t, policy, &p) == 0 }
}

/// This process alone on one CPU while the value lives: pinned there, at SCHED_FIFO where
/// permitted (else a SCHED_IDLE process pinned there still does not preempt it on wake-up).
struct CpuHold {
    saved: nix::sched::CpuSet,
    fifo: bool,
}

impl CpuHold {
    fn new(cpu: usize) -> Result<CpuHold, String> {
        let saved = nix::sched::sched_getaffinity(this_process()).ctx("sched_getaffinity")?;
        pin(0, cpu)?;
        let fifo = set_policy(0, libc::SCHED_FIFO, 1);
        Ok(CpuHold { saved, fifo })
    }
}

impl Drop for CpuHold {
    fn drop(&mut self) {
        if self.fifo {
            set_policy(0, libc::SCHED_OTHER, 0);
        }
        let _ = nix::sched::sched_setaffinity(this_process(), &self.saved);
    }
}

#[derive(Clone, Copy, Debug)]
enum KillOrder {
    /// The victim, then the holder this long after.
    VictimFirst(Duration),
    /// The holder, then the victim this long after (it may just have been woken, or have
    /// taken the lock already).
    HolderFirst(Duration),
    /// The victim, then the holder, the victim kept off the CPU until the holder is dead.
    HeldVictimFirst,
    /// The holder, then the victim as soon as the holder's death shows (the victim woken, or
    /// about to be, and kept off the CPU so it dies before it acts).
    HeldAfterWake,
}

impl KillOrder {
    fn pick(rng: &mut Rng, can_hold: bool) -> KillOrder {
        let gap = Duration::from_micros(rng.below(300));
        match rng.below(if can_hold { 4 } else { 2 }) {
            0 => KillOrder::VictimFirst(gap),
            1 => KillOrder::HolderFirst(gap),
            2 => KillOrder::HeldVictimFirst,
            _ => KillOrder::HeldAfterWake,
        }
    }

    fn index(self) -> usize {
        match self {
            KillOrder::VictimFirst(_) => 0,
            KillOrder::HolderFirst(_) => 1,
            KillOrder::HeldVictimFirst => 2,
            KillOrder::HeldAfterWake => 3,
        }
    }
}

/// SIGKILLs the sleeping `victim` and the `holder` in `order`; `death_shows` tells when the
/// kernel has started on the holder's death. Returns when the last kill was sent (mono ns).
fn kill_pair(
    order: KillOrder,
    victim: &mut Reap,
    holder: &mut Reap,
    cpus: Option<(usize, usize)>,
    death_shows: &dyn Fn() -> bool,
) -> Result<u64, String> {
    match order {
        KillOrder::VictimFirst(gap) => {
            victim.kill().ctx("kill the victim")?;
            spin_for(gap);
            holder.kill().ctx("kill the holder")?;
        }
        KillOrder::HolderFirst(gap) => {
            holder.kill().ctx("kill the holder")?;
            spin_for(gap);
            victim.kill().ctx("kill the victim")?;
        }
        KillOrder::HeldVictimFirst | KillOrder::HeldAfterWake => {
            let (mine, other) = cpus.ctx("two CPUs")?;
            let (v, h) = (victim.id(), holder.id());
            pin(v, mine)?;
            ensure!(
                set_policy(v, libc::SCHED_IDLE, 0),
                "sched_setscheduler(SCHED_IDLE) on the victim: {}",
                std::io::Error::last_os_error()
            );
            pin(h, other)?;
            let hold = CpuHold::new(mine)?;
            if hold.fifo {
                bump(&stats().woken_fifo);
            }
            let t = Instant::now();
            if let KillOrder::HeldVictimFirst = order {
                victim.kill().ctx("kill the victim")?;
                holder.kill().ctx("kill the holder")?;
            } else {
                holder.kill().ctx("kill the holder")?;
                while !death_shows() && t.elapsed() < HOLD_MAX {
                    std::hint::spin_loop();
                }
                victim.kill().ctx("kill the victim")?;
            }
            // The holder's exit has handled its robust list (and sent its one wake-up) before
            // it becomes a zombie.
            while !exited(h) && t.elapsed() < HOLD_MAX {
                std::hint::spin_loop();
            }
            drop(hold);
        }
    }
    Ok(support::mono_ns())
}

fn woken_waiter_killed_mutex() -> Outcome {
    let n = config().kills_woken_mutex / 2;
    let cpus = two_cpus();
    run_trials_counting_broken(K_WOKEN_MUTEX, 0x0ed1, n, 2, |rng, _| {
        woken_mutex_trial(rng, cpus)
    })
}

fn woken_mutex_trial(rng: &mut Rng, cpus: Option<(usize, usize)>) -> Result<TrialEnd, String> {
    let s = stats();
    let order = KillOrder::pick(rng, cpus.is_some());
    bump(&s.woken_trials[0][order.index()]);
    // If W1 gets the lock before its death: repair, then unlock cleanly, or hold it.
    let w1_releases = rng.below(2) == 0;
    let region = AnonRegion::new(4096).ctx("region")?;
    let m: &ShmMutex<Pair> = region.alloc(ShmMutex::new([0; 2])).ctx("alloc")?;
    let wt: &Watch = region.alloc(Watch::default()).ctx("alloc")?;
    let mut h = spawn("holder H", (), move |()| {
        let mut g = m.lock().map_err(|e| format!("lock: {e:?}"))?;
        g[0] += 1; // mid-update until the holder leaves: a != b
        wt.holder_ready.store(1, Ordering::SeqCst);
        park()
    })?;
    ensure!(
        wait_until(LONG, || wt.holder_ready.load(Ordering::SeqCst) == 1),
        "H never locked"
    );
    let h_tid = lock_word(m) & FUTEX_TID_MASK;
    let mut w1 = spawn("waiter W1", (), move |()| {
        wt.victim_ready.store(1, Ordering::SeqCst);
        let (mut g, died) = match m.lock() {
            Ok(g) => (g, false),
            Err(LockError::OwnerDied(g)) => (g, true),
            Err(e) => return Err(format!("lock: {e:?}")),
        };
        let got = if died { GOT_OWNER_DIED } else { GOT_OK };
        wt.victim_got.store(got, Ordering::SeqCst);
        g[1] = g[0];
        g[0] += 1;
        if w1_releases {
            wt.victim_releasing.store(1, Ordering::SeqCst);
            g[1] += 1;
            g.mark_consistent();
            drop(g);
            wt.victim_released.store(1, Ordering::SeqCst);
            park()
        }
        let _held = g;
        park()
    })?;
    await_blocked(&wt.victim_ready, w1.id(), "W1")?;
    let mut w2 = spawn("waiter W2", (), move |()| {
        wt.survivor_ready.store(1, Ordering::SeqCst);
        let got = match m.lock() {
            Ok(g) if g[0] == g[1] => GOT_OK,
            Ok(_) => GOT_BROKEN_INVARIANT,
            Err(LockError::OwnerDied(mut g)) => {
                g[1] = g[0];
                g.mark_consistent();
                GOT_OWNER_DIED
            }
            Err(LockError::NotRecoverable) => GOT_NOT_RECOVERABLE,
        };
        wt.survivor_ns.store(support::mono_ns(), Ordering::SeqCst);
        wt.survivor_got.store(got, Ordering::SeqCst);
        Ok(())
    })?;
    await_blocked(&wt.survivor_ready, w2.id(), "W2")?;
    let t_kill = kill_pair(order, &mut w1, &mut h, cpus, &|| {
        lock_word(m) & FUTEX_TID_MASK != h_tid
    })?;
    let served = w2.wait_timeout(HANG_DEADLINE).ctx("waiting for W2")?;
    h.expect_killed("the holder H", LONG)?;
    w1.expect_killed("the waiter W1", LONG)?;
    let w1_got = wt.victim_got.load(Ordering::SeqCst);
    if w1_got != 0 {
        bump(&s.woken_w1_locked);
    }
    let Some(st) = served else {
        let word = lock_word(m);
        let msg = format!(
            "HANG: W2 was not given the lock within {HANG_DEADLINE:?} of the kills ({order:?}); \
             W1 had got {} before its death; the lock word is {word:#x}{}; {}",
            got_name(w1_got),
            if word == FUTEX_OWNER_DIED | FUTEX_WAITERS {
                " (owner died, nobody holds it, a waiter sleeps: the kernel's one wake-up \
                 went to the dying W1 and was never passed on)"
            } else {
                ""
            },
            describe(w2.id())
        );
        bump(&s.woken_broken[0][order.index()]);
        return Ok(TrialEnd::Broken(msg));
    };
    ensure!(st.success(), "W2 failed: {st:?} (see stderr)");
    let got = wt.survivor_got.load(Ordering::SeqCst);
    let (releasing, released) = (
        wt.victim_releasing.load(Ordering::SeqCst) == 1,
        wt.victim_released.load(Ordering::SeqCst) == 1,
    );
    match got {
        GOT_OK => {
            ensure!(
                releasing,
                "W2 got a clean lock although its last holder ({}) died holding it ({order:?})",
                if w1_got == 0 { "H" } else { "W1" }
            );
            bump(&s.woken_w2_ok);
        }
        GOT_OWNER_DIED => {
            ensure!(
                !released,
                "W2 got OwnerDied although W1 had repaired the data and unlocked ({order:?})"
            );
            bump(&s.woken_w2_owner_died);
        }
        other => {
            return Err(format!(
                "W2's lock returned {} ({order:?})",
                got_name(other)
            ));
        }
    }
    let ns = wt.survivor_ns.load(Ordering::SeqCst);
    record_sample(&s.wdet_n, &s.wdet, ns.saturating_sub(t_kill));
    Ok(TrialEnd::Passed)
}

fn woken_waiter_killed_presence() -> Outcome {
    let n = config().kills_woken_presence / 2;
    let cpus = two_cpus();
    run_trials_counting_broken(K_WOKEN_PRESENCE, 0x0ed2, n, 2, |rng, tseed| {
        woken_presence_trial(rng, tseed, cpus)
    })
}

/// Receives `n` messages of the typed stream `tseed` and checks each.
fn recv_checked(rx: &Receiver<[u64; 8]>, tseed: u64, n: u64) -> Outcome {
    let mut check = StreamCheck::new(tseed);
    while check.next < n {
        let w = rx
            .recv_timeout(LONG)
            .map_err(|e| format!("message {}: {e:?}", check.next))?;
        check.check_typed(&w)?;
        check.next += 1;
    }
    stats().msgs_checked.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

/// A receiver: checks the `n` messages of stream `tseed`, sets `ready`, blocks in `recv` (with
/// `first`, in a `Select` over `first`, a live and silent peer, and then `rx`), and reports how
/// that returned (a `GOT_` code in `got`) and when (`at`).
fn receive_then_block(
    rx: &Receiver<[u64; 8]>,
    first: Option<&Receiver<u64>>,
    tseed: u64,
    n: u64,
    ready: &AtomicU64,
    got: &AtomicU64,
    at: &AtomicU64,
) -> Outcome {
    recv_checked(rx, tseed, n)?;
    let delivered = match first {
        None => {
            ready.store(1, Ordering::SeqCst);
            rx.recv().map(|_| ())
        }
        Some(first) => {
            let mut sel = Select::new();
            sel.recv(first);
            let mine = sel.recv(rx);
            ready.store(1, Ordering::SeqCst);
            if sel.ready() == mine {
                rx.try_recv()
                    .map(|_| ())
                    .map_err(|_| forkipc::RecvError::Disconnected)
            } else {
                Err(forkipc::RecvError::Disconnected) // `first` cannot be ready: not ours
            }
        }
    };
    let code = match delivered {
        Ok(()) => GOT_MESSAGE,
        Err(_) if rx.disconnect_reason() == Some(DisconnectReason::PeerDied) => GOT_PEER_DIED,
        Err(_) => GOT_OTHER_DISCONNECT,
    };
    at.store(support::mono_ns(), Ordering::SeqCst);
    got.store(code, Ordering::SeqCst);
    Ok(())
}

fn woken_presence_trial(
    rng: &mut Rng,
    tseed: u64,
    cpus: Option<(usize, usize)>,
) -> Result<TrialEnd, String> {
    let s = stats();
    let order = KillOrder::pick(rng, cpus.is_some());
    bump(&s.woken_trials[1][order.index()]);
    let (n1, n2) = (rng.below(9), rng.below(9));
    let region = AnonRegion::new(4096).ctx("region")?;
    let wt: &Watch = region.alloc(Watch::default()).ctx("alloc")?;
    let (tx1, rx1) = forkipc::channel::<[u64; 8]>(8).ctx("channel 1")?;
    let (tx2, rx2) = forkipc::channel::<[u64; 8]>(8).ctx("channel 2")?;
    let mut sender = spawn("sender S", (tx1, tx2), move |(tx1, tx2)| {
        for seq in 0..n1 {
            tx1.send(typed_msg(!tseed, seq)).ctx("send to R1")?;
        }
        for seq in 0..n2 {
            tx2.send(typed_msg(tseed, seq)).ctx("send to R2")?;
        }
        wt.holder_ready.store(1, Ordering::SeqCst);
        park()
    })?;
    ensure!(
        wait_until(LONG, || wt.holder_ready.load(Ordering::SeqCst) == 1),
        "S never sent"
    );
    // Half the time R1 is a `Select` that watches a live peer (this process) first: it sleeps
    // on several presence words but can name only one in `list_op_pending` (the relay, since
    // the fix; before it, the live peer's word, and R2 hung when R1 died right after the wake).
    let (txl, rxl) = forkipc::channel::<u64>(1).ctx("channel L")?;
    let r1_select = rng.below(2) == 0;
    if r1_select {
        bump(&s.woken_r1_select);
    }
    let mut r1 = spawn("receiver R1", (rx1, rxl), move |(rx1, rxl)| {
        let (ready, got, at) = (&wt.victim_ready, &wt.victim_got, &wt.victim_ns);
        let first = r1_select.then_some(&rxl);
        receive_then_block(&rx1, first, !tseed, n1, ready, got, at)?;
        park()
    })?;
    await_blocked(&wt.victim_ready, r1.id(), "R1")?;
    let mut r2 = spawn("receiver R2", rx2, move |rx2| {
        let (ready, got, at) = (&wt.survivor_ready, &wt.survivor_got, &wt.survivor_ns);
        receive_then_block(&rx2, None, tseed, n2, ready, got, at)
    })?;
    await_blocked(&wt.survivor_ready, r2.id(), "R2")?;
    let s_pid = sender.id();
    let t_kill = kill_pair(order, &mut r1, &mut sender, cpus, &|| exited(s_pid))?;
    let served = r2.wait_timeout(HANG_DEADLINE).ctx("waiting for R2")?;
    sender.expect_killed("the sender S", LONG)?;
    r1.expect_killed("the receiver R1", LONG)?;
    let Some(st) = served else {
        let msg = format!(
            "HANG: R2 was not told of S's death within {HANG_DEADLINE:?} of the kills \
             ({order:?}; R1 had got {} before its death): the kernel wakes one sleeper on S's \
             presence word per death, and the one it woke (R1) died without waking the rest? {}",
            got_name(wt.victim_got.load(Ordering::SeqCst)),
            describe(r2.id())
        );
        bump(&s.woken_broken[1][order.index()]);
        return Ok(TrialEnd::Broken(msg));
    };
    ensure!(st.success(), "R2 failed: {st:?} (see stderr)");
    let got = wt.survivor_got.load(Ordering::SeqCst);
    ensure!(
        got == GOT_PEER_DIED,
        "R2's recv returned {} after S and R1 were killed ({order:?})",
        got_name(got)
    );
    drop(txl);
    bump(&s.woken_r2_peer_died);
    let ns = wt.survivor_ns.load(Ordering::SeqCst);
    record_sample(&s.wdet_n, &s.wdet, ns.saturating_sub(t_kill));
    Ok(TrialEnd::Passed)
}

// ---------------------------------------------------------------------------------------------
// 1e. The owner of a forgotten guard killed. `mem::forget` of a guard is safe Rust: the lock
// stays held, and its robust-list entry stays in the owner's list. Owner P locks M in a region
// A of its own, forgets the guard, forks a waiter W (the only way to share A), sends a few
// messages to a receiver R and then runs a script (below); this process SIGKILLs P at a random
// moment. R, blocked in `recv`, must see `Disconnected(PeerDied)` after every message, and W,
// blocked in `lock`, must get `OwnerDied`, both within `HANG_DEADLINE`; P must not crash first.
// If A's memory can leave P's address space while the entry is listed, the next list operation
// writes through it (a crash) and the kernel's exit-time walk stops there, so neither M nor P's
// presence is ever marked dead.

const SCRIPTS: usize = 5;
const SCRIPT_NAMES: [&str; SCRIPTS] = [
    "A kept, idle",
    "A kept, relocking another mutex",
    "A dropped, idle",
    "A dropped, relocking a mutex in a region mapped after",
    "A dropped, relocking a mutex in a region mapped before",
];

fn forgotten_guard_owner_killed() -> Outcome {
    // W is P's child; when P dies it becomes ours, to reap.
    set_subreaper()?;
    let n = config().kills_forgotten;
    let res = run_trials_counting_broken(K_FORGOTTEN, 0xf0e6, n, 1, forgotten_guard_trial);
    reap_strays();
    res
}

/// Locks and unlocks `m` until killed.
fn relock_forever(m: &ShmMutex<u64>) -> ! {
    loop {
        for _ in 0..64 {
            if let Ok(mut g) = m.lock() {
                *g += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// P: see the section comment. Runs until killed.
fn forgetful_owner(
    tx: Sender<[u64; 8]>,
    wt: &Watch,
    script: usize,
    tseed: u64,
    n_msgs: u64,
    b_len: usize,
) -> Outcome {
    let a = AnonRegion::new(4096).ctx("region A")?;
    let m: &ShmMutex<Pair> = a.alloc(ShmMutex::new([0; 2])).ctx("alloc M")?;
    let before = AnonRegion::new(4096).ctx("region mapped before")?;
    let other: &ShmMutex<u64> = before.alloc(ShmMutex::new(0)).ctx("alloc")?;
    let mut g = m.lock().map_err(|e| format!("lock M: {e:?}"))?;
    g[0] += 1; // mid-update, for good
    std::mem::forget(g);
    let w = forkipc::fork((), move |()| {
        let got = match m.lock() {
            Ok(_) => GOT_OK,
            Err(LockError::OwnerDied(mut g)) => {
                g[1] = g[0];
                g.mark_consistent();
                GOT_OWNER_DIED
            }
            Err(LockError::NotRecoverable) => GOT_NOT_RECOVERABLE,
        };
        wt.survivor_ns.store(support::mono_ns(), Ordering::SeqCst);
        wt.survivor_got.store(got, Ordering::SeqCst);
        0
    })
    .ctx("fork the waiter W")?;
    wt.waiter_pid.store(u64::from(w.id()), Ordering::SeqCst);
    // Neither killed nor reaped by P: P dies first, and W is then the case process's child.
    drop(w);
    for seq in 0..n_msgs {
        tx.send(typed_msg(tseed, seq)).ctx("send")?;
    }
    wt.holder_ready.store(1, Ordering::SeqCst);
    ensure!(
        wait_until(LONG, || wt.go.load(Ordering::SeqCst) == 1),
        "never told to go"
    );
    if script >= 2 {
        drop(a);
    }
    let b = if script == 3 {
        Some(AnonRegion::new(b_len).ctx("region B")?)
    } else {
        None
    };
    let after = match &b {
        Some(b) => Some(b.alloc(ShmMutex::new(0)).ctx("alloc")?),
        None => None,
    };
    wt.scripted.store(1, Ordering::SeqCst);
    match script {
        1 | 4 => relock_forever(other),
        3 => relock_forever(after.ctx("the mutex in B")?),
        _ => park(),
    }
}

fn forgotten_guard_trial(rng: &mut Rng, tseed: u64) -> Result<TrialEnd, String> {
    let s = stats();
    let script = rng.below(SCRIPTS as u64) as usize;
    let n_msgs = rng.below(9);
    let delay = Duration::from_micros(rng.below(1000));
    let b_len = 4096 << rng.below(2);
    bump(&s.forgot_trials[script]);
    let region = AnonRegion::new(4096).ctx("region")?;
    let wt: &Watch = region.alloc(Watch::default()).ctx("alloc")?;
    let (tx, rx) = forkipc::channel::<[u64; 8]>(8).ctx("channel")?;
    let mut p = spawn("owner P", tx, move |tx| {
        forgetful_owner(tx, wt, script, tseed, n_msgs, b_len)
    })?;
    ensure!(
        wait_until(LONG, || wt.holder_ready.load(Ordering::SeqCst) == 1),
        "P never got ready"
    );
    let w_pid = wt.waiter_pid.load(Ordering::SeqCst) as u32;
    let mut w = Stray(Some(w_pid));
    await_futex_sleep(w_pid, "the waiter W")?;
    let mut r = spawn("receiver R", rx, move |rx| {
        let (ready, got, at) = (&wt.victim_ready, &wt.victim_got, &wt.victim_ns);
        receive_then_block(&rx, None, tseed, n_msgs, ready, got, at)
    })?;
    await_blocked(&wt.victim_ready, r.id(), "R")?;
    wt.go.store(1, Ordering::SeqCst);
    // The kill comes at a random moment after the script's steps (P may crash in them).
    let p_pid = p.id();
    ensure!(
        wait_until(LONG, || wt.scripted.load(Ordering::SeqCst) == 1
            || exited(p_pid)),
        "P never ran its script"
    );
    spin_for(delay);
    let t_kill = support::mono_ns();
    p.kill().ctx("kill P")?;
    let p_status = p.status(LONG)?;
    // P is reaped, so W is ours now. Both survivors get HANG_DEADLINE from here.
    let deadline = Instant::now() + HANG_DEADLINE;
    let (mut r_status, mut w_status) = (None, None);
    while r_status.is_none() || w_status.is_none() {
        if r_status.is_none() {
            r_status = r.try_wait().ctx("try_wait R")?;
        }
        if w_status.is_none() {
            w_status = reap_if_exited(w_pid)?;
            if w_status.is_some() {
                w.0 = None;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let name = SCRIPT_NAMES[script];
    let mut broken = Vec::new();
    if p_status.signal() != Some(libc::SIGKILL) {
        bump(&s.forgot_crashed);
        broken.push(format!(
            "CRASH: P ended by {p_status:?}, not by our SIGKILL"
        ));
    }
    match r_status {
        None => broken.push(format!(
            "HANG: R was not told of P's death within {HANG_DEADLINE:?}: {}",
            describe(r.id())
        )),
        Some(st) => {
            ensure!(st.success(), "R failed: {st:?} (see stderr)");
            let got = wt.victim_got.load(Ordering::SeqCst);
            ensure!(
                got == GOT_PEER_DIED,
                "R's recv returned {} after P was killed ({name})",
                got_name(got)
            );
            let ns = wt.victim_ns.load(Ordering::SeqCst);
            record_sample(&s.wdet_n, &s.wdet, ns.saturating_sub(t_kill));
        }
    }
    match w_status {
        None => {
            broken.push(format!(
                "HANG: W was not given the forgotten lock within {HANG_DEADLINE:?}: {}",
                describe(w_pid)
            ));
            drop(w);
        }
        Some(st) => {
            ensure!(st.success(), "W failed: {st:?}");
            let got = wt.survivor_got.load(Ordering::SeqCst);
            ensure!(
                got == GOT_OWNER_DIED,
                "W's lock of the mutex P forgot returned {} after P was killed ({name})",
                got_name(got)
            );
            let ns = wt.survivor_ns.load(Ordering::SeqCst);
            record_sample(&s.wdet_n, &s.wdet, ns.saturating_sub(t_kill));
        }
    }
    if broken.is_empty() {
        bump(&s.forgot_served);
        return Ok(TrialEnd::Passed);
    }
    bump(&s.forgot_broken[script]);
    Ok(TrialEnd::Broken(format!(
        "{} (script: {name}; killed {delay:?} after its steps)",
        broken.join("; ")
    )))
}

// ---------------------------------------------------------------------------------------------
// Helpers for the pool and select cases: signals that cannot reach a reused pid, and the
// children of a process.

/// A pidfd: a signal sent through it reaches the process it was opened on or nobody, never a
/// later process that reuses the pid.
struct PidFd(std::os::fd::OwnedFd);

impl PidFd {
    fn open(pid: u32) -> Result<PidFd, String> {
        // SAFETY: pidfd_open takes a pid and flags; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
        ensure!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        Ok(PidFd(unsafe {
            std::os::fd::FromRawFd::from_raw_fd(fd as i32)
        }))
    }

    fn kill(&self) -> Outcome {
        use std::os::fd::AsRawFd;
        // SAFETY: a pidfd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        ensure!(
            r == 0,
            "pidfd_send_signal(SIGKILL): {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }
}

/// The parent pid of `pid`, from /proc/PID/stat.
fn parent_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The children of single-threaded process `pid` (orphans reparented to it included).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).map_or(Vec::new(), |s| {
        s.split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    })
}

/// `describe` of `pid` and of each of its children.
fn describe_tree(pid: u32) -> String {
    let mut out = describe(pid);
    for c in children_of(pid) {
        out.push_str(&format!("; its child {}", describe(c)));
    }
    out
}

/// Kills and reaps every child this process still has (each is ours and unreaped, so its pid
/// names it). Returns the pids found.
fn kill_and_reap_children() -> Vec<u32> {
    let mut found = Vec::new();
    for _ in 0..8 {
        let kids = children_of(getpid());
        if kids.is_empty() {
            break;
        }
        for &c in &kids {
            // SAFETY: `c` is our own unreaped child.
            unsafe { libc::kill(c as libc::pid_t, libc::SIGKILL) };
            let _ = support::wait_pid(c as libc::pid_t, LONG);
        }
        found.extend(kids);
    }
    reap_strays();
    found
}

/// Polls `cond` without sleeping (yielding the CPU to whoever needs it) until it holds or
/// `timeout` passes: for waits that end in microseconds and must be seen at once.
fn spin_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > timeout {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

/// A zero-filled `T` in a fresh shared mapping that lives until the process exits.
///
/// # Safety
/// All-zero bytes must be a valid `T` (atomics, arrays of atomics).
unsafe fn leak_zeroed<T: Shareable>() -> Result<&'static T, String> {
    let region = AnonRegion::new(std::mem::size_of::<T>()).ctx("region")?;
    let p = region.as_ptr() as *const T;
    std::mem::forget(region);
    // SAFETY: the mapping is zero-filled, page-aligned, large enough and never unmapped; the
    // caller promises that zeroes are a valid `T`.
    Ok(unsafe { &*p })
}

// ---------------------------------------------------------------------------------------------
// 1f. A pool worker killed. Owner O (forked by this process C, a child subreaper) builds a
// `Pool` of 2-3 workers and streams jobs through `pool.map` (sequence numbers; each job counts
// its runs in shared memory, `counts[seq] += 1`, spins a few µs, sometimes a few hundred, and
// returns a value derived from `seq`). C SIGKILLs a random worker (through a pidfd opened on
// the pid O published from `worker_ids()`) at a random moment: right after the pool is built,
// while it is idle, or mid-stream (in a job or between jobs). O checks exact-once accounting:
// every job returned its value and ran exactly once, or failed with `WorkerDied(SIGKILL)` and
// ran at most once, at most one job per kill; nothing lost, duplicated or failed otherwise.
// Then the pool must have forked a replacement (same worker count, the victim gone), and
// `shutdown` must leave O no child.
//
// Owner variant (one trial in 4): C kills O itself at such a moment. O's workers become C's
// children; each must exit (status 0, or SIGKILL from its parent-death signal) within `HANG_DEADLINE`, no job may have run
// twice, and every job O saw succeed ran exactly once.

const POOL_JOBS: usize = 8192;
const JOB_NONE: u32 = 0;
const JOB_RESULT: u32 = 1;
const JOB_DIED: u32 = 2;
/// Workers are 2 or 3.
const POOL_MAX_WORKERS: usize = 4;

#[repr(C)]
struct PoolCtl {
    /// O has built the pool and published its workers' pids.
    built: AtomicU64,
    /// O has run its first batch and now leaves the pool idle until the kill.
    idle: AtomicU64,
    /// C has sent the SIGKILL (`t_kill` was stored before it).
    killed: AtomicU64,
    t_kill: AtomicU64,
    /// Results O has taken.
    progress: AtomicU64,
    victim: AtomicU64,
    /// Kill -> O took the failed job's `WorkerDied` (ns).
    died_ns: AtomicU64,
    pids: [AtomicU64; POOL_MAX_WORKERS],
    /// `seq + 1` of the job the worker `pids[k]` is running, 0 between jobs.
    in_job: [AtomicU64; POOL_MAX_WORKERS],
    counts: [AtomicU32; POOL_JOBS],
    /// How O saw each job end (`JOB_`).
    got: [AtomicU32; POOL_JOBS],
}

// SAFETY: atomics and arrays of atomics only.
unsafe impl Shareable for PoolCtl {}

impl PoolCtl {
    fn reset(&self) {
        for a in [
            &self.built,
            &self.idle,
            &self.killed,
            &self.t_kill,
            &self.progress,
            &self.victim,
            &self.died_ns,
        ]
        .into_iter()
        .chain(&self.pids)
        .chain(&self.in_job)
        {
            a.store(0, Ordering::SeqCst);
        }
        for a in self.counts.iter().chain(&self.got) {
            a.store(0, Ordering::SeqCst);
        }
    }

    fn pid(&self, k: usize) -> u32 {
        self.pids[k].load(Ordering::SeqCst) as u32
    }
}

/// This worker's pid, cached (a worker runs many jobs; O never runs one, so each worker starts
/// from 0 after the fork).
static WORKER_PID: AtomicU32 = AtomicU32::new(0);

fn pool_result(tseed: u64, seq: u64) -> u64 {
    mix(tseed ^ seq.rotate_left(17))
}

/// The job: counts its run, marks the worker busy, spins, returns `pool_result`.
fn pool_job(ctl: &PoolCtl, tseed: u64, seq: u64) -> u64 {
    let me = match WORKER_PID.load(Ordering::Relaxed) {
        0 => {
            let p = getpid();
            WORKER_PID.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    };
    let k = (0..POOL_MAX_WORKERS).find(|&k| ctl.pid(k) == me);
    if let Some(k) = k {
        ctl.in_job[k].store(seq + 1, Ordering::SeqCst);
    }
    ctl.counts[seq as usize].fetch_add(1, Ordering::SeqCst);
    let h = msg_hash(tseed, seq);
    let us = if h.is_multiple_of(16) {
        100 + (h >> 8) % 300
    } else {
        (h >> 8) % 20
    };
    spin_for(Duration::from_micros(us));
    if let Some(k) = k {
        ctl.in_job[k].store(0, Ordering::SeqCst);
    }
    pool_result(tseed, seq)
}

#[derive(Clone, Copy, Debug)]
struct PoolParams {
    workers: usize,
    /// Jobs in the stream.
    n: u64,
    queue_cap: usize,
    /// Run this many jobs, then leave the pool idle until the kill.
    idle_after: Option<u64>,
}

/// When C strikes.
#[derive(Clone, Copy, Debug)]
enum PoolKill {
    /// As soon as the pool is built (a worker may not have taken its first job yet).
    AfterSpawn,
    /// While the pool is idle after its first `n` jobs, this long after it went idle.
    Idle(u64, Duration),
    /// Once O has taken this many results.
    Results(u64),
    /// This long after the pool was built.
    Delay(Duration),
}

/// Kill moments, as C saw them when it struck.
const MOMENTS: usize = 4;
const MOMENT_NAMES: [&str; MOMENTS] = ["after spawn", "idle", "in a job", "between jobs"];

fn pool_worker_killed() -> Outcome {
    // O's workers become ours when O dies (owner variant, or O killed after a hang).
    set_subreaper()?;
    // SAFETY: a PoolCtl is atomics only; zeroes are valid.
    let ctl: &'static PoolCtl = unsafe { leak_zeroed::<PoolCtl>()? };
    let n = config().kills_pool;
    run_trials(K_POOL, 0x9001, n, |rng, tseed| {
        let r = pool_trial(rng, tseed, ctl);
        let left = kill_and_reap_children();
        match r {
            Ok(()) if !left.is_empty() => Err(format!(
                "the trial passed but left children {left:?} (killed and reaped)"
            )),
            r => r,
        }
    })
}

fn pool_trial(rng: &mut Rng, tseed: u64, ctl: &'static PoolCtl) -> Outcome {
    ctl.reset();
    let owner = rng.below(4) == 0;
    let workers = 2 + rng.below(2) as usize;
    let n = 20 + rng.below(1200);
    let queue_cap = [2usize, 16, 1024][rng.below(3) as usize];
    let plan = match rng.below(8) {
        0 => PoolKill::AfterSpawn,
        1 => PoolKill::Idle(rng.below(n / 2 + 1), Duration::from_micros(rng.below(500))),
        2..=4 => PoolKill::Results(rng.below(n)),
        _ => PoolKill::Delay(Duration::from_micros(rng.below(n * 8))),
    };
    let params = PoolParams {
        workers,
        n,
        queue_cap,
        idle_after: match plan {
            PoolKill::Idle(k, _) => Some(k),
            _ => None,
        },
    };
    let mut o = spawn("pool owner O", (), move |()| pool_owner(ctl, tseed, params))?;
    let o_pid = o.id();
    let o_failed = |o: &mut Reap, what: &str| -> String {
        let st = o.status(LONG);
        format!("O ended before {what} ({plan:?}, {params:?}): {st:?} (see stderr)")
    };
    spin_until(LONG, || {
        ctl.built.load(Ordering::SeqCst) == 1 || exited(o_pid)
    });
    if ctl.built.load(Ordering::SeqCst) == 0 {
        if exited(o_pid) {
            return Err(o_failed(&mut o, "building its pool"));
        }
        return Err(format!(
            "HANG: O did not build its pool within {LONG:?}: {}",
            describe_tree(o_pid)
        ));
    }
    // Opened now: O reaps a worker only after the kill (or after failing), and a worker is
    // O's child (checked after opening, so the pidfd cannot name a process that reused a
    // reaped worker's pid).
    let mut fds = Vec::new();
    for k in 0..workers {
        let pid = ctl.pid(k);
        let fd = PidFd::open(pid)?;
        ensure!(
            parent_of(pid) == Some(o_pid),
            "worker {pid} published by O is not O's child (parent {:?})",
            parent_of(pid)
        );
        fds.push(fd);
    }
    let reached = match plan {
        PoolKill::AfterSpawn => true,
        PoolKill::Idle(_, d) => {
            let ok = wait_until(LONG, || {
                ctl.idle.load(Ordering::SeqCst) == 1 || exited(o_pid)
            });
            spin_for(d);
            ok
        }
        PoolKill::Results(k) => wait_until(LONG, || {
            ctl.progress.load(Ordering::SeqCst) >= k || exited(o_pid)
        }),
        PoolKill::Delay(d) => {
            spin_for(d);
            true
        }
    };
    if exited(o_pid) {
        return Err(o_failed(&mut o, "the kill"));
    }
    ensure!(
        reached,
        "HANG: O did not reach the kill point ({plan:?}) within {LONG:?}: {}",
        describe_tree(o_pid)
    );
    let k = rng.below(workers as u64) as usize;
    let victim = if owner { o_pid } else { ctl.pid(k) };
    ctl.victim.store(u64::from(victim), Ordering::SeqCst);
    let moment = match plan {
        PoolKill::AfterSpawn => 0,
        PoolKill::Idle(..) => 1,
        _ => {
            let busy = if owner {
                ctl.in_job.iter().any(|a| a.load(Ordering::SeqCst) != 0)
            } else {
                ctl.in_job[k].load(Ordering::SeqCst) != 0
            };
            if busy { 2 } else { 3 }
        }
    };
    let s = stats();
    bump(&s.pool_moments[usize::from(owner)][moment]);
    let t_kill = support::mono_ns();
    ctl.t_kill.store(t_kill, Ordering::SeqCst);
    if owner {
        o.kill().ctx("kill O")?;
    } else {
        fds[k].kill()?;
    }
    ctl.killed.store(1, Ordering::SeqCst);
    if owner {
        return pool_owner_killed(&mut o, ctl, t_kill, workers, plan);
    }
    match o.wait_timeout(LONG).ctx("waiting for O")? {
        Some(st) => ensure!(
            st.success(),
            "O's checks failed after the kill of worker {victim} ({}; {plan:?}, {params:?}): \
             {st:?} (see stderr)",
            MOMENT_NAMES[moment]
        ),
        None => {
            return Err(format!(
                "HANG: O did not finish within {LONG:?} of the kill of worker {victim} ({}; \
                 {plan:?}, {params:?}; O had taken {} results): {}",
                MOMENT_NAMES[moment],
                ctl.progress.load(Ordering::SeqCst),
                describe_tree(o_pid)
            ));
        }
    }
    let died = ctl.died_ns.load(Ordering::SeqCst);
    if died != 0 {
        record_sample(&s.pdet_n, &s.pdet, died);
    }
    Ok(())
}

/// O: builds the pool, publishes it, runs the stream, waits for the kill, checks the pool's
/// recovery and the accounting. Killed itself in the owner variant.
fn pool_owner(ctl: &'static PoolCtl, tseed: u64, p: PoolParams) -> Outcome {
    let pool = PoolBuilder::new()
        .workers(p.workers)
        .queue_capacity(p.queue_cap)
        .build(move |seq: u64| pool_job(ctl, tseed, seq))
        .ctx("build the pool")?;
    let ids = pool.worker_ids();
    ensure!(
        ids.len() == p.workers,
        "a new pool of {} has workers {ids:?}",
        p.workers
    );
    for (k, &id) in ids.iter().enumerate() {
        ctl.pids[k].store(u64::from(id), Ordering::SeqCst);
    }
    ctl.built.store(1, Ordering::SeqCst);
    let mut run = PoolRun {
        ctl,
        tseed,
        next: 0,
        failed: 0,
    };
    if let Some(n1) = p.idle_after {
        run.jobs(&pool, n1)?;
        ctl.idle.store(1, Ordering::SeqCst);
        ensure!(
            wait_until(LONG, || ctl.killed.load(Ordering::SeqCst) == 1),
            "the kill never came while the pool was idle"
        );
    }
    run.jobs(&pool, p.n)?;
    ensure!(
        wait_until(LONG, || ctl.killed.load(Ordering::SeqCst) == 1),
        "the kill never came"
    );
    // The pool learns of a death when it next waits; run small batches until it has replaced
    // the victim.
    let victim = ctl.victim.load(Ordering::SeqCst) as u32;
    let t = Instant::now();
    loop {
        let ids = pool.worker_ids();
        if ids.len() == p.workers && !ids.contains(&victim) {
            break;
        }
        ensure!(
            t.elapsed() < DETECT_BOUND,
            "{:?} after the kill, the pool of {} lists workers {ids:?} (victim {victim}): not \
             replaced",
            t.elapsed(),
            p.workers
        );
        let to = run.next + 4 * p.workers as u64;
        run.jobs(&pool, to)?;
    }
    pool.shutdown().ctx("shutdown")?;
    let left = children_of(getpid());
    ensure!(
        left.is_empty() && !has_children()?,
        "shutdown left children {left:?}"
    );
    let (_, died) = pool_accounting(ctl, run.next, true)?;
    ensure!(
        died == run.failed,
        "{} jobs failed WorkerDied but {died} are marked so",
        run.failed
    );
    Ok(())
}

/// O's stream: runs jobs `next..to` through `pool.map` and checks each outcome.
struct PoolRun {
    ctl: &'static PoolCtl,
    tseed: u64,
    next: u64,
    /// Jobs that failed with `WorkerDied` (at most one per kill).
    failed: u64,
}

impl PoolRun {
    fn jobs(&mut self, pool: &forkipc::Pool<u64, u64>, to: u64) -> Outcome {
        let s = stats();
        ensure!(
            to as usize <= POOL_JOBS,
            "{to} jobs exceed the {POOL_JOBS} counters"
        );
        let from = self.next;
        for (seq, r) in (from..to).zip(pool.map(from..to)) {
            match r {
                Ok(v) => {
                    if v != pool_result(self.tseed, seq) {
                        bump(&s.wrong);
                        return Err(format!("WRONG: job {seq} returned {v:#x}"));
                    }
                    self.ctl.got[seq as usize].store(JOB_RESULT, Ordering::SeqCst);
                }
                Err(JobError::WorkerDied(st)) if st.signal() == Some(libc::SIGKILL) => {
                    let t_kill = self.ctl.t_kill.load(Ordering::SeqCst);
                    ensure!(
                        t_kill != 0,
                        "job {seq} failed with WorkerDied({st:?}) before any kill"
                    );
                    self.failed += 1;
                    if self.failed > 1 {
                        bump(&s.lost);
                        return Err(format!(
                            "LOST: job {seq} is the {}th to fail with WorkerDied for one kill",
                            self.failed
                        ));
                    }
                    self.ctl.got[seq as usize].store(JOB_DIED, Ordering::SeqCst);
                    self.ctl
                        .died_ns
                        .store(support::mono_ns().saturating_sub(t_kill), Ordering::SeqCst);
                }
                Err(e) => {
                    bump(&s.lost);
                    return Err(format!(
                        "LOST: job {seq} failed with {e:?} (only WorkerDied(SIGKILL) of the \
                         job the victim was running is allowed)"
                    ));
                }
            }
            self.next = seq + 1;
            self.ctl.progress.store(seq + 1, Ordering::SeqCst);
        }
        if self.next != to {
            bump(&s.lost);
            return Err(format!(
                "LOST: pool.map over jobs {from}..{to} yielded only {} results",
                self.next - from
            ));
        }
        Ok(())
    }
}

/// Exact-once accounting of jobs `0..n` (and no run of a job never submitted), once no
/// worker can run anything any more. `all_ended`: every job `0..n` was reported to O. Returns
/// (jobs that returned and ran once, jobs that failed WorkerDied).
fn pool_accounting(ctl: &PoolCtl, n: u64, all_ended: bool) -> Result<(u64, u64), String> {
    let s = stats();
    let (mut once, mut died) = (0, 0);
    for seq in 0..POOL_JOBS {
        let c = ctl.counts[seq].load(Ordering::SeqCst);
        let g = ctl.got[seq].load(Ordering::SeqCst);
        match g {
            JOB_RESULT if c == 1 => once += 1,
            JOB_RESULT if c == 0 => {
                bump(&s.wrong);
                return Err(format!("WRONG: job {seq} returned a result but never ran"));
            }
            JOB_DIED if c <= 1 => died += 1,
            JOB_NONE if (seq as u64) < n && all_ended => {
                bump(&s.lost);
                return Err(format!("LOST: job {seq} never ended"));
            }
            JOB_NONE if (seq as u64) >= n && c != 0 && all_ended => {
                bump(&s.wrong);
                return Err(format!(
                    "WRONG: job {seq} ran {c} times but only {n} were submitted"
                ));
            }
            JOB_NONE if c <= 1 => {}
            _ => {
                bump(&s.duplicated);
                return Err(format!(
                    "DUPLICATED: job {seq} ran {c} times (O saw it {})",
                    match g {
                        JOB_RESULT => "return",
                        JOB_DIED => "fail with WorkerDied",
                        _ => "not end",
                    }
                ));
            }
        }
    }
    s.pool_jobs_once.fetch_add(once, Ordering::Relaxed);
    s.pool_jobs_died.fetch_add(died, Ordering::Relaxed);
    Ok((once, died))
}

/// O was killed: its workers are C's children now and must each exit (status 0, or SIGKILL from
/// their parent-death signal) within
/// `HANG_DEADLINE`; no job may have run twice.
fn pool_owner_killed(
    o: &mut Reap,
    ctl: &PoolCtl,
    t_kill: u64,
    workers: usize,
    plan: PoolKill,
) -> Outcome {
    o.expect_killed("the pool owner O", LONG)?;
    let pids: Vec<u32> = (0..workers).map(|k| ctl.pid(k)).collect();
    let deadline = Instant::now() + HANG_DEADLINE;
    let mut exits = Vec::new();
    let mut last = t_kill;
    loop {
        let mut st = 0;
        // SAFETY: `st` is writable; every child of ours is one of O's orphaned workers.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r > 0 {
            last = support::mono_ns();
            exits.push((r as u32, std::process::ExitStatus::from_raw(st)));
            continue;
        }
        if r < 0 {
            break; // ECHILD: none left
        }
        if Instant::now() >= deadline {
            let left = children_of(getpid());
            let states: Vec<String> = left.iter().map(|&c| describe(c)).collect();
            return Err(format!(
                "HANG: {HANG_DEADLINE:?} after O was killed ({plan:?}), its workers {left:?} \
                 (of {pids:?}) have not exited: {}",
                states.join("; ")
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let mut exited_pids: Vec<u32> = exits.iter().map(|e| e.0).collect();
    exited_pids.sort_unstable();
    let mut want = pids.clone();
    want.sort_unstable();
    ensure!(
        exited_pids == want,
        "after O's death, children {exited_pids:?} exited; O's workers were {want:?}"
    );
    for (pid, st) in &exits {
        // Status 0 (it noticed the death on its job channel) or SIGKILL (the parent-death
        // signal a worker asks for, so that one stuck in a job goes too).
        ensure!(
            st.success() || st.signal() == Some(libc::SIGKILL),
            "O's worker {pid} ended with {st:?} after O was killed, not status 0 or SIGKILL"
        );
    }
    let s = stats();
    record_sample(&s.odet_n, &s.odet, last.saturating_sub(t_kill));
    s.pool_orphans_exited
        .fetch_add(exits.len() as u64, Ordering::Relaxed);
    pool_accounting(ctl, 0, false)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1g. A select peer killed. This process C waits in `Select::ready_timeout` over N channels
// (N random in 2..=64; typed [u64; 8] and byte channels) whose senders live in 2-6 peer
// processes; some channels idle, some stream sequence-numbered messages (each peer paced
// fast, with pauses, or slowly, so C also sleeps in the kernel). Killer K SIGKILLs a random
// peer at a random moment (after a delay, after the victim sent some messages, or as soon as C
// sleeps). C calls `try_recv` on the endpoint `ready` names, which must not find it empty. On
// every channel of the victim, C must receive every message whose send returned Ok (the peer
// counts them in shared memory; the send in flight at the kill may arrive too), in order, none
// duplicated or torn, then `Disconnected` with reason `PeerDied`, all within `DETECT_BOUND` of
// the kill (the time is recorded). The other channels keep working: once the victim is fully
// reported, the live peers send a tail on every channel (idle ones included) and close; C must
// receive exactly what they sent, then `PeerDropped`.

const SEL_MAX: usize = 64;
const SEL_PEERS: u64 = 6;

#[repr(C)]
struct SelCtl {
    go: AtomicU64,
    stop: AtomicU64,
    t_kill: AtomicU64,
    /// C was asleep (state S) when K struck.
    asleep: AtomicU64,
    /// Messages on channel i whose send returned Ok.
    sent: [AtomicU64; SEL_MAX],
}

// SAFETY: atomics only.
unsafe impl Shareable for SelCtl {}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pace {
    Fast,
    Paused,
    Slow,
}

enum SelRx {
    Typed(Receiver<[u64; 8]>),
    Bytes(ByteReceiver),
}

impl SelRx {
    fn reason(&self) -> Option<DisconnectReason> {
        match self {
            SelRx::Typed(r) => r.disconnect_reason(),
            SelRx::Bytes(r) => r.disconnect_reason(),
        }
    }
}

/// What C knows of one channel.
struct SelChan {
    peer: usize,
    streaming: bool,
    check: StreamCheck,
    open: bool,
    /// Messages received after the victim's last channel was reported.
    after: u64,
}

fn chan_seed(tseed: u64, i: usize) -> u64 {
    mix(tseed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9))
}

fn select_peer_killed() -> Outcome {
    let n = config().kills_select;
    run_trials(K_SELECT, 0x5e1ec7, n, select_trial)
}

fn select_trial(rng: &mut Rng, tseed: u64) -> Outcome {
    let s = stats();
    let n = 2 + rng.below(SEL_MAX as u64 - 1) as usize;
    let procs = 2 + rng.below((n as u64).min(SEL_PEERS) - 1) as usize;
    let victim = rng.below(procs as u64) as usize;
    let region = AnonRegion::new(std::mem::size_of::<SelCtl>()).ctx("region")?;
    let ctl: &SelCtl = region
        .alloc(SelCtl {
            go: AtomicU64::new(0),
            stop: AtomicU64::new(0),
            t_kill: AtomicU64::new(0),
            asleep: AtomicU64::new(0),
            sent: [const { AtomicU64::new(0) }; SEL_MAX],
        })
        .ctx("alloc")?;
    // Channels, and each peer's senders.
    let mut rxs = Vec::with_capacity(n);
    let mut chans = Vec::with_capacity(n);
    let mut ttx: Vec<Vec<Sender<[u64; 8]>>> = (0..procs).map(|_| Vec::new()).collect();
    let mut btx: Vec<Vec<ByteSender>> = (0..procs).map(|_| Vec::new()).collect();
    let mut tidx: Vec<Vec<usize>> = vec![Vec::new(); procs];
    let mut bidx: Vec<Vec<usize>> = vec![Vec::new(); procs];
    let mut streaming = [false; SEL_MAX];
    for (i, streams) in streaming.iter_mut().enumerate().take(n) {
        let peer = if i < procs {
            i
        } else {
            rng.below(procs as u64) as usize
        };
        *streams = rng.below(2) == 0;
        if rng.below(2) == 0 {
            let (tx, rx) = forkipc::channel::<[u64; 8]>(typed_cap(rng)).ctx("channel")?;
            ttx[peer].push(tx);
            tidx[peer].push(i);
            rxs.push(SelRx::Typed(rx));
        } else {
            let (tx, rx) = forkipc::byte_channel(byte_cap(rng)).ctx("byte_channel")?;
            btx[peer].push(tx);
            bidx[peer].push(i);
            rxs.push(SelRx::Bytes(rx));
        }
        chans.push(SelChan {
            peer,
            streaming: *streams,
            check: StreamCheck::new(chan_seed(tseed, i)),
            open: true,
            after: 0,
        });
    }
    // One trial in 4: every peer slow, so the selector mostly sleeps in the kernel.
    let all_slow = rng.below(4) == 0;
    let paces: Vec<Pace> = (0..procs)
        .map(|_| match rng.below(3) {
            _ if all_slow => Pace::Slow,
            0 => Pace::Fast,
            1 => Pace::Paused,
            _ => Pace::Slow,
        })
        .collect();
    let mut peers = Vec::with_capacity(procs);
    for (p, (t, b)) in ttx.into_iter().zip(btx).enumerate() {
        let pace = paces[p];
        let (ti, bi) = (tidx[p].clone(), bidx[p].clone());
        let pseed = rng.next_u64();
        peers.push(spawn("select peer", (t, b), move |(t, b)| {
            select_peer(ctl, tseed, &t, &ti, &b, &bi, &streaming, pace, pseed)
        })?);
    }
    // The killer, with a pidfd on the victim (our child: unreaped until the end).
    let victim_fd = PidFd::open(peers[victim].id())?;
    let victim_streams: Vec<usize> = (0..n)
        .filter(|&i| chans[i].peer == victim && streaming[i])
        .collect();
    // When K strikes: after the victim sent some messages, after a delay, or as soon as the
    // selector sleeps (within a bound: with fast peers it may never).
    let (by_msgs, when_asleep) = match rng.below(3) {
        0 if !victim_streams.is_empty() => (true, false),
        1 => (false, true),
        _ => (false, false),
    };
    // A slow victim sends a message per channel every 50-500 µs.
    let most = if paces[victim] == Pace::Slow {
        40
    } else {
        2000
    };
    let kill_after = rng.below(most);
    let delay = Duration::from_micros(rng.below(4000));
    let c_pid = getpid();
    // Declared after the peers: dropped (killed, reaped) first on an early return.
    let mut killer = spawn("killer K", (), move |()| {
        ensure!(
            wait_until(LONG, || ctl.go.load(Ordering::SeqCst) == 1),
            "never told to go"
        );
        if by_msgs {
            wait_until(LONG, || {
                victim_streams
                    .iter()
                    .map(|&i| ctl.sent[i].load(Ordering::SeqCst))
                    .sum::<u64>()
                    >= kill_after
            });
        } else if when_asleep {
            spin_for(delay / 8);
            spin_until(Duration::from_millis(20), || proc_state(c_pid) == Some('S'));
        } else {
            spin_for(delay);
        }
        let asleep = proc_state(c_pid) == Some('S');
        ctl.asleep.store(u64::from(asleep), Ordering::SeqCst);
        ctl.t_kill.store(support::mono_ns(), Ordering::SeqCst);
        victim_fd.kill()
    })?;
    let mut sel = Select::new();
    for rx in &rxs {
        match rx {
            SelRx::Typed(r) => sel.recv(r),
            SelRx::Bytes(r) => sel.recv(r),
        };
    }
    let victim_chans = chans.iter().filter(|c| c.peer == victim).count();
    let mut victim_open = victim_chans;
    let mut open = n;
    let start = Instant::now();
    ctl.go.store(1, Ordering::SeqCst);
    let hang = |chans: &[SelChan], peers: &[Reap], what: String| -> String {
        let open: Vec<String> = chans
            .iter()
            .enumerate()
            .filter(|(_, c)| c.open)
            .map(|(i, c)| {
                format!(
                    "{i} (peer {}{}, {} of {} sent)",
                    c.peer,
                    if c.peer == victim { ", the victim" } else { "" },
                    c.check.next,
                    ctl.sent[i].load(Ordering::SeqCst)
                )
            })
            .collect();
        let states: Vec<String> = peers.iter().map(|p| describe(p.id())).collect();
        format!(
            "HANG: {what}; {n} channels, {procs} peers, victim peer {victim} (killed: {}); open \
             channels: {}; peers: {}",
            ctl.t_kill.load(Ordering::SeqCst) != 0,
            open.join(", "),
            states.join("; ")
        )
    };
    let mut msgs = 0u64;
    while open > 0 {
        if start.elapsed() > 3 * LONG {
            return Err(hang(
                &chans,
                &peers,
                format!("not done after {:?}", start.elapsed()),
            ));
        }
        let Ok(i) = sel.ready_timeout(LONG) else {
            return Err(hang(
                &chans,
                &peers,
                format!("Select::ready_timeout({LONG:?}) timed out"),
            ));
        };
        let c = &mut chans[i];
        let got = match &rxs[i] {
            SelRx::Typed(r) => r.try_recv().map(|w| c.check.check_typed(&w)),
            SelRx::Bytes(r) => r
                .try_recv()
                .map(|v| c.check.check_bytes(&v, r.max_message_len())),
        };
        match got {
            Ok(checked) => {
                checked.map_err(|e| format!("channel {i} (peer {}): {e}", c.peer))?;
                c.check.next += 1;
                msgs += 1;
                if victim_open == 0 {
                    c.after += 1;
                }
            }
            Err(TryRecvError::Empty) => {
                return Err(format!(
                    "Select reported channel {i} ready, but try_recv found it Empty (not \
                     disconnected) after {} messages",
                    c.check.next
                ));
            }
            Err(TryRecvError::Disconnected) => {
                sel.remove(i);
                c.open = false;
                open -= 1;
                let reason = rxs[i].reason();
                let sent = ctl.sent[i].load(Ordering::SeqCst);
                let got = c.check.next;
                if c.peer == victim {
                    let t_kill = ctl.t_kill.load(Ordering::SeqCst);
                    ensure!(
                        t_kill != 0,
                        "channel {i} of the victim disconnected ({reason:?}) before the kill"
                    );
                    ensure!(
                        reason == Some(DisconnectReason::PeerDied),
                        "channel {i} of the killed peer disconnected with reason {reason:?}, \
                         not PeerDied"
                    );
                    if got < sent {
                        bump(&s.lost);
                        return Err(format!(
                            "LOST: channel {i} of the killed peer: {sent} sends returned Ok, \
                             but only {got} messages came before Disconnected"
                        ));
                    }
                    if got > sent + 1 {
                        bump(&s.wrong);
                        return Err(format!(
                            "WRONG: channel {i} of the killed peer delivered {got} messages, \
                             {sent} sends returned Ok (one more may have been in flight)"
                        ));
                    }
                    if got == sent + 1 {
                        bump(&s.sel_inflight);
                    }
                    s.sel_victim_msgs.fetch_add(got, Ordering::Relaxed);
                    victim_open -= 1;
                    if victim_open == 0 {
                        let detect =
                            Duration::from_nanos(support::mono_ns().saturating_sub(t_kill));
                        ensure!(
                            detect < DETECT_BOUND,
                            "kill -> the last of the victim's channels reported Disconnected \
                             took {detect:?}"
                        );
                        record_sample(&s.sdet_n, &s.sdet, detect.as_nanos() as u64);
                    }
                } else {
                    ensure!(
                        ctl.stop.load(Ordering::SeqCst) == 1,
                        "channel {i} of live peer {} disconnected ({reason:?}) before the peer \
                         was told to stop ({got} messages received, {sent} sent; a peer that \
                         failed says why on stderr)",
                        c.peer
                    );
                    ensure!(
                        reason == Some(DisconnectReason::PeerDropped),
                        "channel {i} of live peer {} disconnected with reason {reason:?}, not \
                         PeerDropped",
                        c.peer
                    );
                    if got != sent {
                        bump(if got < sent { &s.lost } else { &s.wrong });
                        return Err(format!(
                            "{}: channel {i} of live peer {}: {sent} sent, {got} received",
                            if got < sent { "LOST" } else { "WRONG" },
                            c.peer
                        ));
                    }
                }
            }
        }
        // The victim is fully reported and every live streaming channel has delivered since:
        // the live peers send their tails and close.
        if victim_open == 0
            && ctl.stop.load(Ordering::SeqCst) == 0
            && chans
                .iter()
                .all(|c| c.peer == victim || !c.streaming || c.after > 0)
        {
            ctl.stop.store(1, Ordering::SeqCst);
        }
    }
    killer.expect_success("the killer K", LONG)?;
    for (p, peer) in peers.iter_mut().enumerate() {
        if p == victim {
            peer.expect_killed("the killed select peer", LONG)?;
        } else {
            peer.expect_success("a live select peer", LONG)?;
        }
    }
    s.msgs_checked.fetch_add(msgs, Ordering::Relaxed);
    s.sel_channels.fetch_add(n as u64, Ordering::Relaxed);
    s.sel_victim_channels
        .fetch_add(victim_chans as u64, Ordering::Relaxed);
    if ctl.asleep.load(Ordering::SeqCst) == 1 {
        bump(&s.sel_asleep);
    }
    Ok(())
}

/// A select peer: streams on its streaming channels (round robin, paced) until told to stop,
/// counting every send that returned Ok; then sends a short tail on every channel and closes
/// them all.
#[allow(clippy::too_many_arguments)]
fn select_peer(
    ctl: &SelCtl,
    tseed: u64,
    ttx: &[Sender<[u64; 8]>],
    tidx: &[usize],
    btx: &[ByteSender],
    bidx: &[usize],
    streaming: &[bool; SEL_MAX],
    pace: Pace,
    pseed: u64,
) -> Outcome {
    let mut rng = Rng::new(pseed);
    let mut seq = [0u64; SEL_MAX];
    let mut buf = Vec::with_capacity(BYTE_HDR + MAX_PAYLOAD);
    let mut send = |i: usize, typed: Option<&Sender<[u64; 8]>>, bytes: Option<&ByteSender>| {
        let cs = chan_seed(tseed, i);
        let r = match (typed, bytes) {
            (Some(tx), _) => tx
                .send_timeout(typed_msg(cs, seq[i]), LONG)
                .map_err(|e| format!("{e:?}")),
            (_, Some(tx)) => {
                byte_msg(cs, seq[i], &mut buf);
                tx.send_timeout(&buf, LONG).map_err(|e| format!("{e:?}"))
            }
            _ => unreachable!(),
        };
        r.map_err(|e| format!("send of message {} on channel {i}: {e}", seq[i]))?;
        seq[i] += 1;
        ctl.sent[i].store(seq[i], Ordering::SeqCst);
        Ok::<(), String>(())
    };
    let any_streaming = tidx.iter().chain(bidx).any(|&i| streaming[i]);
    let start = Instant::now();
    while ctl.stop.load(Ordering::SeqCst) == 0 {
        ensure!(
            start.elapsed() < 3 * LONG,
            "never told to stop within {:?}",
            3 * LONG
        );
        for (tx, &i) in ttx.iter().zip(tidx) {
            if streaming[i] {
                send(i, Some(tx), None)?;
            }
        }
        for (tx, &i) in btx.iter().zip(bidx) {
            if streaming[i] {
                send(i, None, Some(tx))?;
            }
        }
        match pace {
            Pace::Fast => {}
            Pace::Paused => {
                if rng.below(32) == 0 {
                    spin_for(Duration::from_micros(rng.below(300)));
                }
            }
            Pace::Slow => std::thread::sleep(Duration::from_micros(50 + rng.below(450))),
        }
        if !any_streaming {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    for (tx, &i) in ttx.iter().zip(tidx) {
        for _ in 0..1 + rng.below(3) {
            send(i, Some(tx), None)?;
        }
    }
    for (tx, &i) in btx.iter().zip(bidx) {
        for _ in 0..1 + rng.below(3) {
            send(i, None, Some(tx))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A `try_recv` polling loop must learn that the sender's process died: after a SIGKILL,
// `try_recv` answers `Disconnected`, not `Empty` forever (an earlier version of
// `RxCore::read`'s non-blocking path checked only the closed flag, not the peer's presence).

fn try_recv_reports_disconnected_after_peer_death() -> Outcome {
    let (tx, rx) = forkipc::channel::<u64>(4).ctx("channel")?;
    let (btx, brx) = forkipc::byte_channel(1024).ctx("byte_channel")?;
    let mut child = spawn("sender", (tx, btx), |(tx, btx)| {
        tx.send(1).ctx("send")?;
        btx.send(b"one").ctx("send bytes")?;
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })?;
    ensure!(rx.recv_timeout(LONG) == Ok(1), "first typed message");
    ensure!(
        brx.recv_timeout(LONG).as_deref() == Ok(&b"one"[..]),
        "first byte message"
    );
    child.kill().ctx("kill")?;
    child.expect_killed("sender", LONG)?;
    ensure!(
        rx.disconnect_reason() == Some(DisconnectReason::PeerDied),
        "reason {:?}",
        rx.disconnect_reason()
    );
    let t = rx.try_recv();
    let b = brx.try_recv();
    ensure!(
        t == Err(TryRecvError::Disconnected) && b == Err(TryRecvError::Disconnected),
        "after the sender was SIGKILLed (disconnect_reason() = PeerDied), try_recv returned {t:?} (typed) and {:?} (bytes), not Disconnected",
        b.map(|_| ())
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. A stopped process is not a dead one.

const STOP_FOR: Duration = Duration::from_secs(2);

fn wait_stopped(pid: u32) -> Outcome {
    ensure!(
        wait_until(LONG, || proc_state(pid) == Some('T')),
        "process {pid} did not stop (state {:?})",
        proc_state(pid)
    );
    Ok(())
}

fn stopped_is_not_dead() -> Outcome {
    stopped_sender_is_not_dead()?;
    stopped_receiver_is_not_dead()?;
    stopped_mutex_holder_is_not_dead()
}

fn stopped_sender_is_not_dead() -> Outcome {
    const N: u64 = 3000;
    let seed = 0x570b;
    let (tx, rx) = forkipc::channel::<[u64; 8]>(64).ctx("channel")?;
    let mut child = spawn("paced sender", tx, move |tx| {
        for seq in 0..N {
            tx.send(typed_msg(seed, seq)).ctx("send")?;
            if seq % 8 == 7 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    })?;
    let pid = child.id();
    let mut next = 0u64;
    for _ in 0..100 {
        ensure!(
            recv_expect(&rx, seed, &mut next, LONG)?,
            "no message before the stop"
        );
    }
    child.signal(libc::SIGSTOP).ctx("SIGSTOP")?;
    wait_stopped(pid)?;
    // Drain what was sent before the stop, then wait STOP_FOR in one recv_timeout.
    let t = loop {
        let t = Instant::now();
        if !recv_expect(&rx, seed, &mut next, STOP_FOR)? {
            break t.elapsed();
        }
    };
    ensure!(
        t >= STOP_FOR,
        "recv_timeout({STOP_FOR:?}) returned Timeout after {t:?}"
    );
    ensure!(
        rx.disconnect_reason().is_none(),
        "a stopped sender is reported as {:?}",
        rx.disconnect_reason()
    );
    ensure!(
        proc_state(pid) == Some('T'),
        "the sender is no longer stopped"
    );
    child.signal(libc::SIGCONT).ctx("SIGCONT")?;
    while next < N {
        ensure!(
            recv_expect(&rx, seed, &mut next, LONG)?,
            "stalled at message {next} after SIGCONT"
        );
    }
    ensure!(
        rx.recv_timeout(LONG) == Err(RecvTimeoutError::Disconnected)
            && rx.disconnect_reason() == Some(DisconnectReason::PeerDropped),
        "after all {N} messages: expected Disconnected(PeerDropped), reason {:?}",
        rx.disconnect_reason()
    );
    child.expect_success("the paced sender", LONG)?;
    bump(&stats().stop_checks);
    println!("    stopped sender: recv_timeout waited {t:?} -> Timeout; {N} messages, none lost");
    Ok(())
}

/// Receives the next message of the paced stream; `Ok(false)` on Timeout.
fn recv_expect(
    rx: &Receiver<[u64; 8]>,
    seed: u64,
    next: &mut u64,
    t: Duration,
) -> Result<bool, String> {
    match rx.recv_timeout(t) {
        Ok(w) => {
            ensure!(w == typed_msg(seed, *next), "message {next} wrong: {w:x?}");
            *next += 1;
            Ok(true)
        }
        Err(RecvTimeoutError::Timeout) => Ok(false),
        Err(RecvTimeoutError::Disconnected) => Err(format!(
            "Disconnected ({:?}) after {next} messages",
            rx.disconnect_reason()
        )),
    }
}

fn stopped_receiver_is_not_dead() -> Outcome {
    const N: u64 = 200;
    let seed = 0x570c;
    let (tx, rx) = forkipc::channel::<[u64; 8]>(4).ctx("channel")?;
    let mut child = spawn("receiver", rx, move |rx| {
        for seq in 0..N {
            let w = rx.recv_timeout(Duration::from_secs(30)).ctx("recv")?;
            ensure!(w == typed_msg(seed, seq), "message {seq} wrong: {w:x?}");
        }
        ensure!(
            rx.recv_timeout(LONG) == Err(RecvTimeoutError::Disconnected),
            "no disconnect after {N}"
        );
        Ok(())
    })?;
    let pid = child.id();
    for seq in 0..10 {
        tx.send_timeout(typed_msg(seed, seq), LONG)
            .map_err(|e| format!("send {seq}: {e:?}"))?;
    }
    child.signal(libc::SIGSTOP).ctx("SIGSTOP")?;
    wait_stopped(pid)?;
    let mut seq = 10;
    let waited = loop {
        let t = Instant::now();
        match tx.send_timeout(typed_msg(seed, seq), STOP_FOR) {
            Ok(()) => seq += 1,
            Err(SendTimeoutError::Timeout(_)) => break t.elapsed(),
            Err(SendTimeoutError::Disconnected(_)) => {
                return Err(format!(
                    "a stopped receiver is reported as {:?}",
                    tx.disconnect_reason()
                ));
            }
        }
        ensure!(seq < N, "the ring never filled");
    };
    ensure!(
        waited >= STOP_FOR,
        "send_timeout returned Timeout after {waited:?}"
    );
    ensure!(
        tx.disconnect_reason().is_none(),
        "a stopped receiver is reported as {:?}",
        tx.disconnect_reason()
    );
    child.signal(libc::SIGCONT).ctx("SIGCONT")?;
    // The timed-out send had no effect: send it again, then the rest.
    for seq in seq..N {
        tx.send_timeout(typed_msg(seed, seq), LONG)
            .map_err(|e| format!("send {seq}: {e:?}"))?;
    }
    drop(tx);
    child.expect_success(
        "the receiver (checks all messages exactly once, in order)",
        LONG,
    )?;
    bump(&stats().stop_checks);
    println!("    stopped receiver: send_timeout waited {waited:?} -> Timeout; {N} messages exact");
    Ok(())
}

fn stopped_mutex_holder_is_not_dead() -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let m: &ShmMutex<u64> = region.alloc(ShmMutex::new(0)).ctx("alloc")?;
    let held: &AtomicU32 = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let release: &AtomicU32 = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let mut child = spawn("holder", (), |()| {
        let mut g = m.lock().map_err(|e| format!("lock: {e:?}"))?;
        *g += 1;
        held.store(1, Ordering::SeqCst);
        let t = Instant::now();
        while release.load(Ordering::SeqCst) == 0 {
            ensure!(t.elapsed() < Duration::from_secs(30), "never released");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(g);
        Ok(())
    })?;
    let pid = child.id();
    ensure!(
        wait_until(LONG, || held.load(Ordering::SeqCst) == 1),
        "holder never locked"
    );
    child.signal(libc::SIGSTOP).ctx("SIGSTOP")?;
    wait_stopped(pid)?;
    let t = Instant::now();
    let r = m.lock_timeout(STOP_FOR);
    let waited = t.elapsed();
    ensure!(
        matches!(r, Err(TryLockError::TimedOut)),
        "lock_timeout against a stopped holder returned {r:?}, not TimedOut"
    );
    drop(r);
    ensure!(waited >= STOP_FOR, "TimedOut after {waited:?}");
    child.signal(libc::SIGCONT).ctx("SIGCONT")?;
    release.store(1, Ordering::SeqCst);
    match m.lock_timeout(LONG) {
        Ok(g) => ensure!(*g == 1, "value {} after the holder's increment", *g),
        Err(e) => return Err(format!("after SIGCONT and release: {e:?}")),
    }
    child.expect_success("the stopped holder", LONG)?;
    bump(&stats().stop_checks);
    println!("    stopped mutex holder: lock_timeout waited {waited:?} -> TimedOut, then Ok");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. A peer scribbles over shared memory (ring header, indices, records; a mutex's lock word).
// The survivor runs in a forked child so a crash shows as a failed status; it must never
// panic, hang (every operation has a timeout; its duration is checked) or return a message
// longer than the ring's maximum.

const SCRIBBLE_CHANNEL_ITERS: u64 = 160;
const SCRIBBLE_MUTEX_ITERS: u64 = 80;

fn scribbled_memory() -> Outcome {
    let seed = config().seed ^ 0x5c21bb1e;
    let mut x = spawn("survivor", (), move |()| scribble_survivor(seed))?;
    let st = x.status(Duration::from_secs(100))?;
    ensure!(
        st.success(),
        "the survivor did not survive the scribbles (seed {seed:#x}): {st:?}{}",
        match st.signal() {
            Some(sig) => format!(" = killed by signal {sig} (a crash)"),
            None => " (see stderr)".into(),
        }
    );
    Ok(())
}

fn scribble_survivor(seed: u64) -> Outcome {
    let mut rng = Rng::new(seed);
    for it in 0..SCRIBBLE_CHANNEL_ITERS {
        let iseed = rng.next_u64();
        channel_scribble_iter(&mut Rng::new(iseed))
            .map_err(|e| format!("channel iteration {it} (seed {iseed:#x}): {e}"))?;
        bump(&stats().scribble_iters);
    }
    for it in 0..SCRIBBLE_MUTEX_ITERS {
        let iseed = rng.next_u64();
        mutex_scribble_iter(&mut Rng::new(iseed))
            .map_err(|e| format!("mutex iteration {it} (seed {iseed:#x}): {e}"))?;
        bump(&stats().scribble_iters);
    }
    Ok(())
}

/// Where a scribbler may write: the ring header (with its padding) and the data area.
#[derive(Clone, Copy)]
struct RingSpan {
    hdr: usize,
    hdr_len: usize,
    data: usize,
    cap: usize,
}

impl RingSpan {
    fn of((hdr, data, cap): (*mut u8, *mut u8, usize)) -> RingSpan {
        RingSpan {
            hdr: hdr as usize,
            hdr_len: data as usize - hdr as usize,
            data: data as usize,
            cap,
        }
    }

    /// One random write: a byte, a whole word, or a plausible record header, anywhere in the
    /// header or the data area.
    fn scribble(&self, r: &mut Rng) {
        let (base, len) = if r.below(3) == 0 {
            (self.hdr, self.hdr_len)
        } else {
            (self.data, self.cap)
        };
        match r.below(4) {
            0 => {
                let at = base + r.below(len as u64) as usize;
                let v = r.next_u64() as u8;
                // SAFETY: inside the ring's live mapping (shared with the survivor).
                unsafe {
                    (*(at as *const std::sync::atomic::AtomicU8)).store(v, Ordering::Relaxed)
                };
            }
            k => {
                let at = base + (r.below(len as u64 / 8) as usize) * 8;
                let v = match k {
                    1 => r.next_u64(),
                    2 => (r.below(4) << 32) | r.below(2 * self.cap as u64 + 64),
                    _ => [0, u64::MAX, 1 << 32, 2 << 32 | 0xffff_ffff, 8][r.below(5) as usize],
                };
                // SAFETY: 8-aligned (header and data area are 128-aligned), inside the mapping.
                unsafe { (*(at as *const AtomicU64)).store(v, Ordering::Relaxed) };
            }
        }
    }
}

/// How the scribbler leaves.
fn scribbler_exit(r: &mut Rng) -> ! {
    match r.below(3) {
        0 => {
            // Dies abruptly, without closing its end.
            // SAFETY: raise has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
            // SAFETY: unreachable in practice; leave without destructors.
            unsafe { libc::_exit(0) }
        }
        1 => std::thread::sleep(Duration::from_millis(r.below(20))),
        _ => {}
    }
    // SAFETY: leaves without dropping the end (a dead-looking peer without SIGKILL).
    unsafe { libc::_exit(0) }
}

fn check_duration(t: Instant, allowed: Duration, what: &str) -> Outcome {
    let took = t.elapsed();
    ensure!(
        took <= allowed + Duration::from_secs(1),
        "hang: {what} took {took:?} (allowed {allowed:?})"
    );
    Ok(())
}

fn channel_scribble_iter(rng: &mut Rng) -> Outcome {
    let s = stats();
    let survivor_reads = rng.below(3) != 0;
    let typed = rng.below(3) == 0;
    let wseed = rng.next_u64();
    let steps = 1 + rng.below(40);
    if typed {
        let (tx, rx) = forkipc::channel::<[u64; 8]>(1 + rng.below(64) as usize).ctx("channel")?;
        let span = RingSpan::of(forkipc::__testing::typed_ring_memory(&rx));
        if survivor_reads {
            let mut w = spawn("typed scribbler", tx, move |tx| {
                let mut r = Rng::new(wseed);
                for seq in 0..steps {
                    if r.below(2) == 0 {
                        let _ = tx.try_send([seq; 8]);
                    } else {
                        span.scribble(&mut r);
                    }
                    if r.below(8) == 0 {
                        std::thread::sleep(Duration::from_micros(r.below(500)));
                    }
                }
                scribbler_exit(&mut r)
            })?;
            let mut quiet = 0;
            for _ in 0..120 {
                bump(&s.scribble_ops);
                let d = Duration::from_micros(rng.below(2000));
                let t = Instant::now();
                let r = if rng.below(2) == 0 {
                    rx.recv_timeout(d)
                } else {
                    rx.try_recv().map_err(|e| match e {
                        TryRecvError::Empty => RecvTimeoutError::Timeout,
                        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                    })
                };
                check_duration(t, d, "typed recv")?;
                match r {
                    Ok(_) => {
                        bump(&s.scribble_values);
                        quiet = 0;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        bump(&s.scribble_timeouts);
                        quiet += 1;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        bump(&s.scribble_disconnected);
                        quiet += 4;
                    }
                }
                if quiet >= 12 {
                    break;
                }
            }
            let _ = w.status(LONG)?;
        } else {
            let mut w = spawn("typed scribbling reader", rx, move |rx| {
                let mut r = Rng::new(wseed);
                for _ in 0..steps {
                    if r.below(2) == 0 {
                        let _ = rx.try_recv();
                    } else {
                        span.scribble(&mut r);
                    }
                    if r.below(8) == 0 {
                        std::thread::sleep(Duration::from_micros(r.below(500)));
                    }
                }
                scribbler_exit(&mut r)
            })?;
            let mut quiet = 0;
            for seq in 0..120u64 {
                bump(&s.scribble_ops);
                let d = Duration::from_micros(rng.below(2000));
                let t = Instant::now();
                match tx.send_timeout([seq; 8], d) {
                    Ok(()) => {
                        bump(&s.scribble_values);
                        quiet = 0;
                    }
                    Err(SendTimeoutError::Timeout(_)) => {
                        bump(&s.scribble_timeouts);
                        quiet += 1;
                    }
                    Err(SendTimeoutError::Disconnected(_)) => {
                        bump(&s.scribble_disconnected);
                        quiet += 4;
                    }
                }
                check_duration(t, d, "typed send_timeout")?;
                if quiet >= 12 {
                    break;
                }
            }
            let _ = w.status(LONG)?;
        }
        return Ok(());
    }
    let (tx, mut rx) = forkipc::byte_channel(64 << rng.below(7)).ctx("byte_channel")?;
    let max = rx.max_message_len();
    let span = RingSpan::of(forkipc::__testing::ring_memory(&rx));
    if survivor_reads {
        let mut w = spawn("byte scribbler", tx, move |tx| {
            let mut r = Rng::new(wseed);
            let mut buf = vec![0u8; max];
            for _ in 0..steps {
                if r.below(2) == 0 {
                    let len = r.below(max as u64 + 1) as usize;
                    r.fill(&mut buf[..len]);
                    let _ = tx.try_send(&buf[..len]);
                } else {
                    span.scribble(&mut r);
                }
                if r.below(8) == 0 {
                    std::thread::sleep(Duration::from_micros(r.below(500)));
                }
            }
            scribbler_exit(&mut r)
        })?;
        let mut quiet = 0;
        let mut buf = Vec::new();
        for _ in 0..120 {
            bump(&s.scribble_ops);
            let d = Duration::from_micros(rng.below(2000));
            let t = Instant::now();
            let r: Result<usize, RecvTimeoutError> = match rng.below(3) {
                0 => rx.recv_timeout(d).map(|v| v.len()),
                1 => rx.try_recv().map(|v| v.len()).map_err(|e| match e {
                    TryRecvError::Empty => RecvTimeoutError::Timeout,
                    TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                }),
                _ => match rx.try_recv_ref() {
                    Ok(m) => {
                        // Touch every byte: the lent slice must lie inside the mapping.
                        std::hint::black_box(m.iter().fold(0u8, |a, &b| a.wrapping_add(b)));
                        Ok(m.len())
                    }
                    Err(TryRecvError::Empty) => Err(RecvTimeoutError::Timeout),
                    Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                },
            };
            check_duration(t, d, "byte recv")?;
            match r {
                Ok(n) => {
                    ensure!(
                        n <= max,
                        "a {n}-byte message from a ring whose max is {max}"
                    );
                    bump(&s.scribble_values);
                    quiet = 0;
                }
                Err(RecvTimeoutError::Timeout) => {
                    bump(&s.scribble_timeouts);
                    quiet += 1;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bump(&s.scribble_disconnected);
                    quiet += 4;
                }
            }
            if quiet >= 12 {
                break;
            }
        }
        let _ = w.status(LONG)?;
        // The scribbler is gone for good: a blocking receive must now return, since the end
        // reports why it is disconnected (or a message is ready).
        if rx.disconnect_reason().is_some() {
            let t = Instant::now();
            if let Ok(n) = rx.recv_into(&mut buf) {
                ensure!(n <= max && buf.len() == n, "recv_into gave {n} > max {max}");
            }
            check_duration(t, Duration::ZERO, "recv_into on a disconnected end")?;
        }
    } else {
        let mut w = spawn("byte scribbling reader", rx, move |rx| {
            let mut r = Rng::new(wseed);
            for _ in 0..steps {
                if r.below(2) == 0 {
                    let _ = rx.try_recv();
                } else {
                    span.scribble(&mut r);
                }
                if r.below(8) == 0 {
                    std::thread::sleep(Duration::from_micros(r.below(500)));
                }
            }
            scribbler_exit(&mut r)
        })?;
        let mut quiet = 0;
        let mut buf = vec![0u8; max + 16];
        for _ in 0..120 {
            bump(&s.scribble_ops);
            let d = Duration::from_micros(rng.below(2000));
            let len = rng.below(max as u64 + 17) as usize;
            rng.fill(&mut buf[..len]);
            let t = Instant::now();
            let r = if rng.below(2) == 0 {
                tx.send_timeout(&buf[..len], d)
                    .map_err(|e| (e.is_disconnected(), e.is_refused()))
            } else {
                tx.try_send(&buf[..len])
                    .map_err(|e| (e.is_disconnected(), e.is_refused()))
            };
            check_duration(t, d, "byte send")?;
            match r {
                Ok(()) => {
                    ensure!(len <= max, "a {len}-byte send accepted (max {max})");
                    bump(&s.scribble_values);
                    quiet = 0;
                }
                Err((true, _)) => {
                    bump(&s.scribble_disconnected);
                    quiet += 4;
                }
                Err((_, true)) => {
                    ensure!(len > max, "TooLarge for {len} <= max {max}");
                }
                Err(_) => {
                    bump(&s.scribble_timeouts);
                    quiet += 1;
                }
            }
            if quiet >= 12 {
                break;
            }
        }
        let _ = w.status(LONG)?;
    }
    Ok(())
}

/// Interesting lock-word values: free, owner-died, a foreign TID, not-recoverable, waiters.
fn lock_word_value(r: &mut Rng, my_tid: u32) -> u32 {
    match r.below(8) {
        0 => 0,
        1 => 0x4000_0000,
        2 => 0x3fff_ffff,
        3 => my_tid,
        4 => 0x8000_0000 | (r.next_u64() as u32 & 0x3fff_ffff),
        5 => 1 + r.below(4_000_000) as u32,
        _ => r.next_u64() as u32,
    }
}

fn mutex_scribble_iter(rng: &mut Rng) -> Outcome {
    let s = stats();
    let region = AnonRegion::new(4096).ctx("region")?;
    let m: &ShmMutex<[u64; 2]> = region.alloc(ShmMutex::new([0; 2])).ctx("alloc")?;
    let word = m as *const ShmMutex<[u64; 2]> as usize;
    let wseed = rng.next_u64();
    let steps = 1 + rng.below(30);
    // SAFETY: gettid has no preconditions.
    let my_tid = unsafe { libc::gettid() } as u32;
    let mut w = spawn("lock-word scribbler", (), move |()| {
        let mut r = Rng::new(wseed);
        for _ in 0..steps {
            std::thread::sleep(Duration::from_micros(r.below(300)));
            let v = lock_word_value(&mut r, my_tid);
            // SAFETY: the mutex's lock word (its first 4 bytes), in the shared region.
            unsafe { (*(word as *const AtomicU32)).store(v, Ordering::Relaxed) };
        }
        Ok(())
    })?;
    for _ in 0..60 {
        bump(&s.scribble_ops);
        let d = Duration::from_micros(rng.below(2000));
        let t = Instant::now();
        let r = if rng.below(4) == 0 {
            m.try_lock()
        } else {
            m.lock_timeout(d)
        };
        check_duration(t, d, "lock_timeout")?;
        let k = match r {
            Ok(mut g) => {
                g[0] += 1;
                spin_for(Duration::from_micros(rng.below(100)));
                0
            }
            Err(TryLockError::WouldBlock | TryLockError::TimedOut) => 1,
            Err(TryLockError::OwnerDied(mut g)) => {
                if rng.below(2) == 0 {
                    g.mark_consistent();
                }
                2
            }
            Err(TryLockError::NotRecoverable) => 3,
        };
        bump(&s.scribble_lock_outcomes[k]);
    }
    let _ = w.status(LONG)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. The fuzz body over a deterministic corpus (the same function the cargo-fuzz target runs).

const FUZZ_INPUTS: u64 = 20_000;

fn fuzz_corpus_deterministic() -> Outcome {
    let seed = config().seed ^ 0xf022;
    let mut rng = Rng::new(seed);
    let s = stats();
    let mut input = Vec::new();
    for i in 0..FUZZ_INPUTS {
        let iseed = rng.next_u64();
        let mut r = Rng::new(iseed);
        input.clear();
        input.resize(r.below(1500) as usize, 0);
        r.fill(&mut input);
        // Bias a third of the inputs toward plausible records and small scripts.
        if r.below(3) == 0 && input.len() > 5 {
            input[3] = (input[3] & !3) | 2;
        }
        let res = std::panic::catch_unwind(|| fuzz_body::ring_consumer(&input));
        match res {
            Ok(t) => {
                s.fuzz_messages.fetch_add(t.messages, Ordering::Relaxed);
                s.fuzz_corrupted_runs
                    .fetch_add(t.corrupted_runs, Ordering::Relaxed);
                bump(&s.fuzz_inputs);
            }
            Err(_) => {
                return Err(format!(
                    "input {i} (seed {iseed:#x}, {} bytes, starts {:02x?}) panicked",
                    input.len(),
                    &input[..input.len().min(16)]
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Found by the scribble campaign (src/mutex.rs, `ShmMutex::unlock`): a peer overwrites a mutex's
// lock word while the survivor holds the lock. The survivor's unlock sees a word that does not
// name it and returns early *without unlinking* the mutex's entry from its thread's robust
// list. Later list operations then corrupt the list:
// * locking the same mutex again links the entry while it is still the list's first entry
//   (`entry.next = entry`), and the following unlock leaves `head -> entry -> NULL`: every
//   older entry is cut off, including the process's presence slot, so when the survivor dies
//   the kernel never marks its presence dead and a channel peer blocked in `recv` waits forever;
// * unmapping the region and locking any other mutex makes `link()` write through the stale
//   entry into the unmapped page: SIGSEGV (and that death is not reported either: the kernel's
//   exit-time walk faults on the stale entry first).

/// The survivor V holds `m` (in a region made here, before the fork, so the page is shared);
/// this process, playing the buggy peer, overwrites the lock word with `scribble`; V unlocks,
/// then `after_unlock` runs in V; V reports ready over a channel and waits to be killed. Then
/// V is SIGKILLed and the channel must report `Disconnected(PeerDied)` promptly.
fn scribbled_lock_word_then_death(scribble: u32, after_unlock: fn(&ShmMutex<u64>)) -> Outcome {
    let region = AnonRegion::new(4096).ctx("region")?;
    let m: &ShmMutex<u64> = region.alloc(ShmMutex::new(0)).ctx("alloc")?;
    let held: &AtomicU32 = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let scribbled: &AtomicU32 = region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    let (tx, rx) = forkipc::channel::<u64>(4).ctx("channel")?;
    let mut v = spawn("survivor V", tx, move |tx| {
        let g = m.lock().map_err(|e| format!("lock: {e:?}"))?;
        held.store(1, Ordering::SeqCst);
        ensure!(
            wait_until(LONG, || scribbled.load(Ordering::SeqCst) == 1),
            "never scribbled"
        );
        drop(g);
        after_unlock(m);
        tx.send(1).ctx("ready")?;
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })?;
    ensure!(
        wait_until(LONG, || held.load(Ordering::SeqCst) == 1),
        "V never locked"
    );
    // The buggy peer: one store over the lock word (the mutex's first 4 bytes).
    let word = m as *const ShmMutex<u64> as *const AtomicU32;
    // SAFETY: `m` lives in our shared region; its first 4 bytes are the lock word.
    unsafe { (*word).store(scribble, Ordering::SeqCst) };
    scribbled.store(1, Ordering::SeqCst);
    // Wait for "ready", watching V itself too: if V crashes, its peer may never be told.
    let t = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(1) => break,
            Err(RecvTimeoutError::Timeout) if t.elapsed() < LONG => {
                if let Some(st) = v.try_wait().ctx("try_wait")? {
                    // Give the peer the promised 100 ms (and more) to see the death.
                    let r = rx.recv_timeout(DETECT_BOUND);
                    return Err(format!(
                        "V died before getting ready: {st:?}{}; its peer's recv_timeout then returned {r:?} (disconnect_reason() {:?})",
                        match st.signal() {
                            Some(libc::SIGSEGV) => " = SIGSEGV (crashed)",
                            _ => "",
                        },
                        rx.disconnect_reason()
                    ));
                }
            }
            other => {
                let st = v.status(LONG)?;
                return Err(format!(
                    "V did not get ready ({other:?}); V ended with {st:?}"
                ));
            }
        }
    }
    v.kill().ctx("kill V")?;
    v.expect_killed("V", LONG)?;
    let t = Instant::now();
    let r = rx.recv_timeout(DETECT_BOUND);
    ensure!(
        r == Err(RecvTimeoutError::Disconnected)
            && rx.disconnect_reason() == Some(DisconnectReason::PeerDied),
        "V was SIGKILLed, but its peer's recv_timeout returned {r:?} after {:?} (disconnect_reason() {:?}): V's death is not reported",
        t.elapsed(),
        rx.disconnect_reason()
    );
    Ok(())
}

fn scribbled_lock_word_while_held_then_relock_keeps_death_detected() -> Outcome {
    scribbled_lock_word_then_death(0, |m| {
        // The word is free now (the peer wrote 0): V locks and unlocks the same mutex again.
        drop(m.lock_timeout(Duration::from_millis(10)));
    })
}

fn scribbled_lock_word_while_held_then_unmap_does_not_crash() -> Outcome {
    scribbled_lock_word_then_death(0, |m| {
        // V is done with the region: unmap its copy (what dropping V's AnonRegion does), then
        // lock a mutex somewhere else.
        let page = (m as *const ShmMutex<u64> as usize) & !4095;
        // SAFETY: the region is one page in V's address space, and V no longer uses it (the
        // closure does not touch `m` again).
        unsafe { libc::munmap(page as *mut libc::c_void, 4096) };
        let other = AnonRegion::new(1 << 20).expect("region");
        let mb = other.alloc(ShmMutex::new(0u64)).expect("alloc");
        drop(mb.lock());
    })
}

// ---------------------------------------------------------------------------------------------
// Found by the parent-side case's early kills (src/process.rs, `fork_unchecked`): a process
// killed inside `forkipc::fork`, after the ends it hands over were pointed at the presence
// slot reserved for the child but before the child exists (a SIGKILL during the fork system
// call cancels the child), leaves that slot reserved for good, so the peers of those ends never
// learn that their owner died. S makes its fork slow (64 MiB of touched memory: page tables to
// copy) and is killed at a random moment around it; whenever no child came of the fork, the
// peer of the end S was handing over must see `Disconnected(PeerDied)`. So must it when a
// child came of the fork but S died before the child adopted the end (the child then leaves at
// once with `PARENT_DIED_IN_FORK`, without running its closure).

const FORK_ATTEMPTS: u64 = 24;

fn killed_inside_fork_is_reported_dead() -> Outcome {
    // A child that did come of the fork is ours to reap once S is gone.
    set_subreaper()?;
    let region = AnonRegion::new(4096).ctx("region")?;
    let wt: &Watch = region.alloc(Watch::default()).ctx("alloc")?;
    let mut rng = Rng::new(config().seed ^ 0xf02c);
    let (mut no_child, mut unstarted, mut child) = (0, 0, 0);
    for attempt in 0..FORK_ATTEMPTS {
        wt.holder_ready.store(0, Ordering::SeqCst);
        wt.waiter_pid.store(0, Ordering::SeqCst);
        let (tx, rx) = forkipc::channel::<u64>(4).ctx("channel")?;
        let mut s = spawn("forker S", tx, move |tx| {
            let ballast = vec![1u8; 64 << 20];
            std::hint::black_box(&ballast);
            wt.holder_ready.store(1, Ordering::SeqCst);
            forkipc::fork(tx, move |_tx| {
                wt.waiter_pid.store(u64::from(getpid()), Ordering::SeqCst);
                park()
            })
            .ctx("fork")?;
            park()
        })?;
        ensure!(
            wait_until(LONG, || wt.holder_ready.load(Ordering::SeqCst) == 1),
            "S never got to its fork"
        );
        let d = Duration::from_micros(rng.below(3000));
        spin_for(d);
        s.kill().ctx("kill S")?;
        s.expect_killed("S", LONG)?;
        if has_children()? {
            // The child names itself first thing, unless S died before it could take over the
            // end: then it leaves at once (PARENT_DIED_IN_FORK), and the end is S's, dead.
            ensure!(
                wait_until(LONG, || wt.waiter_pid.load(Ordering::SeqCst) != 0
                    || exited_child().is_some()),
                "S's child neither started nor exited within {LONG:?}"
            );
            let w = wt.waiter_pid.load(Ordering::SeqCst);
            if w != 0 {
                drop(Stray(Some(w as u32)));
                child += 1;
                continue;
            }
            let c = exited_child().ctx("the exited child")?;
            let st = support::wait_pid(c as libc::pid_t, LONG)?;
            ensure!(
                st.code() == Some(PARENT_DIED_IN_FORK),
                "S's child {c} ended with {st:?} without ever starting; expected exit status \
                 {PARENT_DIED_IN_FORK} (its parent died inside fork)"
            );
            unstarted += 1;
        } else {
            no_child += 1;
        }
        let r = rx.recv_timeout(DETECT_BOUND);
        ensure!(
            r == Err(RecvTimeoutError::Disconnected)
                && rx.disconnect_reason() == Some(DisconnectReason::PeerDied),
            "attempt {attempt}: S was killed {d:?} after reaching forkipc::fork and no child took \
             over the end S was handing over, but that end never reported S's death: \
             recv_timeout({DETECT_BOUND:?}) returned {r:?}, disconnect_reason() {:?} (the \
             presence slot reserved for the child stays reserved?)",
            rx.disconnect_reason()
        );
    }
    reap_strays();
    println!(
        "    {no_child} kills left no child, {unstarted} a child that left unstarted (each \
         reported to the peer), {child} came after the fork"
    );
    Ok(())
}
