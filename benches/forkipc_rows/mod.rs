//! forkipc's own measurements, each shaped like the baseline it is compared with (same CPUs,
//! same repetition scheme, same message sizes) so that the ratio is the library's overhead.
//!
//! Every measurement is a [`Session`] that forks its peer with [`forkipc::fork`], handing it
//! the endpoints it uses; the parent times `iters(..)` operations per repetition and the child
//! serves as many, parked on a [`Gate`] between repetitions, then returns after the last
//! (which drops, so closes, its endpoints).
//! Every message carries a sequence number or a checksum that the receiver verifies, so a
//! measurement of a broken channel fails instead of reporting a figure.
//!
//! Nothing here can hang: a child that dies is noticed by the library (its peer's blocking
//! call returns `Disconnected`, which panics the parent), except under `WaitPolicy::Spin`,
//! which never looks, and in [`Gate::open_next`]; the one-minute watchdog, re-armed before
//! each repetition, aborts the bench then. The parent's death kills the child
//! (`PR_SET_PDEATHSIG`).

use std::hint::black_box;

use forkipc::{WaitPolicy, byte_channel, channel, duplex};

use crate::baselines::{
    FUTEX_RTT, LAMPORT_64B, MEMCPY_1MIB, PIPE_RTT, RING_1MIB, SOCKET_RTT, SPIN_RTT,
    STREAM_CAPACITIES,
};
use crate::support::{
    CHILD_CPU, Gate, Row, Session, Unit, fork_ipc, iters, ns_per_op, per_sec, reap_child, rounds,
    time,
};

/// Row names, for `Row::vs` and the targets.
pub const ADAPTIVE_RTT: &str = "forkipc channel<u64> RTT, Adaptive(50 µs)";
pub const BLOCK_RTT: &str = "forkipc channel<u64> RTT, Block";
pub const SPIN_POLICY_RTT: &str = "forkipc channel<u64> RTT, Spin";
/// `channel::<[u8; 64]>(capacity)` at each of [`STREAM_CAPACITIES`].
pub const TYPED_64B: [&str; 3] = [
    "forkipc channel<[u8; 64]>(64)",
    "forkipc channel<[u8; 64]>(1024)",
    "forkipc channel<[u8; 64]>(4096)",
];
/// A `byte_channel` with the data area of the typed channel of the same capacity.
pub const BYTES_64B: [&str; 3] = [
    "forkipc byte_channel, 64 B msgs, for 64",
    "forkipc byte_channel, 64 B msgs, for 1024",
    "forkipc byte_channel, 64 B msgs, for 4096",
];
pub const COPY_1MIB: &str = "forkipc byte_channel 1 MiB, send + recv_into";
pub const ZERO_COPY_1MIB: &str = "forkipc byte_channel 1 MiB, zero-copy";

const MIB: usize = 1 << 20;

/// Messages each direction of the ping-pong duplex holds. Only one is ever in flight; a small
/// ring keeps the few cache lines it cycles through hot.
const RTT_CAPACITY: usize = 16;

/// Data-area bytes of the 1 MiB rings: room for 3 messages of 1 MiB (the largest message is
/// half the area minus 16 bytes), against the Lamport ring's 4 slots.
const STREAM_1MIB_RING: usize = 4 << 20;

/// Round trips: forkipc with each wait policy, against the spin and futex ping-pongs.
/// Adaptive and Spin answer within one spin phase, like the spin ping-pong; Block sleeps every
/// hop, like the futex ping-pong, so it gets the futex ping-pong's count.
pub fn rtt() -> Vec<Session> {
    let ns = |name| Row::new(name, Unit::Nanos);
    vec![
        channel_rtt(
            ns(ADAPTIVE_RTT).vs(SPIN_RTT),
            WaitPolicy::default(),
            300_000,
        ),
        channel_rtt(
            ns(BLOCK_RTT).vs(FUTEX_RTT).vs(PIPE_RTT).vs(SOCKET_RTT),
            WaitPolicy::Block,
            3_000,
        ),
        channel_rtt(ns(SPIN_POLICY_RTT).vs(SPIN_RTT), WaitPolicy::Spin, 300_000),
    ]
}

