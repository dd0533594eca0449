#![cfg(loom)]
//! Loom models of `ShmMutex`: mutual exclusion (with the Acquire/Release hand-over of the
//! data checked by a loom `UnsafeCell`), no lost wake-up between an unlock and a waiter going
//! to sleep, and the owner-died hand-over (one or two waiters, repaired or not). The holder's
//! death is `ShmMutexGuard::simulate_owner_death` (cfg(loom) only), which stands in for the
//! kernel's robust-list walk.
//!
//! Run: `cd loom-tests && RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release`

mod common;

use forkipc::{AnonRegion, LockError, ShmMutex, TryLockError};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

/// Shares `v` between loom threads for the rest of the execution. Leaked rather than put in a
/// loom `Arc`: when loom reports a deadlock it unwinds the model's main thread, and dropping a
/// loom object then panics inside the panic, which aborts the whole test binary.
fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

/// A fresh mutex in a fresh region, leaked so that loom threads can share it. Each execution
/// leaks one small heap-backed region (under loom `AnonRegion` is heap memory).
fn leaked_mutex() -> &'static ShmMutex<u64> {
    let region = leak(AnonRegion::new(4096).expect("AnonRegion::new under loom"));
    region
        .alloc(ShmMutex::new(0u64))
        .expect("alloc a ShmMutex in a fresh region")
}

/// Data the model watches: `inside` counts threads in the critical section (must never exceed
/// one), `cell` is a loom cell touched only under the lock, so loom reports a data race if the
/// unlock/lock pair does not order the holders' accesses.
struct Watched {
    inside: AtomicUsize,
    cell: UnsafeCell<u64>,
}

/// One critical section: check exclusion, bump both the guarded counter (read, yield, write:
/// a lost update would show) and the loom cell.
fn critical_section(m: &ShmMutex<u64>, w: &Watched) {
    let mut g = match m.lock() {
        Ok(g) => g,
        Err(e) => panic!("lock failed: {e:?}"),
    };
    let before = w.inside.fetch_add(1, Ordering::Relaxed);
    assert_eq!(before, 0, "two threads inside the critical section");
    let v = *g;
    thread::yield_now();
    *g = v + 1;
    // A data race here (no happens-before between holders) makes loom fail the model.
    w.cell.with_mut(|p| {
        // SAFETY: accessed only while holding the mutex; loom checks that claim.
        unsafe { *p += 1 }
    });
    w.inside.fetch_sub(1, Ordering::Relaxed);
    drop(g);
}

fn mutual_exclusion(threads: usize) {
    let m = leaked_mutex();
    let w = leak(Watched {
        inside: AtomicUsize::new(0),
        cell: UnsafeCell::new(0),
    });
    let handles: Vec<_> = (1..threads)
        .map(|_| thread::spawn(move || critical_section(m, w)))
        .collect();
    critical_section(m, w);
    for h in handles {
        h.join().expect("model thread panicked");
    }
    let g = match m.lock() {
        Ok(g) => g,
        Err(e) => panic!("final lock failed: {e:?}"),
    };
    assert_eq!(*g, threads as u64, "lost an increment");
    // SAFETY: all other threads joined; we also hold the lock.
    let cell = w.cell.with(|p| unsafe { *p });
    assert_eq!(cell, threads as u64);
}

#[test]
fn mutual_exclusion_two_threads() {
    common::model("mutual_exclusion_two_threads", || mutual_exclusion(2));
}

#[test]
fn mutual_exclusion_three_threads() {
    common::model("mutual_exclusion_three_threads", || mutual_exclusion(3));
}

