//! forkipc's rows: byte channels (copying and zero-copy) and, at 8 bytes, typed `u64`
//! channels, all with the default wait policy (`WaitPolicy::Adaptive`), forked with
//! `forkipc::fork` as a user would.

use std::time::{Duration, Instant};

use forkipc::{ByteDuplex, ByteSender, Duplex, Sender};

use crate::harness::{
    CHILD_CPU, Go, GoReceiver, check, expected_sum, kill_and_reap_forkipc, middle_sum, payload,
    pin_to_cpu, reap_forkipc, set_current_child, stamp, word_sum,
};
use crate::{RTT_WARMUP, ring_bytes, stream_warmup};

/// Typed channels' capacity in messages (8-byte messages: 256 KiB of payload, as the byte
/// rings of small messages).
pub const TYPED_CAPACITY: usize = 32 * 1024;

/// Forks `child` with `ends` through `forkipc::fork`, pinned to [`CHILD_CPU`]; runs `parent`,
/// then reaps the child. Either side's error fails the measurement.
fn with_child<E: forkipc::Transfer>(
    ends: E,
    child: impl FnOnce(E) -> Result<(), String>,
    parent: impl FnOnce() -> Result<Duration, String>,
) -> Result<Duration, String> {
    let child = forkipc::fork(ends, |ends| {
        let result = pin_to_cpu(CHILD_CPU).and_then(|()| child(ends));
        match result {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("peers: forkipc child {}: {e}", std::process::id());
                1
            }
        }
    })
    .map_err(|e| format!("forkipc::fork: {e}"))?;
    set_current_child(child.id() as i32);
    match parent() {
        Ok(elapsed) => reap_forkipc(child).map(|()| elapsed),
        Err(e) => Err(kill_and_reap_forkipc(child, e)),
    }
}

fn err(what: &str, seq: u64, e: impl std::fmt::Display) -> String {
    format!("{what}, message {seq}: {e}")
}

/// Round trips over a byte duplex: `send` + `recv_into` on both sides, or with `zero_copy`,
/// `reserve` + `commit` to send and `recv_ref` to read in place.
pub fn byte_rtt(size: usize, n: u64, zero_copy: bool) -> Result<Duration, String> {
    let (me, peer) = forkipc::byte_duplex(ring_bytes(size)).map_err(|e| e.to_string())?;
    let total = RTT_WARMUP + n;
    if zero_copy {
        with_child(
            peer,
            |peer| {
                let (tx, mut rx) = peer.split();
                for seq in 0..total {
                    let msg = rx.recv_ref().map_err(|e| err("child recv_ref", seq, e))?;
                    check(&msg, size, seq)?;
                    let mut grant = tx.reserve(size).map_err(|e| err("child reserve", seq, e))?;
                    grant.copy_from_slice(&msg);
                    drop(msg);
                    grant.commit();
                }
                Ok(())
            },
            || {
                let (tx, mut rx) = me.split();
                let src = payload(size);
                let middle = middle_sum(&src);
                let mut one = |seq: u64| -> Result<(), String> {
                    let mut grant = tx.reserve(size).map_err(|e| err("reserve", seq, e))?;
                    grant.copy_from_slice(&src);
                    stamp(&mut grant, seq);
                    grant.commit();
                    let msg = rx.recv_ref().map_err(|e| err("recv_ref", seq, e))?;
                    check(&msg, size, seq)?;
                    if word_sum(&msg) != expected_sum(size, middle, seq) {
                        return Err(format!("message {seq}: wrong contents"));
                    }
                    Ok(())
                };
                timed_rtt(n, &mut one)
            },
        )
    } else {
        with_child(
            peer,
            |peer: ByteDuplex| {
                let mut buf = Vec::with_capacity(size);
                for seq in 0..total {
                    peer.recv_into(&mut buf)
                        .map_err(|e| err("child recv", seq, e))?;
                    check(&buf, size, seq)?;
                    peer.send(&buf).map_err(|e| err("child send", seq, e))?;
                }
                Ok(())
            },
            || {
                let mut src = payload(size);
                let mut buf = Vec::with_capacity(size);
                let mut one = |seq: u64| -> Result<(), String> {
                    stamp(&mut src, seq);
                    me.send(&src).map_err(|e| err("send", seq, e))?;
                    me.recv_into(&mut buf).map_err(|e| err("recv", seq, e))?;
                    check(&buf, size, seq)
                };
                timed_rtt(n, &mut one)
            },
        )
    }
}

