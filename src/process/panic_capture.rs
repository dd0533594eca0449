//! Capturing a panic in a fork child into memory its parent can read.
//!
//! `fork` (and the pool's workers) run user code in a child; when that code panics, the message
//! and the location would otherwise reach only the child's stderr. Before each fork the parent
//! maps one shared page (a [`PanicSlot`]); the child arms it ([`PanicSlot::arm`]); a panic hook
//! that this module installs once per process ([`install_hook`]) writes the panic's location
//! there, and the code that catches the panic ([`ArmedSlot::record`]) writes the message and
//! marks the slot. The parent reads it ([`PanicSlot::read`]) after the child exited.
//!
//! Reuse: a process that catches panics itself and goes on (a pool worker running jobs) gets
//! the message with [`payload_text`] (what `JobError::Panicked { message }` carries), may
//! [`ArmedSlot::record`] each panic in its armed slot for a parent that reads it while the
//! worker lives, and [`ArmedSlot::clear`]s it before the next job.
//!
//! # Layout (one page, `MAP_SHARED | MAP_ANONYMOUS`, made by the parent before the fork)
//!
//! ```text
//! offset 0     state    u32   EMPTY (0): nothing recorded. ESCAPED (1): a panic left the
//!                             child's code; the fields below describe it. Stored last.
//! offset 4     msg_len  u32   bytes of the message in `msg`            (writer: <= MSG_CAP)
//! offset 8     loc_len  u32   bytes of the location in `loc`, 0 unknown (writer: <= LOC_CAP)
//! offset 12    reserved u32
//! offset 16    loc      [u8; LOC_CAP = 512]    "file:line:column", UTF-8
//! offset 528   msg      [u8; MSG_CAP = 3568]   the payload's text, UTF-8; a longer one is cut
//!                                              at a char boundary and ends with "…"
//! ```
//!
//! # Trust
//!
//! The writer is the child, which may be buggy or compromised, and the page stays writable by
//! any of its descendants, even after the child is reaped. So every access to the page, on
//! both sides, is atomic (no data race whatever the other side does), the reader clamps both
//! lengths to their capacity whatever they say, copies the bytes into private memory and
//! decodes that copy with `String::from_utf8_lossy`: a hostile child gets at most a garbled,
//! bounded message, never undefined behaviour or a large allocation. A sibling forked later
//! does not inherit the page (`MADV_DONTFORK` in the parent after the fork), so it cannot
//! forge another child's outcome.
//!
//! # Async-signal-safety
//!
//! A child of `fork_unchecked` may only do async-signal-safe work. Here the child's side is:
//! `arm` (a `gettid` system call and two atomic stores), and on the panicking path the hook and
//! `record` (atomic stores, formatting into a stack buffer): nothing allocates or takes a lock.
//! The hook is installed in the parent (`install_hook`, before forking), never in the child.
//! It chains to the hook that was set when it was installed, so the message still reaches
//! stderr (std's default hook) or the user's own hook.

use std::any::Any;
use std::fmt::{self, Write as _};
use std::panic::PanicHookInfo;
use std::ptr::NonNull;
// std's atomics, not the `sync` shim's: the page is an mmap'd page (loom's atomics cannot live
// there), and fork, which is all this serves, is never modelled under loom.
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicUsize, Ordering};

use crate::Error;
use crate::sync::ident::{Ident, current_ident};

const EMPTY: u32 = 0;
const ESCAPED: u32 = 1;
/// Capacity of the location field.
const LOC_CAP: usize = 512;
/// Capacity of the message field (what is left of one 4 KiB page).
const MSG_CAP: usize = 4096 - 16 - LOC_CAP;
/// Ends a message that was cut to fit.
const ELLIPSIS: &str = "…";

/// The shared page (see the module docs). Zero-filled by `mmap`, which is `EMPTY` and valid
/// for every field.
#[repr(C)]
struct Page {
    state: AtomicU32,
    /// Written by the child; may hold anything: the reader clamps it to `MSG_CAP`.
    msg_len: AtomicU32,
    /// Written by the child; may hold anything: the reader clamps it to `LOC_CAP`.
    loc_len: AtomicU32,
    _reserved: AtomicU32,
    loc: [AtomicU8; LOC_CAP],
    msg: [AtomicU8; MSG_CAP],
}

const _: () = assert!(std::mem::size_of::<Page>() == 4096);

