//! Serde channels (feature `serde`) across real forks.

mod support;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::rc::Rc;
use std::time::{Duration, Instant};

use forkipc::{
    EncodeError, RecvError, RecvTimeoutError, SendError, SendTimeoutError, SerdeReceiver,
    SerdeSender, TooLarge, TryRecvError, TrySendError, fork, postcard, serde_channel, serde_duplex,
};
use serde::{Deserialize, Deserializer, Serialize};
use support::{Context, Outcome, expect_success, kill_and_reap};

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
            Err(RecvTimeoutError::Disconnected)
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
            Err(SendError::Refused(
                (),
                EncodeError::TooLarge(TooLarge {
                    len: 1002,
                    max: 112
                })
            ))
        ),
        "a 1000-byte value must not fit a 256-byte ring"
    );
    ensure!(
        matches!(rx.try_recv(), Err(TryRecvError::Empty)),
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
            Err(RecvTimeoutError::Timeout)
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
            matches!(r, Err(RecvTimeoutError::Decode(_))),
            "expected Decode, got {r:?}"
        );
    }
    ensure!(
        rx.recv().ctx("recv")? == "ok",
        "the valid message after two bad ones"
    );
    Ok(())
}

/// `send_deadline` / `recv_deadline` on serde endpoints: an empty channel times out at the
/// deadline, not before; a past deadline still takes a ready message or free room; a full ring
/// times out having sent nothing; the sender's exit is `Disconnected` under the same deadline.
fn serde_deadlines() -> Outcome {
    let (tx, rx) = serde_channel::<String>(256).ctx("serde_channel")?;
    let t = Instant::now();
    let r = rx.recv_deadline(t + Duration::from_millis(50));
    ensure!(r == Err(RecvTimeoutError::Timeout), "empty: {r:?}");
    let el = t.elapsed();
    ensure!(
        el >= Duration::from_millis(50) && el < Duration::from_secs(2),
        "recv_deadline(+50ms) returned after {el:?}"
    );
    let past = || Instant::now() - Duration::from_millis(1);
    tx.send_deadline(&"now".to_string(), past())
        .ctx("send_deadline(past) with room")?;
    let got = rx.recv_deadline(past());
    ensure!(got.as_deref() == Ok("now"), "past deadline, ready: {got:?}");
    let filler = "f".repeat(40);
    while tx.try_send(&filler).is_ok() {}
    let t = Instant::now();
    let r = tx.send_deadline(&filler, t + Duration::from_millis(40));
    ensure!(r == Err(SendTimeoutError::Timeout(())), "full: {r:?}");
    ensure!(
        t.elapsed() >= Duration::from_millis(40),
        "send_deadline(+40ms) returned after {:?}",
        t.elapsed()
    );
    let mut child = fork(tx, |tx| {
        // Drains nothing: the parent does. Exits at once, dropping the sender.
        drop(tx);
        0
    })
    .ctx("fork")?;
    let r = (|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        loop {
            match rx.recv_deadline(deadline) {
                Ok(s) => {
                    ensure!(s == filler, "got {s:?}");
                    n += 1;
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(e) => return Err(format!("after {n} messages: {e:?}")),
            }
        }
        ensure!(n > 0, "nothing was queued");
        Ok(())
    })();
    if r.is_err() {
        kill_and_reap(&mut child);
    }
    r?;
    expect_success(&mut child, Duration::from_secs(30))
}

/// What the duplex worker is asked.
#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Request {
    /// Summarise a job.
    Describe(Job),
    /// Answer with an error, as a service does for a bad request.
    Fail(String),
}

/// The worker's answer.
#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Reply {
    Summary { id: u64, tags: usize, blob_sum: u64 },
    Error(String),
}

fn serve(req: Request) -> Reply {
    match req {
        Request::Describe(j) => Reply::Summary {
            id: j.id,
            tags: j.tags.len(),
            blob_sum: j.blob.iter().map(|&b| u64::from(b)).sum(),
        },
        Request::Fail(why) => Reply::Error(why),
    }
}

