//! Fork tests of the byte ring, through the byte channel API.
//!
//! Every payload is derived from a sequence number (and, for random streams, a seeded `Rng`),
//! so the receiver recomputes what it should get and checks the length and every byte. Record
//! layout facts used here come from the ring's documented format (`src/ring/mod.rs`): a record
//! is an 8-byte header `kind << 32 | len` (kind 1 message, 2 padding) plus the payload rounded
//! up to 8; a record that does not fit before the end of the data area is preceded by a padding
//! record and placed at index 0; the largest message is `cap / 2 - 16`.

mod support;

use std::time::{Duration, Instant};

use forkipc::{
    ByteReceiver, ByteSender, Child, DisconnectReason, RecvTimeoutError, SendError,
    SendTimeoutError, TooLarge, TryRecvError, TrySendError, WaitPolicy, byte_channel,
};
use support::{Context, Outcome, Rng, cpu_time, expect_success, kill_and_reap};

/// Generous bound for children to finish and for blocking receives that should succeed.
const WAIT: Duration = Duration::from_secs(60);

fn main() {
    support::run(cases![
        million_random_messages_64k_ring,
        messages_ending_exactly_at_data_end,
        maximum_size_messages,
        zero_copy_reserve_commit_and_recv_ref,
        scribbled_ring_never_misbehaves,
        full_ring_backpressure,
        wait_policies,
        idle_receiver_sleeps,
        blocked_waiters_notice_peer_death_under_every_policy,
    ]);
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// splitmix64: a well-mixed word from a sequence number.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fills `buf` with the payload of message `seq` (any length).
fn fill_payload(seq: u64, buf: &mut [u8]) {
    let base = mix(seq);
    let mut chunks = buf.chunks_exact_mut(8);
    let mut k = 0u64;
    for chunk in &mut chunks {
        let w = base ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        chunk.copy_from_slice(&w.to_le_bytes());
        k += 1;
    }
    let rest = chunks.into_remainder();
    let w = (base ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes();
    let n = rest.len();
    rest.copy_from_slice(&w[..n]);
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_payload(seq, &mut v);
    v
}

/// Checks that `got` is message `seq` of `len` bytes; `scratch` is reused for the expectation.
fn check_payload(seq: u64, len: usize, got: &[u8], scratch: &mut Vec<u8>) -> Outcome {
    if got.len() != len {
        return Err(format!(
            "message {seq}: length {} instead of {len}",
            got.len()
        ));
    }
    scratch.clear();
    scratch.resize(len, 0);
    fill_payload(seq, scratch);
    if got != &scratch[..] {
        let at = got
            .iter()
            .zip(scratch.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "message {seq} (len {len}): byte {at} is {:#04x}, expected {:#04x}",
            got[at], scratch[at]
        ));
    }
    Ok(())
}

/// Turns a child's outcome into its exit status (printing the failure to stderr).
fn child_exit(what: &str, r: Outcome) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("child ({what}) failed: {e}");
            1
        }
    }
}

/// Ends a parent's side of a forked test: on failure kills and reaps the child, otherwise waits
/// for its success.
fn finish(child: &mut Child, r: Outcome) -> Outcome {
    match r {
        Ok(()) => expect_success(child, WAIT),
        Err(e) => {
            kill_and_reap(child);
            Err(e)
        }
    }
}

fn record_size(len: usize) -> usize {
    8 + len.div_ceil(8) * 8
}

/// The test's own model of where the producer puts records (from the documented format):
/// positions depend only on the sequence of lengths.
struct Layout {
    cap: usize,
    /// Index where the next record goes.
    idx: usize,
}

impl Layout {
    fn new(cap: usize) -> Layout {
        Layout { cap, idx: 0 }
    }

    /// Places a message: returns the index of its header and of the padding before it, if any.
    fn place(&mut self, len: usize) -> (usize, Option<usize>) {
        let rec = record_size(len);
        if rec <= self.cap - self.idx {
            let at = self.idx;
            self.idx = (self.idx + rec) % self.cap;
            (at, None)
        } else {
            let pad = self.idx;
            self.idx = rec % self.cap;
            (0, Some(pad))
        }
    }
}

/// A length whose record is exactly `rec` bytes (`rec` a multiple of 8, >= 8), varied by `rng`
/// among the lengths that round to the same size.
fn len_for_record(rec: usize, rng: &mut Rng) -> usize {
    let full = rec - 8;
    if full == 0 {
        0
    } else {
        full - rng.below(8) as usize
    }
}

/// Appends filler lengths to `lens` that move the layout's next index to `target` without
/// wrapping (when the target lies behind, the fillers first end exactly at the data end).
fn move_to(layout: &mut Layout, target: usize, max: usize, rng: &mut Rng, lens: &mut Vec<usize>) {
    let max_rec = record_size(max) & !7;
    while layout.idx != target {
        let dist = if target > layout.idx {
            target - layout.idx
        } else {
            layout.cap - layout.idx
        };
        let want = 8 * (1 + rng.below(64) as usize);
        let rec = dist.min(want).min(max_rec);
        let len = len_for_record(rec, rng);
        let (_, pad) = layout.place(len);
        assert!(pad.is_none(), "filler wrapped");
        lens.push(len);
    }
}

/// Message lengths that (a) tile the data area exactly with equal records of every
/// power-of-two size, and (b) for every 8-aligned index, end a record exactly at the data end
/// from there and wrap from there (forcing every padding size, 8 bytes included).
fn wrap_pattern(cap: usize, rng: &mut Rng) -> Vec<usize> {
    let max = cap / 2 - 16;
    let mut lens = Vec::new();
    let mut layout = Layout::new(cap);
    let mut rec = 8;
    while rec - 8 <= max {
        for _ in 0..3 * cap / rec {
            let len = len_for_record(rec, rng);
            layout.place(len);
            lens.push(len);
        }
        rec *= 2;
    }
    for i in (0..cap).step_by(8) {
        move_to(&mut layout, i, max, rng, &mut lens);
        let exact = cap - i - 8;
        if exact <= max {
            // Ends exactly at the data end (an empty message when i == cap - 8).
            let len = if exact == 0 {
                0
            } else {
                exact - rng.below(8) as usize
            };
            let (_, pad) = layout.place(len);
            assert!(pad.is_none() && layout.idx == 0);
            lens.push(len);
            move_to(&mut layout, i, max, rng, &mut lens);
        }
        if exact < max {
            // The smallest message that wraps from here, then a random one.
            let lo = exact + 1;
            for len in [lo, lo + rng.below((max - lo + 1) as u64) as usize] {
                let (_, pad) = layout.place(len);
                assert_eq!(pad, Some(i));
                lens.push(len);
                move_to(&mut layout, i, max, rng, &mut lens);
            }
        }
    }
    lens
}

