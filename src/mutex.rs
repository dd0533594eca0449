//! `ShmMutex<T>`: a process-shared, robust futex mutex.
//!
//! # The lock word
//!
//! The word uses the kernel's robust-futex format, so the kernel can recognise a dead owner:
//!
//! | value                          | meaning                                                  |
//! |--------------------------------|----------------------------------------------------------|
//! | `0`                            | unlocked                                                 |
//! | `tid`                          | locked by thread `tid`, nobody sleeping                  |
//! | `tid \| WAITERS`               | locked by `tid`; somebody may sleep on the word          |
//! | `OWNER_DIED [\| WAITERS]`      | the holder died (the kernel wrote this); unlocked; the next locker gets `OwnerDied` |
//! | `NOT_RECOVERABLE [\| WAITERS]` | a locker after a death unlocked without `mark_consistent`: unusable for good |
//!
//! (`WAITERS` is bit 31, `OWNER_DIED` bit 30, the TID the low 30 bits; `NOT_RECOVERABLE` is the
//! TID value `0x3fff_ffff`, which no thread can have: `pid_max` is at most 2^22.)
//!
//! # How owner death is detected, and why this way
//!
//! The holder links the word into its thread's kernel robust list (glibc's list, with glibc's
//! entry layout: see `sync::robust`) for as long as it holds it. When the thread dies, SIGKILL
//! included, the kernel rewrites the word to `OWNER_DIED` (keeping `WAITERS`) and wakes one
//! sleeper: a waiter in `lock` returns `OwnerDied` within microseconds (about 35 µs here), with
//! no polling and no file descriptor. Alternatives and why not:
//! * Polling the owner's liveness (`kill(pid, 0)`, pidfd) while waiting notices a death only one
//!   polling slice later, wakes the waiter tens of times a second, calls an unreaped zombie alive,
//!   and pid reuse can make a dead owner look alive (or, across PID namespaces, a live one dead).
//! * glibc's robust `pthread_mutex_t` does the same as this, but its algorithm could not be
//!   model-checked with loom.
//!
//! Consequences: the owner is a *thread*. If the holding thread exits (or calls `execve`)
//! while its process lives, the lock is reported as owner-died, exactly as for a POSIX robust
//! mutex. A guard is not `Send`, so a lock is always released by the thread that took it.
//!
//! Robustness needs the word to stay mapped while it is linked, including after a guard is
//! leaked with `mem::forget` (safe code). So a word is linked only if it lies in a live
//! [`AnonRegion`](crate::AnonRegion), and a region does not unmap itself while any word of its
//! process is linked (it leaks its mapping instead). A `ShmMutex` anywhere else (on the stack,
//! in a `Box`) is an ordinary lock between the threads of one process: memory outside a shared
//! mapping is never seen by another process. A thread keeps at most 32 words linked at once;
//! a 33rd lock held at the same time is not robust. The robust-list code never reads a link
//! back from shared memory (a peer may scribble it): see `sync::robust`.
//!
//! Lock: announce the operation in `list_op_pending`, CAS `0 → tid` (Acquire), link the entry,
//! clear `list_op_pending`. Unlock: announce, unlink, one CAS from our TID (with whatever
//! `WAITERS` bit) to 0 (Release), wake a sleeper if `WAITERS` was set, clear the announcement.
//! A death at any step leaves either a word the kernel fixes (it names the dead TID and the
//! entry is listed or pending) or an unlocked word (and the kernel wakes a sleeper for a
//! pending entry whose word is 0). Unlock is one atomic CAS, not
//! "clear TID, then clear WAITERS", which is the bug glibc had (BZ #20985).
//!
//! A waiter keeps the word in `list_op_pending` while it sleeps (glibc does the same): the
//! kernel wakes only one waiter per death or unlock, and if that waiter is killed before it
//! takes the lock, the kernel's handling of its pending word (owner bits 0) wakes the next.
//!
//! The lock is not fair: a thread that unlocks and locks again at once usually wins over a
//! sleeping waiter (no hand-off), which is what makes the uncontended path cheap. The type's
//! docs ("Fairness") give the measured skew and what to do about it.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use crate::region::Shareable;
use crate::sync::ident::{Ident, current_ident, current_tid};
use crate::sync::robust::{Link, Placement, RobustWord, unlink};
use crate::sync::spin::Spinner;
use crate::sync::{Deadline, Ordering, WaitPolicy, Wake};
use crate::sys::{FUTEX_OWNER_DIED, FUTEX_TID_MASK, FUTEX_WAITERS};

