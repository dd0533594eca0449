//! Thread identity and the kernel's robust-futex list.
//!
//! A robust word is a 32-bit futex word in the kernel's robust format (owner TID in the low 30
//! bits, `FUTEX_WAITERS`, `FUTEX_OWNER_DIED`) that its owner links into its thread's robust
//! list while it holds it. When a thread dies, the kernel walks that list and, for every word
//! still naming the dead TID, replaces the word with `FUTEX_OWNER_DIED` (keeping
//! `FUTEX_WAITERS`) and wakes one waiter. That is how a `ShmMutex` learns that its holder was
//! SIGKILLed, and how a channel learns that its peer process is gone, with no polling and no
//! file descriptor.
//!
//! There is one list per thread and glibc has already registered one (for its own robust
//! pthread mutexes), so we do not register ours: we link our entries into glibc's list with
//! exactly glibc's entry layout, because glibc's list code writes into neighbouring entries.
//!
//! ```text
//! RobustWord (40 bytes, repr(C), in shared memory)
//! offset  field   meaning
//!  0      word    the futex word (kernel reads it at entry + futex_offset, futex_offset = -32)
//!  4..24  -       unused (glibc's __count/__owner/__nusers/__kind/__spins)
//! 24      prev    previous entry's `next` field, or the list head   (glibc's __list.__prev)
//! 32      next    next entry's `next` field, or the list head       (glibc's __list.__next)
//! ```
//!
//! `prev`/`next` are this process's virtual addresses; they are meaningful only to the thread
//! whose list the entry is in, and only that thread touches them while it holds the word. A
//! thread without a registered list (a child made by a raw `SYS_fork`, a libc that keeps none)
//! gets one registered here. Where the registered list uses another `futex_offset`, entries are
//! not linked and owner death is not detected (documented on `ShmMutex`).

use std::cell::Cell;

use super::FutexWord;

/// A robust futex word with room for its robust-list entry.
#[repr(C, align(8))]
pub(crate) struct RobustWord {
    word: FutexWord,
    #[cfg(not(loom))]
    _gap: [u32; 5],
    #[cfg(not(loom))]
    prev: std::cell::UnsafeCell<usize>,
    #[cfg(not(loom))]
    next: std::cell::UnsafeCell<usize>,
}

// SAFETY: `prev`/`next` are written only by the thread that holds the word (see the module
// docs); everything else is atomic.
unsafe impl Sync for RobustWord {}