/// A serde duplex serves 3 000 requests of owned types (structs with strings, maps and vectors,
/// enums) to a forked worker and their replies back, in order, each under the client's overall
/// deadline; the worker's `iter()` yields each request as `Ok` and ends at the client's drop,
/// and both ends report why they are disconnected.
fn serde_duplex_round_trips_across_fork() -> Outcome {
    const N: u64 = 3_000;
    let (client, server) = serde_duplex::<Request, Reply>(1 << 14).ctx("serde_duplex")?;
    let mut child = fork(server, |server| {
        let mut served = 0;
        for req in server.iter() {
            let Ok(req) = req else { return 2 };
            if server.send(&serve(req)).is_err() {
                return 3;
            }
            served += 1;
        }
        let dropped = server.disconnect_reason() == Some(forkipc::DisconnectReason::PeerDropped);
        if served == N && dropped { 0 } else { 4 }
    })
    .ctx("fork")?;
    let r = (|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..N {
            let req = if i % 7 == 3 {
                Request::Fail(format!("bad request {i}"))
            } else {
                Request::Describe(job(i))
            };
            client
                .send_deadline(&req, deadline)
                .ctx(&format!("request {i}"))?;
            let rep = client.recv_deadline(deadline).ctx(&format!("reply {i}"))?;
            ensure!(rep == serve(req), "reply {i}: {rep:?}");
        }
        ensure!(
            matches!(client.try_recv(), Err(TryRecvError::Empty)),
            "no extra reply expected"
        );
        Ok(())
    })();
    drop(client);
    if r.is_err() {
        kill_and_reap(&mut child);
    }
    r?;
    expect_success(&mut child, Duration::from_secs(30))
}

// ---------------------------------------------------------------------------------------------
// One error family for every kind of channel
// ---------------------------------------------------------------------------------------------

// One `match` per error type, generic over the message handed back (`T`) and the kind-specific
// payload (`E`): the same code compiles for typed, byte and serde channels. For typed and byte
// receives (and typed sends) `E` is `Infallible`, so that arm can never run there.

fn send_label<T, E: Display>(r: Result<(), SendError<T, E>>) -> String {
    match r {
        Ok(()) => "sent".into(),
        Err(SendError::Disconnected(_)) => "disconnected".into(),
        Err(SendError::Refused(_, why)) => format!("refused: {why}"),
    }
}

fn try_send_label<T, E: Display>(r: Result<(), TrySendError<T, E>>) -> String {
    match r {
        Ok(()) => "sent".into(),
        Err(TrySendError::Full(_)) => "full".into(),
        Err(TrySendError::Disconnected(_)) => "disconnected".into(),
        Err(TrySendError::Refused(_, why)) => format!("refused: {why}"),
    }
}

fn send_timeout_label<T, E: Display>(r: Result<(), SendTimeoutError<T, E>>) -> String {
    match r {
        Ok(()) => "sent".into(),
        Err(SendTimeoutError::Timeout(_)) => "timeout".into(),
        Err(SendTimeoutError::Disconnected(_)) => "disconnected".into(),
        Err(SendTimeoutError::Refused(_, why)) => format!("refused: {why}"),
    }
}

fn recv_label<M, E: Display>(r: Result<M, RecvError<E>>) -> String {
    match r {
        Ok(_) => "message".into(),
        Err(RecvError::Disconnected) => "disconnected".into(),
        Err(RecvError::Decode(e)) => format!("decode: {e}"),
    }
}

fn try_recv_label<M, E: Display>(r: Result<M, TryRecvError<E>>) -> String {
    match r {
        Ok(_) => "message".into(),
        Err(TryRecvError::Empty) => "empty".into(),
        Err(TryRecvError::Disconnected) => "disconnected".into(),
        Err(TryRecvError::Decode(e)) => format!("decode: {e}"),
    }
}

fn recv_timeout_label<M, E: Display>(r: Result<M, RecvTimeoutError<E>>) -> String {
    match r {
        Ok(_) => "message".into(),
        Err(RecvTimeoutError::Timeout) => "timeout".into(),
        Err(RecvTimeoutError::Disconnected) => "disconnected".into(),
        Err(RecvTimeoutError::Decode(e)) => format!("decode: {e}"),
    }
}

/// What the parent sees of the stream a child sends and then ends by exiting: each
/// `recv_timeout` labelled, until the disconnect, then one more of each receive flavour.
fn labels_until_disconnect<M, E: Display>(
    mut recv_timeout: impl FnMut() -> Result<M, RecvTimeoutError<E>>,
    try_recv: impl FnOnce() -> Result<M, TryRecvError<E>>,
    recv: impl FnOnce() -> Result<M, RecvError<E>>,
) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let l = recv_timeout_label(recv_timeout());
        let end = l == "disconnected" || l == "timeout";
        out.push(l);
        if end {
            break;
        }
    }
    out.push(try_recv_label(try_recv()));
    out.push(recv_label(recv()));
    out
}

