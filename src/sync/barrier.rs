//! The asymmetric barrier pair of the ring's sleep/wake handshake.
//!
//! The handshake is Dekker's: a side about to sleep stores `wait = 1`, then re-checks the ring;
//! the other side publishes (commits a message, frees space), then reads `wait`. Each side
//! needs a full barrier between its store and its load, and a `fence(SeqCst)` per message costs
//! about as much as a whole small message. But one side sleeps rarely (after its spin budget)
//! and the other publishes constantly, so the cost is moved to the rare side:
//!
//! * `light()` (the publisher, on every message): a compiler fence only, if this process is
//!   registered for `MEMBARRIER_CMD_GLOBAL_EXPEDITED`; otherwise `fence(SeqCst)`.
//! * `heavy()` (the side about to sleep): `fence(SeqCst)` and `membarrier(GLOBAL_EXPEDITED)`,
//!   which makes every CPU currently running a registered process execute a full barrier
//!   before it returns (a CPU not running one passes a barrier at its next context switch).
//!
//! Together they order the publisher's store before its load of `wait` as a full fence would,
//! relative to the sleeper. Registration is per process (the kernel's per-`mm` state) and is
//! inherited across `fork` (the child's `mm` is a copy). Where the kernel refuses registration, both sides use fences.
//! Under loom both are `fence(SeqCst)`.

use super::{Ordering, fence};

#[cfg(not(loom))]
mod state {
    use std::sync::atomic::{AtomicU8, Ordering};

    const UNKNOWN: u8 = 0;
    const REGISTERED: u8 = 1;
    const UNAVAILABLE: u8 = 2;

    /// This process's registration (inherited by fork children: the kernel copies the
    /// registration with the `mm`).
    static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

    /// Whether this process is registered (registering on first use).
    #[inline]
    pub(crate) fn registered() -> bool {
        match STATE.load(Ordering::Relaxed) {
            REGISTERED => true,
            UNAVAILABLE => false,
            _ => register(),
        }
    }

    #[cold]
    fn register() -> bool {
        use crate::sys::{
            MEMBARRIER_CMD_GLOBAL_EXPEDITED, MEMBARRIER_CMD_QUERY,
            MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, membarrier,
        };
        let supported = membarrier(MEMBARRIER_CMD_QUERY);
        let ok = supported >= 0
            && supported & i64::from(MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0
            && membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0;
        STATE.store(if ok { REGISTERED } else { UNAVAILABLE }, Ordering::Relaxed);
        ok
    }
}

#[cfg(not(loom))]
pub(crate) use state::registered;

/// The publisher's barrier, between its publishing store and its load of the peer's `wait`.
#[inline]
pub(crate) fn light() {
    #[cfg(not(loom))]
    if registered() {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        return;
    }
    fence(Ordering::SeqCst);
}

/// The sleeper's barrier, between its `wait = 1` store and its re-check of the ring.
#[inline]
pub(crate) fn heavy() {
    fence(Ordering::SeqCst);
    #[cfg(not(loom))]
    {
        // Whether or not *we* are registered, our peer may be, and then relies on this.
        let _ = crate::sys::membarrier(crate::sys::MEMBARRIER_CMD_GLOBAL_EXPEDITED);
        fence(Ordering::SeqCst);
    }
}
