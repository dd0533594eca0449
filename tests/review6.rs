//! Review 6 (presence `sel` word, Placement::Second), by a helper session told to break it:
//! each case failed on a510736.
//!
//! Every case runs in its own forked process (see `support`); every wait has a deadline and
//! every child is killed and reaped on every exit path.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use forkipc::{AnonRegion, Select, ShmMutex, TryLockError};
use support::{Context, Outcome, Reap};

fn main() {
    support::run(cases![
        scribbled_presence_reclaimed_by_another_thread_keeps_the_holders_locks_robust,
        tgkill_refused_is_not_a_dead_holder,
        scribbled_sel_word_does_not_make_an_idle_select_poll,
        regression_holder_threads_that_exit_do_not_use_up_the_table,
    ]);
}

const OWNER_DIED: u32 = 0x4000_0000;
const SLOTS: usize = 4096;

fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// The presence table (what a compromised process of the tree can write): `SLOTS` * 2 pages
/// of contiguous anonymous memory that starts shared (its holders' entry pages are private
/// holes in it, so it is not one mapping).
fn table() -> Option<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut v: Vec<(usize, usize, bool, bool)> = Vec::new();
    for l in maps.lines() {
        let mut it = l.split_whitespace();
        let (a, b) = it.next()?.split_once('-')?;
        let perms = it.next()?;
        let a = usize::from_str_radix(a, 16).ok()?;
        let b = usize::from_str_radix(b, 16).ok()?;
        let anon = l.split_whitespace().nth(4) == Some("0") || perms.ends_with('s');
        v.push((a, b, perms == "rw-s", anon && perms.starts_with("rw")));
    }
    let want = SLOTS * 2 * page();
    for k in 0..v.len() {
        if !v[k].2 {
            continue;
        }
        let start = v[k].0;
        let mut end = v[k].1;
        let mut j = k + 1;
        while end - start < want && j < v.len() && v[j].0 == end && v[j].3 {
            end = v[j].1;
            j += 1;
        }
        if end - start == want && v[j - 1].2 {
            return Some(start);
        }
    }
    None
}

/// `word` and `sel` of slot `i`.
fn slot_words(base: usize, i: usize) -> (&'static AtomicU32, &'static AtomicU32) {
    let s = base + i * 2 * page() + page() - 64;
    // SAFETY: inside the table mapping, which is never unmapped; aligned u32s.
    unsafe {
        (
            &*((s + 32) as *const AtomicU32),
            &*((s + 40) as *const AtomicU32),
        )
    }
}

/// The slot whose `word` holds `tid` (owner bits).
fn slot_of(base: usize, tid: u32) -> Option<usize> {
    (0..SLOTS).find(|&i| slot_words(base, i).0.load(Ordering::SeqCst) & 0x3fff_ffff == tid)
}

// ---------------------------------------------------------------------------------------------
// A compromised process of the tree writes OWNER_DIED into A's presence word (allowed effect:
// A's peers see A dead). A's main thread holds A's presence and a ShmMutex. A second thread of
// A then creates a channel: `current()` sees its presence dead and claims a slot, the first
// free-or-dead one from A's pid, i.e. A's own slot. `take` maps a fresh private page over the
// slot's entry page: the page where A's *main* thread's list entries for `word` and `sel`
// live, still linked in the main thread's robust list. The main thread's list now runs into
// the second thread's nodes and never comes back: at A's death the kernel never reaches the
// main thread's lock word, so an honest locker (here R, which shares only the mutex's region
// with A) waits for ever instead of getting OwnerDied.

#[repr(C)]
struct Shared {
    m: ShmMutex<u32>,
}
// SAFETY: a ShmMutex of a Shareable value.
unsafe impl forkipc::Shareable for Shared {}

fn scribbled_presence_reclaimed_by_another_thread_keeps_the_holders_locks_robust() -> Outcome {
    reclaimed_slot_case(false)
}

/// The same in a process where `tgkill` is refused (EPERM, what a seccomp profile or a
/// security module can do): the check "is the thread that took this slot alive" must not read
/// a refusal as "gone" (it did: the live main thread's slot was reclaimed). From a review of
/// the fix above (helper session).
fn tgkill_refused_is_not_a_dead_holder() -> Outcome {
    reclaimed_slot_case(true)
}

