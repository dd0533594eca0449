//! `AnonRegion`: an owned anonymous shared mapping that places shared objects inside it.
//!
//! ```text
//! AnonRegion (MAP_SHARED | MAP_ANONYMOUS, page-rounded, zero-filled)
//! +-----------+---------+-----------+---------+------ ... ------+
//! | value 0   | pad     | value 1   | pad     |  free           |
//! +-----------+---------+-----------+---------+------ ... ------+
//! 0                                           ^ next (bump offset, private to each process)
//! ```
//!
//! The mapping is made before `fork`, so parent and child see the same physical pages at the
//! same address. Placement is a bump allocator: `alloc` rounds the offset up to the value's
//! alignment, writes the value and returns a reference that lives as long as the region. The
//! bump offset is process-private: after a fork each process allocates on its own, so allocate
//! everything shared *before* forking. Values are never dropped (`Shareable` types have no
//! drop glue); the whole mapping is unmapped when the region is dropped.
//!
//! Under `cfg(loom)` the region is heap memory (loom atomics cannot live in an mmap'd page), and
//! "parent" and "child" are loom threads.

use std::cell::Cell;
use std::ptr::NonNull;

use crate::Error;

/// Plain data that is valid in memory shared between processes.
///
/// # Safety
/// Implementors must contain no pointers or references (their values are meaningless in
/// another process), no heap ownership, and no drop glue, and any interior mutability must be
/// safe across processes (atomics, `ShmMutex`). Add it to `#[repr(C)]` structs whose fields
/// are all `Shareable`.
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
    bool,
    char,
    ()
);
#[cfg(not(loom))]
shareable!(
    std::sync::atomic::AtomicBool,
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
    /// Errors: `ZeroSize` for 0, `SizeOverflow` if rounding overflows, `Io` if `mmap` fails.
    pub fn new(len: usize) -> Result<AnonRegion, Error> {
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
    /// shared memory. Returns `Error::RegionFull` when it does not fit.
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
        // SAFETY: `base..base+len` is our own mapping and every borrow of it has ended (they
        // borrow `self`).
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