/// Runs [`RTT_WARMUP`] untimed round trips, then `n` timed ones.
pub fn timed_rtt(
    n: u64,
    one: &mut impl FnMut(u64) -> Result<(), String>,
) -> Result<Duration, String> {
    for seq in 0..RTT_WARMUP {
        one(seq)?;
    }
    let start = Instant::now();
    for seq in RTT_WARMUP..RTT_WARMUP + n {
        one(seq)?;
    }
    Ok(start.elapsed())
}

/// A stream from the child to the parent over a byte channel: `send` / `recv_into`, or with
/// `zero_copy`, `reserve` + copy + `commit` / `recv_ref` + reading every word in place.
pub fn byte_stream(size: usize, n: u64, zero_copy: bool) -> Result<Duration, String> {
    let (tx, mut rx) = forkipc::byte_channel(ring_bytes(size)).map_err(|e| e.to_string())?;
    let (go_tx, go_rx) = Go::new()?.split();
    let warm = stream_warmup(size);
    with_child(
        tx,
        move |tx: ByteSender| produce(&tx, go_rx, size, warm, n, zero_copy),
        || {
            let middle = middle_sum(&payload(size));
            let mut buf = Vec::with_capacity(size);
            go_tx.take_stream(warm, n, |seq| {
                if zero_copy {
                    let msg = rx.recv_ref().map_err(|e| err("recv_ref", seq, e))?;
                    check(&msg, size, seq)?;
                    if word_sum(&msg) != expected_sum(size, middle, seq) {
                        return Err(format!("message {seq}: wrong contents"));
                    }
                } else {
                    rx.recv_into(&mut buf).map_err(|e| err("recv", seq, e))?;
                    check(&buf, size, seq)?;
                }
                Ok(())
            })
        },
    )
}

fn produce(
    tx: &ByteSender,
    go: GoReceiver,
    size: usize,
    warm: u64,
    n: u64,
    zero_copy: bool,
) -> Result<(), String> {
    let mut src = payload(size);
    go.send_stream(warm, n, |seq| {
        if zero_copy {
            let mut grant = tx.reserve(size).map_err(|e| err("child reserve", seq, e))?;
            grant.copy_from_slice(&src);
            stamp(&mut grant, seq);
            grant.commit();
        } else {
            stamp(&mut src, seq);
            tx.send(&src).map_err(|e| err("child send", seq, e))?;
        }
        Ok(())
    })
}

/// Round trips of one `u64` (the sequence number itself) over `duplex::<u64, u64>`.
pub fn typed_rtt(n: u64) -> Result<Duration, String> {
    let (me, peer) = forkipc::duplex::<u64, u64>(1024).map_err(|e| e.to_string())?;
    let total = RTT_WARMUP + n;
    with_child(
        peer,
        |peer: Duplex<u64, u64>| {
            for seq in 0..total {
                let v = peer.recv().map_err(|e| err("child recv", seq, e))?;
                if v != seq {
                    return Err(format!("message {seq}: got {v}"));
                }
                peer.send(v).map_err(|e| err("child send", seq, e))?;
            }
            Ok(())
        },
        || {
            let mut one = |seq: u64| -> Result<(), String> {
                me.send(seq).map_err(|e| err("send", seq, e))?;
                let v = me.recv().map_err(|e| err("recv", seq, e))?;
                if v != seq {
                    return Err(format!("message {seq}: got {v}"));
                }
                Ok(())
            };
            timed_rtt(n, &mut one)
        },
    )
}

/// A stream of `u64`s (each its own sequence number) over `channel::<u64>`.
pub fn typed_stream(n: u64) -> Result<Duration, String> {
    let (tx, rx) = forkipc::channel::<u64>(TYPED_CAPACITY).map_err(|e| e.to_string())?;
    let (go_tx, go_rx) = Go::new()?.split();
    let warm = stream_warmup(8);
    with_child(
        tx,
        move |tx: Sender<u64>| {
            go_rx.send_stream(warm, n, |seq| {
                tx.send(seq).map_err(|e| err("child send", seq, e))
            })
        },
        || {
            go_tx.take_stream(warm, n, |seq| {
                let v = rx.recv().map_err(|e| err("recv", seq, e))?;
                if v != seq {
                    return Err(format!("message {seq}: got {v}"));
                }
                Ok(())
            })
        },
    )
}
