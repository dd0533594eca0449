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
//! Where each part lives:
//!
//! * this file: the public face (`PoolBuilder`, `Pool`, `JobHandle`, `Map`, `JobError`) and the
//!   owner's state (`Inner`): building, forking a worker, shutting down;
//! * [`wire`]: what crosses the process boundary: job and result records, and the monomorphic
//!   encoders and decoders (`PlainWire`, `SerdeWire`);
//! * [`worker`]: the shared region (drawn there), and a worker's life;
//! * [`dispatch`]: the owner's queue, sending batches to workers, waiting (spin, handshake,
//!   `Select`);
//! * [`accounting`]: every job ends exactly once: taking results, the job states their handles
//!   read, timeouts, deaths and what they put back.

mod accounting;
mod dispatch;
mod wire;
mod worker;

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
use accounting::*;
use dispatch::*;
use wire::*;
use worker::*;

/// Jobs in flight per worker at most (sent, not yet reported): two full batches, so a worker
/// always has the next batch while the owner takes the results of the last one. A slow job
/// delays at most the jobs sent behind it to its worker.
pub const WINDOW: usize = 2 * BATCH;

/// Jobs per job frame at most. Large enough that workers sharing a CPU switch rarely (each
/// switch costs microseconds; 64 made two workers on one CPU twice as slow as one), small
/// enough for a frame (256 plain `u64` jobs take 3 KiB of the ring's 32 KiB frames). Dispatch
/// sends no more than a worker's fair share of the queue, so a short queue still spreads
/// (except tiny jobs between workers pinned to one CPU: see `dispatch`).
pub const BATCH: usize = 256;

/// Work (jobs in flight plus queued, at a worker's measured cost per job) that dispatch keeps
/// on one busy worker rather than spreading to an idle one: about twice what waking a sleeping
/// worker costs on a virtual machine (≈50 µs), so spreading less than this could at best break
/// even, and with workers sharing a CPU costs a context switch per batch. It is also how long
/// a busy worker may go without finishing a batch and still count as moving.
const KEEP: Duration = Duration::from_micros(100);

/// How long dispatch keeps tiny jobs for a worker it gave a batch that has not begun it yet
/// (it is being woken from sleep) before it counts it as stuck (see `keeper`).
const WAKE: Duration = Duration::from_millis(2);

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
    /// Until when dispatch may hold queued tiny jobs for a busy worker (see
    /// `dispatch::keeper`); `None` while it holds none.
    hold_until: Option<Instant>,
    /// When the current hold began (a hold lasts `WAKE` at most), for which keeper, and what
    /// that keeper had reported then (`reported_by`).
    hold_since: Option<Instant>,
    hold_keeper: usize,
    hold_mark: u64,
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

/// What a handle needs of the pool, whatever its job type.
trait Run<R> {
    fn take(&mut self, id: u64) -> Option<Result<R, JobError>>;
    fn pump(&mut self, deadline: Option<Instant>) -> bool;
    fn wait_sent(
        &mut self,
        id: u64,
        k: usize,
        deadline: Option<Instant>,
    ) -> Option<Result<R, JobError>>;
    fn abandon(&mut self, id: u64);
}