fn reclaimed_slot_case(deny_tgkill: bool) -> Outcome {
    let region = support::leak(AnonRegion::new(4096).ctx("region")?);
    let sh: &'static Shared = region
        .alloc(Shared {
            m: ShmMutex::new(0),
        })
        .ctx("alloc")?;
    let flags = support::counters(2).ctx("counters")?;
    let mut a = Reap(
        forkipc::fork((), move |()| {
            if deny_tgkill {
                let deny = support::Deny {
                    nr: libc::SYS_tgkill,
                    arg: None,
                    errno: libc::EPERM,
                };
                if support::deny_syscalls(&[deny]).is_err() {
                    return 7;
                }
            }
            // A's presence, taken by this (main) thread, from a slot found from A's pid.
            let Ok((_t, _r)) = forkipc::channel::<u64>(1) else {
                return 2;
            };
            let Ok(g) = sh.m.lock() else { return 3 };
            std::mem::forget(g); // held until A dies
            let Some(base) = table() else { return 4 };
            let Some(i) = slot_of(base, gettid()) else {
                return 5;
            };
            // The compromised peer's write (done here for simplicity: any process of the tree
            // can do it).
            slot_words(base, i).0.store(OWNER_DIED, Ordering::SeqCst);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let ends = forkipc::channel::<u64>(1);
                let _ = tx.send((ends.is_ok(), gettid()));
                let _keep = ends;
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
            let Ok((true, t2)) = rx.recv_timeout(Duration::from_secs(10)) else {
                return 6;
            };
            // Record whether the second thread took over the same slot (the bad case).
            let same = slot_words(base, i).0.load(Ordering::SeqCst) & 0x3fff_ffff == t2;
            flags[1].store(if same { 2 } else { 1 }, Ordering::SeqCst);
            flags[0].store(1, Ordering::SeqCst);
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .ctx("fork A")?,
    );
    ensure!(
        support::wait_for(&flags[0], 1, Duration::from_secs(10)),
        "A never got ready (exit: {:?})",
        a.0.wait_timeout(Duration::from_millis(1))
    );
    let same_slot = flags[1].load(Ordering::SeqCst) == 2;
    a.0.kill().ctx("kill A")?;
    a.0.wait().ctx("reap A")?;
    match sh.m.lock_timeout(Duration::from_secs(2)) {
        Err(TryLockError::OwnerDied(mut g)) => {
            g.mark_consistent();
            Ok(())
        }
        Err(TryLockError::TimedOut) => Err(format!(
            "A died holding the lock, yet after 2 s the lock still names A's main thread \
             (A's second thread reclaimed the same presence slot: {same_slot}): the kernel \
             never reached the lock word in A's robust list"
        )),
        Ok(_) => Err("locked without OwnerDied".into()),
        Err(e) => Err(format!("lock_timeout: {e:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// A compromised process writes 0 into a live peer's `sel` word (once). `arm_select` then
// answers NotYet for that peer for ever, and every `Select` watching it naps 1 ms in a loop:
// an idle `ready` wakes ~1000 times a second for as long as the peer lives. (A scribbled
// `word` costs at most a disconnect; a scribbled `sel` should cost no more than a slower
// poll, like the >126 peers mode.)

fn scribbled_sel_word_does_not_make_an_idle_select_poll() -> Outcome {
    let (tx, rx) = forkipc::channel::<u64>(4).ctx("channel")?;
    let child = forkipc::fork(tx, |_tx| {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .ctx("fork")?;
    let pid = child.id();
    let _kids = Reap(child);
    let base = table().ctx("presence table")?;
    let mut i = None;
    for _ in 0..1000 {
        i = slot_of(base, pid)
            .filter(|&i| slot_words(base, i).1.load(Ordering::SeqCst) & 0x3fff_ffff == pid);
        if i.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let i = i.ctx("the child's slot")?;
    // The compromised write.
    slot_words(base, i).1.store(0, Ordering::SeqCst);
    let mut sel = Select::new();
    sel.recv(&rx);
    let (r, cpu, switches) = support::cost_of(|| sel.ready_timeout(Duration::from_secs(1)));
    ensure!(r.is_err(), "nothing should be ready: {r:?}");
    ensure!(
        switches <= 50,
        "an idle select woke up {switches} times in 1 s (CPU {cpu:?}) after one write to \
         its peer's sel word"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The fix for the first case above made a process skip, for good, every slot whose entry page
// it had mapped. A process whose presence-holding thread exits claims a new slot on its next
// channel (documented: create channels from a long-lived thread); after as many exits as the
// table has slots it could claim none (`TooManyProcesses`). Only a slot whose holder thread is
// still alive may be skipped.

fn regression_holder_threads_that_exit_do_not_use_up_the_table() -> Outcome {
    let mut kid = Reap(
        forkipc::fork((), |()| {
            for k in 0..5000 {
                let made = std::thread::spawn(|| forkipc::channel::<u64>(1).map(|_| ()))
                    .join()
                    .ok();
                match made {
                    Some(Ok(())) => {}
                    other => {
                        eprintln!("channel {k} from a fresh thread: {other:?}");
                        return 1;
                    }
                }
            }
            0
        })
        .ctx("fork")?,
    );
    let st = support::wait_child(&mut kid.0, Duration::from_secs(60))?;
    ensure!(st.success(), "a channel from a fresh thread failed: {st:?}");
    Ok(())
}