/// 64 B message streams at each compared capacity, against the Lamport ring of that many
/// slots.
pub fn msgs_64b() -> Vec<Session> {
    let msgs = |name, base| Row::new(name, Unit::MsgsPerSec).vs(base);
    let mut v = Vec::new();
    for (k, cap) in STREAM_CAPACITIES.into_iter().enumerate() {
        v.push(typed_64b_msgs_per_sec(
            msgs(TYPED_64B[k], LAMPORT_64B[k]),
            cap,
        ));
        v.push(bytes_64b_msgs_per_sec(
            msgs(BYTES_64B[k], LAMPORT_64B[k]),
            cap,
        ));
    }
    v
}

/// 1 MiB message streams, against the Lamport ring and memcpy.
pub fn mib() -> Vec<Session> {
    let bytes = |name| Row::new(name, Unit::BytesPerSec);
    vec![
        copy_1mib_bytes_per_sec(bytes(COPY_1MIB).vs(RING_1MIB).vs(MEMCPY_1MIB)),
        zero_copy_1mib_bytes_per_sec(bytes(ZERO_COPY_1MIB).vs(MEMCPY_1MIB).vs(RING_1MIB)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Round trips

/// Ping-pong over a `duplex::<u64, u64>` with `policy` on all four ends: the parent sends `i`,
/// the child receives it and sends it back, the parent receives the echo and checks it.
/// `full_count` round trips per repetition (÷10 in quick mode).
fn channel_rtt(row: Row, policy: WaitPolicy, full_count: u64) -> Session {
    let n = iters(full_count);
    let (me, peer) = duplex::<u64, u64>(RTT_CAPACITY).expect("duplex");
    me.set_wait_policy(policy);
    let gate = Gate::new();
    let child = fork_ipc(CHILD_CPU, peer, |peer| {
        peer.set_wait_policy(policy);
        let mut i = 0;
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                i += 1;
                let got = peer.recv().map_err(|e| format!("echo {i}: recv: {e}"))?;
                if got != i {
                    return Err(format!("echo {i}: received {got}"));
                }
                peer.send(got).map_err(|e| format!("echo {i}: send: {e}"))?;
            }
        }
        Ok(())
    });
    let mut i = 0u64;
    let rep = move || {
        gate.open_next();
        let elapsed = time(|| {
            for _ in 0..n {
                i += 1;
                me.send(i).expect("parent send (did the child die?)");
                let echo = me.recv().expect("parent recv (did the child die?)");
                assert_eq!(echo, i, "wrong echo");
            }
        });
        ns_per_op(elapsed, n)
    };
    Session::new(row, rep, move || reap_child(child))
}

// ---------------------------------------------------------------------------------------------
// 64 B streams

/// A `channel::<[u8; 64]>(capacity)` from the child to the parent: the child sends messages
/// stamped with their sequence number, as fast as the ring lets it; the parent times
/// `iters(5M)` receives per repetition and checks every stamp. Messages per second.
/// (The channel holds *at least* `capacity` messages: its data area is a power of two, each
/// message taking 72 bytes with its header; 64 asks for 8 KiB, which holds 112.)
fn typed_64b_msgs_per_sec(row: Row, capacity: usize) -> Session {
    let n = iters(5_000_000);
    let (tx, rx) = channel::<[u8; 64]>(capacity).expect("channel");
    let gate = Gate::new();
    let child = fork_ipc(CHILD_CPU, tx, |tx| {
        let mut msg = [0xa5u8; 64];
        let mut seq = 0u64;
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                msg[..8].copy_from_slice(&seq.to_ne_bytes());
                tx.send(msg).map_err(|e| format!("message {seq}: {e}"))?;
                seq += 1;
            }
        }
        Ok(())
    });
    let mut seq = 0u64;
    let rep = move || {
        gate.open_next();
        let elapsed = time(|| {
            for _ in 0..n {
                let msg = rx.recv().expect("parent recv (did the child die?)");
                assert_eq!(stamp(&msg), seq, "channel delivered a wrong message");
                seq += 1;
            }
        });
        per_sec(elapsed, n)
    };
    Session::new(row, rep, move || reap_child(child))
}