impl<J, R> Run<R> for Inner<J, R> {
    fn take(&mut self, id: u64) -> Option<Result<R, JobError>> {
        Inner::take(self, id)
    }
    fn pump(&mut self, deadline: Option<Instant>) -> bool {
        Inner::pump(self, deadline)
    }
    fn wait_sent(
        &mut self,
        id: u64,
        k: usize,
        deadline: Option<Instant>,
    ) -> Option<Result<R, JobError>> {
        Inner::wait_sent(self, id, k, deadline)
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

/// A submitted job; [`join`](JobHandle::join) waits for its result. Dropping it without
/// joining lets the job run and discards its result.
pub struct JobHandle<R> {
    inner: Rc<RefCell<dyn Run<R>>>,
    id: u64,
    /// The worker `submit` sent the job to alone (its fast path), or `NOT_SENT`.
    worker: usize,
    taken: bool,
}

/// `JobHandle::worker` of a job that went through the queue.
const NOT_SENT: usize = usize::MAX;

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
        let first: *const WorkerSlot = region.alloc(WorkerSlot::idle())?;
        for _ in 1..n {
            region.alloc(WorkerSlot::idle())?;
        }
        let scratch = region.alloc_raw(scratch_len, 64)?.as_ptr();
        // SAFETY: the header and then `n` initialised `WorkerSlot`s (each a whole number of
        // 64-byte lines, 64-aligned, so contiguous) were placed from the start of the region.
        // They are used only while `Inner`, which owns the region (`_region`), lives, and by
        // workers, which have their own copy of the mapping.
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
            hold_until: None,
            hold_since: None,
            hold_keeper: 0,
            hold_mark: 0,
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
        let (id, worker) = self.inner.borrow_mut().submit(&job)?;
        Ok(JobHandle {
            inner: self.inner.clone(),
            id,
            worker,
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
        let limit = {
            let inner = self.inner.borrow();
            inner.cfg.queue_capacity + inner.cfg.workers * WINDOW
        };
        Map {
            pool: self,
            jobs: jobs.into_iter(),
            cur: 0,
            cur_end: 0,
            pending: VecDeque::new(),
            ahead: 0,
            limit,
            refill_at: limit - BATCH.min(limit),
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
        if self.worker != NOT_SENT {
            // Sent alone to an idle worker: wait for that one result first (the general loop
            // below takes over if it does not come while the owner spins).
            let k = std::mem::replace(&mut self.worker, NOT_SENT);
            if let Some(r) = inner.wait_sent(self.id, k, deadline) {
                self.taken = true;
                return Some(r);
            }
        }
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
    /// The run of ids being yielded, `cur..cur_end` (kept out of `pending`: the hot path
    /// touches two fields instead of the deque).
    cur: u64,
    cur_end: u64,
    /// The ids submitted after that run and not yet yielded, in input order: runs of
    /// consecutive ids, `start..end` (a run ends where another submission took an id).
    pending: VecDeque<(u64, u64)>,
    /// How many ids `cur..cur_end` and `pending` hold.
    ahead: usize,
    /// How many it may hold: the queue's capacity plus the workers' windows.
    limit: usize,
    /// `ahead` at or below which a batch fits again (`limit` less a batch): when to top up.
    refill_at: usize,
    /// Jobs taken from `jobs`, being queued.
    batch: Vec<J>,
}

impl<J, R, I> Drop for Map<'_, J, R, I> {
    fn drop(&mut self) {
        // Results not yielded are discarded when they come.
        if let Ok(mut inner) = self.pool.inner.try_borrow_mut() {
            let current = std::iter::once((self.cur, self.cur_end));
            for (start, end) in current.chain(self.pending.drain(..)) {
                for id in start..end {
                    inner.abandon(id);
                }
            }
        }
    }
}

impl<J: 'static, R: 'static, I: Iterator<Item = J>> Iterator for Map<'_, J, R, I> {
    type Item = Result<R, JobError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        // Top up what is submitted ahead, a batch at a time (one dispatch for the lot), then
        // wait for the oldest. The hot path (a result that is in) is kept small; topping up
        // and waiting are out of line.
        if self.ahead <= self.refill_at {
            self.top_up();
        }
        if self.cur == self.cur_end {
            (self.cur, self.cur_end) = self.pending.pop_front()?;
        }
        let id = self.cur;
        self.cur += 1;
        self.ahead -= 1;
        let mut inner = self.pool.inner.borrow_mut();
        let r = inner.take(id);
        if r.is_some() {
            return r;
        }
        Some(Self::wait(&mut inner, id))
    }
}

impl<J: 'static, R: 'static, I: Iterator<Item = J>> Map<'_, J, R, I> {
    /// Submits jobs from the caller's iterator until `limit` are ahead.
    #[inline(never)]
    fn top_up(&mut self) {
        // The jobs are taken from the caller's iterator before the pool is borrowed: that
        // iterator may use the pool (submit, worker_ids, drop a handle).
        self.batch.clear();
        self.batch
            .extend(self.jobs.by_ref().take(self.limit - self.ahead));
        let mut inner = self.pool.inner.borrow_mut();
        // Only `enqueue` takes ids, so the jobs queued now have consecutive ones.
        let first = inner.next_id;
        inner.enqueue_batch(&self.batch);
        let n = self.batch.len();
        self.batch.clear();
        if n > 0 {
            let end = first + n as u64;
            match self.pending.back_mut() {
                Some((_, e)) if *e == first => *e = end,
                // Nothing queued after the current run, which ends (or ended) right here.
                None if self.cur_end == first => self.cur_end = end,
                _ => self.pending.push_back((first, end)),
            }
            self.ahead += n;
            inner.dispatch();
        }
    }

    /// Runs the pool until job `id` has ended.
    #[inline(never)]
    fn wait(inner: &mut Inner<J, R>, id: u64) -> Result<R, JobError> {
        loop {
            if let Some(r) = inner.take(id) {
                return r;
            }
            if !inner.pump(None) {
                return inner.take(id).unwrap_or(Err(JobError::Closed));
            }
        }
    }
}

impl<J, R> Inner<J, R> {
    /// Forks the worker for slot `k`.
    fn spawn(&mut self, k: usize) -> Result<Worker, Error> {
        let (jobs_tx, jobs_rx) = byte_channel(RING_BYTES)?;
        let (res_tx, res_rx) = byte_channel(RING_BYTES)?;
        let slot = &self.slots[k];
        // Relaxed: the new worker is forked after these stores (fork orders them).
        slot.current.store(IDLE, Ordering::Relaxed);
        slot.pending.store(0, Ordering::Relaxed);
        slot.cost.store(0, Ordering::Relaxed);
        slot.cpu.store(0, Ordering::Relaxed);
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
            busy_since: 0,
            dispatched: 0,
            timed_out: None,
            records: self.queue.records,
        })
    }

    /// Queues `job` and dispatches; or, with nothing queued and a worker idle, sends it
    /// straight to that worker (`send_one`). The job's id, and the worker it went to alone
    /// (`NOT_SENT` if it was queued).
    fn submit(&mut self, job: &J) -> Result<(u64, usize), Error> {
        if let Some(sent) = self.send_one(job) {
            return Ok(sent);
        }
        let id = self.enqueue(job);
        self.dispatch();
        Ok((id, NOT_SENT))
    }

    fn is_owner(&self) -> bool {
        crate::sync::ident::current_ident() == self.owner
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
