//! `Select`: wait on many endpoints at once (crossbeam-channel's shape).
//!
//! # How a blocked `ready` sleeps
//!
//! Every process that owns endpoints has a *doorbell*: a futex word in its presence slot (see
//! `presence`). A `Select` about to sleep reads its doorbell's value, then *arms* every
//! watched side: it stores "ring this doorbell" in the side's `bell` field and sets the side's
//! `wait` word to 1, exactly as a single blocked `recv` or `send` announces itself. Then it
//! issues the heavy barrier, re-checks every operation (Dekker's handshake, as in
//! `ring::wait`), and sleeps in one `futex_waitv` on the doorbell (at the value it read), the
//! presence table's relay word and the `sel` presence words of the watched peers' processes
//! (see `presence` for why `Select`s sleep on those and not on the words blocked `recv`s use).
//! A peer that publishes (a message, free space, a close, a hand-over) finds `wait = 1`,
//! exactly as for a single blocked end, and rings the doorbell instead of waking `wait`: it
//! bumps the word and wakes it. A peer's death wakes the sleeper through its `sel` word (the
//! kernel's robust-list wake-up).
//!
//! The publishing side's fast path is unchanged: while the selecting process is awake, `wait`
//! is 0, and a send costs what it always costs (no system call, no extra shared write). Arming
//! costs one store pair per watched side and one heavy barrier per sleep; re-checking is one
//! header load per receive operation.
//!
//! # What each count costs
//!
//! * Messages and closes: any number of operations, one doorbell, no polling.
//! * Deaths: `futex_waitv` takes 128 words: the doorbell, the presence table's relay word (see
//!   `presence::announce_waiter`) and up to 126 distinct peer processes. With more distinct
//!   peer processes than that, a blocked `ready` also wakes every 50 ms to look at the rest (a
//!   death is then noticed within 50 ms, still inside the 100 ms bound). Watching 1 000
//!   channels whose peers live in 126 processes or fewer needs no polling.
//! * Each `ready` that finds nothing scans every operation once before sleeping and once after
//!   arming: O(operations), a cache line per receive operation.
//!
//! Readiness is level-triggered and never consumes a message: the caller then calls `try_recv`
//! (or `try_send`) on the endpoint, which cannot miss for a receive (one consumer per ring).
//! When several operations are ready, the search starts after the last one chosen, so each
//! ready operation is chosen within one round: none starves.

use std::time::{Duration, Instant};

use crate::channel::{
    ByteDuplex, ByteReceiver, ByteSender, Duplex, EndpointCore, Receiver, RxCore, Sender, TxCore,
};
use crate::presence::{self, Liveness, PresenceRef};
use crate::ring::SideState;
use crate::sync::spin::Spinner;
use crate::sync::{Deadline, FutexWord, Ordering, WaitPolicy, barrier};

/// How long a blocked `ready` sleeps at most when it cannot watch every peer's presence word
/// in one `futex_waitv` (more than 126 distinct peer processes, or no `futex_waitv`).
const POLL: Duration = Duration::from_millis(50);
/// Quick scans of every operation before the timed spin phase (a few microseconds at most).
#[cfg(not(loom))]
const TIGHT_SCANS: u32 = 64;
/// How long a blocked `ready` sleeps at most when the heavy barrier failed (see `barrier`).
const UNFENCED_NAP: Duration = Duration::from_millis(10);
/// How long a blocked `ready` sleeps at most while a watched peer process has not yet taken
/// the presence word `Select`s sleep on (see `presence`): at first; it doubles with each such
/// sleep in a row, up to `POLL`. Normally a fork child takes it within microseconds of the
/// `fork`; a child stopped before that, or a process that scribbled over the word, costs a
/// wake-up every `POLL` (its death is then noticed within `POLL`).
const NOT_YET_NAP: Duration = Duration::from_millis(1);

mod sealed {
    pub trait Sealed {}
}

/// A receiving endpoint that a [`Select`] can watch: [`Receiver`], [`ByteReceiver`],
/// `SerdeReceiver`, and the duplexes [`Duplex`], [`ByteDuplex`] and `SerdeDuplex` (their
/// receiving half). Sealed.
pub trait SelectRecv: sealed::Sealed {
    #[doc(hidden)]
    fn recv_handle(&self) -> RecvHandle<'_>;
}