/// TID value of a mutex that can never be locked again.
const NOT_RECOVERABLE: u32 = FUTEX_TID_MASK;

/// A mutex that works across `fork`ed processes and survives the death of its holder.
///
/// Place it in an [`AnonRegion`](crate::AnonRegion) before forking:
///
/// ```
/// use forkipc::{AnonRegion, LockError, ShmMutex};
///
/// let region = AnonRegion::new(4096)?;
/// let m = region.alloc(ShmMutex::new(0u64))?;
/// match m.lock() {
///     Ok(mut g) => *g += 1,
///     // The previous holder died: repair the data, then declare it consistent.
///     Err(LockError::OwnerDied(mut g)) => {
///         *g = 0;
///         g.mark_consistent();
///     }
///     Err(LockError::NotRecoverable) => panic!("data lost for good"),
/// }
/// # Ok::<(), forkipc::Error>(())
/// ```
///
/// # Recovering without the `match`
///
/// Most callers repair the data the same way at every lock. [`lock_or_recover`] takes the
/// repair as a closure, runs it only after an owner death, marks the data consistent and
/// returns a plain guard; the only error left is [`NotRecoverableError`]. Like std's
/// [`PoisonError::into_inner`](std::sync::PoisonError::into_inner), [`LockError::into_guard`]
/// and [`TryLockError::into_guard`] hand over the guard of an `OwnerDied` error (from `lock`,
/// `try_lock` or `lock_timeout`: `m.lock().or_else(LockError::into_guard)`), which is still
/// inconsistent: call `mark_consistent` once the data is repaired. Unlike a poisoned std
/// mutex, the recovery is never skipped silently: a guard from an owner death dropped without
/// `mark_consistent` (the repair panicked, or was forgotten) makes the mutex
/// [`NotRecoverable`](LockError::NotRecoverable) for every process.
///
/// ```
/// use forkipc::{AnonRegion, ShmMutex};
/// use std::time::Duration;
///
/// #[derive(Clone, Copy, Default)]
/// #[repr(C)]
/// struct Stats { count: u64, sum: u64 }
/// // SAFETY: two integers, `repr(C)`.
/// unsafe impl forkipc::Shareable for Stats {}
///
/// let region = AnonRegion::new(4096)?;
/// let stats = region.alloc(ShmMutex::new(Stats::default()))?;
///
/// // A holder died mid-update? Start the statistics afresh.
/// let mut s = stats.lock_or_recover(|s| *s = Stats::default()).expect("stats lost for good");
/// s.count += 1;
/// s.sum += 42;
/// drop(s);
///
/// // With a timeout: the same repair through `into_guard` (`Err` is now only `TimedOut`
/// // or `NotRecoverable`).
/// let mut s = stats
///     .lock_timeout(Duration::from_millis(10))
///     .or_else(forkipc::TryLockError::into_guard)
///     .expect("busy, or lost for good");
/// if s.is_inconsistent() {
///     *s = Stats::default();
///     s.mark_consistent();
/// }
/// s.count += 1;
/// # Ok::<(), forkipc::Error>(())
/// ```
///
/// # Fairness
///
/// The lock is **not fair** under contention. Unlock does not hand the lock to a sleeping
/// waiter: it frees the word and wakes one, and a holder that locks again at once (a tight
/// update loop) usually takes the word before the woken waiter runs. In a first-use trial,
/// four processes updating shared statistics in a loop, one did 326 000 updates while the
/// others did 20 000 to 28 000 each. Nobody starves for ever (a waiter is always woken), but
/// shares can be very uneven. If that matters: do the work outside the lock and hold it only
/// to publish, batch updates, yield (`std::thread::yield_now`) between critical sections, or
/// give each worker its own slot (its own mutex, or a channel to an aggregator).
///
/// [`lock_or_recover`]: ShmMutex::lock_or_recover
#[repr(C)]
pub struct ShmMutex<T> {
    word: RobustWord,
    data: UnsafeCell<T>,
}

