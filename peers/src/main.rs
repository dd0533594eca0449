//! forkipc side by side with what users would pick instead: round-trip latency and one-way
//! stream throughput for messages of 8 B to 1 MiB, between a parent pinned to CPU 0 and a
//! forked child pinned to CPU 1.
//!
//! Run: `cd peers && cargo run --release` (full run, a few minutes; writes
//! `results/latest.md` and `../docs/*.svg`), or `cargo run --release -- --quick` (or
//! `PEERS_QUICK=1`) for a smoke run of a few seconds whose output goes to `target/peers-quick/`.
//! See README.md for each system's configuration.
//!
//! Method: every (system, workload, size) cell is first calibrated (its iteration count is
//! chosen so that one repetition takes about [`TARGET_FULL`]), then measured in
//! [`REPS_FULL`] rounds; each round runs one repetition of every cell, the systems of a
//! (workload, size) group back to back in an order rotated every round, so that all systems are
//! sampled over the same seconds. Each repetition forks a fresh child; its messages carry
//! sequence stamps the receiver checks; a failed check, a failed child or a repetition that
//! outlives its deadline makes the run exit non-zero.

#![deny(unsafe_op_in_unsafe_fn)]

mod forkipc_rows;
mod harness;
mod peer_rows;
mod python_rows;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{PARENT_CPU, arm_watchdog, disarm_watchdog, install_watchdog, pin_to_cpu};
use python_rows::Python;

/// Message sizes, in bytes.
pub const SIZES: [usize; 6] = [8, 64, 512, 4096, 64 << 10, 1 << 20];
/// Untimed round trips before the timed ones.
pub const RTT_WARMUP: u64 = 16;
/// Pipe buffer (F_SETPIPE_SZ): the largest an unprivileged process may ask for by default
/// (`/proc/sys/fs/pipe-max-size`).
pub const PIPE_BUFFER: usize = 1 << 20;

/// Ring size of the shared-memory rings (forkipc's byte channels, ipmpsc) for messages of
/// `size` bytes: 256 KiB, or four messages for large ones (a forkipc byte channel takes
/// messages up to half its ring).
pub fn ring_bytes(size: usize) -> usize {
    (4 * size).max(256 << 10).next_power_of_two()
}

/// Untimed messages a stream's producer sends before the "go": at most about 1 MiB.
pub fn stream_warmup(size: usize) -> u64 {
    ((1usize << 20) / size).clamp(4, 256) as u64
}

/// Time aimed at per repetition and repetitions per cell, full run and quick run.
const TARGET_FULL: Duration = Duration::from_millis(150);
const REPS_FULL: usize = 5;
const TARGET_QUICK: Duration = Duration::from_millis(4);
const REPS_QUICK: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Workload {
    Rtt,
    Stream,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum System {
    ForkipcBytes,
    ForkipcZeroCopy,
    ForkipcTyped,
    Pipe,
    Socketpair,
    IpcChannel,
    Ipmpsc,
    Python,
}

impl System {
    pub const ALL: [System; 8] = [
        System::ForkipcBytes,
        System::ForkipcZeroCopy,
        System::ForkipcTyped,
        System::Pipe,
        System::Socketpair,
        System::IpcChannel,
        System::Ipmpsc,
        System::Python,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::ForkipcBytes => "forkipc byte channel",
            System::ForkipcZeroCopy => "forkipc byte channel, zero-copy",
            System::ForkipcTyped => "forkipc typed u64",
            System::Pipe => "pipe (1 MiB buffer)",
            System::Socketpair => "Unix socketpair",
            System::IpcChannel => "ipc-channel 0.23",
            System::Ipmpsc => "ipmpsc 0.5",
            System::Python => "Python multiprocessing.Pipe",
        }
    }

    /// A short name for `--only`.
    pub fn key(self) -> &'static str {
        match self {
            System::ForkipcBytes => "forkipc",
            System::ForkipcZeroCopy => "zerocopy",
            System::ForkipcTyped => "typed",
            System::Pipe => "pipe",
            System::Socketpair => "socket",
            System::IpcChannel => "ipc-channel",
            System::Ipmpsc => "ipmpsc",
            System::Python => "python",
        }
    }

    fn supports(self, size: usize) -> bool {
        self != System::ForkipcTyped || size == 8
    }
}

