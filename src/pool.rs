//! `Pool`: a crash-isolating pool of forked worker processes running one function.
//!
//! # Shape
//!
//! ```text
//! owner process                                   worker k (forked by the owner)
//!   queue: encoded job records not yet sent         loop: recv a job frame (a batch)
//!   per worker: the frames in flight, and the          for each job: publish its id in the slot
//!               first unreported job of each             -> work(job) -> append the result to
//!   a byte duplex per worker (job frames ->,                its scratch (shared), publish its length
//!                             <- result frames)        send the scratch as one result frame:
//!                                                        at the end of the batch, when it is
//!                                                        full, or when the owner sleeps
//! ```
//!
//! Shared region (one per pool; zero-filled, so a fresh slot reads `current = 0`, which
//! `spawn` replaces with `IDLE` before each fork):
//!
//! ```text
//! offset 0                 Header   { waiting: u32 }                   (64 B, owner writes)
//! offset 64 + 64 k         WorkerSlot { current: u64, started: u64,    (64 B each, worker k
//!                                       pending: u64 }                   writes)
//! offset 64 + 64 n + S k   scratch k: [u8; S], S = SCRATCH             (worker k writes)
//! ```
//!
//! Frames (little-endian). A job frame is one or more records `[id: u64][len: u32][payload]`;
//! a result frame (and a scratch) is one or more records `[id: u64][kind: u8][len: u32]
//! [payload]`, kind 0 = the result, 1 = the job panicked (payload: the message, UTF-8), 2 = the
//! job could not be decoded or its result encoded. Payloads are bytemuck bytes for plain data,
//! postcard for serde types. Every frame is decoded from a private copy and every length in it
//! is checked (a compromised worker can send or scribble anything: it gets at most its own jobs
//! failed or wrong).
//!
//! # Accounting: every job ends exactly once
//!
//! A worker runs the jobs it is sent one at a time, in dispatch order. Before it starts one it
//! publishes the job's id in `current` (Release); after it finishes one it appends the result
//! record to its scratch and publishes the scratch's length in `pending` (Release), before it
//! looks at the next job. So a result is committed per job, in shared memory, even while the
//! frame that will carry it is still being filled; the frame is only the way results travel
//! while the worker lives (and its commit wakes a sleeping owner).
//!
//! When a worker dies the owner reaps it first (so nothing writes its ring or scratch any
//! more), then takes every result frame in its ring, then the records in its scratch (those
//! already taken through the ring, if it died between sending a frame and clearing its
//! scratch, are skipped). What is left in flight, oldest first, is: the job it was running, if
//! `current` names it, then jobs it never started. The first fails with `WorkerDied(status)`
//! (or `TimedOut` if the pool killed it for that job); the others go back to the front of the
//! queue, in order, for the other workers or a replacement: none lost, none run twice. A result
//! record whose id is not the worker's oldest unreported job is a protocol violation: the
//! worker is killed and treated as dead.
//!
//! A timeout kill must not hit the job after the one that timed out: the owner claims the
//! worker by swapping `current` from the late job's id to `KILLED` (compare-and-swap), and a
//! worker with a `job_timeout` moves `current` to its next job with a compare-and-swap too,
//! which fails once the owner has claimed it: then it starts nothing more and waits to be
//! killed. So a worker killed for a timeout has started no job after the late one, whose result
//! counts if it was committed before the kill.
//!
//! # Batching and waking
//!
//! Dispatch sends a job frame of up to [`BATCH`] queued jobs to the least loaded worker (an idle
//! one first), keeping at most [`WINDOW`] jobs in flight per worker and sharing the queue
//! fairly among the workers, so tiny jobs cost one ring message per batch each way while a slow
//! job delays at most the few jobs queued behind it on its worker.
//!
//! The owner spins briefly on the result rings, then sleeps in a [`Select`] over them (with a
//! timeout at the earliest job deadline when `job_timeout` is set). Before it sleeps it sets
//! `waiting` and runs the heavy side of the asymmetric barrier (`sync::barrier`); a worker
//! reads `waiting` after each job, behind the light side, and sends its results at once when it
//! is set. That is Dekker's handshake: either the worker sees `waiting` and sends each result
//! it commits from then on, or the owner sees its `pending` length and takes those results
//! from the worker's scratch itself (under the `flushes` sequence lock; the worker may be deep
//! in a long next job). A failed barrier bounds the sleep to [`RECHECK`]. A worker that
//! finishes its batch always sends what it has, so nothing waits longer
//! than that batch.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitStatus;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use crate::sync::WaitPolicy;
use crate::sync::spin::Spinner;
use crate::{AnonRegion, ByteReceiver, ByteSender, Child, Error, Select, byte_channel, fork};

/// Jobs in flight per worker at most (sent, not yet reported): two full batches, so a worker
/// always has the next batch while the owner takes the results of the last one. A slow job
/// delays at most the jobs sent behind it to its worker.
pub const WINDOW: usize = 2 * BATCH;

/// Jobs per job frame at most.
pub const BATCH: usize = 64;

/// How long the owner sleeps at most when the barrier failed (a worker may then not see
/// `waiting` in time).
const RECHECK: Duration = Duration::from_millis(1);

/// Bytes of each worker's job ring and result ring.
const RING_BYTES: usize = 64 * 1024;
/// The largest frame a ring of `RING_BYTES` takes: half the ring minus 16 (see `ring`). A
/// worker's scratch holds one result frame.
const MAX_FRAME: usize = RING_BYTES / 2 - 16;
const SCRATCH: usize = MAX_FRAME;
/// Bytes of a job record's header: id, payload length.
const JOB_HDR: usize = 12;
/// Bytes of a result record's header: id, kind, payload length.
const RES_HDR: usize = 13;

const KIND_OK: u8 = 0;
const KIND_PANICKED: u8 = 1;
const KIND_BAD_JOB: u8 = 2;
/// `WorkerSlot::current` before the worker's first job.
const IDLE: u64 = u64::MAX;
/// `WorkerSlot::current` once the owner has claimed the worker to kill it for a timeout.
const KILLED: u64 = u64::MAX - 1;

/// Why a job did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobError {
    /// The job panicked; `message` is the panic's payload string.
    Panicked {
        /// The panic message (`"Box<dyn Any>"` for a payload that is not a string).
        message: String,
    },
    /// The worker running the job died (signal, exit, abort); its exit status.
    WorkerDied(ExitStatus),
    /// `job_timeout` passed: the worker was killed and replaced.
    TimedOut,
    /// The pool shut down before the job ran.
    Closed,
    /// No worker could run the job: the pool could not fork a replacement (for example the
    /// owner has become multithreaded, `Error::MultiThreaded`), and none was left.
    NoWorker {
        /// Why the replacement could not be forked.
        reason: String,
    },
    /// The job or its result could not be encoded or decoded (a serde error, or a worker that
    /// sent something impossible).
    Codec {
        /// What failed.
        reason: String,
    },
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Panicked { message } => write!(f, "the job panicked: {message}"),
            JobError::WorkerDied(s) => write!(f, "the worker running the job died: {s}"),
            JobError::TimedOut => f.write_str("the job ran past the pool's job_timeout"),
            JobError::Closed => f.write_str("the pool shut down before the job ran"),
            JobError::NoWorker { reason } => write!(f, "no worker could run the job: {reason}"),
            JobError::Codec { reason } => write!(f, "the job could not be transferred: {reason}"),
        }
    }
}

impl std::error::Error for JobError {}

/// How a job fails in a process that is not the pool's owner (a copy inherited through
/// `fork`).
fn not_owner() -> JobError {
    JobError::NoWorker {
        reason: "this process is not the pool's owner (it has a copy inherited through fork): \
                 only the process that built a pool can run it"
            .into(),
    }
}

/// How values of one type cross the process boundary. The pool's loops are instantiated per
/// wire (no call through a pointer per job): [`PlainWire`] for plain data, [`SerdeWire`] for
/// serde types.
trait Wire<T> {
    /// The encoded size of every value, if fixed.
    const SIZE: Option<usize>;
    fn enc(v: &T, out: &mut Vec<u8>) -> Result<(), String>;
    fn dec(b: &[u8]) -> Result<T, String>;
}

/// Plain data as its bytes (bytemuck), validated on decoding.
struct PlainWire;