// SAFETY: the lock serialises all access to `data` across threads and processes.
unsafe impl<T: Send> Sync for ShmMutex<T> {}
// SAFETY: moving the mutex moves its data.
unsafe impl<T: Send> Send for ShmMutex<T> {}
// SAFETY: the lock word is a plain u32 in robust format and the list links are only meaningful
// to the holder; `T` is itself shareable. No drop glue beyond `T`'s (none).
unsafe impl<T: Shareable> Shareable for ShmMutex<T> {}

impl<T> ShmMutex<T> {
    /// A new, unlocked mutex guarding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> ShmMutex<T> {
        ShmMutex {
            word: RobustWord::new(0),
            data: UnsafeCell::new(value),
        }
    }

    /// A new, unlocked mutex guarding `value`.
    #[cfg(loom)]
    pub fn new(value: T) -> ShmMutex<T> {
        ShmMutex {
            word: RobustWord::new(0),
            data: UnsafeCell::new(value),
        }
    }

    /// Blocks until the lock is acquired.
    ///
    /// Returns `Err(LockError::OwnerDied(guard))`, with the lock held, if the previous holder
    /// died while holding it; `Err(LockError::NotRecoverable)` if the mutex is unusable.
    pub fn lock(&self) -> Result<ShmMutexGuard<'_, T>, LockError<'_, T>> {
        match self.lock_inner(None, true) {
            Ok(g) => Ok(g),
            Err(TryLockError::OwnerDied(g)) => Err(LockError::OwnerDied(g)),
            Err(TryLockError::NotRecoverable) => Err(LockError::NotRecoverable),
            // Without a deadline and with blocking allowed these cannot happen; report them as
            // unrecoverable rather than panic.
            Err(TryLockError::WouldBlock | TryLockError::TimedOut) => {
                Err(LockError::NotRecoverable)
            }
        }
    }

    /// Blocks until the lock is acquired, and repairs the data first if the previous holder
    /// died holding it: `repair` runs (only then) on the data, the data is marked consistent,
    /// and a plain guard is returned. `Err` only if the mutex is not recoverable.
    ///
    /// If `repair` panics, the lock is released unrepaired and the mutex becomes not
    /// recoverable for every process, as for any owner-died guard dropped without
    /// [`mark_consistent`](ShmMutexGuard::mark_consistent).
    ///
    /// ```
    /// use forkipc::{AnonRegion, ShmMutex};
    /// let region = AnonRegion::new(4096)?;
    /// let hits = region.alloc(ShmMutex::new(0u64))?;
    /// *hits.lock_or_recover(|n| *n = 0).expect("hits lost for good") += 1;
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn lock_or_recover(
        &self,
        repair: impl FnOnce(&mut T),
    ) -> Result<ShmMutexGuard<'_, T>, NotRecoverableError> {
        match self.lock() {
            Ok(g) => Ok(g),
            Err(LockError::OwnerDied(mut g)) => {
                repair(&mut g);
                g.mark_consistent();
                Ok(g)
            }
            Err(LockError::NotRecoverable) => Err(NotRecoverableError),
        }
    }

    /// Acquires the lock only if it is free right now; never blocks.
    pub fn try_lock(&self) -> Result<ShmMutexGuard<'_, T>, TryLockError<'_, T>> {
        self.lock_inner(None, false)
    }

    /// Blocks for at most `timeout` (any duration, `Duration::MAX` included).
    ///
    /// ```
    /// use forkipc::{AnonRegion, ShmMutex, TryLockError};
    /// use std::time::Duration;
    /// let region = AnonRegion::new(4096)?;
    /// let m = region.alloc(ShmMutex::new(0u32))?;
    /// let held = m.lock().unwrap();
    /// assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
    /// assert!(matches!(m.lock_timeout(Duration::from_millis(5)), Err(TryLockError::TimedOut)));
    /// drop(held);
    /// assert!(m.lock_timeout(Duration::MAX).is_ok());
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ShmMutexGuard<'_, T>, TryLockError<'_, T>> {
        let deadline = Deadline::after(timeout);
        self.lock_inner(Some(&deadline), true)
    }

    /// Whether the mutex has become unusable after an unrepaired owner death.
    pub fn is_not_recoverable(&self) -> bool {
        self.word.load(Ordering::Relaxed) & FUTEX_TID_MASK == NOT_RECOVERABLE
    }

    /// A mutable reference to the data, without locking: `&mut self` proves exclusive access.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Consumes the mutex and returns the data.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }

    /// Tries to take the word once, linking it into this thread's robust list if taken.
    /// `Some(owner_died)` if taken. The caller has announced the word in `list_op_pending`.
    #[inline]
    fn try_take(&self, cur: u32, tid: u32, waited: bool) -> Option<(bool, Option<Link>)> {
        if cur & FUTEX_TID_MASK != 0 {
            return None;
        }
        // If we slept, others may sleep too: keep WAITERS set so our unlock wakes them.
        let new = tid | (cur & FUTEX_WAITERS) | if waited { FUTEX_WAITERS } else { 0 };
        // Acquire: pairs with the Release CAS in `unlock`, so the previous holder's writes to
        // the data are visible to us.
        self.word
            .compare_exchange(cur, new, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        Some((cur & FUTEX_OWNER_DIED != 0, self.link()))
    }

    /// Links the (just taken) word into this thread's robust list, if it lies in a live
    /// `AnonRegion`: only such memory is known to stay mapped while linked (a region does not
    /// unmap itself while any word of this process is linked). A mutex elsewhere (stack, heap)
    /// is private to one process, whose threads see each other's unwinding; it is not linked.
    #[inline]
    fn link(&self) -> Option<Link> {
        #[cfg(not(loom))]
        if !crate::region::holds(
            std::ptr::from_ref(&self.word) as usize,
            std::mem::size_of::<RobustWord>(),
        ) {
            return None;
        }
        // SAFETY: we just took the word; it lies in a live region, which stays mapped while
        // the link lasts (`AnonRegion::drop` checks `linked_count`).
        unsafe { self.word.link(Placement::Next) }
    }

    fn guard(
        &self,
        tid: u32,
        (owner_died, link): (bool, Option<Link>),
    ) -> Result<ShmMutexGuard<'_, T>, TryLockError<'_, T>> {
        let g = ShmMutexGuard {
            mutex: self,
            tid,
            process: current_ident(),
            link,
            inconsistent: owner_died,
            _not_send: PhantomData,
        };
        if owner_died {
            Err(TryLockError::OwnerDied(g))
        } else {
            Ok(g)
        }
    }

    fn lock_inner(
        &self,
        deadline: Option<&Deadline>,
        block: bool,
    ) -> Result<ShmMutexGuard<'_, T>, TryLockError<'_, T>> {
        let tid = current_tid();
        // Fast path: uncontended, no system call. `list_op_pending` covers the window between
        // taking the word and linking it.
        self.word.begin_op();
        let taken = self.try_take(0, tid, false);
        self.word.end_op();
        if let Some(t) = taken {
            return self.guard(tid, t);
        }
        self.lock_slow(tid, deadline, block)
    }

    /// The contended path. The word stays announced in `list_op_pending` for the whole wait,
    /// as glibc does for its robust mutexes: the kernel wakes *one* waiter when a holder dies
    /// (or an unlock wakes one), and if that waiter is killed before it takes the lock, the
    /// kernel's handling of its pending operation (owner bits 0: wake one waiter) passes the
    /// wake-up on. No single death can leave the others asleep on a free lock.
    #[cold]
    fn lock_slow(
        &self,
        tid: u32,
        deadline: Option<&Deadline>,
        block: bool,
    ) -> Result<ShmMutexGuard<'_, T>, TryLockError<'_, T>> {
        self.word.begin_op();
        let r = self.lock_wait(tid, deadline, block);
        self.word.end_op();
        match r {
            Ok(t) => self.guard(tid, t),
            Err(e) => Err(e),
        }
    }

    fn lock_wait(
        &self,
        tid: u32,
        deadline: Option<&Deadline>,
        block: bool,
    ) -> Result<(bool, Option<Link>), TryLockError<'_, T>> {
        let mut spinner = Spinner::new(WaitPolicy::Adaptive(Duration::from_micros(20)));
        let mut waited = false;
        loop {
            let cur = self.word.load(Ordering::Relaxed);
            if cur & FUTEX_TID_MASK == NOT_RECOVERABLE {
                return Err(TryLockError::NotRecoverable);
            }
            if let Some(t) = self.try_take(cur, tid, waited) {
                return Ok(t);
            }
            if cur & FUTEX_TID_MASK == 0 {
                continue; // lost a race for a free word: look again
            }
            if !block {
                return Err(TryLockError::WouldBlock);
            }
            if deadline.is_some_and(Deadline::expired) {
                return Err(TryLockError::TimedOut);
            }
            if !waited && cur & FUTEX_WAITERS == 0 && spinner.spin() {
                continue;
            }
            // Announce a sleeper, then sleep while the word is unchanged.
            let sleep_on = cur | FUTEX_WAITERS;
            if cur & FUTEX_WAITERS == 0
                && self
                    .word
                    .compare_exchange(cur, sleep_on, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            waited = true;
            if self.word.wait(sleep_on, deadline) == Wake::TimedOut {
                return Err(TryLockError::TimedOut);
            }
            // Model only: a waiter killed right after being woken.
            #[cfg(loom)]
            if self.word.died_after_wake() {
                return Err(TryLockError::WouldBlock);
            }
        }
    }

    fn unlock(&self, g: &ShmMutexGuard<'_, T>) {
        if current_ident() != g.process || current_tid() != g.tid {
            // A guard copied into a fork child: the lock (and the robust-list entry) belong to
            // the parent's thread. Touch nothing.
            return;
        }
        let tid = g.tid;
        let new = if g.inconsistent { NOT_RECOVERABLE } else { 0 };
        self.word.begin_op();
        if let Some(l) = g.link {
            // SAFETY: this thread linked it when it took the word (the guard is not Send, and
            // a guard copied into a fork child returned above).
            unsafe { unlink(l) };
        }
        // Release the word only if it still names us (one CAS, never "clear TID then clear
        // WAITERS" in two steps).
        let mut cur = self.word.load(Ordering::Relaxed);
        while cur & FUTEX_TID_MASK == tid {
            // Release: pairs with the Acquire CAS in `try_take`, publishing our writes to the
            // data.
            match self
                .word
                .compare_exchange(cur, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => {
                    if g.inconsistent {
                        self.word.wake(i32::MAX);
                    } else if cur & FUTEX_WAITERS != 0 {
                        self.word.wake(1);
                    }
                    break;
                }
                Err(now) => cur = now,
            }
        }
        self.word.end_op();
    }
}

