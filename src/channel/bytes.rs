//! Byte channels: variable-length messages, copied or accessed in place.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use super::{Fail, Mode, RxCore, TxCore, new_ring};
use crate::ring::{DisconnectReason, MIN_CAP, ReadGuard, Reservation};
use crate::sync::{Deadline, WaitPolicy};
use crate::{ByteSendError, Error, RecvError, RecvTimeoutError, TryRecvError};

/// Creates a channel of variable-length byte messages.
///
/// The ring's data area is `capacity_bytes` rounded up to a power of two (at least 64). Each
/// message occupies an 8-byte header plus its length rounded up to 8; the largest message is
/// half the data area minus 16 bytes ([`ByteSender::max_message_len`]); larger ones are
/// refused with `TooLarge`. Empty messages are valid.
///
/// ```no_run
/// let (tx, rx) = forkipc::byte_channel(1 << 16)?;
/// let mut child = forkipc::fork(tx, |tx| {
///     tx.send(b"hello").unwrap();
///     0
/// })?;
/// assert_eq!(rx.recv().unwrap(), b"hello");
/// assert!(child.wait()?.success());
/// # Ok::<(), forkipc::Error>(())
/// ```
pub fn byte_channel(capacity_bytes: usize) -> Result<(ByteSender, ByteReceiver), Error> {
    if capacity_bytes == 0 {
        return Err(Error::ZeroSize);
    }
    let cap = capacity_bytes
        .max(MIN_CAP)
        .checked_next_power_of_two()
        .filter(|c| *c <= u32::MAX as usize)
        .ok_or(Error::SizeOverflow)?;
    let (tx, rx) = new_ring(cap)?;
    Ok((ByteSender { core: tx }, ByteReceiver { core: rx }))
}

/// The sending end of a byte channel. `Send`, not `Sync`.
pub struct ByteSender {
    pub(crate) core: TxCore,
}

/// The receiving end of a byte channel. `Send`, not `Sync`.
pub struct ByteReceiver {
    pub(crate) core: RxCore,
}

/// Shapes a ring outcome as a byte-send error; `timeout_is_full`: a full ring at the deadline
/// is a `Timeout` (the `_timeout` variants), not `Full`.
pub(super) fn send_err(f: Fail, timeout_is_full: bool) -> ByteSendError {
    match f {
        Fail::Empty if timeout_is_full => ByteSendError::Timeout,
        Fail::Empty => ByteSendError::Full,
        Fail::Timeout => ByteSendError::Timeout,
        Fail::Disconnected => ByteSendError::Disconnected,
        Fail::TooLarge { len, max } => ByteSendError::TooLarge { len, max },
    }
}

impl ByteSender {
    fn put(&self, msg: &[u8], mode: Mode<'_>) -> Result<(), Fail> {
        let mut r = self.core.reserve(msg.len(), mode)?;
        r.write(msg);
        r.commit();
        Ok(())
    }

    /// Sends `msg`, blocking while the ring is full. Errors: `Disconnected`, `TooLarge`.
    #[inline]
    pub fn send(&self, msg: &[u8]) -> Result<(), ByteSendError> {
        self.put(msg, Mode::Block(None))
            .map_err(|f| send_err(f, false))
    }

    /// Sends `msg` if there is room now. Errors: `Full`, `Disconnected`, `TooLarge`.
    #[inline]
    pub fn try_send(&self, msg: &[u8]) -> Result<(), ByteSendError> {
        self.put(msg, Mode::Try).map_err(|f| send_err(f, false))
    }

    /// Sends `msg`, waiting at most `timeout` for room. Errors: `Timeout`, `Disconnected`,
    /// `TooLarge`. A timed-out send has no effect.
    pub fn send_timeout(&self, msg: &[u8], timeout: Duration) -> Result<(), ByteSendError> {
        let d = Deadline::after(timeout);
        self.put(msg, Mode::Block(Some(&d)))
            .map_err(|f| send_err(f, true))
    }

