//! Byte channels: variable-length messages, copied or accessed in place.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use super::{Mode, Reserved, RxCore, TxCore, deadline_at, endpoint_surface, new_ring};
use crate::ring::{MIN_CAP, ReadGuard};
use crate::sync::Deadline;
use crate::{
    Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TooLarge, TryRecvError,
    TrySendError,
};

/// Creates a channel of variable-length byte messages.
///
/// The ring's data area is `capacity_bytes` rounded up to a power of two (at least 64). Each
/// message occupies an 8-byte header plus its length rounded up to 8; the largest message is
/// half the data area minus 16 bytes ([`ByteSender::max_message_len`]); larger ones are
/// refused ([`SendError::Refused`] with [`TooLarge`]). Empty messages are valid.
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
///
/// Its errors hand back `()`: the message was borrowed, so the caller still holds it. A message
/// longer than [`max_message_len`](Self::max_message_len) is refused with [`TooLarge`]; every
/// other failure is crossbeam's.
pub struct ByteSender {
    pub(crate) core: TxCore,
}

/// The receiving end of a byte channel. `Send`, not `Sync`.
pub struct ByteReceiver {
    pub(crate) core: RxCore,
}

impl ByteSender {
    #[inline]
    fn put(&self, msg: &[u8], mode: Mode<'_>) -> Result<(), SendTimeoutError<(), TooLarge>> {
        if self.core.try_push_fast(msg) {
            return Ok(());
        }
        self.put_slow(msg, mode)
    }

    /// The general path: wrap-around, a full ring, a disconnect, a refusal, not the owner.
    #[cold]
    #[inline(never)]
    fn put_slow(&self, msg: &[u8], mode: Mode<'_>) -> Result<(), SendTimeoutError<(), TooLarge>> {
        let mut r = self.core.reserve(msg.len(), mode)?;
        r.r.write(msg);
        r.commit();
        Ok(())
    }

    /// Sends `msg`, blocking while the ring is full.
    ///
    /// # Errors
    /// [`SendError::Disconnected`], or [`SendError::Refused`] when `msg` is longer than
    /// [`max_message_len`](Self::max_message_len).
    ///
    /// # Panics
    /// If a [`WriteGrant`] of this sender is alive (commit or drop it first).
    #[inline]
    pub fn send(&self, msg: &[u8]) -> Result<(), SendError<(), TooLarge>> {
        self.put(msg, Mode::Block(None))
            .map_err(SendTimeoutError::into_send)
    }

    /// Sends `msg` if there is room now.
    ///
    /// # Errors
    /// [`TrySendError::Full`], [`TrySendError::Disconnected`], or [`TrySendError::Refused`]
    /// when `msg` can never fit.
    ///
    /// ```
    /// use forkipc::{TooLarge, TrySendError};
    /// let (tx, _rx) = forkipc::byte_channel(256)?;
    /// let max = tx.max_message_len();
    /// assert_eq!(
    ///     tx.try_send(&vec![0; max + 1]),
    ///     Err(TrySendError::Refused((), TooLarge { len: max + 1, max }))
    /// );
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    ///
    /// # Panics
    /// As [`send`](Self::send).
    #[inline]
    pub fn try_send(&self, msg: &[u8]) -> Result<(), TrySendError<(), TooLarge>> {
        self.put(msg, Mode::Try).map_err(SendTimeoutError::into_try)
    }

    /// Sends `msg`, waiting at most `timeout` for room (any duration, `Duration::MAX`
    /// included). A timed-out send has no effect.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`], [`SendTimeoutError::Disconnected`], or
    /// [`SendTimeoutError::Refused`] when `msg` can never fit.
    ///
    /// # Panics
    /// As [`send`](Self::send).
    pub fn send_timeout(
        &self,
        msg: &[u8],
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<(), TooLarge>> {
        let d = Deadline::after(timeout);
        self.put(msg, Mode::Block(Some(&d)))
    }

    /// Sends `msg`, waiting until `deadline` at most for room (a deadline in the past still
    /// sends if there is room now). A timed-out send has no effect.
    ///
    /// # Errors
    /// As [`send_timeout`](Self::send_timeout).
    ///
    /// # Panics
    /// As [`send`](Self::send).
    pub fn send_deadline(
        &self,
        msg: &[u8],
        deadline: Instant,
    ) -> Result<(), SendTimeoutError<(), TooLarge>> {
        let d = deadline_at(deadline);
        self.put(msg, Mode::Block(Some(&d)))
    }

    /// Reserves `len` bytes in the ring to write a message in place (zero-copy), blocking while
    /// the ring is full. Call [`WriteGrant::commit`] to send it; dropping the grant sends
    /// nothing.
    ///
    /// Takes `&self`, like `send`: the grant borrows the sender, and while it lives the sender
    /// makes no other reservation (the ring hands out one at a time).
    ///
    /// ```
    /// let (tx, rx) = forkipc::byte_channel(4096)?;
    /// let mut grant = tx.reserve(5).unwrap();
    /// grant.copy_from_slice(b"hello");
    /// grant.commit();
    /// assert_eq!(rx.recv().unwrap(), b"hello");
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`send`](Self::send).
    ///
    /// # Panics
    /// If another grant of this sender is alive: a second would cover the same ring bytes.
    #[inline]
    pub fn reserve(&self, len: usize) -> Result<WriteGrant<'_>, SendError<(), TooLarge>> {
        match self.core.reserve(len, Mode::Block(None)) {
            Ok(r) => Ok(WriteGrant { r }),
            Err(e) => Err(e.into_send()),
        }
    }

    /// As [`reserve`](Self::reserve), without blocking.
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send).
    ///
    /// # Panics
    /// As [`reserve`](Self::reserve).
    pub fn try_reserve(&self, len: usize) -> Result<WriteGrant<'_>, TrySendError<(), TooLarge>> {
        match self.core.reserve(len, Mode::Try) {
            Ok(r) => Ok(WriteGrant { r }),
            Err(e) => Err(e.into_try()),
        }
    }

    /// The largest message this channel accepts.
    pub fn max_message_len(&self) -> usize {
        self.core.max_message_len()
    }
}