impl<T: Default> Default for ShmMutex<T> {
    fn default() -> Self {
        ShmMutex::new(T::default())
    }
}

impl<T> fmt::Debug for ShmMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.word.load(Ordering::Relaxed);
        f.debug_struct("ShmMutex")
            .field("owner_tid", &(w & FUTEX_TID_MASK))
            .field("waiters", &(w & FUTEX_WAITERS != 0))
            .field("owner_died", &(w & FUTEX_OWNER_DIED != 0))
            .finish_non_exhaustive()
    }
}

/// Holds the lock; releases it on drop. Not `Send`: the thread that locked unlocks.
pub struct ShmMutexGuard<'a, T> {
    mutex: &'a ShmMutex<T>,
    /// The locking thread, and its process (a copy carried into a fork child is inert).
    tid: u32,
    process: Ident,
    /// This thread's robust-list link, if the word was linked.
    link: Option<Link>,
    inconsistent: bool,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: sharing a guard between threads only shares `&T`, like std's MutexGuard.
unsafe impl<T: Sync> Sync for ShmMutexGuard<'_, T> {}

impl<T> ShmMutexGuard<'_, T> {
    /// Declares the data repaired after `OwnerDied`. Without it, dropping this guard makes the
    /// mutex `NotRecoverable` for every process.
    pub fn mark_consistent(&mut self) {
        self.inconsistent = false;
    }

    /// Whether this guard came from `OwnerDied` and has not been marked consistent.
    pub fn is_inconsistent(&self) -> bool {
        self.inconsistent
    }

    /// Loom only: behave as if the holding thread died now. Does what the kernel's robust-list
    /// walk does (replace the word with `OWNER_DIED`, keep `WAITERS`, wake one sleeper) and
    /// forgets the guard.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn simulate_owner_death(self) {
        let w = &self.mutex.word;
        let mut cur = w.load(Ordering::SeqCst);
        // Like the kernel's handle_futex_death: retry until the word is rewritten, or a
        // concurrent waiter setting FUTEX_WAITERS makes the death go unnoticed.
        while cur & FUTEX_TID_MASK == self.tid {
            let new = (cur & FUTEX_WAITERS) | FUTEX_OWNER_DIED;
            match w.compare_exchange(cur, new, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    if new & FUTEX_WAITERS != 0 {
                        w.wake(1);
                    }
                    break;
                }
                Err(now) => cur = now,
            }
        }
        std::mem::forget(self);
    }
}