/// A holds the lock; B blocks in `lock()` (spins once under loom, then announces WAITERS and
/// sleeps on the futex); A unlocks. In every interleaving B must get the lock: a wake-up lost
/// between B's check and its sleep leaves B asleep forever, which loom reports as a deadlock.
#[test]
fn no_lost_wakeup_unlock_vs_sleep() {
    common::model("no_lost_wakeup_unlock_vs_sleep", || {
        let m = leaked_mutex();
        let mut g = match m.lock() {
            Ok(g) => g,
            Err(e) => panic!("uncontended lock failed: {e:?}"),
        };
        let b = thread::spawn(move || {
            let mut g = match m.lock() {
                Ok(g) => g,
                Err(e) => panic!("B: lock failed: {e:?}"),
            };
            assert_eq!(*g, 1, "B must see A's write");
            *g = 2;
        });
        *g = 1;
        thread::yield_now();
        drop(g);
        b.join().expect("B panicked");
        let g = match m.try_lock() {
            Ok(g) => g,
            Err(e) => panic!("lock still held after both released: {e:?}"),
        };
        assert_eq!(*g, 2);
    });
}

/// Thread A takes the lock, tells B, and "dies" holding it. B locks after A took it (either
/// while A still holds it, so B sleeps and must be woken by the death, or after): B must get
/// `OwnerDied` with the lock held, repair the data and mark it consistent. Afterwards the
/// mutex is an ordinary one again.
#[test]
fn owner_died_handover() {
    common::model("owner_died_handover", || {
        let m = leaked_mutex();
        let taken = leak(AtomicBool::new(false));
        let a = thread::spawn(move || {
            let mut g = match m.lock() {
                Ok(g) => g,
                Err(e) => panic!("A: lock failed: {e:?}"),
            };
            *g = 99; // half-done update the repair must overwrite
            taken.store(true, Ordering::Release);
            thread::yield_now();
            g.simulate_owner_death();
        });
        let b = thread::spawn(move || {
            while !taken.load(Ordering::Acquire) {
                thread::yield_now();
            }
            match m.lock() {
                Err(LockError::OwnerDied(mut g)) => {
                    assert!(g.is_inconsistent());
                    assert_eq!(*g, 99, "B must see the dead owner's writes");
                    *g = 7;
                    g.mark_consistent();
                    assert!(!g.is_inconsistent());
                }
                Ok(_) => panic!("B: lock succeeded although the owner died"),
                Err(LockError::NotRecoverable) => panic!("B: NotRecoverable"),
            }
        });
        a.join().expect("A panicked");
        b.join().expect("B panicked");
        assert!(!m.is_not_recoverable());
        match m.lock() {
            Ok(mut g) => {
                assert_eq!(*g, 7, "repair lost");
                *g += 1;
            }
            Err(e) => panic!("lock after repair failed: {e:?}"),
        }
        match m.try_lock() {
            Ok(g) => assert_eq!(*g, 8),
            Err(e) => panic!("try_lock after repair failed: {e:?}"),
        }
    });
}

/// As `owner_died_handover`, but B drops the `OwnerDied` guard without `mark_consistent`:
/// the mutex becomes unusable for good, for a thread that was asleep waiting on it too.
#[test]
fn owner_died_unrepaired_is_not_recoverable() {
    common::model("owner_died_unrepaired_is_not_recoverable", || {
        let m = leaked_mutex();
        let taken = leak(AtomicBool::new(false));
        let a = thread::spawn(move || {
            let g = match m.lock() {
                Ok(g) => g,
                Err(e) => panic!("A: lock failed: {e:?}"),
            };
            taken.store(true, Ordering::Release);
            thread::yield_now();
            g.simulate_owner_death();
        });
        let b = thread::spawn(move || {
            while !taken.load(Ordering::Acquire) {
                thread::yield_now();
            }
            match m.lock() {
                Err(LockError::OwnerDied(g)) => drop(g), // not repaired
                Ok(_) => panic!("B: lock succeeded although the owner died"),
                Err(LockError::NotRecoverable) => panic!("B: NotRecoverable too early"),
            }
        });
        a.join().expect("A panicked");
        b.join().expect("B panicked");
        assert!(m.is_not_recoverable());
        assert!(matches!(m.lock(), Err(LockError::NotRecoverable)));
        assert!(matches!(m.try_lock(), Err(TryLockError::NotRecoverable)));
    });
}

