//! `Pool`: a crash-isolating pool of forked worker processes running one function.
//!
//! # Shape
//!
//! ```text
//! owner process                                   worker k (forked by the owner)
//!   queue: jobs not yet dispatched                  loop: recv job -> mark started -> work(job)
//!   per worker: in-flight ids (oldest first),             -> send result -> mark idle
//!               a byte duplex (jobs ->, <- results)
//!   slots: AnonRegion [WorkerSlot; workers]  <-- shared -->  slots[k]: current job id, start time
//! ```
//!
//! Frames (little-endian): a job is `[id: u64][payload]`; a result is `[id: u64][kind: u8]
//! [payload]`, kind 0 = the result, 1 = the job panicked (payload: the message, UTF-8), 2 = the
//! job could not be decoded. Payloads are bytemuck bytes for plain data, postcard for serde
//! types; every frame is decoded from a private copy and validated (a compromised worker can
//! send anything: it gets at most a failed job).
//!
//! # Accounting: every job ends exactly once
//!
//! A worker runs its jobs one at a time, in dispatch order, and reports each before it takes
//! the next. So when a worker dies, after draining what it sent, its in-flight list is: the job
//! it was running (if its slot says it started it), then jobs it never started. The first fails
//! with `WorkerDied(status)` (or `TimedOut` if the pool killed it), the others go back to the
//! front of the queue, in order, for the other workers (or a replacement): none lost, none run
//! twice. A result whose id is not the worker's oldest in-flight job is a protocol violation:
//! the worker is killed and treated as dead.
//!
//! Dispatch: a job goes to the idle worker first (no in-flight job), else to the worker with
//! the fewest in flight, up to a window of [`WINDOW`] jobs each, so tiny jobs stream without a
//! round trip per job while a slow job delays at most the few queued behind it on its worker.
//!
//! Waiting: the owner waits in a [`Select`] over every worker's result receiver (woken by a
//! result, a close or a death), with a timeout at the earliest job deadline when
//! `job_timeout` is set.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitStatus;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sync::WaitPolicy;
use crate::sync::spin::Spinner;
use crate::{AnonRegion, ByteReceiver, ByteSender, Child, Error, Select, byte_channel, fork};

/// Jobs in flight per worker at most (dispatched, not yet reported): enough for tiny jobs to
/// stream without a round trip per job; a slow job delays at most `WINDOW - 1` jobs queued
/// behind it on its worker (jobs go to an idle worker first, then to the least loaded).
pub const WINDOW: usize = 32;

/// Bytes of each worker's job ring and result ring.
const RING_BYTES: usize = 64 * 1024;
/// The largest frame (id and kind included) a ring of `RING_BYTES` takes: half the ring
/// minus 16 (see `ring`).
const MAX_FRAME: usize = RING_BYTES / 2 - 16;

const KIND_OK: u8 = 0;
const KIND_PANICKED: u8 = 1;
const KIND_BAD_JOB: u8 = 2;
/// `WorkerSlot::current` when the worker runs no job.
const IDLE: u64 = u64::MAX;

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

/// How jobs and results cross the process boundary.
struct Codec<J, R> {
    enc_job: fn(&J, &mut Vec<u8>) -> Result<(), String>,
    dec_job: fn(&[u8]) -> Result<J, String>,
    enc_res: fn(&R, &mut Vec<u8>) -> Result<(), String>,
    dec_res: fn(&[u8]) -> Result<R, String>,
}

impl<J, R> Clone for Codec<J, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<J, R> Copy for Codec<J, R> {}

fn enc_plain<T: crate::Plain>(v: &T, out: &mut Vec<u8>) -> Result<(), String> {
    out.extend_from_slice(bytemuck::bytes_of(v));
    Ok(())
}

fn dec_plain<T: crate::Plain>(b: &[u8]) -> Result<T, String> {
    bytemuck::checked::try_pod_read_unaligned::<T>(b).map_err(|e| e.to_string())
}

