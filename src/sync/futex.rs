//! A futex word: an `AtomicU32` that a thread of any process can sleep on until it changes.

use super::AtomicU32;

#[cfg(not(loom))]
pub(crate) use crate::sys::Deadline;
pub(crate) use crate::sys::Wake;

/// A 32-bit word that can be waited on. Natively exactly an `AtomicU32` (`repr(transparent)`),
/// so it can sit in shared memory and be handed to the kernel.
#[cfg_attr(not(loom), repr(transparent))]
pub(crate) struct FutexWord {
    value: AtomicU32,
    #[cfg(loom)]
    park: (loom::sync::Mutex<Park>, loom::sync::Condvar),
}

impl std::ops::Deref for FutexWord {
    type Target = AtomicU32;
    #[inline]
    fn deref(&self) -> &AtomicU32 {
        &self.value
    }
}

#[cfg(not(loom))]
impl FutexWord {
    pub(crate) const fn new(v: u32) -> FutexWord {
        FutexWord {
            value: AtomicU32::new(v),
        }
    }

    /// Sleeps while the word holds `expected`, until woken or `deadline`. Spurious returns
    /// happen; callers re-check their condition. If the kernel refuses the wait (a seccomp
    /// filter), this naps a few milliseconds instead of returning at once (`sys::futex_wait`).
    pub(crate) fn wait(&self, expected: u32, deadline: Option<&Deadline>) -> Wake {
        crate::sys::futex_wait(&self.value, expected, deadline)
    }

    /// Sleeps until `self` stops holding `expected`, `relay` or any of `others` stops holding
    /// its value, any of them is woken, or `deadline`. Returns how the sleep ended and whether
    /// a word other than `self` was woken (then the relay's wake-up may be among them: the
    /// kernel reports only the last woken word of the vector, so a caller that must not miss
    /// the relay treats any such wake-up as possibly the relay's).
    ///
    /// The relay goes right after `self`, before `others`: the kernel queues the words in
    /// vector order, so by the time we are queued on a peer's word we are on the relay too (a
    /// wake-up handed on through the relay while we are still being queued cannot miss us).
    ///
    /// Where one `futex_waitv` cannot cover them all (the kernel lacks it, or more than 126
    /// words besides `self` and the relay), sleeps on what fits (or `self` alone) for at most
    /// `fallback`, so the caller gets to re-check the rest itself.
    pub(crate) fn wait_any<'a>(
        &'a self,
        expected: u32,
        relay: Option<(&'a FutexWord, u32)>,
        others: &[(&'a FutexWord, u32)],
        deadline: Option<&Deadline>,
        fallback: std::time::Duration,
    ) -> (Wake, bool) {
        let room = crate::sys::FUTEX_WAITV_MAX - 1 - usize::from(relay.is_some());
        let count = 1 + usize::from(relay.is_some()) + others.len().min(room);
        let fill = |words: &mut [(&'a super::AtomicU32, u32)]| {
            let rest = relay.iter().chain(others.iter().take(room));
            for (slot, (w, v)) in words[1..].iter_mut().zip(rest) {
                *slot = (&w.value, *v);
            }
        };
        let short = (others.len() > room).then(|| Deadline::after(fallback).min_with(deadline));
        let timeout = short.as_ref().or(deadline);
        // A blocked `recv` sleeps on two words, a `Select` on a few: no allocation for those
        // (this runs on every sleep).
        let waited = if count <= 4 {
            let mut words = [(&self.value, expected); 4];
            fill(&mut words);
            crate::sys::futex_waitv(&words[..count], timeout)
        } else {
            let mut words = vec![(&self.value, expected); count];
            fill(&mut words);
            crate::sys::futex_waitv(&words, timeout)
        };
        if let Some(w) = waited {
            use crate::sys::Waitv;
            return match w {
                Waitv::Woken(i) => (Wake::Retry, i > 0),
                Waitv::Retry => (Wake::Retry, false),
                Waitv::TimedOut if short.is_some() && !deadline.is_some_and(Deadline::expired) => {
                    (Wake::Retry, false)
                }
                Waitv::TimedOut => (Wake::TimedOut, false),
            };
        }
        let short = Deadline::after(fallback).min_with(deadline);
        match crate::sys::futex_wait(&self.value, expected, Some(&short)) {
            Wake::TimedOut if deadline.is_some_and(Deadline::expired) => (Wake::TimedOut, false),
            _ => (Wake::Retry, false),
        }
    }

    /// Wakes up to `n` sleepers, in any process.
    pub(crate) fn wake(&self, n: i32) {
        crate::sys::futex_wake(&self.value, n)
    }
}

/// Under loom a deadline never passes: loom cannot model time (`Condvar::wait_timeout` never
/// times out), so timeout paths are tested natively.
#[cfg(loom)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline;

#[cfg(loom)]
impl Deadline {
    pub(crate) fn after(_: std::time::Duration) -> Deadline {
        Deadline
    }
    pub(crate) fn expired(&self) -> bool {
        false
    }
    pub(crate) fn min_with(self, _: Option<&Deadline>) -> Deadline {
        self
    }
}

/// Under loom: who sleeps on a word and who has been woken, so that `wake(n)` wakes exactly
/// `n` sleepers (oldest first), as the kernel does. A model can then lose a wake-up the way a
/// real process can (the one woken sleeper dies), which a wake-everyone model would hide.
#[cfg(loom)]
#[derive(Default)]
pub(crate) struct Park {
    waiting: Vec<u32>,
    woken: Vec<u32>,
}

#[cfg(loom)]
impl FutexWord {
    pub(crate) fn new(v: u32) -> FutexWord {
        FutexWord {
            value: AtomicU32::new(v),
            park: (
                loom::sync::Mutex::new(Park::default()),
                loom::sync::Condvar::new(),
            ),
        }
    }

    pub(crate) fn wait(&self, expected: u32, _deadline: Option<&Deadline>) -> Wake {
        let mut park = self.park.0.lock().unwrap_or_else(|e| e.into_inner());
        // Compared under the lock: a waker stores, then takes the lock to wake, so either this
        // load sees the new value or the wake comes after we are queued.
        if self.value.load(super::Ordering::SeqCst) != expected {
            return Wake::Retry;
        }
        let me = super::ident::current_tid();
        park.waiting.push(me);
        loop {
            park = self.park.1.wait(park).unwrap_or_else(|e| e.into_inner());
            if let Some(i) = park.woken.iter().position(|&t| t == me) {
                park.woken.swap_remove(i);
                return Wake::Retry;
            }
        }
    }

    pub(crate) fn wait_any(
        &self,
        expected: u32,
        _relay: Option<(&FutexWord, u32)>,
        _others: &[(&FutexWord, u32)],
        deadline: Option<&Deadline>,
        _fallback: std::time::Duration,
    ) -> (Wake, bool) {
        (self.wait(expected, deadline), false)
    }

    /// Wakes up to `n` sleepers, oldest first.
    pub(crate) fn wake(&self, n: i32) {
        let mut park = self.park.0.lock().unwrap_or_else(|e| e.into_inner());
        let k = park.waiting.len().min(usize::try_from(n).unwrap_or(0));
        if k > 0 {
            let woken: Vec<u32> = park.waiting.drain(..k).collect();
            park.woken.extend(woken);
            self.park.1.notify_all();
        }
        drop(park);
    }
}
