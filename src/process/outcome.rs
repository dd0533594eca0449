//! How a forked child ended: [`Outcome`], read from its wait status and from the panic it
//! recorded (see `panic_capture`).

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::panic_capture::PanicReport;

/// The exit status of a child whose closure panicked (as a Rust program's `main` does).
pub(crate) const PANIC_EXIT_CODE: i32 = 101;

/// How a forked child ended: [`Child::wait_outcome`](crate::Child::wait_outcome) and
/// [`Child::outcome`](crate::Child::outcome) tell a normal exit, a panic (with its message)
/// and a death by signal apart.
///
/// The names follow `waitpid`'s `WIFEXITED` / `WIFSIGNALED` (and nix's `WaitStatus`), which
/// std's [`ExitStatus::code`] and `ExitStatusExt::signal` also mirror; `Panicked` is what Rust
/// adds on top. The raw [`ExitStatus`] stays available from [`Child::wait`](crate::Child::wait).
///
/// ```no_run
/// use forkipc::{Outcome, fork};
/// let mut child = fork((), |()| -> i32 { panic!("bad input") })?;
/// match child.wait_outcome()? {
///     Outcome::Exited(code) => println!("exited with {code}"),
///     Outcome::Panicked { message, location } => {
///         println!("panicked at {}: {message}", location.as_deref().unwrap_or("?"))
///     }
///     Outcome::Signaled(sig) => println!("killed by signal {sig}"),
///     _ => println!("ended otherwise"),
/// }
/// # Ok::<(), forkipc::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The child exited with this code: the closure's return value, or what the child passed
    /// to `exit`. A child that exits with 101 without panicking (`exit(101)`) is `Exited(101)`.
    Exited(i32),
    /// A panic escaped the child's closure (the child then exited with status 101, after the
    /// panic hook printed the message to its stderr as usual).
    Panicked {
        /// The panic's message: the payload's text for `&str` and `String` payloads (what
        /// `panic!` makes), `"Box<dyn Any>"` for others, as std's hook prints it. At most about
        /// 3.5 KiB: a longer message is cut at a character boundary and ends with `…`. Written
        /// by the child, so only as trustworthy as the child (always valid UTF-8, bounded).
        message: String,
        /// Where it panicked, as `file:line:column`, when known. Unknown (`None`) when the
        /// panic ran no hook (`resume_unwind` of another payload) or when the process's panic
        /// hook was replaced, after forkipc first forked, by one that does not chain to the
        /// previous hook (`std::panic::take_hook`).
        location: Option<String>,
    },
    /// The child was terminated by this signal: `libc::SIGKILL` (killed), `libc::SIGSEGV`
    /// (crashed), `libc::SIGABRT` (`std::process::abort`, a double panic, or
    /// `panic = "abort"`), ...
    Signaled(i32),
}

impl Outcome {
    /// Whether the child exited with code 0 (as [`ExitStatus::success`]).
    pub fn success(&self) -> bool {
        *self == Outcome::Exited(0)
    }

    /// Classifies a wait status; `panic` is what the child recorded, if it recorded anything.
    pub(crate) fn from_status(status: ExitStatus, panic: Option<PanicReport>) -> Outcome {
        match (status.code(), status.signal(), panic) {
            (Some(PANIC_EXIT_CODE), _, Some(p)) => Outcome::Panicked {
                message: p.message,
                location: p.location,
            },
            (Some(code), _, _) => Outcome::Exited(code),
            (None, Some(sig), _) => Outcome::Signaled(sig),
            // `waitpid` without WUNTRACED/WCONTINUED reports only exits and deaths by signal.
            (None, None, _) => Outcome::Exited(status.into_raw()),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exited with status {code}"),
            Outcome::Panicked {
                message,
                location: Some(loc),
            } => write!(f, "panicked at {loc}: {message}"),
            Outcome::Panicked {
                message,
                location: None,
            } => write!(f, "panicked: {message}"),
            Outcome::Signaled(sig) => match signal_name(*sig) {
                Some(name) => write!(f, "killed by signal {sig} ({name})"),
                None => write!(f, "killed by signal {sig}"),
            },
        }
    }
}

/// The usual name of a signal a child commonly dies of.
fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw((code & 0xff) << 8)
    }

    #[test]
    fn statuses_are_classified() {
        let report = || PanicReport {
            message: "m".into(),
            location: Some("f.rs:1:2".into()),
        };
        assert_eq!(Outcome::from_status(exited(3), None), Outcome::Exited(3));
        assert_eq!(
            Outcome::from_status(exited(101), None),
            Outcome::Exited(101)
        );
        assert_eq!(
            Outcome::from_status(exited(101), Some(report())),
            Outcome::Panicked {
                message: "m".into(),
                location: Some("f.rs:1:2".into())
            }
        );
        // A report with another exit code (the child exited after recording): not a panic.
        assert_eq!(
            Outcome::from_status(exited(0), Some(report())),
            Outcome::Exited(0)
        );
        assert_eq!(
            Outcome::from_status(ExitStatus::from_raw(libc::SIGKILL), Some(report())),
            Outcome::Signaled(libc::SIGKILL)
        );
        assert!(Outcome::Exited(0).success() && !Outcome::Exited(1).success());
        assert_eq!(
            Outcome::Signaled(9).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            Outcome::from_status(exited(101), Some(report())).to_string(),
            "panicked at f.rs:1:2: m"
        );
    }
}