/// The same `match`es (the generic helpers above) classify every outcome of typed, byte and
/// serde channels: full, timeout, empty, message, and, across fork, a child's exit as
/// disconnected after its messages; byte and serde sends refuse a message too large, with the
/// sizes; a serde message that does not decode is `Decode` (naming postcard's error), between
/// two good messages, never a disconnect. The typed and byte receivers are also matched
/// crossbeam's way, without a `Decode` arm (their payload is `Infallible`).
fn one_match_serves_every_kind() -> Outcome {
    const WAIT: Duration = Duration::from_millis(10);
    const LONG: Duration = Duration::from_secs(10);
    let ended = [
        "message",
        "message",
        "disconnected",
        "disconnected",
        "disconnected",
    ];

    // Typed.
    let (tx, rx) = forkipc::channel::<u32>(1).ctx("channel")?;
    let mut fills = 0;
    while try_send_label(tx.try_send(1)) == "sent" {
        fills += 1;
    }
    ensure!(fills >= 1, "typed: not one message fit");
    ensure!(
        send_timeout_label(tx.send_timeout(2, WAIT)) == "timeout",
        "typed send_timeout"
    );
    while try_recv_label(rx.try_recv()) == "message" {}
    ensure!(
        recv_timeout_label(rx.recv_timeout(WAIT)) == "timeout",
        "typed recv_timeout"
    );
    // crossbeam's exhaustive match, no arm for `Decode`:
    match rx.try_recv() {
        Ok(_) => return Err("typed: a message from nowhere".into()),
        Err(TryRecvError::Empty) => {}
        Err(TryRecvError::Disconnected) => return Err("typed: disconnected".into()),
    }
    let mut child =
        fork(tx, |tx| (tx.send(1).is_err() || tx.send(2).is_err()) as i32).ctx("fork typed")?;
    let got = labels_until_disconnect(|| rx.recv_timeout(LONG), || rx.try_recv(), || rx.recv());
    expect_success(&mut child, LONG)?;
    ensure!(got == ended, "typed stream: {got:?}");
    drop(rx);
    let (tx, rx) = forkipc::channel::<u32>(1).ctx("channel")?;
    drop(rx);
    ensure!(send_label(tx.send(3)) == "disconnected", "typed send");

    // Byte.
    let (tx, rx) = forkipc::byte_channel(64).ctx("byte_channel")?;
    let max = tx.max_message_len();
    let refused = format!(
        "refused: a message of {} bytes exceeds the channel's maximum of {max}",
        max + 1
    );
    ensure!(
        try_send_label(tx.try_send(&vec![0; max + 1])) == refused,
        "byte try_send too large: {:?}",
        try_send_label(tx.try_send(&vec![0; max + 1]))
    );
    while try_send_label(tx.try_send(b"abcdefgh")) == "sent" {}
    ensure!(
        send_timeout_label(tx.send_timeout(b"abcdefgh", WAIT)) == "timeout",
        "byte send_timeout"
    );
    while try_recv_label(rx.try_recv()) == "message" {}
    ensure!(
        recv_timeout_label(rx.recv_timeout(WAIT)) == "timeout",
        "byte recv_timeout"
    );
    match rx.recv_timeout(WAIT) {
        Ok(_) => return Err("byte: a message from nowhere".into()),
        Err(RecvTimeoutError::Timeout) => {}
        Err(RecvTimeoutError::Disconnected) => return Err("byte: disconnected".into()),
    }
    let mut child = fork(tx, |tx| {
        (tx.send(b"one").is_err() || tx.send(b"two").is_err()) as i32
    })
    .ctx("fork byte")?;
    let got = labels_until_disconnect(|| rx.recv_timeout(LONG), || rx.try_recv(), || rx.recv());
    expect_success(&mut child, LONG)?;
    ensure!(got == ended, "byte stream: {got:?}");
    drop(rx);
    let (tx, rx) = forkipc::byte_channel(64).ctx("byte_channel")?;
    drop(rx);
    ensure!(send_label(tx.send(b"x")) == "disconnected", "byte send");

    // Serde. The child sends raw bytes: postcard's "one", then bytes that are not a String
    // (invalid UTF-8), then "two".
    let (btx, brx) = forkipc::byte_channel(64).ctx("byte_channel")?;
    let tx: SerdeSender<String> = btx.into();
    let rx: SerdeReceiver<String> = brx.into();
    let long = "x".repeat(max);
    let refused = format!(
        "refused: the encoded message of {} bytes exceeds the channel's maximum of {max}",
        max + 1
    );
    ensure!(
        try_send_label(tx.try_send(&long)) == refused,
        "serde try_send too large: {:?}",
        try_send_label(tx.try_send(&long))
    );
    while try_send_label(tx.try_send(&"abcdefg".to_string())) == "sent" {}
    ensure!(
        send_timeout_label(tx.send_timeout(&"abcdefg".to_string(), WAIT)) == "timeout",
        "serde send_timeout"
    );
    while try_recv_label(rx.try_recv()) == "message" {}
    ensure!(
        recv_timeout_label(rx.recv_timeout(WAIT)) == "timeout",
        "serde recv_timeout"
    );
    drop(tx);
    let (raw_tx, raw_rx) = forkipc::byte_channel(64).ctx("byte_channel")?;
    let rx: SerdeReceiver<String> = raw_rx.into();
    let mut child = fork(raw_tx, |tx| {
        let sent = [&b"\x03one"[..], &[0x02, 0xc3, 0x28], b"\x03two"]
            .iter()
            .all(|m| tx.send(m).is_ok());
        i32::from(!sent)
    })
    .ctx("fork serde")?;
    let got = labels_until_disconnect(|| rx.recv_timeout(LONG), || rx.try_recv(), || rx.recv());
    expect_success(&mut child, LONG)?;
    let decode = format!("decode: {}", postcard::Error::DeserializeBadUtf8);
    ensure!(
        got == [
            "message",
            &decode,
            "message",
            "disconnected",
            "disconnected",
            "disconnected"
        ],
        "serde stream: {got:?}"
    );
    let (tx, rx) = serde_channel::<String>(64).ctx("serde_channel")?;
    drop(rx);
    ensure!(
        send_label(tx.send(&"x".to_string())) == "disconnected",
        "serde send"
    );
    Ok(())
}