impl<T: crate::Plain> Wire<T> for PlainWire {
    const SIZE: Option<usize> = Some(std::mem::size_of::<T>());
    #[inline]
    fn enc(v: &T, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(bytemuck::bytes_of(v));
        Ok(())
    }
    #[inline]
    fn dec(b: &[u8]) -> Result<T, String> {
        bytemuck::checked::try_pod_read_unaligned::<T>(b).map_err(|e| e.to_string())
    }
}

/// Serde types, encoded with postcard.
#[cfg(feature = "serde")]
struct SerdeWire;

/// Appends to a buffer it borrows (so a failed encoding leaves what was there before).
#[cfg(feature = "serde")]
struct Append<'a>(&'a mut Vec<u8>);

#[cfg(feature = "serde")]
impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

#[cfg(feature = "serde")]
impl<T: serde::Serialize + serde::de::DeserializeOwned> Wire<T> for SerdeWire {
    const SIZE: Option<usize> = None;
    fn enc(v: &T, out: &mut Vec<u8>) -> Result<(), String> {
        postcard::to_extend(v, Append(out))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn dec(b: &[u8]) -> Result<T, String> {
        postcard::from_bytes(b).map_err(|e| e.to_string())
    }
}

/// The owner's wire-specific code, instantiated for the pool's wire when it is built.
struct Codec<J, R> {
    /// The encoded size of every job, if fixed (plain data): job records then have a fixed
    /// stride, so the owner finds them by arithmetic instead of walking lengths.
    job_size: Option<usize>,
    /// Appends the records of `jobs`, with ids from `first` on, to a buffer; the ids of jobs
    /// that could not be encoded (or are too large) go to `failed` with the reason, and have
    /// no record.
    enc_jobs: fn(jobs: &[J], first: u64, buf: &mut Vec<u8>, failed: &mut Refused),
    /// Decodes a result payload.
    dec_res: fn(&[u8]) -> Result<R, String>,
    /// `Inner::accept`'s fast path (see `accept_run`).
    accept_run: fn(&mut Inner<J, R>, usize, &[u8], usize) -> usize,
}

impl<J, R> Clone for Codec<J, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<J, R> Copy for Codec<J, R> {}

impl<J, R> Codec<J, R> {
    fn of<W: Wire<J> + Wire<R>>() -> Self {
        Codec {
            job_size: <W as Wire<J>>::SIZE,
            enc_jobs: enc_jobs::<J, W>,
            dec_res: <W as Wire<R>>::dec,
            accept_run: accept_run::<J, R, W>,
        }
    }
}

/// Jobs that could not be encoded: their ids, and why.
type Refused = Vec<(u64, String)>;

/// A worker's whole life, with the pool's `work` and wire (see `worker_main`).
type RunWorker = dyn Fn(Lane<'_>, Option<u64>, bool) -> i32;

/// `Codec::enc_jobs` for wire `W`.
fn enc_jobs<J, W: Wire<J>>(jobs: &[J], first: u64, buf: &mut Vec<u8>, failed: &mut Refused) {
    if let Some(size) = W::SIZE {
        buf.reserve(jobs.len() * (JOB_HDR + size));
    }
    for (id, job) in (first..).zip(jobs) {
        let start = buf.len();
        let mut hdr = [0; JOB_HDR];
        hdr[..8].copy_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&hdr);
        let encoded = W::enc(job, buf);
        let len = buf.len() - start - JOB_HDR;
        let err = match encoded {
            Err(reason) => Some(reason),
            Ok(()) if len > MAX_FRAME - JOB_HDR => Some(too_large(len)),
            Ok(()) => None,
        };
        if let Some(reason) = err {
            buf.truncate(start);
            failed.push((id, reason));
            continue;
        }
        // `len <= MAX_FRAME`, so it fits a u32.
        buf[start + 8..start + JOB_HDR].copy_from_slice(&(len as u32).to_le_bytes());
    }
}

/// What the owner publishes to every worker (offset 0 of the pool's region).
#[repr(C, align(64))]
struct Header {
    /// 1 while the owner sleeps (or is about to): workers send their results after each job
    /// instead of at the end of their batch.
    waiting: AtomicU32,
}

// SAFETY: one atomic, valid for every bit pattern, no pointers.
unsafe impl crate::Shareable for Header {}

/// What worker `k` publishes about itself (offset `64 + 64 k`). Hints only: a compromised
/// worker can write anything here, and the owner never trusts more than "which in-flight job
/// had started" and "these bytes of the scratch hold results", which it validates.
#[repr(C, align(64))]
struct WorkerSlot {
    /// The id of the job it started last; `IDLE` before its first; `KILLED` once the owner has
    /// claimed it for a timeout kill.
    current: AtomicU64,
    /// When the job in `current` started (`CLOCK_MONOTONIC` ns; written with a job timeout).
    started: AtomicU64,
    /// Bytes of result records in its scratch not yet sent (0 after each result frame).
    pending: AtomicU64,
    /// Result frames sent: bumped before the scratch is written over (a sequence lock for
    /// the owner's reads of a live worker's scratch).
    flushes: AtomicU64,
}

// SAFETY: four atomics, valid for every bit pattern, no pointers.
unsafe impl crate::Shareable for WorkerSlot {}

const _: () = assert!(std::mem::size_of::<Header>() == 64);
const _: () = assert!(std::mem::size_of::<WorkerSlot>() == 64);

/// A worker's scratch: `SCRATCH` bytes of shared memory it alone writes (while it lives).
#[derive(Clone, Copy)]
struct Scratch(*mut u8);

impl Scratch {
    /// Copies `src` to offset `at`. Only `worker_main` calls it, in its own worker.
    fn write(self, at: usize, src: &[u8]) {
        if at.checked_add(src.len()).is_none_or(|end| end > SCRATCH) {
            return;
        }
        // SAFETY: `at + src.len() <= SCRATCH` (checked above) and the scratch is `SCRATCH`
        // bytes of the pool's region, mapped in this worker for its whole life; bytes, so any
        // concurrent scribble by another process only garbles data the owner validates.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.add(at), src.len()) };
    }

    /// A private copy of the first `len` bytes (`len` clamped to the scratch).
    fn copy_out(self, len: usize, out: &mut Vec<u8>) {
        let len = len.min(SCRATCH);
        out.clear();
        out.resize(len, 0);
        // SAFETY: `len <= SCRATCH` bytes inside the pool's region, which the owner maps while
        // `Inner` lives; read into a private buffer, as the ring reads messages (whatever a
        // hostile process wrote there is only bytes, validated after the copy).
        unsafe { std::ptr::copy_nonoverlapping(self.0, out.as_mut_ptr(), len) };
    }
}

/// Configures and builds a [`Pool`] (like rayon's `ThreadPoolBuilder`).
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    workers: usize,
    job_timeout: Option<Duration>,
    max_jobs_per_worker: Option<u64>,
    queue_capacity: usize,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder::new()
    }
}

impl PoolBuilder {
    /// Defaults: one worker per CPU, no job timeout, workers never recycled, a queue of 1 024
    /// jobs.
    pub fn new() -> PoolBuilder {
        PoolBuilder {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            job_timeout: None,
            max_jobs_per_worker: None,
            queue_capacity: 1024,
        }
    }

    /// The number of worker processes (at least 1).
    pub fn workers(mut self, n: usize) -> PoolBuilder {
        self.workers = n.max(1);
        self
    }

    /// A job running longer than this fails with `TimedOut`; its worker is killed and replaced.
    pub fn job_timeout(mut self, d: Duration) -> PoolBuilder {
        self.job_timeout = Some(d);
        self
    }

    /// A worker exits after this many jobs and is replaced by a fresh fork (bounds leaks).
    pub fn max_jobs_per_worker(mut self, k: u64) -> PoolBuilder {
        self.max_jobs_per_worker = Some(k.max(1));
        self
    }

    /// Jobs queued in the owner beyond those in flight; `submit` blocks (running the pool)
    /// while the queue is full.
    pub fn queue_capacity(mut self, c: usize) -> PoolBuilder {
        self.queue_capacity = c.max(1);
        self
    }