/// Three threads: A (the model's main thread) takes the lock and dies holding it while B and
/// C both want it (each may be asleep on the word by then). Exactly one of B and C gets
/// `OwnerDied`. If it repairs the data, the other must then get the lock normally (so
/// `WAITERS` must survive the hand-over, or a sleeper is never woken); if it does not, the
/// other must get `NotRecoverable` (so the unrepaired unlock must wake every sleeper).
fn owner_died_two_waiters(repair: bool) {
    let m = leaked_mutex();
    let died_seen = leak(AtomicUsize::new(0));
    // A takes the lock before B and C exist, so they can only get it through A's death.
    let g = match m.lock() {
        Ok(g) => g,
        Err(e) => panic!("A: lock failed: {e:?}"),
    };
    let waiter = |name: &'static str| {
        thread::spawn(move || match m.lock() {
            Err(LockError::OwnerDied(mut g)) => {
                died_seen.fetch_add(1, Ordering::Relaxed);
                if repair {
                    *g = 1;
                    g.mark_consistent();
                }
            }
            Ok(mut g) => {
                assert!(
                    repair,
                    "{name}: got the lock although it was never repaired"
                );
                assert_eq!(*g, 1, "{name}: repair not visible");
                *g = 2;
            }
            Err(LockError::NotRecoverable) => {
                assert!(!repair, "{name}: NotRecoverable although repaired");
            }
        })
    };
    let b = waiter("B");
    let c = waiter("C");
    thread::yield_now();
    g.simulate_owner_death();
    b.join().expect("B panicked");
    c.join().expect("C panicked");
    assert_eq!(
        died_seen.load(Ordering::Relaxed),
        1,
        "OwnerDied reported once"
    );
    if repair {
        match m.try_lock() {
            Ok(g) => assert_eq!(*g, 2),
            Err(e) => panic!("try_lock after repair failed: {e:?}"),
        }
    } else {
        assert!(m.is_not_recoverable());
    }
}

#[test]
fn owner_died_two_waiters_repaired() {
    common::model("owner_died_two_waiters_repaired", || {
        owner_died_two_waiters(true)
    });
}

#[test]
fn owner_died_two_waiters_unrepaired() {
    common::model("owner_died_two_waiters_unrepaired", || {
        owner_died_two_waiters(false)
    });
}

/// Holder H and waiters W1, W2: H dies while both sleep; the kernel wakes *one* sleeper (the
/// futex model wakes exactly `n`, oldest first) and W1, if it is the one, dies right after that
/// wake-up, before it acts. W2 must still get the lock. The hand-over is the kernel's handling
/// of W1's `list_op_pending` (owner bits 0: wake one), which works only because a waiter keeps
/// its word announced while it sleeps; without that, W2 sleeps for ever and loom reports the
/// deadlock.
#[test]
fn woken_waiter_killed_hands_the_wake_up_on() {
    common::model("woken_waiter_killed_hands_the_wake_up_on", || {
        let m = leaked_mutex();
        let g = match m.lock() {
            Ok(g) => g,
            Err(e) => panic!("first lock failed: {e:?}"),
        };
        let w1 = thread::spawn(move || {
            forkipc::__loom::die_after_next_wake();
            // Whatever this returns, the thread counts as dead once it was woken.
            let _ = m.lock();
        });
        let w2 = thread::spawn(move || match m.lock() {
            Ok(_) | Err(LockError::NotRecoverable) => {}
            Err(LockError::OwnerDied(mut g)) => g.mark_consistent(),
        });
        g.simulate_owner_death();
        w1.join().expect("W1 panicked");
        w2.join().expect("W2 panicked");
    });
}
