#![cfg(loom)]
//! Loom models of the SPSC ring: FIFO order and no torn reads across a wrap-around with a
//! padding record, no lost wake-up on an empty ring or a full one, and `close` waking a
//! sleeping consumer. Under loom the data area is loom `AtomicU64` words copied with Relaxed
//! accesses, so a payload read before the producer's writes are published shows up as wrong
//! bytes.
//!
//! Ring arithmetic (cap = 64 data bytes, max message 64/2 - 16 = 16 bytes): a record takes
//! 8 + round8(len) bytes and the producer keeps 8 bytes free after its last record.
//!
//! Run: `cd loom-tests && RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release`

mod common;

use forkipc::__loom::{
    Consumer, Producer, RingError, pop_fixed, push_fixed, read, read_fast, reserve, ring,
};
use forkipc::{DisconnectReason, WaitPolicy};
use loom::thread;

const CAP: usize = 64;

/// The payload of message `i`: `len` bytes that differ from every other message's.
fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i * 64 + k + 1) as u8).collect()
}

fn new_ring() -> (Producer, Consumer) {
    match ring(CAP) {
        Ok(pair) => pair,
        Err(e) => panic!("ring({CAP}) failed: {e:?}"),
    }
}

/// Blocking send of message `i` of `len` bytes.
fn send(p: &Producer, i: usize, len: usize) {
    let mut r = match reserve(p, len) {
        Ok(r) => r,
        Err(e) => panic!("reserve({len}) for message {i} failed: {e:?}"),
    };
    r.write(&payload(i, len));
    r.commit();
}

/// Non-blocking send (the caller knows there is room).
fn send_now(p: &Producer, i: usize, len: usize) {
    let mut r = match p.try_reserve(len) {
        Ok(r) => r,
        Err(e) => panic!("try_reserve({len}) for message {i} failed: {e:?}"),
    };
    r.write(&payload(i, len));
    r.commit();
}

/// Blocking receive; checks that message `i` arrives whole, with exactly `len` bytes.
fn expect_recv(c: &Consumer, i: usize, len: usize) {
    let g = match read(c) {
        Ok(g) => g,
        Err(e) => panic!("read of message {i} failed: {e:?}"),
    };
    assert_eq!(g.len(), len, "message {i}: wrong length");
    let mut buf = vec![0u8; len];
    g.read_into(&mut buf);
    assert_eq!(buf, payload(i, len), "message {i}: torn or wrong payload");
    drop(g); // releases the space (and wakes a producer waiting for room)
}

/// Three messages of 13, 16 and 11 bytes (24-byte records) through a 64-byte ring: the first
/// two fit together (0..24, 24..48); the third does not fit before the end (16 bytes left),
/// so the producer writes a padding record at 48 and the message at 0, which needs the ring
/// empty. Both sides block (default adaptive policy: one spin, then the futex). The consumer
/// must get all three in order with exact contents.
#[test]
fn fifo_no_torn_read_with_wrap() {
    const LENS: [usize; 3] = [13, 16, 11];
    common::model("fifo_no_torn_read_with_wrap", || {
        let (p, c) = new_ring();
        let producer = thread::spawn(move || {
            for (i, len) in LENS.into_iter().enumerate() {
                send(&p, i, len);
            }
        });
        for (i, len) in LENS.into_iter().enumerate() {
            expect_recv(&c, i, len);
        }
        producer.join().expect("producer panicked");
        assert!(
            matches!(c.try_read(), Err(RingError::WouldBlock)),
            "a fourth message appeared"
        );
    });
}

/// The consumer sleeps at once (`WaitPolicy::Block`) on an empty ring while the producer
/// commits one message. A wake-up lost between the consumer's last look and its sleep leaves
/// it asleep forever: loom reports that as a deadlock.
#[test]
fn no_lost_wakeup_empty() {
    common::model("no_lost_wakeup_empty", || {
        let (p, c) = new_ring();
        c.set_policy(WaitPolicy::Block);
        let producer = thread::spawn(move || {
            send_now(&p, 0, 16);
            p // keep the producer open until joined
        });
        expect_recv(&c, 0, 16);
        let p = producer.join().expect("producer panicked");
        drop(p);
    });
}

/// Two 16-byte messages (24-byte records) fill 48 of 64 bytes, so an 8-byte message (16-byte
/// record, plus the 8 free bytes) does not fit until one is consumed. The producer sleeps at
/// once (`WaitPolicy::Block`) in `reserve`; the consumer reads one message; the producer must
/// wake and send; the consumer then gets all three in order.
#[test]
fn no_lost_wakeup_full() {
    common::model("no_lost_wakeup_full", || {
        let (p, c) = new_ring();
        send_now(&p, 0, 16);
        send_now(&p, 1, 16);
        assert!(
            matches!(p.try_reserve(8), Err(RingError::WouldBlock)),
            "the ring should be full for an 8-byte message"
        );
        p.set_policy(WaitPolicy::Block);
        let producer = thread::spawn(move || {
            send(&p, 2, 8);
            p
        });
        expect_recv(&c, 0, 16);
        let p = producer.join().expect("producer panicked");
        expect_recv(&c, 1, 16);
        expect_recv(&c, 2, 8);
        drop(p);
    });
}