/// `SerdeReceiver::iter` in a forked child yields a message that does not decode as an `Err`
/// and goes on to the next one, ending only at the disconnect; `try_iter` does the same without
/// blocking. (Before, `iter` ended silently at the first such message, as if disconnected.)
fn serde_iter_yields_decode_errors_and_goes_on() -> Outcome {
    let (raw_tx, raw_rx) = forkipc::byte_channel(4096).ctx("byte_channel")?;
    let (report_tx, report_rx) = forkipc::channel::<[u32; 4]>(1).ctx("report channel")?;
    let mut child = fork((raw_rx, report_tx), |(raw_rx, report_tx)| {
        let rx: SerdeReceiver<Job> = raw_rx.into();
        let (mut ok, mut bad, mut in_order) = (0u32, 0u32, 1u32);
        for m in rx.iter() {
            match m {
                Ok(j) => {
                    in_order &= u32::from(j == job(u64::from(ok)));
                    ok += 1;
                }
                Err(_) => bad += 1,
            }
        }
        let ended =
            u32::from(rx.disconnect_reason() == Some(forkipc::DisconnectReason::PeerDropped));
        i32::from(report_tx.send([ok, bad, in_order, ended]).is_err())
    })
    .ctx("fork")?;
    let r = (|| {
        let mut buf = vec![0u8; 4096];
        for i in 0..100u64 {
            let enc = postcard::to_slice(&job(i), &mut buf).ctx("encode")?;
            raw_tx.send(enc).ctx("send job")?;
            if i % 10 == 4 {
                raw_tx.send(&[0xff; 3]).ctx("send garbage")?; // a truncated varint: no Job
            }
        }
        drop(raw_tx);
        let [ok, bad, in_order, ended] = report_rx
            .recv_timeout(Duration::from_secs(30))
            .ctx("report")?;
        ensure!(ok == 100, "{ok} of 100 jobs decoded");
        ensure!(bad == 10, "{bad} of 10 undecodable messages reported");
        ensure!(in_order == 1, "the good jobs came out of order");
        ensure!(ended == 1, "the iteration ended before the sender's drop");
        Ok(())
    })();
    if r.is_err() {
        kill_and_reap(&mut child);
    }
    r?;
    expect_success(&mut child, Duration::from_secs(30))?;

    // try_iter: what is ready, errors included, then it stops.
    let (raw_tx, raw_rx) = forkipc::byte_channel(256).ctx("byte_channel")?;
    let rx: SerdeReceiver<u32> = raw_rx.into();
    raw_tx.send(&[5]).ctx("send")?;
    raw_tx.send(&[]).ctx("send")?; // empty: postcard needs a byte for a u32
    raw_tx.send(&[7]).ctx("send")?;
    let got: Vec<Result<u32, bool>> = rx.try_iter().map(|r| r.map_err(|_| true)).collect();
    ensure!(got == [Ok(5), Err(true), Ok(7)], "try_iter: {got:?}");
    ensure!(
        rx.try_iter().next().is_none(),
        "try_iter on an empty channel"
    );
    Ok(())
}