    /// Forks the workers, each running `work` on the jobs it is given. Jobs and results are
    /// plain data ([`Plain`](crate::Plain)).
    ///
    /// # Errors
    /// `MultiThreaded` if this process has more than one thread; anything `fork` or channel
    /// creation reports.
    pub fn build<J, R, F>(self, work: F) -> Result<Pool<J, R>, Error>
    where
        J: crate::Plain,
        R: crate::Plain,
        F: Fn(J) -> R + 'static,
    {
        let run: Rc<RunWorker> = Rc::new(move |lane, max, timed| {
            worker_main::<J, R, PlainWire>(lane, &work, max, timed)
        });
        Pool::start(self, run, Codec::of::<PlainWire>())
    }

    /// As [`build`](Self::build), for any serde types (feature `serde`), encoded with postcard.
    ///
    /// # Errors
    /// As `build`.
    #[cfg(feature = "serde")]
    pub fn build_serde<J, R, F>(self, work: F) -> Result<Pool<J, R>, Error>
    where
        J: serde::Serialize + serde::de::DeserializeOwned + 'static,
        R: serde::Serialize + serde::de::DeserializeOwned + 'static,
        F: Fn(J) -> R + 'static,
    {
        let run: Rc<RunWorker> = Rc::new(move |lane, max, timed| {
            worker_main::<J, R, SerdeWire>(lane, &work, max, timed)
        });
        Pool::start(self, run, Codec::of::<SerdeWire>())
    }
}

/// A job frame sent to a worker, kept to run its unstarted jobs elsewhere if the worker dies.
struct Sent {
    /// The frame's records, as sent (written by the owner: trusted).
    bytes: Vec<u8>,
    /// Offset of the first record not yet reported.
    at: usize,
}

/// How job records lie in the owner's buffers (the queue, the frames in flight; all written
/// by the owner, so trusted): each with its length, or, for plain jobs, at a fixed stride, found
/// by arithmetic.
#[derive(Clone, Copy)]
struct Records {
    /// `JOB_HDR` plus the size of every job, if fixed.
    stride: Option<usize>,
}

impl Records {
    /// The id of the job record at `at` of `b`, and where the next starts.
    #[inline]
    fn at(self, b: &[u8], at: usize) -> Option<(u64, usize)> {
        let hdr: &[u8; JOB_HDR] = b.get(at..at + JOB_HDR)?.try_into().ok()?;
        let [i0, i1, i2, i3, i4, i5, i6, i7, l0, l1, l2, l3] = *hdr;
        let id = u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]);
        let next = match self.stride {
            Some(s) => at + s,
            None => at + JOB_HDR + u32::from_le_bytes([l0, l1, l2, l3]) as usize,
        };
        Some((id, next))
    }

    /// Where up to `n` whole records from `at` end, in at most `room` bytes (but at least one
    /// record, if there is one and `one`), and how many that is.
    #[inline]
    fn span(self, b: &[u8], at: usize, n: usize, room: usize, one: bool) -> (usize, usize) {
        if let Some(s) = self.stride {
            let have = b.len().saturating_sub(at) / s;
            let fit = if one { (room / s).max(1) } else { room / s };
            let count = n.min(have).min(fit);
            return (at + count * s, count);
        }
        let (mut end, mut count) = (at, 0);
        while count < n {
            let Some((_, next)) = self.at(b, end) else {
                break;
            };
            if (count > 0 || !one) && next - at > room {
                break;
            }
            end = next;
            count += 1;
        }
        (end, count)
    }
}

/// One worker process as the owner sees it.
struct Worker {
    child: Child,
    jobs: ByteSender,
    results: ByteReceiver,
    /// Job frames sent and not fully reported, oldest first.
    in_flight: VecDeque<Sent>,
    /// Jobs sent and not yet reported.
    load: usize,
    /// Jobs dispatched to this worker in its life (for `max_jobs_per_worker`).
    dispatched: u64,
    /// The job it was killed for, having run past `job_timeout`.
    timed_out: Option<u64>,
    /// How its frames' records lie.
    records: Records,
}

impl Worker {
    /// Its oldest unreported job.
    #[inline]
    fn front(&self) -> Option<u64> {
        let s = self.in_flight.front()?;
        self.records.at(&s.bytes, s.at).map(|(id, _)| id)
    }

    /// Marks its oldest unreported job reported; a frame fully reported goes to `spare`.
    #[inline]
    fn pop_front(&mut self, spare: &mut Vec<Vec<u8>>) {
        let Some(s) = self.in_flight.front_mut() else {
            return;
        };
        self.load = self.load.saturating_sub(1);
        match self.records.at(&s.bytes, s.at) {
            Some((_, next)) if next < s.bytes.len() => s.at = next,
            _ => {
                if let Some(s) = self.in_flight.pop_front() {
                    spare.push(s.bytes);
                }
            }
        }
    }

    /// Every unreported job, oldest first, as `(id, record)`.
    fn take_unreported(&mut self) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for s in self.in_flight.drain(..) {
            let mut at = s.at;
            while let Some((id, next)) = self.records.at(&s.bytes, at) {
                let Some(rec) = s.bytes.get(at..next) else {
                    break;
                };
                out.push((id, rec.to_vec()));
                at = next;
            }
        }
        self.load = 0;
        out
    }
}

/// Jobs queued in the owner, encoded, not yet sent.
struct Queue {
    /// Jobs put back after their worker died, to be sent before the others: one record each.
    again: VecDeque<Vec<u8>>,
    /// Records, in submission order, from `at` on.
    buf: Vec<u8>,
    at: usize,
    /// Records in `buf` from `at`.
    count: usize,
    /// How the records lie.
    records: Records,
}