endpoint_surface!(ByteSender, |s| s.core);

impl ByteReceiver {
    #[inline]
    fn take<R>(
        &self,
        mode: Mode<'_>,
        f: impl FnOnce(&ReadGuard<'_>) -> R,
    ) -> Result<R, RecvTimeoutError> {
        if self.core.own.owned()
            && let Some(g) = self.core.c.try_read_fast()
        {
            return Ok(f(&g));
        }
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
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] once the channel is empty and disconnected.
    #[inline]
    pub fn recv(&self) -> Result<Vec<u8>, RecvError> {
        self.take(Mode::Block(None), Self::to_vec)
            .map_err(RecvTimeoutError::into_recv)
    }

    /// Receives a message if one is ready.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] or [`TryRecvError::Disconnected`].
    pub fn try_recv(&self) -> Result<Vec<u8>, TryRecvError> {
        self.take(Mode::Try, Self::to_vec)
            .map_err(RecvTimeoutError::into_try)
    }

    /// Receives a message, waiting at most `timeout` (any duration, `Duration::MAX` included).
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] or [`RecvTimeoutError::Disconnected`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvTimeoutError> {
        let d = Deadline::after(timeout);
        self.take(Mode::Block(Some(&d)), Self::to_vec)
    }

    /// Receives a message, waiting until `deadline` at most (a deadline in the past still takes
    /// a message that is ready).
    ///
    /// # Errors
    /// As [`recv_timeout`](Self::recv_timeout).
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Vec<u8>, RecvTimeoutError> {
        let d = deadline_at(deadline);
        self.take(Mode::Block(Some(&d)), Self::to_vec)
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
    ///
    /// # Errors
    /// As [`recv`](Self::recv); `buf` is then unchanged.
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
        .map_err(RecvTimeoutError::into_recv)
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
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    #[inline]
    pub fn recv_ref(&mut self) -> Result<ByteMessage<'_>, RecvError> {
        if self.core.own.owned()
            && let Some(g) = self.core.c.try_read_fast()
        {
            return Ok(ByteMessage { g });
        }
        match self.core.read(Mode::Block(None)) {
            Ok(g) => Ok(ByteMessage { g }),
            Err(e) => Err(e.into_recv()),
        }
    }

    /// As [`recv_ref`](Self::recv_ref), without blocking. The same caution applies: the bytes
    /// lie in memory the peer can write.
    ///
    /// # Errors
    /// As [`try_recv`](Self::try_recv).
    pub fn try_recv_ref(&mut self) -> Result<ByteMessage<'_>, TryRecvError> {
        match self.core.read(Mode::Try) {
            Ok(g) => Ok(ByteMessage { g }),
            Err(e) => Err(e.into_try()),
        }
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
}

endpoint_surface!(ByteReceiver, |s| s.core);

/// Creates a pair of connected byte duplex endpoints, for request/response with
/// variable-length messages: what one sends, the other receives. Each direction is a ring of
/// `capacity_bytes` (rounded as in [`byte_channel`]).
///
/// ```no_run
/// // A child that upper-cases what it is sent.
/// let (me, worker) = forkipc::byte_duplex(4096)?;
/// let mut child = forkipc::fork(worker, |w| {
///     for req in w.iter() {
///         if w.send(&req.to_ascii_uppercase()).is_err() {
///             return 1;
///         }
///     }
///     0
/// })?;
/// me.send(b"hello").unwrap();
/// assert_eq!(me.recv().unwrap(), b"HELLO");
/// drop(me); // the worker's iterator ends
/// assert!(child.wait()?.success());
/// # Ok::<(), forkipc::Error>(())
/// ```
pub fn byte_duplex(capacity_bytes: usize) -> Result<(ByteDuplex, ByteDuplex), Error> {
    let (atx, arx) = byte_channel(capacity_bytes)?;
    let (btx, brx) = byte_channel(capacity_bytes)?;
    Ok((
        ByteDuplex { tx: atx, rx: brx },
        ByteDuplex { tx: btx, rx: arx },
    ))
}

/// One end of a byte request/response pair, made by [`byte_duplex`]: [`ByteSender`]'s methods
/// to send, [`ByteReceiver`]'s to receive.
pub struct ByteDuplex {
    tx: ByteSender,
    rx: ByteReceiver,
}

impl ByteDuplex {
    /// As [`ByteSender::send`].
    #[inline]
    pub fn send(&self, msg: &[u8]) -> Result<(), SendError<(), TooLarge>> {
        self.tx.send(msg)
    }
    /// As [`ByteSender::try_send`].
    pub fn try_send(&self, msg: &[u8]) -> Result<(), TrySendError<(), TooLarge>> {
        self.tx.try_send(msg)
    }
    /// As [`ByteSender::send_timeout`].
    pub fn send_timeout(
        &self,
        msg: &[u8],
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<(), TooLarge>> {
        self.tx.send_timeout(msg, timeout)
    }
    /// As [`ByteSender::send_deadline`].
    pub fn send_deadline(
        &self,
        msg: &[u8],
        deadline: Instant,
    ) -> Result<(), SendTimeoutError<(), TooLarge>> {
        self.tx.send_deadline(msg, deadline)
    }
    /// As [`ByteSender::reserve`].
    pub fn reserve(&self, len: usize) -> Result<WriteGrant<'_>, SendError<(), TooLarge>> {
        self.tx.reserve(len)
    }
    /// As [`ByteSender::try_reserve`].
    pub fn try_reserve(&self, len: usize) -> Result<WriteGrant<'_>, TrySendError<(), TooLarge>> {
        self.tx.try_reserve(len)
    }
    /// As [`ByteReceiver::recv`].
    #[inline]
    pub fn recv(&self) -> Result<Vec<u8>, RecvError> {
        self.rx.recv()
    }
    /// As [`ByteReceiver::try_recv`].
    pub fn try_recv(&self) -> Result<Vec<u8>, TryRecvError> {
        self.rx.try_recv()
    }
    /// As [`ByteReceiver::recv_timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }
    /// As [`ByteReceiver::recv_deadline`].
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Vec<u8>, RecvTimeoutError> {
        self.rx.recv_deadline(deadline)
    }
    /// As [`ByteReceiver::recv_into`].
    pub fn recv_into(&self, buf: &mut Vec<u8>) -> Result<usize, RecvError> {
        self.rx.recv_into(buf)
    }
    /// As [`ByteReceiver::iter`].
    pub fn iter(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.rx.iter()
    }
    /// As [`ByteReceiver::try_iter`].
    pub fn try_iter(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.rx.try_iter()
    }
    /// The largest message this end sends (the same both ways).
    pub fn max_message_len(&self) -> usize {
        self.tx.max_message_len()
    }
    /// The sending half.
    pub fn sender(&self) -> &ByteSender {
        &self.tx
    }
    /// The receiving half.
    pub fn receiver(&self) -> &ByteReceiver {
        &self.rx
    }
    /// Splits into the two halves (for [`ByteReceiver::recv_ref`], which needs the receiver by
    /// `&mut`).
    pub fn split(self) -> (ByteSender, ByteReceiver) {
        (self.tx, self.rx)
    }
}

endpoint_surface!(ByteDuplex, |s| (&s.tx.core, &s.rx.core));

/// Space reserved in the ring for one message, written in place. `commit` sends it; dropping
/// it sends nothing.
///
/// While it lives, its sender makes no other reservation and sends nothing (that panics): the
/// ring hands out one reservation at a time. A grant leaked with `mem::forget` therefore
/// leaves its sender unable to send.
///
/// The slice lies in memory that the peer process maps too. A well-behaved peer does not touch
/// it before the commit, but a buggy or hostile one can write it at any time, so what you read
/// back from the grant may differ from what you wrote (safe: `[u8]` has no invalid values).
/// Write into it; do not use it to keep data you will read again and trust.
pub struct WriteGrant<'a> {
    r: Reserved<'a>,
}

impl WriteGrant<'_> {
    /// Sends the message.
    #[inline]
    pub fn commit(self) {
        self.r.commit()
    }
}

#[cfg(not(loom))]
impl Deref for WriteGrant<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.r.r.as_slice()
    }
}

#[cfg(not(loom))]
impl DerefMut for WriteGrant<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.r.r.as_mut_slice()
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
    #[inline]
    fn deref(&self) -> &[u8] {
        self.g.as_slice()
    }
}