impl<T> ShmMutexGuard<'_, T> {
    /// A guard is usable only in the process that locked (by any of its threads, as the guard
    /// is `Sync`); the one way to break that through the safe API is to carry it into a fork
    /// child, where it must not touch the data the parent's thread holds.
    #[inline]
    fn check_holder(&self) {
        assert!(
            current_ident() == self.process,
            "ShmMutexGuard used in a forked child: the lock is held by the parent"
        );
    }
}

impl<T> Deref for ShmMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.check_holder();
        // SAFETY: we hold the lock, so no other thread or process accesses the data.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T> DerefMut for ShmMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.check_holder();
        // SAFETY: we hold the lock exclusively.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T> Drop for ShmMutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.unlock(self);
    }
}

impl<T: fmt::Debug> fmt::Debug for ShmMutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// Why `lock` did not return a plain guard.
///
/// [`into_guard`](LockError::into_guard) takes the guard out of `OwnerDied`, as std's
/// `PoisonError::into_inner` does for a poisoned lock; [`ShmMutex::lock_or_recover`] does the
/// whole recovery in one call.
pub enum LockError<'a, T> {
    /// The previous holder died holding the lock. The lock is now held by the caller: repair the
    /// data and call [`ShmMutexGuard::mark_consistent`].
    OwnerDied(ShmMutexGuard<'a, T>),
    /// A previous owner death was not repaired; the mutex can never be locked again.
    NotRecoverable,
}