    /// Reserves `len` bytes in the ring to write a message in place (zero-copy), blocking while
    /// the ring is full. Call [`WriteGrant::commit`] to send it; dropping the grant sends
    /// nothing.
    ///
    /// ```no_run
    /// # let (mut tx, rx) = forkipc::byte_channel(4096)?;
    /// let mut grant = tx.reserve(5).unwrap();
    /// grant.copy_from_slice(b"hello");
    /// grant.commit();
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn reserve(&mut self, len: usize) -> Result<WriteGrant<'_>, ByteSendError> {
        let r = self
            .core
            .reserve(len, Mode::Block(None))
            .map_err(|f| send_err(f, false))?;
        Ok(WriteGrant { r })
    }

    /// As [`reserve`](Self::reserve), without blocking (`Full` when there is no room).
    pub fn try_reserve(&mut self, len: usize) -> Result<WriteGrant<'_>, ByteSendError> {
        let r = self
            .core
            .reserve(len, Mode::Try)
            .map_err(|f| send_err(f, false))?;
        Ok(WriteGrant { r })
    }

    /// The largest message this channel accepts.
    pub fn max_message_len(&self) -> usize {
        self.core.max_message_len()
    }

    /// Why this end is disconnected, if it is.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.core.disconnect_reason()
    }

    /// Whether sends can no longer succeed.
    pub fn is_disconnected(&self) -> bool {
        self.core.is_disconnected()
    }

    /// Chooses how a blocked send waits.
    pub fn set_wait_policy(&self, policy: WaitPolicy) {
        self.core.set_wait_policy(policy)
    }
}

impl ByteReceiver {
    fn take<R>(&self, mode: Mode<'_>, f: impl FnOnce(&ReadGuard<'_>) -> R) -> Result<R, Fail> {
        let g = self.core.read(mode)?;
        Ok(f(&g))
    }

    fn to_vec(g: &ReadGuard<'_>) -> Vec<u8> {
        #[cfg(not(loom))]
        {
            g.as_slice().to_vec()
        }
        #[cfg(loom)]
        {
            let mut v = vec![0u8; g.len()];
            g.read_into(&mut v);
            v
        }
    }

    /// Receives the next message, blocking until one arrives.
    #[inline]
    pub fn recv(&self) -> Result<Vec<u8>, RecvError> {
        self.take(Mode::Block(None), Self::to_vec)
            .map_err(|_| RecvError)
    }

    /// Receives a message if one is ready.
    pub fn try_recv(&self) -> Result<Vec<u8>, TryRecvError> {
        self.take(Mode::Try, Self::to_vec).map_err(|f| match f {
            Fail::Empty => TryRecvError::Empty,
            _ => TryRecvError::Disconnected,
        })
    }

    /// Receives a message, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvTimeoutError> {
        let d = Deadline::after(timeout);
        self.take(Mode::Block(Some(&d)), Self::to_vec)
            .map_err(|f| match f {
                Fail::Timeout | Fail::Empty => RecvTimeoutError::Timeout,
                _ => RecvTimeoutError::Disconnected,
            })
    }

    /// Receives the next message into `buf`, replacing its contents (reusing its allocation),
    /// and returns the message's length.
    ///
    /// ```
    /// let (tx, rx) = forkipc::byte_channel(4096)?;
    /// tx.send(b"first").unwrap();
    /// tx.send(b"2nd").unwrap();
    /// let mut buf = Vec::with_capacity(64);
    /// assert_eq!(rx.recv_into(&mut buf), Ok(5));
    /// assert_eq!(rx.recv_into(&mut buf), Ok(3));
    /// assert_eq!(buf, b"2nd");
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn recv_into(&self, buf: &mut Vec<u8>) -> Result<usize, RecvError> {
        self.take(Mode::Block(None), |g| {
            buf.clear();
            // One copy, straight from the ring (no zero-fill first).
            #[cfg(not(loom))]
            buf.extend_from_slice(g.as_slice());
            #[cfg(loom)]
            {
                buf.resize(g.len(), 0);
                g.read_into(buf);
            }
            g.len()
        })
        .map_err(|_| RecvError)
    }

    /// Receives the next message and lends it in place (zero-copy), blocking until one
    /// arrives. Its space is released when the returned guard is dropped.
    ///
    /// The bytes stay in shared memory that the peer process can write at any time (see
    /// [`ByteMessage`]): copy them out before you parse or validate them.
    ///
    /// ```
    /// let (tx, mut rx) = forkipc::byte_channel(4096)?;
    /// tx.send(&[1, 2, 3, 4]).unwrap();
    /// let msg = rx.recv_ref().unwrap();
    /// assert_eq!(msg.iter().map(|&b| u32::from(b)).sum::<u32>(), 10); // read in the ring
    /// drop(msg); // frees its space
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn recv_ref(&mut self) -> Result<ByteMessage<'_>, RecvError> {
        let g = self.core.read(Mode::Block(None)).map_err(|_| RecvError)?;
        Ok(ByteMessage { g })
    }

    /// As [`recv_ref`](Self::recv_ref), without blocking. The same caution applies: the bytes
    /// lie in memory the peer can write.
    pub fn try_recv_ref(&mut self) -> Result<ByteMessage<'_>, TryRecvError> {
        let g = self.core.read(Mode::Try).map_err(|f| match f {
            Fail::Empty => TryRecvError::Empty,
            _ => TryRecvError::Disconnected,
        })?;
        Ok(ByteMessage { g })
    }

    /// A blocking iterator of messages that ends when the channel is disconnected.
    pub fn iter(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    /// A non-blocking iterator over the messages ready now.
    pub fn try_iter(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        std::iter::from_fn(move || self.try_recv().ok())
    }

    /// The largest message this channel accepts.
    pub fn max_message_len(&self) -> usize {
        self.core.max_message_len()
    }

    /// Why this end is disconnected, if it is.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.core.disconnect_reason()
    }

    /// Chooses how a blocked receive waits.
    pub fn set_wait_policy(&self, policy: WaitPolicy) {
        self.core.set_wait_policy(policy)
    }
}

