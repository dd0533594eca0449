//! `cargo bench --bench ipc`: forkipc against the mechanisms it replaces and the limits it
//! approaches, all measured in the same run on the same pair of CPUs, so that ratios can be
//! compared across runs and machines (absolute figures cannot; see /work/shared/ANCHORS.md for
//! the targets). `FORKIPC_BENCH_QUICK=1` makes a quick smoke run with 10x fewer iterations;
//! `FORKIPC_BENCH_VERBOSE=1` also prints every repetition's figure.
//!
//! The repetitions of all the measurements of a group (round trips, 64 B streams, 1 MiB
//! streams), baselines and forkipc alike, are interleaved, so that a ratio compares figures
//! sampled over the same seconds (see `support`). The targets block after the table is
//! informational: the exit status never depends on performance. Each target's ratio is the
//! median of the ratios paired round by round (a row and its baseline measured seconds apart),
//! with their range: a VM's speed-mode switch moves both figures of a pair, not the ratio.
//!
//! `FORKIPC_BENCH_GROUP=<word>` runs only the groups whose title contains the word (e.g.
//! `64 B`, `1 MiB`, `round trips`, `shared`, `many`).

mod baselines;
mod forkipc_rows;
mod many_rows;
mod support;

use support::{Group, Session, Unit, find_row, interleave};

fn main() {
    let only = std::env::var("FORKIPC_BENCH_GROUP").ok();
    let wanted = |title: &str| only.as_deref().is_none_or(|w| title.contains(w));
    // Sessions are made (children forked) only for the groups that run.
    let group = |title: &'static str, make: &dyn Fn() -> Vec<Session>| {
        wanted(title).then(|| Group {
            title,
            rows: interleave(make()),
        })
    };
    let both = |base: fn() -> Vec<Session>, ours: fn() -> Vec<Session>| {
        move || {
            let mut v = base();
            v.extend(ours());
            v
        }
    };
    let groups: Vec<Group> = [
        group("round trips, 8 B", &both(baselines::rtt, forkipc_rows::rtt)),
        group("streams of 64 B messages", &streams_64b),
        group("streams of 1 MiB messages", &streams_1mib),
        group("shared CPUs: round trips", &many_rows::shared_cpus),
        group("many children: round trips", &many_rows::select_rtt),
        group(
            "many children: Select streams of 64 B",
            &many_rows::select_streams,
        ),
        group("many children: tiny jobs", &many_rows::pool_streams),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!("forkipc IPC benchmarks: {}", support::describe_run());
    println!("{}", support::describe_machine());
    println!("baseline: {}", baselines::LAMPORT_PARAMS);
    println!();
    support::print_table(&groups);
    println!();
    for g in &groups {
        let (moved, all) = g.switches();
        println!(
            "speed-mode probe, {}: cross-CPU spin round trip {:.0} ns (median); moved by more \
             than {:.0} % during {moved} of {all} repetitions",
            g.title,
            g.probe_rtt_ns(),
            support::probe::TOLERANCE * 100.0
        );
    }
    println!();
    print_targets(&groups);
    support::probe::finish();
}

/// A target ratio of a forkipc row to a baseline (ANCHORS.md).
struct Target {
    row: &'static str,
    baseline: &'static str,
    /// The bound on `row / baseline`.
    bound: f64,
}

/// The 64 B stream group, each forkipc row next to the Lamport ring of its capacity (so that
/// the rotation of `interleave` measures a row and its baseline back to back), then a pipe
/// and a socketpair.
fn streams_64b() -> Vec<Session> {
    let mut base = baselines::msgs_64b().into_iter();
    let mut ours = forkipc_rows::msgs_64b().into_iter();
    let mut v = Vec::new();
    for _ in baselines::STREAM_CAPACITIES {
        v.extend(base.next());
        v.extend(ours.by_ref().take(2));
    }
    v.extend(base);
    v.extend(ours);
    v
}

