//! The classic fork + shared-memory scenario, done with forkipc:
//!
//! 1. a `ShmMutex`-guarded counter in an `AnonRegion` that parent and child both update;
//! 2. a child worker serving the parent's requests over a duplex channel;
//! 3. a stream of typed messages from a child;
//! 4. a child killed on purpose, its death noticed by the parent blocked in `recv`;
//! 5. a byte duplex served by the same loop as the typed one: one error family for every kind
//!    of channel, so the `match`es do not change.
//!
//! Run: `cargo run --example fork_demo`

use std::time::{Duration, Instant};

use forkipc::bytemuck::{Pod, Zeroable};
use forkipc::{
    AnonRegion, DisconnectReason, RecvError, RecvTimeoutError, SendError, ShmMutex, TrySendError,
    byte_duplex, channel, duplex, fork,
};

/// A request to the worker: plain data (`Pod`: integers, no padding), copied through the ring
/// as is.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[bytemuck(crate = "forkipc::bytemuck")]
#[repr(C)]
struct Request {
    id: u32,
    op: u32, // 0 = square, 1 = negate
    x: i64,
}

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[bytemuck(crate = "forkipc::bytemuck")]
#[repr(C)]
struct Reply {
    id: u32,
    _pad: u32, // explicit: `Pod` refuses implicit padding
    value: i64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. A shared counter, updated by both processes under a robust process-shared mutex.
    let region = AnonRegion::new(4096)?;
    let counter = region.alloc(ShmMutex::new(0u64))?;
    const EACH: u64 = 100_000;
    let mut child = fork((), |()| {
        for _ in 0..EACH {
            match counter.lock() {
                Ok(mut n) => *n += 1,
                Err(_) => return 1,
            }
        }
        0
    })?;
    for _ in 0..EACH {
        *counter.lock().map_err(|e| e.to_string())? += 1;
    }
    let status = child.wait()?;
    let total = *counter.lock().map_err(|e| e.to_string())?;
    println!("[counter] parent and child each added {EACH}: total {total} (child {status})");
    assert_eq!(total, 2 * EACH);

    // 2. A child worker serving requests over a duplex channel. The client gives the whole
    //    exchange one deadline; every error is one of the family's, so `?` reports it.
    let (client, server) = duplex::<Request, Reply>(64)?;
    let mut worker = fork(server, |server| {
        loop {
            match server.recv() {
                Ok(req) => {
                    let value = match req.op {
                        0 => req.x * req.x,
                        _ => -req.x,
                    };
                    let reply = Reply {
                        id: req.id,
                        _pad: 0,
                        value,
                    };
                    if let Err(SendError::Disconnected(_)) = server.send(reply) {
                        return 1;
                    }
                }
                Err(RecvError::Disconnected) => return 0, // the client hung up
            }
        }
    })?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(10);
    for id in 0..10_000u32 {
        let x = i64::from(id) - 5_000;
        client.send_deadline(Request { id, op: id % 2, x }, deadline)?;
        let reply = client.recv_deadline(deadline)?;
        let want = if id % 2 == 0 { x * x } else { -x };
        assert_eq!((reply.id, reply.value), (id, want));
    }
    let rtt = start.elapsed() / 10_000;
    drop(client);
    println!(
        "[worker]  10000 requests answered, {rtt:?} per round trip; worker exited {}",
        worker.wait()?
    );

    // 3. A stream of typed messages.
    let (tx, rx) = channel::<u64>(1024)?;
    let mut producer = fork(tx, |tx| {
        for i in 0..1_000_000u64 {
            if tx.send(i).is_err() {
                return 1;
            }
        }
        0
    })?;
    let start = Instant::now();
    let mut expected = 0u64;
    for v in rx.iter() {
        assert_eq!(v, expected, "stream out of order");
        expected += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "[stream]  {expected} u64 received in order ({:.1} M msgs/s); then {:?} ({:?})",
        expected as f64 / secs / 1e6,
        rx.try_recv(),
        rx.disconnect_reason()
            .unwrap_or(DisconnectReason::PeerDropped),
    );
    producer.wait()?;

    // 4. A child killed on purpose: the parent, blocked in recv, learns of it at once.
    let (tx, rx) = channel::<u64>(16)?;
    let mut doomed = fork(tx, |tx| {
        let _ = tx.send(42);
        loop {
            std::thread::sleep(Duration::from_secs(1)); // holds `tx` open, sends nothing more
        }
    })?;
    let first = rx.recv()?;
    doomed.kill()?;
    let killed_at = Instant::now();
    let after = rx.recv_timeout(Duration::from_secs(5));
    let noticed = killed_at.elapsed();
    let status = doomed.wait()?;
    match after {
        Err(RecvTimeoutError::Disconnected) => println!(
            "[death]   got {first}; killed the sender; recv returned Disconnected after \
             {noticed:?} ({}); child {status}",
            rx.disconnect_reason()
                .map_or("no reason".into(), |r| r.to_string())
        ),
        other => panic!("expected Disconnected after the kill, got {other:?}"),
    }
    assert_eq!(rx.disconnect_reason(), Some(DisconnectReason::PeerDied));

    // 5. Variable-length messages: the same worker loop, the same `match`es, over a byte duplex.
    let (client, server) = byte_duplex(4096)?;
    let mut worker = fork(server, |server| {
        loop {
            match server.recv() {
                Ok(line) => {
                    if let Err(SendError::Disconnected(_)) = server.send(&line.to_ascii_uppercase())
                    {
                        return 1;
                    }
                }
                Err(RecvError::Disconnected) => return 0,
            }
        }
    })?;
    client.send(b"shared memory, no copies through the kernel")?;
    let reply = client.recv()?;
    // What only a byte channel can hit, inside the same family: a message that never fits.
    let too_big = vec![0u8; client.max_message_len() + 1];
    let refused = match client.try_send(&too_big) {
        Err(TrySendError::Refused((), why)) => why.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    drop(client);
    println!(
        "[bytes]   {:?}; then refused: {refused}; worker exited {}",
        String::from_utf8_lossy(&reply),
        worker.wait()?
    );
    println!("fork_demo: all good");
    Ok(())
}