/// A sending endpoint that a [`Select`] can watch: [`Sender`], [`ByteSender`], `SerdeSender`,
/// and the duplexes [`Duplex`], [`ByteDuplex`] and `SerdeDuplex` (their sending half). Sealed.
pub trait SelectSend: sealed::Sealed {
    #[doc(hidden)]
    fn send_handle(&self) -> SendHandle<'_>;
}

/// What a `Select` holds of a receiving endpoint (opaque).
#[doc(hidden)]
pub struct RecvHandle<'a>(&'a RxCore);

/// What a `Select` holds of a sending endpoint: its core and the size of one message (opaque).
#[doc(hidden)]
pub struct SendHandle<'a>(&'a TxCore, usize);

impl<T> sealed::Sealed for Receiver<T> {}
impl<T> SelectRecv for Receiver<T> {
    fn recv_handle(&self) -> RecvHandle<'_> {
        RecvHandle(&self.core)
    }
}
impl sealed::Sealed for ByteReceiver {}
impl SelectRecv for ByteReceiver {
    fn recv_handle(&self) -> RecvHandle<'_> {
        RecvHandle(&self.core)
    }
}
impl<T> sealed::Sealed for Sender<T> {}
impl<T> SelectSend for Sender<T> {
    fn send_handle(&self) -> SendHandle<'_> {
        SendHandle(&self.core, std::mem::size_of::<T>())
    }
}
impl sealed::Sealed for ByteSender {}
impl SelectSend for ByteSender {
    fn send_handle(&self) -> SendHandle<'_> {
        SendHandle(&self.core, 0)
    }
}
impl<A, B> sealed::Sealed for Duplex<A, B> {}
impl<A, B> SelectRecv for Duplex<A, B> {
    fn recv_handle(&self) -> RecvHandle<'_> {
        RecvHandle(&self.receiver().core)
    }
}
impl<A, B> SelectSend for Duplex<A, B> {
    fn send_handle(&self) -> SendHandle<'_> {
        SendHandle(&self.sender().core, std::mem::size_of::<A>())
    }
}
impl sealed::Sealed for ByteDuplex {}
impl SelectRecv for ByteDuplex {
    fn recv_handle(&self) -> RecvHandle<'_> {
        RecvHandle(&self.receiver().core)
    }
}
impl SelectSend for ByteDuplex {
    fn send_handle(&self) -> SendHandle<'_> {
        SendHandle(&self.sender().core, 0)
    }
}
#[cfg(feature = "serde")]
impl<A, B> sealed::Sealed for crate::SerdeDuplex<A, B> {}
#[cfg(feature = "serde")]
impl<A, B> SelectRecv for crate::SerdeDuplex<A, B> {
    fn recv_handle(&self) -> RecvHandle<'_> {
        RecvHandle(&self.receiver().inner.core)
    }
}
#[cfg(feature = "serde")]
impl<A, B> SelectSend for crate::SerdeDuplex<A, B> {
    fn send_handle(&self) -> SendHandle<'_> {
        SendHandle(&self.sender().inner.core, 0)
    }
}
#[cfg(feature = "serde")]
impl<T> sealed::Sealed for crate::SerdeReceiver<T> {}
#[cfg(feature = "serde")]
impl<T> SelectRecv for crate::SerdeReceiver<T> {
    fn recv_handle(&self) -> RecvHandle<'_> {
        RecvHandle(&self.inner.core)
    }
}
#[cfg(feature = "serde")]
impl<T> sealed::Sealed for crate::SerdeSender<T> {}
#[cfg(feature = "serde")]
impl<T> SelectSend for crate::SerdeSender<T> {
    fn send_handle(&self) -> SendHandle<'_> {
        SendHandle(&self.inner.core, 0)
    }
}