/// A panic that escaped a child's code, as its parent read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PanicReport {
    /// The payload's text (`&str` or `String` payloads; `"Box<dyn Any>"` otherwise, as std's
    /// hook prints), possibly cut to fit the page.
    pub(crate) message: String,
    /// `file:line:column`, if the hook saw this very panic.
    pub(crate) location: Option<String>,
}

/// The page in which one child records its panic. Owned by the parent that made it: dropped
/// there, it unmaps the page; dropped anywhere else (a copy inherited by a later fork, where
/// the page is not mapped, see `keep_from_later_forks`), it does nothing.
pub(crate) struct PanicSlot {
    page: NonNull<Page>,
    creator: Ident,
}

// SAFETY: the page is accessed only through atomics; the handle may move between threads.
unsafe impl Send for PanicSlot {}
// SAFETY: as above: `&PanicSlot` only reads atomics.
unsafe impl Sync for PanicSlot {}

impl fmt::Debug for PanicSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PanicSlot").finish_non_exhaustive()
    }
}

impl PanicSlot {
    /// Maps a fresh, empty page. Call in the parent before forking.
    pub(crate) fn new() -> Result<PanicSlot, Error> {
        // SAFETY: an anonymous shared mapping at an address the kernel chooses: no existing
        // memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Page>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Io(std::io::Error::last_os_error()));
        }
        let page = NonNull::new(p.cast::<Page>())
            .ok_or_else(|| Error::Io(std::io::Error::other("mmap returned address 0")))?;
        Ok(PanicSlot {
            page,
            creator: current_ident(),
        })
    }

    fn page(&self) -> &Page {
        // SAFETY: the page is mapped in the creator for as long as `self` lives; callers check
        // that they run in the creator (or, `arm`, in a fork child of it, which inherited the
        // mapping and never unmaps it).
        unsafe { self.page.as_ref() }
    }

    /// In the parent, right after the fork: children forked later do not inherit the page, so
    /// no sibling can write this child's outcome. Best effort (a refusal only loses that).
    pub(crate) fn keep_from_later_forks(&self) {
        // SAFETY: the page is our own live mapping; MADV_DONTFORK changes no contents.
        unsafe {
            libc::madvise(
                self.page.as_ptr().cast(),
                std::mem::size_of::<Page>(),
                libc::MADV_DONTFORK,
            )
        };
    }

    /// In the child, right after the fork: this process's panics on this thread are recorded
    /// in the page from now on. Async-signal-safe (a system call and stores). The page stays
    /// mapped in this process for good (the slot is leaked here), so the hook may always write
    /// to it.
    pub(crate) fn arm(self) -> ArmedSlot {
        let page = self.page;
        std::mem::forget(self);
        ARMED_TID.store(crate::sys::gettid(), Ordering::Relaxed);
        // Relaxed: the hook runs on the thread that stores this (checked by TID).
        ARMED.store(page.as_ptr(), Ordering::Relaxed);
        ArmedSlot { page }
    }

    /// What the child recorded, if a panic escaped its code: validated and decoded from a
    /// private copy (see "Trust"). `None` in any process but the slot's creator.
    pub(crate) fn read(&self) -> Option<PanicReport> {
        if current_ident() != self.creator {
            return None;
        }
        let p = self.page();
        // Acquire: pairs with the Release store of `state` in `record`, so the fields it
        // describes are visible (a reaped child's writes are anyway; a live writer's are not
        // trusted either way).
        if p.state.load(Ordering::Acquire) != ESCAPED {
            return None;
        }
        let msg_len = (p.msg_len.load(Ordering::Relaxed) as usize).min(MSG_CAP);
        let loc_len = (p.loc_len.load(Ordering::Relaxed) as usize).min(LOC_CAP);
        let copy = |bytes: &[AtomicU8]| -> Vec<u8> {
            bytes.iter().map(|b| b.load(Ordering::Relaxed)).collect()
        };
        let message = String::from_utf8_lossy(&copy(&p.msg[..msg_len])).into_owned();
        let location =
            (loc_len > 0).then(|| String::from_utf8_lossy(&copy(&p.loc[..loc_len])).into_owned());
        Some(PanicReport { message, location })
    }
}

impl Drop for PanicSlot {
    fn drop(&mut self) {
        if current_ident() != self.creator {
            // A copy inherited through a later fork: the page is not mapped here (or is
            // someone else's memory now). Touch nothing.
            return;
        }
        // SAFETY: our own mapping, of this size; nothing refers to it after `self`.
        unsafe { libc::munmap(self.page.as_ptr().cast(), std::mem::size_of::<Page>()) };
    }
}

