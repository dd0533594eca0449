//! Presence: which process owns an endpoint, and whether it is still alive.
//!
//! A process that owns endpoints holds one *presence slot* for its whole life: two robust words
//! (see `sync::robust`) locked with its TID and linked into its robust list. When the process
//! dies, SIGKILL included, the kernel rewrites each to `OWNER_DIED` and wakes a sleeper on
//! each, so a peer sleeping on both its data word and the owner's presence word
//! (`futex_waitv`) learns of the death at once: no polling, no file descriptor, no pid-reuse
//! race (a slot is recycled only after its owner died, and recycling bumps the slot's
//! generation, which every reference carries). Blocked `recv`s and `send`s sleep on `word`;
//! `Select`s sleep on `sel` (see below for why they are kept apart).
//!
//! ```text
//! presence table: one shared anonymous mapping per process tree, made by the first process
//! that needs it (before it forks) and inherited by every descendant; never unmapped. Slot i
//! is the last 64 bytes of the table's page 2i; page 2i + 1 is the holder's private page.
//! slot (64 bytes, repr(C))
//!   0  gen    bumped each time the slot is claimed; references carry (slot, gen)
//!   4  bell   the process's doorbell: a futex word a `Select` in this process sleeps on;
//!             bumped and woken by a peer that finds one of the watched sides asleep
//!   8  cpu    the CPU (plus one) the holder last started waiting on (a hint)
//!  32  word   robust word: 0 free | tid | OWNER_DIED, plus WAITERS (bit 31); what blocked
//!             `recv`s and `send`s of the holder's peers sleep on
//!  40  sel    robust word, the same states once the holder has taken it; what the peers'
//!             `Select`s sleep on
//!  56  prev   unused (glibc's layout)
//! next page (private to the holder): +0 `word`'s robust-list entry, +8 `sel`'s; written by
//! the holder, never read back (see `sync::robust`)
//! ```
//!
//! A forking parent claims a slot for the child *with its own TID* and names it in its
//! thread's `list_op_pending` (not in the list, which the child's copy of the slot will join):
//! if the parent dies before the child has taken the slot (before, during or right after the
//! fork) the kernel marks the slot dead. The child takes it over with its own TID before
//! running the user's code (or, if the parent is already dead, exits at once), and the parent
//! waits for that, or for the child's exit (then it marks the slot dead itself). Reserving
//! before the fork means the endpoints handed to the child point at the child's slot from the
//! first instant.
//!
//! Every claim names the slot in the claimer's `list_op_pending` *before* its compare-and-swap
//! puts the claimer's TID in the word: a claimer killed anywhere in the claim leaves the slot
//! marked dead by the kernel, never a live-looking word under the previous owner's generation
//! (which would make that dead owner look alive to its peers for ever).
//!
//! The kernel wakes *one* sleeper on a presence word when its owner dies; that one wakes the
//! rest (`pass_on_death`). If it is killed before it does, the kernel's handling of its
//! `list_op_pending` (owner bits 0: wake one) must reach someone who will:
//!
//! * A blocked `recv`/`send` sleeps on one peer's `word` and names that word: the kernel wakes
//!   the next sleeper on it.
//! * A `Select` sleeps on many peers' words but can name only one. So `Select`s sleep on the
//!   peers' `sel` words, never on `word` (a `Select` chosen by the kernel cannot swallow the
//!   wake-up a blocked `recv` needs: that one gets its own, on `word`), and they all also sleep
//!   on the table's *relay* word and name it: the kernel's handling of a killed `Select` wakes
//!   another `Select`, which wakes everyone asleep on a dead `sel` word (`relay_woke`). A
//!   blocked `recv` pays nothing for this (two words per sleep, as before).
//!
//! ```text
//! the table's first page, before slot 0:
//!   0  relay    futex word, 0 (put back if scribbled); slept on, never otherwise written
//!  64  claimed  one bit per slot: claimed at least once (`relay_woke` scans only those)
//! ```
//!
//! Trust: the table is shared by the whole process tree, so a compromised process can forge the
//! liveness of any slot (keep a dead process looking alive). Timeouts bound what that costs.
//!
//! The slot is held by a thread: the one that first needed presence in this process (for a fork
//! child, its only thread). If that thread exits while the process lives, the process looks dead
//! to its peers; create channels from a thread that lives as long as the process (normally the
//! main thread). A stopped process (SIGSTOP) is alive: its word does not change.

use crate::Error;
use crate::sync::FutexWord;
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

/// Test hooks (see `__testing`): points where a test makes this process SIGKILL itself.
pub(crate) mod testing {
    /// A point in the code where the process kills itself once a test armed it.
    struct KillPoint(std::sync::atomic::AtomicBool);

    impl KillPoint {
        const fn new() -> KillPoint {
            KillPoint(std::sync::atomic::AtomicBool::new(false))
        }

        fn arm(&self) {
            // Relaxed: a process-local test flag, read by this process's own later calls.
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }

        #[inline]
        fn reached(&self) {
            // Relaxed: as above.
            #[cfg(not(loom))]
            if self.0.load(std::sync::atomic::Ordering::Relaxed) {
                crate::sys::kill_self();
            }
        }
    }

    static AFTER_WAKE: KillPoint = KillPoint::new();
    static MID_CLAIM: KillPoint = KillPoint::new();

    #[cfg(not(loom))]
    pub(crate) fn kill_after_next_wake() {
        AFTER_WAKE.arm();
    }