/// As [`typed_64b_msgs_per_sec`] with a `byte_channel` whose data area is that of
/// `channel::<[u8; 64]>(capacity)`: `send(&[u8])` in the child, `recv_into` a reused `Vec` in
/// the parent (no allocation per message). `iters(5M)` messages per repetition.
fn bytes_64b_msgs_per_sec(row: Row, capacity: usize) -> Session {
    let n = iters(5_000_000);
    let (_, probe) = channel::<[u8; 64]>(capacity).expect("channel");
    let (_, _, data_bytes) = forkipc::__testing::typed_ring_memory(&probe);
    drop(probe);
    let (tx, rx) = byte_channel(data_bytes).expect("byte_channel");
    let gate = Gate::new();
    let child = fork_ipc(CHILD_CPU, tx, |tx| {
        let mut msg = [0xa5u8; 64];
        let mut seq = 0u64;
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                msg[..8].copy_from_slice(&seq.to_ne_bytes());
                tx.send(&msg).map_err(|e| format!("message {seq}: {e}"))?;
                seq += 1;
            }
        }
        Ok(())
    });
    let mut buf = Vec::with_capacity(64);
    let mut seq = 0u64;
    let rep = move || {
        gate.open_next();
        let elapsed = time(|| {
            for _ in 0..n {
                let len = rx
                    .recv_into(&mut buf)
                    .expect("parent recv (did the child die?)");
                assert_eq!(len, 64, "wrong message length");
                assert_eq!(stamp(&buf), seq, "channel delivered a wrong message");
                seq += 1;
            }
        });
        per_sec(elapsed, n)
    };
    Session::new(row, rep, move || reap_child(child))
}

/// The sequence number in a message's first 8 bytes.
fn stamp(msg: &[u8]) -> u64 {
    u64::from_ne_bytes(msg[..8].try_into().expect("message shorter than 8 bytes"))
}

// ---------------------------------------------------------------------------------------------
// 1 MiB streams

/// A 4 MiB `byte_channel` from the child to the parent, 1 MiB messages, copied at both ends
/// like the Lamport ring: the child `send`s a 1 MiB buffer (one copy in, after restamping its
/// first 8 bytes), the parent `recv_into`s a reused 1 MiB `Vec` (one copy out) and checks the
/// stamp and the length. `iters(2000)` messages per repetition. Bytes per second.
fn copy_1mib_bytes_per_sec(row: Row) -> Session {
    let n = iters(2_000);
    let (tx, rx) = byte_channel(STREAM_1MIB_RING).expect("byte_channel");
    let gate = Gate::new();
    let child = fork_ipc(CHILD_CPU, tx, |tx| {
        let mut msg = vec![0xa5u8; MIB];
        let mut seq = 0u64;
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                msg[..8].copy_from_slice(&seq.to_ne_bytes());
                tx.send(&msg).map_err(|e| format!("message {seq}: {e}"))?;
                seq += 1;
            }
        }
        Ok(())
    });
    let mut buf = vec![0x5au8; MIB];
    let mut seq = 0u64;
    let rep = move || {
        gate.open_next();
        let elapsed = time(|| {
            for _ in 0..n {
                let len = rx
                    .recv_into(&mut buf)
                    .expect("parent recv (did the child die?)");
                assert_eq!(len, MIB, "wrong message length");
                assert_eq!(stamp(&buf), seq, "channel delivered a wrong message");
                black_box(&mut buf);
                seq += 1;
            }
        });
        per_sec(elapsed, n) * MIB as f64
    };
    Session::new(row, rep, move || reap_child(child))
}

