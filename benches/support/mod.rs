//! Helpers shared by forkipc's benchmarks: CPU pinning, forking a pinned child that can never
//! outlive or hang the bench, a shared anonymous mapping, a gate that parks a child between
//! repetitions, repetition counts, interleaved measurement and the result table.
//!
//! Every measurement is a [`Session`]: a forked peer serving `iters(..)` operations per
//! repetition, parked on a [`Gate`] in between, and a closure that times one repetition:
//!
//! ```text
//! let n = iters(FULL_COUNT);                 // operations per repetition (÷10 in quick mode)
//! let gate = Gate::new();
//! let child = fork_pinned(CHILD_CPU, || {
//!     for r in 0..rounds() { gate.enter(r); /* serve n operations */ }
//! });
//! Session::new(Row::new("name", Unit::Nanos).vs(baselines::SPIN_RTT),
//!     move || { gate.open_next(); ns_per_op(time(|| { /* n operations */ }), n) },
//!     move || reap(child))
//! ```
//!
//! [`interleave`] runs the sessions of a group round by round, one repetition of each per
//! round, so that every figure of a group, baseline or forkipc, is sampled over the same
//! stretch of time: on a shared virtual machine the cost of a cache-line transfer between the
//! two CPUs and of a wake-up changes by several times from one minute to the next (vCPUs move
//! between host cores; host halt-polling adapts), and only figures sampled together can be
//! compared.
//!
//! The bench binary is single-threaded, so forking it is safe, and the child may allocate, lock
//! and print like any process.

pub mod probe;

use std::cell::Cell;
use std::fmt::Write as _;
use std::hint::spin_loop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, alarm};

/// The CPU the bench process (the parent) runs on.
pub const PARENT_CPU: usize = 0;
/// The CPU forked children run on, unless a measurement asks for another one.
pub const CHILD_CPU: usize = 1;

/// Repetitions whose median is reported.
const REPS: usize = 7;
/// Repetitions run first and discarded: page faults, cache and branch-predictor warm-up.
const WARMUP_REPS: usize = 1;
/// How long [`reap`] waits for a child before killing it.
const REAP_DEADLINE: Duration = Duration::from_secs(30);
/// Longest the bench may go without starting a repetition (or forking, or reaping) before it
/// aborts: catches a parent spinning on, or blocked reading from, a child that died.
const MEASUREMENT_DEADLINE_SECS: u32 = 60;

/// Whether `FORKIPC_BENCH_QUICK=1` asks for a smoke run (about 10 times fewer iterations).
pub fn quick() -> bool {
    std::env::var_os("FORKIPC_BENCH_QUICK").is_some_and(|v| v == "1")
}

/// Whether `FORKIPC_BENCH_VERBOSE=1` asks for every repetition's figure (warm-up first) to be
/// printed before the table: shows how much a figure drifted during the run.
pub fn verbose() -> bool {
    std::env::var_os("FORKIPC_BENCH_VERBOSE").is_some_and(|v| v == "1")
}

/// Operations per repetition: `full` normally, a tenth of it (at least 1) in quick mode.
/// Choose `full` so that one repetition takes 50–200 ms on the reference machine.
pub fn iters(full: u64) -> u64 {
    if quick() { (full / 10).max(1) } else { full }
}

/// How many rounds [`interleave`] runs, warm-up included: a forked peer serves `rounds()`
/// repetitions of `iters(..)` operations, entering its [`Gate`] before each.
pub fn rounds() -> usize {
    WARMUP_REPS + REPS
}

/// One measurement: the row it fills, a closure that times one repetition (its forked peer,
/// if any, already running) and returns the figure, and a closure that ends it (reaps the
/// peer).
pub struct Session {
    row: Row,
    rep: Box<dyn FnMut() -> f64>,
    finish: Box<dyn FnOnce()>,
}

impl Session {
    /// `row`'s value is ignored: [`interleave`] fills it in.
    pub fn new(
        row: Row,
        rep: impl FnMut() -> f64 + 'static,
        finish: impl FnOnce() + 'static,
    ) -> Session {
        Session {
            row,
            rep: Box::new(rep),
            finish: Box::new(finish),
        }
    }
}