impl Queue {
    fn len(&self) -> usize {
        self.again.len() + self.count
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns the ids of every queued job.
    fn take_ids(&mut self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .again
            .drain(..)
            .filter_map(|r| self.records.at(&r, 0).map(|(id, _)| id))
            .collect();
        while let Some((id, next)) = self.records.at(&self.buf, self.at) {
            ids.push(id);
            self.at = next;
        }
        self.buf.clear();
        self.at = 0;
        self.count = 0;
        ids
    }
}

struct Inner<J, R> {
    cfg: PoolBuilder,
    /// A worker's life (run in the fork child).
    run: Rc<RunWorker>,
    codec: Codec<J, R>,
    /// Jobs that could not be encoded, from `Codec::enc_jobs` (kept for its buffer).
    failed: Refused,
    /// The header and the workers' slots, in `_region` (not truly `'static`: see
    /// `Pool::start`).
    header: &'static Header,
    slots: &'static [WorkerSlot],
    /// The start of the workers' scratches (`SCRATCH` bytes each), in `_region`.
    scratch: *mut u8,
    _region: AnonRegion,
    /// `None`: the slot's worker is gone and could not be replaced.
    workers: Vec<Option<Worker>>,
    queue: Queue,
    /// Every job from `base` on, by id: pending, finished (its result waits for its handle),
    /// or settled (taken, or its handle dropped). Settled jobs are popped from the front;
    /// beyond `park_limit` entries, unsettled ones move from the front to `parked`, so an
    /// old handle never joined does not keep every later job's entry.
    jobs: VecDeque<JobState<R>>,
    /// The id of `jobs[0]`.
    base: u64,
    /// Unsettled jobs older than `base` (their handles are still out).
    parked: BTreeMap<u64, JobState<R>>,
    park_limit: usize,
    /// Frame buffers, reused.
    spare: Vec<Vec<u8>>,
    /// A private copy of the result frame being decoded (never decoded in shared memory).
    rbuf: Vec<u8>,
    next_id: u64,
    /// Why the last respawn failed, if it did.
    respawn_error: Option<String>,
    closed: bool,
    /// The process that built the pool: a copy inherited through `fork` does nothing (its
    /// workers are not its children, and their slots are the owner's).
    owner: crate::sync::ident::Ident,
}

/// A pool of forked worker processes running one function on jobs.
///
/// Workers are forked from the process that builds the pool, so `work` and everything it
/// captures is each worker's copy-on-write copy: no serialization of the function, no `init`,
/// no re-exec. A worker that dies (SIGKILL, segfault, abort, `exit`) fails only the job it was
/// running (`WorkerDied` with its exit status); jobs queued behind it run elsewhere, none lost or
/// run twice, and the pool forks a replacement. A panic fails only its job (`Panicked` with the
/// message). `job_timeout` kills a worker stuck in one job (`TimedOut`). Dropping the pool (or
/// `shutdown`) lets queued jobs finish, then every worker exits and is reaped; if the owner dies,
/// the workers notice (their job channel disconnects) and exit, and one stuck in a job is killed
/// by the kernel (`PR_SET_PDEATHSIG`). A copy of a `Pool` inherited by a fork child is inert
/// there: its jobs fail with `JobError::NoWorker`, and it leaves the owner's workers alone.
///
/// The owner must be single-threaded when it forks: at `build` and at every respawn. If it is
/// not at a respawn, that worker is not replaced, and once no worker is left the remaining jobs
/// fail with `JobError::NoWorker` (the reason names `MultiThreaded`); nothing hangs.
///
/// A `Pool` is used from one thread (it is not `Send`): its handles run the pool while they
/// wait.
///
/// ```no_run
/// use forkipc::Pool;
///
/// let pool = Pool::new(2, |x: u64| x * x)?;
/// let h = pool.submit(7)?;
/// assert_eq!(h.join(), Ok(49));
/// let squares: Vec<u64> = pool.map(1..=4u64).map(|r| r.unwrap()).collect();
/// assert_eq!(squares, [1, 4, 9, 16]);
/// pool.shutdown()?;
/// # Ok::<(), forkipc::Error>(())
/// ```
pub struct Pool<J, R> {
    inner: Rc<RefCell<Inner<J, R>>>,
}

impl<J, R> std::fmt::Debug for Pool<J, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// What `take_sent` found.
enum Taken {
    /// The ring is empty (every valid result taken).
    Empty,
    /// A frame that is not a result of the worker's oldest job: the worker misbehaves.
    Violation,
}

/// Where a job stands, for its handle.
enum JobState<R> {
    /// Not finished; its handle waits (or will).
    Pending,
    /// Not finished; its handle was dropped: the result will be discarded.
    Abandoned,
    /// Finished; the result waits for the handle.
    Done(Result<R, JobError>),
    /// Taken by its handle, or discarded.
    Settled,
}

/// What a handle needs of the pool, whatever its job type.
trait Run<R> {
    fn take(&mut self, id: u64) -> Option<Result<R, JobError>>;
    fn pump(&mut self, deadline: Option<Instant>) -> bool;
    fn abandon(&mut self, id: u64);
}

impl<J, R> Run<R> for Inner<J, R> {
    fn take(&mut self, id: u64) -> Option<Result<R, JobError>> {
        Inner::take(self, id)
    }
    fn pump(&mut self, deadline: Option<Instant>) -> bool {
        Inner::pump(self, deadline)
    }
    fn abandon(&mut self, id: u64) {
        match self.state(id) {
            Some(st @ JobState::Done(_)) => *st = JobState::Settled,
            Some(st @ JobState::Pending) => *st = JobState::Abandoned,
            _ => {}
        }
        self.settled(id);
    }
}

impl<J, R> Inner<J, R> {
    /// The result of job `id`, if it has finished (and not been taken).
    #[inline]
    fn take(&mut self, id: u64) -> Option<Result<R, JobError>> {
        // The common case (`map`, a handle joined in order): the oldest job, finished.
        if id == self.base && matches!(self.jobs.front(), Some(JobState::Done(_))) {
            let Some(JobState::Done(r)) = self.jobs.pop_front() else {
                return None; // cannot be: matched above
            };
            self.base += 1;
            if matches!(self.jobs.front(), Some(JobState::Settled)) {
                self.settled_front();
            }
            return Some(r);
        }
        self.take_any(id)
    }

    #[inline(never)]
    fn take_any(&mut self, id: u64) -> Option<Result<R, JobError>> {
        let st = self.state(id)?;
        if !matches!(st, JobState::Done(_)) {
            return None;
        }
        let JobState::Done(r) = std::mem::replace(st, JobState::Settled) else {
            return None;
        };
        self.settled(id);
        Some(r)
    }
}

/// A submitted job; [`join`](JobHandle::join) waits for its result. Dropping it without
/// joining lets the job run and discards its result.
pub struct JobHandle<R> {
    inner: Rc<RefCell<dyn Run<R>>>,
    id: u64,
    taken: bool,
}

impl<R> std::fmt::Debug for JobHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle").field("id", &self.id).finish()
    }
}

impl<J: 'static, R: 'static> Pool<J, R> {
    /// A pool of `workers` processes running `work` (see [`PoolBuilder`] for the options).
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn new<F>(workers: usize, work: F) -> Result<Pool<J, R>, Error>
    where
        J: crate::Plain,
        R: crate::Plain,
        F: Fn(J) -> R + 'static,
    {
        PoolBuilder::new().workers(workers).build(work)
    }

    fn start(cfg: PoolBuilder, run: Rc<RunWorker>, codec: Codec<J, R>) -> Result<Self, Error> {
        if crate::sys::thread_count()? > 1 {
            return Err(Error::MultiThreaded);
        }
        let n = cfg.workers;
        let slots_len = n
            .checked_mul(std::mem::size_of::<WorkerSlot>())
            .ok_or(Error::SizeOverflow)?;
        let scratch_len = n.checked_mul(SCRATCH).ok_or(Error::SizeOverflow)?;
        let total = std::mem::size_of::<Header>()
            .checked_add(slots_len)
            .and_then(|l| l.checked_add(scratch_len))
            .ok_or(Error::SizeOverflow)?;
        let region = AnonRegion::new(total)?;
        let header: *const Header = region.alloc(Header {
            waiting: AtomicU32::new(0),
        })?;
        let first: *const WorkerSlot = region.alloc(WorkerSlot {
            current: AtomicU64::new(IDLE),
            started: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        })?;
        for _ in 1..n {
            region.alloc(WorkerSlot {
                current: AtomicU64::new(IDLE),
                started: AtomicU64::new(0),
                pending: AtomicU64::new(0),
                flushes: AtomicU64::new(0),
            })?;
        }
        let scratch = region.alloc_raw(scratch_len, 64)?.as_ptr();
        // SAFETY: the header and then `n` initialised `WorkerSlot`s (64 bytes each, 64-aligned,
        // so contiguous) were placed from the start of the region. They are used only while
        // `Inner`, which owns the region (`_region`), lives, and by workers, which have their
        // own copy of the mapping.
        let (header, slots) = unsafe { (&*header, std::slice::from_raw_parts(first, n)) };
        let park_limit = 2 * (cfg.queue_capacity + n * WINDOW);
        let mut inner = Inner {
            cfg,
            run,
            codec,
            failed: Vec::new(),
            header,
            slots,
            scratch,
            _region: region,
            workers: Vec::with_capacity(n),
            queue: Queue {
                again: VecDeque::new(),
                buf: Vec::new(),
                at: 0,
                count: 0,
                records: Records {
                    stride: codec.job_size.map(|s| JOB_HDR + s),
                },
            },
            jobs: VecDeque::new(),
            base: 0,
            parked: BTreeMap::new(),
            park_limit,
            spare: Vec::new(),
            rbuf: Vec::new(),
            next_id: 0,
            respawn_error: None,
            closed: false,
            owner: crate::sync::ident::current_ident(),
        };
        for k in 0..n {
            let w = inner.spawn(k)?;
            inner.workers.push(Some(w));
        }
        Ok(Pool {
            inner: Rc::new(RefCell::new(inner)),
        })
    }

    /// Queues `job`; blocks (running the pool) only while the queue is full. How the job ends
    /// (a result, or why not) comes from the handle.
    ///
    /// # Errors
    /// None today (a job that cannot be encoded fails on its handle); the `Result` leaves room
    /// for pool-level failures.
    pub fn submit(&self, job: J) -> Result<JobHandle<R>, Error> {
        let id = self.inner.borrow_mut().submit(&job)?;
        Ok(JobHandle {
            inner: self.inner.clone(),
            id,
            taken: false,
        })
    }

    /// Runs every job of `jobs` and yields the results in input order, as they become
    /// available. Streams: at most the queue capacity plus the workers' windows are submitted
    /// ahead of the result being yielded, so memory stays bounded whatever the input's length.
    pub fn map<I>(&self, jobs: I) -> Map<'_, J, R, I::IntoIter>
    where
        I: IntoIterator<Item = J>,
    {
        Map {
            pool: self,
            jobs: jobs.into_iter(),
            pending: VecDeque::new(),
            ahead: 0,
            batch: Vec::new(),
        }
    }

