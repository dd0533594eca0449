//! A worker's life, and the shared region it publishes in.
//!
//! Shared region (one per pool; zero-filled, so a fresh slot reads `current = 0`, which
//! `spawn` replaces with `IDLE` before each fork):
//!
//! ```text
//! offset 0                 Header     { waiting: u32 }                 (64 B, owner writes)
//! offset 64 + 128 k        WorkerSlot { current: u64, started: u64,    (128 B each, worker k
//!                                       pending: u64, flushes: u64,      writes; the owner
//!                                       (pad to 64),                     CASes `current`)
//!                                       cost: u64, cost_at: u64,
//!                                       cpu: u64 }
//! offset 64 + 128 n + S k  scratch k: [u8; S], S = SCRATCH             (worker k writes)
//! ```
//!
//! A worker runs the jobs it is sent one at a time, in dispatch order. Before it starts one it
//! publishes the job's id in `current` (Release); after it finishes one it appends the result
//! record to its scratch and publishes the scratch's length in `pending` (Release), before it
//! looks at the next job. So a result is committed per job, in shared memory, even while the
//! frame that will carry it is still being filled; the frame is only the way results travel
//! while the worker lives (and its commit wakes a sleeping owner). The frame's last job is the
//! exception: the frame is sent right after it, and that send is its commit (a copy in the
//! scratch would be cleared at once). See [`super::accounting`] for how the owner uses this
//! when a worker dies or is killed.

use super::*;

/// What the owner publishes to every worker (offset 0 of the pool's region).
#[repr(C, align(64))]
pub(super) struct Header {
    /// 1 while the owner sleeps (or is about to): workers send their results after each job
    /// instead of at the end of their batch.
    pub(super) waiting: AtomicU32,
}

// SAFETY: one atomic, valid for every bit pattern, no pointers.
unsafe impl crate::Shareable for Header {}

/// What worker `k` publishes about itself (offset `64 + 128 k`). Hints only: a compromised
/// worker can write anything here, and the owner never trusts more than "which in-flight job
/// had started" and "these bytes of the scratch hold results", which it validates.
///
/// Two cache lines: the worker writes the first (`current`, `pending`) at every job, the
/// second (dispatch's hints) once per batch. Dispatch reads the hints of a busy worker for
/// every batch it keeps on it; on one line with `current` each such read cost the worker a
/// cache miss at its next job.
#[repr(C, align(64))]
pub(super) struct WorkerSlot {
    /// The id of the job it started last; `IDLE` before its first; `KILLED` once the owner has
    /// claimed it for a timeout kill.
    pub(super) current: AtomicU64,
    /// When the job in `current` started (`CLOCK_MONOTONIC` ns; written with a job timeout).
    pub(super) started: AtomicU64,
    /// Bytes of result records in its scratch not yet sent (0 after each result frame).
    pub(super) pending: AtomicU64,
    /// Result frames sent: bumped before the scratch is written over (a sequence lock for
    /// the owner's reads of a live worker's scratch).
    pub(super) flushes: AtomicU64,
    /// Puts the hints below on a cache line of their own. Never read.
    _line: [AtomicU64; 4],
    /// Nanoseconds per job of its batches of more than one job, a moving average over about
    /// the last 8 (0: none yet). Dispatch reads it to keep tiny jobs on a busy worker (see
    /// `dispatch::keeper`); a lie there only moves jobs between workers, and a held batch
    /// waits at most `WAKE`.
    pub(super) cost: AtomicU64,
    /// When it measured `cost` (`CLOCK_MONOTONIC` ns): a worker that has not finished a batch
    /// for a while (stuck in a long job) is not kept busy with more.
    pub(super) cost_at: AtomicU64,
    /// The one CPU its affinity allows, plus one (0: more than one, or not known yet), as
    /// found when it started. Workers pinned to the same CPU cannot run in parallel.
    pub(super) cpu: AtomicU64,
}

// SAFETY: atomics only, valid for every bit pattern, no pointers.
unsafe impl crate::Shareable for WorkerSlot {}

impl WorkerSlot {
    /// A slot before its worker's first job.
    pub(super) const fn idle() -> WorkerSlot {
        WorkerSlot {
            current: AtomicU64::new(IDLE),
            started: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            _line: [const { AtomicU64::new(0) }; 4],
            cost: AtomicU64::new(0),
            cost_at: AtomicU64::new(0),
            cpu: AtomicU64::new(0),
        }
    }
}