enum Op<'a> {
    Recv(&'a RxCore),
    Send(&'a TxCore, usize),
}

impl<'a> Op<'a> {
    /// Whether the operation would not block now. `quick`: for a receive, only whether a
    /// header is written (one load; a close, a dead peer or a lost ownership is seen by the
    /// full check, which runs now and then while spinning and always before sleeping).
    fn ready(&self, quick: bool) -> bool {
        match self {
            // An endpoint this process does not own is "ready": its operations fail at once.
            Op::Recv(c) if quick => {
                // A message the fast read accepts is peeked (the guard forgotten: nothing is
                // released); anything else takes the full check.
                c.c.recv_hint()
                    && (!c.is_owned()
                        || c.c.try_read_fast().map(std::mem::forget).is_some()
                        || c.c.recv_ready())
            }
            Op::Recv(c) => !c.is_owned() || c.c.recv_ready(),
            Op::Send(c, len) => !c.is_owned() || c.p.send_ready(*len),
        }
    }

    /// This side's shared state and the peer's; `None` if this process does not own it.
    fn sides(&self) -> Option<(&'a SideState, &'a SideState)> {
        match *self {
            Op::Recv(c) => c.is_owned().then(|| c.c.sides()),
            Op::Send(c, _) => c.is_owned().then(|| c.p.sides()),
        }
    }
}

/// Waits until one of several operations is ready: a message to receive (or a disconnect) on
/// any watched receiving endpoint, room to send (or a disconnect) on any watched sending one.
/// crossbeam-channel's `Select`, for forkipc endpoints.
///
/// ```no_run
/// use forkipc::{Select, channel, fork};
///
/// // Fan-in: one receiver per worker, one loop in the parent.
/// let (tx1, rx1) = channel::<u64>(64)?;
/// let (tx2, rx2) = channel::<u64>(64)?;
/// let mut w1 = fork(tx1, |tx| tx.send(1).is_err() as i32)?;
/// let mut w2 = fork(tx2, |tx| tx.send(2).is_err() as i32)?;
/// let mut sel = Select::new();
/// let i1 = sel.recv(&rx1);
/// let i2 = sel.recv(&rx2);
/// let mut sum = 0;
/// let mut open = 2;
/// while open > 0 {
///     let i = sel.ready();
///     let rx = if i == i1 { &rx1 } else { &rx2 };
///     match rx.try_recv() {
///         Ok(v) => sum += v,
///         Err(_) => { sel.remove(i); open -= 1; } // disconnected (try_recv cannot be Empty here)
///     }
/// }
/// assert_eq!(sum, 3);
/// w1.wait()?;
/// w2.wait()?;
/// # Ok::<(), forkipc::Error>(())
/// ```
pub struct Select<'a> {
    ops: Vec<Option<Op<'a>>>,
    /// Where the next search starts (one past the last operation chosen): fairness.
    next: usize,
    /// The operation that the next blocking call checks fully first (one per call, in turn),
    /// so that a disconnect is reported even while other operations keep the quick look busy.
    audit: usize,
    /// Consecutive sleeps bounded because a watched peer process had not taken its `sel`
    /// word (see `NOT_YET_NAP`): each doubles the nap, up to `POLL`.
    not_yet_naps: u32,
}

impl std::fmt::Debug for Select<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Select")
            .field(
                "operations",
                &self.ops.iter().filter(|o| o.is_some()).count(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Select<'_> {
    fn default() -> Self {
        Select::new()
    }
}

/// `try_ready` found no operation ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TryReadyError;

/// `ready_timeout` found no operation ready before the timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyTimeoutError;

impl std::fmt::Display for TryReadyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no operation is ready")
    }
}

impl std::fmt::Display for ReadyTimeoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("timed out waiting for an operation to become ready")
    }
}

impl std::error::Error for TryReadyError {}
impl std::error::Error for ReadyTimeoutError {}

