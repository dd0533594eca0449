//! A lock-free single-producer single-consumer ring of variable-length messages in shared
//! memory, with zero-copy reservation and spin-then-futex waiting.
//!
//! # Layout (one `AnonRegion` per ring)
//!
//! ```text
//! offset 0     RingHeader (repr(C)), each field on its own 128-byte line:
//!   head       u64  consumer position (monotonic byte count); written by the consumer only
//!   rx         SideState of the consumer: wait word, closed word, owner presence
//!   tx         SideState of the producer
//! offset 512   data area: `cap` bytes, cap a power of two >= 64, holding records:
//!
//!   record   = | header: u64 | payload: len bytes | pad to a multiple of 8 |
//!   header   = kind << 32 | len      kind 1 = message, 2 = padding, 0 = not yet written
//! ```
//!
//! # Invariants
//!
//! * Positions are monotonic `u64` byte counts; a record at position `p` sits at index
//!   `p & (cap - 1)`. Records never straddle the end of the data area: when a record does not
//!   fit before the end, the producer writes a padding record (`len` = bytes to the end minus
//!   its 8-byte header) and puts the record at index 0.
//! * `head <= tail` and `tail - head <= cap - 8`: the producer always keeps 8 free bytes after
//!   its last record, because the header slot that follows each record must read 0 *before*
//!   the record is committed: the producer clears it then, or (fixed-size fast path) already
//!   cleared it after the previous commit, when it was free. So the header at `tail` is always 0
//!   (empty) when the consumer reaches it, and the consumer never writes the data area.
//! * Commit is one Release store of the record's header (for a wrapped record: the record's
//!   header, then the padding's header). The consumer polls the header at `head` with Acquire:
//!   one cache line per message, no separate tail index to bounce.
//! * The largest message is `cap / 2 - 16` bytes: it fits at any index once the ring is empty.
//!
//! # Validation
//!
//! Positions are private to each side (copied into the endpoint, not re-read). What the
//! consumer reads from shared memory, the header, is checked: kind is 1 or 2, a message lies
//! inside the data area and within the maximum length, a padding record ends exactly at the end
//! of the area and is never at index 0. What the producer reads, the consumer's `head`, must be
//! a multiple of 8, no smaller than last seen, and not beyond `tail`. Anything else is
//! `Corrupted`, and the side stops using the ring for good.
//!
//! # Waiting
//!
//! A side that cannot proceed first polls the one header it waits for, then spins (per its
//! `WaitPolicy`), then sets its `wait` word to 1, issues the heavy barrier and re-checks
//! (Dekker's handshake: the other side publishes, issues the light barrier, then reads `wait`;
//! see `sync::barrier`), then sleeps on its `wait` word together with the peer owner's presence
//! word (`futex_waitv`), so the peer's death wakes it too (`ring::wait`). The publishing side
//! makes a wake-up system call only when `wait` is 1.
//!
//! A consumer that caught up with a streaming producer lets it run ahead a few hundred
//! nanoseconds before reading on, so that the two do not write and read the same cache lines
//! (`ring::slip`; a delay only, learned from outcomes).

mod data;
#[cfg(not(loom))]
mod slip;
mod wait;

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::presence::{self, Liveness, PresenceRef};
use crate::sync::barrier;
use crate::sync::{AtomicU32, AtomicU64, Deadline, FutexWord, Ordering, WaitPolicy, fence};
use crate::{AnonRegion, Error};
pub(crate) use data::Data;

const KIND_MSG: u64 = 1;
const KIND_PAD: u64 = 2;
const HDR: usize = 8;
/// Smallest data area.
pub(crate) const MIN_CAP: usize = 64;
/// Iterations of the tight polling phase (a few microseconds).
#[cfg(not(loom))]
const TIGHT_POLLS: u32 = 256;

/// Values of `SideState::closed`.
const OPEN: u32 = 0;
const CLOSED: u32 = 1;
const CLOSED_PANICKING: u32 = 2;

/// What a peer reports for a side whose `closed` word reads `v` (non-zero).
#[inline]
fn close_reason(v: u32) -> DisconnectReason {
    if v == CLOSED_PANICKING {
        DisconnectReason::PeerPanicked
    } else {
        DisconnectReason::PeerDropped
    }
}

/// `wait::wait_until` reports every close as `PeerDropped`: tell a panicking owner's close
/// apart by the value it stored in `peer.closed` (never reset once set).
fn refine_close(e: RingError, peer: &SideState) -> RingError {
    match e {
        RingError::Disconnected(DisconnectReason::PeerDropped) => {
            RingError::Disconnected(close_reason(peer.closed.load(Ordering::SeqCst)))
        }
        e => e,
    }
}

/// One side's shared state.
#[repr(C)]
pub(crate) struct SideState {
    /// 1 while this side sleeps or is about to; the other side wakes it only then.
    wait: FutexWord,
    /// `OPEN` (0); `CLOSED` (1) once the owning process dropped this side's endpoint;
    /// `CLOSED_PANICKING` (2) if it dropped it while unwinding from a panic. Written once, by
    /// the owner; any other non-zero value (a scribbling peer) reads as `CLOSED`.
    closed: AtomicU32,
    /// The owning process's presence (`PresenceRef`), 0 if unknown.
    owner: AtomicU64,
    /// While a `Select` in the owning process watches this side: `BELL_FLAG | PresenceRef`
    /// of the process whose doorbell to ring instead of waking `wait`; 0 otherwise. Stored
    /// before `wait = 1`. A peer may scribble it: it is only ever used to ring a bell, which
    /// `presence::ring_bell` validates (a wrong bell is a spurious wake-up somewhere).
    bell: AtomicU64,
}

/// Marks `SideState::bell` as set (a `PresenceRef` may be 0 under loom).
const BELL_FLAG: u64 = 1 << 63;

impl SideState {
    /// The publishing half of the Dekker handshake, after the caller's barrier: wake this side
    /// if (and only if) it said it is asleep.
    #[inline]
    fn wake_if_asleep(&self) {
        // Acquire: pairs with the Release store of `wait = 1` in `arm_select`, so a selector's
        // `bell`, stored before it, is seen here. (A plain `mov` on x86, like Relaxed.)
        if self.wait.load(Ordering::Acquire) != 0 {
            self.wait.store(0, Ordering::Relaxed);
            let bell = self.bell.load(Ordering::Relaxed);
            if bell & BELL_FLAG != 0 {
                presence::ring_bell(PresenceRef(bell & !BELL_FLAG));
            }
            // Always, even with a bell: a bell a peer scribbled (or a stale one) must not
            // divert the wake-up of a plain blocked `recv`/`send` on this side. (A syscall
            // only when the side said it sleeps; a `Select` sleeps on its bell, not here.)
            self.wait.wake(1);
        }
    }

    /// A `Select` watching this side: ask the peer to ring `me`'s doorbell when it publishes
    /// something for this side, as if this side were asleep. The caller then issues the heavy
    /// barrier and re-checks (the same Dekker handshake as `wait::wait_until`).
    pub(crate) fn arm_select(&self, me: PresenceRef) {
        self.bell.store(BELL_FLAG | me.0, Ordering::Relaxed);
        // Release: pairs with the Acquire load of `wait` in `wake_if_asleep` (bell first).
        self.wait.store(1, Ordering::Release);
    }

    /// Undoes `arm_select`. A peer that already saw `wait = 1` may still ring the bell once:
    /// a spurious wake-up of a later `Select`, which re-checks.
    pub(crate) fn disarm_select(&self) {
        self.wait.store(0, Ordering::Relaxed);
        self.bell.store(0, Ordering::Relaxed);
    }

    /// The owning process's presence as recorded now.
    pub(crate) fn owner_ref(&self) -> PresenceRef {
        PresenceRef(self.owner.load(Ordering::SeqCst))
    }

