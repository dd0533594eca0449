//! `AnonRegion`: an owned anonymous shared mapping that places shared objects inside it.
//!
//! ```text
//! AnonRegion (MAP_SHARED | MAP_ANONYMOUS, page-rounded, zero-filled)
//! +-----------+---------+-----------+---------+------ ... ------+
//! | value 0   | pad     | value 1   | pad     |  free           |
//! +-----------+---------+-----------+---------+------ ... ------+
//! 0                                           ^ next (bump offset, in the creator's memory)
//! ```
//!
//! The mapping is made before `fork`, so parent and child see the same physical pages at the
//! same address. Placement is a bump allocator: `alloc` rounds the offset up to the value's
//! alignment, writes the value and returns a reference that lives as long as the region.
//!
//! Only the process that created the region may `alloc` in it (`Error::NotCreator` elsewhere):
//! the bump offset is private process memory, so a fork child that allocated from its copy
//! would place its objects on the very bytes where the parent places its own. The creator is
//! named by its process identity (pid and fork depth, see `sync::ident`), which no descendant
//! can have. Allocate what the children need before forking; the parent may go on allocating
//! afterwards (the children cannot see those objects, but nothing overlaps).
//!
//! Values are never dropped (`Shareable` types have no drop glue); the whole mapping is
//! unmapped when the region is dropped, **unless** this process still has a robust lock word
//! linked into a thread's robust list (a `ShmMutexGuard` alive on another thread, or leaked
//! with `mem::forget`): the kernel reads those words when the thread dies, so the region then
//! leaks its mapping instead of unmapping memory the kernel will walk.
//!
//! Live regions are recorded in a small process-wide registry (address ranges only), which
//! `ShmMutex` consults to link only words that lie in a region into the robust list.
//!
//! Under `cfg(loom)` the region is heap memory (loom atomics cannot live in an mmap'd page), and
//! "parent" and "child" are loom threads.

use std::cell::Cell;
use std::ptr::NonNull;

use crate::Error;
use crate::sync::ident::{Ident, current_ident};

/// Plain data that is valid in memory shared between processes.
///
/// Another process can write any bytes over a shared value at any time (a buggy or
/// compromised peer), so a `Shareable` type must be valid for **every bit pattern**: integers,
/// floats, std atomics, arrays of them, `ShmMutex` of them. `bool` and `char` are not
/// `Shareable` (a peer writing 7 into a shared `bool` would make every read of it undefined
/// behaviour); neither is `AtomicBool`, which std gives `bool`'s validity. Share a `u8`, an
/// `AtomicU8` or an `AtomicU32` instead. Typed channels use bytemuck's traits instead (see
/// [`Plain`](crate::Plain)).
///
/// ```compile_fail
/// let region = forkipc::AnonRegion::new(4096)?;
/// let flag = region.alloc(std::sync::atomic::AtomicBool::new(false))?; // not Shareable
/// # Ok::<(), forkipc::Error>(())
/// ```
///
/// # Safety
/// Implementors must be valid for every bit pattern, contain no pointers or references (their
/// values are meaningless in another process), no heap ownership, and no drop glue, and any
/// interior mutability must be safe across processes (atomics, `ShmMutex`). Add it to
/// `#[repr(C)]` structs whose fields are all `Shareable` and that have no padding.
pub unsafe trait Shareable: Sized {}

macro_rules! shareable {
    ($($t:ty),* $(,)?) => { $(
        // SAFETY: a plain integer, float or std atomic: no pointers, no drop glue, and atomics are
        // lock-free instructions on the shared memory itself.
        unsafe impl Shareable for $t {}
    )* };
}

shareable!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    ()
);
#[cfg(not(loom))]
shareable!(
    std::sync::atomic::AtomicU8,
    std::sync::atomic::AtomicU16,
    std::sync::atomic::AtomicU32,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicI8,
    std::sync::atomic::AtomicI16,
    std::sync::atomic::AtomicI32,
    std::sync::atomic::AtomicI64,
    std::sync::atomic::AtomicIsize,
);

// SAFETY: an array of shareable values is shareable element by element.
unsafe impl<T: Shareable, const N: usize> Shareable for [T; N] {}

/// An anonymous shared memory mapping, unmapped on drop.
///
/// ```
/// use forkipc::AnonRegion;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let region = AnonRegion::new(4096)?;
/// let counter: &AtomicU64 = region.alloc(AtomicU64::new(0))?;
/// counter.fetch_add(1, Ordering::Relaxed);
/// assert_eq!(region.len(), 4096);
/// # Ok::<(), forkipc::Error>(())
/// ```
pub struct AnonRegion {
    base: NonNull<u8>,
    len: usize,
    next: Cell<usize>,
    /// The process that created the mapping: the only one that may place objects in it.
    creator: Ident,
    /// Whether the region is in the registry (public regions; not the crate's own rings).
    registered: bool,
}