/// Runs [`rounds()`] rounds; round `k` runs one repetition of every session, starting with
/// session `k mod len` (so that no session always follows the same one). Then finishes every
/// session, and returns their rows, each with the median of its figures, warm-up round
/// excluded. The watchdog is re-armed before each repetition: one repetition taking a minute
/// means a dead peer.
pub fn interleave(mut sessions: Vec<Session>) -> Vec<Row> {
    let k = sessions.len();
    let mut samples = vec![Vec::with_capacity(rounds()); k];
    let mut readings = vec![Vec::with_capacity(rounds()); k];
    for round in 0..rounds() {
        for i in (0..k).map(|i| (i + round) % k) {
            arm_watchdog();
            let before = probe::read();
            samples[i].push((sessions[i].rep)());
            readings[i].push([before, probe::read()]);
        }
    }
    alarm::cancel();
    sessions
        .into_iter()
        .zip(&mut samples)
        .zip(readings)
        .map(|((session, samples), readings)| {
            (session.finish)();
            if verbose() {
                let all: Vec<String> = samples
                    .iter()
                    .map(|v| session.row.unit.format(*v))
                    .collect();
                println!("{}: {}", session.row.name, all.join(", "));
                let probes: Vec<String> = readings
                    .iter()
                    .map(|[a, b]| format!("{:.0}/{:.0} ns", a.rtt_ns, b.rtt_ns))
                    .collect();
                println!("  probe before/after: {}", probes.join(", "));
            }
            let kept = samples[WARMUP_REPS..].to_vec();
            Row {
                value: median(&mut samples[WARMUP_REPS..]),
                samples: kept,
                readings: readings[WARMUP_REPS..].to_vec(),
                ..session.row
            }
        })
        .collect()
}

/// The median of `samples` (the mean of the middle two for an even count). Panics if empty or
/// if a sample is NaN.
pub fn median(samples: &mut [f64]) -> f64 {
    assert!(!samples.is_empty(), "median of no samples");
    samples.sort_by(|a, b| a.partial_cmp(b).expect("NaN sample"));
    let mid = samples.len() / 2;
    if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2.0
    }
}

/// Nanoseconds per operation.
pub fn ns_per_op(elapsed: Duration, ops: u64) -> f64 {
    elapsed.as_nanos() as f64 / ops as f64
}

/// Operations (messages, bytes) per second.
pub fn per_sec(elapsed: Duration, ops: u64) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

/// Times one call of `f`.
pub fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// Pins the calling process (its only thread) to `cpu`. Panics if the CPU does not exist.
pub fn pin_to_cpu(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).unwrap_or_else(|e| panic!("CPU {cpu}: {e}"));
    sched_setaffinity(Pid::from_raw(0), &set)
        .unwrap_or_else(|e| panic!("sched_setaffinity to CPU {cpu}: {e} (the bench needs 2 CPUs)"));
}

/// Forks a child pinned to `child_cpu` that runs `f` and `_exit`s (status 0, or 101 if `f`
/// panicked); the parent pins itself to [`PARENT_CPU`] and gets the child's pid back.
///
/// The child is killed if the parent dies, and the parent arms a watchdog that aborts the bench
/// unless the next repetition starts (see [`interleave`]) or [`reap`] is reached within a
/// minute, so a child that crashed cannot hang the bench.
/// Call only while the process is single-threaded (the bench's `main` is).
pub fn fork_pinned(child_cpu: usize, f: impl FnOnce()) -> Pid {
    pin_to_cpu(PARENT_CPU);
    arm_watchdog();
    let parent = std::process::id();
    // SAFETY: the bench process is single-threaded, so the child starts with a consistent copy
    // of every lock and allocator state and may run arbitrary code; it never returns from this
    // function (it `_exit`s below).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        panic!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).expect("PR_SET_PDEATHSIG");
            // The parent may have died before the line above took effect.
            if std::os::unix::process::parent_id() != parent {
                return;
            }
            pin_to_cpu(child_cpu);
            f();
        }))
        .is_ok();
        // SAFETY: `_exit` ends the child without running the parent's atexit handlers or
        // flushing its copy of the parent's stdio buffers; nothing is borrowed past this point.
        unsafe { libc::_exit(if ok { 0 } else { 101 }) };
    }
    Pid::from_raw(pid)
}

/// Waits for a child from [`fork_pinned`] to exit, disarming the watchdog first. A child still
/// running after 30 s is killed with SIGKILL. Panics unless the child exited with status 0.
pub fn reap(pid: Pid) {
    alarm::cancel();
    let deadline = Instant::now() + REAP_DEADLINE;
    let status = loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(WaitStatus::StillAlive) => {
                // The child may exit between the two calls; then kill fails harmlessly.
                let _ = signal::kill(pid, Signal::SIGKILL);
                let status = waitpid(pid, None).expect("waitpid");
                panic!("child {pid} still running after {REAP_DEADLINE:?}: killed ({status:?})");
            }
            Ok(status) => break status,
            Err(e) => panic!("waitpid({pid}): {e}"),
        }
    };
    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "child {pid} failed: {status:?}"
    );
}