    /// Whether this side's owning process is alive. A dead owner counts only if the side
    /// still names it afterwards: a side is handed to a new owner by storing the new owner
    /// before the old one is released (a failed fork gives the side back to the parent before
    /// marking the child's reserved slot dead), so re-reading `owner` after seeing a death
    /// tells a real death from a hand-over.
    #[inline]
    pub(crate) fn owner_alive(&self) -> bool {
        let mut o = self.owner.load(Ordering::SeqCst);
        loop {
            if presence::check(PresenceRef(o)) == Liveness::Alive {
                return true;
            }
            // SeqCst: the re-read must come after the load of the dead word in the total
            // order, which the hand-over's SeqCst store of the new owner precedes.
            let again = self.owner.load(Ordering::SeqCst);
            if again == o {
                return false;
            }
            o = again;
        }
    }

    fn new() -> SideState {
        SideState {
            wait: FutexWord::new(0),
            closed: AtomicU32::new(OPEN),
            owner: AtomicU64::new(0),
            bell: AtomicU64::new(0),
        }
    }
}

/// The shared header at the start of a ring's region.
#[repr(C)]
pub(crate) struct RingHeader {
    head: CachePadded<AtomicU64>,
    rx: CachePadded<SideState>,
    tx: CachePadded<SideState>,
}

/// Why a side is (or became) disconnected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer's owning process dropped its endpoint.
    PeerDropped,
    /// The peer's owning process dropped its endpoint while unwinding from a panic (the panic
    /// dropped it): a crash, not a clean hang-up. If the peer is a fork child,
    /// [`Child::wait_outcome`](crate::Child::wait_outcome) gives the panic's message. (With
    /// `panic = "abort"` there is no unwinding: the peer is seen as `PeerDied`.)
    PeerPanicked,
    /// The peer's owning process died without dropping it (killed, crashed, exited).
    PeerDied,
    /// The ring's shared memory held something impossible; the channel is unusable for good.
    Corrupted,
    /// This process does not own this endpoint (it is a copy inherited through `fork`, or was
    /// handed to a child). The usual cause is an endpoint that `fork`'s closure captures
    /// instead of receiving it in `ends`: pass it in `ends`.
    NotOwner,
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DisconnectReason::PeerDropped => "the peer dropped its endpoint",
            DisconnectReason::PeerPanicked => "the peer panicked",
            DisconnectReason::PeerDied => "the peer process died",
            DisconnectReason::Corrupted => "the channel's shared memory is corrupted",
            DisconnectReason::NotOwner => {
                "this process does not own this endpoint: pass it to fork() in `ends` (an \
                 endpoint that the child closure captures is an inert copy in the child)"
            }
        })
    }
}

/// Ring-level failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// Nothing to read (`try_`) or no room (`try_`).
    WouldBlock,
    /// The deadline passed.
    Timeout,
    /// The message can never fit.
    TooLarge { len: usize, max: usize },
    /// The ring is closed for this side.
    Disconnected(DisconnectReason),
}

/// The mapping and the addresses inside it, shared by both ends within one process.
pub(crate) struct RingMem {
    _region: AnonRegion,
    hdr: NonNull<RingHeader>,
    data: Data,
}

// SAFETY: the header is atomics only; the data area is accessed per the ring protocol; the
// region is owned here and unmapped only when the last end in this process drops.
unsafe impl Send for RingMem {}
// SAFETY: as above.
unsafe impl Sync for RingMem {}

impl RingMem {
    fn hdr(&self) -> &RingHeader {
        // SAFETY: `hdr` points into `_region`, initialised in `new`, alive as long as `self`.
        unsafe { self.hdr.as_ref() }
    }

    /// The header's address, the data area's address and its size: for tests that scribble
    /// over shared memory.
    #[cfg(not(loom))]
    pub(crate) fn raw_parts(&self) -> (*mut u8, *mut u8, usize) {
        (self.hdr.as_ptr().cast(), self.data.ptr(0), self.data.cap())
    }

    /// Records `owner` as the owning process of one side (at creation, and when the side is
    /// handed to a fork child), and wakes the peer if it sleeps on the previous owner.
    pub(crate) fn set_owner(&self, producer_side: bool, owner: PresenceRef) {
        let side = if producer_side {
            &self.hdr().tx
        } else {
            &self.hdr().rx
        };
        side.owner.store(owner.0, Ordering::SeqCst);
        // As in `close`: the peer's `wait = 1; fence; re-check` sees the new owner, or our wake.
        fence(Ordering::SeqCst);
        // A peer asleep on the old owner's presence must re-arm on the new one.
        let peer = if producer_side {
            &self.hdr().rx
        } else {
            &self.hdr().tx
        };
        peer.wake_if_asleep();
    }
}

/// Creates a ring whose data area is `cap` bytes (a power of two, at least `MIN_CAP`).
pub(crate) fn ring(cap: usize) -> Result<(Producer, Consumer), Error> {
    if cap < MIN_CAP || !cap.is_power_of_two() || cap > u32::MAX as usize {
        return Err(Error::SizeOverflow);
    }
    let (data_len, data_align) = Data::layout(cap);
    let total = std::mem::size_of::<RingHeader>()
        .checked_add(data_len + data_align)
        .ok_or(Error::SizeOverflow)?;
    let region = AnonRegion::new_unregistered(total)?;
    let hdr = region.place(RingHeader {
        head: CachePadded::new(AtomicU64::new(0)),
        rx: CachePadded::new(SideState::new()),
        tx: CachePadded::new(SideState::new()),
    })?;
    let base = region.alloc_raw(data_len, data_align)?;
    // SAFETY: `base` is `data_len` fresh, aligned, zero-filled bytes of the region, which the
    // RingMem keeps alive.
    let data = unsafe { Data::new(base, cap) };
    let mem = Arc::new(RingMem {
        _region: region,
        hdr,
        data,
    });
    Ok((
        Producer {
            end: End::new(&mem),
            tail: Cell::new(0),
            head_seen: Cell::new(0),
            zeroed_slot: Cell::new(u64::MAX),
            fast_end: Cell::new(0),
        },
        Consumer {
            end: End::new(&mem),
            head: Cell::new(0),
            #[cfg(not(loom))]
            slip: slip::Slip::new(),
        },
    ))
}

#[inline]
fn record_size(len: usize) -> usize {
    HDR + ((len + 7) & !7)
}

/// The largest message a data area of `cap` bytes accepts.
#[inline]
pub(crate) fn max_message_len(cap: usize) -> usize {
    cap / 2 - 16
}

/// The data-area size that holds at least `n` messages of `len` bytes each.
pub(crate) fn cap_for_messages(n: usize, len: usize) -> Result<usize, Error> {
    let rec = len.checked_add(HDR + 7).ok_or(Error::SizeOverflow)? & !7;
    let need = n
        .checked_add(1)
        .and_then(|k| k.checked_mul(rec))
        .and_then(|b| b.checked_add(HDR))
        .ok_or(Error::SizeOverflow)?;
    let for_max = len
        .checked_mul(2)
        .and_then(|b| b.checked_add(32))
        .ok_or(Error::SizeOverflow)?;
    need.max(for_max)
        .max(MIN_CAP)
        .checked_next_power_of_two()
        .filter(|c| *c <= u32::MAX as usize)
        .ok_or(Error::SizeOverflow)
}

// ---------------------------------------------------------------------------------------------
// Producer

/// The writing end of a ring. `Send`, not `Sync`.
pub struct Producer {
    end: End,
    /// Our position: where the next record goes. Private; never read back from shared memory.
    tail: Cell<u64>,
    /// The consumer's position as last read: always `<= tail`, a multiple of 8.
    head_seen: Cell<u64>,
    /// A header slot, beyond `tail`, that we cleared ahead of time (in free space) and nobody
    /// has written since; `u64::MAX` when none. A commit whose following slot is this one need
    /// not clear it.
    zeroed_slot: Cell<u64>,
    /// How far the fast path may place a record (its end position) without looking at shared
    /// memory: `min(end of tail's lap, head_seen + cap - HDR)`. Recomputed by `refresh_fast_end`
    /// when a record does not fit below it; only ever an underestimate of the room (`tail`
    /// and `head_seen` only grow), so a stale value costs a refresh, never an overrun.
    fast_end: Cell<u64>,
}

