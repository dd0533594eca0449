//! Serde channels (feature `serde`): any `Serialize + DeserializeOwned` type, encoded with
//! postcard straight into space reserved in the ring, and decoded from a private copy.
//!
//! The receiver never decodes in the ring: the peer process can write that memory at any time,
//! and postcard (like most decoders) first validates (a UTF-8 string, a length, an enum tag) and
//! then copies, so bytes changed in between would reach safe code unvalidated (a `String` that
//! is not UTF-8). Each message is copied into a buffer of the receiver's own, reused from one
//! message to the next (it grows to the largest message received, at most half the ring), its
//! ring space released, and then decoded. The sender encodes in place: only this process
//! writes a reservation, and the peer reads it only after the commit.

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::bytes::send_err;
use super::{Fail, Mode};
use crate::sync::Deadline;
use crate::{
    ByteReceiver, ByteSendError, ByteSender, DisconnectReason, Error, WaitPolicy, byte_channel,
};

/// Creates a channel of serde messages over a byte ring of `capacity_bytes` (rounded up to a
/// power of two; the largest encoded message is half of it minus 16 bytes).
///
/// ```no_run
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Job { name: String, args: Vec<u32> }
///
/// let (tx, rx) = forkipc::serde_channel::<Job>(1 << 16)?;
/// let mut child = forkipc::fork(tx, |tx| {
///     tx.send(&Job { name: "sum".into(), args: vec![1, 2, 3] }).is_err() as i32
/// })?;
/// assert_eq!(rx.recv().unwrap().args, [1, 2, 3]);
/// child.wait()?;
/// # Ok::<(), forkipc::Error>(())
/// ```
pub fn serde_channel<T: Serialize + DeserializeOwned>(
    capacity_bytes: usize,
) -> Result<(SerdeSender<T>, SerdeReceiver<T>), Error> {
    let (tx, rx) = byte_channel(capacity_bytes)?;
    Ok((
        SerdeSender {
            inner: tx,
            _t: PhantomData,
        },
        SerdeReceiver::from(rx),
    ))
}

/// Sending end of a serde channel.
pub struct SerdeSender<T> {
    pub(crate) inner: ByteSender,
    _t: PhantomData<fn(&T)>,
}

/// Receiving end of a serde channel.
pub struct SerdeReceiver<T> {
    pub(crate) inner: ByteReceiver,
    /// The private copy of the message being decoded; empty while none is (taken out of the
    /// `Cell` for the duration, so nothing can observe it half-used).
    scratch: Cell<Vec<u8>>,
    _t: PhantomData<fn() -> T>,
}

/// Why sending a serde message failed: the byte channel's reason, or the encoder's.
#[derive(Debug)]
pub enum SerdeSendError {
    /// As for a byte message: `Disconnected`, `Full` (`try_send`), `Timeout` (`send_timeout`)
    /// or `TooLarge` (the encoded length exceeds the ring's maximum).
    Send(ByteSendError),
    /// The value could not be encoded.
    Encode(postcard::Error),
}

/// Why receiving a serde message failed.
#[derive(Debug)]
pub enum SerdeRecvError {
    /// Nothing to receive right now (`try_recv`).
    Empty,
    /// Nothing arrived before the timeout (`recv_timeout`).
    Timeout,
    /// Empty and disconnected.
    Disconnected,
    /// A message arrived but could not be decoded as `T` (it was consumed).
    Decode(postcard::Error),
}

impl std::fmt::Display for SerdeSendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerdeSendError::Send(e) => e.fmt(f),
            SerdeSendError::Encode(e) => write!(f, "encoding failed: {e}"),
        }
    }
}

impl std::fmt::Display for SerdeRecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerdeRecvError::Empty => f.write_str("receiving on an empty channel"),
            SerdeRecvError::Timeout => f.write_str("timed out waiting on receive operation"),
            SerdeRecvError::Disconnected => f.write_str("channel is empty and disconnected"),
            SerdeRecvError::Decode(e) => write!(f, "decoding failed: {e}"),
        }
    }
}

impl std::error::Error for SerdeSendError {}
impl std::error::Error for SerdeRecvError {}

