//! Typed channels: fixed-size plain-data messages copied into and out of the ring without
//! serialization.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::mem::{MaybeUninit, align_of, size_of};
use std::time::{Duration, Instant};

use super::{Mode, RxCore, TooLarge, TxCore, deadline_at, endpoint_surface, new_ring};
use crate::ring::{DisconnectReason, cap_for_messages};
use crate::sync::Deadline;
use crate::{
    Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};

/// Plain data that a typed channel carries as raw bytes: the payload bound of [`channel`],
/// [`duplex`], [`Sender`] and [`Receiver`].
///
/// Implemented for every type that is both [`bytemuck::NoUninit`] and
/// [`bytemuck::CheckedBitPattern`]; never implement it yourself, derive bytemuck's traits
/// instead. The crate is re-exported as [`forkipc::bytemuck`](crate::bytemuck): its derives
/// name `::bytemuck`, so either depend on `bytemuck = "1"` yourself or add
/// `#[bytemuck(crate = "forkipc::bytemuck")]` to the type, as below.
///
/// * Every [`Pod`](bytemuck::Pod) type qualifies: integers, floats, arrays of them (`u64`,
///   `[u8; 64]`, `[u64; 8]`), and `#[derive(Clone, Copy, Pod, Zeroable)] #[repr(C)]` structs
///   whose fields are `Pod` and that have no padding. Every bit pattern is a valid value, so
///   the receiver checks nothing: receiving is a copy.
/// * `bool`, `char`, and fieldless `#[repr(u8)]` (or other integer repr) enums that
///   `#[derive(Clone, Copy, CheckedBitPattern, NoUninit)]` qualify too: they have invalid bit
///   patterns, so the receiver validates each message after copying it out of the ring. A
///   message that is not a valid `T` can only come from a peer that wrote the shared memory
///   behind the channel's back; it disconnects the receiver for good
///   ([`DisconnectReason::Corrupted`]) and is never turned into a `T`.
///
/// [`NoUninit`](bytemuck::NoUninit) rules out padding: a message is copied byte for byte into
/// memory the peer process reads, and padding bytes would hand it whatever was left in this
/// process's memory (and reading uninitialised bytes is undefined behaviour). Fill the gaps
/// with explicit fields instead. Types with pointers or references are neither `Pod` nor
/// `CheckedBitPattern`: an address means nothing in the other process.
///
/// ```
/// use forkipc::bytemuck::{CheckedBitPattern, NoUninit, Pod, Zeroable};
///
/// #[derive(Clone, Copy, Pod, Zeroable)]
/// #[bytemuck(crate = "forkipc::bytemuck")]
/// #[repr(C)]
/// struct Job {
///     id: u64,
///     args: [u32; 2], // 16 bytes, no padding
/// }
///
/// #[derive(Clone, Copy, CheckedBitPattern, NoUninit, Debug, PartialEq)]
/// #[bytemuck(crate = "forkipc::bytemuck")]
/// #[repr(u8)]
/// enum Verdict {
///     Ok = 1,
///     Retry = 2,
/// }
///
/// let (tx, rx) = forkipc::channel::<Job>(8)?;
/// tx.send(Job { id: 1, args: [2, 3] }).unwrap();
/// assert_eq!(rx.recv().unwrap().args, [2, 3]);
///
/// let (tx, rx) = forkipc::channel::<Verdict>(8)?;
/// tx.send(Verdict::Retry).unwrap();
/// assert_eq!(rx.recv(), Ok(Verdict::Retry));
/// # Ok::<(), forkipc::Error>(())
/// ```
pub trait Plain: bytemuck::NoUninit + bytemuck::CheckedBitPattern {}

impl<T: bytemuck::NoUninit + bytemuck::CheckedBitPattern> Plain for T {}