const _: () = assert!(std::mem::size_of::<Header>() == 64);
const _: () = assert!(std::mem::size_of::<WorkerSlot>() == 128);

/// A worker's scratch: `SCRATCH` bytes of shared memory it alone writes (while it lives).
#[derive(Clone, Copy)]
pub(super) struct Scratch(*mut u8);

impl Scratch {
    /// Copies `src` to offset `at`. Only `worker_main` calls it, in its own worker.
    #[inline(always)]
    pub(super) fn write(self, at: usize, src: &[u8]) {
        if at.checked_add(src.len()).is_none_or(|end| end > SCRATCH) {
            return;
        }
        // SAFETY: `at + src.len() <= SCRATCH` (checked above) and the scratch is `SCRATCH`
        // bytes of the pool's region, mapped in this worker for its whole life; bytes, so any
        // concurrent scribble by another process only garbles data the owner validates.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.add(at), src.len()) };
    }

    /// A private copy of the first `len` bytes (`len` clamped to the scratch).
    pub(super) fn copy_out(self, len: usize, out: &mut Vec<u8>) {
        let len = len.min(SCRATCH);
        out.clear();
        out.resize(len, 0);
        // SAFETY: `len <= SCRATCH` bytes inside the pool's region, which the owner maps while
        // `Inner` lives; read into a private buffer, as the ring reads messages (whatever a
        // hostile process wrote there is only bytes, validated after the copy).
        unsafe { std::ptr::copy_nonoverlapping(self.0, out.as_mut_ptr(), len) };
    }
}

impl<J, R> Inner<J, R> {
    /// Worker `k`'s scratch (the only way to make a `Scratch`, so its pointer is always one).
    pub(super) fn scratch_of(&self, k: usize) -> Scratch {
        // Worker slots and scratches correspond one to one; `k < slots.len()`.
        let k = k.min(self.slots.len().saturating_sub(1));
        // SAFETY: the scratches are `slots.len()` consecutive `SCRATCH`-byte blocks of the
        // region from `self.scratch`, and `k` is a valid slot index (clamped above).
        Scratch(unsafe { self.scratch.add(k * SCRATCH) })
    }
}

/// What a worker uses of the pool.
pub(super) struct Lane<'a> {
    pub(super) jobs: &'a ByteReceiver,
    pub(super) results: &'a ByteSender,
    pub(super) header: &'a Header,
    pub(super) slot: &'a WorkerSlot,
    pub(super) scratch: Scratch,
}

