//! Channels between processes: typed (`channel`, `duplex`) and byte (`byte_channel`), each a
//! ring in its own anonymous mapping.
//!
//! # Ownership across `fork`
//!
//! Every endpoint records the identity of the process that owns it: its pid together with its
//! fork depth (see `sync::ident`), so that a process that inherits a copy and later gets a dead
//! owner's pid back (pid reuse) still is not the owner. Creating a channel makes the
//! calling process the owner of both ends. [`fork`](crate::fork) hands the ends you pass it to
//! the child: the child becomes their owner, and the parent's copies are *disowned* (their
//! drop closes nothing). Every other copy that a process inherits through `fork` is inert
//! there: each operation first compares the owner with the (cached) current identity and returns
//! `Disconnected` (reason [`DisconnectReason::NotOwner`]) without touching the ring, and its
//! drop closes nothing. Since an end can only be handed over by moving it into `fork`, at most
//! one process at a time can use each end of a ring through the safe API, and endpoints are
//! `Send` but not `Sync`, so within that process one thread at a time uses it.
//!
//! # Disconnect
//!
//! Dropping an end in its owning process closes it: the peer drains what was sent, then gets
//! `Disconnected` (reason `PeerDropped`). If the owning process dies instead, a peer blocked in
//! a receive or a send is woken by the kernel (see `presence`) and gets `Disconnected`
//! (reason `PeerDied`) after draining. A ring found corrupt disconnects for good (`Corrupted`).

mod bytes;
mod error;
mod typed;

#[cfg(feature = "serde")]
mod serde_channel;

use std::cell::Cell;

pub use bytes::{ByteMessage, ByteReceiver, ByteSender, WriteGrant, byte_channel};
pub use error::{
    ByteSendError, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError,
    TrySendError,
};
#[cfg(feature = "serde")]
pub use serde_channel::{
    SerdeReceiver, SerdeRecvError, SerdeSendError, SerdeSender, serde_channel,
};
pub use typed::{
    Duplex, DuplexPair, IntoIter, Iter, Plain, Receiver, Sender, TryIter, channel, duplex,
};

use crate::Error;
use crate::presence::PresenceRef;
use crate::ring::{Consumer, DisconnectReason, Producer, ReadGuard, Reservation, RingError};
use crate::sync::ident::{Ident, current_ident};
use crate::sync::{Deadline, WaitPolicy};

/// How long an operation may wait.
#[derive(Clone, Copy)]
pub(crate) enum Mode<'a> {
    /// Never block.
    Try,
    /// Block until the deadline, or forever.
    Block(Option<&'a Deadline>),
}

/// Creates a ring of `cap` data bytes owned by this process on both sides.
pub(crate) fn new_ring(cap: usize) -> Result<(TxCore, RxCore), Error> {
    let (p, c) = crate::ring::ring(cap)?;
    let me = crate::presence::current()?;
    p.mem().set_owner(true, me);
    p.mem().set_owner(false, me);
    let me_ident = current_ident();
    Ok((
        TxCore {
            p,
            own: Ownership::new(me_ident),
        },
        RxCore {
            c,
            own: Ownership::new(me_ident),
        },
    ))
}

/// The sending half's process-local state: the ring producer and who owns it.
pub(crate) struct TxCore {
    pub(crate) p: Producer,
    own: Ownership,
}

/// The receiving half's process-local state.
pub(crate) struct RxCore {
    pub(crate) c: Consumer,
    pub(crate) own: Ownership,
}

/// Which process owns an endpoint, and why it disconnected (process-local, never shared).
pub(crate) struct Ownership {
    /// Identity of the owning process; 0 once handed to a child.
    owner: Cell<Ident>,
    /// Recorded when an operation reported `Disconnected`.
    pub(crate) reason: Cell<Option<DisconnectReason>>,
}

impl Ownership {
    fn new(owner: Ident) -> Ownership {
        Ownership {
            owner: Cell::new(owner),
            reason: Cell::new(None),
        }
    }

    /// Whether this process owns the endpoint (a cached identity compare: no system call).
    #[inline]
    fn owned(&self) -> bool {
        self.owner.get() == current_ident()
    }

    /// `Err` (recording `NotOwner`) unless this process owns the endpoint.
    #[inline]
    fn check(&self) -> Result<(), Fail> {
        if self.owned() {
            Ok(())
        } else {
            self.reason.set(Some(DisconnectReason::NotOwner));
            Err(Fail::Disconnected)
        }
    }

    /// Shapes a ring error, recording why it disconnected.
    fn fail(&self, e: RingError) -> Fail {
        match e {
            RingError::WouldBlock => Fail::Empty,
            RingError::Timeout => Fail::Timeout,
            RingError::TooLarge { len, max } => Fail::TooLarge { len, max },
            RingError::Disconnected(r) => {
                self.reason.set(Some(r));
                Fail::Disconnected
            }
        }
    }
}

