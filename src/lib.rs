#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
// Under loom only the models' subset of the crate is exercised.
#![cfg_attr(loom, allow(dead_code, unused_imports, missing_docs))]
#![cfg(target_os = "linux")]

mod channel;
mod error;
mod mutex;
#[cfg(not(loom))]
mod pool;
mod presence;
mod process;
mod region;
mod ring;
mod select;
mod sync;
mod sys;

/// The crate whose traits make a type [`Plain`] data for typed channels (derive
/// `Pod` + `Zeroable`, or `CheckedBitPattern` + `NoUninit`), re-exported so its version always
/// matches this crate's.
pub use bytemuck;
pub use channel::{
    ByteDuplex, ByteMessage, ByteReceiver, ByteSender, Duplex, DuplexPair, Endpoint, IntoIter,
    Iter, Plain, Receiver, RecvError, RecvTimeoutError, SendError, SendTimeoutError, Sender,
    TooLarge, TryIter, TryRecvError, TrySendError, WriteGrant, byte_channel, byte_duplex, channel,
    duplex,
};
#[cfg(feature = "serde")]
pub use channel::{
    EncodeError, SerdeDuplex, SerdeDuplexPair, SerdeIter, SerdeReceiver, SerdeSender, SerdeTryIter,
    serde_channel, serde_duplex,
};
pub use error::Error;
pub use mutex::{LockError, NotRecoverableError, ShmMutex, ShmMutexGuard, TryLockError};
#[cfg(not(loom))]
pub use pool::{JobError, JobHandle, Map as PoolMap, Pool, PoolBuilder};
/// The serde channels' wire format (feature `serde`), re-exported so that its error type,
/// [`postcard::Error`], which serde channels report for a value that fails to encode or a
/// message that fails to decode, can be named, at the version this crate uses.
#[cfg(feature = "serde")]
pub use postcard;
pub use process::{Child, Outcome, Transfer, fork, fork_unchecked};
pub use region::{AnonRegion, Shareable};
pub use ring::DisconnectReason;
pub use select::{ReadyTimeoutError, Select, SelectRecv, SelectSend, TryReadyError};
pub use sync::WaitPolicy;

/// Internals exposed for the loom models in `loom-tests/` only.
#[cfg(loom)]
#[doc(hidden)]
pub mod __loom {
    pub use crate::ring::{Consumer, Producer, ReadGuard, Reservation, RingError};
    pub use crate::sync::robust::die_after_next_wake;

    /// A bare ring of `cap` data bytes (no owners, no presence).
    pub fn ring(cap: usize) -> Result<(Producer, Consumer), crate::Error> {
        crate::ring::ring(cap)
    }

    /// `Producer::reserve` without a deadline (the deadline type is crate-private).
    pub fn reserve(p: &Producer, len: usize) -> Result<Reservation<'_>, RingError> {
        p.reserve(len, None)
    }

    /// `Consumer::read` without a deadline (the deadline type is crate-private).
    pub fn read(c: &Consumer) -> Result<ReadGuard<'_>, RingError> {
        c.read(None)
    }

    /// The typed channels' fast send path: `false` if it does not apply right now.
    pub fn push_fixed(p: &Producer, msg: &[u8]) -> bool {
        // SAFETY: `msg` is readable for `msg.len()` bytes, which is at most the largest
        // message (checked).
        msg.len() <= p.max_message_len()
            && unsafe { p.try_push_contiguous(msg.as_ptr(), msg.len()) }
    }

    /// The byte channels' fast receive path: the next message if it is committed and valid,
    /// `None` otherwise (empty, padding, anything the general path must look at).
    pub fn read_fast(c: &Consumer) -> Option<ReadGuard<'_>> {
        c.try_read_fast()
    }

    /// The typed channels' fast receive path: `false` unless a message of exactly
    /// `out.len()` bytes was taken.
    pub fn pop_fixed(c: &Consumer, out: &mut [u8]) -> bool {
        // SAFETY: `out` is writable for `out.len()` bytes, at most the largest message
        // (checked).
        out.len() <= c.max_message_len() && unsafe { c.try_pop_exact(out.as_mut_ptr(), out.len()) }
    }
}

/// Hooks for this crate's own tests (scribbling over a ring's shared memory). Not part of the
/// API; no stability promise.
#[cfg(not(loom))]
#[doc(hidden)]
pub mod __testing {
    /// A byte channel's shared memory: the ring header's address, the data area's address, and
    /// the data area's size in bytes. Writing there simulates a buggy or dying peer.
    pub fn ring_memory(rx: &crate::ByteReceiver) -> (*mut u8, *mut u8, usize) {
        rx.core.c.mem().raw_parts()
    }

    /// Runs `f` in `fork` between the reservation of the child's presence slot and the `fork`
    /// system call (`None`: nothing), so a test can kill the parent exactly there.
    pub fn set_before_fork_hook(f: Option<fn()>) {
        crate::process::testing::set_before_fork(f)
    }

    /// In a fork child: the page where it records a panic for its parent (address, length),
    /// if `fork` armed one. Writing there plays a compromised child.
    pub fn panic_capture_page() -> Option<(*mut u8, usize)> {
        crate::process::panic_capture::armed_page()
    }

    /// The calling process SIGKILLs itself right after the next wake-up of a sleep that may
    /// watch a peer's presence (a blocked `recv`/`send` whose peer has an owner, or any
    /// `Select` sleep), before it acts on it: the double fault of a sleeper woken by a death
    /// and killed before passing it on.
    pub fn kill_self_after_next_presence_wake() {
        crate::presence::testing::kill_after_next_wake()
    }

    /// The calling process SIGKILLs itself inside its next claim of a presence slot (its
    /// first channel, or a `fork`), after the slot's word changed hands and before the claim
    /// finished.
    pub fn kill_self_in_next_presence_claim() {
        crate::presence::testing::kill_in_next_claim()
    }

    /// As [`ring_memory`], for a typed receiver.
    pub fn typed_ring_memory<T>(rx: &crate::Receiver<T>) -> (*mut u8, *mut u8, usize) {
        rx.core.c.mem().raw_parts()
    }
}
