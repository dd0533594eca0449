//! Accounting: every job ends exactly once.
//!
//! Results are taken from each worker's frames (and, while it sleeps or after it died, from its
//! scratch) in the order it ran its jobs; each is checked against the worker's oldest
//! unreported job, and recorded in the job's state for its handle (`map` takes them in order
//! from the front of the states).
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

use super::*;

/// A job frame sent to a worker, kept to run its unstarted jobs elsewhere if the worker dies.
pub(super) struct Sent {
    /// The frame's records, as sent (written by the owner: trusted).
    pub(super) bytes: Vec<u8>,
    /// Offset of the first record not yet reported.
    pub(super) at: usize,
}

/// One worker process as the owner sees it.
pub(super) struct Worker {
    pub(super) child: Child,
    pub(super) jobs: ByteSender,
    pub(super) results: ByteReceiver,
    /// Job frames sent and not fully reported, oldest first.
    pub(super) in_flight: VecDeque<Sent>,
    /// Jobs sent and not yet reported.
    pub(super) load: usize,
    /// When (`sys::mono_ns`) `dispatch` last gave it a batch while it had nothing in flight:
    /// a worker given its batch just now is moving, not stuck (see `keeper`). (`send_one`, the
    /// single-job path, does not read the clock for it.)
    pub(super) busy_since: u64,
    /// Jobs dispatched to this worker in its life (for `max_jobs_per_worker`).
    pub(super) dispatched: u64,
    /// The job it was killed for, having run past `job_timeout`.
    pub(super) timed_out: Option<u64>,
    /// How its frames' records lie.
    pub(super) records: Records,
}

impl Worker {
    /// Its oldest unreported job.
    #[inline]
    pub(super) fn front(&self) -> Option<u64> {
        let s = self.in_flight.front()?;
        self.records.at(&s.bytes, s.at).map(|(id, _)| id)
    }

