//! `cargo bench --bench ipc`: forkipc against the mechanisms it replaces and the limits it
//! approaches, all measured in the same run on the same pair of CPUs, so that ratios can be
//! compared across runs and machines (absolute figures cannot; see /work/shared/ANCHORS.md for
//! the targets). `FORKIPC_BENCH_QUICK=1` makes a quick smoke run with 10x fewer iterations.

mod baselines;
mod support;

use support::Row;

fn main() {
    let mut rows = Vec::new();
    baselines::all(&mut rows);
    forkipc_rows(&mut rows);
    println!("forkipc IPC benchmarks: {}", support::describe_run());
    println!();
    support::print_table(&rows);
}

// ---------------------------------------------------------------------------------------------
// forkipc rows
//
// The library's own measurements go here, each compared with the baseline it is aimed at
// (targets in ANCHORS.md), e.g.
//
//     let n = support::iters(300_000);
//     let (tx, rx) = /* a forkipc channel pair */;
//     let child = support::fork_pinned(support::CHILD_CPU, || {
//         for _ in 0..support::rounds() as u64 * n { /* echo one message */ }
//     });
//     let rtt = support::median_of_rounds(|| {
//         support::ns_per_op(support::time(|| { /* n round trips */ }), n)
//     });
//     support::reap(child);
//     rows.push(
//         Row::new("forkipc channel<u64> ping-pong RTT, adaptive", rtt, support::Unit::Nanos)
//             .vs(baselines::SPIN_RTT),
//     );

/// Appends forkipc's own rows (none yet).
fn forkipc_rows(_rows: &mut Vec<Row>) {}