/// Reserved, not yet committed space for one message. Dropping it commits nothing.
pub struct Reservation<'a> {
    p: &'a Producer,
    /// Index of the record's header.
    rec: usize,
    len: usize,
    /// Index of the padding record before it, if the reservation wrapped.
    pad: Option<usize>,
    new_tail: u64,
}

/// What both ends of a ring hold: the mapping, the addresses in it, the wait policy, and
/// whether this end has given up on the ring.
pub struct End {
    /// Keeps the mapping alive; `data` and `hdr` point into it (copied here so the fast path
    /// does not chase the `Arc`).
    mem: Arc<RingMem>,
    data: Data,
    hdr: NonNull<RingHeader>,
    policy: Cell<WaitPolicy>,
    broken: Cell<Option<DisconnectReason>>,
    /// The peer side's `owner` word as last read, and its presence slot looked up (see
    /// `peer_owner_alive`). Private; starts as "no owner", which `resolve` maps to `Unknown`.
    seen_owner: Cell<u64>,
    seen_slot: Cell<presence::Resolved>,
}

// SAFETY: `hdr` points into the mapping that `mem` keeps alive; the header is atomics only.
// An end is `Send` (one thread at a time uses it), not `Sync` (its `Cell`s).
unsafe impl Send for End {}

impl End {
    fn new(mem: &Arc<RingMem>) -> End {
        End {
            mem: mem.clone(),
            data: mem.data,
            hdr: mem.hdr,
            policy: Cell::new(WaitPolicy::default()),
            broken: Cell::new(None),
            seen_owner: Cell::new(0),
            seen_slot: Cell::new(presence::resolve(PresenceRef::NONE)),
        }
    }

    #[inline]
    fn hdr(&self) -> &RingHeader {
        // SAFETY: `hdr` points into the mapping owned by `mem`, initialised in `ring`.
        unsafe { self.hdr.as_ref() }
    }

    pub(crate) fn mem(&self) -> &Arc<RingMem> {
        &self.mem
    }

    pub(crate) fn max_message_len(&self) -> usize {
        max_message_len(self.data.cap())
    }

    /// Chooses how this end waits.
    pub fn set_policy(&self, p: WaitPolicy) {
        self.policy.set(p);
    }

    pub(crate) fn policy(&self) -> WaitPolicy {
        self.policy.get()
    }

    /// Why this end gave up on the ring, if it did.
    pub(crate) fn broken(&self) -> Option<DisconnectReason> {
        self.broken.get()
    }

    /// Whether the owner of `peer` (the other side's state) is alive: `SideState::owner_alive`,
    /// with the lookup of the owner's presence slot cached. On every message: one load of the
    /// `owner` word and, while it holds the value seen last time, two loads of the slot we
    /// looked up then (the same answer `presence::check` gives: the lookup is a pure function
    /// of the value, computed in this process). Any change, and any death seen, takes the full
    /// path, which re-reads `owner` to tell a hand-over from a death.
    #[inline]
    fn peer_owner_alive(&self, peer: &SideState) -> bool {
        if peer.owner.load(Ordering::SeqCst) == self.seen_owner.get()
            && self.seen_slot.get().check() == Liveness::Alive
        {
            return true;
        }
        self.peer_owner_alive_slow(peer)
    }

    #[cold]
    #[inline(never)]
    fn peer_owner_alive_slow(&self, peer: &SideState) -> bool {
        let alive = peer.owner_alive();
        if alive {
            let o = peer.owner.load(Ordering::SeqCst);
            self.seen_owner.set(o);
            self.seen_slot.set(presence::resolve(PresenceRef(o)));
        }
        alive
    }
}

impl std::ops::Deref for Producer {
    type Target = End;
    #[inline]
    fn deref(&self) -> &End {
        &self.end
    }
}

impl std::ops::Deref for Consumer {
    type Target = End;
    #[inline]
    fn deref(&self) -> &End {
        &self.end
    }
}

impl Producer {
    /// Free bytes as far as we know, after refreshing the consumer's position if `need` does not
    /// fit. `Err` if the position read from shared memory is impossible.
    #[inline]
    fn room(&self, need: usize) -> Result<bool, DisconnectReason> {
        let cap = self.data.cap() as u64;
        let tail = self.tail.get();
        // `need` already includes the 8 bytes kept free after the last record.
        if tail - self.head_seen.get() + need as u64 <= cap {
            return Ok(true);
        }
        // Acquire: pairs with the consumer's Release store of `head` in `release`, so its reads
        // of the records it consumed are done before we overwrite them.
        let head = self.hdr().head.load(Ordering::Acquire);
        if !head.is_multiple_of(8) || head < self.head_seen.get() || head > tail {
            self.broken.set(Some(DisconnectReason::Corrupted));
            return Err(DisconnectReason::Corrupted);
        }
        self.head_seen.set(head);
        Ok(tail - head + need as u64 <= cap)
    }

