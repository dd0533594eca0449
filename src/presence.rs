//! Presence: which process owns an endpoint, and whether it is still alive.
//!
//! A process that owns endpoints holds one *presence slot* for its whole life: a robust word
//! (see `sync::robust`) locked with its TID and linked into its robust list. When the process
//! dies, SIGKILL included, the kernel rewrites the word to `OWNER_DIED` and wakes a sleeper, so
//! a peer sleeping on both its data word and the owner's presence word (`futex_waitv`) learns
//! of the death at once: no polling, no file descriptor, no pid-reuse race (a slot is recycled
//! only after its owner died, and recycling bumps the slot's generation, which every reference
//! carries).
//!
//! ```text
//! presence table: one shared anonymous mapping per process tree, made by the first process
//! that needs it (before it forks) and inherited by every descendant; never unmapped.
//! slot (64 bytes, repr(C))
//!   0  word   robust word: 0 free | RESERVED | tid | OWNER_DIED, plus WAITERS (bit 31)
//!  24  prev   \ robust-list entry, meaningful only to the holding thread
//!  32  next   /
//!  40  gen    bumped each time the slot is claimed; references carry (slot, gen)
//! ```
//!
//! `RESERVED` (TID value `0x3fff_fffe`, impossible for a thread) marks a slot that a parent
//! claimed for a child it is forking: the child takes it over with its own TID before running
//! the user's code, and the parent waits for that (or for the child's exit, in which case it
//! marks the slot dead itself). Reserving before the fork means the endpoints handed to the
//! child point at the child's slot from the first instant.
//!
//! The slot is held by a thread: the one that first needed presence in this process (for a fork
//! child, its only thread). If that thread exits while the process lives, the process looks dead
//! to its peers; create channels from a thread that lives as long as the process (normally the
//! main thread). A stopped process (SIGSTOP) is alive: its word does not change.

use crate::Error;
use crate::sync::FutexWord;
#[cfg(not(loom))]
use crate::sync::robust::RobustWord;
#[cfg(not(loom))]
use crate::sys::{FUTEX_OWNER_DIED, FUTEX_TID_MASK, FUTEX_WAITERS};

/// A reference to a presence slot at one generation; 0 means "no owner recorded" (always
/// alive: used under loom and for rings created outside channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub struct PresenceRef(pub(crate) u64);

impl PresenceRef {
    pub(crate) const NONE: PresenceRef = PresenceRef(0);
}

/// What a presence check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    Alive,
    Dead,
}

#[cfg(not(loom))]
pub(crate) use native::*;

#[cfg(loom)]
mod loom_stub {
    use super::*;
    pub(crate) fn current() -> Result<PresenceRef, Error> {
        Ok(PresenceRef::NONE)
    }
    pub(crate) fn check(_: PresenceRef) -> Liveness {
        Liveness::Alive
    }
    pub(crate) fn arm(_: PresenceRef) -> Option<(&'static FutexWord, u32)> {
        None
    }
    pub(crate) fn pass_on_death(_: PresenceRef) {}
    // `fork` is never called under loom; these keep `process.rs` compiling.
    pub(crate) fn reserve_for_child() -> Result<PresenceRef, Error> {
        Ok(PresenceRef::NONE)
    }
    pub(crate) fn adopt(_: PresenceRef) {}
    pub(crate) fn await_adoption(_: PresenceRef, _pid: u32) {}
    pub(crate) fn release_reservation(_: PresenceRef) {}
}
#[cfg(loom)]
pub(crate) use loom_stub::*;

#[cfg(not(loom))]
mod native {
    use super::*;
    use crate::sync::Ordering;
    use crate::sync::robust::{current_pid, current_tid};
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;

    const SLOTS: usize = 4096;
    const RESERVED: u32 = FUTEX_TID_MASK - 1;

    #[repr(C, align(64))]
    struct Slot {
        word: RobustWord,
        gen_: crate::sync::AtomicU32,
    }

