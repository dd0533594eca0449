//! One family of errors for every kind of channel (typed, byte, serde), in crossbeam-channel's
//! shapes.
//!
//! Each type has crossbeam's variants (`Full`, `Timeout`, `Disconnected`, `Empty`) and one more
//! for what only some kinds of channel can hit, whose payload type `E` depends on the kind:
//!
//! | kind    | sends: `Refused(msg, E)`        | receives: `Decode(E)` |
//! |---------|---------------------------------|-----------------------|
//! | typed   | `Infallible` (cannot happen)    | `Infallible`          |
//! | byte    | [`TooLarge`]                    | `Infallible`          |
//! | serde   | [`EncodeError`] (too large, or the value's `Serialize` failed) | `postcard::Error` |
//!
//! `E` defaults to [`Infallible`], and a variant holding an `Infallible` cannot exist, so a
//! `match` over a typed channel's errors needs no arm for it (crossbeam's exhaustive matches
//! compile unchanged), while a `match` that does name it compiles for every kind: one `match`
//! survives a change of channel kind. Going from typed to serde, the compiler asks for the new
//! arm, because decoding can now fail.
//!
//! Send errors hand the message back (typed channels: the value; byte and serde channels:
//! `()`, because they send from a borrow the caller still holds, which also keeps their errors
//! `'static` for `?` into `Box<dyn Error>`). `Debug` needs no `T: Debug`.
//!
//! A receive that fails to decode has consumed that message: the next receive gets the next
//! one. It never looks like a disconnect: iterators yield it (see
//! [`SerdeReceiver::iter`](crate::SerdeReceiver::iter)) instead of ending.

use std::convert::Infallible;
use std::fmt;

/// `send` failed: the channel is disconnected, or (byte and serde channels) this message can
/// never be sent. The message is handed back.
///
/// Unlike crossbeam's tuple struct `SendError(T)`, this is an enum: match
/// `SendError::Disconnected(msg)`, or call [`into_inner`](Self::into_inner).
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum SendError<T, E = Infallible> {
    /// The receiving end was dropped, its process died, the ring is corrupt, or this process
    /// does not own this end (see the endpoint's `disconnect_reason()`).
    Disconnected(T),
    /// This message can never be sent on this channel (too large, or it failed to encode);
    /// the channel itself is unaffected.
    Refused(T, E),
}

/// Why `try_send` failed; the message is handed back.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum TrySendError<T, E = Infallible> {
    /// The ring has no room right now.
    Full(T),
    /// The channel is disconnected (see [`SendError::Disconnected`]).
    Disconnected(T),
    /// This message can never be sent on this channel (see [`SendError::Refused`]).
    Refused(T, E),
}

/// Why `send_timeout` or `send_deadline` failed; the message is handed back.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum SendTimeoutError<T, E = Infallible> {
    /// The ring stayed full until the deadline; nothing was sent.
    Timeout(T),
    /// The channel is disconnected (see [`SendError::Disconnected`]).
    Disconnected(T),
    /// This message can never be sent on this channel (see [`SendError::Refused`]).
    Refused(T, E),
}

/// `recv` failed: the channel is empty and disconnected, or (serde channels) the message that
/// arrived could not be decoded.
///
/// Unlike crossbeam's unit struct `RecvError`, this is an enum: match
/// `RecvError::Disconnected`.
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub enum RecvError<E = Infallible> {
    /// Empty, and the sending end is gone for good: dropped, its process died, the ring is
    /// corrupt, or this process does not own this end (see the endpoint's
    /// `disconnect_reason()`).
    Disconnected,
    /// A message arrived but could not be decoded; it was consumed, and the channel still
    /// works.
    Decode(E),
}

/// Why `try_recv` failed.
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub enum TryRecvError<E = Infallible> {
    /// Nothing to receive right now.
    Empty,
    /// Empty and disconnected (see [`RecvError::Disconnected`]).
    Disconnected,
    /// A message arrived but could not be decoded (see [`RecvError::Decode`]).
    Decode(E),
}

/// Why `recv_timeout` or `recv_deadline` failed.
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub enum RecvTimeoutError<E = Infallible> {
    /// Nothing arrived before the deadline.
    Timeout,
    /// Empty and disconnected (see [`RecvError::Disconnected`]).
    Disconnected,
    /// A message arrived but could not be decoded (see [`RecvError::Decode`]).
    Decode(E),
}

/// Why a byte channel refused a message: it is larger than the ring can ever hold
/// (`max_message_len()`). Serde channels report the same inside `EncodeError::TooLarge`.
#[derive(PartialEq, Eq, Clone, Copy, Debug, Hash)]
pub struct TooLarge {
    /// The message's length in bytes (for serde channels: once encoded).
    pub len: usize,
    /// The largest message this channel accepts.
    pub max: usize,
}