/// Ring-level outcome of a channel operation, before each API shapes its error.
pub(crate) enum Fail {
    Empty,
    Timeout,
    Disconnected,
    TooLarge { len: usize, max: usize },
}

impl TxCore {
    /// Whether this process owns the endpoint.
    #[inline]
    pub(crate) fn owned(&self) -> bool {
        self.own.owned()
    }

    /// Reserves room for `len` bytes, per `mode`.
    #[inline]
    pub(crate) fn reserve(&self, len: usize, mode: Mode<'_>) -> Result<Reservation<'_>, Fail> {
        self.own.check()?;
        // A dead receiver is a disconnect whether or not there is room (the ring checks).
        let r = match mode {
            Mode::Try => self.p.try_reserve(len),
            Mode::Block(d) => self.p.reserve(len, d),
        };
        r.map_err(|e| self.own.fail(e))
    }

    pub(crate) fn max_message_len(&self) -> usize {
        self.p.max_message_len()
    }

    pub(crate) fn set_wait_policy(&self, p: WaitPolicy) {
        self.p.set_policy(p)
    }

    pub(crate) fn wait_policy(&self) -> WaitPolicy {
        self.p.policy()
    }

    pub(crate) fn disconnect_reason(&self) -> Option<DisconnectReason> {
        if !self.own.owned() {
            return Some(DisconnectReason::NotOwner);
        }
        if let Some(r) = self.own.reason.get().or(self.p.broken()) {
            return Some(r);
        }
        match self.p.try_reserve(0) {
            Err(RingError::Disconnected(r)) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn is_disconnected(&self) -> bool {
        self.disconnect_reason().is_some()
    }
}

impl RxCore {
    /// The next message, per `mode`.
    #[inline]
    pub(crate) fn read(&self, mode: Mode<'_>) -> Result<ReadGuard<'_>, Fail> {
        self.own.check()?;
        let r = match mode {
            Mode::Try => match self.c.try_read() {
                // Empty: tell apart "nothing yet" from "nothing ever again" (after one more
                // look, so that what was sent before the close or the death is delivered).
                Err(RingError::WouldBlock) => match self.c.peer_gone() {
                    Some(reason) => match self.c.try_read() {
                        Err(RingError::WouldBlock) => Err(RingError::Disconnected(reason)),
                        other => other,
                    },
                    None => Err(RingError::WouldBlock),
                },
                other => other,
            },
            Mode::Block(d) => self.c.read(d),
        };
        r.map_err(|e| self.own.fail(e))
    }

    pub(crate) fn max_message_len(&self) -> usize {
        self.c.max_message_len()
    }

    /// Waits until a record is committed, without consuming it.
    #[inline]
    pub(crate) fn wait_readable(&self, deadline: Option<&Deadline>) -> Result<(), Fail> {
        self.own.check()?;
        self.c.wait_readable(deadline).map_err(|e| self.own.fail(e))
    }

    pub(crate) fn set_wait_policy(&self, p: WaitPolicy) {
        self.c.set_policy(p)
    }

    pub(crate) fn wait_policy(&self) -> WaitPolicy {
        self.c.policy()
    }

    pub(crate) fn disconnect_reason(&self) -> Option<DisconnectReason> {
        if !self.own.owned() {
            return Some(DisconnectReason::NotOwner);
        }
        if let Some(r) = self.own.reason.get().or(self.c.broken()) {
            return Some(r);
        }
        self.c.peer_gone()
    }
}

impl Drop for TxCore {
    fn drop(&mut self) {
        if self.own.owned() {
            // Dropped by unwinding: the peer reports `PeerPanicked`, not a clean hang-up.
            self.p.close(std::thread::panicking());
        }
    }
}

impl Drop for RxCore {
    fn drop(&mut self) {
        if self.own.owned() {
            // Dropped by unwinding: the peer reports `PeerPanicked`, not a clean hang-up.
            self.c.close(std::thread::panicking());
        }
    }
}

/// What `fork` needs from an endpoint's core to hand it over.
#[doc(hidden)]
pub trait EndpointCore {
    /// Whether this process owns the endpoint now.
    fn is_owned(&self) -> bool;
    /// Records `owner` as the side's owner presence in shared memory (and wakes the peer so it
    /// re-arms on it).
    fn set_presence(&self, owner: PresenceRef);
    /// Sets the process-local owner identity (0: nobody here).
    fn set_owner(&self, owner: Ident);
}

impl EndpointCore for TxCore {
    fn is_owned(&self) -> bool {
        self.own.owned()
    }
    fn set_presence(&self, owner: PresenceRef) {
        self.p.mem().set_owner(true, owner);
    }
    fn set_owner(&self, owner: Ident) {
        self.own.owner.set(owner);
    }
}

impl EndpointCore for RxCore {
    fn is_owned(&self) -> bool {
        self.own.owned()
    }
    fn set_presence(&self, owner: PresenceRef) {
        self.c.mem().set_owner(false, owner);
    }
    fn set_owner(&self, owner: Ident) {
        self.own.owner.set(owner);
    }
}