/// Creates a channel that holds at least `capacity` messages of type `T`.
///
/// The ring is sized up to a power of two, so it may hold more (each message takes
/// `size_of::<T>()` rounded up to 8, plus an 8-byte header). Hand one end to a child with
/// [`fork`](crate::fork).
///
/// Messages are copied as raw bytes (`T` is [`Plain`] data: no pointers, no padding). The
/// ring's structure (lengths, positions) is validated on every read, and each message is
/// copied out of the shared memory before it becomes a `T`: for types with invalid bit
/// patterns (`bool`, `char`, enums) the private copy is validated first, so a peer that
/// scribbles over the shared memory can at worst disconnect the channel
/// ([`DisconnectReason::Corrupted`]), never hand the receiver an invalid value.
///
/// ```no_run
/// let (tx, rx) = forkipc::channel::<u64>(64)?;
/// let mut child = forkipc::fork(tx, |tx| {
///     for i in 0..10 {
///         tx.send(i).unwrap();
///     }
///     0
/// })?;
/// assert_eq!(rx.iter().sum::<u64>(), 45);
/// assert!(child.wait()?.success());
/// # Ok::<(), forkipc::Error>(())
/// ```
pub fn channel<T: Plain>(capacity: usize) -> Result<(Sender<T>, Receiver<T>), Error> {
    if capacity == 0 {
        return Err(Error::ZeroSize);
    }
    let cap = cap_for_messages(capacity, size_of::<T>())?;
    let (tx, rx) = new_ring(cap)?;
    Ok((
        Sender {
            core: tx,
            _t: PhantomData,
        },
        Receiver {
            core: rx,
            _t: PhantomData,
        },
    ))
}

/// Creates a pair of connected duplex endpoints: the first sends `A` and receives `B`, the
/// second the reverse. Each direction holds at least `capacity` messages.
pub fn duplex<A: Plain, B: Plain>(capacity: usize) -> Result<DuplexPair<A, B>, Error> {
    let (atx, arx) = channel::<A>(capacity)?;
    let (btx, brx) = channel::<B>(capacity)?;
    Ok((Duplex { tx: atx, rx: brx }, Duplex { tx: btx, rx: arx }))
}

/// The sending end of a typed channel. `Send`, not `Sync`, not `Clone` (single producer).
pub struct Sender<T> {
    pub(crate) core: TxCore,
    _t: PhantomData<T>,
}

/// The receiving end of a typed channel. `Send`, not `Sync`, not `Clone` (single consumer).
pub struct Receiver<T> {
    pub(crate) core: RxCore,
    _t: PhantomData<T>,
}

/// A typed message always fits: [`channel`] sized the ring for `T` (`cap_for_messages` makes
/// room for a message of twice `size_of::<T>()`), so the ring never refuses one.
fn never_too_large(t: TooLarge) -> Infallible {
    unreachable!(
        "a typed channel refused a message of {} bytes (max {})",
        t.len, t.max
    )
}

impl<T: Plain> Sender<T> {
    #[inline]
    fn put(&self, msg: T, mode: Mode<'_>) -> Result<(), SendTimeoutError<T>> {
        // `T: NoUninit`: every byte of `msg` is initialised, so no stale memory of this process
        // reaches the peer.
        let src = bytemuck::bytes_of(&msg);
        // SAFETY: `src` is readable for `size_of::<T>()` bytes (it is `msg`'s bytes), which is at
        // most the ring's largest message (`channel` sized the ring with `cap_for_messages`).
        if self.core.owned() && unsafe { self.core.p.try_push_contiguous(src.as_ptr(), src.len()) }
        {
            return Ok(());
        }
        self.put_slow(msg, mode)
    }

    /// The general path: wrap-around, a full ring, a disconnect, this process not the owner.
    #[cold]
    #[inline(never)]
    fn put_slow(&self, msg: T, mode: Mode<'_>) -> Result<(), SendTimeoutError<T>> {
        match self.core.reserve(size_of::<T>(), mode) {
            Ok(mut r) => {
                let src = bytemuck::bytes_of(&msg);
                // SAFETY: `src` is readable for `size_of::<T>()` bytes; the reservation is that
                // long.
                unsafe { r.r.write_raw(src.as_ptr(), src.len()) };
                r.commit();
                Ok(())
            }
            Err(e) => Err(e.with_msg(msg).map_refusal(never_too_large)),
        }
    }

