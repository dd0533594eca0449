//! The ring-consumer fuzz body, shared by the cargo-fuzz target
//! (`fuzz/fuzz_targets/ring_consumer.rs`) and the `fuzz_corpus_deterministic` case of
//! `tests/fault_campaign.rs`; both include this file with `#[path]`. It lives under
//! `tests/support/` so cargo does not build it as a test binary of its own.
//!
//! [`ring_consumer`] makes a small byte channel, sends a few valid messages (and reads some back,
//! checking them byte for byte), then lays the input over the ring's shared memory (the data
//! area and the ring header: positions, wait words, closed flags, owner presence references),
//! the way a buggy or dying peer could leave it, and drives both ends with non-blocking or
//! zero-timeout operations. It panics, which is what the fuzzer reports as a crash, if any
//! operation returns a message longer than `max_message_len()`, accepts an oversized send, or
//! panics inside the library. A blocking operation is used only where the library promises it
//! returns at once (the end already reports a disconnect reason).
//!
//! Input layout (every byte optional; missing bytes read as 0):
//!
//! ```text
//! [0]  data-area size: 64 << (b % 5)          (64 ..= 1024 bytes)
//! [1]  valid messages sent first (b % 16)      [2] of them read back before the overlay (b % 16)
//! [3]  overlay mode bits: 0-1 data-area overlay kind, 2 overlay the header, 3 patch `head` only
//! [4]  data-area offset of a raw overlay, in 8-byte units
//! [5..] the overlay bytes, then the operation script (one byte per operation)
//! ```

#![allow(dead_code)]

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use forkipc::{RecvTimeoutError, TooLarge, TryRecvError, TrySendError};

/// What one run saw (for the deterministic corpus's summary).
#[derive(Default, Debug, Clone, Copy)]
pub struct FuzzTally {
    /// Messages received after the overlay (each checked against `max_message_len`).
    pub messages: u64,
    /// Receives that reported `Disconnected` (corruption found, or a scribbled flag).
    pub disconnected: u64,
    /// Receives that found nothing.
    pub empty: u64,
    /// Sends accepted after the overlay.
    pub sends_ok: u64,
    /// Sends that failed (`Full`, `Disconnected`, `Timeout`, `Refused` as too large).
    pub sends_refused: u64,
    /// Runs whose receiver ended up reporting `Corrupted`.
    pub corrupted_runs: u64,
}

fn byte_at(input: &[u8], i: usize) -> u8 {
    input.get(i).copied().unwrap_or(0)
}

/// The content of valid message `k` of length `len`.
fn valid_message(k: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (k as u8))
        .collect()
}

/// Writes one byte of shared memory the way another process would.
///
/// # Safety
/// `p` must point into a live mapping.
unsafe fn poke_u8(p: *mut u8, v: u8) {
    // SAFETY: in bounds of a live mapping (caller); an atomic byte store, as a peer's write.
    unsafe { (*(p as *const AtomicU8)).store(v, Ordering::Relaxed) };
}

/// Writes one aligned word of shared memory.
///
/// # Safety
/// `p` must be 8-aligned and point at 8 bytes of a live mapping.
unsafe fn poke_u64(p: *mut u8, v: u64) {
    // SAFETY: aligned, in bounds (caller); an atomic store, as a peer's write.
    unsafe { (*(p as *const AtomicU64)).store(v, Ordering::Relaxed) };
}