    /// Reserves room for a `len`-byte message without blocking.
    #[inline]
    pub fn try_reserve(&self, len: usize) -> Result<Reservation<'_>, RingError> {
        if let Some(r) = self.broken.get() {
            return Err(RingError::Disconnected(r));
        }
        let cap = self.data.cap();
        let max = max_message_len(cap);
        if len > max {
            return Err(RingError::TooLarge { len, max });
        }
        // Liveness first, then the close flag: an owner that closes and then exits (the usual
        // order) is reported as having closed, whichever of the two we happen to see first.
        let alive = self.peer_alive();
        let closed = self.hdr().rx.closed.load(Ordering::SeqCst);
        if closed != OPEN {
            return Err(RingError::Disconnected(close_reason(closed)));
        }
        if !alive {
            return Err(RingError::Disconnected(DisconnectReason::PeerDied));
        }
        let rec = record_size(len);
        let tail = self.tail.get();
        let idx = (tail as usize) & (cap - 1);
        let to_end = cap - idx;
        let (rec_idx, pad, used) = if rec <= to_end {
            (idx, None, rec)
        } else {
            (0, Some(idx), to_end + rec)
        };
        match self.room(used + HDR) {
            Ok(true) => {
                // The caller may write anything into the reservation and then drop it: the
                // slot cleared ahead may not be clear any more.
                self.zeroed_slot.set(u64::MAX);
                Ok(Reservation {
                    p: self,
                    rec: rec_idx,
                    len,
                    pad,
                    new_tail: tail + used as u64,
                })
            }
            Ok(false) => Err(RingError::WouldBlock),
            Err(r) => Err(RingError::Disconnected(r)),
        }
    }

    /// The fast path of fixed-size messages: if a `len`-byte record fits before the end of
    /// the data area and there is room, copies `src` in, commits and returns `true`. Otherwise
    /// (wrap-around, full, closed, broken) returns `false` having changed nothing; the caller
    /// takes the general path, which pads, waits and reports.
    ///
    /// # Safety
    /// `src` must be readable for `len` bytes, and `len <= max_message_len(cap)` (a typed
    /// channel's ring is sized so that its message always is).
    #[inline(always)]
    pub(crate) unsafe fn try_push_contiguous(&self, src: *const u8, len: usize) -> bool {
        // Everything read into locals first: the `Cell`s in `self` may alias the shared stores
        // below as far as the compiler knows, and would be re-read after each.
        let data = self.data;
        let fast_end = self.fast_end.get();
        let tail = self.tail.get();
        debug_assert!(len <= max_message_len(data.cap()));
        let rec = record_size(len) as u64;
        let end = tail + rec;
        if end > fast_end {
            return self.refresh_fast_end(end) && self.push_after_refresh(src, len);
        }
        if self.broken.get().is_some()
            || self.hdr().rx.closed.load(Ordering::Relaxed) != OPEN
            || !self.peer_alive()
        {
            return false;
        }
        let idx = (tail as usize) & (data.cap() - 1);
        // SAFETY: `end <= fast_end <= end of tail's lap`, so `idx + HDR + len <= cap`: the
        // payload is inside the data area; it is free space (`fast_end <= head_seen + cap - HDR`);
        // `src` is readable for `len` bytes (caller).
        unsafe { data.write_raw(idx + HDR, src, len) };
        // As in `commit`: the following header must read "empty" before the record is visible.
        // It does already if we cleared it ahead of time (below, one message ago).
        if end != self.zeroed_slot.get() {
            data.clear_header((end as usize) & (data.cap() - 1));
        }
        // Release: pairs with the consumer's Acquire load of this header.
        data.header(idx)
            .store(KIND_MSG << 32 | len as u64, Ordering::Release);
        self.tail.set(end);
        self.notify_consumer();
        // Clear the header that will follow the *next* record of this size, if that slot is
        // free (`next <= fast_end` implies `next + HDR <= head_seen + cap`: what it held in the
        // previous lap has been consumed). Stores become visible in order, so clearing it at
        // the next commit, when it lies in a cache line the consumer still holds, would hold
        // that commit back by a cross-core ownership transfer; done one message early, the
        // transfer is off the critical path. Ordered before the next commit by its Release
        // store.
        let next = end + rec;
        if next <= fast_end {
            data.clear_header((next as usize) & (data.cap() - 1));
            self.zeroed_slot.set(next);
        }
        true
    }

    /// `try_push_contiguous` once more after `refresh_fast_end` made room (out of line: the
    /// fast path stays small).
    #[cold]
    #[inline(never)]
    fn push_after_refresh(&self, src: *const u8, len: usize) -> bool {
        // SAFETY: forwarded from our caller's contract. The retry takes the fast branch: the
        // record fits below the new `fast_end`.
        unsafe { self.try_push_contiguous(src, len) }
    }

    /// Recomputes `fast_end` (reading the consumer's position) and says whether a record
    /// ending at `end` now fits without wrapping. `false` also for a corrupt position (the
    /// general path reports it).
    #[cold]
    #[inline(never)]
    fn refresh_fast_end(&self, end: u64) -> bool {
        let cap = self.data.cap() as u64;
        let tail = self.tail.get();
        let lap_end = (tail | (cap - 1)) + 1;
        // `room` re-reads the consumer's position only if the record (and the 8 bytes kept
        // free after it) does not fit in what we last saw.
        if end > lap_end || !matches!(self.room((end - tail) as usize + HDR), Ok(true)) {
            return false;
        }
        let fast_end = lap_end.min(self.head_seen.get() + cap - HDR as u64);
        self.fast_end.set(fast_end);
        end <= fast_end
    }

    /// Makes the header slot at position `pos` read "empty", unless it is known to already.
    #[inline]
    fn clear_slot(&self, pos: u64) {
        if pos != self.zeroed_slot.get() {
            self.data
                .clear_header((pos as usize) & (self.data.cap() - 1));
        }
    }

    /// Reserves room, waiting per the policy until `deadline` (`None`: forever).
    #[inline]
    pub(crate) fn reserve(
        &self,
        len: usize,
        deadline: Option<&Deadline>,
    ) -> Result<Reservation<'_>, RingError> {
        match self.try_reserve(len) {
            Err(RingError::WouldBlock) => {}
            other => return other,
        }
        self.wait_for_room(len, deadline)?;
        self.try_reserve(len)
    }

    #[cold]
    fn wait_for_room(&self, len: usize, deadline: Option<&Deadline>) -> Result<(), RingError> {
        let hdr = self.hdr();
        let policy = wait::effective_policy(&hdr.rx, self.policy.get());
        wait::wait_until(&hdr.tx, &hdr.rx, policy, deadline, || {
            match self.try_reserve(len) {
                Err(RingError::WouldBlock) => Ok(false),
                Err(e) => Err(e),
                Ok(_) => Ok(true),
            }
        })
        .map_err(|e| refine_close(e, &hdr.rx))
    }

    /// This end's shared state and the peer's (for `Select`).
    pub(crate) fn sides(&self) -> (&SideState, &SideState) {
        (&self.hdr().tx, &self.hdr().rx)
    }

    /// Whether a `len`-byte send would not block: room, or a send that fails at once
    /// (disconnected, too large). Reserves nothing.
    pub(crate) fn send_ready(&self, len: usize) -> bool {
        !matches!(self.try_reserve(len), Err(RingError::WouldBlock))
    }

    /// Whether the consumer side's owner is alive: a word in the presence table, read on every
    /// send (a load of a line that changes only when a process dies), so that a send never
    /// succeeds after the receiver's death has been observed.
    #[inline]
    pub(crate) fn peer_alive(&self) -> bool {
        self.end.peer_owner_alive(&self.hdr().rx)
    }

    /// Marks the producer side closed and wakes the consumer. `panicking`: the endpoint is
    /// dropped by unwinding, and the consumer reports `PeerPanicked` instead of `PeerDropped`.
    pub fn close(&self, panicking: bool) {
        let hdr = self.hdr();
        let v = if panicking { CLOSED_PANICKING } else { CLOSED };
        hdr.tx.closed.store(v, Ordering::SeqCst);
        // Dekker with the sleeper's `wait = 1; heavy barrier; check closed`.
        fence(Ordering::SeqCst);
        hdr.rx.wake_if_asleep();
    }

    #[inline]
    fn notify_consumer(&self) {
        let rx = &self.hdr().rx;
        // Dekker: our commit before our read of `wait`; pairs with the heavy barrier in the
        // consumer's `wait_for_message` (see `sync::barrier`).
        barrier::light();
        rx.wake_if_asleep();
    }
}