/// Space reserved in the ring for one message, written in place. `commit` sends it; dropping
/// it sends nothing.
///
/// The slice lies in memory that the peer process maps too. A well-behaved peer does not touch
/// it before the commit, but a buggy or hostile one can write it at any time, so what you read
/// back from the grant may differ from what you wrote (safe: `[u8]` has no invalid values).
/// Write into it; do not use it to keep data you will read again and trust.
pub struct WriteGrant<'a> {
    r: Reservation<'a>,
}

impl WriteGrant<'_> {
    /// Sends the message.
    pub fn commit(self) {
        self.r.commit()
    }
}

#[cfg(not(loom))]
impl Deref for WriteGrant<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.r.as_slice()
    }
}

#[cfg(not(loom))]
impl DerefMut for WriteGrant<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.r.as_mut_slice()
    }
}

/// A received message lent in place; its ring space is released on drop.
///
/// The slice lies in memory that the peer process can write at any time: a well-behaved peer
/// leaves it alone until the message is released, but a buggy or hostile one can change its
/// bytes while you hold it, even between two reads of the same byte. That is safe (`[u8]` has
/// no invalid values), but a check made on the slice says nothing about what a later read
/// sees: copy the bytes into memory of your own (`to_vec`, [`ByteReceiver::recv_into`])
/// before you parse or validate anything (UTF-8, a length, a checksum, a decoder's input).
/// This crate's own decoders (typed and serde channels) always copy first.
pub struct ByteMessage<'a> {
    g: ReadGuard<'a>,
}

#[cfg(not(loom))]
impl Deref for ByteMessage<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.g.as_slice()
    }
}

impl std::fmt::Debug for ByteSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByteSender { .. }")
    }
}
impl std::fmt::Debug for ByteReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByteReceiver { .. }")
    }
}
