//! The kernel's robust-futex list, used so that the kernel itself reports a thread's death.
//!
//! A robust word is a 32-bit futex word in the kernel's robust format (owner TID in the low 30
//! bits, `FUTEX_WAITERS`, `FUTEX_OWNER_DIED`) that its owner links into its thread's robust
//! list while it holds it. When a thread dies, the kernel walks that list and, for every word
//! still naming the dead TID, replaces the word with `FUTEX_OWNER_DIED` (keeping
//! `FUTEX_WAITERS`) and wakes one waiter; it also handles the one entry named by
//! `list_op_pending` (for a word whose owner bits are 0 it just wakes one waiter). That is how a
//! `ShmMutex` learns that its holder was SIGKILLed, and how a channel learns that its peer
//! process is gone, with no polling and no file descriptor.
//!
//! There is one list per thread and glibc has already registered one (for its own robust
//! pthread mutexes), so we do not register ours: we link into glibc's list, with glibc's entry
//! layout (the list points at an entry's `next` field; the word is 32 bytes before it; `prev`
//! is 8 bytes before `next`).
//!
//! # Never trusting shared memory, never outliving it
//!
//! Our words, and so their list fields, live in shared memory that a peer process can scribble
//! over and that can be unmapped. So this module **never reads a link back from shared memory,
//! and never writes into any entry but the one it is linking**. Each thread keeps a private
//! *segment* of the list in its own thread-local storage:
//!
//! ```text
//! head -> [glibc's newer entries] -> ANCHOR -> E_a -> n_a -> E_b -> n_b -> ... -> END -> [older]
//!          (glibc inserts at head)   private   shared  private shared private      private
//! ```
//!
//! `ANCHOR`, `END` and one node `n_k` per linked entry `E_k` are private dummy entries (their
//! word reads 0, which names no thread, so the kernel skips them). `E_k.next` points at its own
//! node `n_k`, written once when `E_k` is linked; every other link is a field of a private node.
//! The order and the neighbours are kept in private arrays, so unlinking `E_k` rewrites only the
//! private node before it. A peer that scribbles `E_k.next` can at worst divert the kernel's
//! walk *after* `E_k` at our death (shared memory it can write is memory it can also lock or
//! corrupt directly); it can never steer a write of ours. glibc's own entries only ever
//! neighbour `ANCHOR` or `END` (it inserts at the head and unlinks its own entries), whose
//! `prev`/`next` it may rewrite: we never read those values back.
//!
//! Ordering: the entries linked with [`Placement::First`] and [`Placement::Second`] (the
//! process's two presence words) stay directly after `ANCHOR`, in that order, so the kernel
//! reaches them through private memory only, before it follows any link that lives in shared
//! memory: a scribbled or stale entry cannot hide the process's death from its peers.
//!
//! An entry stays linked until unlinked; if its guard was leaked (`mem::forget`, safe code), it
//! stays linked for good. The memory behind it must then stay mapped: [`linked_count`] lets the
//! region refuse to unmap itself while any entry of this process is linked, and the mutex links
//! only words that lie in a live region (see `mutex.rs`). Each thread can keep
//! [`SLOTS`] entries linked at once; beyond that a word is held without being linked (the
//! caller's lock is then not robust; documented on `ShmMutex`).
//!
//! ```text
//! RobustWord (40 bytes, repr(C), in shared memory)
//! offset  field   meaning
//!  0      word    the futex word (kernel reads it at entry + futex_offset, futex_offset = -32)
//!  4..24  -       unused (glibc's __count/__owner/__nusers/__kind/__spins)
//! 24      prev    unused by us (kept for glibc's layout)
//! 32      next    the entry: written once when linked, to point at our private node
//! ```

use super::FutexWord;

#[cfg(not(loom))]
pub(crate) use native::*;

/// Where a new entry goes in this thread's segment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Placement {
    /// Directly after the anchor, and kept there (the presence word).
    First,
    /// Directly after the first entry, and kept there (the presence's `Select` word).
    Second,
    /// After the entries kept in front, if any (lock words).
    Next,
}

/// A linked entry: its slot in this thread's segment. Only the linking thread may unlink it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Link(u8);