/// Why a serde channel refused a value.
#[cfg(feature = "serde")]
#[derive(PartialEq, Eq, Clone, Debug)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded value is larger than the ring can ever hold.
    TooLarge(TooLarge),
    /// The value's `Serialize` implementation failed (postcard's error).
    Serialize(postcard::Error),
}

// ---------------------------------------------------------------------------------------------
// Accessors (crossbeam's, plus the kind-specific variant)

macro_rules! send_accessors {
    ($name:ident, $($other:ident),*) => {
        impl<T, E> $name<T, E> {
            /// The message that was not sent.
            pub fn into_inner(self) -> T {
                match self {
                    $( $name::$other(t) )|* | $name::Refused(t, _) => t,
                }
            }
            /// Whether the channel is disconnected.
            pub fn is_disconnected(&self) -> bool {
                matches!(self, $name::Disconnected(_))
            }
            /// Whether this message can never be sent on this channel.
            pub fn is_refused(&self) -> bool {
                matches!(self, $name::Refused(..))
            }
            /// Why the message was refused, if it was.
            pub fn refusal(&self) -> Option<&E> {
                match self {
                    $name::Refused(_, e) => Some(e),
                    _ => None,
                }
            }
        }
    };
}
send_accessors!(SendError, Disconnected);
send_accessors!(TrySendError, Full, Disconnected);
send_accessors!(SendTimeoutError, Timeout, Disconnected);

impl<T, E> TrySendError<T, E> {
    /// Whether the ring was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }
}

impl<T, E> SendTimeoutError<T, E> {
    /// Whether the send timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }
}

macro_rules! recv_accessors {
    ($name:ident) => {
        impl<E> $name<E> {
            /// Whether the channel is empty and disconnected.
            pub fn is_disconnected(&self) -> bool {
                matches!(self, $name::Disconnected)
            }
            /// Whether a message arrived that could not be decoded.
            pub fn is_decode(&self) -> bool {
                matches!(self, $name::Decode(_))
            }
            /// The decoding error, if a message could not be decoded.
            pub fn decode_error(&self) -> Option<&E> {
                match self {
                    $name::Decode(e) => Some(e),
                    _ => None,
                }
            }
        }
    };
}
recv_accessors!(RecvError);
recv_accessors!(TryRecvError);
recv_accessors!(RecvTimeoutError);

impl<E> TryRecvError<E> {
    /// Whether nothing was available.
    pub fn is_empty(&self) -> bool {
        matches!(self, TryRecvError::Empty)
    }
}

impl<E> RecvTimeoutError<E> {
    /// Whether the receive timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout)
    }
}

// ---------------------------------------------------------------------------------------------
// Narrowing: the channel core reports the widest error (`SendTimeoutError<(), TooLarge>`,
// `RecvTimeoutError`), where `Timeout` means "not within the time allowed", which for a
// non-blocking call is none. Each method narrows it to its own type.

impl<E> SendTimeoutError<(), E> {
    /// Puts the message to hand back into the core's error.
    #[inline]
    pub(crate) fn with_msg<T>(self, msg: T) -> SendTimeoutError<T, E> {
        match self {
            SendTimeoutError::Timeout(()) => SendTimeoutError::Timeout(msg),
            SendTimeoutError::Disconnected(()) => SendTimeoutError::Disconnected(msg),
            SendTimeoutError::Refused((), e) => SendTimeoutError::Refused(msg, e),
        }
    }
}

impl<T, E> SendTimeoutError<T, E> {
    /// Replaces the kind-specific payload (the core's `TooLarge` becomes the kind's own).
    #[inline]
    pub(crate) fn map_refusal<F>(self, f: impl FnOnce(E) -> F) -> SendTimeoutError<T, F> {
        match self {
            SendTimeoutError::Timeout(t) => SendTimeoutError::Timeout(t),
            SendTimeoutError::Disconnected(t) => SendTimeoutError::Disconnected(t),
            SendTimeoutError::Refused(t, e) => SendTimeoutError::Refused(t, f(e)),
        }
    }

    /// For `try_send`: no room now is `Full`.
    #[inline]
    pub(crate) fn into_try(self) -> TrySendError<T, E> {
        match self {
            SendTimeoutError::Timeout(t) => TrySendError::Full(t),
            SendTimeoutError::Disconnected(t) => TrySendError::Disconnected(t),
            SendTimeoutError::Refused(t, e) => TrySendError::Refused(t, e),
        }
    }

    /// For `send`, which has no deadline: the core retries a timeout itself, so none comes
    /// back.
    #[inline]
    pub(crate) fn into_send(self) -> SendError<T, E> {
        match self {
            SendTimeoutError::Timeout(_) => unreachable!("a send without a deadline timed out"),
            SendTimeoutError::Disconnected(t) => SendError::Disconnected(t),
            SendTimeoutError::Refused(t, e) => SendError::Refused(t, e),
        }
    }
}