    /// Sends `msg`, blocking while the ring is full. Fails only when the channel is
    /// disconnected (the receiver was dropped or its process died, or this process does not
    /// own this end), handing `msg` back.
    ///
    /// # Errors
    /// [`SendError::Disconnected`]. (A typed channel never refuses a message: its `Refused`
    /// variant holds an `Infallible` and needs no `match` arm.)
    #[inline]
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.put(msg, Mode::Block(None))
            .map_err(SendTimeoutError::into_send)
    }

    /// Sends `msg` if there is room right now.
    ///
    /// # Errors
    /// [`TrySendError::Full`] or [`TrySendError::Disconnected`], with `msg`.
    ///
    /// ```
    /// use forkipc::TrySendError;
    /// let (tx, rx) = forkipc::channel::<u32>(1)?;
    /// while tx.try_send(7).is_ok() {} // fill the ring (it holds at least 1)
    /// assert_eq!(tx.try_send(8), Err(TrySendError::Full(8))); // the value comes back
    /// assert_eq!(rx.try_recv(), Ok(7));
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    #[inline]
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        self.put(msg, Mode::Try).map_err(SendTimeoutError::into_try)
    }

    /// Sends `msg`, waiting at most `timeout` for room (any duration, `Duration::MAX`
    /// included). A timed-out send has no effect.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`] or [`SendTimeoutError::Disconnected`], with `msg`.
    pub fn send_timeout(&self, msg: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        let d = Deadline::after(timeout);
        self.put(msg, Mode::Block(Some(&d)))
    }

    /// Sends `msg`, waiting until `deadline` at most for room. A deadline in the past still
    /// sends if there is room now. A timed-out send has no effect.
    ///
    /// # Errors
    /// As [`send_timeout`](Self::send_timeout).
    pub fn send_deadline(&self, msg: T, deadline: Instant) -> Result<(), SendTimeoutError<T>> {
        let d = deadline_at(deadline);
        self.put(msg, Mode::Block(Some(&d)))
    }
}

endpoint_surface!(Sender<T>, |s| s.core);

impl<T: Plain> Receiver<T> {
    /// The fast path: if the next record is a committed message of `T`'s size, copies its bytes
    /// into `v` (private memory), releases it and returns `true`.
    #[inline]
    fn pop_fast(&self, v: &mut MaybeUninit<T>) -> bool {
        // SAFETY: `v` is writable for `size_of::<T>()` bytes, at most the ring's largest message
        // (`channel` sized the ring with `cap_for_messages`).
        self.core.own.owned()
            && unsafe {
                self.core
                    .c
                    .try_pop_exact(v.as_mut_ptr().cast(), size_of::<T>())
            }
    }

    /// Turns the private copy of a message into a `T`, validating its bits. An invalid `T`
    /// disconnects the channel for good.
    ///
    /// The bytes are validated in `v`, which the peer cannot reach: validating them in the ring
    /// would leave the peer free to change them between the check and the copy. They are
    /// checked in place, as `T::Bits` (bytemuck's layout twin of `T`), and `v` itself becomes
    /// the value: for `Pod` types the check is `true`, and no second copy is made.
    #[inline]
    fn validate(&self, v: MaybeUninit<T>) -> Result<T, RecvTimeoutError> {
        const {
            assert!(
                size_of::<T::Bits>() == size_of::<T>() && align_of::<T::Bits>() <= align_of::<T>()
            )
        };
        // SAFETY: the caller copied `size_of::<T>()` bytes from the ring into `v`, so all of them
        // are initialised (the data area is zero-filled at creation and only ever written with
        // initialised bytes; whatever a peer stores there is still initialised memory). `Bits`
        // has `T`'s size and at most its alignment (checked above), and every bit pattern is a
        // valid `Bits` (`AnyBitPattern`).
        let bits = unsafe { &*v.as_ptr().cast::<T::Bits>() };
        if T::is_valid_bit_pattern(bits) {
            // SAFETY: initialised (above), and a valid `T` (checked just now): what
            // `bytemuck::checked::try_from_bytes` does, without copying the value again.
            Ok(unsafe { v.assume_init() })
        } else {
            Err(self.corrupted())
        }
    }