impl Lane<'_> {
    /// Sends the results committed in `out` (and mirrored in the scratch) as one frame.
    /// `false` if the owner is gone.
    pub(super) fn flush(&self, out: &mut Vec<u8>) -> bool {
        if out.is_empty() {
            return true;
        }
        if self.results.send(out).is_err() {
            return false;
        }
        out.clear();
        // Release: pairs with the owner's Acquire loads of `pending`; if we die before this
        // store, the owner skips the records it already took through the ring.
        self.slot.pending.store(0, Ordering::Release);
        // The sequence lock's write side: the bump is ordered before the scratch writes that
        // follow (the Release fence), so an owner that copied any of them sees it changed.
        // Release: an owner that reads the new count (Acquire) then reads `pending` as 0 or
        // later, never the length of the records just sent, which the scratch writes that
        // follow overwrite (with Relaxed, a weakly ordered CPU could let it copy that old
        // length of a scratch being rewritten and find the count unchanged after the copy).
        let g = self.slot.flushes.load(Ordering::Relaxed);
        self.slot
            .flushes
            .store(g.wrapping_add(1), Ordering::Release);
        fence(Ordering::Release);
        true
    }

    /// Commits the result record that starts at `start` of `out` (its header still blank; its
    /// payload encoded after it): fills in the header, sends first what was there before it if
    /// the frame would be too large, mirrors the record in the scratch and publishes it.
    /// `fixed`: the payload size of every result, if the wire has one.
    /// Without `mirror` (the frame's last job: the caller sends `out` at once, which is then
    /// the commit, and clears `pending` anyway) the record is only written in `out`.
    /// `false` if the owner is gone.
    #[inline]
    pub(super) fn commit(
        &self,
        out: &mut Vec<u8>,
        mut start: usize,
        id: u64,
        mut kind: u8,
        mirror: bool,
        fixed: Option<usize>,
    ) -> bool {
        if out.len() - start > MAX_FRAME {
            // Too large for any frame: a report of that instead (a panic message is cut).
            let mut payload = out.split_off(start + RES_HDR);
            kind = fit_result(kind, &mut payload);
            out.extend_from_slice(&payload);
        }
        if out.len() > MAX_FRAME {
            // The frame is full: send what came before this record, which then starts it.
            let rec = out.split_off(start);
            if !self.flush(out) {
                return false;
            }
            *out = rec;
            start = 0;
        }
        // `len <= MAX_FRAME - RES_HDR` (made so above), so it fits a u32.
        let len = (out.len() - start - RES_HDR) as u32;
        let Some(hdr) = out.get_mut(start..start + RES_HDR) else {
            return true; // cannot be: the caller reserved the header
        };
        hdr[..8].copy_from_slice(&id.to_le_bytes());
        hdr[8] = kind;
        hdr[9..].copy_from_slice(&len.to_le_bytes());
        if !mirror {
            return true;
        }
        let rec = &out[start..];
        match fixed {
            // A result of the size every result has (plain data): a copy of a length known at
            // compile time, a few moves instead of a call.
            Some(n) if rec.len() == RES_HDR + n => self.scratch.write(start, &rec[..RES_HDR + n]),
            _ => self.scratch.write(start, rec),
        }
        // Release: pairs with the owner's Acquire load of `pending` in `retire`, which then
        // sees the record written above.
        self.slot.pending.store(out.len() as u64, Ordering::Release);
        true
    }
}

/// Looks (one load each) at the job ring before a worker blocks in `recv_into`.
const PRE_SPIN: u32 = 32;

