//! The crate's error type for setup and ring-level failures.
//!
//! Channel operations have their own small error enums (in `channel::error`), shaped like
//! crossbeam-channel's, because they hand the unsent message back.

use std::fmt;

/// What went wrong creating or using a region, ring, channel or child process.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A size or capacity of zero was asked for.
    ZeroSize,
    /// A size computation overflowed (a capacity or length too large to represent).
    SizeOverflow,
    /// The region has no room left for the value at the required alignment.
    RegionFull,
    /// The message does not fit in the ring even when it is empty.
    MessageTooLarge {
        /// The message's length in bytes.
        len: usize,
        /// The largest message this ring accepts.
        max: usize,
    },
    /// Shared memory holds an impossible length, position or record: a peer is buggy or died
    /// mid-write. The ring refuses to read further.
    Corrupted,
    /// `fork` was called in a process with more than one thread: the child would have only the
    /// forking thread, and a lock another thread held (the allocator's, stdout's) would stay
    /// locked in it for ever. Fork before starting threads. Tests that fork belong in a
    /// `harness = false` test target, because libtest runs every `#[test]` on a thread of its
    /// own (the crate docs, "Testing code that forks", give a ready template).
    MultiThreaded,
    /// `fork` would make the child in another PID namespace (this process called
    /// `unshare(CLONE_NEWPID)`): robust locks and presence compare thread ids, which collide
    /// across PID namespaces, so a death there could hand a held lock to a second holder.
    PidNamespace,
    /// The process-wide record of live `AnonRegion`s is full (4 096 regions): a region beyond
    /// it could not make its locks robust, so it is refused.
    TooManyRegions,
    /// `AnonRegion::alloc` was called in a process other than the one that created the
    /// region (a fork child): its objects would overlap the creator's.
    NotCreator,
    /// The process table that tracks live endpoint owners is full (4 096 live processes that
    /// own endpoints in one process tree).
    TooManyProcesses,
    /// An operating-system call failed.
    Io(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ZeroSize => f.write_str("a size of zero was requested"),
            Error::SizeOverflow => f.write_str("size computation overflowed"),
            Error::RegionFull => f.write_str("the shared region has no room left"),
            Error::MessageTooLarge { len, max } => {
                write!(
                    f,
                    "message of {len} bytes exceeds the ring's maximum of {max}"
                )
            }
            Error::Corrupted => f.write_str("shared memory is corrupted"),
            Error::MultiThreaded => f.write_str(
                "refusing to fork a process that has more than one thread: the child could \
                 deadlock on a lock another thread held (the allocator's, stdout's). Fork before \
                 starting threads; for tests, libtest runs each #[test] on a thread of its own, \
                 so put tests that fork in a `harness = false` test target (template in the \
                 forkipc docs, \"Testing code that forks\")",
            ),
            Error::PidNamespace => f.write_str(
                "refusing to fork into another PID namespace: robust locks and endpoint presence compare thread ids, which collide across PID namespaces",
            ),
            Error::TooManyRegions => f.write_str(
                "too many live AnonRegions (the limit is 4096 per process): drop some, or place more in each",
            ),
            Error::NotCreator => f.write_str(
                "only the process that created an AnonRegion may allocate in it: allocate before forking",
            ),
            Error::TooManyProcesses => f.write_str(
                "too many live processes own endpoints (the limit is 4096 per process tree)",
            ),
            Error::Io(e) => write!(f, "system call failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::Io(std::io::Error::from(e))
    }
}