    /// Disconnects for good: the ring held something that `Sender::send` cannot produce (only
    /// a peer writing the shared memory behind the ring's back does).
    #[cold]
    #[inline(never)]
    fn corrupted(&self) -> RecvTimeoutError {
        self.core.c.mark_corrupted();
        self.core.own.reason.set(Some(DisconnectReason::Corrupted));
        RecvTimeoutError::Disconnected
    }

    /// Takes the next message; `err` turns the error into the caller's error type. Generic in
    /// it so that the fast path builds the caller's `Result` directly (a `map_err` on the way
    /// out made the compiler copy the value once more per message).
    #[inline(always)]
    fn take<E>(&self, mode: Mode<'_>, err: fn(RecvTimeoutError) -> E) -> Result<T, E> {
        let mut v = MaybeUninit::<T>::uninit();
        if self.pop_fast(&mut v) {
            return self.validate(v).map_err(err);
        }
        self.take_slow(mode).map_err(err)
    }

    /// Waits, then takes the next message by the fast path or the general, validating one.
    #[cold]
    #[inline(never)]
    fn take_slow(&self, mode: Mode<'_>) -> Result<T, RecvTimeoutError> {
        let mut v = MaybeUninit::<T>::uninit();
        if let Mode::Block(deadline) = mode {
            // Something may have arrived while we waited: the fast path first.
            self.core.wait_readable(deadline)?;
            if self.pop_fast(&mut v) {
                return self.validate(v);
            }
        }
        // Padding, another length, a closed or broken ring: the general, validating path.
        let g = self.core.read(mode)?;
        if g.len() != size_of::<T>() {
            drop(g);
            return Err(self.corrupted());
        }
        // SAFETY: `v` is writable for `size_of::<T>()` bytes, which is the payload's length.
        unsafe { g.read_raw(v.as_mut_ptr().cast(), size_of::<T>()) };
        drop(g);
        self.validate(v)
    }

    /// Receives the next message, blocking until one arrives.
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] once the channel is empty and disconnected. (A typed
    /// channel has nothing to decode: its `Decode` variant holds an `Infallible` and needs no
    /// `match` arm.)
    #[inline]
    pub fn recv(&self) -> Result<T, RecvError> {
        self.take(Mode::Block(None), RecvTimeoutError::into_recv)
    }

    /// Receives a message if one is ready.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`], or [`TryRecvError::Disconnected`] once the channel is empty and
    /// disconnected.
    #[inline]
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.take(Mode::Try, RecvTimeoutError::into_try)
    }

    /// Receives a message, waiting at most `timeout` (any duration, `Duration::MAX` included).
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`], or [`RecvTimeoutError::Disconnected`] once the channel is
    /// empty and disconnected.
    ///
    /// ```
    /// use forkipc::{DisconnectReason, RecvTimeoutError};
    /// use std::time::Duration;
    /// let (tx, rx) = forkipc::channel::<u64>(4)?;
    /// assert_eq!(rx.recv_timeout(Duration::from_millis(10)), Err(RecvTimeoutError::Timeout));
    /// tx.send(1).unwrap();
    /// drop(tx);
    /// assert_eq!(rx.recv_timeout(Duration::MAX), Ok(1)); // drained first...
    /// assert_eq!(rx.recv_timeout(Duration::MAX), Err(RecvTimeoutError::Disconnected)); // ...then
    /// assert_eq!(rx.disconnect_reason(), Some(DisconnectReason::PeerDropped));
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let d = Deadline::after(timeout);
        self.take(Mode::Block(Some(&d)), |e| e)
    }

    /// Receives a message, waiting until `deadline` at most. A deadline in the past still takes
    /// a message that is ready.
    ///
    /// # Errors
    /// As [`recv_timeout`](Self::recv_timeout).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let (tx, rx) = forkipc::channel::<u64>(4)?;
    /// let deadline = Instant::now() + Duration::from_millis(20); // one budget for the lot
    /// tx.send(1).unwrap();
    /// assert_eq!(rx.recv_deadline(deadline), Ok(1));
    /// assert!(rx.recv_deadline(deadline).unwrap_err().is_timeout());
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        let d = deadline_at(deadline);
        self.take(Mode::Block(Some(&d)), |e| e)
    }

    /// A blocking iterator that ends when the channel is disconnected.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// A non-blocking iterator over the messages ready now.
    ///
    /// ```
    /// let (tx, rx) = forkipc::channel::<u8>(8)?;
    /// for b in [1, 2, 3] {
    ///     tx.send(b).unwrap();
    /// }
    /// assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2, 3]);
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }
}

