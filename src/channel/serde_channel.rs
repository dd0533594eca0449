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
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{EncodeError, Mode, deadline_at, endpoint_surface};
use crate::sync::Deadline;
use crate::{
    ByteReceiver, ByteSender, Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    TryRecvError, TrySendError, byte_channel,
};

/// Creates a channel of serde messages over a byte ring of `capacity_bytes` (rounded up to a
/// power of two; the largest encoded message is half of it minus 16 bytes).
///
/// Its errors are the other channels' family: sends can be refused with an [`EncodeError`]
/// (the value is too large once encoded, or its `Serialize` failed), and receives can fail
/// with `Decode(`[`postcard::Error`]`)` when a message arrives that is not a valid `T`
/// (a peer that sends another type, say). A decode failure consumes that message only: it is
/// never a disconnect, and the next receive gets the next message.
///
/// ```no_run
/// use forkipc::RecvError;
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Job { name: String, args: Vec<u32> }
///
/// let (tx, rx) = forkipc::serde_channel::<Job>(1 << 16)?;
/// let mut child = forkipc::fork(tx, |tx| {
///     tx.send(&Job { name: "sum".into(), args: vec![1, 2, 3] }).is_err() as i32
/// })?;
/// match rx.recv() {
///     Ok(job) => assert_eq!(job.args, [1, 2, 3]),
///     Err(RecvError::Disconnected) => panic!("the child sent nothing"),
///     Err(RecvError::Decode(e)) => panic!("not a Job: {e}"),
/// }
/// child.wait()?;
/// # Ok::<(), forkipc::Error>(())
/// ```
pub fn serde_channel<T: Serialize + DeserializeOwned>(
    capacity_bytes: usize,
) -> Result<(SerdeSender<T>, SerdeReceiver<T>), Error> {
    let (tx, rx) = byte_channel(capacity_bytes)?;
    Ok((SerdeSender::from(tx), SerdeReceiver::from(rx)))
}

/// Sending end of a serde channel. Its errors hand back `()` (the value was borrowed) and
/// refuse a value with an [`EncodeError`].
pub struct SerdeSender<T> {
    pub(crate) inner: ByteSender,
    _t: PhantomData<fn(&T)>,
}