    #[cfg(not(loom))]
    pub(crate) fn kill_in_next_claim() {
        MID_CLAIM.arm();
    }

    /// Runs right after a sleep that may have watched a peer's presence (a blocked `recv` or
    /// `send` whose peer has an owner, or a `Select`) returns, before anything acts on it.
    #[inline]
    pub(crate) fn after_wake() {
        AFTER_WAKE.reached();
    }

    /// Runs inside a claim of a presence slot, right after the word changed hands and before
    /// the generation is bumped.
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn mid_claim() {
        MID_CLAIM.reached();
    }
}

#[cfg(loom)]
mod loom_stub {
    use super::*;
    pub(crate) fn current() -> Result<PresenceRef, Error> {
        Ok(PresenceRef::NONE)
    }
    pub(crate) fn check(_: PresenceRef) -> Liveness {
        Liveness::Alive
    }
    #[derive(Clone, Copy)]
    pub(crate) enum Resolved {
        Unknown,
    }
    pub(crate) fn resolve(_: PresenceRef) -> Resolved {
        Resolved::Unknown
    }
    impl Resolved {
        pub(crate) fn check(self) -> Liveness {
            Liveness::Alive
        }
    }
    pub(crate) fn arm(_: PresenceRef) -> Option<(&'static FutexWord, u32)> {
        None
    }
    pub(crate) fn pass_on_death(_: PresenceRef) {}
    pub(crate) fn announce_waiter(_: PresenceRef) {}
    pub(crate) fn announce_relay() {}
    pub(crate) fn waiter_done() {}
    #[allow(dead_code)]
    pub(crate) enum SelectArm {
        Armed(&'static FutexWord, u32),
        NotYet,
        Gone,
    }
    pub(crate) fn arm_select(_: PresenceRef) -> SelectArm {
        SelectArm::Gone
    }
    pub(crate) fn pass_on_select_death(_: PresenceRef) {}
    pub(crate) fn relay() -> Option<(&'static FutexWord, u32)> {
        None
    }
    pub(crate) fn relay_woke() {}
    pub(crate) fn note_my_cpu(_: u32) {}
    pub(crate) fn cpu_of(_: PresenceRef) -> u32 {
        0
    }
    loom::lazy_static! {
        /// Under loom all model threads are one "process": one doorbell.
        static ref BELL: FutexWord = FutexWord::new(0);
    }
    pub(crate) fn bell(_: PresenceRef) -> Option<&'static FutexWord> {
        Some(&BELL)
    }
    pub(crate) fn ring_bell(r: PresenceRef) {
        if let Some(b) = bell(r) {
            b.fetch_add(1, crate::sync::Ordering::SeqCst);
            b.wake(i32::MAX);
        }
    }
    // `fork` is never called under loom; these keep `process.rs` compiling.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Reservation {
        pub(crate) r: PresenceRef,
    }
    pub(crate) fn reserve_for_child() -> Result<Reservation, Error> {
        Ok(Reservation {
            r: PresenceRef::NONE,
        })
    }
    pub(crate) fn adopt(_: Reservation) -> bool {
        true
    }
    pub(crate) fn await_adoption(_: Reservation, _pid: u32) {}
    pub(crate) fn release_reservation(_: Reservation) {}
}
#[cfg(loom)]
pub(crate) use loom_stub::*;

