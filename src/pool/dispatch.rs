//! The owner's queue, sending batches to the workers, and waiting for them.
//!
//! Dispatch sends a job frame of up to [`BATCH`] queued jobs to the least loaded worker (an idle
//! one first), keeping at most [`WINDOW`] jobs in flight per worker and sharing the queue
//! fairly among the workers, so tiny jobs cost one ring message per batch each way while a slow
//! job delays at most the few jobs queued behind it on its worker. The exception: workers
//! pinned to the same CPU cannot run in parallel, so tiny jobs (by the cost per job a worker
//! measures) stay on the one that is busy and moving instead of costing a context switch per
//! batch (see `keeper`).
//!
//! The owner spins briefly on the result rings, then sleeps in a [`Select`] over them (with a
//! timeout at the earliest job deadline when `job_timeout` is set). Before it sleeps it sets
//! `waiting` and runs the heavy side of the asymmetric barrier (`sync::barrier`); a worker
//! reads `waiting` after each job, behind the light side, and sends its results at once when it
//! is set. That is Dekker's handshake: either the worker sees `waiting` and sends each result
//! it commits from then on, or the owner sees its `pending` length and takes those results
//! from the worker's scratch itself (under the `flushes` sequence lock; the worker may be deep
//! in a long next job). A failed barrier bounds the sleep to [`RECHECK`]. A worker that
//! finishes its batch always sends what it has, so nothing waits longer than that batch.

use super::*;

/// Where `keeper` sends a batch.
pub(super) enum Keep {
    /// To the least loaded worker, as usual.
    Spread,
    /// To this busy worker, which has this many jobs in flight and stays a keeper for this
    /// many nanoseconds more (if its ring is full, the batch is held that long at most).
    Send(usize, usize, u64),
    /// Nowhere yet: it waits for this busy worker's next results, this many nanoseconds at
    /// most.
    Hold(usize, u64),
}

/// Jobs queued in the owner, encoded, not yet sent.
pub(super) struct Queue {
    /// Jobs put back after their worker died, to be sent before the others: one record each.
    pub(super) again: VecDeque<Vec<u8>>,
    /// Records, in submission order, from `at` on.
    pub(super) buf: Vec<u8>,
    pub(super) at: usize,
    /// Records in `buf` from `at`.
    pub(super) count: usize,
    /// How the records lie.
    pub(super) records: Records,
}