/// One cell of the tables.
pub struct Cell {
    pub system: System,
    pub workload: Workload,
    pub size: usize,
    /// Timed messages per repetition (from calibration).
    pub n: u64,
    /// Per repetition: ns per round trip (Rtt) or bytes per second (Stream).
    pub samples: Vec<f64>,
}

/// One repetition of a cell: the time of `n` timed messages (round trips or stream messages).
fn measure(
    python: &mut Option<Python>,
    system: System,
    workload: Workload,
    size: usize,
    n: u64,
) -> Result<Duration, String> {
    use Workload::*;
    arm_watchdog();
    let result = match (system, workload) {
        (System::ForkipcBytes, Rtt) => forkipc_rows::byte_rtt(size, n, false),
        (System::ForkipcBytes, Stream) => forkipc_rows::byte_stream(size, n, false),
        (System::ForkipcZeroCopy, Rtt) => forkipc_rows::byte_rtt(size, n, true),
        (System::ForkipcZeroCopy, Stream) => forkipc_rows::byte_stream(size, n, true),
        (System::ForkipcTyped, Rtt) => forkipc_rows::typed_rtt(n),
        (System::ForkipcTyped, Stream) => forkipc_rows::typed_stream(n),
        (System::Pipe, Rtt) => peer_rows::pipe_rtt(size, n),
        (System::Pipe, Stream) => peer_rows::pipe_stream(size, n),
        (System::Socketpair, Rtt) => peer_rows::socket_rtt(size, n),
        (System::Socketpair, Stream) => peer_rows::socket_stream(size, n),
        (System::IpcChannel, Rtt) => peer_rows::ipc_channel_rtt(size, n),
        (System::IpcChannel, Stream) => peer_rows::ipc_channel_stream(size, n),
        (System::Ipmpsc, Rtt) => peer_rows::ipmpsc_rtt(size, n),
        (System::Ipmpsc, Stream) => peer_rows::ipmpsc_stream(size, n),
        (System::Python, w) => match python {
            Some(py) => py.measure(if w == Rtt { "rtt" } else { "stream" }, size, n),
            None => Err("python helper not running".into()),
        },
    };
    disarm_watchdog();
    result.map_err(|e| format!("{} {workload:?} {size} B: {e}", system.name()))
}

/// Chooses a cell's iteration count: runs it with growing counts until a run takes at least a
/// tenth of `target`, then scales the count to `target`. These runs also warm the cell up;
/// none of them is reported.
fn calibrate(python: &mut Option<Python>, cell: &Cell, target: Duration) -> Result<u64, String> {
    let mut n: u64 = match cell.workload {
        Workload::Rtt => 16,
        Workload::Stream => ((4usize << 20) / cell.size).clamp(4, 4096) as u64,
    };
    loop {
        let elapsed = measure(python, cell.system, cell.workload, cell.size, n)?;
        let enough = elapsed >= target / 10;
        if enough || n >= 100_000_000 {
            let per_op = elapsed.as_secs_f64() / n as f64;
            let want = (target.as_secs_f64() / per_op.max(1e-12)).ceil() as u64;
            return Ok(want.clamp(4, 100_000_000));
        }
        n *= 8;
    }
}

struct Options {
    quick: bool,
    only: Option<Vec<String>>,
    reps: usize,
    target: Duration,
}