/// A worker's life: run jobs until the owner closes the job channel or dies.
pub(super) fn worker_main<J, R, W: Wire<J> + Wire<R>>(
    lane: Lane<'_>,
    work: &impl Fn(J) -> R,
    max_jobs: Option<u64>,
    timed: bool,
) -> i32 {
    let records = Records {
        stride: <W as Wire<J>>::SIZE.map(|s| JOB_HDR + s),
    };
    // Relaxed: a hint for dispatch, ordering nothing.
    lane.slot.cpu.store(sole_cpu(), Ordering::Relaxed);
    let mut frame = Vec::new();
    let mut out = Vec::with_capacity(MAX_FRAME + RES_HDR);
    let mut done = 0u64;
    // Its cost per job, smoothed (see below).
    let mut cost = 0u64;
    // What this worker last published in `current` (the owner stored `IDLE` before the fork).
    let mut current = IDLE;
    loop {
        // The next batch usually follows closely: look for it with one load per spin for a
        // moment before the channel's blocking wait, whose set-up (which CPU are we on, is the
        // owner there) costs more than the look.
        for _ in 0..PRE_SPIN {
            if lane.jobs.core.c.recv_hint() {
                break;
            }
            std::hint::spin_loop();
        }
        if lane.jobs.recv_into(&mut frame).is_err() {
            break;
        }
        // Time batches of more than one job (two clock reads a batch), for `cost`.
        let timed_batch = records
            .at(&frame, 0)
            .is_some_and(|(_, next)| next < frame.len());
        let t0 = if timed_batch {
            crate::sys::mono_ns()
        } else {
            0
        };
        let mut ran = 0u64;
        let mut at = 0;
        while at < frame.len() {
            let Some((id, next)) = records.at(&frame, at) else {
                return 2; // the owner sent an impossible frame
            };
            let Some(payload) = frame.get(at + JOB_HDR..next) else {
                return 2;
            };
            at = next;
            if timed {
                // Relaxed: published by the Release compare-and-swap of `current` below.
                lane.slot
                    .started
                    .store(crate::sys::mono_ns(), Ordering::Relaxed);
                // Release: pairs with the owner's Acquire loads of `current` (which then see
                // `started`). Fails only once the owner has claimed this worker for a timeout
                // kill: then start nothing more; the kill is on its way.
                if lane
                    .slot
                    .current
                    .compare_exchange(current, id, Ordering::Release, Ordering::Relaxed)
                    .is_err()
                {
                    let _ = lane.flush(&mut out);
                    return 0;
                }
            } else {
                // Release: pairs with the owner's Acquire loads of `current` in `retire`.
                lane.slot.current.store(id, Ordering::Release);
            }
            current = id;
            // The record goes straight into `out`: a blank header, then the payload.
            let start = out.len();
            out.extend_from_slice(&[0; RES_HDR]);
            let kind = match <W as Wire<J>>::dec(payload) {
                Err(reason) => {
                    out.extend_from_slice(reason.as_bytes());
                    KIND_BAD_JOB
                }
                Ok(job) => match catch_unwind(AssertUnwindSafe(|| work(job))) {
                    Ok(r) => match <W as Wire<R>>::enc(&r, &mut out) {
                        Ok(()) => KIND_OK,
                        Err(reason) => {
                            out.truncate(start + RES_HDR);
                            out.extend_from_slice(reason.as_bytes());
                            KIND_BAD_JOB
                        }
                    },
                    Err(payload) => {
                        let msg = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "Box<dyn Any>".into());
                        out.extend_from_slice(msg.as_bytes());
                        KIND_PANICKED
                    }
                },
            };
            // The frame's last job is committed by the send that follows (below), with
            // nothing in between that could be seen or lost: no scratch copy for it.
            let last = at >= frame.len() && max_jobs.is_none_or(|m| done + 1 < m);
            if !lane.commit(&mut out, start, id, kind, !last, <W as Wire<R>>::SIZE) {
                return 0; // the owner is gone
            }
            done += 1;
            ran += 1;
            if max_jobs.is_some_and(|m| done >= m) {
                let _ = lane.flush(&mut out);
                return 0; // recycled: the owner forks a replacement
            }
            // Light side of the handshake with a sleeping owner (see the module docs): between
            // the Release store of `pending` above and this load of `waiting`.
            crate::sync::barrier::light();
            // Relaxed: ordered by the barrier pair.
            if lane.header.waiting.load(Ordering::Relaxed) != 0 && !lane.flush(&mut out) {
                return 0;
            }
        }
        if timed_batch && ran > 0 {
            let t1 = crate::sys::mono_ns();
            let ns = (t1.saturating_sub(t0) / ran).max(1);
            // A moving average over about 8 batches: one batch slowed by an interrupt or by
            // the host (a few microseconds on a batch of tiny jobs that takes a few) does not
            // make the worker look slow; a real change of job cost shows within a few batches.
            cost = if cost == 0 {
                ns
            } else {
                (cost.saturating_mul(7).saturating_add(ns) / 8).max(1)
            };
            // Relaxed: hints for dispatch, ordering nothing.
            lane.slot.cost.store(cost, Ordering::Relaxed);
            lane.slot.cost_at.store(t1, Ordering::Relaxed);
        }
        if !lane.flush(&mut out) {
            return 0;
        }
    }
    let _ = lane.flush(&mut out);
    0
}

/// The one CPU this process may run on, plus one; 0 if it may run on several (or the
/// affinity cannot be read).
fn sole_cpu() -> u64 {
    use nix::sched::{CpuSet, sched_getaffinity};
    let Ok(set) = sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return 0;
    };
    let mut only = 0;
    for cpu in 0..CpuSet::count() {
        if set.is_set(cpu).unwrap_or(false) {
            if only != 0 {
                return 0;
            }
            only = cpu as u64 + 1;
        }
    }
    only
}

/// A result payload too large for a frame becomes a report of that (a panic message is cut
/// to fit instead). Returns the kind to send.
pub(super) fn fit_result(kind: u8, res: &mut Vec<u8>) -> u8 {
    let max = MAX_FRAME - RES_HDR;
    if res.len() <= max {
        return kind;
    }
    if kind == KIND_PANICKED {
        // Cut at a character boundary (the message is UTF-8 from a `str`).
        let mut end = max;
        while end > 0 && (res[end] & 0xc0) == 0x80 {
            end -= 1;
        }
        res.truncate(end);
        return kind;
    }
    let text = format!(
        "the encoded result takes {} bytes; a pool result takes at most {max}",
        res.len()
    );
    res.clear();
    res.extend_from_slice(text.as_bytes());
    KIND_BAD_JOB
}