    /// The pids of the live workers.
    pub fn worker_ids(&self) -> Vec<u32> {
        let inner = self.inner.borrow();
        if !inner.is_owner() {
            return Vec::new();
        }
        inner
            .workers
            .iter()
            .flatten()
            .map(|w| w.child.id())
            .collect()
    }

    /// Lets every queued job finish, then closes the pool: every worker exits and is reaped.
    /// Results of finished jobs stay available to their handles.
    ///
    /// # Errors
    /// An error reaping a worker.
    pub fn shutdown(self) -> Result<(), Error> {
        self.inner.borrow_mut().shutdown()
    }
}

impl<J, R> Drop for Pool<J, R> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            let _ = inner.shutdown();
        }
    }
}

impl<R> JobHandle<R> {
    /// Waits for the job's result, running the pool meanwhile.
    ///
    /// # Errors
    /// Why the job produced no result.
    pub fn join(mut self) -> Result<R, JobError> {
        self.wait(None).unwrap_or(Err(JobError::Closed))
    }

    /// As [`join`](Self::join), for at most `timeout`. A timeout leaves the job running;
    /// its result is then dropped.
    ///
    /// # Errors
    /// `TimedOut` if the result did not come in time; otherwise as `join`.
    pub fn join_timeout(mut self, timeout: Duration) -> Result<R, JobError> {
        let deadline = Instant::now().checked_add(timeout);
        self.wait(deadline).unwrap_or(Err(JobError::TimedOut))
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Option<Result<R, JobError>> {
        let mut inner = self.inner.borrow_mut();
        loop {
            if let Some(r) = inner.take(self.id) {
                self.taken = true;
                return Some(r);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            if !inner.pump(deadline) {
                // Nothing can run any more: the job was failed (or never will end).
                return inner.take(self.id).or(Some(Err(JobError::Closed)));
            }
        }
    }
}

impl<R> Drop for JobHandle<R> {
    fn drop(&mut self) {
        if !self.taken
            && let Ok(mut inner) = self.inner.try_borrow_mut()
        {
            inner.abandon(self.id);
        }
    }
}

/// The results of [`Pool::map`], in input order.
pub struct Map<'p, J, R, I> {
    pool: &'p Pool<J, R>,
    jobs: I,
    /// Ids submitted and not yet yielded, in input order: runs of consecutive ids, `start..end`
    /// (a run ends where another submission took an id).
    pending: VecDeque<(u64, u64)>,
    /// How many ids `pending` holds.
    ahead: usize,
    /// Jobs taken from `jobs`, being queued.
    batch: Vec<J>,
}

impl<J, R, I> Drop for Map<'_, J, R, I> {
    fn drop(&mut self) {
        // Results not yielded are discarded when they come.
        if let Ok(mut inner) = self.pool.inner.try_borrow_mut() {
            for (start, end) in self.pending.drain(..) {
                for id in start..end {
                    inner.abandon(id);
                }
            }
        }
    }
}

impl<J: 'static, R: 'static, I: Iterator<Item = J>> Iterator for Map<'_, J, R, I> {
    type Item = Result<R, JobError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut inner = self.pool.inner.borrow_mut();
        // Top up what is submitted ahead, a batch at a time (one dispatch for the lot), then
        // wait for the oldest.
        let limit = inner.cfg.queue_capacity + inner.cfg.workers * WINDOW;
        if self.ahead + BATCH.min(limit) <= limit {
            // Only `enqueue` takes ids, so the jobs queued now have consecutive ones.
            let first = inner.next_id;
            self.batch.clear();
            self.batch
                .extend(self.jobs.by_ref().take(limit - self.ahead));
            inner.enqueue_batch(&self.batch);
            let n = self.batch.len();
            self.batch.clear();
            if n > 0 {
                let end = first + n as u64;
                match self.pending.back_mut() {
                    Some((_, e)) if *e == first => *e = end,
                    _ => self.pending.push_back((first, end)),
                }
                self.ahead += n;
                inner.dispatch();
            }
        }
        let (start, end) = self.pending.front_mut()?;
        let id = *start;
        *start += 1;
        if *start == *end {
            self.pending.pop_front();
        }
        self.ahead -= 1;
        loop {
            if let Some(r) = inner.take(id) {
                return Some(r);
            }
            if !inner.pump(None) {
                return Some(inner.take(id).unwrap_or(Err(JobError::Closed)));
            }
        }
    }
}

impl<J, R> Inner<J, R> {
    /// The state of job `id`, wherever it is kept.
    fn state(&mut self, id: u64) -> Option<&mut JobState<R>> {
        if id < self.base {
            return self.parked.get_mut(&id);
        }
        let k = usize::try_from(id - self.base).ok()?;
        self.jobs.get_mut(k)
    }

    /// Job `id` may have become settled: forget what no handle needs any more.
    fn settled(&mut self, id: u64) {
        if id < self.base {
            if matches!(self.parked.get(&id), Some(JobState::Settled)) {
                self.parked.remove(&id);
            }
            return;
        }
        self.settled_front();
        // An old job still unsettled (a handle kept, not joined) must not hold every later
        // entry: past the limit, it moves to `parked`.
        while self.jobs.len() > self.park_limit {
            if let Some(st) = self.jobs.pop_front() {
                if !matches!(st, JobState::Settled) {
                    self.parked.insert(self.base, st);
                }
                self.base += 1;
            }
        }
    }

    /// Forgets the settled jobs at the front.
    #[inline]
    fn settled_front(&mut self) {
        while matches!(self.jobs.front(), Some(JobState::Settled)) {
            self.jobs.pop_front();
            self.base += 1;
        }
    }

    /// Records how job `id` ended (or drops it, if nobody waits for it any more).
    #[inline]
    fn finish(&mut self, id: u64, r: Result<R, JobError>) {
        // The common case: a job whose handle waits, among the recent ones.
        if let Some(i) = id
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            && let Some(st @ JobState::Pending) = self.jobs.get_mut(i)
        {
            *st = JobState::Done(r);
            return;
        }
        self.finish_slow(id, r);
    }

    #[cold]
    fn finish_slow(&mut self, id: u64, r: Result<R, JobError>) {
        if let Some(st) = self.state(id) {
            *st = match st {
                JobState::Pending => JobState::Done(r),
                _ => JobState::Settled, // abandoned (or, impossibly, finished twice)
            };
            if matches!(st, JobState::Settled) {
                self.settled(id);
            }
        }
    }

    fn scratch_of(&self, k: usize) -> Scratch {
        // Worker slots and scratches correspond one to one; `k < slots.len()`.
        let k = k.min(self.slots.len().saturating_sub(1));
        // SAFETY: the scratches are `slots.len()` consecutive `SCRATCH`-byte blocks of the
        // region from `self.scratch`, and `k` is a valid slot index (clamped above).
        Scratch(unsafe { self.scratch.add(k * SCRATCH) })
    }

    /// Forks the worker for slot `k`.
    fn spawn(&mut self, k: usize) -> Result<Worker, Error> {
        let (jobs_tx, jobs_rx) = byte_channel(RING_BYTES)?;
        let (res_tx, res_rx) = byte_channel(RING_BYTES)?;
        let slot = &self.slots[k];
        // Relaxed: the new worker is forked after these stores (fork orders them).
        slot.current.store(IDLE, Ordering::Relaxed);
        slot.pending.store(0, Ordering::Relaxed);
        let header = self.header;
        let scratch = self.scratch_of(k);
        let run = self.run.clone();
        let max = self.cfg.max_jobs_per_worker;
        let timed = self.cfg.job_timeout.is_some();
        let owner_pid = crate::sync::ident::current_pid();
        let child = fork((jobs_rx, res_tx), move |(jobs, results)| {
            // A worker stuck in a job never reads its job channel again, so it would not
            // notice its owner's death: have the kernel kill it then. (The owner is
            // single-threaded, so "the parent thread exits" means "the owner exits".)
            if !crate::sys::die_with_parent(owner_pid) {
                return 0; // the owner is already gone
            }
            let lane = Lane {
                jobs: &jobs,
                results: &results,
                header,
                slot,
                scratch,
            };
            run(lane, max, timed)
        })?;
        Ok(Worker {
            child,
            jobs: jobs_tx,
            results: res_rx,
            in_flight: VecDeque::new(),
            load: 0,
            dispatched: 0,
            timed_out: None,
            records: self.queue.records,
        })
    }

    fn submit(&mut self, job: &J) -> Result<u64, Error> {
        let id = self.enqueue(job);
        self.dispatch();
        Ok(id)
    }