impl<T: Serialize + DeserializeOwned> SerdeSender<T> {
    fn put(&self, value: &T, mode: Mode<'_>) -> Result<(), SerdeSendError> {
        let len = postcard::experimental::serialized_size(value).map_err(SerdeSendError::Encode)?;
        let timeout_is_full = matches!(mode, Mode::Block(Some(_)));
        let mut r = self
            .inner
            .core
            .reserve(len, mode)
            .map_err(|f| SerdeSendError::Send(send_err(f, timeout_is_full)))?;
        postcard::to_slice(value, r.as_mut_slice()).map_err(SerdeSendError::Encode)?;
        r.commit();
        Ok(())
    }

    /// Encodes and sends `value`, blocking while the ring is full.
    pub fn send(&self, value: &T) -> Result<(), SerdeSendError> {
        self.put(value, Mode::Block(None))
    }

    /// Encodes and sends `value` if there is room now.
    pub fn try_send(&self, value: &T) -> Result<(), SerdeSendError> {
        self.put(value, Mode::Try)
    }

    /// Encodes and sends `value`, waiting at most `timeout` for room.
    pub fn send_timeout(&self, value: &T, timeout: Duration) -> Result<(), SerdeSendError> {
        let d = Deadline::after(timeout);
        self.put(value, Mode::Block(Some(&d)))
    }

    /// Why this end is disconnected, if it is.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.inner.disconnect_reason()
    }

    /// Chooses how a blocked send waits.
    pub fn set_wait_policy(&self, policy: WaitPolicy) {
        self.inner.set_wait_policy(policy)
    }
}

impl<T: Serialize + DeserializeOwned> SerdeReceiver<T> {
    fn take(&self, mode: Mode<'_>) -> Result<T, SerdeRecvError> {
        let g = self.inner.core.read(mode).map_err(|f| match f {
            Fail::Empty => SerdeRecvError::Empty,
            Fail::Timeout => SerdeRecvError::Timeout,
            _ => SerdeRecvError::Disconnected,
        })?;
        // Copy first, then release, then decode the copy (see the module doc): the peer can
        // change the ring's bytes while we read them, but not our copy.
        let mut buf = self.scratch.take();
        buf.clear();
        #[cfg(not(loom))]
        buf.extend_from_slice(g.as_slice());
        #[cfg(loom)]
        {
            buf.resize(g.len(), 0);
            g.read_into(&mut buf);
        }
        drop(g);
        let r = postcard::from_bytes(&buf).map_err(SerdeRecvError::Decode);
        self.scratch.set(buf);
        r
    }

    /// Receives and decodes the next message, blocking until one arrives.
    pub fn recv(&self) -> Result<T, SerdeRecvError> {
        self.take(Mode::Block(None))
    }

    /// Receives a message if one is ready.
    pub fn try_recv(&self) -> Result<T, SerdeRecvError> {
        self.take(Mode::Try)
    }

    /// Receives a message, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, SerdeRecvError> {
        let d = Deadline::after(timeout);
        self.take(Mode::Block(Some(&d)))
    }

    /// A blocking iterator that ends at disconnect, or at the first message that fails to
    /// decode.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    /// Why this end is disconnected, if it is.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.inner.disconnect_reason()
    }

    /// Chooses how a blocked receive waits.
    pub fn set_wait_policy(&self, policy: WaitPolicy) {
        self.inner.set_wait_policy(policy)
    }
}

/// Uses an existing byte sender for serde messages.
impl<T> From<ByteSender> for SerdeSender<T> {
    fn from(inner: ByteSender) -> Self {
        SerdeSender {
            inner,
            _t: PhantomData,
        }
    }
}

/// Decodes the messages of an existing byte receiver.
impl<T> From<ByteReceiver> for SerdeReceiver<T> {
    fn from(inner: ByteReceiver) -> Self {
        SerdeReceiver {
            inner,
            scratch: Cell::new(Vec::new()),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for SerdeSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerdeSender { .. }")
    }
}

impl<T> std::fmt::Debug for SerdeReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerdeReceiver { .. }")
    }
}