/// A robust futex word with room for its robust-list entry.
#[repr(C, align(8))]
pub(crate) struct RobustWord {
    word: FutexWord,
    #[cfg(not(loom))]
    _gap: [u32; 5],
    #[cfg(not(loom))]
    prev: std::sync::atomic::AtomicUsize,
    #[cfg(not(loom))]
    next: std::sync::atomic::AtomicUsize,
}

impl std::ops::Deref for RobustWord {
    type Target = FutexWord;
    #[inline]
    fn deref(&self) -> &FutexWord {
        &self.word
    }
}

impl RobustWord {
    #[cfg(not(loom))]
    pub(crate) const fn new(v: u32) -> RobustWord {
        RobustWord {
            word: FutexWord::new(v),
            _gap: [0; 5],
            prev: std::sync::atomic::AtomicUsize::new(0),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new(v: u32) -> RobustWord {
        RobustWord {
            word: FutexWord::new(v),
        }
    }
}

#[cfg(not(loom))]
mod native {
    use std::cell::{Cell, UnsafeCell};
    use std::sync::atomic::{AtomicUsize, Ordering, compiler_fence};

    use super::{Link, Placement, RobustWord};
    use crate::sys::RobustListHead;

    /// Lock words one thread can keep linked at once (slots 0 and 1 are the presence words').
    pub(crate) const LOCK_SLOTS: usize = 32;
    /// The slots kept in front (`Placement::First`, `Placement::Second`); not counted.
    const FRONT: usize = 2;
    const SLOTS: usize = LOCK_SLOTS + FRONT;
    /// The slots of the entries linked with `Placement::First` and `Placement::Second`.
    const FIRST_SLOT: usize = 0;
    const SECOND_SLOT: usize = 1;
    const ANCHOR: u8 = SLOTS as u8;
    const END: u8 = SLOTS as u8 + 1;
    const NODES: usize = SLOTS + 2;

    /// Distance from an entry (the `next` field) back to its word, as glibc registers it.
    const FUTEX_OFFSET: isize = -32;

    /// A private dummy entry in glibc's layout. Its word is 0, so the kernel never acts on it.
    #[repr(C, align(8))]
    struct Node {
        _word: u32,
        _gap: [u32; 5],
        /// Written by glibc when a neighbouring glibc entry is (un)linked; never read by us.
        prev: UnsafeCell<usize>,
        /// What the kernel follows after this node (or after the entry this node serves).
        next: UnsafeCell<usize>,
    }

    const _: () = {
        assert!(std::mem::offset_of!(Node, next) == 32);
        assert!(std::mem::offset_of!(Node, prev) == 24);
        assert!(std::mem::offset_of!(RobustWord, next) == 32);
        assert!(std::mem::offset_of!(RobustWord, prev) == 24);
        assert!(std::mem::size_of::<RobustWord>() == 40);
    };

    const STATE_NEW: u8 = 0;
    const STATE_LINKED: u8 = 1;
    const STATE_UNUSABLE: u8 = 2;

    /// One thread's private segment of its robust list (see the module docs).
    struct Seg {
        state: Cell<u8>,
        head: Cell<*mut RobustListHead>,
        nodes: [Node; NODES],
        /// The address of the entry (its `next` field) served by each slot; 0: slot free.
        entry: [Cell<usize>; SLOTS],
        /// Private order: previous and next node index of each node.
        prv: [Cell<u8>; NODES],
        nxt: [Cell<u8>; NODES],
        /// The last slot kept in front (lock words go after it), or `ANCHOR` if none.
        first: Cell<u8>,
    }

    /// A head of our own for threads that have none registered, with the word before it that
    /// glibc's layout expects (the list code writes `prev` of the head there).
    #[repr(C)]
    struct OwnHead {
        _prev_slot: usize,
        head: RobustListHead,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const NODE: Node = Node {
        _word: 0,
        _gap: [0; 5],
        prev: UnsafeCell::new(0),
        next: UnsafeCell::new(0),
    };
    #[allow(clippy::declare_interior_mutable_const)]
    const ZERO: Cell<usize> = Cell::new(0);
    #[allow(clippy::declare_interior_mutable_const)]
    const IDX: Cell<u8> = Cell::new(0);

    thread_local! {
        // No destructor: the storage lives exactly as long as the thread, and the kernel walks
        // the list while the dying thread's memory is still mapped.
        static SEG: Seg = const {
            Seg {
                state: Cell::new(STATE_NEW),
                head: Cell::new(std::ptr::null_mut()),
                nodes: [NODE; NODES],
                entry: [ZERO; SLOTS],
                prv: [IDX; NODES],
                nxt: [IDX; NODES],
                first: Cell::new(ANCHOR),
            }
        };
        static OWN_HEAD: UnsafeCell<OwnHead> = const {
            UnsafeCell::new(OwnHead {
                _prev_slot: 0,
                head: RobustListHead {
                    list: std::ptr::null_mut(),
                    futex_offset: FUTEX_OFFSET,
                    list_op_pending: std::ptr::null_mut(),
                },
            })
        };
    }

    /// Entries linked by all threads of this process (process-private; reset in a fork child,
    /// whose list glibc empties).
    static LINKED: AtomicUsize = AtomicUsize::new(0);

    static AT_FORK: std::sync::Once = std::sync::Once::new();

    /// Runs in the child of every libc fork, on its only thread: glibc has given the child an
    /// empty list, so our segment is not in it any more. Async-signal-safe: stores only.
    extern "C" fn after_fork_in_child() {
        LINKED.store(0, Ordering::Relaxed);
        SEG.with(|s| {
            s.state.set(STATE_NEW);
            s.head.set(std::ptr::null_mut());
            s.first.set(ANCHOR);
            for e in &s.entry {
                e.set(0);
            }
        });
    }

    fn ensure_fork_hook() {
        AT_FORK.call_once(|| crate::sys::at_fork_child(after_fork_in_child));
    }

    /// How many lock words (entries linked with `Placement::Next`) this process has linked
    /// right now, leaked guards included. While it is not 0, no memory that might hold a
    /// linked word may be unmapped. (The presence word lives in a table that is never unmapped.)
    pub(crate) fn linked_count() -> usize {
        // Relaxed: a link made by another thread is ordered before this load by whatever
        // ended that thread's borrow of the memory in question (a join, a channel, a lock).
        LINKED.load(Ordering::Relaxed)
    }

    impl Seg {
        fn node_next(&self, i: u8) -> *mut usize {
            self.nodes[usize::from(i)].next.get()
        }

        /// The address the kernel must follow to reach node `j`: an entry for a slot, the
        /// node itself for `END`.
        fn kernel_addr(&self, j: u8) -> usize {
            if j == END {
                self.node_next(END) as usize
            } else {
                self.entry[usize::from(j)].get()
            }
        }

        /// This thread's registered head, linking the anchor/end pair at its front on first
        /// use. `None` if the thread's list cannot be used.
        fn ready(&self) -> Option<*mut RobustListHead> {
            match self.state.get() {
                STATE_LINKED => return Some(self.head.get()),
                STATE_UNUSABLE => return None,
                _ => {}
            }
            ensure_fork_hook();
            let h = find_head();
            let Some(h) = h else {
                self.state.set(STATE_UNUSABLE);
                return None;
            };
            // SAFETY: `h` is this thread's registered head (private memory that lives as long
            // as the thread); its first entry is the head itself or a live glibc entry (glibc
            // keeps its own entries valid while they are listed), whose `prev` field sits 8
            // bytes before the pointed-to `next` field, the head's before the head (glibc's
            // `robust_prev`, or `OwnHead::_prev_slot`). That one write is what glibc's own
            // insertion does; everything else written here is this thread's private storage.
            unsafe {
                // Bit 0 marks a PI futex entry for the kernel: keep it on the link, strip it
                // to find the entry.
                let old = (*h).list as usize;
                *self.node_next(END) = old;
                *self.nodes[usize::from(END)].prev.get() = self.node_next(ANCHOR) as usize;
                *self.node_next(ANCHOR) = self.node_next(END) as usize;
                *self.nodes[usize::from(ANCHOR)].prev.get() = h as usize;
                *(((old & !1) - 8) as *mut usize) = self.node_next(END) as usize;
                compiler_fence(Ordering::SeqCst);
                (*h).list = self.node_next(ANCHOR);
            }
            // At thread exit, settle and unlink the segment before the kernel walks the list.
            EXIT.with(|e| e.armed.set(true));
            self.nxt[usize::from(ANCHOR)].set(END);
            self.prv[usize::from(END)].set(ANCHOR);
            self.first.set(ANCHOR);
            self.head.set(h);
            self.state.set(STATE_LINKED);
            Some(h)
        }
    }

    impl Seg {
        /// At thread exit (the thread's TLS destructors run before it leaves the kernel's
        /// view): do for each linked word what the kernel would (its holder, this thread, is
        /// gone: `OWNER_DIED`, wake a waiter), then take the whole segment out of the list.
        /// The kernel's walk at the thread's exit then never follows a link that lives in
        /// shared memory (a peer could have pointed it into this process's private memory,
        /// which, unlike at a process's death, stays in use). The process lives on.
        fn settle_at_thread_exit(&self) {
            if self.state.get() != STATE_LINKED {
                return;
            }
            let tid = super::super::ident::current_tid();
            let mut i = self.nxt[usize::from(ANCHOR)].get();
            while i != END && usize::from(i) < SLOTS {
                let entry = self.entry[usize::from(i)].get();
                if entry != 0 {
                    // SAFETY: a linked entry's word stays mapped while linked (the region does
                    // not unmap itself while a word of this process is linked; the presence
                    // table is never unmapped); it is a u32 32 bytes before the entry.
                    let word = unsafe { &*((entry - 32) as *const std::sync::atomic::AtomicU32) };
                    let mut cur = word.load(Ordering::SeqCst);
                    while cur & crate::sys::FUTEX_TID_MASK == tid {
                        let new = (cur & crate::sys::FUTEX_WAITERS) | crate::sys::FUTEX_OWNER_DIED;
                        match word.compare_exchange(cur, new, Ordering::SeqCst, Ordering::SeqCst) {
                            Ok(_) => {
                                crate::sys::futex_wake(word, i32::MAX);
                                break;
                            }
                            Err(now) => cur = now,
                        }
                    }
                    if usize::from(i) >= FRONT {
                        // Relaxed: see `linked_count`.
                        LINKED.fetch_sub(1, Ordering::Relaxed);
                    }
                    self.entry[usize::from(i)].set(0);
                }
                i = self.nxt[usize::from(i)].get();
            }
            // SAFETY: ANCHOR's `prev` names the `next` field before it (the head's `list`, or
            // a glibc entry's, which glibc keeps valid and updates when it links or unlinks a
            // neighbour); END's `next` is what follows the segment (kept by glibc likewise).
            // Both are this thread's private storage. The two stores are glibc's own unlink.
            unsafe {
                let pred = *self.nodes[usize::from(ANCHOR)].prev.get() as *mut usize;
                let succ = *self.node_next(END);
                *(((succ & !1) - 8) as *mut usize) = pred as usize;
                compiler_fence(Ordering::SeqCst);
                *pred = succ;
                (*self.head.get()).list_op_pending = std::ptr::null_mut();
            }
            self.first.set(ANCHOR);
            self.state.set(STATE_UNUSABLE);
        }
    }

    /// Runs `Seg::settle_at_thread_exit` when the thread's TLS is torn down.
    struct ExitHook {
        armed: Cell<bool>,
    }

    impl Drop for ExitHook {
        fn drop(&mut self) {
            if self.armed.get() {
                // `SEG` has no destructor, so it is still there during other TLS destructors.
                SEG.with(Seg::settle_at_thread_exit);
            }
        }
    }

    thread_local! {
        static EXIT: ExitHook = const { ExitHook { armed: Cell::new(false) } };
    }

    /// The calling thread's registered robust list head (registering one of our own if the
    /// thread has none), or `None` if it uses another entry layout.
    fn find_head() -> Option<*mut RobustListHead> {
        let found = crate::sys::robust_list_head();
        if found.is_null() {
            return OWN_HEAD.with(|own| {
                let own = own.get();
                // SAFETY: `own` is this thread's own storage, alive until the thread exits and
                // touched only by this thread. An empty list points at its own head.
                unsafe {
                    let head = std::ptr::addr_of_mut!((*own).head);
                    (*head).list = head.cast();
                    crate::sys::set_robust_list(head).then_some(head)
                }
            });
        }
        // SAFETY: the kernel returned the head registered for this thread; it lives as long as
        // the thread does.
        let offset = unsafe { (*found).futex_offset };
        (offset == FUTEX_OFFSET).then_some(found)
    }

    impl RobustWord {
        /// Names this word in `list_op_pending`: if the thread dies before [`end_op`], the
        /// kernel handles the word (marks it `OWNER_DIED` if it names the thread; wakes one
        /// waiter if its owner bits are 0). Used around taking and releasing the word, and
        /// while *sleeping* on a word, so that a waiter killed after being woken hands the
        /// wake-up on instead of swallowing it.
        ///
        /// [`end_op`]: RobustWord::end_op
        #[inline]
        pub(crate) fn begin_op(&self) {
            begin_op_at(&self.next);
        }

        /// Ends what `begin_op` announced.
        #[inline]
        pub(crate) fn end_op(&self) {
            end_op();
        }

        /// Links the word into this thread's list. `None`: not linked (the list is unusable or
        /// the thread already has `LOCK_SLOTS` lock words linked); the word is then held
        /// without robustness.
        ///
        /// # Safety
        /// The calling thread must just have taken the word (its TID is in it), and the word
        /// must stay mapped for as long as it is linked (see [`linked_count`]).
        #[inline]
        pub(crate) unsafe fn link(&self, at: Placement) -> Option<Link> {
            // SAFETY: the caller's contract; the entry is this word's own `next` field.
            unsafe { link_at(&self.next, at) }
        }
    }

    /// Names the entry `entry` (a word lives 32 bytes before it) in `list_op_pending`; see
    /// [`RobustWord::begin_op`].
    pub(crate) fn begin_op_at(entry: *const AtomicUsize) {
        SEG.with(|s| {
            if let Some(h) = s.ready() {
                // SAFETY: `h` is this thread's registered head; only this thread writes it.
                unsafe { (*h).list_op_pending = entry as *mut usize };
                compiler_fence(Ordering::SeqCst);
            }
        })
    }

    /// Links the entry `entry` (its futex word is 32 bytes before it) into this thread's list.
    /// `Placement::First` and `Placement::Second` have a slot of their own each; `First`
    /// replaces this thread's previous first *and* second entries, `Second` its previous second
    /// entry, if any.
    ///
    /// # Safety
    /// As [`RobustWord::link`], for the word 32 bytes before `entry`.
    pub(crate) unsafe fn link_at(entry: &AtomicUsize, at: Placement) -> Option<Link> {
        SEG.with(|s| {
            s.ready()?;
            let stale: &[usize] = match at {
                Placement::First => &[SECOND_SLOT, FIRST_SLOT],
                Placement::Second => &[SECOND_SLOT],
                Placement::Next => &[],
            };
            for &k in stale {
                if s.entry[k].get() != 0 {
                    // SAFETY: slot `k` was linked by this thread.
                    unsafe { unlink(Link(k as u8)) };
                }
            }
            let k = match at {
                Placement::First => FIRST_SLOT,
                Placement::Second => SECOND_SLOT,
                Placement::Next => FRONT + s.entry[FRONT..].iter().position(|e| e.get() == 0)?,
            };
            let kk = k as u8;
            let i = match at {
                Placement::First => ANCHOR,
                Placement::Second if s.entry[FIRST_SLOT].get() != 0 => FIRST_SLOT as u8,
                Placement::Second => ANCHOR,
                Placement::Next => s.first.get(),
            };
            let j = s.nxt[usize::from(i)].get();
            let entry_addr = entry.as_ptr() as usize;
            s.entry[k].set(entry_addr);
            // The one write outside our private nodes: our own entry points at its node.
            // Relaxed: only the kernel reads it, at this thread's death.
            entry.store(s.node_next(kk) as usize, Ordering::Relaxed);
            // SAFETY: the nodes are this thread's private storage; the kernel reads them
            // only when this thread dies, i.e. between two of its instructions, and each
            // store below is a single aligned word store, ordered by the compiler fence so
            // that the kernel never sees a node pointing at an unready one.
            unsafe {
                *s.node_next(kk) = s.kernel_addr(j);
                compiler_fence(Ordering::SeqCst);
                *s.node_next(i) = entry_addr;
            }
            s.prv[k].set(i);
            s.nxt[k].set(j);
            s.nxt[usize::from(i)].set(kk);
            s.prv[usize::from(j)].set(kk);
            if k < FRONT {
                // A presence word: in a table that is never unmapped, so not counted. The
                // entries in front are linked in order (`First` unlinks a stale `Second`), so
                // the one just linked is the last of them.
                s.first.set(kk);
            } else {
                // Relaxed: see `linked_count`.
                LINKED.fetch_add(1, Ordering::Relaxed);
            }
            Some(Link(kk))
        })
    }

    /// Clears `list_op_pending`.
    #[inline]
    pub(crate) fn end_op() {
        SEG.with(|s| {
            if s.state.get() == STATE_LINKED {
                compiler_fence(Ordering::SeqCst);
                // SAFETY: the head is this thread's registered head; only this thread writes it.
                unsafe { (*s.head.get()).list_op_pending = std::ptr::null_mut() };
            }
        })
    }

    /// Unlinks the entry that `link` returned `l` for. Touches only this thread's private
    /// nodes: the entry's own memory is not read or written (it may be gone, or scribbled).
    ///
    /// # Safety
    /// `l` must come from a `link` by the calling thread, not yet unlinked.
    #[inline]
    pub(crate) unsafe fn unlink(l: Link) {
        SEG.with(|s| {
            let k = usize::from(l.0);
            if k >= SLOTS || s.entry[k].get() == 0 || s.state.get() != STATE_LINKED {
                return; // a fork child's stale link, or already gone: nothing of ours to undo
            }
            let i = s.prv[k].get();
            let j = s.nxt[k].get();
            // SAFETY: node `i` is this thread's private storage (see `link`).
            unsafe { *s.node_next(i) = s.kernel_addr(j) };
            compiler_fence(Ordering::SeqCst);
            s.nxt[usize::from(i)].set(j);
            s.prv[usize::from(j)].set(i);
            s.entry[k].set(0);
            if k < FRONT {
                if s.first.get() == l.0 {
                    // The last one in front: lock words now go after what preceded it.
                    s.first.set(i);
                }
            } else {
                // Relaxed: see `linked_count`.
                LINKED.fetch_sub(1, Ordering::Relaxed);
            }
        })
    }
}

/// Under loom there is no kernel list, but `list_op_pending` is modelled: each model thread
/// records the word it announced, and [`simulate_death`] does what the kernel does with it when
/// the thread dies, so a model checks that waiters keep their word announced while they sleep.
#[cfg(loom)]
mod loom_list {
    use super::{Link, Placement, RobustWord};
    use crate::sync::Ordering;
    use crate::sys::FUTEX_TID_MASK;
    use std::cell::Cell;

    loom::thread_local! {
        static PENDING: Cell<usize> = Cell::new(0);
        static DIE_AFTER_WAKE: Cell<bool> = Cell::new(false);
    }

    impl RobustWord {
        pub(crate) fn begin_op(&self) {
            PENDING.with(|p| p.set(self as *const RobustWord as usize));
        }
        pub(crate) fn end_op(&self) {
            end_op();
        }

        /// Model only: if this thread was told to die after its next wake-up, do what the
        /// kernel does at its death for its pending word (owner bits 0: wake one waiter) and
        /// return `true`: the caller then stops as a dead thread would.
        pub(crate) fn died_after_wake(&self) -> bool {
            if !DIE_AFTER_WAKE.with(|d| d.replace(false)) {
                return false;
            }
            if PENDING.with(|p| p.get()) == self as *const RobustWord as usize
                && self.load(Ordering::SeqCst) & FUTEX_TID_MASK == 0
            {
                self.wake(1);
            }
            PENDING.with(|p| p.set(0));
            true
        }
        /// # Safety
        /// None under loom (no list).
        pub(crate) unsafe fn link(&self, _: Placement) -> Option<Link> {
            None
        }
    }
    pub(crate) fn end_op() {
        PENDING.with(|p| p.set(0));
    }

    /// Model only: the calling thread will "die" right after its next futex wake-up.
    pub fn die_after_next_wake() {
        DIE_AFTER_WAKE.with(|d| d.set(true));
    }

    /// # Safety
    /// None under loom (no list).
    pub(crate) unsafe fn unlink(_: Link) {}
    pub(crate) fn linked_count() -> usize {
        0
    }
}
#[cfg(loom)]
pub use loom_list::die_after_next_wake;
#[cfg(loom)]
pub(crate) use loom_list::*;

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The entries of this thread's robust list in the order the kernel walks them (the
    /// `next` fields it visits), stopping at the head; private nodes included.
    fn kernel_walk() -> Vec<usize> {
        let head = crate::sys::robust_list_head();
        assert!(!head.is_null(), "a registered list");
        let mut out = Vec::new();
        // SAFETY: the kernel's walk, in this thread's own list: every link is a live entry or
        // node (ours are private or leaked test words; glibc's are its own).
        unsafe {
            let mut p = (*head).list as usize & !1;
            while p != head as usize && out.len() < 200 {
                out.push(p);
                p = *(p as *const usize) & !1;
            }
        }
        out
    }

    /// The order in which the kernel reaches `entries` (the others are nodes or glibc's).
    fn order_of(entries: &[(&str, usize)]) -> Vec<String> {
        kernel_walk()
            .into_iter()
            .filter_map(|p| entries.iter().find(|e| e.1 == p).map(|e| e.0.to_string()))
            .collect()
    }

    /// The two presence entries stay in front, in order, whatever was linked before them and
    /// whichever is re-linked; lock words always come after both.
    #[test]
    fn placement_keeps_first_and_second_in_front() {
        std::thread::spawn(|| {
            let w = |_| &*Box::leak(Box::new(RobustWord::new(0)));
            let (first, second, lock, first2) = (w(0), w(1), w(2), w(3));
            let names = [
                ("first", first.next.as_ptr() as usize),
                ("second", second.next.as_ptr() as usize),
                ("lock", lock.next.as_ptr() as usize),
                ("first2", first2.next.as_ptr() as usize),
            ];
            // SAFETY: (all links and unlinks) test words, leaked, so mapped for the thread's
            // life; their value names no thread, so the kernel would skip them; every unlink
            // is of a link this thread made.
            unsafe {
                lock.link(Placement::Next).expect("lock linked");
                assert_eq!(order_of(&names), ["lock"]);
                first.link(Placement::First).expect("first linked");
                second.link(Placement::Second).expect("second linked");
                assert_eq!(order_of(&names), ["first", "second", "lock"]);
                // A new first replaces both presence entries; the second is linked again.
                let f = first2.link(Placement::First).expect("first2 linked");
                assert_eq!(order_of(&names), ["first2", "lock"]);
                let s = second.link(Placement::Second).expect("second again");
                assert_eq!(order_of(&names), ["first2", "second", "lock"]);
                // Unlinking the second keeps lock words after the first...
                unlink(s);
                assert_eq!(order_of(&names), ["first2", "lock"]);
                let l2 = w(4);
                l2.link(Placement::Next).expect("a second lock word");
                let names2 = [names[3], names[2], ("lock2", l2.next.as_ptr() as usize)];
                assert_eq!(order_of(&names2)[0], "first2");
                // ...and a lock word linked with only the second in front goes after it.
                unlink(f);
                let s2 = second.link(Placement::Second).expect("second alone");
                let l3 = w(5);
                l3.link(Placement::Next).expect("a third lock word");
                let names3 = [names[1], ("lock3", l3.next.as_ptr() as usize)];
                assert_eq!(order_of(&names3), ["second", "lock3"]);
                unlink(s2);
            }
        })
        .join()
        .expect("the list test thread");
    }
}