    fn is_owner(&self) -> bool {
        crate::sync::ident::current_ident() == self.owner
    }

    /// Queues `jobs` (as `enqueue`, with consecutive ids) without dispatching them yet.
    fn enqueue_batch(&mut self, jobs: &[J]) {
        let mut done = 0;
        while let Some(rest) = jobs.get(done..).filter(|r| !r.is_empty()) {
            let room = self.cfg.queue_capacity.saturating_sub(self.queue.len());
            if self.closed || room == 0 || !self.is_owner() {
                // One at a time: it fails, or waits for room.
                self.enqueue(&rest[0]);
                done += 1;
                continue;
            }
            let n = room.min(rest.len());
            self.push_records(&rest[..n]);
            done += n;
        }
    }

    /// Queues `job` (running the pool while the queue is full) without dispatching it yet.
    fn enqueue(&mut self, job: &J) -> u64 {
        let id = self.next_id;
        if (self.closed || self.queue.len() >= self.cfg.queue_capacity || !self.is_owner())
            && let Err(e) = self.make_room()
        {
            self.next_id += 1;
            self.jobs.push_back(JobState::Pending);
            self.finish(id, Err(e));
            return id;
        }
        self.push_records(std::slice::from_ref(job));
        id
    }

    /// Gives `jobs` the next ids and appends their records to the queue (the caller checked
    /// that there is room).
    #[inline]
    fn push_records(&mut self, jobs: &[J]) {
        let first = self.next_id;
        self.next_id += jobs.len() as u64;
        self.jobs
            .extend(std::iter::repeat_with(|| JobState::Pending).take(jobs.len()));
        (self.codec.enc_jobs)(jobs, first, &mut self.queue.buf, &mut self.failed);
        self.queue.count += jobs.len() - self.failed.len();
        if !self.failed.is_empty() {
            self.refuse();
        }
    }

    /// Fails the jobs that could not be encoded.
    #[cold]
    fn refuse(&mut self) {
        for (id, reason) in std::mem::take(&mut self.failed) {
            self.finish(id, Err(JobError::Codec { reason }));
        }
    }

    /// Waits until a job may be queued (running the pool while the queue is full); or why it
    /// cannot be (not the owner, closed).
    #[cold]
    fn make_room(&mut self) -> Result<(), JobError> {
        if !self.is_owner() {
            return Err(not_owner());
        }
        if self.closed {
            return Err(JobError::Closed);
        }
        while self.queue.len() >= self.cfg.queue_capacity {
            if !self.pump(None) {
                break;
            }
        }
        Ok(())
    }

    /// Sends queued jobs to workers, a batch at a time: to the least loaded worker (an idle one
    /// first), at most `BATCH` jobs a frame, `WINDOW` in flight per worker, and no more than
    /// its fair share of the queue.
    fn dispatch(&mut self) {
        if !self.is_owner() {
            return;
        }
        let max = self.cfg.max_jobs_per_worker;
        while !self.queue.is_empty() {
            let mut eligible = 0;
            let mut pick: Option<(usize, usize)> = None;
            for (k, w) in self.workers.iter().enumerate() {
                let Some(w) = w else { continue };
                if w.load >= WINDOW || max.is_some_and(|m| w.dispatched >= m) {
                    continue;
                }
                eligible += 1;
                if pick.is_none_or(|(_, load)| w.load < load) {
                    pick = Some((k, w.load));
                }
            }
            let Some((k, load)) = pick else {
                return;
            };
            let Some(w) = self.workers[k].as_ref() else {
                return;
            };
            let room = max.map_or(usize::MAX, |m| {
                usize::try_from(m.saturating_sub(w.dispatched)).unwrap_or(usize::MAX)
            });
            let share = self.queue.len().div_ceil(eligible);
            let n = BATCH.min(WINDOW - load).min(room).min(share).max(1);
            let mut frame = self.spare.pop().unwrap_or_default();
            frame.clear();
            // Gather up to `n` records (the put-back ones first) without taking them yet.
            let mut from_again = 0;
            for rec in self.queue.again.iter().take(n) {
                if !frame.is_empty() && frame.len() + rec.len() > MAX_FRAME {
                    break;
                }
                frame.extend_from_slice(rec);
                from_again += 1;
            }
            let q = &self.queue;
            let (end, from_buf) = if from_again < n {
                // A frame takes at least one record (a job record takes at most `MAX_FRAME`).
                let room = MAX_FRAME.saturating_sub(frame.len());
                q.records
                    .span(&q.buf, q.at, n - from_again, room, frame.is_empty())
            } else {
                (q.at, 0)
            };
            if let Some(recs) = self.queue.buf.get(self.queue.at..end) {
                frame.extend_from_slice(recs);
            }
            let taken = from_again + from_buf;
            let Some(w) = self.workers[k].as_mut() else {
                return;
            };
            match w.jobs.try_send(&frame) {
                Ok(()) => {
                    w.load += taken;
                    w.dispatched += taken as u64;
                    w.in_flight.push_back(Sent {
                        bytes: frame,
                        at: 0,
                    });
                    for _ in 0..from_again {
                        if let Some(r) = self.queue.again.pop_front() {
                            self.spare.push(r);
                        }
                    }
                    let q = &mut self.queue;
                    q.at = end;
                    q.count -= from_buf;
                    if q.count == 0 {
                        q.buf.clear();
                        q.at = 0;
                    } else if q.at > 64 * 1024 {
                        q.buf.drain(..q.at);
                        q.at = 0;
                    }
                }
                Err(_) => {
                    // Full (cannot be: the window is far below the ring) or disconnected: the
                    // worker is gone or going. Keep the jobs queued; if the worker was gone
                    // (retired, and replaced if it could be), go on with the others.
                    self.spare.push(frame);
                    let before = self.workers[k].as_ref().map(|w| w.child.id());
                    self.retire_if_dead(k);
                    if self.workers.iter().all(Option::is_none) {
                        self.fail_queue();
                        return;
                    }
                    if self.workers[k].as_ref().map(|w| w.child.id()) == before {
                        return; // still there (full): `pump` waits for it
                    }
                }
            }
        }
    }

    /// Waits for something to happen (a result, a death, a job deadline) and handles it.
    /// `false` if nothing ever can (no worker, nothing in flight).
    fn pump(&mut self, deadline: Option<Instant>) -> bool {
        if !self.is_owner() {
            return false;
        }
        self.dispatch();
        if self.workers.iter().all(Option::is_none) {
            self.fail_queue();
            return false;
        }
        // Results are usually there already when jobs stream: take them without building a
        // `Select`; then spin briefly, as a blocked `recv` would; only then sleep in a
        // `Select` over every worker.
        if self.poll_all() {
            self.dispatch();
            return true;
        }
        let mut spinner = Spinner::new(WaitPolicy::default());
        while spinner.spin() {
            if self.poll_all() {
                self.dispatch();
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return true;
            }
        }
        // Tell the workers to send each result at once, then look again (see the module docs:
        // the barrier pairs with the light one each worker runs between publishing `pending`
        // and reading `waiting`).
        // Relaxed: ordered by the barrier that follows.
        self.header.waiting.store(1, Ordering::Relaxed);
        let barrier_ok = crate::sync::barrier::heavy();
        if self.poll_all() {
            self.header.waiting.store(0, Ordering::Relaxed);
            self.dispatch();
            return true;
        }
        // A worker that committed results before it could see `waiting` sends them only after
        // its next job (which may run for ever), or at the end of its batch: take them from its
        // scratch now. Any result it commits after the barrier, it sends at once.
        let mut any = false;
        for k in 0..self.workers.len() {
            any |= self.harvest(k);
        }
        if any {
            self.header.waiting.store(0, Ordering::Relaxed);
            self.dispatch();
            return true;
        }
        // With a job timeout, never sleep past it while jobs are in flight: a job that starts
        // while we sleep has no deadline in `earliest_job_deadline` yet.
        let busy = self.workers.iter().flatten().any(|w| w.load > 0);
        let job_deadline = match (self.earliest_job_deadline(), self.cfg.job_timeout) {
            (Some(d), _) => Some(d),
            (None, Some(t)) if busy => Instant::now().checked_add(t),
            _ => None,
        };
        let recheck = (!barrier_ok).then(|| Instant::now() + RECHECK);
        let until = [deadline, job_deadline, recheck]
            .into_iter()
            .flatten()
            .min();
        let ready = {
            let mut sel = Select::new();
            let mut map = Vec::new();
            for (k, w) in self.workers.iter().enumerate() {
                if let Some(w) = w {
                    sel.recv(&w.results);
                    map.push(k);
                }
            }
            let r = match until {
                None => Some(sel.ready()),
                Some(t) => sel
                    .ready_timeout(t.saturating_duration_since(Instant::now()))
                    .ok(),
            };
            r.and_then(|i| map.get(i).copied())
        };
        self.header.waiting.store(0, Ordering::Relaxed);
        match ready {
            Some(k) => self.drain(k),
            None => {
                self.poll_all();
            }
        }
        self.dispatch();
        true
    }