impl Reservation<'_> {
    /// Copies `src` (at most `len` bytes) to the start of the payload.
    pub fn write(&mut self, src: &[u8]) {
        let n = src.len().min(self.len);
        self.p.data.write(self.rec + HDR, &src[..n]);
    }

    /// Copies `n` bytes from `src` to the start of the payload (an untyped copy).
    ///
    /// # Safety
    /// `src` must be readable for `n` bytes, and `n <= self.len()`.
    #[inline]
    pub(crate) unsafe fn write_raw(&mut self, src: *const u8, n: usize) {
        debug_assert!(n <= self.len);
        // SAFETY: `n <= len` (caller; debug-asserted), so the copy stays in the reserved
        // payload; `src` is readable (caller).
        unsafe { self.p.data.write_raw(self.rec + HDR, src, n) }
    }

    /// The payload as a writable slice (native only: loom has no byte view).
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the payload lies inside the data area (`rec + HDR + len <= cap`, checked by
        // `try_reserve`), is reserved for us, and the consumer does not read it before commit.
        unsafe { std::slice::from_raw_parts_mut(self.p.data.ptr(self.rec + HDR), self.len) }
    }

    /// The payload as a slice (native only).
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`; shared access to bytes reserved for us.
        unsafe { std::slice::from_raw_parts(self.p.data.ptr(self.rec + HDR), self.len) }
    }

    /// Publishes the message.
    #[inline]
    pub fn commit(self) {
        let p = self.p;
        let data = &p.data;
        let cap = data.cap();
        // The slot after our record must read "empty" before the record becomes visible.
        p.clear_slot(self.new_tail);
        // Release: pairs with the consumer's Acquire load of this header in `try_read`; makes
        // the payload and the cleared next header visible first.
        data.header(self.rec)
            .store(KIND_MSG << 32 | self.len as u64, Ordering::Release);
        if let Some(pad) = self.pad {
            // Published last: the consumer reaches the record only through the padding.
            // Release: pairs with the consumer's Acquire load of this header in `try_read`,
            // which then finds the record (stored before) committed.
            data.header(pad)
                .store(KIND_PAD << 32 | (cap - pad - HDR) as u64, Ordering::Release);
        }
        p.tail.set(self.new_tail);
        p.notify_consumer();
    }
}

// ---------------------------------------------------------------------------------------------
// Consumer

/// The reading end of a ring. `Send`, not `Sync`.
pub struct Consumer {
    end: End,
    /// Our position. Private; published to `RingHeader::head` after each message.
    head: Cell<u64>,
    /// Whether to slip behind a streaming producer (see `ring::slip`).
    #[cfg(not(loom))]
    slip: slip::Slip,
}

/// A committed message, readable in place until dropped (which releases its space).
pub struct ReadGuard<'a> {
    c: &'a Consumer,
    /// Index of the payload.
    at: usize,
    len: usize,
    end: u64,
}

impl Consumer {
    /// Disconnects this side for good: its ring held something impossible.
    pub(crate) fn mark_corrupted(&self) {
        self.broken.set(Some(DisconnectReason::Corrupted));
    }

    fn corrupted(&self) -> RingError {
        self.broken.set(Some(DisconnectReason::Corrupted));
        RingError::Disconnected(DisconnectReason::Corrupted)
    }

    /// The next committed message, without blocking. `WouldBlock` when none is committed.
    #[inline]
    pub fn try_read(&self) -> Result<ReadGuard<'_>, RingError> {
        if let Some(r) = self.broken.get() {
            return Err(RingError::Disconnected(r));
        }
        let data = &self.data;
        let cap = data.cap();
        let mut skipped_pad = false;
        loop {
            let pos = self.head.get();
            let idx = (pos as usize) & (cap - 1);
            // Acquire: pairs with the producer's Release store in `commit`.
            let h = data.header(idx).load(Ordering::Acquire);
            if h == 0 {
                return Err(RingError::WouldBlock);
            }
            let len = (h & 0xffff_ffff) as usize;
            match h >> 32 {
                KIND_MSG => {
                    if len > max_message_len(cap) || record_size(len) > cap - idx {
                        return Err(self.corrupted());
                    }
                    return Ok(ReadGuard {
                        c: self,
                        at: idx + HDR,
                        len,
                        end: pos + record_size(len) as u64,
                    });
                }
                KIND_PAD if !skipped_pad && idx != 0 && len == cap - idx - HDR => {
                    skipped_pad = true;
                    // Published as a consumed message is: the producer may be asleep waiting
                    // for exactly this space, while our caller holds the next message.
                    self.release(pos + (cap - idx) as u64);
                }
                _ => return Err(self.corrupted()),
            }
        }
    }

    /// Frees everything before `end` for the producer (a consumed message, or a skipped
    /// padding record), and wakes it if it sleeps waiting for room.
    #[inline]
    fn release(&self, end: u64) {
        self.head.set(end);
        let hdr = self.hdr();
        // Release: pairs with the producer's Acquire load of `head` in `room`: our reads of the
        // payload happen before it reuses the space.
        hdr.head.store(end, Ordering::Release);
        // Dekker: `head` before our read of the producer's `wait`; pairs with the heavy
        // barrier in `wait_for_room` (see `sync::barrier`).
        barrier::light();
        hdr.tx.wake_if_asleep();
    }

    /// The fast path of a receive: the next record if it is a committed message that passes
    /// `try_read`'s checks (kind, length, bounds); `None` for anything else (empty, padding,
    /// a broken ring, a bad header), which the caller leaves to `try_read` / `read` to wait for,
    /// skip or report. Changes nothing.
    #[inline(always)]
    pub(crate) fn try_read_fast(&self) -> Option<ReadGuard<'_>> {
        let data = self.data;
        let cap = data.cap();
        let pos = self.head.get();
        let idx = (pos as usize) & (cap - 1);
        // Acquire: pairs with the producer's Release store in `commit` / `try_push_contiguous`.
        let h = data.header(idx).load(Ordering::Acquire);
        let len = (h & 0xffff_ffff) as usize;
        if h >> 32 != KIND_MSG
            || len > max_message_len(cap)
            || idx + record_size(len) > cap
            || self.broken.get().is_some()
        {
            return None;
        }
        Some(ReadGuard {
            c: self,
            at: idx + HDR,
            len,
            end: pos + record_size(len) as u64,
        })
    }

    /// The fast path of fixed-size messages: if the next record is a committed message of
    /// exactly `len` bytes, copies it to `dst`, releases it and returns `true`. Anything else
    /// (empty, padding, another length, a broken ring) returns `false` and changes nothing;
    /// the caller then takes the general path, which validates and reports.
    ///
    /// # Safety
    /// `dst` must be writable for `len` bytes, and `len <= max_message_len(cap)`.
    #[inline]
    pub(crate) unsafe fn try_pop_exact(&self, dst: *mut u8, len: usize) -> bool {
        let data = self.data;
        let pos = self.head.get();
        let idx = (pos as usize) & (data.cap() - 1);
        let rec = record_size(len);
        // Acquire: pairs with the producer's Release store in `commit` / `try_push_contiguous`.
        let h = data.header(idx).load(Ordering::Acquire);
        // The header is exactly the one a message of `len` bytes has, and the record lies
        // inside the data area (a header written anywhere else comes from a scribbling peer).
        // `len` is at most the maximum message length (caller), so the general path's length
        // check holds too.
        if h != (KIND_MSG << 32 | len as u64)
            || idx + rec > data.cap()
            || self.broken.get().is_some()
        {
            return false;
        }
        // SAFETY: the record lies inside the data area (`idx + rec <= cap`, checked above) and
        // is committed; `dst` is writable for `len` bytes (caller).
        unsafe { data.read_raw(idx + HDR, dst, len) };
        self.release(pos + rec as u64);
        true
    }

    /// Waits until the next record is committed (or the ring is closed, the peer dies, or the
    /// deadline passes); does not consume it.
    #[inline]
    pub(crate) fn wait_readable(&self, deadline: Option<&Deadline>) -> Result<(), RingError> {
        let data = &self.data;
        let idx = (self.head.get() as usize) & (data.cap() - 1);
        if data.header(idx).load(Ordering::Relaxed) != 0 {
            return Ok(());
        }
        self.wait_for_message(deadline)
    }

    /// The next message, waiting per the policy until `deadline` (`None`: forever).
    #[inline]
    pub(crate) fn read(&self, deadline: Option<&Deadline>) -> Result<ReadGuard<'_>, RingError> {
        match self.try_read() {
            Err(RingError::WouldBlock) => {}
            other => return other,
        }
        self.wait_for_message(deadline)?;
        self.try_read()
    }

    /// The first, tight phase of spinning: watch only the header the next message will
    /// commit, so a message is seen within a few nanoseconds of the producer's store (the full
    /// checks of `wait_for_message` cost tens of nanoseconds per round). Bounded to a couple of
    /// microseconds; the caller then does the full checks whatever happened.
    #[cfg(not(loom))]
    #[inline]
    fn poll_header(&self) -> bool {
        let data = &self.data;
        let word = data.header((self.head.get() as usize) & (data.cap() - 1));
        for _ in 0..TIGHT_POLLS {
            if word.load(Ordering::Relaxed) != 0 {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Having caught up with the producer and seen the next record arrive, maybe let it run
    /// ahead for a moment (`ring::slip`). Reads headers as hints only: the caller validates
    /// the record as always, and a scribbled header can at most make us slip or not.
    #[cfg(not(loom))]
    fn maybe_slip(&self) {
        if !self.slip.due() {
            return;
        }
        let idx = (self.head.get() as usize) & (self.data.cap() - 1);
        if self.committed_run(idx, 1) == 0 {
            return; // padding first (a wrap): not worth it
        }
        slip::pause(slip::SLIP);
        // A stream: the producer committed more than a short reply's worth behind it.
        let behind = self.committed_run(idx, 1 + slip::STREAM) - 1;
        self.slip.outcome(behind >= slip::STREAM);
    }

    /// How many committed messages follow one another from data index `idx` (8-aligned),
    /// counting at most `most` and following one padding record to index 0. The header after
    /// the last committed record reads 0 (`tail`'s header is always clear), so an honest
    /// producer's run ends there; whatever a scribbling one wrote, every header read lies
    /// inside the data area and the walk is bounded.
    #[cfg(not(loom))]
    fn committed_run(&self, mut idx: usize, most: u32) -> u32 {
        let data = &self.data;
        let cap = data.cap();
        let mut n = 0;
        // `most` messages, and one padding record on the way.
        for _ in 0..=most {
            if n == most {
                break;
            }
            let h = data.header(idx).load(Ordering::Relaxed);
            let len = (h & 0xffff_ffff) as usize;
            match h >> 32 {
                KIND_MSG if len <= max_message_len(cap) && idx + record_size(len) <= cap => {
                    n += 1;
                    idx = (idx + record_size(len)) & (cap - 1);
                }
                KIND_PAD if idx != 0 => idx = 0,
                _ => break,
            }
        }
        n
    }

    #[cold]
    fn wait_for_message(&self, deadline: Option<&Deadline>) -> Result<(), RingError> {
        let hdr = self.hdr();
        let policy = wait::effective_policy(&hdr.tx, self.policy.get());
        #[cfg(not(loom))]
        if policy != WaitPolicy::Block && self.poll_header() {
            self.maybe_slip();
            return Ok(()); // the caller's `try_read` validates it
        }
        wait::wait_until(&hdr.rx, &hdr.tx, policy, deadline, || {
            match self.try_read() {
                Err(RingError::WouldBlock) => Ok(false),
                Err(e) => Err(e),
                Ok(g) => {
                    std::mem::forget(g); // peeked only: the message stays for the caller
                    Ok(true)
                }
            }
        })
        .map_err(|e| refine_close(e, &hdr.tx))
    }

    /// Marks the consumer side closed and wakes the producer; `panicking` as in
    /// [`Producer::close`].
    pub fn close(&self, panicking: bool) {
        let hdr = self.hdr();
        let v = if panicking { CLOSED_PANICKING } else { CLOSED };
        hdr.rx.closed.store(v, Ordering::SeqCst);
        // Dekker with the sleeper's `wait = 1; heavy barrier; check closed`.
        fence(Ordering::SeqCst);
        hdr.tx.wake_if_asleep();
    }

    /// This end's shared state and the peer's (for `Select`).
    pub(crate) fn sides(&self) -> (&SideState, &SideState) {
        (&self.hdr().rx, &self.hdr().tx)
    }

    /// A cheap first look for `Select`'s spinning: whether the next header is written. One
    /// load; no validation, no close or liveness check (`recv_ready` does all three, and
    /// `Select` runs it at its checkpoints and before sleeping).
    #[inline]
    pub(crate) fn recv_hint(&self) -> bool {
        let idx = (self.head.get() as usize) & (self.data.cap() - 1);
        self.broken.get().is_some() || self.data.header(idx).load(Ordering::Relaxed) != 0
    }

    /// Whether a receive would not block: a committed message waits (padding skipped), or the
    /// ring is disconnected (closed after the last message, peer dead, corrupt). Consumes
    /// nothing but padding.
    pub(crate) fn recv_ready(&self) -> bool {
        match self.try_read() {
            Ok(g) => {
                std::mem::forget(g); // peeked only: the message stays for the caller
                true
            }
            Err(RingError::WouldBlock) => self.peer_closed() || !self.peer_alive(),
            Err(_) => true,
        }
    }

    /// Whether the producer side's owner is alive (see [`SideState::owner_alive`]).
    pub(crate) fn peer_alive(&self) -> bool {
        self.end.peer_owner_alive(&self.hdr().tx)
    }

    /// Whether the producer closed its side.
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_close_reason().is_some()
    }

    /// Whether (and why) the producer is gone for good: it closed its side (`PeerDropped`,
    /// `PeerPanicked`) or its process died (`PeerDied`). Liveness is read before the close
    /// flag, so an owner that closed and then exited is reported as having closed.
    pub(crate) fn peer_gone(&self) -> Option<DisconnectReason> {
        let alive = self.peer_alive();
        self.peer_close_reason()
            .or((!alive).then_some(DisconnectReason::PeerDied))
    }

    /// Why the producer closed its side (`PeerDropped` or `PeerPanicked`), if it did.
    pub(crate) fn peer_close_reason(&self) -> Option<DisconnectReason> {
        match self.hdr().tx.closed.load(Ordering::SeqCst) {
            OPEN => None,
            v => Some(close_reason(v)),
        }
    }
}

impl ReadGuard<'_> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Copies the payload's first `dst.len()` bytes out.
    #[cfg_attr(not(loom), allow(dead_code))] // the loom models read through it
    pub fn read_into(&self, dst: &mut [u8]) {
        let n = dst.len().min(self.len);
        self.c.data.read(self.at, &mut dst[..n]);
    }

    /// Copies `n` payload bytes to `dst` (an untyped copy).
    ///
    /// # Safety
    /// `dst` must be writable for `n` bytes, and `n <= self.len()`.
    #[inline]
    pub(crate) unsafe fn read_raw(&self, dst: *mut u8, n: usize) {
        debug_assert!(n <= self.len);
        // SAFETY: `n <= len` (caller; debug-asserted), so the copy stays in the validated
        // payload; `dst` is writable (caller).
        unsafe { self.c.data.read_raw(self.at, dst, n) }
    }

    /// The payload in place (native only).
    ///
    /// The slice lies in memory the peer process can write at any time: its bytes may change
    /// while it is held (a hostile or buggy peer need not wait for the release). Callers only
    /// copy it out or lend it as bytes; copy before parsing or validating anything.
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: the record was validated to lie inside the data area, which stays mapped while
        // `self` borrows the consumer; a well-behaved producer does not write it until we release
        // it (publish a `head` past it), and bytes a hostile one writes are still `u8`s.
        unsafe { std::slice::from_raw_parts(self.c.data.ptr(self.at), self.len) }
    }
}

impl Drop for ReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.c.release(self.end);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn cap_for_messages_holds_the_count_and_the_largest_message() {
        for len in [0usize, 1, 7, 8, 9, 63, 64, 100, 4096] {
            for n in [1usize, 2, 3, 15, 16, 100, 1000] {
                let cap = cap_for_messages(n, len).unwrap();
                assert!(cap.is_power_of_two() && cap >= MIN_CAP);
                // n records plus a padding record's worst waste plus the kept-free header.
                assert!(
                    (n + 1) * record_size(len) + HDR <= cap,
                    "n={n} len={len} cap={cap}"
                );
                assert!(len <= max_message_len(cap));
            }
        }
    }

    #[test]
    fn overflowing_capacities_are_errors() {
        assert!(matches!(
            cap_for_messages(usize::MAX, 8),
            Err(Error::SizeOverflow)
        ));
        assert!(matches!(
            cap_for_messages(1, usize::MAX - 4),
            Err(Error::SizeOverflow)
        ));
        assert!(ring(48).is_err() && ring(100).is_err());
    }

    /// `maybe_slip` learns "streaming" only when at least `slip::STREAM` records follow the
    /// awaited one (counted through a wrap's padding), and a header scribbled with any value
    /// makes it read nothing outside the data area (the index checks in `Data::header` are
    /// debug assertions: a stray index panics here). Payloads are zero, so a walk that read a
    /// payload word as a header would count wrong; many laps, so an unmasked index would stray.
    #[test]
    fn a_slip_counts_the_records_behind_and_reads_only_inside_the_ring() {
        let (p, c) = ring(256).unwrap();
        let send = |n: u32| {
            for _ in 0..n {
                let mut r = p.try_reserve(16).unwrap();
                r.write(&[0; 16]);
                r.commit();
            }
        };
        let make_due = || {
            c.slip.outcome(true);
            while !c.slip.due() {}
        };
        for round in 0..200u32 {
            let behind = round % (slip::STREAM + 2);
            send(1 + behind);
            make_due();
            c.maybe_slip();
            assert_eq!(
                c.slip.due(),
                behind >= slip::STREAM,
                "round {round}: {behind} records behind the awaited one (head {})",
                c.head.get()
            );
            while let Ok(g) = c.try_read() {
                drop(g);
            }
        }
        assert!(c.head.get() > 20 * 256, "the test should run many laps");
        // A scribbling producer: every header value, at every position, is only a hint.
        for h in [
            u64::MAX,
            KIND_MSG << 32 | 0xffff_ffff,
            KIND_MSG << 32 | (max_message_len(256) as u64),
            KIND_MSG << 32 | 8,
            KIND_PAD << 32 | 8,
            KIND_PAD << 32,
            KIND_MSG << 32 | 200,
        ] {
            for pos in (0..256u64).step_by(8) {
                for at in (0..256).step_by(8) {
                    c.data.header(at).store(h, Ordering::Relaxed);
                }
                c.head.set(pos + 256 * 1000);
                make_due();
                c.maybe_slip();
            }
        }
    }

    #[test]
    fn records_are_padded_to_eight_bytes() {
        assert_eq!(record_size(0), 8);
        assert_eq!(record_size(1), 16);
        assert_eq!(record_size(8), 16);
        assert_eq!(record_size(9), 24);
        assert_eq!(max_message_len(64), 16);
    }

    /// The fast paths (`try_push_contiguous`, `try_read_fast`, `try_pop_exact`) mixed with the
    /// general ones, with lengths that change from message to message, over many laps of a
    /// small ring: the header cleared ahead by a fast push for a next record of the same size
    /// must never be trusted once a record of another size covers it.
    #[test]
    fn fast_paths_with_mixed_lengths_keep_content_and_order() {
        let (p, c) = ring(256).unwrap();
        let max = max_message_len(256);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: u64| rng.next(n);
        let (mut sent, mut got, mut turn) = (0u64, 0u64, 0u64);
        let mut queue = std::collections::VecDeque::new();
        let mut out = vec![0u8; max];
        for round in 0.. {
            if got >= 200_000 {
                break;
            }
            assert!(
                round < 2_000_000,
                "no progress: {got} received, {sent} sent"
            );
            // Produce a burst, mostly of one length, sometimes another.
            for _ in 0..next(6) {
                let len = if next(4) == 0 {
                    next(max as u64 + 1) as usize
                } else {
                    24
                };
                let msg: Vec<u8> = (0..len).map(|k| (sent as usize + k) as u8).collect();
                // SAFETY: `msg` is readable for `len <= max` bytes.
                let fast = unsafe { p.try_push_contiguous(msg.as_ptr(), len) };
                if !fast {
                    match p.try_reserve(len) {
                        Ok(mut r) => {
                            r.write(&msg);
                            r.commit();
                        }
                        Err(RingError::WouldBlock) => break,
                        Err(e) => panic!("{e:?}"),
                    }
                }
                queue.push_back(msg);
                sent += 1;
            }
            // Consume some, by each of the three read paths in turn.
            for _ in 0..next(6) {
                let Some(want) = queue.front() else {
                    // Caught up: the header after the last record must read empty, whatever
                    // the slot held in an earlier lap.
                    assert!(c.try_read_fast().is_none(), "phantom message after {got}");
                    assert!(matches!(c.try_read(), Err(RingError::WouldBlock)));
                    break;
                };
                turn += 1;
                let Some(len) = read_by(&c, turn, &mut out, want.len()) else {
                    continue;
                };
                assert_eq!(&out[..len], &want[..], "message {got}");
                queue.pop_front();
                got += 1;
            }
        }
        assert!(c.broken().is_none() && p.broken().is_none());
    }

    /// Takes the next message into `out` by one of the three read paths (`way % 3`: the fast
    /// read, the exact pop of a `want`-byte message, the validating read); its length, or
    /// `None` if that path took nothing.
    fn read_by(c: &Consumer, way: u64, out: &mut [u8], want: usize) -> Option<usize> {
        match way % 3 {
            0 => c.try_read_fast().map(|g| {
                g.read_into(&mut out[..g.len()]);
                g.len()
            }),
            // SAFETY: `out` is writable for `out.len()` bytes, and `want <= out.len()`, the
            // ring's largest message (every caller sizes `out` so).
            1 if want <= out.len() && unsafe { c.try_pop_exact(out.as_mut_ptr(), want) } => {
                Some(want)
            }
            1 => None,
            _ => c.try_read().ok().map(|g| {
                g.read_into(&mut out[..g.len()]);
                g.len()
            }),
        }
    }

    /// A small xorshift generator for the tests here.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    /// Review 3, attack 1: a scribbling consumer. It stores any `head` it likes (valid-looking
    /// ones that jump ahead, misaligned ones, ones beyond `tail`, ones that go back) and fills
    /// the whole data area with random bytes (fake headers included) before every push, while
    /// the producer pushes random lengths through the fast path and the general one (commits
    /// and dropped reservations). Every byte the producer changes must lie in free space as far
    /// as the consumer ever *validly* said (`[tail, head_seen + cap)`, `head_seen` being what
    /// the producer accepted from shared memory), `head_seen` stays a multiple of 8, monotone,
    /// `<= tail`, with `tail - head_seen <= cap - 8`; once the producer has seen an impossible
    /// head it is broken for good and writes nothing more; nothing loops.
    #[test]
    fn review3_forged_heads_keep_producer_writes_in_free_space() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut fast_ok = 0u64;
        let mut broken_rings = 0u64;
        for cap in [64usize, 128, 256, 1024] {
            for _ring in 0..40 {
                let (p, _c) = ring(cap).unwrap();
                let max = max_message_len(cap) as u64;
                let base = p.data.ptr(0);
                let mut snap = vec![0u8; cap];
                let mut last_seen = 0u64;
                for _step in 0..2_000 {
                    let tail = p.tail.get();
                    // The consumer's move.
                    match rng.next(10) {
                        0..=3 => {
                            // A valid-looking jump forward, at most to `tail`.
                            let h = p.head_seen.get();
                            let to = h + 8 * rng.next((tail - h) / 8 + 1);
                            p.hdr().head.store(to, Ordering::Release);
                        }
                        4 => p.hdr().head.store(tail, Ordering::Release),
                        5 if rng.next(20) == 0 => {
                            // Something impossible.
                            let bad = match rng.next(4) {
                                0 => tail + 8 * (1 + rng.next(64)),
                                1 => p.head_seen.get().wrapping_sub(8),
                                2 => tail | (1 + rng.next(7)),
                                _ => rng.next(u64::MAX),
                            };
                            p.hdr().head.store(bad, Ordering::Release);
                        }
                        _ => {}
                    }
                    for i in 0..cap {
                        // SAFETY: `i < cap`, inside the data area; no other thread uses it.
                        unsafe { *base.add(i) = rng.next(256) as u8 };
                    }
                    // Sometimes fake headers of plausible messages everywhere.
                    if rng.next(3) == 0 {
                        for i in (0..cap).step_by(8) {
                            let l = rng.next(max + 1);
                            p.data
                                .header(i)
                                .store(KIND_MSG << 32 | l, Ordering::Relaxed);
                        }
                    }
                    // SAFETY: `cap` bytes of the data area into `snap`.
                    unsafe { std::ptr::copy_nonoverlapping(base, snap.as_mut_ptr(), cap) };
                    let was_broken = p.broken().is_some();
                    let len = if rng.next(2) == 0 {
                        24.min(max)
                    } else {
                        rng.next(max + 1)
                    } as usize;
                    let msg: Vec<u8> = (0..len).map(|_| rng.next(256) as u8).collect();
                    match rng.next(4) {
                        0 | 1 => {
                            // SAFETY: `msg` is readable for `len <= max` bytes.
                            if unsafe { p.try_push_contiguous(msg.as_ptr(), len) } {
                                assert!(!was_broken, "a broken producer pushed");
                                fast_ok += 1;
                            }
                        }
                        2 => {
                            if let Ok(mut r) = p.try_reserve(len) {
                                r.write(&msg);
                                r.commit();
                            }
                        }
                        _ => {
                            if let Ok(mut r) = p.try_reserve(len) {
                                r.as_mut_slice().fill(0x11);
                                // Dropped here without a commit.
                            }
                        }
                    }
                    let seen = p.head_seen.get();
                    let new_tail = p.tail.get();
                    assert!(seen.is_multiple_of(8) && seen >= last_seen && seen <= new_tail);
                    assert!(
                        new_tail - seen <= (cap - HDR) as u64,
                        "tail {new_tail} seen {seen}"
                    );
                    last_seen = seen;
                    for (i, &was) in snap.iter().enumerate() {
                        // SAFETY: as above.
                        let now = unsafe { *base.add(i) };
                        if now == was {
                            continue;
                        }
                        assert!(!was_broken, "a broken producer wrote index {i}");
                        let pos = tail + ((i as u64).wrapping_sub(tail) & (cap as u64 - 1));
                        assert!(
                            pos < seen + cap as u64,
                            "cap {cap}: wrote index {i} (position {pos}) with tail {tail}, \
                             head seen {seen}: not free space"
                        );
                    }
                    if p.broken().is_some() {
                        broken_rings += 1;
                        break;
                    }
                }
            }
        }
        assert!(fast_ok > 10_000, "the fast path ran {fast_ok} times only");
        assert!(
            broken_rings > 10,
            "impossible heads caught {broken_rings} times only"
        );
    }

    /// Review 3, attack 2: a scribbling producer. For every header word from a set of
    /// boundary values (every kind, lengths around the maximum, around the end of the data
    /// area, and beyond 32 bits) at every index, the fast receive paths accept exactly what
    /// the general, validating `try_read` accepts as a message (never a record the general
    /// path reports as corrupt), with the same bounds, and never a record reaching past the
    /// end of the data area.
    #[test]
    fn review3_fast_reads_accept_nothing_try_read_rejects() {
        for cap in [64usize, 128, 4096] {
            let (_p, c) = ring(cap).unwrap();
            let max = max_message_len(cap) as u64;
            let mut lens: Vec<u64> = vec![0, 1, 7, 8, 9, 15, 16, 17, 0xffff_ffff, 0x8000_0000];
            for d in 0..=24u64 {
                lens.push(max.saturating_sub(d));
                lens.push(max + d);
                lens.push((cap as u64).saturating_sub(d));
            }
            let mut out = vec![0u8; max as usize];
            for lap in [0u64, 1, 1 << 40] {
                for idx in (0..cap).step_by(8) {
                    for kind in [0u64, 1, 2, 3, 0xffff_ffff] {
                        for &len in &lens {
                            let h = kind << 32 | (len & 0xffff_ffff);
                            let pos = lap * cap as u64 + idx as u64;
                            c.data.header(idx).store(h, Ordering::Relaxed);
                            c.head.set(pos);
                            c.broken.set(None);
                            let slow = match c.try_read() {
                                Ok(g) => {
                                    let r = Some((g.at, g.len, g.end));
                                    std::mem::forget(g);
                                    r
                                }
                                Err(_) => None,
                            };
                            c.head.set(pos);
                            c.broken.set(None);
                            let fast = c.try_read_fast().map(|g| {
                                let r = (g.at, g.len, g.end);
                                std::mem::forget(g);
                                r
                            });
                            if let Some((at, l, end)) = fast {
                                assert!(at + l <= cap, "fast read past the end: {h:#x} at {idx}");
                                assert_eq!(end, pos + record_size(l) as u64);
                                assert_eq!(Some((at, l, end)), slow, "{h:#x} at {idx}");
                            } else if h >> 32 == KIND_MSG {
                                assert_eq!(slow, None, "{h:#x} at {idx}: fast refused a message");
                            }
                            for want in [len as usize, 8, 24] {
                                if want > max as usize {
                                    continue;
                                }
                                c.head.set(pos);
                                c.broken.set(None);
                                // SAFETY: `out` is writable for `max >= want` bytes.
                                let took = unsafe { c.try_pop_exact(out.as_mut_ptr(), want) };
                                if took {
                                    assert_eq!(slow.map(|s| s.1), Some(want), "{h:#x} at {idx}");
                                    assert_eq!(c.head.get(), pos + record_size(want) as u64);
                                } else {
                                    assert_eq!(c.head.get(), pos, "a refused pop moved the head");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Review 3, attack 3: stale headers. The producer mixes fast pushes of varying lengths,
    /// general commits (some wrapping), and reservations it fills with *plausible headers*
    /// (`KIND_MSG | len` for the lengths in use, at every 8-byte offset) and then drops
    /// without committing, plus `try_reserve(0)` probes as `Select`/`disconnect_reason` make;
    /// the consumer reads by all three paths. The consumer must get exactly the committed
    /// messages in order, and nothing when caught up: a header left over from a dropped
    /// reservation, an earlier lap or a clear-ahead slot must never read as a message.
    #[test]
    fn review3_dropped_reservations_full_of_fake_headers_make_no_phantoms() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for cap in [64usize, 128, 256] {
            let (p, c) = ring(cap).unwrap();
            let max = max_message_len(cap);
            let (mut sent, mut got) = (0u64, 0u64);
            let mut queue = std::collections::VecDeque::new();
            let mut out = vec![0u8; max];
            let lens = [0usize, 8, 16, max, 24.min(max), 5];
            for _round in 0..300_000 {
                for _ in 0..rng.next(5) {
                    let len = lens[rng.next(lens.len() as u64) as usize];
                    let msg: Vec<u8> = (0..len)
                        .map(|k| (sent as usize * 7 + k + 1) as u8)
                        .collect();
                    let done = match rng.next(6) {
                        0..=2 => {
                            // SAFETY: `msg` is readable for `len <= max` bytes.
                            unsafe { p.try_push_contiguous(msg.as_ptr(), len) }
                        }
                        3 => match p.try_reserve(len) {
                            Ok(mut r) => {
                                r.write(&msg);
                                r.commit();
                                true
                            }
                            Err(RingError::WouldBlock) => false,
                            Err(e) => panic!("{e:?}"),
                        },
                        4 => {
                            // A grant filled with fake headers, dropped.
                            let fake = lens[rng.next(lens.len() as u64) as usize];
                            if let Ok(mut r) = p.try_reserve(rng.next(max as u64 + 1) as usize) {
                                let word = (KIND_MSG << 32 | fake as u64).to_ne_bytes();
                                for (k, b) in r.as_mut_slice().iter_mut().enumerate() {
                                    *b = word[k % 8];
                                }
                            }
                            false
                        }
                        _ => {
                            let _ = p.try_reserve(0);
                            false
                        }
                    };
                    if done {
                        queue.push_back(msg);
                        sent += 1;
                    }
                }
                for _ in 0..rng.next(5) {
                    let Some(want) = queue.front() else {
                        assert!(c.try_read_fast().is_none(), "phantom (fast) after {got}");
                        for l in lens {
                            // SAFETY: `out` is writable for `max >= l` bytes.
                            let took = unsafe { c.try_pop_exact(out.as_mut_ptr(), l) };
                            assert!(!took, "phantom pop");
                        }
                        assert!(
                            matches!(c.try_read(), Err(RingError::WouldBlock)),
                            "phantom"
                        );
                        break;
                    };
                    let Some(n) = read_by(&c, rng.next(3), &mut out, want.len()) else {
                        continue;
                    };
                    assert_eq!(&out[..n], &want[..], "cap {cap}: message {got}");
                    queue.pop_front();
                    got += 1;
                }
            }
            assert!(got > 10_000, "cap {cap}: only {got} messages");
            assert!(c.broken().is_none() && p.broken().is_none());
        }
    }

    #[test]
    fn wrap_writes_a_padding_record_and_keeps_order() {
        let (p, c) = ring(64).unwrap();
        let mut out = [0u8; 16];
        // 24-byte records at 0 and 24; the third (at 48) does not fit before 64: padding.
        for round in 0u8..10 {
            let msg = [round; 16];
            let mut r = p.try_reserve(16).unwrap();
            r.write(&msg);
            r.commit();
            let g = c.try_read().unwrap();
            assert_eq!(g.len(), 16);
            g.read_into(&mut out);
            drop(g);
            assert_eq!(out, msg);
        }
        assert!(matches!(c.try_read(), Err(RingError::WouldBlock)));
    }
}