/// As [`fork_pinned`], through [`forkipc::fork`]: hands `ends` (channel endpoints) to a child
/// pinned to `child_cpu` that runs `f` on them. The child exits with status 0 if `f` returns
/// `Ok`, 1 (after printing the error) if it returns `Err`, 101 if it panics; it dies with the
/// parent, and the same one-minute watchdog guards the parent until [`reap_child`].
pub fn fork_ipc<E: forkipc::Transfer>(
    child_cpu: usize,
    ends: E,
    f: impl FnOnce(E) -> Result<(), String>,
) -> forkipc::Child {
    pin_to_cpu(PARENT_CPU);
    arm_watchdog();
    let parent = std::process::id();
    let child = forkipc::fork(ends, move |ends| {
        if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
            eprintln!("forkipc bench child: PR_SET_PDEATHSIG: {e}");
            return 1;
        }
        // The parent may have died before the line above took effect.
        if std::os::unix::process::parent_id() != parent {
            return 1;
        }
        pin_to_cpu(child_cpu);
        match f(ends) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("forkipc bench child: {e}");
                1
            }
        }
    });
    child.unwrap_or_else(|e| panic!("forkipc::fork: {e}"))
}

/// As [`reap`], for a child from [`fork_ipc`]: disarms the watchdog, waits up to 30 s (then
/// kills), and panics unless the child exited with status 0.
pub fn reap_child(mut child: forkipc::Child) {
    alarm::cancel();
    let pid = child.id();
    match child.wait_timeout(REAP_DEADLINE) {
        Ok(Some(status)) => assert!(status.success(), "child {pid} failed: {status}"),
        Ok(None) => {
            let _ = child.kill();
            let status = child.wait();
            panic!("child {pid} still running after {REAP_DEADLINE:?}: killed ({status:?})");
        }
        Err(e) => panic!("waiting for child {pid}: {e}"),
    }
}