/// Receiving end of a serde channel. Its errors report a message that does not decode as
/// `Decode(`[`postcard::Error`]`)`.
pub struct SerdeReceiver<T> {
    pub(crate) inner: ByteReceiver,
    /// The private copy of the message being decoded; empty while none is (taken out of the
    /// `Cell` for the duration, so nothing can observe it half-used).
    scratch: Cell<Vec<u8>>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> SerdeSender<T> {
    fn put(&self, value: &T, mode: Mode<'_>) -> Result<(), SendTimeoutError<(), EncodeError>> {
        let refused = |e| SendTimeoutError::Refused((), EncodeError::Serialize(e));
        let len = postcard::experimental::serialized_size(value).map_err(refused)?;
        let mut r = self
            .inner
            .core
            .reserve(len, mode)
            .map_err(|e| e.map_refusal(EncodeError::TooLarge))?;
        // Encoded in place: only this process writes a reservation, and the peer reads it only
        // after the commit. On failure the reservation is dropped: nothing is sent.
        postcard::to_slice(value, r.r.as_mut_slice()).map_err(refused)?;
        r.commit();
        Ok(())
    }

    /// Encodes and sends `value`, blocking while the ring is full.
    ///
    /// # Errors
    /// [`SendError::Disconnected`], or [`SendError::Refused`] with an [`EncodeError`].
    ///
    /// # Panics
    /// If called from inside `value`'s own `Serialize` on this same sender (the ring space of
    /// the outer send is reserved meanwhile).
    pub fn send(&self, value: &T) -> Result<(), SendError<(), EncodeError>> {
        self.put(value, Mode::Block(None))
            .map_err(SendTimeoutError::into_send)
    }

    /// Encodes and sends `value` if there is room now.
    ///
    /// # Errors
    /// [`TrySendError::Full`], [`TrySendError::Disconnected`], or [`TrySendError::Refused`].
    ///
    /// # Panics
    /// As [`send`](Self::send).
    pub fn try_send(&self, value: &T) -> Result<(), TrySendError<(), EncodeError>> {
        self.put(value, Mode::Try)
            .map_err(SendTimeoutError::into_try)
    }

    /// Encodes and sends `value`, waiting at most `timeout` for room (any duration,
    /// `Duration::MAX` included). A timed-out send has no effect.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`], [`SendTimeoutError::Disconnected`], or
    /// [`SendTimeoutError::Refused`].
    ///
    /// # Panics
    /// As [`send`](Self::send).
    pub fn send_timeout(
        &self,
        value: &T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<(), EncodeError>> {
        let d = Deadline::after(timeout);
        self.put(value, Mode::Block(Some(&d)))
    }

    /// Encodes and sends `value`, waiting until `deadline` at most for room (a deadline in the
    /// past still sends if there is room now). A timed-out send has no effect.
    ///
    /// # Errors
    /// As [`send_timeout`](Self::send_timeout).
    ///
    /// # Panics
    /// As [`send`](Self::send).
    pub fn send_deadline(
        &self,
        value: &T,
        deadline: Instant,
    ) -> Result<(), SendTimeoutError<(), EncodeError>> {
        let d = deadline_at(deadline);
        self.put(value, Mode::Block(Some(&d)))
    }

    /// The largest encoded message this channel accepts.
    pub fn max_message_len(&self) -> usize {
        self.inner.max_message_len()
    }
}

impl<T: Serialize + DeserializeOwned> SerdeReceiver<T> {
    fn take(&self, mode: Mode<'_>) -> Result<T, RecvTimeoutError<postcard::Error>> {
        let g = self
            .inner
            .core
            .read(mode)
            .map_err(|e| e.map_decode(|never| match never {}))?;
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
        let r = postcard::from_bytes(&buf).map_err(RecvTimeoutError::Decode);
        self.scratch.set(buf);
        r
    }

    /// Receives and decodes the next message, blocking until one arrives.
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] once the channel is empty and disconnected;
    /// [`RecvError::Decode`] when the message that arrived is not a valid `T` (it is consumed;
    /// the channel still works).
    pub fn recv(&self) -> Result<T, RecvError<postcard::Error>> {
        self.take(Mode::Block(None))
            .map_err(RecvTimeoutError::into_recv)
    }

    /// Receives a message if one is ready.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`], [`TryRecvError::Disconnected`] or [`TryRecvError::Decode`].
    pub fn try_recv(&self) -> Result<T, TryRecvError<postcard::Error>> {
        self.take(Mode::Try).map_err(RecvTimeoutError::into_try)
    }

    /// Receives a message, waiting at most `timeout` (any duration, `Duration::MAX` included).
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`], [`RecvTimeoutError::Disconnected`] or
    /// [`RecvTimeoutError::Decode`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError<postcard::Error>> {
        let d = Deadline::after(timeout);
        self.take(Mode::Block(Some(&d)))
    }

    /// Receives a message, waiting until `deadline` at most (a deadline in the past still takes
    /// a message that is ready).
    ///
    /// # Errors
    /// As [`recv_timeout`](Self::recv_timeout).
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvTimeoutError<postcard::Error>> {
        let d = deadline_at(deadline);
        self.take(Mode::Block(Some(&d)))
    }

    /// A blocking iterator that ends when the channel is disconnected. It yields every message
    /// as a `Result`: `Err` for one that does not decode as `T`, after which it goes on with
    /// the next message (a decode failure never ends the iteration, which would look like a
    /// disconnect).
    ///
    /// ```
    /// let (tx, rx) = forkipc::byte_channel(256)?;
    /// let rx: forkipc::SerdeReceiver<String> = rx.into();
    /// tx.send(&[2, b'o', b'k']).unwrap(); // postcard's "ok"
    /// tx.send(&[2, 0xc3, 0x28]).unwrap(); // not UTF-8
    /// tx.send(&[2, b'o', b'k']).unwrap();
    /// drop(tx);
    /// let got: Vec<_> = rx.iter().map(|m| m.map_err(|_| "undecodable")).collect();
    /// assert_eq!(got, [Ok("ok".to_string()), Err("undecodable"), Ok("ok".to_string())]);
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn iter(&self) -> SerdeIter<'_, T> {
        SerdeIter { rx: self }
    }

    /// A non-blocking iterator over the messages ready now, each a `Result` as in
    /// [`iter`](Self::iter).
    pub fn try_iter(&self) -> SerdeTryIter<'_, T> {
        SerdeTryIter { rx: self }
    }

    /// The largest encoded message this channel accepts.
    pub fn max_message_len(&self) -> usize {
        self.inner.max_message_len()
    }
}

endpoint_surface!(SerdeSender<T>, |s| s.inner.core);
endpoint_surface!(SerdeReceiver<T>, |s| s.inner.core);

/// Blocking iterator from [`SerdeReceiver::iter`]: a `Result` per message, until disconnect.
pub struct SerdeIter<'a, T> {
    rx: &'a SerdeReceiver<T>,
}

/// Non-blocking iterator from [`SerdeReceiver::try_iter`].
pub struct SerdeTryIter<'a, T> {
    rx: &'a SerdeReceiver<T>,
}

impl<T: Serialize + DeserializeOwned> Iterator for SerdeIter<'_, T> {
    type Item = Result<T, postcard::Error>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(v) => Some(Ok(v)),
            Err(RecvError::Decode(e)) => Some(Err(e)),
            Err(RecvError::Disconnected) => None,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Iterator for SerdeTryIter<'_, T> {
    type Item = Result<T, postcard::Error>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.try_recv() {
            Ok(v) => Some(Ok(v)),
            Err(TryRecvError::Decode(e)) => Some(Err(e)),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }
}