thread_local! {
    /// The sender that `Reentrant::serialize` sends on, and how often it was serialized.
    static REENTER: RefCell<(Option<Rc<SerdeSender<Reentrant>>>, u32)> =
        const { RefCell::new((None, 0)) };
}

/// A value whose `Serialize` sends on the very sender that is encoding it (reached through a
/// thread-local), the second time it is serialized: postcard sizes a value, then encodes it
/// into the reserved ring space, so that second call runs while the space is reserved.
#[derive(Deserialize, Debug, PartialEq)]
struct Reentrant;

impl Serialize for Reentrant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tx = REENTER.with(|r| {
            let mut r = r.borrow_mut();
            r.1 += 1;
            if r.1 == 2 { r.0.clone() } else { None }
        });
        if let Some(tx) = tx {
            let _ = tx.send(&Reentrant);
        }
        s.serialize_unit_struct("Reentrant")
    }
}

/// A send from inside the value's own `Serialize`, on the same sender, while the outer send
/// holds its reservation, would be handed the same ring bytes: it panics instead, the outer
/// send unwinds without sending anything, and the sender works afterwards.
fn serde_send_from_serialize_panics_not_corrupts() -> Outcome {
    let (tx, rx) = serde_channel::<Reentrant>(4096).ctx("serde_channel")?;
    let tx = Rc::new(tx);
    REENTER.with(|r| *r.borrow_mut() = (Some(tx.clone()), 0));
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tx.send(&Reentrant)));
    std::panic::set_hook(hook);
    REENTER.with(|r| *r.borrow_mut() = (None, 0));
    ensure!(r.is_err(), "the nested send did not panic: {r:?}");
    ensure!(
        matches!(rx.try_recv(), Err(TryRecvError::Empty)),
        "something was sent"
    );
    tx.send(&Reentrant).ctx("send afterwards")?;
    ensure!(rx.try_recv() == Ok(Reentrant), "the later send");
    Ok(())
}

