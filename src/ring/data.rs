//! The ring's data area: a power-of-two byte array holding records.
//!
//! Natively it is bytes in the shared mapping; record headers are read and written as
//! `AtomicU64`s at 8-aligned offsets, payloads with plain copies (ordered by the headers'
//! Release/Acquire). Under loom it is an array of loom `AtomicU64` words, and payload copies go
//! word by word with Relaxed atomics, so the model sees every byte the protocol must order (a
//! torn read shows up as wrong content).

use std::ptr::NonNull;

use crate::sync::{AtomicU64, Ordering};

/// A view of the data area. `cap` is a power of two, at least 64, a multiple of 8.
#[derive(Clone, Copy)]
pub(crate) struct Data {
    #[cfg(not(loom))]
    base: NonNull<u8>,
    #[cfg(loom)]
    base: NonNull<AtomicU64>,
    cap: usize,
}

// SAFETY: `Data` is an address into a mapping kept alive by the `RingMem` that owns it; all
// cross-thread access follows the ring protocol.
unsafe impl Send for Data {}
// SAFETY: as above.
unsafe impl Sync for Data {}

impl Data {
    /// Bytes needed in the region for a data area of `cap` bytes, and the alignment.
    pub(crate) fn layout(cap: usize) -> (usize, usize) {
        #[cfg(not(loom))]
        {
            (cap, 128)
        }
        #[cfg(loom)]
        {
            (
                cap / 8 * std::mem::size_of::<AtomicU64>(),
                std::mem::align_of::<AtomicU64>(),
            )
        }
    }

    /// # Safety
    /// `base` must point at `Data::layout(cap).0` bytes, aligned, zero-filled (natively) or
    /// uninitialised (loom: initialised here), valid for as long as the `Data` is used.
    pub(crate) unsafe fn new(base: NonNull<u8>, cap: usize) -> Data {
        #[cfg(not(loom))]
        {
            Data { base, cap }
        }
        #[cfg(loom)]
        {
            let words = base.cast::<AtomicU64>();
            for i in 0..cap / 8 {
                // SAFETY: in bounds of the caller's allocation, aligned for AtomicU64.
                unsafe { words.as_ptr().add(i).write(AtomicU64::new(0)) };
            }
            Data { base: words, cap }
        }
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// The record header at byte index `idx`.
    #[inline]
    pub(crate) fn header(&self, idx: usize) -> &AtomicU64 {
        debug_assert!(idx.is_multiple_of(8) && idx < self.cap);
        let idx = idx & (self.cap - 1) & !7;
        #[cfg(not(loom))]
        {
            // SAFETY: `idx` is 8-aligned and < cap (masked above); the data area is 128-aligned,
            // so this is an aligned u64 inside the mapping. Headers are only accessed atomically.
            unsafe { &*(self.base.as_ptr().add(idx) as *const AtomicU64) }
        }
        #[cfg(loom)]
        {
            // SAFETY: `idx / 8 < cap / 8` words, initialised in `new`.
            unsafe { &*self.base.as_ptr().add(idx / 8) }
        }
    }

    /// Copies `src` into the data area at `idx`. The caller owns those bytes (a reservation).
    #[inline]
    pub(crate) fn write(&self, idx: usize, src: &[u8]) {
        assert!(idx <= self.cap && src.len() <= self.cap - idx);
        // SAFETY: `src` is a live slice of `src.len()` bytes; bounds checked above.
        unsafe { self.write_raw(idx, src.as_ptr(), src.len()) }
    }

    /// Copies `n` bytes from `src` into the data area at `idx` (an untyped copy: the source may
    /// contain padding bytes).
    ///
    /// # Safety
    /// `src` must be valid for reading `n` bytes, and `idx + n <= cap` (a validated
    /// reservation).
    #[inline]
    pub(crate) unsafe fn write_raw(&self, idx: usize, src: *const u8, n: usize) {
        debug_assert!(idx <= self.cap && n <= self.cap - idx);
        #[cfg(not(loom))]
        {
            // SAFETY: `idx + n <= cap` (caller; debug-asserted above); the producer owns reserved
            // bytes exclusively (the
            // consumer never writes the data area, and reads only committed records); `src` is
            // readable for `n` bytes (caller).
            unsafe { std::ptr::copy_nonoverlapping(src, self.base.as_ptr().add(idx), n) }
        }
        #[cfg(loom)]
        {
            // SAFETY: the caller guarantees `src` is readable for `n` bytes.
            let src = unsafe { std::slice::from_raw_parts(src, n) };
            for (k, chunk) in src.chunks(8).enumerate() {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                self.header(idx + k * 8)
                    .store(u64::from_le_bytes(w), Ordering::Relaxed);
            }
        }
    }

    /// Copies `dst.len()` bytes at `idx` out of the data area.
    #[inline]
    #[cfg_attr(not(loom), allow(dead_code))] // natively, payloads are read in place
    pub(crate) fn read(&self, idx: usize, dst: &mut [u8]) {
        assert!(idx <= self.cap && dst.len() <= self.cap - idx);
        // SAFETY: `dst` is a live, writable slice of `dst.len()` bytes; bounds checked above.
        unsafe { self.read_raw(idx, dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies `n` bytes at `idx` out of the data area to `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for writing `n` bytes, and `idx + n <= cap` (a validated record).
    #[inline]
    pub(crate) unsafe fn read_raw(&self, idx: usize, dst: *mut u8, n: usize) {
        debug_assert!(idx <= self.cap && n <= self.cap - idx);
        #[cfg(not(loom))]
        {
            // SAFETY: `idx + n <= cap` (caller; debug-asserted above); the bytes belong to a
            // committed record that the
            // producer will not touch until the consumer releases it; `dst` is writable (caller).
            unsafe { std::ptr::copy_nonoverlapping(self.base.as_ptr().add(idx), dst, n) }
        }
        #[cfg(loom)]
        {
            // SAFETY: the caller guarantees `dst` is writable for `n` bytes.
            let dst = unsafe { std::slice::from_raw_parts_mut(dst, n) };
            for (k, chunk) in dst.chunks_mut(8).enumerate() {
                let w = self
                    .header(idx + k * 8)
                    .load(Ordering::Relaxed)
                    .to_le_bytes();
                let m = chunk.len();
                chunk.copy_from_slice(&w[..m]);
            }
        }
    }

    /// A raw pointer to the byte at `idx`, for in-place access (native only).
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn ptr(&self, idx: usize) -> *mut u8 {
        assert!(idx <= self.cap);
        // SAFETY: `idx <= cap`: at most one past the end of the data area.
        unsafe { self.base.as_ptr().add(idx) }
    }

    /// Relaxed store of a zero header (the producer clears the slot after its record).
    #[inline]
    pub(crate) fn clear_header(&self, idx: usize) {
        self.header(idx).store(0, Ordering::Relaxed);
    }
}
