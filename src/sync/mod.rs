//! The shim: the one place that chooses between std and loom.
//!
//! Natively, atomics are std's, a futex is the raw shared (`FUTEX_PRIVATE_FLAG`-free) syscall,
//! and spinning is a CPU hint. Under `cfg(loom)` the same names come from loom: the atomics are
//! loom's, a futex word carries a loom `Mutex` + `Condvar` that model `FUTEX_WAIT`/`FUTEX_WAKE`
//! (the value is compared under the lock, so a wake between the check and the sleep is never
//! lost), and every spin iteration is a `loom::thread::yield_now` so the model sees it.
//! Nothing outside this module names `std::sync::atomic` or `loom` directly.

pub(crate) mod barrier;
pub(crate) mod futex;
pub(crate) mod ident;
pub(crate) mod robust;
pub(crate) mod spin;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

pub(crate) use futex::{Deadline, FutexWord, Wake};
pub use spin::WaitPolicy;