    /// Marks its oldest unreported job reported; a frame fully reported goes to `spare`.
    #[inline]
    pub(super) fn pop_front(&mut self, spare: &mut Vec<Vec<u8>>) {
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
    pub(super) fn take_unreported(&mut self) -> Vec<(u64, Vec<u8>)> {
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

impl Worker {
    /// Whether job `id` is among its unreported jobs.
    pub(super) fn in_flight_has(&self, id: u64) -> bool {
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

/// The little-endian `u64` at the start of `b`, if it is that long.
#[inline]
fn le_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

/// Whether job `id` may still be running: its state is `Pending` or `Abandoned` (every job in
/// a worker's in-flight list is).
fn unfinished<R>(
    jobs: &VecDeque<JobState<R>>,
    base: u64,
    parked: &BTreeMap<u64, JobState<R>>,
    id: u64,
) -> bool {
    let st = match id.checked_sub(base) {
        None => parked.get(&id),
        Some(i) => usize::try_from(i).ok().and_then(|i| jobs.get(i)),
    };
    matches!(st, Some(JobState::Pending | JobState::Abandoned))
}

/// What `take_sent` found.
pub(super) enum Taken {
    /// The ring is empty (every valid result taken).
    Empty,
    /// A frame that is not a result of the worker's oldest job: the worker misbehaves.
    Violation,
}

/// Where a job stands, for its handle.
pub(super) enum JobState<R> {
    /// Not finished; its handle waits (or will).
    Pending,
    /// Not finished; its handle was dropped: the result will be discarded.
    Abandoned,
    /// Finished; the result waits for the handle.
    Done(Result<R, JobError>),
    /// Taken by its handle, or discarded.
    Settled,
}

impl<J, R> Inner<J, R> {
    /// The result of job `id`, if it has finished (and not been taken).
    #[inline]
    pub(super) fn take(&mut self, id: u64) -> Option<Result<R, JobError>> {
        // The common case (`map`, a handle joined in order): the oldest job, finished.
        if id == self.base && matches!(self.jobs.front(), Some(JobState::Done(_))) {
            // A `match` that moves the result out leaves nothing to drop (a `let ... else`
            // made the compiler call the state's drop glue once per job).
            return match self.jobs.pop_front() {
                Some(JobState::Done(r)) => {
                    self.base += 1;
                    if matches!(self.jobs.front(), Some(JobState::Settled)) {
                        self.settled_front();
                    }
                    Some(r)
                }
                _ => None, // cannot be: matched above
            };
        }
        self.take_any(id)
    }

    #[inline(never)]
    pub(super) fn take_any(&mut self, id: u64) -> Option<Result<R, JobError>> {
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

impl<J, R> Inner<J, R> {
    /// The state of job `id`, wherever it is kept.
    pub(super) fn state(&mut self, id: u64) -> Option<&mut JobState<R>> {
        if id < self.base {
            return self.parked.get_mut(&id);
        }
        let k = usize::try_from(id - self.base).ok()?;
        self.jobs.get_mut(k)
    }

    /// Job `id` may have become settled: forget what no handle needs any more.
    pub(super) fn settled(&mut self, id: u64) {
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
    pub(super) fn settled_front(&mut self) {
        while matches!(self.jobs.front(), Some(JobState::Settled)) {
            self.jobs.pop_front();
            self.base += 1;
        }
    }

    /// Records how job `id` ended (or drops it, if nobody waits for it any more).
    #[inline]
    pub(super) fn finish(&mut self, id: u64, r: Result<R, JobError>) {
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
    pub(super) fn finish_slow(&mut self, id: u64, r: Result<R, JobError>) {
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

    /// Takes every result worker `k` has sent; retires it if it is gone.
    pub(super) fn drain(&mut self, k: usize) {
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
    pub(super) fn take_sent(&mut self, k: usize) -> Taken {
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
    pub(super) fn accept(&mut self, k: usize, frame: &[u8]) -> usize {
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
                // A job in flight is unfinished: one that has ended (usually a result taken
                // from the scratch and now sent again) is skipped without a scan.
                if !unfinished(&self.jobs, self.base, &self.parked, id) || !w.in_flight_has(id) {
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

    /// Kills workers whose current job has run past `job_timeout`. `true` if it killed one.
    pub(super) fn enforce_timeouts(&mut self) -> bool {
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
    pub(super) fn kill_worker(&mut self, k: usize, timed_out: Option<u64>) {
        if let Some(w) = self.workers[k].as_mut() {
            w.timed_out = timed_out;
            let _ = w.child.kill();
        }
        self.retire(k);
    }

    /// Worker `k` is gone (or going): reap it, settle its in-flight jobs, fork a replacement.
    pub(super) fn retire(&mut self, k: usize) {
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
}

/// `Inner::accept`'s fast path, for wire `W`: takes the records of `frame` from `at` on while
/// each is a result (kind `KIND_OK`) of worker `k`'s oldest unreported job, whose state is
/// `Pending`. Returns where it stopped; everything else is left to `accept`.
pub(super) fn accept_run<J, R, W: Wire<R>>(
    inner: &mut Inner<J, R>,
    k: usize,
    frame: &[u8],
    mut at: usize,
) -> usize {
    let Some(w) = inner.workers[k].as_mut() else {
        return at;
    };
    let records = w.records;
    if let (Some(stride), Some(size)) = (records.stride, <W as Wire<R>>::SIZE) {
        // Fixed-size job and result records (plain data): walk both in step.
        let rlen = RES_HDR + size;
        while let Some(s) = w.in_flight.front_mut() {
            let sent = s.bytes.get(s.at..).unwrap_or_default().chunks_exact(stride);
            let got = frame.get(at..).unwrap_or_default().chunks_exact(rlen);
            // The states of consecutive ids from the frame's oldest unreported job on, walked
            // in step with the records (one deque lookup per run, not per job).
            let Some(first) = s.bytes.get(s.at..).and_then(le_u64) else {
                return at;
            };
            let Some(i0) = first
                .checked_sub(inner.base)
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < inner.jobs.len())
            else {
                return at;
            };
            let states = inner.jobs.range_mut(i0..);
            let mut taken = 0;
            for (((job, res), st), want) in sent.zip(got).zip(states).zip(first..) {
                let (Some(expect), Some(id)) = (le_u64(job), le_u64(res)) else {
                    break;
                };
                let len = res.get(9..RES_HDR).and_then(|l| l.try_into().ok());
                if id != expect
                    || id != want
                    || res.get(8) != Some(&KIND_OK)
                    || len.map(u32::from_le_bytes) != Some(size as u32)
                {
                    break;
                }
                let JobState::Pending = st else {
                    break;
                };
                let payload = res.get(RES_HDR..).unwrap_or_default();
                let done =
                    JobState::Done(W::dec(payload).map_err(|reason| JobError::Codec { reason }));
                // SAFETY: `st` is a valid, exclusive reference to a `JobState` that holds
                // `Pending` (matched above), which owns nothing: overwriting it without
                // dropping it leaks nothing (an assignment called the drop glue once per
                // result, 4 instructions of the owner's ~180 per job).
                unsafe { std::ptr::write(st, done) };
                taken += 1;
            }
            s.at += taken * stride;
            w.load = w.load.saturating_sub(taken);
            at += taken * rlen;
            if s.at < s.bytes.len() {
                return at; // this frame has more: the results ran out, or `accept` takes over
            }
            // Every record of this frame is reported.
            if let Some(s) = w.in_flight.pop_front() {
                inner.spare.push(s.bytes);
            }
        }
        return at;
    }
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