/// Why `try_lock` or `lock_timeout` did not return a plain guard.
///
/// [`into_guard`](TryLockError::into_guard) takes the guard out of `OwnerDied`.
pub enum TryLockError<'a, T> {
    /// The lock is held by someone else (`try_lock` only).
    WouldBlock,
    /// The timeout passed (`lock_timeout` only).
    TimedOut,
    /// As [`LockError::OwnerDied`].
    OwnerDied(ShmMutexGuard<'a, T>),
    /// As [`LockError::NotRecoverable`].
    NotRecoverable,
}

impl<'a, T> LockError<'a, T> {
    /// The guard of an `OwnerDied` error: the lock is held, the data still inconsistent
    /// (repair it, then call [`mark_consistent`](ShmMutexGuard::mark_consistent), or the
    /// mutex becomes not recoverable when the guard drops). Any other error is handed back.
    ///
    /// The escape hatch std offers for poisoning,
    /// `lock().unwrap_or_else(PoisonError::into_inner)`, becomes
    /// `lock().or_else(LockError::into_guard)`, with the robust-mutex rule kept: the
    /// guard says [`is_inconsistent`](ShmMutexGuard::is_inconsistent), and an owner death
    /// cannot be ignored by accident.
    ///
    /// ```
    /// use forkipc::{AnonRegion, LockError, ShmMutex};
    /// let region = AnonRegion::new(4096)?;
    /// let m = region.alloc(ShmMutex::new(0u64))?;
    /// let mut g = m.lock().or_else(LockError::into_guard).expect("not recoverable");
    /// if g.is_inconsistent() {
    ///     *g = 0; // repair
    ///     g.mark_consistent();
    /// }
    /// *g += 1;
    /// # Ok::<(), forkipc::Error>(())
    /// ```
    pub fn into_guard(self) -> Result<ShmMutexGuard<'a, T>, Self> {
        match self {
            LockError::OwnerDied(g) => Ok(g),
            e => Err(e),
        }
    }

    /// Whether the previous holder died (`OwnerDied`).
    pub fn is_owner_died(&self) -> bool {
        matches!(self, LockError::OwnerDied(_))
    }
}

