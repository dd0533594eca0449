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
//!
//! # Errors
//!
//! Every kind of channel reports through one family (`error.rs`). The core (`TxCore::reserve`,
//! `RxCore::read`) returns the widest member, `SendTimeoutError<(), TooLarge>` or
//! `RecvTimeoutError`, whose `Timeout` means "not within the time allowed" (none, for a `try_`
//! call); each public method narrows it to its own type, and each kind swaps in its own
//! payload (the typed message handed back, the serde encoder's refusal or decoder's error).

mod bytes;
mod error;
mod typed;

#[cfg(feature = "serde")]
mod serde_channel;

use std::cell::Cell;
use std::time::Instant;

pub use bytes::{
    ByteDuplex, ByteMessage, ByteReceiver, ByteSender, WriteGrant, byte_channel, byte_duplex,
};
#[cfg(feature = "serde")]
pub use error::EncodeError;
pub use error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TooLarge, TryRecvError, TrySendError,
};
#[cfg(feature = "serde")]
pub use serde_channel::{
    SerdeDuplex, SerdeDuplexPair, SerdeIter, SerdeReceiver, SerdeSender, SerdeTryIter,
    serde_channel, serde_duplex,
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

/// The ring-level deadline for a `*_deadline` call (a past `Instant` is a deadline that has
/// passed: the call still takes what is ready, as `*_timeout(Duration::ZERO)` does).
pub(crate) fn deadline_at(at: Instant) -> Deadline {
    Deadline::after(at.saturating_duration_since(Instant::now()))
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
            reserved: Cell::new(false),
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
    pub(crate) own: Ownership,
    /// Whether a [`Reserved`] of this end is alive. The ring hands out one reservation at a
    /// time (a second would cover the same bytes), and the endpoints take `&self`, so this
    /// flag, not the borrow checker, keeps a second one from being made meanwhile: by a
    /// `send` while a `WriteGrant` lives, or by a send from inside a value's `Serialize`.
    reserved: Cell<bool>,
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

    /// `false` (recording `NotOwner`) unless this process owns the endpoint.
    #[inline]
    fn check(&self) -> bool {
        if self.owned() {
            true
        } else {
            self.not_owner();
            false
        }
    }

    #[cold]
    #[inline(never)]
    fn not_owner(&self) {
        self.reason.set(Some(DisconnectReason::NotOwner));
        note_not_owner();
    }

    /// Records why the ring reported a disconnect.
    #[inline]
    fn disconnected(&self, r: DisconnectReason) {
        self.reason.set(Some(r));
    }
}

/// What a debug build writes to stderr the first time a process uses an endpoint it does not
/// own (see [`note_not_owner`]).
#[cfg(all(debug_assertions, not(loom)))]
const NOT_OWNER_NOTE: &str = "forkipc: this process used a channel endpoint that it \
does not own, so the operation reports Disconnected (DisconnectReason::NotOwner). An endpoint \
that the child closure captures, instead of receiving it through fork(ends, ..), is an inert \
copy in the child: pass it in `ends`. (Debug builds print this once per process.)\n";

/// Debug builds: says, once per process, that an endpoint was used where it is not owned, the
/// classic mistake being an endpoint captured by `fork`'s closure instead of passed in `ends`.
/// The operation still reports `Disconnected` (the contract for inert copies, which programs
/// and tests rely on); this line makes the cause visible even when the caller only sees
/// "disconnected" (an `unwrap`, an `is_err`). One `write(2)` of a constant: async-signal-safe,
/// so it is fine in a child of `fork_unchecked`.
#[inline]
fn note_not_owner() {
    #[cfg(all(debug_assertions, not(loom)))]
    {
        use crate::sync::{AtomicU32, Ordering};
        /// The pid of the last process that printed the note (a child inherits its parent's).
        static NOTED_IN: AtomicU32 = AtomicU32::new(0);
        let pid = crate::sync::ident::current_pid();
        // Relaxed: a hint only; at worst two threads of one process both print it.
        if NOTED_IN.swap(pid, Ordering::Relaxed) != pid {
            let msg = NOT_OWNER_NOTE.as_bytes();
            // SAFETY: `msg` is readable for `msg.len()` bytes; writing to fd 2 touches no
            // memory of ours. A failed or short write loses only the note.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        }
    }
}

/// A reservation in a sender's ring, marking the sender busy until committed or dropped.
pub(crate) struct Reserved<'a> {
    pub(crate) r: Reservation<'a>,
    _busy: Busy<'a>,
}

/// Clears the sender's `reserved` flag when dropped.
struct Busy<'a>(&'a Cell<bool>);