// SAFETY: the region owns its mapping; moving it to another thread moves that ownership.
// It is not `Sync` (`next` is a `Cell`): placement happens from one thread.
unsafe impl Send for AnonRegion {}

impl std::fmt::Debug for AnonRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnonRegion")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("used", &self.next.get())
            .finish()
    }
}

impl AnonRegion {
    /// Maps `len` bytes (rounded up to whole pages) of zero-filled shared anonymous memory.
    ///
    /// Errors: `ZeroSize` for 0, `SizeOverflow` if rounding overflows (or the region is 1 TiB
    /// or more), `Io` if `mmap` fails, `TooManyRegions` with 4 096 regions alive in this
    /// process (every region is recorded so that its locks can be robust).
    pub fn new(len: usize) -> Result<AnonRegion, Error> {
        let mut r = Self::new_unregistered(len)?;
        // A region whose locks could not be robust is refused rather than silently weaker.
        r.registered = registry::add(r.base.as_ptr() as usize, r.len)?;
        Ok(r)
    }

    /// A region that is not recorded in the registry: for the crate's own mappings that hold
    /// no lock words (rings, the presence table).
    pub(crate) fn new_unregistered(len: usize) -> Result<AnonRegion, Error> {
        if len == 0 {
            return Err(Error::ZeroSize);
        }
        let page = crate::sys::page_size();
        let len = len.checked_add(page - 1).ok_or(Error::SizeOverflow)? & !(page - 1);
        if len > isize::MAX as usize {
            return Err(Error::SizeOverflow);
        }
        let base = Self::map(len)?;
        Ok(AnonRegion {
            base,
            len,
            next: Cell::new(0),
            creator: current_ident(),
            registered: false,
        })
    }

    #[cfg(not(loom))]
    fn map(len: usize) -> Result<NonNull<u8>, Error> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
        let nz = std::num::NonZeroUsize::new(len).ok_or(Error::ZeroSize)?;
        // SAFETY: a fresh anonymous mapping aliases no existing Rust object.
        let p = unsafe {
            mmap_anonymous(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }?;
        Ok(p.cast())
    }

    #[cfg(loom)]
    fn map(len: usize) -> Result<NonNull<u8>, Error> {
        let layout = std::alloc::Layout::from_size_align(len, crate::sys::page_size())
            .map_err(|_| Error::SizeOverflow)?;
        // SAFETY: `layout` has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        NonNull::new(p).ok_or(Error::RegionFull)
    }

    /// The mapping's length in bytes (a whole number of pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes not yet handed out by `alloc` (ignoring future alignment padding).
    pub fn remaining(&self) -> usize {
        self.len - self.next.get()
    }

    /// Reserves `size` bytes aligned to `align` and returns their address; the bytes are zero
    /// unless something was written there before.
    pub(crate) fn alloc_raw(&self, size: usize, align: usize) -> Result<NonNull<u8>, Error> {
        debug_assert!(align.is_power_of_two());
        if current_ident() != self.creator {
            return Err(Error::NotCreator);
        }
        let start = self
            .next
            .get()
            .checked_add(align - 1)
            .ok_or(Error::SizeOverflow)?
            & !(align - 1);
        let end = start.checked_add(size).ok_or(Error::SizeOverflow)?;
        if end > self.len {
            return Err(Error::RegionFull);
        }
        self.next.set(end);
        // SAFETY: `start < end <= len`, so the offset stays inside the mapping.
        Ok(unsafe { self.base.add(start) })
    }

    /// Places `value` at the next suitably aligned offset and returns a reference to it in
    /// shared memory.
    ///
    /// # Errors
    /// `RegionFull` when it does not fit; `NotCreator` when called in a process other than the
    /// one that created the region (a fork child: its objects would land on the bytes where the
    /// parent places its own).
    pub fn alloc<T: Shareable>(&self, value: T) -> Result<&T, Error> {
        let p = self
            .alloc_raw(std::mem::size_of::<T>(), std::mem::align_of::<T>())?
            .cast::<T>();
        // SAFETY: `p` is aligned for `T`, in bounds, and not handed out before; the region
        // outlives the returned borrow.
        unsafe {
            p.as_ptr().write(value);
            Ok(&*p.as_ptr())
        }
    }

    /// Places a value of a type that is only shareable inside the crate (loom atomics in tests,
    /// ring headers).
    pub(crate) fn place<T>(&self, value: T) -> Result<NonNull<T>, Error> {
        let p = self
            .alloc_raw(std::mem::size_of::<T>(), std::mem::align_of::<T>())?
            .cast::<T>();
        // SAFETY: as in `alloc`.
        unsafe { p.as_ptr().write(value) };
        Ok(p)
    }