/// Aborts the bench with a message if the current measurement outlives its deadline.
fn arm_watchdog() {
    extern "C" fn on_alarm(_: libc::c_int) {
        const MSG: &[u8] = b"\nforkipc bench: a measurement exceeded its deadline \
            (did the forked child die?); aborting\n";
        // SAFETY: `write` and `_exit` are async-signal-safe; MSG is a static byte string.
        unsafe {
            libc::write(libc::STDERR_FILENO, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(2);
        }
    }
    let action = SigAction::new(
        SigHandler::Handler(on_alarm),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only calls async-signal-safe functions, and no other code in the
    // bench installs a SIGALRM handler it could replace.
    unsafe { signal::sigaction(Signal::SIGALRM, &action) }.expect("sigaction(SIGALRM)");
    alarm::set(MEASUREMENT_DEADLINE_SECS);
}

/// Cache-line distance that keeps two hot words from sharing a line or an adjacent-line
/// prefetch pair (what `crossbeam_utils::CachePadded` uses on x86-64).
pub const LINE: usize = 128;

/// Blocks until `word` is woken or no longer holds `expected` (returns at once if it does not).
/// Spurious returns are possible: callers re-check in a loop.
pub fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` is a live, aligned u32 for the whole call; FUTEX_WAIT without
    // FUTEX_PRIVATE_FLAG keys the wait on the shared page, so a waker in another process
    // finds it; a null timeout means no deadline; the extra arguments are ignored.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

/// Wakes one waiter on `word`, in any process that maps the same page.
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE only uses its address as a key.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

/// Parks a forked peer between repetitions: the peer sleeps (uses no CPU) until the parent
/// opens its next round, so the sessions of a group can take turns on the child CPU.
///
/// ```text
/// offset 0     opened: AtomicU32    rounds opened by the parent (futex word the peer sleeps on)
/// offset 128   entered: AtomicU32   rounds the peer has entered
/// ```
pub struct Gate {
    map: SharedMap,
    /// Parent side: rounds opened so far.
    opened: Cell<u32>,
}

impl Gate {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Gate {
        Gate {
            map: SharedMap::new(2 * LINE),
            opened: Cell::new(0),
        }
    }

    /// Peer: sleeps until the parent opens round `round` (counting from 0), then reports that
    /// it has entered it.
    pub fn enter(&self, round: usize) {
        let round = u32::try_from(round).expect("round count");
        let opened = self.map.atomic_u32(0);
        loop {
            // Acquire: pairs with the Release in `open_next` (nothing is published with it,
            // but it keeps the peer's round from starting early).
            let seen = opened.load(Ordering::Acquire);
            if seen > round {
                break;
            }
            futex_wait(opened, seen);
        }
        self.map
            .atomic_u32(LINE)
            .store(round + 1, Ordering::Release);
    }

    /// Parent: opens the next round and spins until the peer has entered it, so that the
    /// peer's wake-up is not part of the timed repetition.
    pub fn open_next(&self) {
        let round = self.opened.get() + 1;
        self.opened.set(round);
        let (opened, entered) = (self.map.atomic_u32(0), self.map.atomic_u32(LINE));
        opened.store(round, Ordering::Release);
        futex_wake(opened);
        // A dead peer never enters: the watchdog ends the bench.
        while entered.load(Ordering::Acquire) != round {
            spin_loop();
        }
    }
}

/// A `MAP_SHARED | MAP_ANONYMOUS` mapping, zero-filled, shared with children forked while it
/// lives; unmapped on drop.
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl SharedMap {
    /// Maps `len` bytes (rounded up to whole pages by the kernel), readable and writable.
    pub fn new(len: usize) -> SharedMap {
        assert!(len > 0, "empty mapping");
        // SAFETY: a fresh anonymous mapping at an address the kernel picks cannot alias any
        // existing Rust object.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            panic!("mmap of {len} bytes: {}", std::io::Error::last_os_error());
        }
        SharedMap {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
        }
    }

    /// Pointer to `len` bytes at `offset`, checked to lie inside the mapping. Plain reads and
    /// writes through it must be ordered against the other process by atomics.
    pub fn bytes(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "{len} bytes at {offset} outside a {}-byte mapping",
            self.len
        );
        // SAFETY: offset + len <= self.len (checked above), so the result stays in the mapping.
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// The `AtomicU64` at `offset` (8-aligned, inside the mapping).
    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        let p = self.bytes(offset, size_of::<AtomicU64>());
        assert!(
            p.cast::<AtomicU64>().is_aligned(),
            "misaligned AtomicU64 at {offset}"
        );
        // SAFETY: in bounds and aligned (checked above); all bit patterns, zero included, are
        // valid u64s; the mapping outlives the returned borrow of `self`, and every access to
        // these bytes, in this process or a forked one, goes through atomics.
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }

    /// The `AtomicU32` at `offset` (4-aligned, inside the mapping); usable as a futex word.
    pub fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        let p = self.bytes(offset, size_of::<AtomicU32>());
        assert!(
            p.cast::<AtomicU32>().is_aligned(),
            "misaligned AtomicU32 at {offset}"
        );
        // SAFETY: as in `atomic_u64`: in bounds, aligned, any bit pattern valid, outlived by the
        // mapping, accessed only atomically.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; every borrow handed out by
        // `atomic_*` ended with the borrow of `self`. A failure here would only leak.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// What a [`Row`]'s value measures. Values are stored in base SI units and scaled on printing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds per operation (a round trip, say): lower is better.
    Nanos,
    /// Messages per second, printed as Mmsg/s: higher is better.
    MsgsPerSec,
    /// Bytes per second, printed as GB/s (10^9 bytes): higher is better.
    BytesPerSec,
}

impl Unit {
    fn format(self, value: f64) -> String {
        match self {
            Unit::Nanos if value < 1e3 => format!("{value:.0} ns"),
            Unit::Nanos if value < 1e6 => format!("{:.2} µs", value / 1e3),
            Unit::Nanos => format!("{:.2} ms", value / 1e6),
            Unit::MsgsPerSec => format!("{:.2} Mmsg/s", value / 1e6),
            Unit::BytesPerSec => format!("{:.2} GB/s", value / 1e9),
        }
    }
}

/// One line of the result table: a measured figure and the baselines (other rows of the same
/// run, by name) it is shown as a ratio of. A ratio is always `value / baseline value`: below 1
/// is better for [`Unit::Nanos`], above 1 is better for throughputs.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: Unit,
    /// Names of the rows this row's value is divided by in the ratio column.
    pub ratio_to: Vec<&'static str>,
    /// The measured repetitions (warm-up excluded), in round order: sample `r` of every row of
    /// a group was taken in the same round, so ratios can be paired round by round.
    pub samples: Vec<f64>,
    /// The speed-mode probe's readings just before and just after each sample.
    pub readings: Vec<[probe::Reading; 2]>,
}

impl Row {
    /// A row with no value yet (see [`Session`]).
    pub fn new(name: impl Into<String>, unit: Unit) -> Row {
        Row {
            name: name.into(),
            value: f64::NAN,
            unit,
            ratio_to: Vec::new(),
            samples: Vec::new(),
            readings: Vec::new(),
        }
    }