impl Drop for Busy<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Reserved<'_> {
    /// Publishes the message; the sender is free again.
    #[inline]
    pub(crate) fn commit(self) {
        self.r.commit();
    }
}

impl TxCore {
    /// Whether this process owns the endpoint.
    #[inline]
    pub(crate) fn owned(&self) -> bool {
        self.own.owned()
    }

    /// The fast path of a send of `msg` as one record: copies it in and commits if this
    /// process owns the end, no reservation is alive, it fits (in length, before the end of the
    /// data area, in free space) and the channel is open. `false` (nothing done) otherwise: the
    /// caller takes the general path, which pads, waits, and reports.
    #[inline]
    pub(crate) fn try_push_fast(&self, msg: &[u8]) -> bool {
        self.own.owned()
            && !self.reserved.get()
            && msg.len() <= self.p.max_message_len()
            // SAFETY: `msg` is readable for `msg.len()` bytes, at most the largest message
            // (checked just above).
            && unsafe { self.p.try_push_contiguous(msg.as_ptr(), msg.len()) }
    }

    /// Reserves room for `len` bytes, per `mode`. The widest error of a send: `Timeout` when
    /// there is no room within the time allowed (for `Mode::Try`: none), `Disconnected`,
    /// `Refused` when `len` can never fit. Each send method narrows it to its own type.
    ///
    /// # Panics
    /// If a reservation of this end is still alive (see `reserved`).
    #[inline]
    pub(crate) fn reserve(
        &self,
        len: usize,
        mode: Mode<'_>,
    ) -> Result<Reserved<'_>, SendTimeoutError<(), TooLarge>> {
        if self.reserved.get() {
            already_reserved();
        }
        if !self.own.check() {
            return Err(SendTimeoutError::Disconnected(()));
        }
        // A dead receiver is a disconnect whether or not there is room (the ring checks).
        let r = match mode {
            Mode::Try => self.p.try_reserve(len),
            Mode::Block(Some(d)) => self.p.reserve(len, Some(d)),
            // No deadline: whatever ends a wait without room (a spurious wake-up reported as a
            // timeout) is waited out again.
            Mode::Block(None) => loop {
                match self.p.reserve(len, None) {
                    Err(RingError::WouldBlock | RingError::Timeout) => continue,
                    r => break r,
                }
            },
        };
        match r {
            Ok(r) => {
                self.reserved.set(true);
                Ok(Reserved {
                    r,
                    _busy: Busy(&self.reserved),
                })
            }
            Err(RingError::WouldBlock | RingError::Timeout) => Err(SendTimeoutError::Timeout(())),
            Err(RingError::TooLarge { len, max }) => {
                Err(SendTimeoutError::Refused((), TooLarge { len, max }))
            }
            Err(RingError::Disconnected(reason)) => {
                self.own.disconnected(reason);
                Err(SendTimeoutError::Disconnected(()))
            }
        }
    }

    pub(crate) fn max_message_len(&self) -> usize {
        self.p.max_message_len()
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
}

/// A second reservation while one lives: a bug in the caller's code, which would otherwise
/// hand out the same ring bytes twice.
#[cold]
#[inline(never)]
fn already_reserved() -> ! {
    panic!(
        "forkipc: this sender already has a message reserved (a live WriteGrant, or a send \
         from inside the value's Serialize): commit or drop it before sending again"
    )
}

impl RxCore {
    /// The next message, per `mode`. The widest error of a receive: `Timeout` when nothing
    /// arrives within the time allowed (for `Mode::Try`: none), or `Disconnected` once the
    /// channel is empty and disconnected. (`Decode` is the serde layer's.)
    #[inline]
    pub(crate) fn read(&self, mode: Mode<'_>) -> Result<ReadGuard<'_>, RecvTimeoutError> {
        if !self.own.check() {
            return Err(RecvTimeoutError::Disconnected);
        }
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
            Mode::Block(Some(d)) => self.c.read(Some(d)),
            // No deadline: a wait that ends with nothing is waited out again.
            Mode::Block(None) => loop {
                match self.c.read(None) {
                    Err(RingError::WouldBlock | RingError::Timeout) => continue,
                    r => break r,
                }
            },
        };
        r.map_err(|e| self.fail(e))
    }