/// Every kind of endpoint (typed, byte and serde; sender, receiver and duplex) answers the same
/// questions the same way, through the `Endpoint` trait: in the parent, nothing is
/// disconnected while the child holds the other ends, and all of them report `PeerDropped` once
/// it exits; in the child, the parent's copies (reached by the closure, not handed over) report
/// `NotOwner`; `set_wait_policy` / `wait_policy` round-trip on each.
fn every_endpoint_answers_the_same_questions() -> Outcome {
    use forkipc::{DisconnectReason, Endpoint, WaitPolicy};
    let (t_tx, t_rx) = forkipc::channel::<u64>(4).ctx("channel")?;
    let (t_rx2_tx, t_rx2) = forkipc::channel::<u64>(4).ctx("channel")?;
    let (d_a, d_b) = forkipc::duplex::<u64, u32>(4).ctx("duplex")?;
    let (b_tx, b_rx) = forkipc::byte_channel(256).ctx("byte_channel")?;
    let (b_rx2_tx, b_rx2) = forkipc::byte_channel(256).ctx("byte_channel")?;
    let (bd_a, bd_b) = forkipc::byte_duplex(256).ctx("byte_duplex")?;
    let (s_tx, s_rx) = serde_channel::<String>(256).ctx("serde_channel")?;
    let (s_rx2_tx, s_rx2) = serde_channel::<String>(256).ctx("serde_channel")?;
    let (sd_a, sd_b) = serde_duplex::<String, u64>(256).ctx("serde_duplex")?;
    let (go_tx, go_rx) = forkipc::channel::<u8>(1).ctx("go channel")?;
    let mine: [&dyn Endpoint; 9] = [
        &t_tx, &t_rx2, &d_a, &b_tx, &b_rx2, &bd_a, &s_tx, &s_rx2, &sd_a,
    ];
    let reasons = |ends: &[&dyn Endpoint]| -> Vec<Option<DisconnectReason>> {
        ends.iter().map(|e| e.disconnect_reason()).collect()
    };
    let theirs = (
        (t_rx, t_rx2_tx, d_b),
        (b_rx, b_rx2_tx, bd_b),
        (s_rx, s_rx2_tx, sd_b),
        go_rx,
    );
    let mut child = fork(theirs, |theirs| {
        // The parent's ends, reached through the closure: inert copies here.
        let not_owner = reasons(&mine)
            .iter()
            .all(|r| *r == Some(DisconnectReason::NotOwner))
            && mine.iter().all(|e| e.is_disconnected());
        let go = theirs.3.recv_timeout(Duration::from_secs(30));
        drop(theirs);
        if !not_owner {
            2
        } else if go.is_err() {
            3
        } else {
            0
        }
    })
    .ctx("fork")?;
    let r = (|| {
        let before = reasons(&mine);
        ensure!(
            before.iter().all(Option::is_none),
            "while the child lives: {before:?}"
        );
        ensure!(
            mine.iter().all(|e| !e.is_disconnected()),
            "is_disconnected disagrees with disconnect_reason"
        );
        for e in mine {
            e.set_wait_policy(WaitPolicy::Block);
            ensure!(
                e.wait_policy() == WaitPolicy::Block,
                "wait_policy round trip"
            );
        }
        go_tx.send(1).ctx("go")?;
        Ok(())
    })();
    if r.is_err() {
        kill_and_reap(&mut child);
    }
    r?;
    expect_success(&mut child, Duration::from_secs(30))?;
    let after = reasons(&mine);
    ensure!(
        after
            .iter()
            .all(|r| *r == Some(DisconnectReason::PeerDropped)),
        "after the child's exit: {after:?}"
    );
    ensure!(
        mine.iter().all(|e| e.is_disconnected()),
        "is_disconnected after the child's exit"
    );
    Ok(())
}

/// A `Select` watches the new duplexes like the other endpoints: a byte duplex and a serde
/// duplex, each served by a forked child that answers after a delay, are reported ready when
/// (and only when) their answer is there, and then when their child exits (`Disconnected`).
fn select_watches_byte_and_serde_duplexes() -> Outcome {
    let (b_me, b_worker) = forkipc::byte_duplex(256).ctx("byte_duplex")?;
    let (s_me, s_worker) = serde_duplex::<String, String>(256).ctx("serde_duplex")?;
    let mut children = Vec::new();
    children.push(
        fork(b_worker, |w| match w.recv() {
            Ok(m) => i32::from(w.send(&m).is_err()),
            Err(_) => 2,
        })
        .ctx("fork byte worker")?,
    );
    children.push(
        fork(s_worker, |w| {
            std::thread::sleep(Duration::from_millis(50));
            match w.recv() {
                Ok(m) => i32::from(w.send(&m.to_uppercase()).is_err()),
                Err(_) => 2,
            }
        })
        .ctx("fork serde worker")?,
    );
    let r = (|| {
        let mut sel = forkipc::Select::new();
        let i_bytes = sel.recv(&b_me);
        let i_serde = sel.recv(&s_me);
        let i_room = sel.send(&s_me);
        ensure!(
            sel.try_ready() == Ok(i_room),
            "only the room to send is ready at first"
        );
        sel.remove(i_room);
        ensure!(sel.try_ready().is_err(), "nothing to receive yet");
        b_me.send(b"ping").ctx("byte send")?;
        s_me.send(&"pong".to_string()).ctx("serde send")?;
        let (mut got_bytes, mut got_serde, mut closed) = (false, false, 0);
        while closed < 2 {
            let i = sel
                .ready_timeout(Duration::from_secs(10))
                .map_err(|e| format!("ready_timeout: {e}"))?;
            if i == i_bytes {
                match b_me.try_recv() {
                    Ok(m) => got_bytes = m == b"ping",
                    Err(TryRecvError::Disconnected) => {
                        sel.remove(i);
                        closed += 1;
                    }
                    Err(e) => return Err(format!("byte duplex ready, then {e:?}")),
                }
            } else if i == i_serde {
                match s_me.try_recv() {
                    Ok(m) => got_serde = m == "PONG",
                    Err(TryRecvError::Disconnected) => {
                        sel.remove(i);
                        closed += 1;
                    }
                    Err(e) => return Err(format!("serde duplex ready, then {e:?}")),
                }
            } else {
                return Err(format!("ready reported operation {i}"));
            }
        }
        ensure!(
            got_bytes && got_serde,
            "answers: bytes {got_bytes}, serde {got_serde}"
        );
        Ok(())
    })();
    for c in &mut children {
        if r.is_err() {
            kill_and_reap(c);
        } else {
            expect_success(c, Duration::from_secs(30))?;
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Regression: issue 8, defect 4 ("decoding memory the peer can still write")
// ---------------------------------------------------------------------------------------------

thread_local! {
    /// The ring's data area (address, size) and where the probed string's last byte lies in it.
    static RING: Cell<(usize, usize, usize)> = const { Cell::new((0, 0, 0)) };
}

/// A string decoder that plays the peer at the worst moment: handed the `&str` postcard has just
/// validated, it first stores 0xFF over the string's last byte in the ring (as the peer process
/// may at any time), then looks at what it was handed.
struct Probe {
    /// The `&str` pointed into the ring's shared memory.
    in_ring: bool,
    /// The `&str` was still valid UTF-8 after the peer's store.
    utf8_after_store: bool,
    len: usize,
}

/// (The receiver's bound asks for it; never used.)
impl Serialize for Probe {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("")
    }
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Probe, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Probe;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, s: &str) -> Result<Probe, E> {
                let (data, cap, last) = RING.get();
                let at = s.as_ptr() as usize;
                let in_ring = at >= data && at < data + cap;
                // SAFETY: `last` is an index inside the data area (checked by the caller), mapped
                // while the channel lives. This store is the peer's, made on purpose: if `s` lies
                // in the ring, it changes under a `&str` (the defect this test exposes).
                unsafe { ((data + last) as *mut u8).write_volatile(0xFF) };
                let utf8_after_store =
                    std::str::from_utf8(std::hint::black_box(s.as_bytes())).is_ok();
                Ok(Probe {
                    in_ring,
                    utf8_after_store,
                    len: s.len(),
                })
            }
        }
        d.deserialize_string(V)
    }
}