impl<E> RecvTimeoutError<E> {
    /// Replaces the kind-specific payload.
    #[cfg(feature = "serde")]
    #[inline]
    pub(crate) fn map_decode<F>(self, f: impl FnOnce(E) -> F) -> RecvTimeoutError<F> {
        match self {
            RecvTimeoutError::Timeout => RecvTimeoutError::Timeout,
            RecvTimeoutError::Disconnected => RecvTimeoutError::Disconnected,
            RecvTimeoutError::Decode(e) => RecvTimeoutError::Decode(f(e)),
        }
    }

    /// For `try_recv`: nothing now is `Empty`.
    #[inline]
    pub(crate) fn into_try(self) -> TryRecvError<E> {
        match self {
            RecvTimeoutError::Timeout => TryRecvError::Empty,
            RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
            RecvTimeoutError::Decode(e) => TryRecvError::Decode(e),
        }
    }

    /// For `recv`, which has no deadline: the core retries a timeout itself.
    #[inline]
    pub(crate) fn into_recv(self) -> RecvError<E> {
        match self {
            RecvTimeoutError::Timeout => unreachable!("a receive without a deadline timed out"),
            RecvTimeoutError::Disconnected => RecvError::Disconnected,
            RecvTimeoutError::Decode(e) => RecvError::Decode(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Debug (no `T: Debug`), Display, Error

macro_rules! send_debug {
    ($name:ident, $($other:ident),*) => {
        impl<T, E: fmt::Debug> fmt::Debug for $name<T, E> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $( $name::$other(_) => f.write_str(concat!(stringify!($other), "(..)")), )*
                    $name::Refused(_, e) => write!(f, "Refused(.., {e:?})"),
                }
            }
        }
    };
}
send_debug!(SendError, Disconnected);
send_debug!(TrySendError, Full, Disconnected);
send_debug!(SendTimeoutError, Timeout, Disconnected);

const SEND_DISCONNECTED: &str = "sending on a disconnected channel";

impl<T, E: fmt::Display> fmt::Display for SendError<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected(_) => f.write_str(SEND_DISCONNECTED),
            SendError::Refused(_, e) => write!(f, "message refused: {e}"),
        }
    }
}
impl<T, E: fmt::Display> fmt::Display for TrySendError<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("sending on a full channel"),
            TrySendError::Disconnected(_) => f.write_str(SEND_DISCONNECTED),
            TrySendError::Refused(_, e) => write!(f, "message refused: {e}"),
        }
    }
}
impl<T, E: fmt::Display> fmt::Display for SendTimeoutError<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("timed out waiting on send operation"),
            SendTimeoutError::Disconnected(_) => f.write_str(SEND_DISCONNECTED),
            SendTimeoutError::Refused(_, e) => write!(f, "message refused: {e}"),
        }
    }
}

const RECV_DISCONNECTED: &str = "receiving on an empty and disconnected channel";

impl<E: fmt::Display> fmt::Display for RecvError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Disconnected => f.write_str(RECV_DISCONNECTED),
            RecvError::Decode(e) => write!(f, "received a message that does not decode: {e}"),
        }
    }
}
impl<E: fmt::Display> fmt::Display for TryRecvError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("receiving on an empty channel"),
            TryRecvError::Disconnected => f.write_str(RECV_DISCONNECTED),
            TryRecvError::Decode(e) => write!(f, "received a message that does not decode: {e}"),
        }
    }
}
impl<E: fmt::Display> fmt::Display for RecvTimeoutError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out waiting on receive operation"),
            RecvTimeoutError::Disconnected => f.write_str(RECV_DISCONNECTED),
            RecvTimeoutError::Decode(e) => {
                write!(f, "received a message that does not decode: {e}")
            }
        }
    }
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a message of {} bytes exceeds the channel's maximum of {}",
            self.len, self.max
        )
    }
}

#[cfg(feature = "serde")]
impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge(TooLarge { len, max }) => write!(
                f,
                "the encoded message of {len} bytes exceeds the channel's maximum of {max}"
            ),
            EncodeError::Serialize(e) => write!(f, "the value failed to encode: {e}"),
        }
    }
}

macro_rules! send_error_impl {
    ($($name:ident),*) => {$(
        impl<T, E: std::error::Error + 'static> std::error::Error for $name<T, E> {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.refusal().map(|e| e as _)
            }
        }
    )*};
}
send_error_impl!(SendError, TrySendError, SendTimeoutError);

macro_rules! recv_error_impl {
    ($($name:ident),*) => {$(
        impl<E: std::error::Error + 'static> std::error::Error for $name<E> {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.decode_error().map(|e| e as _)
            }
        }
    )*};
}
recv_error_impl!(RecvError, TryRecvError, RecvTimeoutError);