    /// Shapes a ring error, recording why it disconnected.
    #[inline]
    fn fail(&self, e: RingError) -> RecvTimeoutError {
        match e {
            RingError::WouldBlock | RingError::Timeout => RecvTimeoutError::Timeout,
            RingError::Disconnected(reason) => {
                self.own.disconnected(reason);
                RecvTimeoutError::Disconnected
            }
            // The consumer never reports a length it cannot hold; were it to, the ring is not
            // what this end believes it is.
            RingError::TooLarge { .. } => {
                self.c.mark_corrupted();
                self.own.disconnected(DisconnectReason::Corrupted);
                RecvTimeoutError::Disconnected
            }
        }
    }

    pub(crate) fn max_message_len(&self) -> usize {
        self.c.max_message_len()
    }

    /// Waits until a record is committed, without consuming it.
    #[inline]
    pub(crate) fn wait_readable(
        &self,
        deadline: Option<&Deadline>,
    ) -> Result<(), RecvTimeoutError> {
        if !self.own.check() {
            return Err(RecvTimeoutError::Disconnected);
        }
        loop {
            match self.c.wait_readable(deadline) {
                Err(RingError::WouldBlock | RingError::Timeout) if deadline.is_none() => continue,
                r => return r.map_err(|e| self.fail(e)),
            }
        }
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

// ---------------------------------------------------------------------------------------------
// The common surface of every endpoint

mod sealed {
    pub trait Sealed {}
}

/// What every endpoint answers, whatever its kind and direction: [`Sender`], [`Receiver`],
/// [`Duplex`], [`ByteSender`], [`ByteReceiver`], [`ByteDuplex`], and with feature `serde`
/// `SerdeSender`, `SerdeReceiver` and `SerdeDuplex`.
///
/// Each endpoint also has these as inherent methods, so the trait is needed only to write code
/// generic over endpoints. Sealed: implemented by this crate only.
///
/// ```
/// use forkipc::{DisconnectReason, Endpoint};
///
/// fn gone(ends: &[&dyn Endpoint]) -> Vec<Option<DisconnectReason>> {
///     ends.iter().map(|e| e.disconnect_reason()).collect()
/// }
/// let (tx, rx) = forkipc::channel::<u64>(4)?;
/// let (btx, brx) = forkipc::byte_channel(256)?;
/// drop(brx);
/// assert_eq!(gone(&[&tx, &rx, &btx]), [None, None, Some(DisconnectReason::PeerDropped)]);
/// # Ok::<(), forkipc::Error>(())
/// ```
pub trait Endpoint: sealed::Sealed {
    /// Why this end is disconnected, if it is: the peer's owner dropped its end
    /// ([`PeerDropped`](DisconnectReason::PeerDropped)), or dropped it while unwinding from a
    /// panic ([`PeerPanicked`](DisconnectReason::PeerPanicked)), the peer's process died
    /// ([`PeerDied`](DisconnectReason::PeerDied)), the ring's shared memory is corrupt
    /// ([`Corrupted`](DisconnectReason::Corrupted)), or this process does not own this end
    /// ([`NotOwner`](DisconnectReason::NotOwner): it was handed to a child, or it is a copy
    /// inherited through `fork`).
    ///
    /// A receiving end whose peer is gone may still hold messages: receiving drains them
    /// before it reports `Disconnected`. A duplex reports its receiving half's reason, else its
    /// sending half's.
    fn disconnect_reason(&self) -> Option<DisconnectReason>;

    /// Whether [`disconnect_reason`](Self::disconnect_reason) is `Some`: a sending end can no
    /// longer send; a receiving end's peer is gone (messages sent before may still wait).
    fn is_disconnected(&self) -> bool {
        self.disconnect_reason().is_some()
    }

    /// Chooses how a blocked operation on this end waits (default: spin 50 µs, then sleep).
    /// A duplex sets both halves.
    fn set_wait_policy(&self, policy: WaitPolicy);

    /// The current wait policy (a duplex: its receiving half's).
    fn wait_policy(&self) -> WaitPolicy;
}

/// The process-local status behind an endpoint: one core, or a duplex's two.
pub(crate) trait Status {
    fn reason(&self) -> Option<DisconnectReason>;
    fn policy(&self) -> WaitPolicy;
    fn set_policy(&self, p: WaitPolicy);
    fn owned(&self) -> bool;
}

impl Status for TxCore {
    fn reason(&self) -> Option<DisconnectReason> {
        self.disconnect_reason()
    }
    fn policy(&self) -> WaitPolicy {
        self.p.policy()
    }
    fn set_policy(&self, p: WaitPolicy) {
        self.p.set_policy(p)
    }
    fn owned(&self) -> bool {
        self.own.owned()
    }
}

impl Status for RxCore {
    fn reason(&self) -> Option<DisconnectReason> {
        self.disconnect_reason()
    }
    fn policy(&self) -> WaitPolicy {
        self.c.policy()
    }
    fn set_policy(&self, p: WaitPolicy) {
        self.c.set_policy(p)
    }
    fn owned(&self) -> bool {
        self.own.owned()
    }
}

/// A duplex: (sending half, receiving half).
impl Status for (&TxCore, &RxCore) {
    fn reason(&self) -> Option<DisconnectReason> {
        self.1
            .disconnect_reason()
            .or_else(|| self.0.disconnect_reason())
    }
    fn policy(&self) -> WaitPolicy {
        self.1.c.policy()
    }
    fn set_policy(&self, p: WaitPolicy) {
        self.0.p.set_policy(p);
        self.1.c.set_policy(p);
    }
    fn owned(&self) -> bool {
        self.0.own.owned() && self.1.own.owned()
    }
}

/// Gives an endpoint type the common surface: the inherent methods, [`Endpoint`], and a
/// `Debug` that says whether this process owns it. `$status` is an expression of `s` (the
/// endpoint) that yields its [`Status`].
macro_rules! endpoint_surface {
    ($ty:ident $(<$($g:ident),*>)?, |$s:ident| $status:expr) => {
        impl$(<$($g),*>)? $ty$(<$($g),*>)? {
            /// Why this end is disconnected, if it is (see
            /// [`Endpoint::disconnect_reason`](crate::Endpoint::disconnect_reason)).
            pub fn disconnect_reason(&self) -> Option<crate::DisconnectReason> {
                let $s = self;
                crate::channel::Status::reason(&$status)
            }

            /// Whether this end is disconnected (see
            /// [`Endpoint::is_disconnected`](crate::Endpoint::is_disconnected)).
            pub fn is_disconnected(&self) -> bool {
                self.disconnect_reason().is_some()
            }

            /// Chooses how a blocked operation on this end waits (default: spin 50 µs, then
            /// sleep).
            pub fn set_wait_policy(&self, policy: crate::WaitPolicy) {
                let $s = self;
                crate::channel::Status::set_policy(&$status, policy)
            }

            /// The current wait policy.
            pub fn wait_policy(&self) -> crate::WaitPolicy {
                let $s = self;
                crate::channel::Status::policy(&$status)
            }
        }

        impl$(<$($g),*>)? crate::channel::sealed::Sealed for $ty$(<$($g),*>)? {}

        impl$(<$($g),*>)? crate::Endpoint for $ty$(<$($g),*>)? {
            fn disconnect_reason(&self) -> Option<crate::DisconnectReason> {
                $ty::disconnect_reason(self)
            }
            fn set_wait_policy(&self, policy: crate::WaitPolicy) {
                $ty::set_wait_policy(self, policy)
            }
            fn wait_policy(&self) -> crate::WaitPolicy {
                $ty::wait_policy(self)
            }
        }

        impl$(<$($g),*>)? std::fmt::Debug for $ty$(<$($g),*>)? {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let $s = self;
                f.debug_struct(stringify!($ty))
                    .field("owned_here", &crate::channel::Status::owned(&$status))
                    .finish_non_exhaustive()
            }
        }
    };
}
pub(crate) use endpoint_surface;

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