/// A 4 MiB `byte_channel` from the child to the parent, 1 MiB messages, never copied:
///
/// * the child (producer) `reserve`s 1 MiB in the ring and writes every byte of it in place,
///   as 131072 u64 words `seq + k` (k = word index), then `commit`s;
/// * the parent (consumer) takes each message with `recv_ref` and reads every byte of it in
///   place, summing the u64 words, checks the sum against the one the producer's pattern
///   implies, then drops the message (releasing its space).
///
/// So each 1 MiB crosses between the CPUs once and is written once (by the producer) and read
/// once (by the consumer): the same work as one memcpy of 1 MiB in one process (read 1 MiB,
/// write 1 MiB), split over two CPUs. `iters(2000)` messages per repetition. Bytes per second.
fn zero_copy_1mib_bytes_per_sec(row: Row) -> Session {
    let n = iters(2_000);
    let (tx, mut rx) = byte_channel(STREAM_1MIB_RING).expect("byte_channel");
    let gate = Gate::new();
    let child = fork_ipc(CHILD_CPU, tx, |tx| {
        let mut seq = 0u64;
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                let mut grant = tx.reserve(MIB).map_err(|e| format!("message {seq}: {e}"))?;
                fill_words(&mut grant, seq);
                grant.commit();
                seq += 1;
            }
        }
        Ok(())
    });
    let mut seq = 0u64;
    let rep = move || {
        gate.open_next();
        let elapsed = time(|| {
            for _ in 0..n {
                let msg = rx.recv_ref().expect("parent recv (did the child die?)");
                assert_eq!(msg.len(), MIB, "wrong message length");
                assert_eq!(
                    sum_words(&msg),
                    pattern_sum(seq, MIB / 8),
                    "message {seq}: wrong contents"
                );
                drop(msg);
                seq += 1;
            }
        });
        per_sec(elapsed, n) * MIB as f64
    };
    Session::new(row, rep, move || reap_child(child))
}

/// Writes `seed + k` (wrapping) into the k-th native-endian u64 word of `buf` (a whole number
/// of words). With AVX2 where the CPU has it, as glibc's memcpy uses it: the reference
/// memcpy's vector width, so the comparison measures the channel, not the loop.
fn fill_words(buf: &mut [u8], seed: u64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (detected just above).
        return unsafe { fill_words_avx2(buf, seed) };
    }
    fill_words_portable(buf, seed)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fill_words_avx2(buf: &mut [u8], seed: u64) {
    fill_words_portable(buf, seed)
}

#[inline(always)]
fn fill_words_portable(buf: &mut [u8], seed: u64) {
    for (k, word) in buf.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&seed.wrapping_add(k as u64).to_ne_bytes());
    }
}

/// The wrapping sum of `buf`'s native-endian u64 words (a whole number of them); with AVX2
/// where available, as [`fill_words`].
fn sum_words(buf: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (detected just above).
        return unsafe { sum_words_avx2(buf) };
    }
    sum_words_portable(buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_words_avx2(buf: &[u8]) -> u64 {
    sum_words_portable(buf)
}

#[inline(always)]
fn sum_words_portable(buf: &[u8]) -> u64 {
    buf.chunks_exact(8)
        .map(|w| u64::from_ne_bytes(w.try_into().expect("8-byte chunk")))
        .fold(0, u64::wrapping_add)
}

/// What [`sum_words`] returns for `words` words written by [`fill_words`] with `seed`:
/// `words * seed + words * (words - 1) / 2`, modulo 2^64.
fn pattern_sum(seed: u64, words: usize) -> u64 {
    let w = words as u128;
    let exact = w * u128::from(seed) + w * w.saturating_sub(1) / 2;
    exact as u64 // truncation is the wrapping the sum does
}