fn options() -> Result<Options, String> {
    let mut quick = std::env::var_os("PEERS_QUICK").is_some_and(|v| v == "1");
    let mut only = None;
    let mut reps = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let list = args.next().ok_or("--only needs a comma-separated list")?;
                only = Some(list.split(',').map(str::to_string).collect());
            }
            "--reps" => {
                let r = args.next().ok_or("--reps needs a number")?;
                reps = Some(r.parse::<usize>().map_err(|e| format!("--reps {r}: {e}"))?);
            }
            // `cargo bench` passes --bench; nothing else is expected.
            "--bench" => {}
            "-h" | "--help" => {
                println!(
                    "usage: peers [--quick] [--reps N] [--only {}]\n  \
                     --quick (or PEERS_QUICK=1): smoke run, output in target/peers-quick/\n  \
                     --only: a subset, output in target/peers-partial/",
                    System::ALL.map(System::key).join(",")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    let reps = reps.unwrap_or(if quick { REPS_QUICK } else { REPS_FULL });
    if reps < 1 {
        return Err("--reps must be at least 1".into());
    }
    Ok(Options {
        quick,
        only,
        reps,
        target: if quick { TARGET_QUICK } else { TARGET_FULL },
    })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("peers: FAILED: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let started = Instant::now();
    let opts = options()?;
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    install_watchdog()?;
    harness::read_corrupt_seq()?;
    pin_to_cpu(PARENT_CPU)?;

    let systems: Vec<System> = System::ALL
        .into_iter()
        .filter(|s| {
            opts.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|k| k == s.key()))
        })
        .collect();
    let mut notes = Vec::new();
    let mut python = None;
    if systems.contains(&System::Python) {
        match Python::start(&crate_dir.join("python/mp_peer.py")) {
            Ok(py) => python = Some(py),
            Err(e) => notes.push(format!("Python row left out: {e}")),
        }
    }
    let systems: Vec<System> = systems
        .into_iter()
        .filter(|s| *s != System::Python || python.is_some())
        .collect();

    let machine = report::Machine::read(&opts, python.as_ref().map(|p| p.version.clone()));
    let header = report::header(&machine, &opts_summary(&opts), &notes);
    print!("{header}");

    // The cells, grouped by (workload, size); calibrated in that order.
    let mut groups: Vec<Vec<Cell>> = Vec::new();
    for workload in [Workload::Rtt, Workload::Stream] {
        for size in SIZES {
            let cells: Vec<Cell> = systems
                .iter()
                .filter(|s| s.supports(size))
                .map(|&system| Cell {
                    system,
                    workload,
                    size,
                    n: 0,
                    samples: Vec::new(),
                })
                .collect();
            groups.push(cells);
        }
    }
    eprintln!(
        "calibrating {} cells...",
        groups.iter().map(Vec::len).sum::<usize>()
    );
    for cell in groups.iter_mut().flatten() {
        cell.n = calibrate(&mut python, cell, opts.target)?;
    }
    for round in 0..opts.reps {
        eprintln!(
            "round {}/{} ({:.0?} so far)",
            round + 1,
            opts.reps,
            started.elapsed()
        );
        for group in &mut groups {
            let k = group.len();
            for i in (0..k).map(|i| (i + round) % k) {
                let cell = &mut group[i];
                let elapsed = measure(&mut python, cell.system, cell.workload, cell.size, cell.n)?;
                let secs = elapsed.as_secs_f64().max(1e-12);
                cell.samples.push(match cell.workload {
                    Workload::Rtt => secs * 1e9 / cell.n as f64,
                    Workload::Stream => (cell.n as f64 * cell.size as f64) / secs,
                });
            }
        }
    }
    if let Some(py) = python {
        arm_watchdog();
        py.stop()?;
        disarm_watchdog();
    }
    let cells: Vec<Cell> = groups.into_iter().flatten().collect();

    let tables = report::tables(&cells, &systems);
    let footer = format!(
        "\nWhole run: {:.1} s; load average at the end: {}\n",
        started.elapsed().as_secs_f64(),
        report::loadavg()
    );
    print!("{tables}{footer}");

    // Only a full run of every system replaces the published figures.
    let (md_path, docs): (PathBuf, PathBuf) = if opts.quick || opts.only.is_some() {
        let dir = crate_dir.join(if opts.quick {
            "target/peers-quick"
        } else {
            "target/peers-partial"
        });
        (dir.join("latest.md"), dir)
    } else {
        (
            crate_dir.join("results/latest.md"),
            crate_dir.join("../docs"),
        )
    };
    write(&md_path, &format!("{header}{tables}{footer}"))?;
    std::fs::create_dir_all(&docs).map_err(|e| format!("{}: {e}", docs.display()))?;
    let rtt_svg = docs.join("rtt_by_size.svg");
    let tp_svg = docs.join("throughput_by_size.svg");
    report::charts(&cells, &systems, &machine, &rtt_svg, &tp_svg)?;
    eprintln!(
        "wrote {}, {}, {}",
        md_path.display(),
        rtt_svg.display(),
        tp_svg.display()
    );
    Ok(())
}

fn opts_summary(opts: &Options) -> String {
    format!(
        "{} run: {} repetitions per cell (after calibration), about {} ms each, interleaved \
         round-robin across systems",
        if opts.quick { "quick (smoke)" } else { "full" },
        opts.reps,
        opts.target.as_millis()
    )
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