#[cfg(feature = "serde")]
fn enc_serde<T: serde::Serialize>(v: &T, out: &mut Vec<u8>) -> Result<(), String> {
    postcard::to_extend(v, std::mem::take(out))
        .map(|v| *out = v)
        .map_err(|e| e.to_string())
}

#[cfg(feature = "serde")]
fn dec_serde<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| e.to_string())
}

/// What a worker publishes about itself (in the pool's shared region). Hints only: a
/// compromised worker can write anything here, and the owner never trusts more than "which
/// in-flight job had started".
#[repr(C)]
struct WorkerSlot {
    /// The id of the job being run, or `IDLE`.
    current: AtomicU64,
    /// When it started (`CLOCK_MONOTONIC` ns).
    started: AtomicU64,
}

// SAFETY: two atomics, valid for every bit pattern, no pointers.
unsafe impl crate::Shareable for WorkerSlot {}

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
        let codec = Codec {
            enc_job: enc_plain::<J>,
            dec_job: dec_plain::<J>,
            enc_res: enc_plain::<R>,
            dec_res: dec_plain::<R>,
        };
        Pool::start(self, Rc::new(work), codec)
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
        let codec = Codec {
            enc_job: enc_serde::<J>,
            dec_job: dec_serde::<J>,
            enc_res: enc_serde::<R>,
            dec_res: dec_serde::<R>,
        };
        Pool::start(self, Rc::new(work), codec)
    }
}

/// One worker process as the owner sees it.
struct Worker {
    child: Child,
    jobs: ByteSender,
    results: ByteReceiver,
    /// Jobs dispatched and not yet reported, oldest first, with their frames (to run them
    /// elsewhere if this worker dies before starting them).
    in_flight: VecDeque<(u64, Vec<u8>)>,
    /// Jobs dispatched to this worker in its life (for `max_jobs_per_worker`).
    dispatched: u64,
    /// The job it was killed for, having run past `job_timeout`.
    timed_out: Option<u64>,
}