/// The consumer sleeps at once in `read(None)`; the producer commits one message and closes.
/// The consumer must get the message, then `Disconnected(PeerDropped)`, never sleep forever.
#[test]
fn close_wakes_sleeper() {
    common::model("close_wakes_sleeper", || {
        let (p, c) = new_ring();
        c.set_policy(WaitPolicy::Block);
        let producer = thread::spawn(move || {
            send_now(&p, 0, 12);
            p.close(false);
        });
        expect_recv(&c, 0, 12);
        match read(&c) {
            Err(RingError::Disconnected(DisconnectReason::PeerDropped)) => {}
            Err(e) => panic!("after close: expected PeerDropped, got {e:?}"),
            Ok(g) => panic!("after close: unexpected message of {} bytes", g.len()),
        }
        producer.join().expect("producer panicked");
    });
}

/// As `close_wakes_sleeper` with nothing sent: a consumer asleep on an empty ring must be woken
/// by `close` alone and report `Disconnected(PeerDropped)`.
#[test]
fn close_wakes_sleeper_on_empty_ring() {
    common::model("close_wakes_sleeper_on_empty_ring", || {
        let (p, c) = new_ring();
        c.set_policy(WaitPolicy::Block);
        let producer = thread::spawn(move || p.close(false));
        match read(&c) {
            Err(RingError::Disconnected(DisconnectReason::PeerDropped)) => {}
            Err(e) => panic!("expected PeerDropped, got {e:?}"),
            Ok(g) => panic!("unexpected message of {} bytes", g.len()),
        }
        producer.join().expect("producer panicked");
    });
}

/// Three 40-byte messages (48-byte records at 0 and 48, then padding at 96 and the third
/// record at 0 once the ring has drained) through a 128-byte ring while the consumer reads
/// concurrently: every message arrives whole and in order.
#[test]
fn fifo_across_the_wrap_in_a_two_line_ring() {
    const LEN: usize = 40;
    common::model("fifo_across_the_wrap_in_a_two_line_ring", || {
        let (p, c) = match ring(128) {
            Ok(pair) => pair,
            Err(e) => panic!("ring(128) failed: {e:?}"),
        };
        let producer = thread::spawn(move || {
            for i in 0..3 {
                send(&p, i, LEN);
            }
        });
        for i in 0..3 {
            expect_recv(&c, i, LEN);
        }
        producer.join().unwrap();
    });
}

/// The typed channels' fast paths: fixed-size records committed in one step, and the header
/// slot that follows the *next* record cleared one message early (so a commit usually finds
/// its following slot already empty and skips that store). Six 8-byte messages (16-byte
/// records) through a 64-byte ring (four records a lap), so the second lap runs over stale
/// headers of the first; the producer falls back to the general path when the fast one does
/// not apply (as `Sender::send` does), the consumer takes them through the fast receive path.
/// Order and contents must be exact: a stale header read as a message shows up as a wrong
/// payload.
#[test]
fn fixed_size_fast_paths_with_early_clear() {
    const N: usize = 6;
    common::model("fixed_size_fast_paths_with_early_clear", || {
        let (p, c) = new_ring();
        let producer = thread::spawn(move || {
            for i in 0..N {
                if !push_fixed(&p, &payload(i, 8)) {
                    send(&p, i, 8);
                }
            }
            p
        });
        for i in 0..N {
            let mut out = [0u8; 8];
            while !pop_fixed(&c, &mut out) {
                thread::yield_now();
            }
            assert_eq!(
                out.to_vec(),
                payload(i, 8),
                "message {i}: torn, stale or out of order"
            );
        }
        let p = producer.join().expect("producer panicked");
        drop(p);
        assert!(matches!(c.try_read(), Err(RingError::WouldBlock)));
    });
}

/// Review 3: the byte channel's fast paths with lengths that change from message to message
/// (8, 16, 0, 8, 16 bytes: records of 16, 24, 8, 16, 24 bytes through a 64-byte ring, so the
/// second lap runs over headers and payloads of the first, and the slot cleared ahead for a
/// next record of one size is covered by a record of another). The producer pushes through
/// the fast path and falls back to the general one (wrap-around, full); the consumer reads
/// through `read_fast` (the byte receiver's fast path), falling back to `try_read` for
/// padding. Order and contents must be exact.
#[test]
fn mixed_length_fast_paths_with_read_fast() {
    const LENS: [usize; 5] = [8, 16, 0, 8, 16];
    common::model("mixed_length_fast_paths_with_read_fast", || {
        let (p, c) = new_ring();
        let producer = thread::spawn(move || {
            for (i, &len) in LENS.iter().enumerate() {
                if !push_fixed(&p, &payload(i, len)) {
                    send(&p, i, len);
                }
            }
            p
        });
        for (i, &len) in LENS.iter().enumerate() {
            let g = loop {
                if let Some(g) = read_fast(&c) {
                    break g;
                }
                match c.try_read() {
                    Ok(g) => break g,
                    Err(RingError::WouldBlock) => thread::yield_now(),
                    Err(e) => panic!("message {i}: {e:?}"),
                }
            };
            assert_eq!(g.len(), len, "message {i}: wrong length (a stale header?)");
            let mut buf = vec![0u8; len];
            g.read_into(&mut buf);
            assert_eq!(
                buf,
                payload(i, len),
                "message {i}: torn, stale or out of order"
            );
            drop(g);
        }
        let p = producer.join().expect("producer panicked");
        drop(p);
        assert!(matches!(c.try_read(), Err(RingError::WouldBlock)));
    });
}