impl<'a, T> TryLockError<'a, T> {
    /// The guard of an `OwnerDied` error, as [`LockError::into_guard`]; any other error is
    /// handed back (`lock_timeout(d).or_else(TryLockError::into_guard)`).
    pub fn into_guard(self) -> Result<ShmMutexGuard<'a, T>, Self> {
        match self {
            TryLockError::OwnerDied(g) => Ok(g),
            e => Err(e),
        }
    }

    /// Whether the previous holder died (`OwnerDied`).
    pub fn is_owner_died(&self) -> bool {
        matches!(self, TryLockError::OwnerDied(_))
    }
}

/// The error of [`ShmMutex::lock_or_recover`]: the mutex is not recoverable (a previous owner
/// death was never repaired), and can never be locked again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NotRecoverableError;

impl fmt::Display for NotRecoverableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the lock is not recoverable")
    }
}

impl std::error::Error for NotRecoverableError {}

impl<T> fmt::Debug for LockError<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            LockError::NotRecoverable => f.write_str("NotRecoverable"),
        }
    }
}

impl<T> fmt::Debug for TryLockError<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("WouldBlock"),
            TryLockError::TimedOut => f.write_str("TimedOut"),
            TryLockError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            TryLockError::NotRecoverable => f.write_str("NotRecoverable"),
        }
    }
}

impl<T> fmt::Display for LockError<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("the previous holder of the lock died"),
            LockError::NotRecoverable => f.write_str("the lock is not recoverable"),
        }
    }
}

impl<T> fmt::Display for TryLockError<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("the lock is held"),
            TryLockError::TimedOut => f.write_str("timed out waiting for the lock"),
            TryLockError::OwnerDied(_) => f.write_str("the previous holder of the lock died"),
            TryLockError::NotRecoverable => f.write_str("the lock is not recoverable"),
        }
    }
}

impl<T> std::error::Error for LockError<'_, T> {}
impl<T> std::error::Error for TryLockError<'_, T> {}

impl<'a, T> From<LockError<'a, T>> for TryLockError<'a, T> {
    fn from(e: LockError<'a, T>) -> Self {
        match e {
            LockError::OwnerDied(g) => TryLockError::OwnerDied(g),
            LockError::NotRecoverable => TryLockError::NotRecoverable,
        }
    }
}