impl Queue {
    pub(super) fn len(&self) -> usize {
        self.again.len() + self.count
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns the ids of every queued job.
    pub(super) fn take_ids(&mut self) -> Vec<u64> {
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

impl<J, R> Inner<J, R> {
    /// Queues `jobs` (as `enqueue`, with consecutive ids) without dispatching them yet.
    pub(super) fn enqueue_batch(&mut self, jobs: &[J]) {
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
    pub(super) fn enqueue(&mut self, job: &J) -> u64 {
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
    pub(super) fn push_records(&mut self, jobs: &[J]) {
        let first = self.next_id;
        self.next_id += jobs.len() as u64;
        self.jobs
            .resize_with(self.jobs.len() + jobs.len(), || JobState::Pending);
        let (enc, buf, failed) = (self.codec.enc_jobs, &mut self.queue.buf, &mut self.failed);
        let before = buf.len();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| enc(jobs, first, buf, failed))) {
            self.unqueue_panicked(before, first);
            std::panic::resume_unwind(p);
        }
        self.queue.count += jobs.len() - self.failed.len();
        if !self.failed.is_empty() {
            self.refuse();
        }
    }

    /// A job's encoding panicked (a user `Serialize`) while the jobs from `first` on were being
    /// queued: drop their records (one was half written, none counted yet) and their states
    /// (the caller unwinds, so no handle or `map` takes them), leaving the queue as it was.
    #[cold]
    pub(super) fn unqueue_panicked(&mut self, before: usize, first: u64) {
        self.queue.buf.truncate(before);
        self.failed.clear();
        for id in first..self.next_id {
            if let Some(st) = self.state(id) {
                *st = JobState::Settled;
            }
        }
        self.settled_front();
    }

    /// Fails the jobs that could not be encoded.
    #[cold]
    pub(super) fn refuse(&mut self) {
        for (id, reason) in std::mem::take(&mut self.failed) {
            self.finish(id, Err(JobError::Codec { reason }));
        }
    }

    /// Waits until a job may be queued (running the pool while the queue is full); or why it
    /// cannot be (not the owner, closed).
    #[cold]
    pub(super) fn make_room(&mut self) -> Result<(), JobError> {
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

    /// `submit`'s fast path: with nothing queued, a job for an idle worker is encoded straight
    /// into a frame and sent to it (no copy through the queue, no dispatch loop). Its id and
    /// the worker; `None` (and nothing changed) if the path does not apply or the send fails:
    /// the caller queues the job, and `dispatch` deals with a full or disconnected ring.
    #[inline]
    pub(super) fn send_one(&mut self, job: &J) -> Option<(u64, usize)> {
        if !self.queue.is_empty() || self.closed || !self.is_owner() {
            return None;
        }
        let max = self.cfg.max_jobs_per_worker;
        let k = self.workers.iter().position(|w| {
            w.as_ref()
                .is_some_and(|w| w.load == 0 && max.is_none_or(|m| w.dispatched < m))
        })?;
        let id = self.next_id;
        let mut frame = self.spare.pop().unwrap_or_default();
        frame.clear();
        // A panic here (a user `Serialize`) unwinds before anything changed.
        if !(self.codec.enc_one)(job, id, &mut frame) {
            // The queue's path fails it, with the reason.
            self.spare.push(frame);
            return None;
        }
        let w = self.workers[k].as_mut()?;
        if w.jobs.try_send(&frame).is_err() {
            self.spare.push(frame);
            return None;
        }
        w.load = 1;
        w.dispatched += 1;
        w.in_flight.push_back(Sent {
            bytes: frame,
            at: 0,
        });
        self.next_id += 1;
        self.jobs.push_back(JobState::Pending);
        Some((id, k))
    }

    /// A handle's fast path for a job `send_one` sent to worker `k`: while it is that worker's
    /// only job and nothing else needs the owner (no queue, no job timeout to enforce), spin on
    /// that worker's result ring alone and take the one-record frame it sends. `None` when
    /// the result is not in (the spin budget or `deadline` ran out, the worker went, or it sent
    /// something else, which is then accepted or punished as usual): the caller's general loop
    /// (`take`, `pump`) goes on.
    pub(super) fn wait_sent(
        &mut self,
        id: u64,
        k: usize,
        deadline: Option<Instant>,
    ) -> Option<Result<R, JobError>> {
        if self.cfg.job_timeout.is_some() || !self.queue.is_empty() || !self.is_owner() {
            return None;
        }
        let mut frame = std::mem::take(&mut self.rbuf);
        // Bare looks (one load and a spin hint each) before the spinner's first turn.
        const BARE_LOOKS: u32 = 64;
        let mut spinner = Spinner::new(WaitPolicy::default());
        let mut looks = 0u32;
        let got = loop {
            let Some(w) = self.workers.get_mut(k).and_then(Option::as_mut) else {
                break false;
            };
            if w.load != 1 || w.front() != Some(id) {
                break false;
            }
            // One load per look (`recv_hint`); the full read, which also notices a worker
            // gone, when it says so and at the spinner's later checkpoints. The first looks
            // spin bare: the spinner reads the clock on its first turn, and a tiny job's
            // result usually comes before that would pay off.
            if !w.results.core.c.recv_hint() && (looks < BARE_LOOKS || !spinner.checkpoint()) {
                looks += 1;
                if looks <= BARE_LOOKS {
                    std::hint::spin_loop();
                    continue;
                }
                if !spinner.spin() || deadline.is_some_and(|d| Instant::now() >= d) {
                    break false;
                }
                continue;
            }
            match w.results.try_recv_ref() {
                Ok(msg) => {
                    // A private copy: the worker can still write the ring.
                    frame.clear();
                    frame.extend_from_slice(&msg);
                    break true;
                }
                Err(crate::TryRecvError::Empty) => {}
                Err(_) => break false, // gone: `pump` retires it
            }
            if !spinner.spin() || deadline.is_some_and(|d| Instant::now() >= d) {
                break false;
            }
        };
        let mut out = None;
        if got {
            match result_record(&frame, 0) {
                Some((rid, kind, payload))
                    if rid == id
                        && kind <= KIND_BAD_JOB
                        && RES_HDR + payload.len() == frame.len() =>
                {
                    if let Some(w) = self.workers[k].as_mut() {
                        // Its only job: the whole front frame is reported.
                        w.load = 0;
                        if let Some(s) = w.in_flight.pop_front() {
                            self.spare.push(s.bytes);
                        }
                    }
                    let result = if kind == KIND_OK {
                        (self.codec.dec_res)(payload).map_err(|reason| JobError::Codec { reason })
                    } else {
                        Err(failure(kind, payload))
                    };
                    // Settle its state: it is taken now (usually the only one left).
                    if id == self.base && self.jobs.len() == 1 {
                        self.jobs.pop_front();
                        self.base += 1;
                    } else if let Some(st) = self.state(id) {
                        *st = JobState::Settled;
                        self.settled(id);
                    }
                    out = Some(result);
                }
                _ => {
                    if frame.is_empty() || self.accept(k, &frame) != frame.len() {
                        self.kill_worker(k, None);
                    }
                }
            }
        }
        self.rbuf = frame;
        out
    }

    /// Sends queued jobs to workers, a batch at a time: to the least loaded worker (an idle one
    /// first), at most `BATCH` jobs a frame, `WINDOW` in flight per worker, and no more than
    /// its fair share of the queue.
    pub(super) fn dispatch(&mut self) {
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
            let Some((mut k, mut load)) = pick else {
                self.end_hold();
                return;
            };
            // Tiny jobs stay on a busy worker that gets through them sooner than an idle one
            // could start (see `keeper`), without the fair-share limit.
            let mut share = self.queue.len().div_ceil(eligible);
            let mut kept = None;
            if load > 0 {
                // No worker is idle: nothing is held for a keeper (a hold left from before,
                // say the idle worker died and was not replaced, would have `pump` wake at a
                // past deadline on every pass).
                self.end_hold();
            } else {
                match self.keeper(k) {
                    Keep::Spread => {}
                    Keep::Send(b, lb, patience) => {
                        (k, load, share) = (b, lb, usize::MAX);
                        kept = Some(patience);
                    }
                    Keep::Hold(b, patience) => {
                        self.hold(b, patience);
                        return;
                    }
                }
            }
            let Some(w) = self.workers[k].as_ref() else {
                return;
            };
            let room = max.map_or(usize::MAX, |m| {
                usize::try_from(m.saturating_sub(w.dispatched)).unwrap_or(usize::MAX)
            });
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
                    if w.load == 0 {
                        w.busy_since = crate::sys::mono_ns();
                    }
                    w.load += taken;
                    w.dispatched += taken as u64;
                    w.in_flight.push_back(Sent {
                        bytes: frame,
                        at: 0,
                    });
                    // A hold ends when its keeper has moved: reported a batch's worth of jobs
                    // since it began (not at every send: a compromised keeper answering one
                    // job at a time would restart the `WAKE` bound with each; and not counting
                    // other workers' reports, which say nothing about the keeper).
                    if kept.is_some()
                        && k == self.hold_keeper
                        && self.reported_by(k).saturating_sub(self.hold_mark) >= BATCH as u64
                    {
                        self.end_hold();
                    }
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
                Err(e) => {
                    // Keep the jobs queued.
                    self.spare.push(frame);
                    if matches!(e, crate::TrySendError::Full(_)) {
                        // Full: `pump` waits for its results; for a keeper's, no longer than
                        // it stays one (a stopped keeper must not hold the queue for good).
                        if let Some(patience) = kept {
                            self.hold(k, patience);
                        }
                        return;
                    }
                    // Disconnected: the worker is gone or going, or (compromised) it closed
                    // its job ring and lives on. Either way it takes no more jobs: retire it
                    // (killed, reaped, its jobs settled, replaced if it can be) and go on with
                    // the others. Waiting for its results ring to close instead would strand
                    // the queue behind a live worker that never sends again.
                    self.retire(k);
                    if self.workers.iter().all(Option::is_none) {
                        self.fail_queue();
                        return;
                    }
                }
            }
        }
        // The queue is empty: nothing is held (a hold left over would cut the next one short).
        self.end_hold();
    }

    /// Where a batch goes when the least loaded worker, `idle`, has nothing in flight.
    ///
    /// If `idle` and a busy worker are pinned to the same single CPU (`WorkerSlot::cpu`), they
    /// cannot run in parallel, and spreading tiny jobs between them costs a context switch per
    /// batch (and `map`'s in-order results then wait for whichever is descheduled). Then the
    /// batch goes to that busy worker if it is fast and moving: its measured cost per job
    /// (`WorkerSlot::cost`) times its jobs in flight plus the queue is within `KEEP`, and it
    /// is not stuck in a long job while `idle` could time-slice with it: it finished a batch,
    /// or was given one, within `KEEP`, or it has not started the jobs it was given (it is
    /// being woken: in a VM that can take longer than `KEEP`) for at most `WAKE`. If its
    /// window (or its ring) is full, the batch waits in the queue for its next results as long
    /// as that holds, and at most `WAKE` (`hold`; `pump` never sleeps past `hold_until`).
    /// Otherwise (workers not pinned together, jobs of unknown or larger cost) it spreads as
    /// usual.
    fn keeper(&mut self, idle: usize) -> Keep {
        // Relaxed (here and below): hints (see `WorkerSlot`).
        let cpu = self.slots[idle].cpu.load(Ordering::Relaxed);
        if cpu == 0 {
            self.end_hold();
            return Keep::Spread;
        }
        // A hold never outlasts `WAKE` from its start, whatever the workers write in their
        // slots (`cost_at` is theirs: a compromised one could claim to be moving for ever).
        if self.hold_since.is_some_and(|t| t.elapsed() >= WAKE) {
            self.end_hold();
            return Keep::Spread;
        }
        let max = self.cfg.max_jobs_per_worker;
        let queued = self.queue.len() as u64;
        let keep_ns = KEEP.as_nanos() as u64;
        let wake_ns = WAKE.as_nanos() as u64;
        // The keeper with the most patience left, if every keeper's window is full.
        let mut hold: Option<(usize, u64)> = None;
        let mut now_ns = None;
        for (b, w) in self.workers.iter().enumerate() {
            let Some(w) = w else { continue };
            if b == idle || self.slots[b].cpu.load(Ordering::Relaxed) != cpu {
                continue;
            }
            let cost = self.slots[b].cost.load(Ordering::Relaxed);
            if cost == 0 || cost.saturating_mul(w.load as u64 + queued) > keep_ns {
                continue;
            }
            let now_ns = *now_ns.get_or_insert_with(crate::sys::mono_ns);
            let since = self.slots[b]
                .cost_at
                .load(Ordering::Relaxed)
                .max(w.busy_since);
            // Saturating: `cost_at` is whatever the worker wrote.
            let fresh_until = since.saturating_add(keep_ns);
            let patient_until = if now_ns <= fresh_until {
                fresh_until
            } else {
                // Whether it has begun its oldest unreported job (jobs run in id order;
                // `IDLE`: none since it was forked; `KILLED` counts as begun: it is no
                // keeper). Read only here: `current` is on the line the worker writes at
                // every job.
                let cur = self.slots[b].current.load(Ordering::Relaxed);
                if cur != IDLE && w.front().is_none_or(|f| cur >= f) {
                    fresh_until
                } else {
                    w.busy_since.saturating_add(wake_ns).max(fresh_until)
                }
            };
            if now_ns > patient_until {
                continue;
            }
            let patience = patient_until - now_ns;
            if w.load < WINDOW && max.is_none_or(|m| w.dispatched < m) {
                return Keep::Send(b, w.load, patience);
            }
            if hold.is_none_or(|(_, ns)| patience > ns) {
                hold = Some((b, patience));
            }
        }
        match hold {
            // Its window is full: wait for its next results, while it stays a keeper.
            Some((b, ns)) => Keep::Hold(b, ns),
            None => {
                self.end_hold();
                Keep::Spread
            }
        }
    }

    /// Holds the queue for keeper `b`: `pump` wakes by `hold_until` at the latest, `patience`
    /// nanoseconds from now, and never later than `WAKE` after the hold began.
    fn hold(&mut self, b: usize, patience: u64) {
        let now = Instant::now();
        if self.hold_since.is_none() {
            self.hold_keeper = b;
            self.hold_mark = self.reported_by(b);
        }
        let since = *self.hold_since.get_or_insert(now);
        let until = now
            .checked_add(Duration::from_nanos(patience))
            .map_or(since + WAKE, |t| t.min(since + WAKE));
        self.hold_until = Some(until);
    }

    /// Jobs worker `k` has reported (results taken, failures settled) in its life.
    fn reported_by(&self, k: usize) -> u64 {
        self.workers
            .get(k)
            .and_then(Option::as_ref)
            .map_or(0, |w| w.dispatched.saturating_sub(w.load as u64))
    }

    /// The queue is no longer held.
    fn end_hold(&mut self) {
        self.hold_until = None;
        self.hold_since = None;
    }

    /// Waits for something to happen (a result, a death, a job deadline) and handles it.
    /// `false` if nothing ever can (no worker, nothing in flight).
    pub(super) fn pump(&mut self, deadline: Option<Instant>) -> bool {
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
        let held = self.hold_until.filter(|_| !self.queue.is_empty());
        let until = [deadline, job_deadline, recheck, held]
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
    pub(super) fn poll_all(&mut self) -> bool {
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

    /// Takes the results a live worker `k` has committed to its scratch and not sent yet.
    /// `true` if any was new.
    pub(super) fn harvest(&mut self, k: usize) -> bool {
        let Some(w) = self.workers[k].as_ref() else {
            return false;
        };
        let slot = &self.slots[k];
        // Relaxed: a hint; the sequence lock below decides.
        if w.load == 0 || slot.pending.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let before = w.load;
        // The sequence lock's read side. Acquire (both): the first pairs with the worker's
        // Release bump of `flushes` (so `pending` is read no older than that flush), the second
        // with its Release store of `pending` after its records, and they order the copy after
        // the first load of `flushes`; the Acquire fence orders the copy before the second load, which then sees
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

    pub(super) fn earliest_job_deadline(&self) -> Option<Instant> {
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

    /// No worker is left: fail every queued job.
    pub(super) fn fail_queue(&mut self) {
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
}
