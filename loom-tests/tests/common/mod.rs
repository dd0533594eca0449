//! Shared helpers for the loom models.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Preemption bound used when `LOOM_MAX_PREEMPTIONS` is not set (unbounded would not finish).
const DEFAULT_PREEMPTIONS: usize = 2;

/// Runs `f` under loom with the bounds taken from the environment (`LOOM_MAX_PREEMPTIONS`
/// etc.; without `LOOM_MAX_PREEMPTIONS` the bound is 2, as unbounded would not finish), and prints how many executions it explored and how long
/// that took (visible with `-- --nocapture`).
pub fn model<F>(name: &str, f: F)
where
    F: Fn() + Send + Sync + 'static,
{
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let body = move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    };
    let start = Instant::now();
    let bound = if let Ok(v) = std::env::var("LOOM_MAX_PREEMPTIONS") {
        // `loom::model` reads the bounds from the environment and installs the `LOOM_LOG`
        // logger (set `LOOM_LOG=trace` to see the interleavings).
        loom::model(body);
        v
    } else {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
        builder.check(body);
        format!("{DEFAULT_PREEMPTIONS} (default)")
    };
    println!(
        "{name}: {} executions in {:.2?} (preemption bound {bound})",
        count.load(Ordering::Relaxed),
        start.elapsed()
    );
}