impl<'a, T: Serialize + DeserializeOwned> IntoIterator for &'a SerdeReceiver<T> {
    type Item = Result<T, postcard::Error>;
    type IntoIter = SerdeIter<'a, T>;
    fn into_iter(self) -> SerdeIter<'a, T> {
        self.iter()
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

/// Creates a pair of connected serde duplex endpoints, for request/response with owned types:
/// the first sends `A` and receives `B`, the second the reverse. Each direction is a ring of
/// `capacity_bytes` (rounded as in [`serde_channel`]).
///
/// ```no_run
/// use forkipc::RecvError;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// enum Request { Upper(String), Quit }
///
/// let (client, server) = forkipc::serde_duplex::<Request, String>(1 << 14)?;
/// let mut child = forkipc::fork(server, |server| loop {
///     match server.recv() {
///         Ok(Request::Upper(s)) => {
///             if server.send(&s.to_uppercase()).is_err() {
///                 return 1;
///             }
///         }
///         Ok(Request::Quit) | Err(RecvError::Disconnected) => return 0,
///         Err(RecvError::Decode(_)) => return 2,
///     }
/// })?;
/// client.send(&Request::Upper("hi".into())).unwrap();
/// assert_eq!(client.recv().unwrap(), "HI");
/// client.send(&Request::Quit).unwrap();
/// assert!(child.wait()?.success());
/// # Ok::<(), forkipc::Error>(())
/// ```
pub fn serde_duplex<A, B>(capacity_bytes: usize) -> Result<SerdeDuplexPair<A, B>, Error>
where
    A: Serialize + DeserializeOwned,
    B: Serialize + DeserializeOwned,
{
    let (atx, arx) = serde_channel::<A>(capacity_bytes)?;
    let (btx, brx) = serde_channel::<B>(capacity_bytes)?;
    Ok((
        SerdeDuplex { tx: atx, rx: brx },
        SerdeDuplex { tx: btx, rx: arx },
    ))
}

/// The two ends made by [`serde_duplex`].
pub type SerdeDuplexPair<A, B> = (SerdeDuplex<A, B>, SerdeDuplex<B, A>);

/// One end of a serde request/response pair, made by [`serde_duplex`]: sends `A`, receives
/// `B`, with [`SerdeSender`]'s and [`SerdeReceiver`]'s methods.
pub struct SerdeDuplex<A, B> {
    tx: SerdeSender<A>,
    rx: SerdeReceiver<B>,
}

impl<A: Serialize + DeserializeOwned, B: Serialize + DeserializeOwned> SerdeDuplex<A, B> {
    /// As [`SerdeSender::send`].
    pub fn send(&self, value: &A) -> Result<(), SendError<(), EncodeError>> {
        self.tx.send(value)
    }
    /// As [`SerdeSender::try_send`].
    pub fn try_send(&self, value: &A) -> Result<(), TrySendError<(), EncodeError>> {
        self.tx.try_send(value)
    }
    /// As [`SerdeSender::send_timeout`].
    pub fn send_timeout(
        &self,
        value: &A,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<(), EncodeError>> {
        self.tx.send_timeout(value, timeout)
    }
    /// As [`SerdeSender::send_deadline`].
    pub fn send_deadline(
        &self,
        value: &A,
        deadline: Instant,
    ) -> Result<(), SendTimeoutError<(), EncodeError>> {
        self.tx.send_deadline(value, deadline)
    }
    /// As [`SerdeReceiver::recv`].
    pub fn recv(&self) -> Result<B, RecvError<postcard::Error>> {
        self.rx.recv()
    }
    /// As [`SerdeReceiver::try_recv`].
    pub fn try_recv(&self) -> Result<B, TryRecvError<postcard::Error>> {
        self.rx.try_recv()
    }
    /// As [`SerdeReceiver::recv_timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<B, RecvTimeoutError<postcard::Error>> {
        self.rx.recv_timeout(timeout)
    }
    /// As [`SerdeReceiver::recv_deadline`].
    pub fn recv_deadline(&self, deadline: Instant) -> Result<B, RecvTimeoutError<postcard::Error>> {
        self.rx.recv_deadline(deadline)
    }
    /// As [`SerdeReceiver::iter`].
    pub fn iter(&self) -> SerdeIter<'_, B> {
        self.rx.iter()
    }
    /// As [`SerdeReceiver::try_iter`].
    pub fn try_iter(&self) -> SerdeTryIter<'_, B> {
        self.rx.try_iter()
    }
    /// The largest encoded message this end sends (the same both ways).
    pub fn max_message_len(&self) -> usize {
        self.tx.max_message_len()
    }
}

impl<A, B> SerdeDuplex<A, B> {
    /// The sending half.
    pub fn sender(&self) -> &SerdeSender<A> {
        &self.tx
    }
    /// The receiving half.
    pub fn receiver(&self) -> &SerdeReceiver<B> {
        &self.rx
    }
    /// Splits into the two halves.
    pub fn split(self) -> (SerdeSender<A>, SerdeReceiver<B>) {
        (self.tx, self.rx)
    }
}

endpoint_surface!(SerdeDuplex<A, B>, |s| (&s.tx.inner.core, &s.rx.inner.core));