    /// Adds a ratio against the row named `baseline` (which must be in the same table and have
    /// the same unit).
    pub fn vs(mut self, baseline: &'static str) -> Row {
        self.ratio_to.push(baseline);
        self
    }
}

/// A titled run of rows, printed together in the table.
pub struct Group {
    pub title: &'static str,
    pub rows: Vec<Row>,
}

impl Group {
    /// How many of the group's repetitions saw the speed-mode probe move (before vs after),
    /// out of how many.
    pub fn switches(&self) -> (usize, usize) {
        let all = self.rows.iter().flat_map(|r| &r.readings);
        let moved = all.clone().filter(|[a, b]| !a.agrees(b)).count();
        (moved, all.count())
    }

    /// The median of the probe's round trips over the group, in nanoseconds: which speed
    /// mode the group ran in (about 100 ns in the fast one here, about 400 ns in the slow one,
    /// where every transfer between the two CPUs is slower but a copy inside one CPU is not).
    pub fn probe_rtt_ns(&self) -> f64 {
        let mut all: Vec<f64> = self
            .rows
            .iter()
            .flat_map(|r| &r.readings)
            .flat_map(|[a, b]| [a.rtt_ns, b.rtt_ns])
            .collect();
        if all.is_empty() {
            f64::NAN
        } else {
            median(&mut all)
        }
    }
}

/// Finds the row named `name` in any group.
pub fn find_row<'a>(groups: &'a [Group], name: &str) -> Option<&'a Row> {
    groups.iter().flat_map(|g| &g.rows).find(|r| r.name == name)
}

/// Prints all groups as one aligned table, each under its title, with each row's ratios to
/// its baselines (which may be in any group). Panics if a row names a baseline that is not in
/// the table or has another unit.
pub fn print_table(groups: &[Group]) {
    print!("{}", format_table(groups));
}

fn format_table(groups: &[Group]) -> String {
    let all: Vec<Row> = groups.iter().flat_map(|g| g.rows.iter().cloned()).collect();
    let lines = format_rows(&all);
    let width = lines.get(1).map_or(0, |l| l.chars().count());
    let mut out = String::new();
    let mut lines = lines.into_iter();
    for line in lines.by_ref().take(2) {
        let _ = writeln!(out, "{line}");
    }
    for group in groups {
        let title = format!("-- {} ", group.title);
        let fill = width.max(40).saturating_sub(title.chars().count());
        let _ = writeln!(out, "{title}{}", "-".repeat(fill));
        for line in lines.by_ref().take(group.rows.len()) {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// The table's lines: a heading, a rule, then one line per row.
fn format_rows(rows: &[Row]) -> Vec<String> {
    let ratios: Vec<String> = rows
        .iter()
        .map(|row| {
            row.ratio_to
                .iter()
                .map(|&name| {
                    let base = rows
                        .iter()
                        .find(|r| r.name == name)
                        .unwrap_or_else(|| panic!("row {:?}: no baseline {name:?}", row.name));
                    assert_eq!(
                        base.unit, row.unit,
                        "{:?} vs {name:?}: units differ",
                        row.name
                    );
                    format!("{} × {name}", format_ratio(row.value / base.value))
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    let values: Vec<String> = rows.iter().map(|r| r.unit.format(r.value)).collect();
    let name_w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let value_w = values
        .iter()
        .map(|v| v.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);

    let mut out = vec![
        format!("{:name_w$}  {:>value_w$}  ratio", "name", "value"),
        "-".repeat(name_w + value_w + 4 + 30),
    ];
    for ((row, value), ratio) in rows.iter().zip(&values).zip(&ratios) {
        let line = format!("{:name_w$}  {value:>value_w$}  {ratio}", row.name);
        out.push(line.trim_end().to_owned());
    }
    out
}

/// Three significant figures, give or take.
fn format_ratio(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 10.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}

/// A line describing the run's conditions, for the table's heading.
pub fn describe_run() -> String {
    format!(
        "parent on CPU {PARENT_CPU}, child on CPU {CHILD_CPU}; median of {REPS} repetitions \
         after {WARMUP_REPS} warm-up, the repetitions of each group's rows interleaved{}",
        if quick() {
            "; QUICK mode (FORKIPC_BENCH_QUICK=1): 10x fewer iterations"
        } else {
            ""
        }
    )
}

/// The machine, for the header: CPU model, CPU count, kernel, date, load average.
pub fn describe_machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // Online CPUs, not this (pinned) thread's affinity.
    // SAFETY: `sysconf` has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().to_string());
    let load = std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "?".into(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("machine: {model}, {cpus} CPUs, Linux {kernel}; {date}; load average {load}")
}