/// Runs one input. Panics on a violated promise.
pub fn ring_consumer(input: &[u8]) -> FuzzTally {
    let mut t = FuzzTally::default();
    let cap_req = 64usize << (byte_at(input, 0) % 5);
    let (tx, mut rx) = forkipc::byte_channel(cap_req).expect("byte_channel");
    let max = rx.max_message_len();
    assert_eq!(max, tx.max_message_len(), "both ends agree on the maximum");
    let (hdr, data, cap) = forkipc::__testing::ring_memory(&rx);
    assert!(
        cap >= cap_req && cap.is_power_of_two(),
        "data area of {cap} bytes"
    );
    assert!(
        max < cap,
        "max message {max} must be below the data area {cap}"
    );
    let hdr_len = data as usize - hdr as usize;

    // 1. Valid traffic first: it must round-trip exactly.
    let nvalid = byte_at(input, 1) as usize % 16;
    let nread = byte_at(input, 2) as usize % 16;
    let mode = byte_at(input, 3);
    let at = byte_at(input, 4) as usize * 8;
    let body = input.get(5..).unwrap_or(&[]);
    let mut sent = Vec::new();
    for k in 0..nvalid {
        let len = (byte_at(body, k) as usize * 7) % (max + 1);
        let msg = valid_message(k, len);
        match tx.try_send(&msg) {
            Ok(()) => sent.push(msg),
            Err(TrySendError::Full(())) => break,
            Err(e) => panic!("valid send {k} of {len} bytes failed before any overlay: {e:?}"),
        }
    }
    for (k, want) in sent.iter().enumerate().take(nread) {
        match rx.try_recv() {
            Ok(got) => assert_eq!(&got, want, "valid message {k} came back different"),
            Err(e) => panic!("valid message {k} not received before any overlay: {e:?}"),
        }
    }

    // 2. The overlay: what a buggy or dying peer leaves in shared memory.
    let split = body
        .len()
        .min(cap + hdr_len)
        .min(body.len() / 2 + body.len() % 2);
    let (overlay, script) = body.split_at(split);
    match mode & 3 {
        // Raw bytes over the data area from `at`, wrapping.
        0 => {
            for (i, &b) in overlay.iter().take(cap).enumerate() {
                // SAFETY: the index is reduced modulo the data area's size.
                unsafe { poke_u8(data.add((at + i) & (cap - 1)), b) };
            }
        }
        // Raw words at chosen 8-aligned places: [place, 8 value bytes] per patch.
        1 => {
            for p in overlay.chunks_exact(9) {
                let idx = (p[0] as usize * 8) & (cap - 1);
                let v = u64::from_le_bytes(p[1..9].try_into().expect("8 bytes"));
                // SAFETY: 8-aligned (the data area is 128-aligned), inside the data area.
                unsafe { poke_u64(data.add(idx), v) };
            }
        }
        // Plausible record headers (kind 0..3, lengths near the ring's scale) at chosen places.
        2 => {
            for p in overlay.chunks_exact(4) {
                let idx = (p[0] as usize * 8) & (cap - 1);
                let kind = u64::from(p[1] % 4);
                let len = u64::from(u16::from_le_bytes([p[2], p[3]])) % (2 * cap as u64 + 16);
                // SAFETY: as above.
                unsafe { poke_u64(data.add(idx), kind << 32 | len) };
            }
        }
        // Raw bytes over header and data area alike, from the header's start.
        _ => {
            for (i, &b) in overlay.iter().take(hdr_len + cap).enumerate() {
                // SAFETY: `i < hdr_len + cap`: the header, its padding, and the data area are
                // one contiguous part of the ring's mapping.
                unsafe { poke_u8(hdr.add(i), b) };
            }
        }
    }
    if mode & 4 != 0 {
        // The header's words: consumer position, both sides' wait words, closed flags and owner
        // presence references (the first `hdr_len` bytes of the mapping).
        for (i, &b) in overlay.iter().rev().take(hdr_len).enumerate() {
            // SAFETY: `i < hdr_len`, inside the header.
            unsafe { poke_u8(hdr.add((i * 13) % hdr_len), b) };
        }
    }
    if mode & 8 != 0 {
        // Only the consumer position, which the producer reads and must validate.
        let v = u64::from_le_bytes(std::array::from_fn(|i| byte_at(overlay, i)));
        // SAFETY: the header starts with the 8-aligned consumer position.
        unsafe { poke_u64(hdr, v) };
    }

    // 3. Drive both ends, never blocking.
    let script: &[u8] = if script.is_empty() {
        &[0, 1, 2, 0]
    } else {
        script
    };
    let mut buf = Vec::new();
    for (step, &op) in script.iter().take(64).enumerate() {
        match op % 8 {
            0 => match rx.try_recv() {
                Ok(m) => {
                    assert!(m.len() <= max, "try_recv returned {} > max {max}", m.len());
                    t.messages += 1;
                }
                Err(TryRecvError::Empty) => t.empty += 1,
                Err(TryRecvError::Disconnected) => t.disconnected += 1,
            },
            1 => match rx.recv_timeout(Duration::ZERO) {
                Ok(m) => {
                    assert!(
                        m.len() <= max,
                        "recv_timeout returned {} > max {max}",
                        m.len()
                    );
                    t.messages += 1;
                }
                Err(RecvTimeoutError::Timeout) => t.empty += 1,
                Err(RecvTimeoutError::Disconnected) => t.disconnected += 1,
            },
            2 => match rx.try_recv_ref() {
                Ok(m) => {
                    assert!(m.len() <= max, "try_recv_ref lent {} > max {max}", m.len());
                    // Touch every byte: the slice must lie inside the mapping.
                    let sum = m.iter().fold(0u8, |a, &b| a.wrapping_add(b));
                    std::hint::black_box(sum);
                    t.messages += 1;
                }
                Err(TryRecvError::Empty) => t.empty += 1,
                Err(TryRecvError::Disconnected) => t.disconnected += 1,
            },
            3 => {
                // A blocking receive, only where it must return at once: the end already knows
                // it is disconnected (corrupt ring, closed or dead peer), or a message is ready.
                if rx.disconnect_reason().is_some() {
                    match rx.recv_into(&mut buf) {
                        Ok(n) => {
                            assert!(n <= max && buf.len() == n, "recv_into gave {n} > {max}");
                            t.messages += 1;
                        }
                        Err(_) => t.disconnected += 1,
                    }
                }
            }
            4 | 5 => {
                let len = (byte_at(script, step + 1) as usize * 11) % (max + 17);
                let msg = valid_message(step, len);
                // The one failure that says something about the message: a refusal.
                let r = if op % 8 == 4 {
                    tx.try_send(&msg).map_err(|e| e.refusal().copied())
                } else {
                    tx.send_timeout(&msg, Duration::ZERO)
                        .map_err(|e| e.refusal().copied())
                };
                match r {
                    Ok(()) => {
                        assert!(len <= max, "a {len}-byte send was accepted (max {max})");
                        t.sends_ok += 1;
                    }
                    Err(Some(TooLarge { len: l, max: m })) => {
                        assert!(l == len && m == max && len > max, "bad TooLarge({l}, {m})");
                        t.sends_refused += 1;
                    }
                    Err(None) => t.sends_refused += 1,
                }
            }
            6 => {
                let len = (byte_at(script, step + 1) as usize * 5) % (max + 1);
                match tx.try_reserve(len) {
                    Ok(mut g) => {
                        assert_eq!(g.len(), len, "a grant of the wrong size");
                        g.fill(0xa5);
                        if op & 8 != 0 {
                            g.commit();
                        }
                        t.sends_ok += 1;
                    }
                    Err(_) => t.sends_refused += 1,
                }
            }
            _ => {
                // Reasons are computed from shared memory too: must not panic.
                std::hint::black_box((rx.disconnect_reason(), tx.disconnect_reason()));
                std::hint::black_box(tx.is_disconnected());
            }
        }
    }
    if rx.disconnect_reason() == Some(forkipc::DisconnectReason::Corrupted) {
        t.corrupted_runs += 1;
    }
    t
}