/// A child's handle on its armed page (which stays mapped for the rest of the process).
#[derive(Clone, Copy)]
pub(crate) struct ArmedSlot {
    page: NonNull<Page>,
}

impl ArmedSlot {
    fn page(&self) -> &Page {
        // SAFETY: armed pages are never unmapped in the process that armed them (`arm`).
        unsafe { self.page.as_ref() }
    }

    /// Records that a panic with `payload` (from `catch_unwind`) escaped the child's code.
    /// Allocates nothing; the location the hook noted is kept only if it noted this payload.
    pub(crate) fn record(&self, payload: &(dyn Any + Send)) {
        let p = self.page();
        let text = payload_text(payload);
        let fits = text.len() <= MSG_CAP;
        let cut = if fits {
            text.len()
        } else {
            floor_char_boundary(text, MSG_CAP - ELLIPSIS.len())
        };
        let mut n = store_bytes(&p.msg, 0, &text.as_bytes()[..cut]);
        if !fits {
            n = store_bytes(&p.msg, n, ELLIPSIS.as_bytes());
        }
        p.msg_len.store(n as u32, Ordering::Relaxed);
        if !noted_this(payload) {
            p.loc_len.store(0, Ordering::Relaxed);
        }
        // Release: pairs with the Acquire load in `PanicSlot::read`; publishes the fields.
        p.state.store(ESCAPED, Ordering::Release);
    }

    /// Forgets what was recorded: for a process that goes on running code after a caught
    /// panic (a pool worker between jobs).
    #[allow(dead_code)] // not used by `fork`, whose child leaves after the first panic
    pub(crate) fn clear(&self) {
        let p = self.page();
        p.state.store(EMPTY, Ordering::Relaxed);
        p.msg_len.store(0, Ordering::Relaxed);
        p.loc_len.store(0, Ordering::Relaxed);
    }
}

/// The panic's text as std's hook prints it: the `&str` or `String` payload, else
/// `"Box<dyn Any>"`.
pub(crate) fn payload_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "Box<dyn Any>"
    }
}

/// Identifies a payload across the hook and `catch_unwind`: the address and length of its text
/// (std moves a formatted `String` into the payload box without moving its bytes, and
/// `resume_unwind` passes the box on), or `NOT_TEXT` for other payloads.
fn payload_key(payload: &(dyn Any + Send)) -> (usize, usize) {
    if payload.is::<&'static str>() || payload.is::<String>() {
        let s = payload_text(payload);
        (s.as_ptr() as usize, s.len())
    } else {
        (0, NOT_TEXT)
    }
}

const NOT_TEXT: usize = usize::MAX;

/// This process's armed page, null if none (the parent; any process that did not arm one).
static ARMED: AtomicPtr<Page> = AtomicPtr::new(std::ptr::null_mut());
/// The thread whose panics are recorded (the one that armed the page).
static ARMED_TID: AtomicU32 = AtomicU32::new(0);
/// `payload_key` of the last panic whose location the hook wrote into the armed page.
static NOTED_PTR: AtomicUsize = AtomicUsize::new(0);
static NOTED_LEN: AtomicUsize = AtomicUsize::new(0);

/// Whether the location in the armed page belongs to `payload`'s panic (a panic caught inside
/// the child's code and followed by another one, or a `resume_unwind` of another payload,
/// which runs no hook, must not get a stale location).
fn noted_this(payload: &(dyn Any + Send)) -> bool {
    // Relaxed: written and read by the armed thread only.
    (
        NOTED_PTR.load(Ordering::Relaxed),
        NOTED_LEN.load(Ordering::Relaxed),
    ) == payload_key(payload)
}

/// The hook's part: on the armed thread of a process with an armed page, writes the panic's
/// location there. Allocates nothing.
fn note(info: &PanicHookInfo<'_>) {
    let page = ARMED.load(Ordering::Relaxed);
    if page.is_null() || ARMED_TID.load(Ordering::Relaxed) != crate::sys::gettid() {
        return;
    }
    // SAFETY: an armed page stays mapped for the rest of the process (`PanicSlot::arm`).
    let p = unsafe { &*page };
    let n = match info.location() {
        Some(loc) => {
            let mut buf = StackText {
                buf: [0; LOC_CAP],
                len: 0,
            };
            // `StackText` never fails; it keeps what fits.
            let _ = write!(buf, "{loc}");
            store_bytes(&p.loc, 0, &buf.buf[..buf.len])
        }
        None => 0,
    };
    p.loc_len.store(n as u32, Ordering::Relaxed);
    let (ptr, len) = payload_key(info.payload());
    NOTED_PTR.store(ptr, Ordering::Relaxed);
    NOTED_LEN.store(len, Ordering::Relaxed);
}