/// Regression: `SerdeReceiver` decoded with postcard straight out of the ring, and postcard
/// validates a string's UTF-8 and only then copies it, so the peer could change the bytes in
/// between and an invalid `String` reached safe code. The receiver must decode a private copy.
/// Deterministic: the decoder itself stores over the ring right after postcard's validation.
fn regression_serde_decodes_a_private_copy() -> Outcome {
    let (tx, rx) = forkipc::byte_channel(4096).ctx("byte_channel")?;
    let (_, data, cap) = forkipc::__testing::ring_memory(&rx);
    let tx: SerdeSender<String> = tx.into();
    let rx: SerdeReceiver<Probe> = rx.into();
    let text = "a".repeat(100);
    tx.send(&text).ctx("send")?;
    // The first record sits at index 0: an 8-byte header, postcard's 1-byte length, the text.
    let last = 8 + 1 + text.len() - 1;
    // SAFETY: `last < cap`, inside the data area, mapped while the channel lives.
    let before = unsafe { data.add(last).read_volatile() };
    ensure!(
        before == b'a',
        "the string's last byte is not where expected"
    );
    RING.set((data as usize, cap, last));
    let p = rx.recv_timeout(Duration::from_secs(1)).ctx("recv")?;
    ensure!(
        p.len == text.len(),
        "decoded {} bytes, sent {}",
        p.len,
        text.len()
    );
    ensure!(
        !p.in_ring,
        "the decoder was handed a &str in the ring's shared memory, which the peer can write"
    );
    ensure!(
        p.utf8_after_store,
        "a &str that postcard had validated held invalid UTF-8 after the peer's store"
    );
    Ok(())
}