impl std::error::Error for TooLarge {}

#[cfg(feature = "serde")]
impl std::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EncodeError::TooLarge(t) => Some(t),
            EncodeError::Serialize(e) => Some(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// crossbeam's conversions

impl<T, E> From<SendError<T, E>> for TrySendError<T, E> {
    fn from(e: SendError<T, E>) -> Self {
        match e {
            SendError::Disconnected(t) => TrySendError::Disconnected(t),
            SendError::Refused(t, e) => TrySendError::Refused(t, e),
        }
    }
}
impl<T, E> From<SendError<T, E>> for SendTimeoutError<T, E> {
    fn from(e: SendError<T, E>) -> Self {
        match e {
            SendError::Disconnected(t) => SendTimeoutError::Disconnected(t),
            SendError::Refused(t, e) => SendTimeoutError::Refused(t, e),
        }
    }
}
impl<E> From<RecvError<E>> for TryRecvError<E> {
    fn from(e: RecvError<E>) -> Self {
        match e {
            RecvError::Disconnected => TryRecvError::Disconnected,
            RecvError::Decode(e) => TryRecvError::Decode(e),
        }
    }
}
impl<E> From<RecvError<E>> for RecvTimeoutError<E> {
    fn from(e: RecvError<E>) -> Self {
        match e {
            RecvError::Disconnected => RecvTimeoutError::Disconnected,
            RecvError::Decode(e) => RecvTimeoutError::Decode(e),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// A message type with no `Debug`, `Display` or `PartialEq`.
    struct Opaque;

    #[test]
    fn debug_needs_no_debug_message() {
        assert_eq!(
            format!("{:?}", SendError::<Opaque>::Disconnected(Opaque)),
            "Disconnected(..)"
        );
        assert_eq!(
            format!("{:?}", TrySendError::<Opaque>::Full(Opaque)),
            "Full(..)"
        );
        assert_eq!(
            format!("{:?}", SendTimeoutError::<Opaque>::Timeout(Opaque)),
            "Timeout(..)"
        );
        let refused = TrySendError::Refused(Opaque, TooLarge { len: 9, max: 8 });
        assert_eq!(
            format!("{refused:?}"),
            "Refused(.., TooLarge { len: 9, max: 8 })"
        );
    }

    #[test]
    fn display_and_source_name_the_refusal() {
        let e = SendError::Refused((), TooLarge { len: 9, max: 8 });
        assert_eq!(
            e.to_string(),
            "message refused: a message of 9 bytes exceeds the channel's maximum of 8"
        );
        assert_eq!(
            e.source().map(|s| s.to_string()),
            Some(TooLarge { len: 9, max: 8 }.to_string())
        );
        let d: RecvError = RecvError::Disconnected;
        assert_eq!(
            d.to_string(),
            "receiving on an empty and disconnected channel"
        );
        assert!(d.source().is_none());
        let e: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
        assert!(e.to_string().starts_with("message refused"));
    }

    #[test]
    fn accessors_and_conversions_are_crossbeams() {
        let e: TrySendError<u8, TooLarge> = SendError::Disconnected(7).into();
        assert!(e.is_disconnected() && !e.is_full() && !e.is_refused());
        assert_eq!(e.into_inner(), 7);
        let e: SendTimeoutError<u8, TooLarge> =
            SendError::Refused(7, TooLarge { len: 1, max: 0 }).into();
        assert_eq!(e.refusal(), Some(&TooLarge { len: 1, max: 0 }));
        assert_eq!(e.into_inner(), 7);
        let e: TryRecvError = RecvError::Disconnected.into();
        assert!(e.is_disconnected() && !e.is_empty() && !e.is_decode());
        let e: RecvTimeoutError<&str> = RecvError::Decode("bad").into();
        assert_eq!(e.decode_error(), Some(&"bad"));
        assert!(!e.is_timeout());
    }

    #[test]
    fn narrowing_maps_timeout_to_the_try_variant() {
        let full: SendTimeoutError<(), TooLarge> = SendTimeoutError::Timeout(());
        assert_eq!(full.with_msg(5u8).into_try(), TrySendError::Full(5));
        let gone: SendTimeoutError<(), TooLarge> = SendTimeoutError::Disconnected(());
        assert_eq!(gone.with_msg(5u8).into_send(), SendError::Disconnected(5));
        let big = SendTimeoutError::Refused((), TooLarge { len: 2, max: 1 });
        assert_eq!(
            big.map_refusal(|t| t.len).into_try(),
            TrySendError::Refused((), 2)
        );
        let empty: RecvTimeoutError = RecvTimeoutError::Timeout;
        assert_eq!(empty.into_try(), TryRecvError::Empty);
        assert_eq!(
            RecvTimeoutError::<u8>::Disconnected.into_recv(),
            RecvError::Disconnected
        );
    }
}