impl<'a> Select<'a> {
    /// An empty selection.
    pub fn new() -> Select<'a> {
        Select {
            ops: Vec::new(),
            next: 0,
            audit: 0,
            not_yet_naps: 0,
        }
    }

    /// Watches `r` for a message (or a disconnect); returns the operation's index.
    pub fn recv<R: SelectRecv + ?Sized>(&mut self, r: &'a R) -> usize {
        self.ops.push(Some(Op::Recv(r.recv_handle().0)));
        self.ops.len() - 1
    }

    /// Watches `s` for room to send one message (or a disconnect); returns the operation's
    /// index. For byte and serde senders, "room" means room for an empty message.
    pub fn send<S: SelectSend + ?Sized>(&mut self, s: &'a S) -> usize {
        let h = s.send_handle();
        self.ops.push(Some(Op::Send(h.0, h.1)));
        self.ops.len() - 1
    }

    /// Stops watching operation `index` (indices of the others do not change).
    ///
    /// # Panics
    /// If `index` was never returned by this `Select` or was already removed (crossbeam does
    /// the same).
    pub fn remove(&mut self, index: usize) {
        match self.ops.get_mut(index) {
            Some(op @ Some(_)) => *op = None,
            _ => panic!("Select::remove: no operation with index {index}"),
        }
    }

    /// An operation that is ready now, if any.
    ///
    /// # Errors
    /// `TryReadyError` if none is.
    pub fn try_ready(&mut self) -> Result<usize, TryReadyError> {
        self.poll().ok_or(TryReadyError)
    }

    /// Blocks until an operation is ready and returns its index.
    ///
    /// # Panics
    /// If no operation is watched (it would block for ever; crossbeam panics too).
    pub fn ready(&mut self) -> usize {
        match self.wait(None) {
            Some(i) => i,
            None => unreachable!("a wait without a deadline returned without an operation"),
        }
    }

    /// Blocks for at most `timeout` (any duration, `Duration::MAX` included).
    ///
    /// # Errors
    /// `ReadyTimeoutError` if no operation became ready in time.
    ///
    /// # Panics
    /// If no operation is watched.
    pub fn ready_timeout(&mut self, timeout: Duration) -> Result<usize, ReadyTimeoutError> {
        let d = Deadline::after(timeout);
        self.wait(Some(&d)).ok_or(ReadyTimeoutError)
    }

    /// As [`ready_timeout`](Self::ready_timeout), until `deadline`.
    ///
    /// # Errors
    /// `ReadyTimeoutError` if no operation became ready in time.
    pub fn ready_deadline(&mut self, deadline: Instant) -> Result<usize, ReadyTimeoutError> {
        self.ready_timeout(deadline.saturating_duration_since(Instant::now()))
    }

    /// The first ready operation, searching from `next` round the list.
    fn poll(&mut self) -> Option<usize> {
        self.poll_with(false)
    }

    fn poll_with(&mut self, quick: bool) -> Option<usize> {
        let n = self.ops.len();
        // Wrapped by a compare, not `%`: a division per operation per scan cost more than
        // the scan's loads (tens of nanoseconds a scan with 8 operations).
        let mut i = if self.next >= n { 0 } else { self.next };
        for _ in 0..n {
            if let Some(op) = &self.ops[i]
                && op.ready(quick)
            {
                self.next = i + 1;
                return Some(i);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        None
    }

    fn wait(&mut self, deadline: Option<&Deadline>) -> Option<usize> {
        assert!(
            self.ops.iter().any(Option::is_some),
            "Select: waiting with no operation would block for ever"
        );
        // One operation, in turn, gets the full look at every call.
        let n = self.ops.len();
        let a = self.audit % n;
        self.audit = a + 1;
        if let Some(op) = &self.ops[a]
            && op.ready(false)
        {
            self.next = a + 1;
            return Some(a);
        }
        // A tight phase first, as a single blocked `recv` has: quick looks, no clock reads.
        #[cfg(not(loom))]
        for _ in 0..TIGHT_SCANS {
            if let Some(i) = self.poll_with(true) {
                return Some(i);
            }
            std::hint::spin_loop();
        }
        let mut spinner = Spinner::new(WaitPolicy::default());
        // Spinning uses the quick look (a written header: one load per operation);
        // the full one, which also sees a dead peer, runs at the spinner's checkpoints, before
        // sleeping (after arming) and after every wake-up.
        loop {
            while spinner.spin() {
                let checkpoint = spinner.checkpoint();
                if let Some(i) = self.poll_with(!checkpoint) {
                    return Some(i);
                }
                if checkpoint && deadline.is_some_and(Deadline::expired) {
                    return self.poll();
                }
            }
            if deadline.is_some_and(Deadline::expired) {
                return self.poll();
            }
            if let Some(i) = self.sleep(deadline) {
                return Some(i);
            }
            if let Some(i) = self.poll() {
                return Some(i);
            }
        }
    }

    /// Arms every watched side, re-checks, sleeps once, disarms. `Some` if an operation was
    /// found ready while armed.
    fn sleep(&mut self, deadline: Option<&Deadline>) -> Option<usize> {
        let Ok(me) = presence::current() else {
            // No presence slot (the table is full): no doorbell; poll.
            std::thread::sleep(Duration::from_millis(1));
            return None;
        };
        let Some(bell) = presence::bell(me) else {
            std::thread::sleep(Duration::from_millis(1));
            return None;
        };
        // Read before arming: a ring after this point changes the word, so the sleep below
        // returns at once.
        let rung = bell.load(Ordering::SeqCst);
        let armed = Armed::new(&self.ops, me);
        let fenced = barrier::heavy();
        // The peers' owners are read, and their presence words armed (values read), after the
        // barrier and *before* the re-check: a peer that dies after this changes its word, so
        // the sleep below returns at once; one that died before is seen dead by the re-check.
        let (peers, not_yet) = armed.peer_words();
        if let Some(i) = self.poll() {
            drop(armed);
            return Some(i);
        }
        if !not_yet {
            self.not_yet_naps = 0;
        }
        let nap = if !fenced {
            Some(Deadline::after(UNFENCED_NAP).min_with(deadline))
        } else if not_yet {
            let d = NOT_YET_NAP
                .saturating_mul(1 << self.not_yet_naps.min(6))
                .min(POLL);
            self.not_yet_naps = self.not_yet_naps.saturating_add(1);
            Some(Deadline::after(d).min_with(deadline))
        } else {
            None
        };
        // Named in `list_op_pending` (one word per thread): the relay, not one of the peers'
        // words, so that a death's wake-up is handed on whichever peer died (see
        // `presence::announce_relay`).
        let relay = (!peers.is_empty()).then(presence::relay).flatten();
        if relay.is_some() {
            presence::announce_relay();
        }
        let words: Vec<(&FutexWord, u32)> = peers.iter().map(|(wv, _)| *wv).collect();
        let (_, other_woke) = bell.wait_any(rung, relay, &words, nap.as_ref().or(deadline), POLL);
        presence::testing::after_wake();
        for (_, r) in &peers {
            if presence::check(*r) == Liveness::Dead {
                presence::pass_on_select_death(*r);
            }
        }
        // The relay, or a peer's word (a death, which may hide a relay wake-up).
        if other_woke && relay.is_some() {
            presence::relay_woke();
        }
        if relay.is_some() {
            presence::waiter_done();
        }
        drop(armed);
        None
    }
}

/// A watched peer process's `sel` word, the value to sleep on, and the peer's reference.
type PeerWord = ((&'static FutexWord, u32), PresenceRef);

/// The armed sides of one sleep; disarmed on drop (also if something panics).
struct Armed<'s> {
    sides: Vec<&'s SideState>,
    /// The watched sides' peers (read after the heavy barrier: a hand-over stores the new
    /// owner, fences, then checks our `wait`, so one of the two sees the other).
    peers: Vec<&'s SideState>,
}

impl<'s> Armed<'s> {
    fn new(ops: &[Option<Op<'s>>], me: PresenceRef) -> Armed<'s> {
        let mut sides = Vec::with_capacity(ops.len());
        let mut peers = Vec::with_capacity(ops.len());
        for op in ops.iter().flatten() {
            if let Some((mine, peer)) = op.sides() {
                mine.arm_select(me);
                sides.push(mine);
                peers.push(peer);
            }
        }
        Armed { sides, peers }
    }

    /// The presence (`sel`) words to sleep on (armed so the kernel wakes us at a death), one
    /// per distinct live peer process; and whether some peer process has not taken its `sel`
    /// word yet (a fork child in its first microseconds: then look again after `NOT_YET_NAP`).
    fn peer_words(&self) -> (Vec<PeerWord>, bool) {
        let mut out: Vec<PeerWord> = Vec::new();
        let mut not_yet = false;
        for peer in &self.peers {
            let r = peer.owner_ref();
            if r == PresenceRef::NONE {
                continue;
            }
            match presence::arm_select(r) {
                presence::SelectArm::Armed(w, v)
                    if !out.iter().any(|((o, _), _)| std::ptr::eq(*o, w)) =>
                {
                    out.push(((w, v), r));
                }
                presence::SelectArm::NotYet => not_yet = true,
                _ => {}
            }
        }
        (out, not_yet)
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        for s in &self.sides {
            s.disarm_select();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_picks_in_turn_and_remove_stops_watching() {
        let (tx1, rx1) = crate::channel::<u64>(4).unwrap();
        let (tx2, rx2) = crate::channel::<u64>(4).unwrap();
        let mut sel = Select::new();
        let a = sel.recv(&rx1);
        let b = sel.recv(&rx2);
        assert_eq!(sel.try_ready(), Err(TryReadyError));
        tx1.send(1).unwrap();
        tx2.send(2).unwrap();
        let first = sel.ready();
        let second = sel.ready();
        assert_ne!(first, second, "both ready: the choice must rotate");
        sel.remove(a);
        assert_eq!(sel.try_ready(), Ok(b));
        assert_eq!(
            sel.ready_timeout(Duration::from_millis(1)),
            Ok(b),
            "still ready: level-triggered"
        );
        assert_eq!(rx2.try_recv(), Ok(2));
        assert_eq!(
            sel.ready_timeout(Duration::from_millis(5)),
            Err(ReadyTimeoutError)
        );
        drop(tx2);
        assert_eq!(sel.ready_timeout(Duration::MAX), Ok(b), "a close is ready");
    }
}
