//! `cargo bench --bench ipc`: forkipc against the mechanisms it replaces and the limits it
//! approaches, all measured in the same run on the same pair of CPUs, so that ratios can be
//! compared across runs and machines (absolute figures cannot; see /work/shared/ANCHORS.md for
//! the targets). `FORKIPC_BENCH_QUICK=1` makes a quick smoke run with 10x fewer iterations;
//! `FORKIPC_BENCH_VERBOSE=1` also prints every repetition's figure.
//!
//! The repetitions of all the measurements of a group (round trips, 64 B streams, 1 MiB
//! streams), baselines and forkipc alike, are interleaved, so that a ratio compares figures
//! sampled over the same seconds (see `support`). The targets block after the table is
//! informational: the exit status never depends on performance.

mod baselines;
mod forkipc_rows;
mod many_rows;
mod support;

use support::{Group, Session, Unit, find_row, interleave};

fn main() {
    let group = |title, mut sessions: Vec<Session>, ours: Vec<Session>| {
        sessions.extend(ours);
        Group {
            title,
            rows: interleave(sessions),
        }
    };
    let groups = [
        group("round trips, 8 B", baselines::rtt(), forkipc_rows::rtt()),
        group(
            "streams of 64 B messages",
            baselines::msgs_64b(),
            forkipc_rows::msgs_64b(),
        ),
        group(
            "streams of 1 MiB messages",
            baselines::mib(),
            forkipc_rows::mib(),
        ),
        group(
            "shared CPUs: round trips",
            many_rows::shared_cpus(),
            Vec::new(),
        ),
        group(
            "many children: round trips",
            many_rows::select_rtt(),
            Vec::new(),
        ),
        group(
            "many children: Select streams of 64 B",
            many_rows::select_streams(),
            Vec::new(),
        ),
        group(
            "many children: tiny jobs",
            many_rows::pool_streams(),
            Vec::new(),
        ),
    ];
    println!("forkipc IPC benchmarks: {}", support::describe_run());
    println!();
    support::print_table(&groups);
    println!();
    print_targets(&groups);
}

/// A target ratio of a forkipc row to a baseline (ANCHORS.md).
struct Target {
    row: &'static str,
    baseline: &'static str,
    /// The bound on `row / baseline`.
    bound: f64,
}

const TARGETS: [Target; 11] = [
    Target {
        row: forkipc_rows::ADAPTIVE_RTT,
        baseline: baselines::SPIN_RTT,
        bound: 1.3,
    },
    Target {
        row: forkipc_rows::BLOCK_RTT,
        baseline: baselines::FUTEX_RTT,
        bound: 1.1,
    },
    Target {
        row: forkipc_rows::TYPED_64B,
        baseline: baselines::RING_64B,
        bound: 0.8,
    },
    Target {
        row: forkipc_rows::COPY_1MIB,
        baseline: baselines::RING_1MIB,
        bound: 1.0,
    },
    Target {
        row: forkipc_rows::ZERO_COPY_1MIB,
        baseline: baselines::MEMCPY_1MIB,
        bound: 0.9,
    },
    Target {
        row: many_rows::SAME_CPU_ADAPTIVE,
        baseline: many_rows::SAME_CPU_PIPE,
        bound: 1.5,
    },
    Target {
        row: many_rows::FANOUT_ADAPTIVE,
        baseline: many_rows::FANOUT_BLOCK,
        bound: 1.0,
    },
    Target {
        row: many_rows::SELECT_RTT_8,
        baseline: many_rows::DUPLEX_RTT,
        bound: 1.2,
    },
    Target {
        row: many_rows::POOL_RTT,
        baseline: many_rows::DUPLEX_RTT,
        bound: 2.0,
    },
    Target {
        row: many_rows::POOL_MAP_1,
        baseline: many_rows::PIPELINE_1,
        bound: 0.8,
    },
    Target {
        row: many_rows::POOL_MAP_2,
        baseline: many_rows::PIPELINE_2,
        bound: 0.8,
    },
];

/// Prints each target with the ratio measured in this run and whether it was met. A ratio is
/// met when at most the bound for times (lower is better), at least the bound for throughputs.
fn print_targets(groups: &[Group]) {
    println!("targets (ratios measured in this run; informational, never fail the bench):");
    for t in &TARGETS {
        let (Some(row), Some(base)) = (find_row(groups, t.row), find_row(groups, t.baseline))
        else {
            println!("  {} vs {}: not measured", t.row, t.baseline);
            continue;
        };
        let ratio = row.value / base.value;
        let (sign, met) = if row.unit == Unit::Nanos {
            ("≤", ratio <= t.bound)
        } else {
            ("≥", ratio >= t.bound)
        };
        println!(
            "  {:<48} {sign} {:.1} × {:<32} {ratio:>7.3} ×  {}",
            t.row,
            t.bound,
            t.baseline,
            if met { "met" } else { "NOT met" }
        );
    }
}
