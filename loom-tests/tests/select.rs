#![cfg(loom)]
//! Loom models of `Select`'s doorbell protocol: a selector arms every watched side (bell, then
//! `wait = 1`), issues the heavy barrier, re-checks every ring and sleeps on its doorbell at the
//! value it read before arming; a publisher that finds `wait = 1` rings the bell. No
//! interleaving of a message (or a close) with the selector going to sleep may leave it asleep:
//! loom reports a deadlock if one does. The futex model wakes exactly the sleepers asked for.
//!
//! Death is not modelled here (under loom there is no presence table); the native fork tests
//! in `tests/select.rs` cover a death while asleep.
//!
//! Run: `cd loom-tests && RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release`

mod common;

use forkipc::{Select, TryRecvError};
use loom::thread;

#[test]
fn message_racing_with_sleep_wakes_the_select() {
    common::model("message_racing_with_sleep_wakes_the_select", || {
        let (_tx1, rx1) = forkipc::channel::<u64>(1).expect("channel");
        let (tx2, rx2) = forkipc::channel::<u64>(1).expect("channel");
        let t = thread::spawn(move || {
            tx2.send(7).expect("send");
            tx2
        });
        let mut sel = Select::new();
        let _a = sel.recv(&rx1);
        let b = sel.recv(&rx2);
        let i = sel.ready();
        assert_eq!(i, b, "only the second channel has a message");
        assert_eq!(rx2.try_recv(), Ok(7), "ready means the message is there");
        drop(t.join().expect("producer panicked"));
    });
}

#[test]
fn close_racing_with_sleep_wakes_the_select() {
    common::model("close_racing_with_sleep_wakes_the_select", || {
        let (tx1, rx1) = forkipc::channel::<u64>(1).expect("channel");
        let (_tx2, rx2) = forkipc::channel::<u64>(1).expect("channel");
        let t = thread::spawn(move || drop(tx1));
        let mut sel = Select::new();
        let a = sel.recv(&rx1);
        let _b = sel.recv(&rx2);
        assert_eq!(sel.ready(), a, "the closed channel is ready");
        assert_eq!(rx1.try_recv(), Err(TryRecvError::Disconnected));
        t.join().expect("closer panicked");
    });
}

#[test]
fn room_racing_with_sleep_wakes_a_send_operation() {
    common::model("room_racing_with_sleep_wakes_a_send_operation", || {
        let (tx, rx) = forkipc::channel::<u64>(1).expect("channel");
        while tx.try_send(1).is_ok() {}
        let t = thread::spawn(move || {
            rx.recv().expect("recv");
            rx
        });
        let mut sel = Select::new();
        let s = sel.send(&tx);
        assert_eq!(sel.ready(), s);
        assert!(tx.try_send(2).is_ok(), "ready to send means room");
        drop(t.join().expect("consumer panicked"));
    });
}