    /// Takes whatever every worker has sent (and retires the dead). `true` if anything
    /// happened.
    fn poll_all(&mut self) -> bool {
        let mut any = false;
        for k in 0..self.workers.len() {
            let ready = self.workers[k]
                .as_ref()
                .is_some_and(|w| w.results.core.c.recv_hint() && w.results.core.c.recv_ready());
            if ready {
                self.drain(k);
                any = true;
            }
        }
        if self.cfg.job_timeout.is_some() {
            // A kill puts the jobs behind the late one back in the queue: that is progress
            // (the caller dispatches them), not a reason to sleep.
            any |= self.enforce_timeouts();
        }
        any
    }

    /// Takes every result worker `k` has sent; retires it if it is gone.
    fn drain(&mut self, k: usize) {
        match self.take_sent(k) {
            Taken::Violation => self.kill_worker(k, None),
            Taken::Empty => {
                let gone = self.workers[k]
                    .as_ref()
                    .is_some_and(|w| w.results.disconnect_reason().is_some());
                if gone {
                    self.retire(k);
                }
            }
        }
    }

    /// Accepts every result frame worker `k` has committed, each from a private copy (the
    /// worker can still write the ring), until its ring is empty or a frame is not valid.
    fn take_sent(&mut self, k: usize) -> Taken {
        let mut frame = std::mem::take(&mut self.rbuf);
        let outcome = loop {
            let Some(w) = self.workers[k].as_mut() else {
                break Taken::Empty;
            };
            match w.results.try_recv_ref() {
                Ok(msg) => {
                    frame.clear();
                    frame.extend_from_slice(&msg);
                }
                Err(_) => break Taken::Empty,
            }
            if frame.is_empty() || self.accept(k, &frame) != frame.len() {
                break Taken::Violation;
            }
        };
        self.rbuf = frame;
        outcome
    }

    /// The result records of `frame` (a private copy), from worker `k`, in order. Returns how
    /// many bytes were valid records (all of them, unless the worker misbehaves). Records of
    /// jobs not in flight are skipped: results taken already (from the scratch and then again
    /// through the ring, or the other way round), or forged ones.
    fn accept(&mut self, k: usize, frame: &[u8]) -> usize {
        let mut at = 0;
        while at < frame.len() {
            // Runs of plain results of the oldest jobs, each awaited, take the fast path; any
            // other record takes the general one, then the fast path goes on.
            at = (self.codec.accept_run)(self, k, frame, at);
            if at >= frame.len() {
                break;
            }
            let Some((id, kind, payload)) = result_record(frame, at) else {
                return at;
            };
            let next = at + RES_HDR + payload.len();
            let Some(w) = self.workers[k].as_mut() else {
                return at;
            };
            // Validated before the job is taken off the in-flight list: a record that is not a
            // result of the oldest job leaves it there, for `retire` to settle.
            if w.front() != Some(id) || kind > KIND_BAD_JOB {
                if !w.in_flight_has(id) {
                    // Taken already (from the scratch, before the worker sent it; or through
                    // the ring, before it died and left its scratch uncleared), or forged.
                    at = next;
                    continue;
                }
                return at;
            }
            w.pop_front(&mut self.spare);
            let result = if kind == KIND_OK {
                (self.codec.dec_res)(payload).map_err(|reason| JobError::Codec { reason })
            } else {
                Err(failure(kind, payload))
            };
            self.finish(id, result);
            at = next;
        }
        at
    }

    /// Takes the results a live worker `k` has committed to its scratch and not sent yet.
    /// `true` if any was new.
    fn harvest(&mut self, k: usize) -> bool {
        let Some(w) = self.workers[k].as_ref() else {
            return false;
        };
        let slot = &self.slots[k];
        // Relaxed: a hint; the sequence lock below decides.
        if w.load == 0 || slot.pending.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let before = w.load;
        // The sequence lock's read side. Acquire (both): pairs with the worker's Release
        // store of `pending` after its records, and orders the copy after the first load of
        // `flushes`; the Acquire fence orders the copy before the second load, which then sees
        // any bump made before a scratch write the copy saw (the worker's Release fence).
        let g = slot.flushes.load(Ordering::Acquire);
        let pending = usize::try_from(slot.pending.load(Ordering::Acquire)).unwrap_or(SCRATCH);
        let mut copy = std::mem::take(&mut self.rbuf);
        self.scratch_of(k).copy_out(pending, &mut copy);
        fence(Ordering::Acquire);
        if slot.flushes.load(Ordering::Relaxed) == g {
            // A prefix of whole records is all we take; a worker that garbled its own scratch
            // only delays its results to its next frame.
            self.accept(k, &copy);
        }
        self.rbuf = copy;
        self.workers[k].as_ref().is_some_and(|w| w.load < before)
    }

    fn earliest_job_deadline(&self) -> Option<Instant> {
        let t = self.cfg.job_timeout?;
        let now_ns = crate::sys::mono_ns();
        let now = Instant::now();
        self.workers
            .iter()
            .enumerate()
            .filter_map(|(k, w)| {
                let w = w.as_ref()?;
                let slot = &self.slots[k];
                // Acquire: pairs with the worker's Release publication of `current`, so its
                // `started` is seen.
                let cur = slot.current.load(Ordering::Acquire);
                if w.front() != Some(cur) {
                    return None;
                }
                let started = slot.started.load(Ordering::Relaxed).min(now_ns);
                let ran = Duration::from_nanos(now_ns - started);
                Some(now + t.saturating_sub(ran))
            })
            .min()
    }

    /// Kills workers whose current job has run past `job_timeout`. `true` if it killed one.
    fn enforce_timeouts(&mut self) -> bool {
        let Some(t) = self.cfg.job_timeout else {
            return false;
        };
        let mut killed = false;
        let now_ns = crate::sys::mono_ns();
        for k in 0..self.workers.len() {
            let Some(w) = self.workers[k].as_ref() else {
                continue;
            };
            let slot = &self.slots[k];
            // Acquire: pairs with the worker's Release publication of `current`, so its
            // `started` is seen.
            let cur = slot.current.load(Ordering::Acquire);
            let started = slot.started.load(Ordering::Relaxed).min(now_ns);
            if w.front() != Some(cur) || Duration::from_nanos(now_ns - started) < t {
                continue;
            }
            // Claim the worker while it is still in that job: once this succeeds it starts no
            // other (its compare-and-swap to the next id fails). If it fails, the worker has
            // moved on: no kill.
            // Relaxed: the claim orders nothing else; the kill and `waitpid` that follow are
            // system calls, and the worker's own compare-and-swap reads this value.
            if slot
                .current
                .compare_exchange(cur, KILLED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.kill_worker(k, Some(cur));
                killed = true;
            }
        }
        killed
    }

    /// Kills worker `k` (for a timeout or a protocol violation) and retires it.
    /// `timed_out`: the job it is killed for having run past `job_timeout`.
    fn kill_worker(&mut self, k: usize, timed_out: Option<u64>) {
        if let Some(w) = self.workers[k].as_mut() {
            w.timed_out = timed_out;
            let _ = w.child.kill();
        }
        self.retire(k);
    }

    fn retire_if_dead(&mut self, k: usize) {
        let dead = self.workers[k]
            .as_ref()
            .is_some_and(|w| w.results.disconnect_reason().is_some());
        if dead {
            self.drain(k);
        }
    }