    /// The mapping's base address (for tests that scribble over it).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }
}

impl Drop for AnonRegion {
    #[cfg(not(loom))]
    fn drop(&mut self) {
        if self.registered {
            registry::remove(self.base.as_ptr() as usize, self.len);
        }
        if self.registered && crate::sync::robust::linked_count() != 0 {
            // A lock word of this process may still be linked into a robust list (a guard
            // leaked with `mem::forget`, or alive on another thread): the kernel reads it when
            // the thread dies, and a peer may still wait on it. Leak the mapping instead.
            return;
        }
        // SAFETY: `base..base+len` is our own mapping and every borrow of it has ended (they
        // borrow `self`); no robust-list entry of this process points into it (checked above
        // for public regions; the crate's own unregistered mappings hold no lock words).
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
    }

    #[cfg(loom)]
    fn drop(&mut self) {
        if let Ok(layout) = std::alloc::Layout::from_size_align(self.len, crate::sys::page_size()) {
            // SAFETY: allocated in `map` with this layout.
            unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
        }
    }
}

/// The process-wide record of live public regions, as packed `(first page, page count)` words,
/// so a lock can tell whether its word lies in a region (and will stay mapped while linked).
/// Fixed-size and lock-free: usable from a fork child of a multithreaded process.
#[cfg(not(loom))]
mod registry {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    const CAP: usize = 4096;
    const PAGE_SHIFT: u32 = 12;
    const PAGES_BITS: u32 = 28;

    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: AtomicU64 = AtomicU64::new(0);
    static RECORDS: [AtomicU64; CAP] = [FREE; CAP];
    /// One past the highest record ever used.
    static HIGH: AtomicUsize = AtomicUsize::new(0);

    fn pack(base: usize, len: usize) -> Option<u64> {
        let page = base as u64 >> PAGE_SHIFT;
        let pages = (len as u64).div_ceil(1 << PAGE_SHIFT);
        ((base as u64).is_multiple_of(1 << PAGE_SHIFT) && pages < 1 << PAGES_BITS && page < 1 << 36)
            .then_some(page << PAGES_BITS | pages)
    }

    fn contains(rec: u64, addr: usize, size: usize) -> bool {
        let start = (rec >> PAGES_BITS) << PAGE_SHIFT;
        let end = start + ((rec & ((1 << PAGES_BITS) - 1)) << PAGE_SHIFT);
        rec != 0 && addr as u64 >= start && (addr as u64).saturating_add(size as u64) <= end
    }

    /// Records a region. `TooManyRegions` if the registry is full; `SizeOverflow` if the
    /// region is beyond what a record describes (1 TiB, or above 2^48).
    pub(super) fn add(base: usize, len: usize) -> Result<bool, crate::Error> {
        let Some(rec) = pack(base, len) else {
            return Err(crate::Error::SizeOverflow);
        };
        for (i, slot) in RECORDS.iter().enumerate() {
            // SeqCst: records and `HIGH` are read by `holds` on other threads; keep it simple.
            if slot
                .compare_exchange(0, rec, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                HIGH.fetch_max(i + 1, Ordering::SeqCst);
                return Ok(true);
            }
        }
        Err(crate::Error::TooManyRegions)
    }

    pub(super) fn remove(base: usize, len: usize) {
        let Some(rec) = pack(base, len) else { return };
        let high = HIGH.load(Ordering::SeqCst);
        for slot in &RECORDS[..high] {
            if slot
                .compare_exchange(rec, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return;
            }
        }
    }

    thread_local! {
        /// The record that answered this thread's last question (most locks of a thread are
        /// in one region).
        static LAST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Whether `size` bytes at `addr` lie inside a live public region.
    pub(crate) fn holds(addr: usize, size: usize) -> bool {
        let last = LAST.with(std::cell::Cell::get);
        if RECORDS
            .get(last)
            .is_some_and(|r| contains(r.load(Ordering::SeqCst), addr, size))
        {
            return true;
        }
        let high = HIGH.load(Ordering::SeqCst);
        match RECORDS[..high]
            .iter()
            .position(|r| contains(r.load(Ordering::SeqCst), addr, size))
        {
            Some(i) => {
                LAST.with(|l| l.set(i));
                true
            }
            None => false,
        }
    }
}

#[cfg(not(loom))]
pub(crate) use registry::holds;

#[cfg(loom)]
mod registry {
    pub(super) fn add(_: usize, _: usize) -> Result<bool, crate::Error> {
        Ok(false)
    }
}