/// Reads the 8-byte record header at `idx` of a receiver's data area.
fn header_at(rx: &ByteReceiver, idx: usize) -> u64 {
    let (_, data, cap) = forkipc::__testing::ring_memory(rx);
    assert!(idx & 7 == 0 && idx < cap);
    // SAFETY: `idx` is an 8-aligned index inside the data area (asserted), which is 8-aligned
    // and mapped while `rx` lives; only this single-threaded process touches the ring now.
    unsafe { data.add(idx).cast::<u64>().read_volatile() }
}

/// Sends `lens` (message `seq` = position in the list) within one process: `try_send` until
/// `Full`, then drain and check. After each send, checks the record's header (and the padding
/// header) where the layout model says it is, so the intended wrap patterns really happen.
fn run_pattern_single(cap: usize, lens: &[usize]) -> Outcome {
    let (tx, rx) = byte_channel(cap).ctx("byte_channel")?;
    let (_, _, real_cap) = forkipc::__testing::ring_memory(&rx);
    ensure!(real_cap == cap, "data area {real_cap}, expected {cap}");
    let mut layout = Layout::new(cap);
    let mut next_rx = 0usize;
    let mut scratch = Vec::new();
    let mut fulls = 0usize;
    let mut pads = vec![false; cap / 8];
    let drain = |next_rx: &mut usize, scratch: &mut Vec<u8>| -> Outcome {
        loop {
            match rx.try_recv() {
                Ok(m) => {
                    ensure!(*next_rx < lens.len(), "extra message of {} bytes", m.len());
                    check_payload(*next_rx as u64, lens[*next_rx], &m, scratch)?;
                    *next_rx += 1;
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(e) => return Err(format!("try_recv after {next_rx}: {e:?}")),
            }
        }
    };
    for (seq, &len) in lens.iter().enumerate() {
        let msg = payload(seq as u64, len);
        loop {
            match tx.try_send(&msg) {
                Ok(()) => break,
                Err(TrySendError::Full(())) => {
                    fulls += 1;
                    let before = next_rx;
                    drain(&mut next_rx, &mut scratch)?;
                    ensure!(
                        next_rx > before,
                        "try_send({len}) Full but nothing to drain (message {seq})"
                    );
                }
                Err(e) => return Err(format!("try_send of message {seq} ({len} bytes): {e:?}")),
            }
        }
        let (at, pad) = layout.place(len);
        let h = header_at(&rx, at);
        ensure!(
            h == (1 << 32 | len as u64),
            "message {seq}: header at {at} is {h:#x}, expected a message of {len}"
        );
        if let Some(p) = pad {
            let h = header_at(&rx, p);
            let want = 2u64 << 32 | (cap - p - 8) as u64;
            ensure!(
                h == want,
                "message {seq}: padding at {p} is {h:#x}, expected {want:#x}"
            );
            pads[p / 8] = true;
        }
        let next = header_at(&rx, layout.idx);
        ensure!(
            next == 0,
            "message {seq}: header after it ({}) is {next:#x}",
            layout.idx
        );
    }
    drain(&mut next_rx, &mut scratch)?;
    ensure!(
        next_rx == lens.len(),
        "received {next_rx} of {}",
        lens.len()
    );
    let max = cap / 2 - 16;
    // Every index from which the largest message cannot fit before the end.
    let wrap_points = (1..cap / 8)
        .filter(|&k| cap - 8 * k < record_size(max))
        .collect::<Vec<_>>();
    let missing: Vec<usize> = wrap_points
        .iter()
        .filter(|&&k| !pads[k])
        .map(|&k| 8 * k)
        .collect();
    ensure!(
        missing.is_empty(),
        "no padding record at indices {missing:?}"
    );
    println!(
        "    cap {cap}: {} messages in one process, {fulls} times Full, padding at {} indices",
        lens.len(),
        wrap_points.len()
    );
    Ok(())
}

/// Sends `lens` from a child with `send`; the parent receives with `recv_into` and checks.
fn run_pattern_forked(cap: usize, lens: &[usize]) -> Outcome {
    let (tx, rx) = byte_channel(cap).ctx("byte_channel")?;
    let mut child = forkipc::fork(tx, |tx| {
        child_exit(
            "pattern sender",
            (|| {
                let mut buf = vec![0u8; cap];
                for (seq, &len) in lens.iter().enumerate() {
                    fill_payload(seq as u64, &mut buf[..len]);
                    tx.send(&buf[..len])
                        .map_err(|e| format!("send {seq} ({len} bytes): {e:?}"))?;
                }
                Ok(())
            })(),
        )
    })
    .ctx("fork")?;
    let r = (|| {
        let mut buf = Vec::new();
        let mut scratch = Vec::new();
        for (seq, &len) in lens.iter().enumerate() {
            let n = rx
                .recv_into(&mut buf)
                .map_err(|e| format!("recv_into {seq}: {e:?}"))?;
            ensure!(
                n == buf.len(),
                "recv_into returned {n}, buffer holds {}",
                buf.len()
            );
            check_payload(seq as u64, len, &buf, &mut scratch)?;
        }
        match rx.recv_timeout(WAIT) {
            Err(RecvTimeoutError::Disconnected) => Ok(()),
            other => Err(format!(
                "after the last message: {:?} instead of Disconnected",
                other.map(|m| m.len())
            )),
        }
    })();
    finish(&mut child, r)?;
    println!("    cap {cap}: {} messages across fork", lens.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. Volume

fn million_random_messages_64k_ring() -> Outcome {
    const N: u64 = 1_000_000;
    const SEED: u64 = 0x5eed_0001;
    let (tx, rx) = byte_channel(65536).ctx("byte_channel")?;
    ensure!(rx.max_message_len() >= 4096, "max {}", rx.max_message_len());
    let mut child = forkipc::fork(tx, |tx| {
        child_exit(
            "million sender",
            (|| {
                let mut rng = Rng::new(SEED);
                let mut buf = vec![0u8; 4096];
                for seq in 0..N {
                    let len = rng.below(4097) as usize;
                    fill_payload(SEED ^ seq, &mut buf[..len]);
                    tx.send(&buf[..len])
                        .map_err(|e| format!("send {seq} ({len} bytes): {e:?}"))?;
                }
                Ok(())
            })(),
        )
    })
    .ctx("fork")?;
    let start = Instant::now();
    let mut bytes = 0u64;
    let r = (|| {
        let mut rng = Rng::new(SEED);
        let mut buf = Vec::with_capacity(4096);
        let mut scratch = Vec::with_capacity(4096);
        for seq in 0..N {
            let len = rng.below(4097) as usize;
            rx.recv_into(&mut buf)
                .map_err(|e| format!("recv_into {seq}: {e:?}"))?;
            check_payload(SEED ^ seq, len, &buf, &mut scratch)
                .map_err(|e| format!("{e} (message index {seq})"))?;
            bytes += len as u64;
        }
        match rx.recv_timeout(WAIT) {
            Err(RecvTimeoutError::Disconnected) => Ok(()),
            other => Err(format!(
                "after {N} messages: {:?} instead of Disconnected",
                other.map(|m| m.len())
            )),
        }
    })();
    let secs = start.elapsed().as_secs_f64();
    finish(&mut child, r)?;
    println!(
        "    {N} messages ({:.0} MiB) in {secs:.2} s: {:.0} messages/s, {:.0} MiB/s",
        bytes as f64 / 1048576.0,
        N as f64 / secs,
        bytes as f64 / 1048576.0 / secs
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Wrap patterns

fn messages_ending_exactly_at_data_end() -> Outcome {
    for cap in [64usize, 256, 4096] {
        let mut rng = Rng::new(0x2000 + cap as u64);
        let lens = wrap_pattern(cap, &mut rng);
        run_pattern_single(cap, &lens)?;
        run_pattern_forked(cap, &lens)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Maximum and minimum sizes

fn too_large_everywhere(tx: &ByteSender, rx: &ByteReceiver) -> Outcome {
    let max = tx.max_message_len();
    let big = vec![7u8; max + 1];
    let want = TooLarge { len: max + 1, max };
    ensure!(
        tx.send(&big) == Err(SendError::Refused((), want)),
        "send(max+1): {:?}",
        tx.send(&big)
    );
    ensure!(
        tx.try_send(&big) == Err(TrySendError::Refused((), want)),
        "try_send(max+1)"
    );
    let r = tx.send_timeout(&big, Duration::from_millis(10));
    ensure!(
        r == Err(SendTimeoutError::Refused((), want)),
        "send_timeout(max+1): {r:?}"
    );
    let r = tx.reserve(max + 1).map(|g| g.len());
    ensure!(
        r == Err(SendError::Refused((), want)),
        "reserve(max+1): {r:?}"
    );
    let r = tx.try_reserve(max + 1).map(|g| g.len());
    ensure!(
        r == Err(TrySendError::Refused((), want)),
        "try_reserve(max+1): {r:?}"
    );
    let r = tx.reserve(usize::MAX).map(|g| g.len());
    ensure!(
        r == Err(SendError::Refused(
            (),
            TooLarge {
                len: usize::MAX,
                max
            }
        )),
        "reserve(usize::MAX): {r:?}"
    );
    let r = rx.try_recv().map(|m| m.len());
    ensure!(
        r == Err(TryRecvError::Empty),
        "a refused message arrived: {r:?}"
    );
    Ok(())
}

fn empty_messages(tx: &ByteSender, rx: &mut ByteReceiver) -> Outcome {
    tx.send(&[]).ctx("send(empty)")?;
    tx.try_send(&[]).ctx("try_send(empty)")?;
    tx.send_timeout(&[], Duration::from_millis(10))
        .ctx("send_timeout(empty)")?;
    let g = tx.reserve(0).ctx("reserve(0)")?;
    ensure!(g.is_empty(), "reserve(0) grant has {} bytes", g.len());
    g.commit();
    let g = tx.try_reserve(0).ctx("try_reserve(0)")?;
    g.commit();
    let m = rx.recv_timeout(WAIT).ctx("recv empty")?;
    ensure!(m.is_empty(), "empty message arrived with {} bytes", m.len());
    let m = rx.try_recv().ctx("try_recv empty")?;
    ensure!(m.is_empty(), "empty message arrived with {} bytes", m.len());
    let mut buf = vec![1u8; 100];
    let n = rx.recv_into(&mut buf).ctx("recv_into empty")?;
    ensure!(
        n == 0 && buf.is_empty(),
        "recv_into empty: {n}, buffer {}",
        buf.len()
    );
    let m = rx.recv_ref().ctx("recv_ref empty")?;
    ensure!(m.is_empty(), "recv_ref empty: {} bytes", m.len());
    drop(m);
    let m = rx.try_recv_ref().ctx("try_recv_ref empty")?;
    ensure!(m.is_empty(), "try_recv_ref empty: {} bytes", m.len());
    drop(m);
    let r = rx.try_recv().map(|m| m.len());
    ensure!(r == Err(TryRecvError::Empty), "after five empties: {r:?}");
    Ok(())
}

fn maximum_size_messages() -> Outcome {
    for cap in [64usize, 4096, 65536] {
        let (tx, mut rx) = byte_channel(cap).ctx("byte_channel")?;
        let max = cap / 2 - 16;
        ensure!(
            tx.max_message_len() == max && rx.max_message_len() == max,
            "cap {cap}: max_message_len {} / {}, expected {max}",
            tx.max_message_len(),
            rx.max_message_len()
        );
        too_large_everywhere(&tx, &rx)?;
        empty_messages(&tx, &mut rx)?;

        // Single process: a maximum-size message at every (or many) starting offsets, sent with
        // each sending method in turn.
        let mut rng = Rng::new(0x3000 + cap as u64);
        let mut layout = Layout::new(cap);
        let mut scratch = Vec::new();
        let mut seq = 0u64;
        let step = (cap / 64).max(8);
        let mut lens = Vec::new();
        for (k, off) in (0..cap).step_by(step).enumerate() {
            let mut fill = Vec::new();
            move_to(&mut layout, off, max, &mut rng, &mut fill);
            for len in fill {
                tx.try_send(&payload(seq, len)).ctx("filler")?;
                let m = rx.try_recv().ctx("filler recv")?;
                check_payload(seq, len, &m, &mut scratch)?;
                lens.push(len);
                seq += 1;
            }
            let msg = payload(seq, max);
            match k % 4 {
                0 => tx.try_send(&msg).ctx("try_send(max)")?,
                1 => tx.send(&msg).ctx("send(max)")?,
                2 => tx.send_timeout(&msg, WAIT).ctx("send_timeout(max)")?,
                _ => {
                    let mut g = tx.try_reserve(max).ctx("try_reserve(max)")?;
                    ensure!(g.len() == max, "grant of {} bytes", g.len());
                    g.copy_from_slice(&msg);
                    g.commit();
                }
            }
            layout.place(max);
            let m = match k % 3 {
                0 => rx.try_recv().ctx("try_recv(max)")?,
                1 => rx.recv_timeout(WAIT).ctx("recv_timeout(max)")?,
                _ => rx.recv_ref().ctx("recv_ref(max)")?.to_vec(),
            };
            check_payload(seq, max, &m, &mut scratch)
                .map_err(|e| format!("cap {cap}, offset {off}: {e}"))?;
            lens.push(max);
            seq += 1;
            // Empty messages between, at this offset too.
            tx.try_send(&[]).ctx("try_send(empty)")?;
            layout.place(0);
            let m = rx.try_recv().ctx("try_recv(empty)")?;
            ensure!(m.is_empty(), "empty message arrived with {} bytes", m.len());
            lens.push(0);
            seq += 1;
        }
        drop((tx, rx));
        // The same sequence (filler, max, empty) across fork, with real concurrency.
        run_pattern_forked(cap, &lens)?;
        // Back-to-back maximum-size messages across fork.
        let lens = vec![max; 2000];
        run_pattern_forked(cap, &lens)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Zero copy

fn zero_copy_reserve_commit_and_recv_ref() -> Outcome {
    // Within one process: a dropped grant sends nothing; recv_into reuses the allocation.
    {
        let (tx, mut rx) = byte_channel(4096).ctx("byte_channel")?;
        {
            // Written, then abandoned (goes out of scope without `commit`).
            let mut g = tx.reserve(100).ctx("reserve")?;
            ensure!(g.len() == 100, "grant of {} bytes", g.len());
            g.fill(0xee);
        }
        let r = rx.try_recv().map(|m| m.len());
        ensure!(
            r == Err(TryRecvError::Empty),
            "after a dropped grant: {r:?}"
        );
        let r = rx.try_recv_ref().map(|m| m.len());
        ensure!(
            r == Err(TryRecvError::Empty),
            "try_recv_ref after a dropped grant: {r:?}"
        );
        let mut g = tx.try_reserve(50).ctx("try_reserve")?;
        fill_payload(1, &mut g);
        g.commit();
        let mut scratch = Vec::new();
        {
            let m = rx.try_recv_ref().ctx("try_recv_ref")?;
            check_payload(1, 50, &m, &mut scratch)?;
        }
        let r = rx.try_recv().map(|m| m.len());
        ensure!(
            r == Err(TryRecvError::Empty),
            "message delivered twice: {r:?}"
        );

        let mut buf = vec![0x55u8; 3000];
        buf.reserve(5000);
        let ptr = buf.as_ptr();
        for (seq, len) in [(2u64, 100usize), (3, 2000), (4, 0), (5, 7)] {
            tx.send(&payload(seq, len)).ctx("send")?;
            let n = rx.recv_into(&mut buf).ctx("recv_into")?;
            ensure!(n == len, "recv_into returned {n}, expected {len}");
            check_payload(seq, len, &buf, &mut scratch)?;
            ensure!(
                buf.as_ptr() == ptr,
                "recv_into reallocated a big enough buffer"
            );
        }
        let mut small = Vec::new();
        tx.send(&payload(6, 1500)).ctx("send")?;
        let n = rx.recv_into(&mut small).ctx("recv_into empty vec")?;
        ensure!(n == 1500, "recv_into returned {n}");
        check_payload(6, 1500, &small, &mut scratch)?;
    }

    // Across fork: the child writes in place (and abandons some grants); the parent reads with
    // recv_ref, recv_into and recv in turn.
    const N: u64 = 50_000;
    const SEED: u64 = 0x4000;
    let (tx, mut rx) = byte_channel(8192).ctx("byte_channel")?;
    let max = rx.max_message_len();
    let mut child = forkipc::fork(tx, |tx| {
        child_exit(
            "reserve/commit sender",
            (|| {
                let mut rng = Rng::new(SEED);
                let mut junk = Rng::new(!SEED);
                for seq in 0..N {
                    let len = rng.below(max as u64 + 1) as usize;
                    if junk.below(5) == 0 {
                        let n = junk.below(max as u64 + 1) as usize;
                        // Written, then abandoned without `commit`.
                        let mut g = tx.reserve(n).map_err(|e| format!("reserve {n}: {e:?}"))?;
                        g.fill(0xee);
                    }
                    let mut g = tx
                        .reserve(len)
                        .map_err(|e| format!("reserve {seq} ({len}): {e:?}"))?;
                    if g.len() != len {
                        return Err(format!("grant of {} bytes for {len}", g.len()));
                    }
                    fill_payload(SEED ^ seq, &mut g);
                    g.commit();
                }
                Ok(())
            })(),
        )
    })
    .ctx("fork")?;
    let r = (|| {
        let mut rng = Rng::new(SEED);
        let mut buf = Vec::new();
        let mut scratch = Vec::new();
        for seq in 0..N {
            let len = rng.below(max as u64 + 1) as usize;
            let what = format!("message {seq}");
            match seq % 3 {
                0 => {
                    let m = rx.recv_ref().ctx(&what)?;
                    check_payload(SEED ^ seq, len, &m, &mut scratch)?;
                }
                1 => {
                    let n = rx.recv_into(&mut buf).ctx(&what)?;
                    ensure!(n == len, "recv_into returned {n} for {len}");
                    check_payload(SEED ^ seq, len, &buf, &mut scratch)?;
                }
                _ => {
                    let m = rx.recv().ctx(&what)?;
                    check_payload(SEED ^ seq, len, &m, &mut scratch)?;
                }
            }
        }
        match rx.recv_timeout(WAIT) {
            Err(RecvTimeoutError::Disconnected) => Ok(()),
            other => Err(format!(
                "after the last message: {:?}",
                other.map(|m| m.len())
            )),
        }
    })();
    finish(&mut child, r)
}

// ---------------------------------------------------------------------------------------------
// 5. Scribbling

/// A receive result, reduced to what the checks need.
#[derive(Debug, PartialEq)]
enum Got {
    Msg(usize),
    Empty,
    Disconnected,
}

/// One receive by a randomly chosen method, with its duration bounded.
fn scribble_recv(rx: &mut ByteReceiver, rng: &mut Rng) -> Result<Got, String> {
    let t = Instant::now();
    let method = rng.below(10);
    let got = match method {
        0..=5 => match rx.try_recv() {
            Ok(m) => Got::Msg(m.len()),
            Err(TryRecvError::Empty) => Got::Empty,
            Err(TryRecvError::Disconnected) => Got::Disconnected,
        },
        6 | 7 => match rx.try_recv_ref() {
            Ok(m) => Got::Msg(m.len()),
            Err(TryRecvError::Empty) => Got::Empty,
            Err(TryRecvError::Disconnected) => Got::Disconnected,
        },
        _ => match rx.recv_timeout(Duration::from_millis(1)) {
            Ok(m) => Got::Msg(m.len()),
            Err(RecvTimeoutError::Timeout) => Got::Empty,
            Err(RecvTimeoutError::Disconnected) => Got::Disconnected,
        },
    };
    let el = t.elapsed();
    ensure!(
        el < Duration::from_secs(2),
        "receive method {method} took {el:?}"
    );
    Ok(got)
}

/// One send by a randomly chosen method: must end in time with an allowed result. Returns
/// whether the producer reported a disconnect.
fn scribble_send(tx: &ByteSender, rng: &mut Rng, seq: u64) -> Result<Option<bool>, String> {
    let max = tx.max_message_len();
    let len = rng.below(max.min(64) as u64 + 1) as usize;
    let msg = payload(seq, len);
    let t = Instant::now();
    let timed = rng.below(4) == 0;
    // (no room in time, disconnected, what it was)
    let r = if timed {
        tx.send_timeout(&msg, Duration::from_millis(1))
            .map_err(|e| (e.is_timeout(), e.is_disconnected(), format!("{e:?}")))
    } else {
        tx.try_send(&msg)
            .map_err(|e| (e.is_full(), e.is_disconnected(), format!("{e:?}")))
    };
    let el = t.elapsed();
    ensure!(el < Duration::from_secs(2), "send took {el:?}");
    match r {
        Ok(()) => Ok(Some(false)),
        Err((true, _, _)) => Ok(None),
        Err((_, true, _)) => Ok(Some(true)),
        Err((_, _, e)) => Err(format!("send of {len} bytes (timed: {timed}): {e}")),
    }
}

/// Writes a word (8-aligned index) into the data area.
///
/// # Safety
/// `data` must be a live data area of `cap` bytes, not borrowed by any live grant or message.
unsafe fn poke_word(data: *mut u8, cap: usize, idx: usize, v: u64) {
    assert!(idx & 7 == 0 && idx < cap);
    // SAFETY: inside the area (asserted), aligned; no live reference into it (caller).
    unsafe { data.add(idx).cast::<u64>().write_volatile(v) }
}

/// A header-looking value for index `idx` of a data area of `cap` bytes.
fn evil_header(rng: &mut Rng, cap: usize, idx: usize) -> u64 {
    let max = (cap / 2 - 16) as u64;
    let to_end = (cap - idx) as u64;
    let msg = 1u64 << 32;
    let pad = 2u64 << 32;
    match rng.below(14) {
        0 => msg | u32::MAX as u64,
        1 => msg | (max + 1),
        2 => msg | rng.below(max + 1),
        3 => msg | (to_end.saturating_sub(8) + 1 + rng.below(16)),
        4 => pad,
        5 => pad | (to_end - 8),
        6 => pad | rng.below(cap as u64),
        7 => pad | u32::MAX as u64,
        8 => 3u64 << 32 | rng.below(64),
        9 => rng.next_u64() & 0xffff_ffff_0000_0000 | rng.below(64),
        10 => u64::MAX,
        11 => 0,
        12 => msg,
        _ => rng.next_u64(),
    }
}

/// One scribble round: returns a short description of what was done (for failure messages).
fn scribble_round(round: u64, rng: &mut Rng, stats: &mut [u64; 4]) -> Outcome {
    let cap = [64usize, 128, 512, 4096][rng.below(4) as usize];
    let (tx, mut rx) = byte_channel(cap).ctx("byte_channel")?;
    let (hdr, data, real_cap) = forkipc::__testing::ring_memory(&rx);
    ensure!(real_cap == cap, "cap {real_cap}");
    let max = cap / 2 - 16;
    let mut layout = Layout::new(cap);
    let mut scratch = Vec::new();
    let mut seq = round << 20;
    // Move the start to a random position (through real traffic, so wraps happen).
    for _ in 0..rng.below(2 * cap as u64 / 8) {
        let len = rng.below(max as u64 + 1) as usize;
        tx.try_send(&payload(seq, len)).ctx("warm-up send")?;
        layout.place(len);
        let m = rx.try_recv().ctx("warm-up recv")?;
        check_payload(seq, len, &m, &mut scratch)?;
        seq += 1;
    }
    // A few valid messages in flight.
    let mut in_flight = Vec::new();
    for _ in 0..rng.below(6) {
        let len = rng.below(max.min(40) as u64 + 1) as usize;
        match tx.try_send(&payload(seq, len)) {
            Ok(()) => {
                layout.place(len);
                in_flight.push((seq, len));
                seq += 1;
            }
            Err(TrySendError::Full(())) => break,
            Err(e) => return Err(format!("valid send: {e:?}")),
        }
    }
    // SAFETY: `hdr` is the live ring header; `head` (a u64 at offset 0) is only read here.
    let head = unsafe { hdr.cast::<u64>().read_volatile() };
    let head_idx = (head as usize) & (cap - 1);
    let kind = rng.below(20);
    if kind < 3 {
        // Free space only: everything must keep working exactly.
        stats[0] += 1;
        let used: usize = {
            let mut l = Layout::new(cap);
            l.idx = head_idx;
            let mut u = 0;
            for &(_, len) in &in_flight {
                let before = l.idx;
                let (_, pad) = l.place(len);
                u += if pad.is_some() {
                    cap - before + record_size(len)
                } else {
                    record_size(len)
                };
            }
            u
        };
        ensure!(
            (head_idx + used) % cap == layout.idx,
            "layout model disagrees: head {head_idx} + {used} != {}",
            layout.idx
        );
        // Free bytes: from the header slot after the tail (kept 0) to the head.
        let free = cap - used - 8;
        let first = (layout.idx + 8) % cap;
        for _ in 0..1 + rng.below(8) {
            if free == 0 {
                break;
            }
            let off = (first + rng.below(free as u64) as usize) % cap;
            let b = rng.next_u64() as u8;
            // SAFETY: `off < cap`, inside the data area; no grant or message is alive.
            unsafe { data.add(off).write_volatile(b) };
        }
        if free >= 8 && rng.below(2) == 0 {
            // Whole words of nonsense over all the free space.
            for k in 0..free / 8 {
                let idx = (first + 8 * k) % cap;
                let v = evil_header(rng, cap, idx);
                // SAFETY: 8-aligned index inside the area; nothing borrowed.
                unsafe { poke_word(data, cap, idx, v) };
            }
        }
        for &(s, len) in &in_flight {
            let m = rx
                .try_recv()
                .ctx("in-flight message after a free-space scribble")?;
            check_payload(s, len, &m, &mut scratch)?;
        }
        let r = rx.try_recv().map(|m| m.len());
        ensure!(
            r == Err(TryRecvError::Empty),
            "after free-space scribble: {r:?}"
        );
        for _ in 0..rng.below(3 * cap as u64 / 8) {
            let len = rng.below(max as u64 + 1) as usize;
            tx.try_send(&payload(seq, len))
                .ctx("send after a free-space scribble")?;
            let m = rx.try_recv().ctx("recv after a free-space scribble")?;
            check_payload(seq, len, &m, &mut scratch)?;
            seq += 1;
        }
        return Ok(());
    }
    let scribble_data = kind < 15;
    let scribble_head = kind >= 12;
    if scribble_data {
        stats[1] += 1;
        for _ in 0..1 + rng.below(4) {
            match rng.below(10) {
                0..=5 => {
                    let idx = if rng.below(2) == 0 {
                        head_idx
                    } else if rng.below(4) == 0 {
                        0
                    } else {
                        8 * rng.below(cap as u64 / 8) as usize
                    };
                    let v = evil_header(rng, cap, idx);
                    // SAFETY: 8-aligned index inside the area; nothing borrowed.
                    unsafe { poke_word(data, cap, idx, v) };
                }
                6 | 7 => {
                    for _ in 0..1 + rng.below(32) {
                        let off = rng.below(cap as u64) as usize;
                        let b = rng.next_u64() as u8;
                        // SAFETY: `off < cap`; nothing borrowed.
                        unsafe { data.add(off).write_volatile(b) };
                    }
                }
                8 => {
                    let off = rng.below(cap as u64 - 8) as usize;
                    let v = rng.next_u64();
                    // SAFETY: `off + 8 <= cap`; unaligned write; nothing borrowed.
                    unsafe { data.add(off).cast::<u64>().write_unaligned(v) };
                }
                _ => {
                    for k in 0..cap / 8 {
                        let v = if rng.below(3) == 0 {
                            evil_header(rng, cap, 8 * k)
                        } else {
                            rng.next_u64()
                        };
                        // SAFETY: 8-aligned index inside the area; nothing borrowed.
                        unsafe { poke_word(data, cap, 8 * k, v) };
                    }
                }
            }
        }
    }
    if scribble_head {
        stats[2] += 1;
        let tail_pos = head + {
            let mut l = Layout::new(cap);
            l.idx = head_idx;
            in_flight
                .iter()
                .map(|&(_, len)| {
                    let before = l.idx;
                    let (_, pad) = l.place(len);
                    (if pad.is_some() { cap - before } else { 0 } + record_size(len)) as u64
                })
                .sum::<u64>()
        };
        let v = match rng.below(9) {
            0 => rng.next_u64(),
            1 => u64::MAX,
            2 => head + 1,
            3 => head.wrapping_sub(8),
            4 => tail_pos + 8,
            5 => tail_pos,
            6 => head + 8 * cap as u64,
            7 => 0,
            _ => head + 8 * rng.below(cap as u64 / 8),
        };
        // SAFETY: `head` is the u64 at offset 0 of the live ring header; the consumer writes it
        // only during our own calls.
        unsafe { hdr.cast::<u64>().write_volatile(v) };
    }

    // Now use both ends and watch.
    let mut buf = Vec::new();
    let mut rx_dead = false;
    let mut tx_dead = false;
    let mut empties = 0;
    for _ in 0..40 {
        if rng.below(3) == 0 {
            match scribble_send(&tx, rng, seq)? {
                Some(true) => {
                    let reason = tx.disconnect_reason();
                    ensure!(
                        reason == Some(DisconnectReason::Corrupted),
                        "sender disconnected with reason {reason:?}"
                    );
                    tx_dead = true;
                }
                Some(false) => {
                    ensure!(!tx_dead, "a send succeeded after a corruption disconnect");
                    seq += 1;
                }
                None => ensure!(!tx_dead, "Full/Timeout after a corruption disconnect"),
            }
            continue;
        }
        match scribble_recv(&mut rx, rng)? {
            Got::Msg(n) => {
                ensure!(
                    !rx_dead,
                    "a message ({n} bytes) after a corruption disconnect"
                );
                ensure!(n <= max, "a message of {n} bytes; max is {max}");
                empties = 0;
            }
            Got::Empty => {
                ensure!(!rx_dead, "Empty after a corruption disconnect");
                empties += 1;
                if empties > 3 && rng.below(2) == 0 {
                    break;
                }
            }
            Got::Disconnected => {
                let reason = rx.disconnect_reason();
                ensure!(
                    reason == Some(DisconnectReason::Corrupted),
                    "receiver disconnected with reason {reason:?}"
                );
                rx_dead = true;
            }
        }
    }
    if rx_dead {
        stats[3] += 1;
        for _ in 0..3 {
            let r = rx.try_recv().map(|m| m.len());
            ensure!(
                r == Err(TryRecvError::Disconnected),
                "after corruption: {r:?}"
            );
            let r = rx.recv_timeout(Duration::from_millis(1)).map(|m| m.len());
            ensure!(
                r == Err(RecvTimeoutError::Disconnected),
                "after corruption: {r:?}"
            );
            let r = rx.recv_into(&mut buf);
            ensure!(r.is_err(), "recv_into after corruption: {r:?}");
            let r = rx.try_recv_ref().map(|m| m.len());
            ensure!(
                r == Err(TryRecvError::Disconnected),
                "after corruption: {r:?}"
            );
        }
        ensure!(
            rx.disconnect_reason() == Some(DisconnectReason::Corrupted),
            "reason changed to {:?}",
            rx.disconnect_reason()
        );
    }
    if tx_dead {
        let r = tx.try_send(b"x");
        ensure!(
            r == Err(TrySendError::Disconnected(())),
            "send after corruption: {r:?}"
        );
    }
    Ok(())
}

fn scribbled_ring_never_misbehaves() -> Outcome {
    const ROUNDS: u64 = 2_000;
    const SEED: u64 = 0x5c21_bb1e;
    let mut child = forkipc::fork((), |()| {
        // Any huge allocation would fail (and abort) instead of thrashing.
        let lim = libc::rlimit {
            rlim_cur: 1 << 30,
            rlim_max: 1 << 30,
        };
        // SAFETY: `lim` is a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
        let mut stats = [0u64; 4];
        for round in 0..ROUNDS {
            let mut rng = Rng::new(mix(SEED ^ round));
            if let Err(e) = scribble_round(round, &mut rng, &mut stats) {
                eprintln!("scribble round {round} (seed {SEED:#x}): {e}");
                return 1;
            }
        }
        println!(
            "    {ROUNDS} rounds: {} free-space, {} data, {} head scribbles; {} receivers \
             disconnected as Corrupted",
            stats[0], stats[1], stats[2], stats[3]
        );
        0
    })
    .ctx("fork")?;
    expect_success(&mut child, Duration::from_secs(100))
}

// ---------------------------------------------------------------------------------------------
// 6. Backpressure

fn full_ring_backpressure() -> Outcome {
    // One process.
    let (tx, rx) = byte_channel(4096).ctx("byte_channel")?;
    let mut sent = 0u64;
    loop {
        match tx.try_send(&payload(sent, 100)) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full(())) => break,
            Err(e) => return Err(format!("try_send: {e:?}")),
        }
        ensure!(sent < 1000, "never Full");
    }
    let t = Instant::now();
    let r = tx.send_timeout(&payload(9999, 100), Duration::from_millis(10));
    let el = t.elapsed();
    ensure!(
        r == Err(SendTimeoutError::Timeout(())),
        "send_timeout on a full ring: {r:?}"
    );
    ensure!(
        el >= Duration::from_millis(9) && el < Duration::from_secs(2),
        "send_timeout(10ms) returned after {el:?}"
    );
    let r = tx.try_reserve(100).map(|g| g.len());
    ensure!(
        r == Err(TrySendError::Full(())),
        "try_reserve on a full ring: {r:?}"
    );
    let r = tx.try_send(&payload(9999, 100));
    ensure!(
        r == Err(TrySendError::Full(())),
        "try_send on a full ring: {r:?}"
    );
    println!(
        "    4096-byte ring holds {sent} messages of 100 bytes; send_timeout(10ms) took {el:?}"
    );
    let mut scratch = Vec::new();
    for seq in 0..sent {
        let m = rx.try_recv().ctx("draining")?;
        check_payload(seq, 100, &m, &mut scratch)?;
    }
    let r = rx.try_recv().map(|m| m.len());
    ensure!(r == Err(TryRecvError::Empty), "after draining: {r:?}");
    tx.try_send(&payload(sent, 100))
        .ctx("try_send after draining")?;
    let m = rx.try_recv().ctx("recv after draining")?;
    check_payload(sent, 100, &m, &mut scratch)?;

    // Across fork: the child fills the ring, times out once, then blocks in `send` until the
    // parent drains; it reports on a second channel.
    let (tx, rx) = byte_channel(4096).ctx("byte_channel")?;
    let (ctl_tx, ctl_rx) = byte_channel(256).ctx("control channel")?;
    const MORE: u64 = 2000;
    let mut child = forkipc::fork((tx, ctl_tx), |(tx, ctl_tx)| {
        child_exit(
            "blocked sender",
            (|| {
                let mut n = 0u64;
                while tx.try_send(&payload(n, 100)).is_ok() {
                    n += 1;
                }
                let r = tx.send_timeout(&payload(u64::MAX, 100), Duration::from_millis(10));
                if r != Err(SendTimeoutError::Timeout(())) {
                    return Err(format!("send_timeout on a full ring: {r:?}"));
                }
                ctl_tx.send(&n.to_le_bytes()).ctx("report")?;
                // Blocks until the parent drains.
                let t = Instant::now();
                tx.send(&payload(n, 100)).ctx("blocked send")?;
                let blocked = t.elapsed();
                for seq in n + 1..n + 1 + MORE {
                    tx.send(&payload(seq, 100)).ctx("send")?;
                }
                ctl_tx
                    .send(&(blocked.as_micros() as u64).to_le_bytes())
                    .ctx("report")?;
                Ok(())
            })(),
        )
    })
    .ctx("fork")?;
    let r = (|| {
        let m = ctl_rx.recv_timeout(WAIT).ctx("child's count")?;
        let n = u64::from_le_bytes(m.as_slice().try_into().ctx("count")?);
        // Let the child go to sleep in `send`.
        std::thread::sleep(Duration::from_millis(100));
        let mut scratch = Vec::new();
        for seq in 0..n + 1 + MORE {
            let m = rx.recv_timeout(WAIT).ctx(&format!("message {seq}"))?;
            check_payload(seq, 100, &m, &mut scratch)?;
        }
        let m = ctl_rx.recv_timeout(WAIT).ctx("child's blocked time")?;
        let blocked = u64::from_le_bytes(m.as_slice().try_into().ctx("time")?);
        println!("    child's send was blocked for {blocked} µs (the parent slept 100 ms)");
        ensure!(
            blocked >= 50_000,
            "the child's send did not block ({blocked} µs)"
        );
        match rx.recv_timeout(WAIT) {
            Err(RecvTimeoutError::Disconnected) => Ok(()),
            other => Err(format!("at the end: {:?}", other.map(|m| m.len()))),
        }
    })();
    finish(&mut child, r)
}

// ---------------------------------------------------------------------------------------------
// 7. Wait policies

fn ping_pong(policy: WaitPolicy) -> Outcome {
    const N: u64 = 10_000;
    let (ping_tx, ping_rx) = byte_channel(4096).ctx("ping channel")?;
    let (pong_tx, pong_rx) = byte_channel(4096).ctx("pong channel")?;
    let mut child = forkipc::fork((ping_rx, pong_tx), move |(ping_rx, pong_tx)| {
        ping_rx.set_wait_policy(policy);
        pong_tx.set_wait_policy(policy);
        child_exit(
            "echo",
            (|| {
                let mut buf = Vec::new();
                for seq in 0..N {
                    ping_rx
                        .recv_into(&mut buf)
                        .map_err(|e| format!("ping {seq}: {e:?}"))?;
                    buf.reverse();
                    pong_tx
                        .send(&buf)
                        .map_err(|e| format!("pong {seq}: {e:?}"))?;
                }
                Ok(())
            })(),
        )
    })
    .ctx("fork")?;
    ping_tx.set_wait_policy(policy);
    pong_rx.set_wait_policy(policy);
    let t = Instant::now();
    let r = (|| {
        let mut buf = Vec::new();
        let mut scratch = Vec::new();
        for seq in 0..N {
            let len = (seq % 57) as usize;
            let mut msg = payload(seq, len);
            ping_tx.send(&msg).ctx("ping")?;
            pong_rx.recv_into(&mut buf).ctx("pong")?;
            buf.reverse();
            check_payload(seq, len, &buf, &mut scratch)?;
            msg.clear();
        }
        Ok(())
    })();
    let el = t.elapsed();
    finish(&mut child, r).map_err(|e| format!("{policy:?}: {e}"))?;
    println!(
        "    {policy:?}: {N} round trips in {:.2} s ({:.1} µs each)",
        el.as_secs_f64(),
        el.as_secs_f64() * 1e6 / N as f64
    );
    Ok(())
}

fn wait_policies() -> Outcome {
    for policy in [
        WaitPolicy::Spin,
        WaitPolicy::Block,
        WaitPolicy::Adaptive(Duration::from_micros(5)),
    ] {
        ping_pong(policy)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Idle receivers sleep

fn idle_receiver_sleeps() -> Outcome {
    let (tx, rx) = byte_channel(4096).ctx("byte_channel")?;
    let (ctl_tx, ctl_rx) = byte_channel(64).ctx("control channel")?;
    let mut child = forkipc::fork((tx, ctl_rx), |(tx, ctl_rx)| {
        // Idle, alive, holding the sender, until told to quit.
        let r = ctl_rx.recv_timeout(Duration::from_secs(30));
        drop(tx);
        if r.is_ok() { 0 } else { 1 }
    })
    .ctx("fork")?;
    let r = (|| {
        let cpu0 = cpu_time();
        let t = Instant::now();
        let r = rx.recv_timeout(Duration::from_secs(2)).map(|m| m.len());
        let el = t.elapsed();
        let cpu = cpu_time() - cpu0;
        ensure!(r == Err(RecvTimeoutError::Timeout), "recv_timeout: {r:?}");
        ensure!(
            el >= Duration::from_millis(1900) && el < Duration::from_secs(10),
            "recv_timeout(2s) returned after {el:?}"
        );
        let share = cpu.as_secs_f64() / el.as_secs_f64();
        println!(
            "    idle recv_timeout(2s): {el:?} elapsed, {cpu:?} CPU ({:.2}% of a CPU)",
            share * 100.0
        );
        let idle = share < 0.05;
        ensure!(idle, "an idle receiver used {:.1}% of a CPU", share * 100.0);
        ctl_tx.send(b"quit").ctx("quit")?;
        Ok(())
    })();
    finish(&mut child, r)
}

// ---------------------------------------------------------------------------------------------
// Death of a peer while blocked, per policy (the contract: noticed within 100 ms; we allow 2 s)

fn sleeper(_: ()) -> i32 {
    std::thread::sleep(Duration::from_secs(60));
    0
}

/// A child blocked in `recv` (`receiver == true`) or `send` with `policy`, whose peer (another
/// child) is SIGKILLed; it must report the disconnect on a second channel within 2 s.
fn blocked_notices_death(policy: WaitPolicy, receiver: bool) -> Outcome {
    let (tx, rx) = byte_channel(64).ctx("byte_channel")?;
    let (rep_tx, rep_rx) = byte_channel(64).ctx("report channel")?;
    let side = if receiver { "recv" } else { "send" };
    // The peer: holds its end and sleeps.
    let (mut waiter, mut peer) = if receiver {
        let peer = forkipc::fork(tx, |tx| {
            let r = sleeper(());
            drop(tx);
            r
        })
        .ctx("fork peer")?;
        let waiter = forkipc::fork((rx, rep_tx), move |(rx, rep_tx)| {
            rx.set_wait_policy(policy);
            let r = rx.recv();
            let _ = rep_tx.send(&[u8::from(r.is_err())]);
            0
        })
        .ctx("fork waiter")?;
        (waiter, peer)
    } else {
        let peer = forkipc::fork(rx, |rx| {
            let r = sleeper(());
            drop(rx);
            r
        })
        .ctx("fork peer")?;
        let waiter = forkipc::fork((tx, rep_tx), move |(tx, rep_tx)| {
            tx.set_wait_policy(policy);
            // Fill the ring, then block.
            while tx.try_send(&[1; 8]).is_ok() {}
            let r = tx.send(&[2; 8]);
            let _ = rep_tx.send(&[u8::from(r == Err(SendError::Disconnected(())))]);
            0
        })
        .ctx("fork waiter")?;
        (waiter, peer)
    };
    std::thread::sleep(Duration::from_millis(200));
    let killed = Instant::now();
    let _ = peer.kill();
    let _ = support::wait_child(&mut peer, Duration::from_secs(10));
    let r = match rep_rx.recv_timeout(Duration::from_secs(2)) {
        Ok(m) if m == [1] => {
            println!(
                "    {policy:?}: blocked {side} noticed the peer's death after {:?}",
                killed.elapsed()
            );
            Ok(())
        }
        Ok(m) => Err(format!(
            "{policy:?}: blocked {side} returned the wrong result {m:?}"
        )),
        Err(e) => Err(format!(
            "{policy:?}: blocked {side} did not notice the peer's SIGKILL within 2 s ({e:?})"
        )),
    };
    finish(&mut waiter, r)
}

fn blocked_waiters_notice_peer_death_under_every_policy() -> Outcome {
    let mut failures = Vec::new();
    for policy in [
        WaitPolicy::default(),
        WaitPolicy::Block,
        WaitPolicy::Adaptive(Duration::from_micros(5)),
        WaitPolicy::Spin,
    ] {
        for receiver in [true, false] {
            if let Err(e) = blocked_notices_death(policy, receiver) {
                println!("    {e}");
                failures.push(e);
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}