    /// Worker `k` is gone (or going): reap it, settle its in-flight jobs, fork a replacement.
    fn retire(&mut self, k: usize) {
        // Make sure it is gone (a worker that closed its ring but lives on, a compromised one,
        // must not keep `wait` from returning) and reap it; then take whatever it sent or
        // committed before it went (a result committed just before a timeout kill counts).
        let status = match self.workers[k].as_mut() {
            Some(w) => {
                let _ = w.child.kill();
                w.child.wait().ok()
            }
            None => return,
        };
        // Dead and reaped: what its ring and scratch hold now is all it ever produced.
        let _ = self.take_sent(k);
        let slot = &self.slots[k];
        // Acquire: pairs with the worker's Release store of `pending`, after its records.
        let pending = usize::try_from(slot.pending.load(Ordering::Acquire)).unwrap_or(SCRATCH);
        let mut copy = std::mem::take(&mut self.rbuf);
        self.scratch_of(k).copy_out(pending, &mut copy);
        self.accept(k, &copy);
        self.rbuf = copy;
        let Some(mut w) = self.workers[k].take() else {
            return;
        };
        // Acquire: pairs with the worker's Release publication of `current`.
        let current = self.slots[k].current.load(Ordering::Acquire);
        let timed_out = w.timed_out;
        for (n, (id, rec)) in w.take_unreported().into_iter().enumerate() {
            // The oldest unreported job is the only one it can have started (it runs them in
            // order and commits each result before it starts the next); it failed if its slot
            // says so, or if the pool killed the worker for running it too long.
            if n == 0 && timed_out == Some(id) {
                self.finish(id, Err(JobError::TimedOut));
            } else if n == 0 && id == current {
                let e = match status {
                    Some(s) => JobError::WorkerDied(s),
                    None => JobError::NoWorker {
                        reason: "the worker could not be reaped".into(),
                    },
                };
                self.finish(id, Err(e));
            } else {
                self.queue.again.push_back(rec);
            }
        }
        // Jobs it never started were put back above, in order, to be sent before the rest of
        // the queue.
        if !self.closed {
            match self.spawn(k) {
                Ok(nw) => self.workers[k] = Some(nw),
                Err(e) => self.respawn_error = Some(e.to_string()),
            }
        }
    }

    /// No worker is left: fail every queued job.
    fn fail_queue(&mut self) {
        let reason = self
            .respawn_error
            .clone()
            .unwrap_or_else(|| "the pool has no workers".into());
        for id in self.queue.take_ids() {
            let e = if self.closed {
                JobError::Closed
            } else {
                JobError::NoWorker {
                    reason: reason.clone(),
                }
            };
            self.finish(id, Err(e));
        }
    }

    fn shutdown(&mut self) -> Result<(), Error> {
        if !self.is_owner() {
            return Ok(()); // a copy in a fork child: the owner's workers are not ours
        }
        // Let every queued and in-flight job finish.
        while !self.queue.is_empty() || self.workers.iter().flatten().any(|w| w.load > 0) {
            if !self.pump(None) {
                break;
            }
        }
        self.closed = true;
        let mut first_err = None;
        for slot in &mut self.workers {
            if let Some(mut w) = slot.take() {
                drop(w.jobs); // the worker's loop ends
                if let Err(e) = w.child.wait() {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Worker {
    /// Whether job `id` is among its unreported jobs.
    fn in_flight_has(&self, id: u64) -> bool {
        self.in_flight.iter().any(|s| {
            let mut at = s.at;
            while let Some((rid, next)) = self.records.at(&s.bytes, at) {
                if rid == id {
                    return true;
                }
                at = next;
            }
            false
        })
    }
}

/// What a worker uses of the pool.
struct Lane<'a> {
    jobs: &'a ByteReceiver,
    results: &'a ByteSender,
    header: &'a Header,
    slot: &'a WorkerSlot,
    scratch: Scratch,
}

impl Lane<'_> {
    /// Sends the results committed in `out` (and mirrored in the scratch) as one frame.
    /// `false` if the owner is gone.
    fn flush(&self, out: &mut Vec<u8>) -> bool {
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
        let g = self.slot.flushes.load(Ordering::Relaxed);
        self.slot
            .flushes
            .store(g.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        true
    }

    /// Commits the result record that starts at `start` of `out` (its header still blank; its
    /// payload encoded after it): fills in the header, sends first what was there before it if
    /// the frame would be too large, mirrors the record in the scratch and publishes it.
    /// `false` if the owner is gone.
    #[inline]
    fn commit(&self, out: &mut Vec<u8>, mut start: usize, id: u64, mut kind: u8) -> bool {
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
        self.scratch.write(start, &out[start..]);
        // Release: pairs with the owner's Acquire load of `pending` in `retire`, which then
        // sees the record written above.
        self.slot.pending.store(out.len() as u64, Ordering::Release);
        true
    }
}

/// A worker's life: run jobs until the owner closes the job channel or dies.
fn worker_main<J, R, W: Wire<J> + Wire<R>>(
    lane: Lane<'_>,
    work: &impl Fn(J) -> R,
    max_jobs: Option<u64>,
    timed: bool,
) -> i32 {
    let records = Records {
        stride: <W as Wire<J>>::SIZE.map(|s| JOB_HDR + s),
    };
    let mut frame = Vec::new();
    let mut out = Vec::with_capacity(MAX_FRAME + RES_HDR);
    let mut done = 0u64;
    // What this worker last published in `current` (the owner stored `IDLE` before the fork).
    let mut current = IDLE;
    while lane.jobs.recv_into(&mut frame).is_ok() {
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
            if !lane.commit(&mut out, start, id, kind) {
                return 0; // the owner is gone
            }
            done += 1;
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
        if !lane.flush(&mut out) {
            return 0;
        }
    }
    let _ = lane.flush(&mut out);
    0
}

#[cold]
fn too_large(len: usize) -> String {
    format!(
        "the encoded job takes {len} bytes; a pool job takes at most {}",
        MAX_FRAME - JOB_HDR
    )
}

/// `Inner::accept`'s fast path, for wire `W`: takes the records of `frame` from `at` on while
/// each is a result (kind `KIND_OK`) of worker `k`'s oldest unreported job, whose state is
/// `Pending`. Returns where it stopped; everything else is left to `accept`.
fn accept_run<J, R, W: Wire<R>>(
    inner: &mut Inner<J, R>,
    k: usize,
    frame: &[u8],
    mut at: usize,
) -> usize {
    let Some(w) = inner.workers[k].as_mut() else {
        return at;
    };
    let records = w.records;
    while let Some(s) = w.in_flight.front_mut() {
        while let Some((expect, next)) = records.at(&s.bytes, s.at) {
            let Some((id, kind, payload)) = result_record(frame, at) else {
                return at;
            };
            if kind != KIND_OK || expect != id {
                return at;
            }
            let Some(st @ JobState::Pending) = id
                .checked_sub(inner.base)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| inner.jobs.get_mut(i))
            else {
                return at;
            };
            *st = JobState::Done(W::dec(payload).map_err(|reason| JobError::Codec { reason }));
            s.at = next;
            w.load = w.load.saturating_sub(1);
            at += RES_HDR + payload.len();
        }
        // Every record of this frame is reported.
        if let Some(s) = w.in_flight.pop_front() {
            inner.spare.push(s.bytes);
        }
    }
    at
}

/// The result record at `at` of a private copy of a result frame: id, kind, payload; `None`
/// if it is cut short.
#[inline]
fn result_record(frame: &[u8], at: usize) -> Option<(u64, u8, &[u8])> {
    let hdr: &[u8; RES_HDR] = frame.get(at..at + RES_HDR)?.try_into().ok()?;
    let [i0, i1, i2, i3, i4, i5, i6, i7, kind, l0, l1, l2, l3] = *hdr;
    let id = u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]);
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let payload = frame.get(at + RES_HDR..at.checked_add(RES_HDR + len)?)?;
    Some((id, kind, payload))
}

/// How a job failed, from a result record of kind `KIND_PANICKED` or `KIND_BAD_JOB`.
#[cold]
fn failure(kind: u8, payload: &[u8]) -> JobError {
    let text = String::from_utf8_lossy(payload).into_owned();
    if kind == KIND_PANICKED {
        JobError::Panicked { message: text }
    } else {
        JobError::Codec { reason: text }
    }
}

/// A result payload too large for a frame becomes a report of that (a panic message is cut
/// to fit instead). Returns the kind to send.
fn fit_result(kind: u8, res: &mut Vec<u8>) -> u8 {
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
