//! A crash-isolated pool parsing untrusted inputs.
//!
//! Each input is a tiny command such as `sum 1 2 3`. The "parser" below is deliberately
//! fragile: some inputs make it panic, abort, loop for ever or dereference a null pointer
//! (SIGSEGV), as a real parser of hostile input might. Each runs in a forked worker: a crash
//! fails only that input, a stuck parser is killed after `job_timeout`, and the pool forks
//! replacements, while every other input is parsed exactly once.
//!
//! Run: `cargo run --release --example pool`

use std::time::{Duration, Instant};

use forkipc::{JobError, PoolBuilder};

/// An input: up to 31 bytes of text (plain data, so it crosses to the worker as bytes).
type Input = [u8; 32];

fn input(s: &str) -> Input {
    let mut b = [0u8; 32];
    let n = s.len().min(31);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    b
}

/// The fragile parser: returns the sum of the numbers after `sum`.
fn parse(raw: Input) -> u64 {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = std::str::from_utf8(&raw[..end]).unwrap_or("");
    let mut words = text.split_whitespace();
    match words.next() {
        Some("sum") => words.map(|w| w.parse::<u64>().expect("not a number")).sum(),
        Some("abort") => std::process::abort(),
        Some("loop") => loop {
            std::hint::spin_loop();
        },
        Some("segv") => {
            // A parser bug that writes through a null pointer: the worker gets SIGSEGV.
            // SAFETY: it is not safe; it is the crash this example isolates.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
            0
        }
        other => panic!("unknown command {other:?}"),
    }
}

fn main() -> Result<(), forkipc::Error> {
    let inputs = [
        "sum 1 2 3",
        "sum 10 20",
        "sum 7 x",
        "sum 100",
        "abort",
        "sum 4 4",
        "loop",
        "sum 5",
        "segv",
        "hello",
        "sum 1 1 1 1",
        "sum 42",
    ];
    // Keep the workers' panic messages off the terminal: the pool reports them.
    std::panic::set_hook(Box::new(|_| {}));
    let pool = PoolBuilder::new()
        .workers(2)
        .job_timeout(Duration::from_millis(300))
        .build(parse)?;
    let start = Instant::now();
    let (mut ok, mut panicked, mut died, mut timed_out) = (0, 0, 0, 0);
    for (text, result) in inputs.iter().zip(pool.map(inputs.iter().map(|s| input(s)))) {
        match result {
            Ok(sum) => {
                ok += 1;
                println!("{text:<14} -> {sum}");
            }
            Err(JobError::Panicked { message }) => {
                panicked += 1;
                println!("{text:<14} -> parser panicked: {message}");
            }
            Err(JobError::WorkerDied(status)) => {
                died += 1;
                println!("{text:<14} -> parser crashed: {status}");
            }
            Err(JobError::TimedOut) => {
                timed_out += 1;
                println!("{text:<14} -> parser stuck: killed after 300 ms");
            }
            Err(e) => println!("{text:<14} -> {e}"),
        }
    }
    println!(
        "\n{} inputs in {:.0?}: {ok} parsed, {panicked} panicked, {died} crashed, {timed_out} timed out; workers now {:?}",
        inputs.len(),
        start.elapsed(),
        pool.worker_ids()
    );
    pool.shutdown()?;
    Ok(())
}