#[cfg(not(loom))]
mod native {
    use super::*;
    use crate::sync::Ordering;
    use crate::sync::ident::{current_pid, current_tid};
    use crate::sync::robust::Placement;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};

    pub(crate) const SLOTS: usize = 4096;
    /// How long `fork` waits at most for the child to take its presence slot.
    const ADOPTION_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

    /// The shared part of a slot: the last 64 bytes of its shared page. The robust-list entry
    /// that goes with `word` (32 bytes after it, glibc's layout) is the first word of the
    /// *next* page, which the holder maps privately: the kernel's walk of the holder's list
    /// follows only private memory from its anchor through the presence word, so no other
    /// process can steer or stop it there.
    #[repr(C, align(64))]
    pub(crate) struct Slot {
        gen_: crate::sync::AtomicU32,
        bell: FutexWord,
        /// The CPU (plus one; 0 unknown) the holder last started waiting on (a hint).
        cpu: crate::sync::AtomicU32,
        _pad: [u32; 5],
        word: FutexWord,
        _gap: u32,
        sel: FutexWord,
        _gap2: [u32; 3],
        _prev: std::sync::atomic::AtomicUsize,
    }

    const _: () = {
        assert!(std::mem::offset_of!(Slot, word) == 32);
        assert!(std::mem::offset_of!(Slot, sel) == 40);
        assert!(std::mem::offset_of!(Slot, _prev) == 56);
        assert!(std::mem::size_of::<Slot>() == 64);
    };

    impl Slot {
        /// A slot outside the table whose word reads `word` forever (see `Resolved`).
        const fn stand_in(word: u32) -> Slot {
            Slot {
                gen_: crate::sync::AtomicU32::new(0),
                bell: FutexWord::new(0),
                cpu: crate::sync::AtomicU32::new(0),
                _pad: [0; 5],
                word: FutexWord::new(word),
                _gap: 0,
                sel: FutexWord::new(word),
                _gap2: [0; 3],
                _prev: std::sync::atomic::AtomicUsize::new(0),
            }
        }

        /// The slot's robust-list entry: 32 bytes after the word, at the start of the page
        /// after the slot's shared page (private in the holder, after `take`).
        fn entry(&self) -> &std::sync::atomic::AtomicUsize {
            // SAFETY: the slot is the last 64 bytes of a page of the table, which is followed
            // by another page of the table (shared, or the holder's private page): an aligned,
            // mapped word for as long as the process lives (the table is never unmapped).
            unsafe {
                &*((self as *const Slot as usize + 64) as *const std::sync::atomic::AtomicUsize)
            }
        }

        /// `sel`'s robust-list entry: 32 bytes after it, 8 bytes into the private page.
        fn sel_entry(&self) -> &std::sync::atomic::AtomicUsize {
            // SAFETY: as `entry`, 8 bytes further (still inside the next page, aligned).
            unsafe {
                &*((self as *const Slot as usize + 72) as *const std::sync::atomic::AtomicUsize)
            }
        }

        /// Announces the word in this thread's `list_op_pending` (see `sync::robust`).
        fn begin_op(&self) {
            crate::sync::robust::begin_op_at(self.entry());
        }
    }

    /// Bytes of the table per slot: its shared page and the page for its private entry.
    fn slot_span() -> usize {
        2 * crate::sys::page_size()
    }

    /// The table's first page holds, before slot 0 (which is its last 64 bytes):
    ///
    /// ```text
    ///   0  relay    the relay word (see `announce_waiter`): 0; written only to put it back
    ///               to 0 after a scribble
    ///  32  (the relay's pending-entry address; nothing is stored there)
    ///  64  claimed  SLOTS bits: slot i was claimed at least once (set by `claim`, never
    ///               cleared); only a hint for `relay_woke`'s scan
    /// ```
    const RELAY_ENTRY: usize = 32;
    const CLAIMED: usize = 64;
    const _: () = assert!(CLAIMED + SLOTS / 8 <= 4096 - 64);

    #[derive(Clone, Copy)]
    struct Table {
        base: usize,
    }

    impl Table {
        fn relay(self) -> &'static FutexWord {
            // SAFETY: offset 0 of the table's first page: an aligned u32 of a live,
            // never-unmapped, shared mapping that nothing else uses.
            unsafe { &*(self.base as *const FutexWord) }
        }

        fn claimed(self) -> &'static [AtomicU64] {
            // SAFETY: bytes CLAIMED..CLAIMED + SLOTS / 8 of the table's first page (before
            // slot 0, checked above): aligned u64s of a live, never-unmapped shared mapping
            // used for nothing else; a zeroed or scribbled `AtomicU64` is valid.
            unsafe {
                std::slice::from_raw_parts((self.base + CLAIMED) as *const AtomicU64, SLOTS / 64)
            }
        }
    }

    fn table() -> Option<Table> {
        TABLE.get().map(|&base| Table { base })
    }

    /// Notes that this process starts waiting on CPU `cpu` (plus one), for its peers.
    pub(crate) fn note_my_cpu(cpu: u32) {
        if let Some((s, _)) = split(PresenceRef(MINE.load(Ordering::Relaxed))) {
            // Relaxed: a hint read by peers deciding whether to spin. Written only when it
            // changes, so that the line stays shared in the peers' caches (every wait reads
            // it, and a write per wait would cost a cache-line transfer per round trip).
            if s.cpu.load(Ordering::Relaxed) != cpu {
                s.cpu.store(cpu, Ordering::Relaxed);
            }
        }
    }

    /// The CPU (plus one; 0 unknown) the process behind `r` last started waiting on.
    pub(crate) fn cpu_of(r: PresenceRef) -> u32 {
        // Relaxed: a hint (see `note_my_cpu`).
        split(r).map_or(0, |(s, _)| s.cpu.load(Ordering::Relaxed))
    }

    /// The doorbell of the process behind `r` (whatever its generation: ringing a recycled
    /// slot's bell only wakes its new owner's `Select` for nothing).
    pub(crate) fn bell(r: PresenceRef) -> Option<&'static FutexWord> {
        split(r).map(|(s, _)| &s.bell)
    }

    /// Rings the doorbell of the process behind `r`: changes the word (so a `Select` about to
    /// sleep on its old value does not) and wakes every sleeper on it.
    pub(crate) fn ring_bell(r: PresenceRef) {
        if let Some(b) = bell(r) {
            // SeqCst: ordered after the ringer's publication (message, free space, close), which
            // the selector re-checks after reading the bell.
            b.fetch_add(1, Ordering::SeqCst);
            b.wake(i32::MAX);
        }
    }

    /// Address of the table's mapping (never unmapped): its first page holds the relay and
    /// the claimed bitmap, then slot 0 in its last 64 bytes.
    static TABLE: OnceLock<usize> = OnceLock::new();
    /// This process's own slot reference (0: none yet). Reset in a fork child.
    static MINE: AtomicU64 = AtomicU64::new(0);
    /// Per slot, the thread of this process that mapped the slot's entry page privately and
    /// took the slot (`take`), or 0. This process does not claim such a slot again while that
    /// thread lives: the thread may still have its entries linked in that page (a holder whose
    /// word a compromised process marked dead, so that another thread's `current` looks for a
    /// new slot), and mapping the page afresh would splice the new holder's nodes into the old
    /// holder's robust list, which would then never reach its lock words. Once the thread has
    /// exited (its list settled and gone), the slot is claimable again, as any dead slot.
    /// Inherited by a fork child, where those threads are not its own (so none is alive).
    static MAPPED_BY: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];
    /// Serialises claiming (and the table's creation) within the process.
    static CLAIM: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static AT_FORK: std::sync::Once = std::sync::Once::new();

    /// Runs in the child of every libc fork: the child's presence is not the parent's.
    extern "C" fn after_fork_in_child() {
        // Relaxed: the child has one thread.
        MINE.store(0, Ordering::Relaxed);
    }

    /// Slot `i` of the table, if this process tree has made it.
    fn slot(i: usize) -> Option<&'static Slot> {
        let base = *TABLE.get()?;
        if i >= SLOTS {
            return None;
        }
        let page = crate::sys::page_size();
        // SAFETY: `base` is a live, never-unmapped, zero-filled mapping of SLOTS * slot_span()
        // bytes; the slot is the last 64 bytes of the first page of its span (64-aligned), and
        // a zeroed `Slot` is a valid free slot (atomics and plain integers).
        Some(unsafe { &*((base + i * slot_span() + page - 64) as *const Slot) })
    }

    /// The table, made on first use. The caller holds `CLAIM`, so two threads never both make
    /// one (and leak the loser's mapping).
    fn table_or_create() -> Result<(), Error> {
        if TABLE.get().is_none() {
            AT_FORK.call_once(|| crate::sys::at_fork_child(after_fork_in_child));
            let region = crate::AnonRegion::new_unregistered(SLOTS * slot_span())?;
            // The table lives as long as the process; its pages are freed with the last process
            // that maps it.
            let base = region.as_ptr() as usize;
            std::mem::forget(region);
            let _ = TABLE.set(base);
        }
        Ok(())
    }

    /// The table index of the slot `r` names, if any.
    fn slot_index(r: PresenceRef) -> Option<usize> {
        let idx = (r.0 >> 32).checked_sub(1)? as usize;
        (idx < SLOTS).then_some(idx)
    }

    fn split(r: PresenceRef) -> Option<(&'static Slot, u32)> {
        Some((slot(slot_index(r)?)?, r.0 as u32))
    }

    /// Claims a free or dead slot, leaving `value` (the calling thread's TID; a fake one in
    /// unit tests) in its word. Returns the new reference, with the slot still named in this
    /// thread's `list_op_pending` (named before the word changes, so that the kernel marks it
    /// dead if we die in the middle); the caller ends that (`end_op`) or keeps it. The caller
    /// holds `CLAIM`.
    fn claim(value: u32) -> Result<PresenceRef, Error> {
        table_or_create()?;
        let start = current_pid() as usize % SLOTS;
        for k in 0..SLOTS {
            let i = (start + k) % SLOTS;
            let Some(s) = slot(i) else { break };
            // Relaxed: written and read under `CLAIM` (this process's claims are serialised).
            let holder = MAPPED_BY[i].load(Ordering::Relaxed);
            if holder != 0 && crate::sys::own_thread_alive(holder) {
                continue;
            }
            // SeqCst on the presence words and generations: claim, take, check and arm form
            // one protocol across processes (a word read before a generation, a recycle that
            // changes the word before the generation); total order keeps the argument simple,
            // and none of these is on a per-message path except `check`'s loads, which are
            // plain `mov`s on x86 anyway.
            let w = s.word.load(Ordering::SeqCst);
            if w & FUTEX_TID_MASK != 0 {
                continue;
            }
            s.begin_op();
            if s.word
                .compare_exchange(
                    w,
                    value | (w & FUTEX_WAITERS),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_err()
            {
                continue;
            }
            super::testing::mid_claim();
            if let Some(t) = table() {
                // Before anyone holds a reference to the slot, so before anyone sleeps on it.
                t.claimed()[i / 64].fetch_or(1 << (i % 64), Ordering::SeqCst);
            }
            return Ok(PresenceRef(
                ((i as u64 + 1) << 32) | u64::from(finish_claim(s, w)),
            ));
        }
        crate::sync::robust::end_op();
        Err(Error::TooManyProcesses)
    }

    /// Test hook: a slot claimed with a fake TID (alive to its peers), its reference, and the
    /// claim lock (see `test_claim_dead_slot`).
    #[cfg(test)]
    pub(crate) fn test_claim_live_slot(
        tid: u32,
    ) -> (
        PresenceRef,
        &'static Slot,
        std::sync::MutexGuard<'static, ()>,
    ) {
        let g = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
        let r = claim(tid).expect("a free presence slot");
        crate::sync::robust::end_op();
        let (s, _) = split(r).expect("the slot just claimed");
        (r, s, g)
    }
    /// Test hooks: a slot claimed with a fake TID and then marked dead, its reference and index,
    /// and the claim lock: while the caller holds it, no other thread of the test process (the
    /// test harness runs tests in parallel, and a thread's first channel claims a slot) can
    /// claim, and so recycle, the dead slot under the test.
    #[cfg(test)]
    pub(crate) fn test_claim_dead_slot() -> (
        PresenceRef,
        &'static Slot,
        usize,
        std::sync::MutexGuard<'static, ()>,
    ) {
        let g = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
        let r = claim(4241).expect("a free presence slot");
        crate::sync::robust::end_op();
        let (s, _) = split(r).expect("the slot just claimed");
        s.word.store(FUTEX_OWNER_DIED, Ordering::SeqCst);
        let i = slot_index(r).expect("the slot just claimed");
        (r, s, i, g)
    }
    #[cfg(test)]
    pub(crate) fn test_word(s: &Slot) -> u32 {
        s.word.load(Ordering::SeqCst)
    }
    #[cfg(test)]
    pub(crate) fn test_set_word(s: &Slot, v: u32) {
        s.word.store(v, Ordering::SeqCst);
    }
    #[cfg(test)]
    pub(crate) fn test_set_sel(s: &Slot, v: u32) {
        s.sel.store(v, Ordering::SeqCst);
    }
    #[cfg(test)]
    pub(crate) fn test_finish_claim(s: &Slot, was: u32) {
        finish_claim(s, was);
    }
    /// Frees the slot again (word 0).
    #[cfg(test)]
    pub(crate) fn test_release(s: &Slot) {
        s.word.store(0, Ordering::SeqCst);
    }

    /// The second half of a claim, after the word of `s` went from `was` (a dead or free word)
    /// to the claimer's value: bumps the generation (so references to the previous owner read
    /// dead) and returns it.
    ///
    /// Between the word's change and the bump, a peer of the dead previous owner can read the
    /// new, live word with the old generation and arm on it (set `WAITERS`, then sleep): it
    /// would sleep on a live stranger's word, never woken. So after the bump the claim clears
    /// `WAITERS` and wakes every sleeper if it was set (by the previous owner's peers, or in
    /// that window): a sleeper that armed in the window either is asleep and wakes, or finds
    /// the word changed when it goes to sleep (`futex_waitv` compares it), and in both cases
    /// re-checks and sees the new generation (`arm` re-reads it after arming). No peer of the
    /// new owner can have armed yet: nobody holds the new reference before `claim` returns.
    fn finish_claim(s: &Slot, was: u32) -> u32 {
        let g = s.gen_.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
        let armed = s.word.fetch_and(!FUTEX_WAITERS, Ordering::SeqCst);
        if (was | armed) & FUTEX_WAITERS != 0 {
            s.word.wake(i32::MAX);
        }
        // The same for `Select`s of the previous owner on `sel` (`arm_select` re-reads the
        // generation after arming too).
        if s.sel.fetch_and(!FUTEX_WAITERS, Ordering::SeqCst) & FUTEX_WAITERS != 0 {
            s.sel.wake(i32::MAX);
        }
        g
    }

    /// Takes slot `r`, whose word holds `from` (plus `WAITERS`), with the calling thread's TID
    /// and links it first into its robust list. `false` if the word holds anything else.
    fn take(r: PresenceRef, from: u32) -> bool {
        let Some((s, _)) = split(r) else { return false };
        // Our private copy of the page that holds the slot's entry (see `Slot`). Done before
        // the word is taken: if it fails, the slot is not ours and nothing is to undo.
        let entry_page = s.entry().as_ptr() as usize;
        if !crate::sys::map_private_fixed(entry_page, crate::sys::page_size()) {
            return false;
        }
        let tid = current_tid();
        if let Some(i) = slot_index(r) {
            // Relaxed: see `MAPPED_BY` (a fork child's `take` runs before it has threads).
            MAPPED_BY[i].store(tid, Ordering::Relaxed);
        }
        s.begin_op();
        let mut cur = s.word.load(Ordering::SeqCst);
        let taken = loop {
            if cur & (FUTEX_TID_MASK | FUTEX_OWNER_DIED) != from {
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
        let mut sel_was = 0;
        if taken {
            // SAFETY: we just put our TID in the word; the table is never unmapped. Kept
            // first in the list, so the kernel reaches it through private memory only.
            // (`None` means the list is unusable: death is then noticed only by the 20 ms
            // fallback checks of `check`'s callers... which cannot see it either; documented.)
            let _ = unsafe { crate::sync::robust::link_at(s.entry(), Placement::First) };
            // Then `sel`, under `list_op_pending` too (a death before it is linked still marks
            // it). Nobody sleeps on it for us yet: `arm_select` waits until it holds our TID.
            crate::sync::robust::begin_op_at(s.sel_entry());
            sel_was = s.sel.swap(tid, Ordering::SeqCst);
            // SAFETY: as above, for `sel`: our TID is in it; kept right after `word`.
            let _ = unsafe { crate::sync::robust::link_at(s.sel_entry(), Placement::Second) };
        }
        crate::sync::robust::end_op();
        if taken && cur & FUTEX_WAITERS != 0 {
            s.word.wake(i32::MAX);
        }
        if sel_was & FUTEX_WAITERS != 0 {
            s.sel.wake(i32::MAX);
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
        // Claimed with our TID under `list_op_pending`, then linked into our robust list.
        let tid = current_tid();
        let r = claim(tid)?;
        if !take(r, tid) {
            // Not ours after all (scribbled), or our private entry page could not be mapped:
            // give the slot back as dead rather than leak a live-looking one.
            if let Some((s, _)) = split(r) {
                let w = s.word.load(Ordering::SeqCst);
                if w & (FUTEX_TID_MASK | FUTEX_OWNER_DIED) == tid {
                    mark_dead(s, w);
                }
            }
            crate::sync::robust::end_op();
            return Err(Error::Corrupted);
        }
        MINE.store(r.0, Ordering::Relaxed);
        Ok(r)
    }

    /// Whether the owner behind `r` is alive. Reads the word, then the generation: a slot being
    /// recycled changes the word first (see `claim`), so a stale generation is always caught
    /// either here or by the wake-up `take` sends.
    #[inline]
    pub(crate) fn check(r: PresenceRef) -> Liveness {
        resolve(r).check()
    }

    /// A `PresenceRef` looked up once: the slot it names (in this process's own mapping of
    /// the table, an address we computed, never one read from shared memory) and the
    /// generation. Endpoints keep one for their peer's owner, so the check on every message is
    /// two loads and a compare instead of a table lookup. A reference to no owner resolves to a
    /// private slot that always reads alive, one that names no slot to one that always reads
    /// dead, so the check has no other case.
    #[derive(Clone, Copy)]
    pub(crate) struct Resolved(&'static Slot, u32);

    /// The stand-in slots of `Resolved`: private to this process, never written, never linked.
    static ALWAYS_ALIVE: Slot = Slot::stand_in(1);
    static ALWAYS_DEAD: Slot = Slot::stand_in(FUTEX_OWNER_DIED);

    pub(crate) fn resolve(r: PresenceRef) -> Resolved {
        if r.0 == 0 {
            return Resolved(&ALWAYS_ALIVE, 0);
        }
        match split(r) {
            Some((s, g)) => Resolved(s, g),
            None => Resolved(&ALWAYS_DEAD, 0),
        }
    }

    impl Resolved {
        /// Whether the owner is alive now.
        #[inline]
        pub(crate) fn check(self) -> Liveness {
            let Resolved(s, g) = self;
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
    }

    /// Prepares to sleep until the owner behind `r` dies: sets `WAITERS` so the kernel wakes us
    /// and returns the word and the value to sleep on. `None`: already dead (or no owner).
    pub(crate) fn arm(r: PresenceRef) -> Option<(&'static FutexWord, u32)> {
        let (s, g) = split(r)?;
        set_waiters(s, g, &s.word)
            .ok()
            .map(|armed| (&s.word, armed))
    }

    /// Sets `WAITERS` on `target`, one of slot `s`'s two words, while the slot's owner at
    /// generation `g` is alive and `target` holds its TID, and returns the value to sleep on.
    /// `Err(true)`: `target` does not hold the owner's TID (`sel` not taken yet, or
    /// scribbled); `Err(false)`: dead, recycled, or no owner.
    fn set_waiters(s: &Slot, g: u32, target: &FutexWord) -> Result<u32, bool> {
        loop {
            let w = s.word.load(Ordering::SeqCst);
            if s.gen_.load(Ordering::SeqCst) != g
                || w & FUTEX_OWNER_DIED != 0
                || w & FUTEX_TID_MASK == 0
            {
                return Err(false);
            }
            let v = target.load(Ordering::SeqCst);
            if v & (FUTEX_TID_MASK | FUTEX_OWNER_DIED) != w & FUTEX_TID_MASK {
                return Err(true);
            }
            let armed = v | FUTEX_WAITERS;
            if v & FUTEX_WAITERS == 0
                && target
                    .compare_exchange(v, armed, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
            {
                continue;
            }
            // Armed. Re-read the generation: a claim of the slot that changed the word before
            // we read it but bumped the generation only now must not leave us asleep on a
            // stranger's word (see `finish_claim`, which clears `WAITERS` on both words after
            // its bump).
            if s.gen_.load(Ordering::SeqCst) != g {
                return Err(false);
            }
            return Ok(armed);
        }
    }

    /// Before sleeping on `r`'s word (a blocked `recv`/`send`): name it in this thread's
    /// `list_op_pending`. The kernel wakes *one* sleeper when `r`'s owner dies; if that sleeper
    /// is killed before it passes the news on, the kernel's handling of its pending word
    /// (owner bits 0 after a death) wakes the next sleeper. Undone by [`waiter_done`], after
    /// [`pass_on_death`].
    pub(crate) fn announce_waiter(r: PresenceRef) {
        if let Some((s, _)) = split(r) {
            s.begin_op();
        }
    }

    /// Before a `Select` sleeps on its peers' `sel` words: name the table's relay word in this
    /// thread's `list_op_pending` (it can name only one word, and watches many), and sleep on
    /// the relay too (see [`relay`]). Undone by [`waiter_done`], after
    /// [`pass_on_select_death`] and, if the relay may have woken us, [`relay_woke`].
    ///
    /// The relay is one word every sleeping `Select` sleeps on, whose owner bits are always 0:
    /// the kernel's handling of a killed `Select` wakes one of them, and that one passes on
    /// every unreported death of a `sel` word (`relay_woke`). Only `Select`s sleep on `sel`
    /// words, and every sleeping `Select` sleeps on the relay, so a wake-up that a killed
    /// `Select` swallowed reaches every other sleeper that needed it.
    pub(crate) fn announce_relay() {
        if let Some(t) = table() {
            // The kernel finds the word 32 bytes before the pending entry; it never reads the
            // entry itself (the head holds the pointer), so any address serves.
            crate::sync::robust::begin_op_at((t.base + RELAY_ENTRY) as *const AtomicUsize);
        }
    }

    /// What [`arm_select`] found.
    pub(crate) enum SelectArm {
        /// Sleep on this word, expecting this value: it changes (and the kernel wakes a
        /// sleeper) when the owner dies.
        Armed(&'static FutexWord, u32),
        /// The owner has not taken its `sel` word yet (a fork child in its first
        /// microseconds), or someone scribbled over it: look again soon.
        NotYet,
        /// Dead, recycled, or no owner: the caller's own check reports it.
        Gone,
    }

    /// Prepares a `Select` to sleep until the owner behind `r` dies: sets `WAITERS` on its
    /// `sel` word (not on `word`: see the module docs).
    pub(crate) fn arm_select(r: PresenceRef) -> SelectArm {
        let Some((s, g)) = split(r) else {
            return SelectArm::Gone;
        };
        match set_waiters(s, g, &s.sel) {
            Ok(armed) => SelectArm::Armed(&s.sel, armed),
            Err(true) => SelectArm::NotYet,
            Err(false) => SelectArm::Gone,
        }
    }

    /// As [`pass_on_death`], for the `Select`s asleep on the `sel` word of `r`'s owner.
    pub(crate) fn pass_on_select_death(r: PresenceRef) {
        if let Some((s, _)) = split(r) {
            s.sel.wake(i32::MAX);
        }
    }

    /// The relay word to sleep on and the value to expect (see [`announce_relay`]). Always 0
    /// unless a process scribbled over it: then it is put back, so that the kernel's handling
    /// of a pending relay (owner bits 0 only) keeps working; the value read is what a sleep
    /// expects, so a scribbler cannot make a sleeper spin.
    pub(crate) fn relay() -> Option<(&'static FutexWord, u32)> {
        let t = table()?;
        let w = t.relay();
        let v = w.load(Ordering::SeqCst);
        if v != 0 {
            let _ = w.compare_exchange(v, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
        Some((w, w.load(Ordering::SeqCst)))
    }

    /// The relay may have woken us: some `Select` died while announced, perhaps right after
    /// the kernel woke it for a death it then never passed on. Pass on every death that may
    /// have `Select`s asleep: wake everyone on each dead `sel` word with `WAITERS` set, among
    /// the slots ever claimed (a bitmap in the table's first page, so the scan touches no
    /// other slot's page). Runs while this thread still names the relay in `list_op_pending`:
    /// if we are killed during the scan, the kernel wakes the next relay sleeper to do it
    /// again.
    pub(crate) fn relay_woke() {
        let Some(t) = table() else { return };
        for (k, bits) in t.claimed().iter().enumerate() {
            let mut b = bits.load(Ordering::SeqCst);
            while b != 0 {
                let i = k * 64 + b.trailing_zeros() as usize;
                b &= b - 1;
                if let Some(s) = slot(i) {
                    let w = s.sel.load(Ordering::SeqCst);
                    if w & FUTEX_OWNER_DIED != 0 && w & FUTEX_WAITERS != 0 {
                        s.sel.wake(i32::MAX);
                        // Nobody sleeps on a dead word from now on (`arm` refuses one, and a
                        // sleep armed before the death compares unequal or was just woken), so
                        // `WAITERS` can go: the next scan skips this slot instead of calling
                        // the kernel again. A failed exchange: the slot changed; nothing to do.
                        let _ = s.sel.compare_exchange(
                            w,
                            w & !FUTEX_WAITERS,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        );
                    }
                }
            }
        }
    }

    /// Ends what [`announce_waiter`] began.
    pub(crate) fn waiter_done() {
        crate::sync::robust::end_op();
    }

    /// The kernel wakes one sleeper per death; whoever sees the death wakes the rest.
    pub(crate) fn pass_on_death(r: PresenceRef) {
        if let Some((s, _)) = split(r) {
            s.word.wake(i32::MAX);
        }
    }

    /// A slot reserved by a forking parent for its child. Its word holds the forking thread's
    /// TID and is named in that thread's `list_op_pending` until the child has taken it, so
    /// the kernel marks it dead if the parent dies first (before, during or right after the
    /// fork); the child takes it over with its own TID.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Reservation {
        pub(crate) r: PresenceRef,
        parent_tid: u32,
    }

    /// Parent, before fork: a slot for the child.
    pub(crate) fn reserve_for_child() -> Result<Reservation, Error> {
        let _g = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
        let tid = current_tid();
        let r = claim(tid)?;
        if let Some((s, _)) = split(r) {
            // Nobody refers to `r` before this returns, so a death just before this line only
            // leaks the slot.
            s.begin_op();
        }
        Ok(Reservation { r, parent_tid: tid })
    }

    /// Child, right after fork: take the slot the parent reserved. `false`: the parent died
    /// before the child could (the kernel marked the slot dead).
    pub(crate) fn adopt(res: Reservation) -> bool {
        if take(res.r, res.parent_tid) {
            MINE.store(res.r.0, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Parent, after fork: wait until the child has taken its slot, or has died without doing
    /// so (then mark the slot dead, so the peers of the child's endpoints see it), then stop
    /// naming it in `list_op_pending`.
    pub(crate) fn await_adoption(res: Reservation, pid: u32) {
        let Some((s, _)) = split(res.r) else {
            crate::sync::robust::end_op();
            return;
        };
        // Bounded: a process that writes our TID back into the slot after the child took it
        // (the table is shared by the whole tree) must not keep `fork` from returning. A child
        // still not adopted after this long takes the slot when it does (the word still names
        // us); only a child that then dies before adopting would go unnoticed.
        let give_up = std::time::Instant::now() + ADOPTION_BOUND;
        loop {
            let w = s.word.load(Ordering::SeqCst);
            if w & (FUTEX_TID_MASK | FUTEX_OWNER_DIED) != res.parent_tid
                || std::time::Instant::now() >= give_up
            {
                break; // adopted (or scribbled over: then it is not ours to fix)
            }
            if child_exited(pid) {
                if mark_dead(s, w) {
                    break;
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
        // The child may have died just after taking the slot, and the kernel's one wake-up for
        // that death may have been ours: pass it on to the child's peers.
        if s.word.load(Ordering::SeqCst) & FUTEX_OWNER_DIED != 0 {
            s.word.wake(i32::MAX);
        }
        crate::sync::robust::end_op();
    }

    /// Parent, when fork failed: give the reserved slot back (as dead). The caller has already
    /// pointed the endpoints back at its own presence, so a peer that reads the dead slot
    /// re-reads the owner and finds the parent (see `ring`'s owner checks).
    pub(crate) fn release_reservation(res: Reservation) {
        if let Some((s, _)) = split(res.r) {
            let w = s.word.load(Ordering::SeqCst);
            if w & (FUTEX_TID_MASK | FUTEX_OWNER_DIED) == res.parent_tid {
                mark_dead(s, w);
            }
        }
        crate::sync::robust::end_op();
    }

    /// Marks a slot whose word still is `w` dead, as the kernel would, and wakes its sleepers.
    fn mark_dead(s: &Slot, w: u32) -> bool {
        let ok = s
            .word
            .compare_exchange(
                w,
                FUTEX_OWNER_DIED | (w & FUTEX_WAITERS),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok();
        if ok {
            s.word.wake(i32::MAX);
            // No `Select` sleeps on `sel` before the child took it (`arm_select`); harmless.
            s.sel.wake(i32::MAX);
        }
        ok
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Liveness;
    use super::native::*;

    /// A peer of a dead process arms on its presence slot just as another process claims the
    /// slot: after the claim changed the word, before it bumped the generation. The peer must
    /// not be left asleep on the new owner's word: once the claim finishes, the value the peer
    /// armed with is no longer the word's (so its sleep returns at once), or the peer was woken.
    #[test]
    fn regression_arm_during_a_claim_does_not_sleep_on_a_strangers_word() {
        // `_claims` keeps other threads' claims from recycling the dead slot meanwhile (a full
        // local run once saw `arm` fail below: a generation bumped by a concurrent claim).
        let (old, s, i, _claims) = test_claim_dead_slot();
        // The claimer's first half: the word goes from dead to a live TID.
        let was = test_word(s);
        test_set_word(s, 4242);
        // In the window the peer sees a live word and the old generation: it arms.
        let (_, armed) = arm(old).expect("the replayed window: a live word, the old generation");
        // The claimer's second half.
        test_finish_claim(s, was);
        let now = test_word(s);
        assert_ne!(
            armed, now,
            "armed with the live word of slot {i}: would sleep for ever"
        );
        assert_eq!(check(old), Liveness::Dead);
        test_release(s);
    }

    /// A death whose one kernel wake-up was swallowed (the woken `Select` was killed) is passed
    /// on by whoever the relay wakes: `relay_woke` wakes every sleeper on a dead `sel` word.
    #[test]
    fn relay_woke_wakes_the_sleepers_of_an_unreported_death() {
        use crate::sys::{Deadline, FUTEX_OWNER_DIED, FUTEX_WAITERS, Wake};
        // Holding the claim lock: the slot reads dead below, and a concurrent test's claim
        // must not recycle it before `relay_woke` looks.
        let (r, s, _claims) = test_claim_live_slot(4243);
        assert!(
            matches!(arm_select(r), SelectArm::NotYet),
            "sel not taken yet"
        );
        test_set_sel(s, 4243); // what the holder's `take` does
        let SelectArm::Armed(word, armed) = arm_select(r) else {
            panic!("a live, taken slot arms")
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            let _ = tx.send(crate::sys::gettid());
            let d = Deadline::after(std::time::Duration::from_secs(10));
            word.wait(armed, Some(&d))
        });
        let tid = rx.recv().expect("the sleeper's tid");
        let stat = format!("/proc/self/task/{tid}/stat");
        let asleep = || {
            std::fs::read_to_string(&stat).ok().is_some_and(|t| {
                t.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
            })
        };
        let t0 = std::time::Instant::now();
        while !asleep() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "never slept"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The kernel's handling of the owner's death, without its wake-up.
        test_set_word(s, FUTEX_OWNER_DIED | FUTEX_WAITERS);
        test_set_sel(s, FUTEX_OWNER_DIED | FUTEX_WAITERS);
        let t1 = std::time::Instant::now();
        relay_woke();
        assert_eq!(sleeper.join().expect("sleeper"), Wake::Retry);
        assert!(
            t1.elapsed() < std::time::Duration::from_secs(5),
            "the sleeper slept on until its deadline"
        );
        test_release(s);
    }

    /// A process that scribbles over the relay word neither makes sleepers spin (they expect
    /// the value they read) nor disables it for good (it is put back to 0, which the kernel's
    /// handling of a pending relay needs).
    #[test]
    fn relay_word_scribbled_is_put_back() {
        let (_, s, _claims) = test_claim_live_slot(4244);
        let (w, v) = relay().expect("the table exists");
        assert_eq!(v, 0);
        w.store(0x1234, crate::sync::Ordering::SeqCst);
        let (w, v) = relay().expect("the table exists");
        assert_eq!(v, 0);
        assert_eq!(w.load(crate::sync::Ordering::SeqCst), 0);
        test_release(s);
    }
}