/// This process's armed page and its size, if it has one (for tests that play a compromised
/// child).
#[cfg(not(loom))]
pub(crate) fn armed_page() -> Option<(*mut u8, usize)> {
    let page = ARMED.load(Ordering::Relaxed);
    (!page.is_null()).then(|| (page.cast::<u8>(), std::mem::size_of::<Page>()))
}

static HOOK: std::sync::Once = std::sync::Once::new();

/// Installs, once per process, the panic hook that notes locations for armed pages. It runs
/// `note`, then the hook that was set before (std's default prints to stderr; a user's own hook
/// keeps running). Call in the parent before forking. A hook set later *without* chaining to
/// this one replaces it: messages are still captured, locations are then unknown.
pub(crate) fn install_hook() {
    // `take_hook` panics on a panicking thread (a fork from a destructor during unwinding):
    // skip, and install at a later fork.
    if std::thread::panicking() {
        return;
    }
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            note(info);
            prev(info);
        }));
    });
}

/// The largest `i <= at` that is a char boundary of `s` (`at < s.len()`).
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Stores `src` into `dst` from index `at`, as much as fits; returns the end index.
fn store_bytes(dst: &[AtomicU8], at: usize, src: &[u8]) -> usize {
    let room = dst.len().saturating_sub(at);
    let n = src.len().min(room);
    for (d, s) in dst[at..at + n].iter().zip(src) {
        d.store(*s, Ordering::Relaxed);
    }
    at + n
}

/// A `fmt::Write` into a fixed buffer that keeps whole chars that fit and drops the rest.
struct StackText {
    buf: [u8; LOC_CAP],
    len: usize,
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LOC_CAP - self.len;
        let n = if s.len() <= room {
            s.len()
        } else {
            floor_char_boundary(s, room)
        };
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_char_boundary_with_an_ellipsis() {
        let slot = PanicSlot::new().unwrap();
        let armed = ArmedSlot { page: slot.page };
        let long = "é".repeat(MSG_CAP); // 2 bytes each: the cut falls inside a char
        armed.record(&long.clone());
        let r = slot.read().unwrap();
        assert!(r.message.len() <= MSG_CAP);
        assert!(r.message.ends_with(ELLIPSIS));
        let body = r.message.strip_suffix(ELLIPSIS).unwrap();
        assert!(long.starts_with(body) && body.len() + 2 > MSG_CAP - ELLIPSIS.len());
        assert_eq!(r.location, None);
        armed.clear();
        assert_eq!(slot.read(), None);
    }

    #[test]
    fn short_messages_are_exact_and_other_payloads_named_like_std() {
        let slot = PanicSlot::new().unwrap();
        let armed = ArmedSlot { page: slot.page };
        armed.record(&"boom");
        assert_eq!(slot.read().unwrap().message, "boom");
        armed.record(&String::new());
        assert_eq!(slot.read().unwrap().message, "");
        armed.record(&42u32);
        assert_eq!(slot.read().unwrap().message, "Box<dyn Any>");
    }

    #[test]
    fn garbage_lengths_are_clamped_and_bytes_decoded_lossily() {
        let slot = PanicSlot::new().unwrap();
        let p = slot.page();
        for b in &p.msg {
            b.store(0xff, Ordering::Relaxed);
        }
        p.msg_len.store(u32::MAX, Ordering::Relaxed);
        p.loc_len.store(u32::MAX - 1, Ordering::Relaxed);
        p.state.store(ESCAPED, Ordering::Relaxed);
        let r = slot.read().unwrap();
        assert_eq!(r.message.chars().count(), MSG_CAP);
        assert!(r.message.chars().all(|c| c == char::REPLACEMENT_CHARACTER));
        assert_eq!(r.location.unwrap().len(), LOC_CAP); // zero bytes: valid UTF-8
        p.state.store(7, Ordering::Relaxed);
        assert_eq!(slot.read(), None);
    }

    #[test]
    fn stack_text_keeps_whole_chars() {
        let mut t = StackText {
            buf: [0; LOC_CAP],
            len: LOC_CAP - 1,
        };
        let _ = t.write_str("é");
        assert_eq!(t.len, LOC_CAP - 1);
        let _ = t.write_str("ab");
        assert_eq!(t.len, LOC_CAP);
    }
}