/// The 1 MiB group, each forkipc row right after its baseline: memcpy, zero-copy, the Lamport
/// ring, copying; then pipes and a socketpair.
fn streams_1mib() -> Vec<Session> {
    let mut base = baselines::mib().into_iter(); // memcpy, ring, pipe, big pipe, socketpair
    let mut ours = forkipc_rows::mib().into_iter(); // copying, zero-copy
    let (copy, zero) = (ours.next(), ours.next());
    let mut v: Vec<Session> = [base.next(), zero, base.next(), copy]
        .into_iter()
        .flatten()
        .collect();
    v.extend(base);
    v
}

fn targets() -> Vec<Target> {
    let t = |row, baseline, bound| Target {
        row,
        baseline,
        bound,
    };
    let mut v = vec![
        t(forkipc_rows::ADAPTIVE_RTT, baselines::SPIN_RTT, 1.3),
        t(forkipc_rows::BLOCK_RTT, baselines::FUTEX_RTT, 1.1),
    ];
    for k in 0..baselines::STREAM_CAPACITIES.len() {
        v.push(t(
            forkipc_rows::TYPED_64B[k],
            baselines::LAMPORT_64B[k],
            1.0,
        ));
        v.push(t(
            forkipc_rows::BYTES_64B[k],
            baselines::LAMPORT_64B[k],
            0.8,
        ));
    }
    v.extend([
        t(forkipc_rows::COPY_1MIB, baselines::RING_1MIB, 1.0),
        t(forkipc_rows::ZERO_COPY_1MIB, baselines::MEMCPY_1MIB, 0.9),
        t(many_rows::SAME_CPU_ADAPTIVE, many_rows::SAME_CPU_PIPE, 1.5),
        t(many_rows::FANOUT_ADAPTIVE, many_rows::FANOUT_BLOCK, 1.0),
        t(many_rows::SELECT_RTT_8, many_rows::DUPLEX_RTT, 1.2),
        t(many_rows::POOL_RTT, many_rows::DUPLEX_RTT, 2.0),
        t(many_rows::POOL_MAP_1, many_rows::PIPELINE_1, 0.8),
        t(many_rows::POOL_MAP_2, many_rows::PIPELINE_2, 0.8),
    ]);
    v
}

/// Prints each target with the ratio measured in this run and whether it was met. A ratio is
/// met when at most the bound for times (lower is better), at least the bound for throughputs.
fn print_targets(groups: &[Group]) {
    println!("targets (ratios measured in this run; informational, never fail the bench):");
    for t in &targets() {
        let (Some(row), Some(base)) = (find_row(groups, t.row), find_row(groups, t.baseline))
        else {
            continue; // its group did not run
        };
        // Paired round by round (both rows are in one group, so sample r of each was taken
        // in round r), keeping only the pairs in which all four probe readings agree (no
        // speed-mode switch during either sample or between them); if no pair qualifies, all
        // pairs, flagged. Rows of different groups: the ratio of the medians.
        let pairs: Vec<(f64, bool)> = if row.samples.len() == base.samples.len() {
            row.samples
                .iter()
                .zip(&base.samples)
                .zip(row.readings.iter().zip(&base.readings))
                .map(|((a, b), (ra, rb))| {
                    let steady = ra[0].agrees(&ra[1])
                        && rb[0].agrees(&rb[1])
                        && ra[0].agrees(&rb[0])
                        && ra[1].agrees(&rb[1]);
                    (a / b, steady)
                })
                .collect()
        } else {
            vec![(row.value / base.value, true)]
        };
        let steady_count = pairs.iter().filter(|p| p.1).count();
        let mut paired: Vec<f64> = pairs
            .iter()
            .filter(|p| p.1 || steady_count == 0)
            .map(|p| p.0)
            .collect();
        let note = if steady_count == pairs.len() {
            String::new()
        } else {
            format!(" [{steady_count} of {} pairs steady]", pairs.len())
        };
        let (lo, hi) = paired
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &r| {
                (l.min(r), h.max(r))
            });
        let ratio = support::median(&mut paired);
        let (sign, met) = if row.unit == Unit::Nanos {
            ("≤", ratio <= t.bound)
        } else {
            ("≥", ratio >= t.bound)
        };
        println!(
            "  {:<48} {sign} {:.1} × {:<32} {ratio:>7.3} × ({lo:.2}–{hi:.2})  {}{note}",
            t.row,
            t.bound,
            t.baseline,
            if met { "met" } else { "NOT met" }
        );
    }
}
