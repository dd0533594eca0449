//! Serde channels (feature `serde`) across real forks.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use forkipc::{SerdeRecvError, SerdeSendError, fork, serde_channel};
use serde::{Deserialize, Serialize};
use support::{Context, Outcome, expect_success};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Shape {
    Circle { r: f64 },
    Poly(Vec<(i32, i32)>),
    Empty,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Job {
    id: u64,
    name: String,
    tags: BTreeMap<String, u32>,
    shape: Shape,
    blob: Vec<u8>,
}

fn job(i: u64) -> Job {
    let mut tags = BTreeMap::new();
    for k in 0..(i % 5) {
        tags.insert(format!("tag{k}"), (i * k) as u32);
    }
    Job {
        id: i,
        name: format!("job number {i}"),
        tags,
        shape: match i % 3 {
            0 => Shape::Circle { r: i as f64 / 7.0 },
            1 => Shape::Poly((0..(i % 11) as i32).map(|k| (k, -k)).collect()),
            _ => Shape::Empty,
        },
        blob: (0..(i % 700)).map(|b| (b * 31 + i) as u8).collect(),
    }
}

fn serde_stream_of_structs_round_trips() -> Outcome {
    let (tx, rx) = serde_channel::<Job>(1 << 14).ctx("serde_channel")?;
    let mut child = fork(tx, |tx| {
        for i in 0..20_000 {
            if tx.send(&job(i)).is_err() {
                return 1;
            }
        }
        0
    })
    .ctx("fork")?;
    for i in 0..20_000 {
        let got = rx.recv_timeout(Duration::from_secs(10)).ctx("recv")?;
        ensure!(got == job(i), "message {i} differs: {got:?}");
    }
    ensure!(
        matches!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(SerdeRecvError::Disconnected)
        ),
        "expected Disconnected after the stream"
    );
    expect_success(&mut child, Duration::from_secs(30))
}

fn serde_too_large_and_empty_are_reported() -> Outcome {
    let (tx, rx) = serde_channel::<Vec<u8>>(256).ctx("serde_channel")?;
    let big = vec![7u8; 1000];
    ensure!(
        matches!(
            tx.send(&big),
            Err(SerdeSendError::Send(
                forkipc::ByteSendError::TooLarge { .. }
            ))
        ),
        "a 1000-byte value must not fit a 256-byte ring"
    );
    ensure!(
        matches!(rx.try_recv(), Err(SerdeRecvError::Empty)),
        "nothing was sent"
    );
    tx.send(&vec![1, 2, 3]).ctx("send")?;
    ensure!(
        rx.try_recv().ctx("try_recv")? == vec![1, 2, 3],
        "wrong value"
    );
    ensure!(
        matches!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(SerdeRecvError::Timeout)
        ),
        "expected Timeout"
    );
    Ok(())
}

fn serde_decode_error_is_reported_not_panicked() -> Outcome {
    // Bytes that are not a postcard `String` (a length far beyond the message, then invalid
    // UTF-8) must surface as `Decode`, never a panic or a huge allocation.
    let (tx, rx) = forkipc::byte_channel(256).ctx("byte_channel")?;
    let rx: forkipc::SerdeReceiver<String> = rx.into();
    tx.send(&[0xff, 0xff, 0xff, 0xff, 0x0f]).ctx("send")?;
    tx.send(&[0x02, 0xc3, 0x28]).ctx("send")?;
    tx.send(&[0x02, b'o', b'k']).ctx("send")?;
    for _ in 0..2 {
        let r = rx.recv_timeout(Duration::from_secs(1));
        ensure!(
            matches!(r, Err(SerdeRecvError::Decode(_))),
            "expected Decode, got {r:?}"
        );
    }
    ensure!(
        rx.recv().ctx("recv")? == "ok",
        "the valid message after two bad ones"
    );
    Ok(())
}

fn main() {
    support::run(cases![
        serde_stream_of_structs_round_trips,
        serde_too_large_and_empty_are_reported,
        serde_decode_error_is_reported_not_panicked,
    ]);
}