    /// Address of the table's first slot (the mapping is never unmapped).
    static TABLE: OnceLock<usize> = OnceLock::new();
    /// This process's own slot reference (0: none yet). Reset in a fork child.
    static MINE: AtomicU64 = AtomicU64::new(0);
    /// Serialises claiming within the process.
    static CLAIM: std::sync::Mutex<()> = std::sync::Mutex::new(());

    pub(crate) fn after_fork_in_child() {
        MINE.store(0, Ordering::Relaxed);
    }

    fn table() -> Result<&'static [Slot], Error> {
        if TABLE.get().is_none() {
            let region = crate::AnonRegion::new(SLOTS * std::mem::size_of::<Slot>())?;
            let base = region.as_ptr() as usize;
            // The table lives as long as the process; its pages are freed with the last process
            // that maps it.
            std::mem::forget(region);
            let _ = TABLE.set(base);
        }
        let base = *TABLE.get().ok_or(Error::TooManyProcesses)?;
        // SAFETY: `base` is a live, never-unmapped, zero-filled mapping of SLOTS slots; a
        // zeroed `Slot` is a valid free slot (atomics and plain integers).
        Ok(unsafe { std::slice::from_raw_parts(base as *const Slot, SLOTS) })
    }

    fn split(r: PresenceRef) -> Option<(&'static Slot, u32)> {
        let idx = (r.0 >> 32).checked_sub(1)? as usize;
        let slots = table().ok()?;
        Some((slots.get(idx)?, r.0 as u32))
    }

    /// Claims a free or dead slot, leaving it `RESERVED`. Returns the new reference.
    fn claim() -> Result<PresenceRef, Error> {
        let slots = table()?;
        let start = current_pid() as usize % SLOTS;
        for k in 0..SLOTS {
            let i = (start + k) % SLOTS;
            let s = &slots[i];
            let w = s.word.load(Ordering::SeqCst);
            if w & FUTEX_TID_MASK != 0 {
                continue;
            }
            let reserved = RESERVED | (w & FUTEX_WAITERS);
            if s.word
                .compare_exchange(w, reserved, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            let g = s.gen_.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
            if w & FUTEX_WAITERS != 0 {
                // Peers of the slot's dead previous owner may sleep here; let them see `gen`.
                s.word.wake(i32::MAX);
            }
            return Ok(PresenceRef(((i as u64 + 1) << 32) | u64::from(g)));
        }
        Err(Error::TooManyProcesses)
    }

    /// Takes a `RESERVED` slot with the calling thread's TID and links it into its robust list.
    fn take(r: PresenceRef) -> bool {
        let Some((s, _)) = split(r) else { return false };
        let tid = current_tid();
        s.word.begin_op();
        let mut cur = s.word.load(Ordering::SeqCst);
        let taken = loop {
            if cur & FUTEX_TID_MASK != RESERVED {
                break false;
            }
            match s.word.compare_exchange(
                cur,
                tid | (cur & FUTEX_WAITERS),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break true,
                Err(now) => cur = now,
            }
        };
        if taken {
            // SAFETY: we just put our TID in the word; the entry is in no live list (the slot was
            // free, dead, or reserved).
            unsafe { s.word.link() };
        }
        s.word.end_op();
        if taken && cur & FUTEX_WAITERS != 0 {
            s.word.wake(i32::MAX);
        }
        taken
    }

    /// This process's presence, claiming a slot on first use (or when the thread that held the
    /// previous one has exited).
    pub(crate) fn current() -> Result<PresenceRef, Error> {
        let mine = PresenceRef(MINE.load(Ordering::Relaxed));
        if mine.0 != 0 && check(mine) == Liveness::Alive {
            return Ok(mine);
        }
        let _g = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
        let mine = PresenceRef(MINE.load(Ordering::Relaxed));
        if mine.0 != 0 && check(mine) == Liveness::Alive {
            return Ok(mine);
        }
        let r = claim()?;
        if !take(r) {
            return Err(Error::Corrupted);
        }
        MINE.store(r.0, Ordering::Relaxed);
        Ok(r)
    }

    /// Whether the owner behind `r` is alive. Reads the word, then the generation: a slot being
    /// recycled changes the word first (see `claim`), so a stale generation is always caught
    /// either here or by the wake-up `take` sends.
    pub(crate) fn check(r: PresenceRef) -> Liveness {
        if r.0 == 0 {
            return Liveness::Alive;
        }
        let Some((s, g)) = split(r) else {
            return Liveness::Dead;
        };
        let w = s.word.load(Ordering::SeqCst);
        if s.gen_.load(Ordering::SeqCst) != g
            || w & FUTEX_OWNER_DIED != 0
            || w & FUTEX_TID_MASK == 0
        {
            Liveness::Dead
        } else {
            Liveness::Alive
        }
    }

    /// Prepares to sleep until the owner behind `r` dies: sets `WAITERS` so the kernel wakes us
    /// and returns the word and the value to sleep on. `None`: already dead (or no owner).
    pub(crate) fn arm(r: PresenceRef) -> Option<(&'static FutexWord, u32)> {
        let (s, g) = split(r)?;
        loop {
            let w = s.word.load(Ordering::SeqCst);
            if s.gen_.load(Ordering::SeqCst) != g
                || w & FUTEX_OWNER_DIED != 0
                || w & FUTEX_TID_MASK == 0
            {
                return None;
            }
            if w & FUTEX_WAITERS != 0 {
                return Some((&s.word, w));
            }
            let armed = w | FUTEX_WAITERS;
            if s.word
                .compare_exchange(w, armed, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Some((&s.word, armed));
            }
        }
    }

    /// The kernel wakes one sleeper per death; whoever sees the death wakes the rest.
    pub(crate) fn pass_on_death(r: PresenceRef) {
        if let Some((s, _)) = split(r) {
            s.word.wake(i32::MAX);
        }
    }

    /// Parent, before fork: a slot for the child, `RESERVED` until the child takes it.
    pub(crate) fn reserve_for_child() -> Result<PresenceRef, Error> {
        let _g = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
        claim()
    }

    /// Child, right after fork: take the slot the parent reserved.
    pub(crate) fn adopt(r: PresenceRef) {
        if take(r) {
            MINE.store(r.0, Ordering::Relaxed);
        }
    }

    /// Parent, after fork: wait until the child has taken its slot, or has died without doing
    /// so (then mark the slot dead, so the peers of the child's endpoints see it).
    pub(crate) fn await_adoption(r: PresenceRef, pid: u32) {
        let Some((s, _)) = split(r) else { return };
        loop {
            let w = s.word.load(Ordering::SeqCst);
            if w & FUTEX_TID_MASK != RESERVED {
                return;
            }
            if child_exited(pid) {
                if s.word
                    .compare_exchange(
                        w,
                        FUTEX_OWNER_DIED | (w & FUTEX_WAITERS),
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .is_ok()
                {
                    s.word.wake(i32::MAX);
                    return;
                }
                continue;
            }
            // Ask the child's `take` to wake us; the timeout re-checks whether it died first.
            let armed = w | FUTEX_WAITERS;
            if w & FUTEX_WAITERS == 0
                && s.word
                    .compare_exchange(w, armed, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
            {
                continue;
            }
            let d = crate::sys::Deadline::after(std::time::Duration::from_millis(5));
            s.word.wait(armed, Some(&d));
        }
    }

    /// Parent, when fork failed: give the reserved slot back (as dead, so nothing waits on it).
    pub(crate) fn release_reservation(r: PresenceRef) {
        if let Some((s, _)) = split(r) {
            let w = s.word.load(Ordering::SeqCst);
            if w & FUTEX_TID_MASK == RESERVED {
                let _ = s.word.compare_exchange(
                    w,
                    FUTEX_OWNER_DIED | (w & FUTEX_WAITERS),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                s.word.wake(i32::MAX);
            }
        }
    }

    /// Whether child `pid` has exited, without reaping it.
    fn child_exited(pid: u32) -> bool {
        // SAFETY: a zeroed siginfo_t is a valid out-buffer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: WNOWAIT leaves the child reapable by `Child::wait`; `info` is writable.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled `info` (or left it zeroed, si_pid 0, when nothing exited).
        r == -1 || unsafe { info.si_pid() } != 0
    }
}