/// Regression, as the review saw it (9 492 invalid `String`s in one run): a peer process keeps
/// flipping the last byte of a committed `String` message between `b'a'` and 0xFF while this
/// process receives it, thousands of times. Each receive must give the valid string or a
/// `Decode` error, never a `String` that is not UTF-8 (before the fix, postcard validated the
/// ring's bytes and then copied them, and the flips landed in between).
fn regression_serde_string_stays_utf8_while_peer_flips_bytes() -> Outcome {
    const CAP: usize = 1 << 16;
    const MIN_ROUNDS: u64 = 5000;
    const MIN_RACES: u64 = 500;
    let (tx, rx) = forkipc::byte_channel(CAP).ctx("byte_channel")?;
    let (_, data, cap) = forkipc::__testing::ring_memory(&rx);
    ensure!(cap == CAP, "data area {cap}, expected {CAP}");
    // The longest message: a record of `8 + max` bytes, half the ring less 8. With one message
    // in flight at a time, records then sit at index 0 and index `rec` by turns (the one after
    // `rec` does not fit before the end and wraps to 0). The string's last byte is the record's.
    let max = rx.max_message_len();
    let rec = 8 + max;
    ensure!(
        rec.is_multiple_of(8) && 2 * rec < cap,
        "unexpected layout: max {max}"
    );
    let spots = [rec - 1, 2 * rec - 1];
    let n = max - 3; // postcard's length prefix takes 3 bytes for 16 KiB..2 MiB
    let text = "a".repeat(n);
    let tx: SerdeSender<String> = tx.into();
    let rx: SerdeReceiver<String> = rx.into();

    let base = data as usize;
    let mut flipper = fork((), move |()| {
        // The peer: flips both spots, a few hundred nanoseconds per round, until killed (or
        // after a minute, should the parent be gone).
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            for _ in 0..1000 {
                for v in [0xFF, b'a'] {
                    for i in spots {
                        // SAFETY: `i < cap`: a byte of the ring's data area, which this child
                        // maps at the same address. Writing it behind the ring's back is the
                        // point: a hostile peer does.
                        unsafe { ((base + i) as *mut u8).write_volatile(v) };
                    }
                }
            }
        }
        0
    })
    .ctx("fork flipper")?;

    let r = (|| {
        // Start once the peer runs (a spot reads 0xFF), so the rounds below race it.
        let t = Instant::now();
        // SAFETY: `spots[0] < cap`: a byte of the data area, mapped while the channel lives.
        while unsafe { data.add(spots[0]).read_volatile() } != 0xFF {
            ensure!(
                t.elapsed() < Duration::from_secs(10),
                "the flipper never ran"
            );
            std::thread::yield_now();
        }
        let start = Instant::now();
        let (mut rounds, mut valid, mut decode_errors, mut invalid) = (0u64, 0u64, 0u64, 0u64);
        // Each decode error is a receive that raced a flip (0xFF when validated); before the fix
        // about one race in three also produced an invalid `String`. Race often enough that
        // the old code cannot pass, unless the peer gets no CPU for 20 s.
        while (rounds < MIN_ROUNDS || decode_errors < MIN_RACES)
            && invalid == 0
            && start.elapsed() < Duration::from_secs(20)
        {
            tx.send(&text).ctx("send")?;
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(s) => {
                    if std::str::from_utf8(std::hint::black_box(s.as_bytes())).is_ok() {
                        ensure!(s == text, "a valid string that is not the one sent");
                        valid += 1;
                    } else {
                        invalid += 1;
                    }
                }
                Err(RecvTimeoutError::Decode(postcard::Error::DeserializeBadUtf8)) => {
                    decode_errors += 1
                }
                Err(e) => return Err(format!("receive {rounds}: {e:?}")),
            }
            rounds += 1;
        }
        println!(
            "    {rounds} receives in {:?}: {valid} valid, {decode_errors} decode errors, \
             {invalid} Strings that were not UTF-8",
            start.elapsed()
        );
        ensure!(
            invalid == 0,
            "{invalid} of {rounds} received Strings were not UTF-8 (decoded from bytes the peer \
             changed after validation)"
        );
        ensure!(
            valid > 0 && decode_errors > 0,
            "the peer never raced the receiver ({valid} valid, {decode_errors} decode errors)"
        );
        Ok(())
    })();
    kill_and_reap(&mut flipper);
    r
}

fn main() {
    support::run(cases![
        serde_stream_of_structs_round_trips,
        serde_too_large_and_empty_are_reported,
        serde_decode_error_is_reported_not_panicked,
        serde_deadlines,
        serde_duplex_round_trips_across_fork,
        one_match_serves_every_kind,
        serde_iter_yields_decode_errors_and_goes_on,
        serde_send_from_serialize_panics_not_corrupts,
        every_endpoint_answers_the_same_questions,
        select_watches_byte_and_serde_duplexes,
        regression_serde_decodes_a_private_copy,
        regression_serde_string_stays_utf8_while_peer_flips_bytes,
    ]);
}