endpoint_surface!(Receiver<T>, |s| s.core);

/// Blocking iterator from [`Receiver::iter`].
pub struct Iter<'a, T> {
    rx: &'a Receiver<T>,
}

/// Non-blocking iterator from [`Receiver::try_iter`].
pub struct TryIter<'a, T> {
    rx: &'a Receiver<T>,
}

/// Owning blocking iterator from `Receiver::into_iter`.
pub struct IntoIter<T> {
    rx: Receiver<T>,
}

impl<T: Plain> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl<T: Plain> Iterator for TryIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

impl<T: Plain> Iterator for IntoIter<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl<'a, T: Plain> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T: Plain> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;
    fn into_iter(self) -> IntoIter<T> {
        IntoIter { rx: self }
    }
}

/// The two ends made by [`duplex`].
pub type DuplexPair<A, B> = (Duplex<A, B>, Duplex<B, A>);

/// One end of a request/response pair: sends `A`, receives `B`. Made by [`duplex`].
///
/// ```no_run
/// // A child worker that squares numbers.
/// let (me, worker) = forkipc::duplex::<u64, u64>(16)?;
/// let mut child = forkipc::fork(worker, |w| {
///     for x in w.iter() {
///         if w.send(x * x).is_err() {
///             break;
///         }
///     }
///     0
/// })?;
/// me.send(7).unwrap();
/// assert_eq!(me.recv().unwrap(), 49);
/// drop(me); // the worker's iterator ends
/// assert!(child.wait()?.success());
/// # Ok::<(), forkipc::Error>(())
/// ```
pub struct Duplex<A, B> {
    tx: Sender<A>,
    rx: Receiver<B>,
}

impl<A: Plain, B: Plain> Duplex<A, B> {
    /// As [`Sender::send`].
    #[inline]
    pub fn send(&self, msg: A) -> Result<(), SendError<A>> {
        self.tx.send(msg)
    }
    /// As [`Sender::try_send`].
    pub fn try_send(&self, msg: A) -> Result<(), TrySendError<A>> {
        self.tx.try_send(msg)
    }
    /// As [`Sender::send_timeout`].
    pub fn send_timeout(&self, msg: A, timeout: Duration) -> Result<(), SendTimeoutError<A>> {
        self.tx.send_timeout(msg, timeout)
    }
    /// As [`Sender::send_deadline`].
    pub fn send_deadline(&self, msg: A, deadline: Instant) -> Result<(), SendTimeoutError<A>> {
        self.tx.send_deadline(msg, deadline)
    }
    /// As [`Receiver::recv`].
    #[inline]
    pub fn recv(&self) -> Result<B, RecvError> {
        self.rx.recv()
    }
    /// As [`Receiver::try_recv`].
    pub fn try_recv(&self) -> Result<B, TryRecvError> {
        self.rx.try_recv()
    }
    /// As [`Receiver::recv_timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<B, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }
    /// As [`Receiver::recv_deadline`].
    pub fn recv_deadline(&self, deadline: Instant) -> Result<B, RecvTimeoutError> {
        self.rx.recv_deadline(deadline)
    }
    /// As [`Receiver::iter`].
    pub fn iter(&self) -> Iter<'_, B> {
        self.rx.iter()
    }
    /// As [`Receiver::try_iter`].
    pub fn try_iter(&self) -> TryIter<'_, B> {
        self.rx.try_iter()
    }
}

impl<A, B> Duplex<A, B> {
    /// The sending half.
    pub fn sender(&self) -> &Sender<A> {
        &self.tx
    }
    /// The receiving half.
    pub fn receiver(&self) -> &Receiver<B> {
        &self.rx
    }
    /// Splits into the two halves.
    pub fn split(self) -> (Sender<A>, Receiver<B>) {
        (self.tx, self.rx)
    }
}

endpoint_surface!(Duplex<A, B>, |s| (&s.tx.core, &s.rx.core));