struct Inner<J, R> {
    cfg: PoolBuilder,
    work: Rc<dyn Fn(J) -> R>,
    codec: Codec<J, R>,
    /// The workers' slots, in `_slots_region` (not truly `'static`: see `Pool::start`).
    slots: &'static [WorkerSlot],
    _slots_region: AnonRegion,
    /// `None`: the slot's worker is gone and could not be replaced.
    workers: Vec<Option<Worker>>,
    queue: VecDeque<(u64, Vec<u8>)>,
    /// Every job from `base` on, by id: pending, finished (its result waits for its handle),
    /// or settled (taken, or its handle dropped). Settled jobs are popped from the front, so
    /// this holds the jobs between the oldest unsettled one and the newest.
    jobs: VecDeque<JobState<R>>,
    /// The id of `jobs[0]`.
    base: u64,
    /// Frame buffers of finished jobs, reused for new ones.
    spare: Vec<Vec<u8>>,
    /// A private copy of the result being decoded (never decoded in shared memory).
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
enum Sent {
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
        let k = usize::try_from(id.checked_sub(self.base)?).ok()?;
        let st = self.jobs.get_mut(k)?;
        if !matches!(st, JobState::Done(_)) {
            return None;
        }
        let JobState::Done(r) = std::mem::replace(st, JobState::Settled) else {
            return None;
        };
        self.pop_settled();
        Some(r)
    }
    fn pump(&mut self, deadline: Option<Instant>) -> bool {
        Inner::pump(self, deadline)
    }
    fn abandon(&mut self, id: u64) {
        let k = id
            .checked_sub(self.base)
            .and_then(|k| usize::try_from(k).ok());
        match k.and_then(|k| self.jobs.get_mut(k)) {
            Some(st @ JobState::Done(_)) => *st = JobState::Settled,
            Some(st @ JobState::Pending) => *st = JobState::Abandoned,
            _ => {}
        }
        self.pop_settled();
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

    fn start(
        cfg: PoolBuilder,
        work: Rc<dyn Fn(J) -> R>,
        codec: Codec<J, R>,
    ) -> Result<Self, Error> {
        if crate::sys::thread_count()? > 1 {
            return Err(Error::MultiThreaded);
        }
        let n = cfg.workers;
        let region = AnonRegion::new(n * std::mem::size_of::<WorkerSlot>())?;
        for _ in 0..n {
            region.alloc(WorkerSlot {
                current: AtomicU64::new(IDLE),
                started: AtomicU64::new(0),
            })?;
        }
        let base = region.as_ptr() as *const WorkerSlot;
        // SAFETY: `n` initialised `WorkerSlot`s were placed contiguously from the start of the
        // (page-aligned) region. The slice is used only while `Inner`, which owns the region
        // (`_slots_region`), lives, and by workers, which have their own copy of the mapping.
        let slots = unsafe { std::slice::from_raw_parts(base, n) };
        let mut inner = Inner {
            cfg,
            work,
            codec,
            slots,
            _slots_region: region,
            workers: Vec::with_capacity(n),
            queue: VecDeque::new(),
            jobs: VecDeque::new(),
            base: 0,
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
    /// Ids submitted and not yet yielded, in input order.
    pending: VecDeque<u64>,
}

impl<J, R, I> Drop for Map<'_, J, R, I> {
    fn drop(&mut self) {
        // Results not yielded are discarded when they come.
        if let Ok(mut inner) = self.pool.inner.try_borrow_mut() {
            for id in self.pending.drain(..) {
                inner.abandon(id);
            }
        }
    }
}

impl<J: 'static, R: 'static, I: Iterator<Item = J>> Iterator for Map<'_, J, R, I> {
    type Item = Result<R, JobError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut inner = self.pool.inner.borrow_mut();
        let ahead = inner.cfg.queue_capacity + inner.cfg.workers * WINDOW;
        // Top up what is submitted ahead (one dispatch for the lot), then wait for the oldest.
        let mut added = false;
        while self.pending.len() < ahead {
            let Some(job) = self.jobs.next() else { break };
            self.pending.push_back(inner.enqueue(&job));
            added = true;
        }
        if added {
            inner.dispatch();
        }
        let id = self.pending.pop_front()?;
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
    /// Records how job `id` ended (or drops it, if nobody waits for it any more).
    fn finish(&mut self, id: u64, r: Result<R, JobError>) {
        let k = id
            .checked_sub(self.base)
            .and_then(|k| usize::try_from(k).ok());
        if let Some(st) = k.and_then(|k| self.jobs.get_mut(k)) {
            *st = match st {
                JobState::Pending => JobState::Done(r),
                _ => JobState::Settled, // abandoned (or, impossibly, finished twice)
            };
        }
        self.pop_settled();
    }

    fn pop_settled(&mut self) {
        while matches!(self.jobs.front(), Some(JobState::Settled)) {
            self.jobs.pop_front();
            self.base += 1;
        }
    }

    /// Forks the worker for slot `k`.
    fn spawn(&mut self, k: usize) -> Result<Worker, Error> {
        let (jobs_tx, jobs_rx) = byte_channel(RING_BYTES)?;
        let (res_tx, res_rx) = byte_channel(RING_BYTES)?;
        let slot = &self.slots[k];
        // Relaxed: the new worker is forked after this store (fork orders it).
        slot.current.store(IDLE, Ordering::Relaxed);
        let work = self.work.clone();
        let codec = self.codec;
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
            worker_main(&jobs, &results, slot, &*work, codec, max, timed)
        })?;
        Ok(Worker {
            child,
            jobs: jobs_tx,
            results: res_rx,
            in_flight: VecDeque::new(),
            dispatched: 0,
            timed_out: None,
        })
    }

    fn submit(&mut self, job: &J) -> Result<u64, Error> {
        let id = self.enqueue(job);
        self.dispatch();
        Ok(id)
    }

    /// Queues `job` (running the pool while the queue is full) without dispatching it yet.
    fn is_owner(&self) -> bool {
        crate::sync::ident::current_ident() == self.owner
    }

    fn enqueue(&mut self, job: &J) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.jobs.push_back(JobState::Pending);
        if !self.is_owner() {
            self.finish(id, Err(not_owner()));
            return id;
        }
        let mut frame = self.spare.pop().unwrap_or_default();
        frame.clear();
        frame.extend_from_slice(&id.to_le_bytes());
        if let Err(reason) = (self.codec.enc_job)(job, &mut frame) {
            self.finish(id, Err(JobError::Codec { reason }));
            return id;
        }
        if self.closed {
            self.finish(id, Err(JobError::Closed));
            return id;
        }
        if frame.len() > MAX_FRAME {
            self.finish(
                id,
                Err(JobError::Codec {
                    reason: format!(
                        "the encoded job takes {} bytes; a pool job takes at most {}",
                        frame.len() - 8,
                        MAX_FRAME - 8
                    ),
                }),
            );
            return id;
        }
        while self.queue.len() >= self.cfg.queue_capacity {
            if !self.pump(None) {
                break;
            }
        }
        self.queue.push_back((id, frame));
        id
    }

    /// Hands queued jobs to workers: idle ones first, then the least loaded, within the window.
    fn dispatch(&mut self) {
        if !self.is_owner() {
            return;
        }
        while let Some((id, frame)) = self.queue.pop_front() {
            let max = self.cfg.max_jobs_per_worker;
            let pick = self
                .workers
                .iter()
                .enumerate()
                .filter_map(|(k, w)| w.as_ref().map(|w| (k, w)))
                .filter(|(_, w)| w.in_flight.len() < WINDOW && max.is_none_or(|m| w.dispatched < m))
                .min_by_key(|(_, w)| w.in_flight.len())
                .map(|(k, _)| k);
            let Some(k) = pick else {
                self.queue.push_front((id, frame));
                return;
            };
            let Some(w) = self.workers[k].as_mut() else {
                self.queue.push_front((id, frame));
                return;
            };
            match w.jobs.try_send(&frame) {
                Ok(()) => {
                    w.in_flight.push_back((id, frame));
                    w.dispatched += 1;
                    // Fill this worker's window while it is still the least loaded one (it
                    // stays so while the others are at least as busy).
                    let others = self
                        .workers
                        .iter()
                        .enumerate()
                        .filter(|(j, o)| *j != k && o.is_some())
                        .filter_map(|(_, o)| o.as_ref().map(|o| o.in_flight.len()))
                        .min()
                        .unwrap_or(WINDOW);
                    let Some(w) = self.workers[k].as_mut() else {
                        return;
                    };
                    while w.in_flight.len() < WINDOW.min(others + 1)
                        && max.is_none_or(|m| w.dispatched < m)
                    {
                        let Some((id, frame)) = self.queue.pop_front() else {
                            return;
                        };
                        if w.jobs.try_send(&frame).is_err() {
                            self.queue.push_front((id, frame));
                            break;
                        }
                        w.in_flight.push_back((id, frame));
                        w.dispatched += 1;
                    }
                }
                Err(_) => {
                    // Full (cannot be: the window is far below the ring) or disconnected: the
                    // worker is gone or going. Keep the job queued; if the worker was gone
                    // (retired, and replaced if it could be), go on with the others.
                    self.queue.push_front((id, frame));
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
        // `Select`; then spin briefly on the workers that have jobs in flight, as a blocked
        // `recv` would; only then sleep in a `Select` over every worker.
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
        // With a job timeout, never sleep past it while jobs are in flight: a job that starts
        // while we sleep has no deadline in `earliest_job_deadline` yet.
        let busy = self
            .workers
            .iter()
            .flatten()
            .any(|w| !w.in_flight.is_empty());
        let job_deadline = match (self.earliest_job_deadline(), self.cfg.job_timeout) {
            (Some(d), _) => Some(d),
            (None, Some(t)) if busy => Instant::now().checked_add(t),
            _ => None,
        };
        let until = match (deadline, job_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
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
            r.map(|i| map[i])
        };
        match ready {
            Some(k) => self.drain(k),
            None => self.enforce_timeouts(),
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
            self.enforce_timeouts();
        }
        any
    }

    /// Takes every result worker `k` has sent; retires it if it is gone.
    fn drain(&mut self, k: usize) {
        match self.take_sent(k) {
            Sent::Violation => self.kill_worker(k, None),
            Sent::Empty => {
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
    /// worker can still write the ring), until its ring is empty or a frame is not a valid
    /// result.
    fn take_sent(&mut self, k: usize) -> Sent {
        let mut frame = std::mem::take(&mut self.rbuf);
        let outcome = loop {
            let Some(w) = self.workers[k].as_mut() else {
                break Sent::Empty;
            };
            match w.results.try_recv_ref() {
                Ok(msg) => {
                    frame.clear();
                    frame.extend_from_slice(&msg);
                }
                Err(_) => break Sent::Empty,
            }
            if !self.accept(k, &frame) {
                break Sent::Violation;
            }
        };
        self.rbuf = frame;
        outcome
    }

    /// One result frame from worker `k`. `false`: a protocol violation.
    fn accept(&mut self, k: usize, frame: &[u8]) -> bool {
        let Some(w) = self.workers[k].as_mut() else {
            return false;
        };
        let (Some(id), Some(&kind)) = (
            frame
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes),
            frame.get(8),
        ) else {
            return false;
        };
        // Validated before the job is taken off the in-flight list: a frame that is not a
        // result of the oldest job leaves it there, for `retire` to settle.
        if w.in_flight.front().map(|f| f.0) != Some(id)
            || !matches!(kind, KIND_OK | KIND_PANICKED | KIND_BAD_JOB)
        {
            return false;
        }
        if let Some((_, frame)) = w.in_flight.pop_front() {
            self.spare.push(frame);
        }
        let payload = &frame[9..];
        let result = match kind {
            KIND_OK => (self.codec.dec_res)(payload).map_err(|reason| JobError::Codec { reason }),
            KIND_PANICKED => Err(JobError::Panicked {
                message: String::from_utf8_lossy(payload).into_owned(),
            }),
            _ => Err(JobError::Codec {
                reason: String::from_utf8_lossy(payload).into_owned(),
            }),
        };
        self.finish(id, result);
        true
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
                // Acquire: pairs with the worker's Release store of `current`, so its
                // `started` is seen.
                let cur = slot.current.load(Ordering::Acquire);
                if w.in_flight.front().map(|f| f.0) != Some(cur) {
                    return None;
                }
                let started = slot.started.load(Ordering::Relaxed).min(now_ns);
                let ran = Duration::from_nanos(now_ns - started);
                Some(now + t.saturating_sub(ran))
            })
            .min()
    }

    /// Kills workers whose current job has run past `job_timeout`.
    fn enforce_timeouts(&mut self) {
        let Some(t) = self.cfg.job_timeout else {
            return;
        };
        let now_ns = crate::sys::mono_ns();
        for k in 0..self.workers.len() {
            let Some(w) = self.workers[k].as_ref() else {
                continue;
            };
            let slot = &self.slots[k];
            // Acquire: pairs with the worker's Release store of `current`, so its
            // `started` is seen.
            let cur = slot.current.load(Ordering::Acquire);
            let started = slot.started.load(Ordering::Relaxed).min(now_ns);
            if w.in_flight.front().map(|f| f.0) == Some(cur)
                && Duration::from_nanos(now_ns - started) >= t
            {
                self.kill_worker(k, Some(cur));
            }
        }
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
        // must not keep `wait` from returning) and reap it; then take whatever it sent before
        // it went (a result committed just before a timeout kill must count).
        let status = match self.workers[k].as_mut() {
            Some(w) => {
                let _ = w.child.kill();
                w.child.wait().ok()
            }
            None => return,
        };
        // Dead and reaped: what its ring holds now is all it ever sent.
        let _ = self.take_sent(k);
        let Some(mut w) = self.workers[k].take() else {
            return;
        };
        let slot = &self.slots[k];
        // Acquire: pairs with the worker's Release store of `current`, so its
        // `started` is seen.
        let started = slot.current.load(Ordering::Acquire);
        let mut requeue = Vec::new();
        for (n, (id, frame)) in w.in_flight.drain(..).enumerate() {
            // The oldest unreported job is the only one it can have started (it runs them in
            // order and reports each before taking the next); it failed if its slot says so,
            // or if the pool killed the worker for running it too long.
            let timed_out = w.timed_out == Some(id);
            if n == 0 && (id == started || timed_out) {
                let e = if timed_out {
                    JobError::TimedOut
                } else {
                    match status {
                        Some(s) => JobError::WorkerDied(s),
                        None => JobError::NoWorker {
                            reason: "the worker could not be reaped".into(),
                        },
                    }
                };
                self.finish(id, Err(e));
            } else {
                requeue.push((id, frame));
            }
        }
        // Jobs it never started go back to the front, in order.
        for job in requeue.into_iter().rev() {
            self.queue.push_front(job);
        }
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
        while let Some((id, _)) = self.queue.pop_front() {
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
        while !self.queue.is_empty()
            || self
                .workers
                .iter()
                .flatten()
                .any(|w| !w.in_flight.is_empty())
        {
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

/// A worker's life: run jobs until the owner closes the job channel or dies.
fn worker_main<J, R>(
    jobs: &ByteReceiver,
    results: &ByteSender,
    slot: &WorkerSlot,
    work: &dyn Fn(J) -> R,
    codec: Codec<J, R>,
    max_jobs: Option<u64>,
    timed: bool,
) -> i32 {
    let mut frame = Vec::new();
    let mut out = Vec::new();
    let mut done = 0u64;
    while jobs.recv_into(&mut frame).is_ok() {
        let Some(id) = frame
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
        else {
            return 2; // the owner sent an impossible frame
        };
        out.clear();
        out.extend_from_slice(&id.to_le_bytes());
        if timed {
            slot.started.store(crate::sys::mono_ns(), Ordering::Relaxed);
        }
        // Release: pairs with the owner's Acquire load of `current` (in `retire` and the
        // timeout checks), which then sees this job's start time.
        slot.current.store(id, Ordering::Release);
        match (codec.dec_job)(&frame[8..]) {
            Err(reason) => {
                out.push(KIND_BAD_JOB);
                out.extend_from_slice(reason.as_bytes());
            }
            Ok(job) => match catch_unwind(AssertUnwindSafe(|| work(job))) {
                Ok(r) => {
                    out.push(KIND_OK);
                    if let Err(reason) = (codec.enc_res)(&r, &mut out) {
                        out.truncate(8);
                        out.push(KIND_BAD_JOB);
                        out.extend_from_slice(reason.as_bytes());
                    }
                }
                Err(payload) => {
                    out.push(KIND_PANICKED);
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "Box<dyn Any>".into());
                    out.extend_from_slice(msg.as_bytes());
                }
            },
        }
        if out.len() > MAX_FRAME {
            // Too large for the ring: report that instead (a panic message is cut to fit).
            let kind = out[8];
            let text = if kind == KIND_PANICKED {
                // Cut at a character boundary (the message is UTF-8 from a `str`).
                let mut end = MAX_FRAME;
                while end > 9 && (out[end] & 0xc0) == 0x80 {
                    end -= 1;
                }
                out.truncate(end);
                None
            } else {
                Some(format!(
                    "the encoded result takes {} bytes; a pool result takes at most {}",
                    out.len() - 9,
                    MAX_FRAME - 9
                ))
            };
            if let Some(text) = text {
                out.truncate(8);
                out.push(KIND_BAD_JOB);
                out.extend_from_slice(text.as_bytes());
            }
        }
        if results.send(&out).is_err() {
            return 0; // the owner is gone
        }
        // Only after the result is sent: a death before this line leaves the job marked as
        // started, so the owner fails it (its result may be lost) instead of running it again.
        // Release: as above (the result was sent before).
        slot.current.store(IDLE, Ordering::Release);
        done += 1;
        if max_jobs.is_some_and(|m| done >= m) {
            return 0; // recycled: the owner forks a replacement
        }
    }
    0
}