/// Distance from an entry (the `next` field) back to its word, as glibc registers it.
#[cfg(not(loom))]
const FUTEX_OFFSET: isize = -32;

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
            prev: std::cell::UnsafeCell::new(0),
            next: std::cell::UnsafeCell::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new(v: u32) -> RobustWord {
        RobustWord {
            word: FutexWord::new(v),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Thread and process identity.

#[cfg(not(loom))]
thread_local! {
    /// This thread's TID, 0 until looked up (and again in a fork child).
    static TID: Cell<u32> = const { Cell::new(0) };
    /// This thread's robust list head: null until looked up; `UNUSABLE` if it cannot be used.
    static HEAD: Cell<*mut crate::sys::RobustListHead> = const { Cell::new(std::ptr::null_mut()) };
    /// A head of our own for threads that have none registered, with the word before it that
    /// glibc's layout expects (the list code writes `prev` of the head there).
    static OWN_HEAD: std::cell::UnsafeCell<OwnHead> = const {
        std::cell::UnsafeCell::new(OwnHead {
            _prev_slot: 0,
            head: crate::sys::RobustListHead {
                list: std::ptr::null_mut(),
                futex_offset: FUTEX_OFFSET,
                list_op_pending: std::ptr::null_mut(),
            },
        })
    };
}

#[cfg(not(loom))]
#[repr(C)]
struct OwnHead {
    _prev_slot: usize,
    head: crate::sys::RobustListHead,
}

#[cfg(not(loom))]
const UNUSABLE: *mut crate::sys::RobustListHead = std::ptr::dangling_mut();

/// This process's pid, 0 until looked up; reset in every fork child.
#[cfg(not(loom))]
static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[cfg(not(loom))]
static AT_FORK: std::sync::Once = std::sync::Once::new();

#[cfg(not(loom))]
extern "C" fn after_fork_in_child() {
    PID.store(0, std::sync::atomic::Ordering::Relaxed);
    // The forking thread is the child's only thread; its cached TID and list head are stale.
    TID.with(|t| t.set(0));
    HEAD.with(|h| h.set(std::ptr::null_mut()));
    crate::presence::after_fork_in_child();
}

/// Makes sure the caches above are refreshed after any fork, including `libc::fork` calls
/// made outside this crate.
#[cfg(not(loom))]
pub(crate) fn ensure_fork_hook() {
    AT_FORK.call_once(|| crate::sys::at_fork_child(after_fork_in_child));
}

/// The calling thread's TID (cached; no system call after the first).
#[cfg(not(loom))]
#[inline]
pub(crate) fn current_tid() -> u32 {
    TID.with(|t| {
        let v = t.get();
        if v != 0 {
            return v;
        }
        ensure_fork_hook();
        let v = crate::sys::gettid();
        t.set(v);
        v
    })
}

/// The calling process's pid (cached; refreshed after fork).
#[cfg(not(loom))]
#[inline]
pub(crate) fn current_pid() -> u32 {
    let v = PID.load(std::sync::atomic::Ordering::Relaxed);
    if v != 0 {
        return v;
    }
    ensure_fork_hook();
    let v = crate::sys::getpid();
    PID.store(v, std::sync::atomic::Ordering::Relaxed);
    v
}

#[cfg(loom)]
loom::thread_local! {
    static LOOM_TID: Cell<u32> = Cell::new(0);
}

#[cfg(loom)]
static NEXT_LOOM_TID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Under loom every model thread gets a distinct fake TID.
#[cfg(loom)]
pub(crate) fn current_tid() -> u32 {
    LOOM_TID.with(|t| {
        if t.get() == 0 {
            let n = NEXT_LOOM_TID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.set(1 + n % (crate::sys::FUTEX_TID_MASK - 16));
        }
        t.get()
    })
}

/// Under loom, parent and child are threads of one process.
#[cfg(loom)]
pub(crate) fn current_pid() -> u32 {
    1
}

/// Under loom there is no fork, so no hook to install.
#[cfg(loom)]
pub(crate) fn ensure_fork_hook() {}

// ---------------------------------------------------------------------------------------------
// The robust list.

#[cfg(not(loom))]
fn head() -> Option<*mut crate::sys::RobustListHead> {
    let h = HEAD.with(|h| {
        let v = h.get();
        if !v.is_null() {
            return v;
        }
        let mut found = crate::sys::robust_list_head();
        if found.is_null() {
            found = OWN_HEAD.with(|own| {
                let own = own.get();
                // SAFETY: `own` is this thread's own storage, alive until the thread exits,
                // and touched only by this thread. An empty list points at its own head.
                unsafe {
                    let head = std::ptr::addr_of_mut!((*own).head);
                    (*head).list = head.cast();
                    if crate::sys::set_robust_list(head) {
                        head
                    } else {
                        UNUSABLE
                    }
                }
            });
        } else {
            // SAFETY: the kernel returned the head registered for this thread; it lives as long
            // as the thread does.
            let offset = unsafe { (*found).futex_offset };
            if offset != FUTEX_OFFSET {
                found = UNUSABLE;
            }
        }
        h.set(found);
        found
    });
    (h != UNUSABLE).then_some(h)
}

#[cfg(not(loom))]
impl RobustWord {
    fn entry(&self) -> *mut usize {
        self.next.get()
    }

    /// Announces that this thread is about to take or release the word, so a death in the
    /// middle of the operation is still handled by the kernel (`list_op_pending`).
    #[inline]
    pub(crate) fn begin_op(&self) {
        if let Some(h) = head() {
            // SAFETY: `h` is this thread's registered head; only this thread writes it.
            unsafe { (*h).list_op_pending = self.entry() };
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Ends what `begin_op` announced.
    #[inline]
    pub(crate) fn end_op(&self) {
        if let Some(h) = head() {
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
            // SAFETY: as in `begin_op`.
            unsafe { (*h).list_op_pending = std::ptr::null_mut() };
        }
    }

    /// Links the entry at the front of this thread's robust list.
    ///
    /// # Safety
    /// The calling thread must just have taken the word (its TID is in it), and the entry must
    /// not be in any live list.
    #[inline]
    pub(crate) unsafe fn link(&self) {
        let Some(h) = head() else { return };
        let entry = self.entry();
        // SAFETY: `h` is this thread's head; reading its first entry pointer.
        if unsafe { (*h).list } == entry {
            return; // already first in our list: linking again would make it point at itself
        }
        // SAFETY: `h` is this thread's head and every entry in its list is a live glibc mutex or
        // a word of ours (words stay mapped while held); the list's `prev` fields sit 8 bytes
        // before each `next` field (glibc's layout), the head's `prev` slot before the head.
        // We hold the word, so nobody else touches our `prev`/`next`.
        unsafe {
            let first = ((*h).list as usize) & !1;
            *((first - 8) as *mut usize) = entry as usize;
            *self.next.get() = (*h).list as usize;
            *self.prev.get() = h as usize;
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
            (*h).list = entry;
        }
    }

    /// Unlinks the entry from this thread's robust list.
    ///
    /// # Safety
    /// The entry must have been linked by the calling thread, which still holds the word.
    #[inline]
    pub(crate) unsafe fn unlink(&self) {
        if head().is_none() {
            return;
        }
        // SAFETY: the entry is in this thread's list (caller's contract), so `prev` and `next`
        // name live neighbours (another entry's `next` field or the head) in this list.
        unsafe {
            let next = *self.next.get();
            let prev = *self.prev.get();
            if next == 0 || prev == 0 {
                return;
            }
            *(((next & !1) - 8) as *mut usize) = prev;
            *((prev & !1) as *mut usize) = next;
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
            *self.prev.get() = 0;
            *self.next.get() = 0;
        }
    }
}

#[cfg(loom)]
impl RobustWord {
    pub(crate) fn begin_op(&self) {}
    pub(crate) fn end_op(&self) {}
    /// # Safety
    /// None under loom (no list).
    pub(crate) unsafe fn link(&self) {}
    /// # Safety
    /// None under loom (no list).
    pub(crate) unsafe fn unlink(&self) {}
}

// Keep the layout honest: the kernel finds the word 32 bytes before the entry.
#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::offset_of!(RobustWord, next) == 32);
    assert!(std::mem::offset_of!(RobustWord, prev) == 24);
    assert!(std::mem::size_of::<RobustWord>() == 40);
};
