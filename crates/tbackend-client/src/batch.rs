//! [`Batch`]: many requests from one thread, pipelined across the lanes and answered in
//! input order, submitted in as many steps as the caller likes. A caller that builds its
//! requests as it goes (the Ruby extension encodes facts with the GVL held) hands each
//! group over as soon as it is built, so the first ones are on the wire — and their
//! answers coming back — while it builds the next.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tbackend_core::{OpKind, Status};

use crate::breaker::{Admission, Evidence};
use crate::cancel::Cancel;
use crate::client::{Admitted, Client, Outcome, Request};
use crate::error::TransportError;
use crate::lane::{Failure, Mode, Slot, SubmitError};
use crate::wait::{later, Wait};

/// A batch writes its frames to a lane in groups of at most this many, one system call
/// each (sooner whenever it is about to wait for an answer): fewer calls, while the
/// daemon still gets work long before the whole batch is queued.
const COALESCE_FRAMES: usize = 32;

struct Pending {
    index: usize,
    op: OpKind,
    slot: Arc<Slot>,
    deadline: Instant,
    admission: Admission,
}

/// Requests submitted from one thread, pipelined across the client's lanes; see
/// [`Client::batch`]. Dropping a batch before [`Batch::finish`] gives up on what is still
/// outstanding (its answers are consumed and discarded, never delivered to anyone else).
pub struct Batch {
    client: Client,
    budget: Duration,
    out: Vec<Option<Outcome>>,
    /// Outcomes already handed out by [`Batch::take_ready`].
    taken: usize,
    /// Per lane, this batch's requests in flight, oldest first.
    pending: Vec<VecDeque<Pending>>,
    /// Per lane, frames queued but not yet written (see `Mode::Detached`).
    unflushed: Vec<usize>,
}

impl Batch {
    pub(crate) fn new(client: &Client, timeout: Option<Duration>) -> Batch {
        let lanes = client.inner().lanes.len();
        let budget = timeout.unwrap_or(client.config().request_timeout);
        Batch {
            client: client.clone(),
            budget,
            out: Vec::new(),
            taken: 0,
            pending: (0..lanes).map(|_| VecDeque::new()).collect(),
            unflushed: vec![0; lanes],
        }
    }

    /// Requests submitted so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether nothing was submitted.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Queues `reqs` after the ones before, writing them as the pipelines allow. Waits
    /// only when a lane is full of this batch's own requests (for the oldest of them).
    /// Returns how many of `reqs` it took: all, or fewer after a cancel, which leaves
    /// the rest untouched (submit them again, or [`Batch::give_up`] on them).
    pub fn submit(&mut self, reqs: &[Request], cancel: &Cancel) -> usize {
        let client = self.client.clone();
        let inner = client.inner();
        let cx = &inner.context;
        let mut wait = Wait::until(Instant::now(), self.budget, cancel);
        for (taken, req) in reqs.iter().enumerate() {
            let index = self.out.len();
            self.out.push(None);
            let (frame, admission) = match inner.admit(req) {
                Admitted::Send(frame, admission) => (frame, admission),
                Admitted::Answered(outcome) => {
                    self.out[index] = Some(outcome);
                    continue;
                }
            };
            // In turn, not by least in flight: answers on a lane this thread is not
            // reading pile up unread, so their in-flight count says nothing about load.
            let ix = inner.next_lane(index);
            let slot = Slot::new();
            loop {
                // With own requests queued on the lane, a full pipeline is drained by
                // reading them here; otherwise other threads' readers make room, and
                // this thread may park: what it queued on other lanes goes out first.
                let park_on_full = self.pending[ix].is_empty();
                if park_on_full {
                    self.send_queued();
                }
                wait.deadline = later(Instant::now(), self.budget);
                let deadline = wait.deadline;
                let mode = Mode::Detached { park_on_full };
                let submitted = {
                    let _armed = wait.arm(&slot.word);
                    inner.lanes[ix].submit(cx, &slot, &frame, &wait, mode)
                };
                match submitted {
                    Ok(_) => {
                        self.pending[ix].push_back(Pending {
                            index,
                            op: req.op,
                            slot,
                            deadline,
                            admission,
                        });
                        self.unflushed[ix] += 1;
                        if self.unflushed[ix] >= COALESCE_FRAMES {
                            inner.lanes[ix].flush_out();
                            self.unflushed[ix] = 0;
                        }
                        break;
                    }
                    Err(SubmitError::Full) => {
                        let oldest = self.pending[ix]
                            .pop_front()
                            .expect("Full only with own requests queued");
                        if !self.wait(ix, oldest, cancel, 0) {
                            self.untake(admission);
                            return taken;
                        }
                    }
                    Err(SubmitError::Failed(Failure {
                        error: TransportError::Cancelled { .. },
                        ..
                    })) => {
                        self.untake(admission);
                        return taken;
                    }
                    Err(SubmitError::Failed(f)) => {
                        self.out[index] = Some(inner.finish(req.op, ix, Err(f), admission));
                        break;
                    }
                }
            }
        }
        reqs.len()
    }

    /// Takes back the request just admitted, unsent: it is not part of the batch.
    fn untake(&mut self, admission: Admission) {
        self.out.pop();
        // A probe that was never sent proved nothing: the next call probes.
        self.client
            .inner()
            .breaker
            .record(admission, Evidence::Neutral);
    }

    /// Ends the batch after a cancel: `reqs` (what [`Batch::submit`] did not take) come
    /// back `unavailable`, requests in flight `timeout_unknown`, all "cancelled"; late
    /// answers are discarded.
    pub fn give_up(&mut self, reqs: &[Request]) {
        let inner = self.client.inner();
        let cancelled = || TransportError::Cancelled {
            endpoint: inner.context.endpoint.clone(),
        };
        for _ in reqs {
            self.out
                .push(Some(Outcome::client_side(Status::Unavailable, cancelled())));
        }
        for (ix, queue) in self.pending.iter_mut().enumerate() {
            for p in queue.drain(..) {
                p.slot.abandon();
                let failure = Failure {
                    error: cancelled(),
                    sent: true,
                };
                self.out[p.index] = Some(inner.finish(p.op, ix, Err(failure), p.admission));
            }
        }
    }

    /// Collects, without waiting, the answers that have already arrived for the oldest
    /// requests of each lane. `false` if `cancel` cut it short.
    pub fn collect_ready(&mut self, cancel: &Cancel) -> bool {
        for ix in 0..self.pending.len() {
            while self.pending[ix].front().is_some_and(|p| p.slot.is_done()) {
                let p = self.pending[ix].pop_front().expect("front checked");
                if !self.wait(ix, p, cancel, 0) {
                    return false;
                }
            }
        }
        true
    }

    /// The outcomes, in input order, that follow the ones taken before and are known
    /// now (the contiguous run, stopping at the first still outstanding).
    pub fn take_ready(&mut self) -> Vec<Outcome> {
        let mut ready = Vec::new();
        while let Some(slot) = self.out.get_mut(self.taken) {
            match slot.take() {
                Some(outcome) => {
                    ready.push(outcome);
                    self.taken += 1;
                }
                None => break,
            }
        }
        ready
    }

    /// Writes whatever is still queued and waits for every outstanding answer, each
    /// bounded by its own deadline: everything not yet taken is then ready. `false` if
    /// `cancel` cut it short; the requests still in flight stay queued (call it again,
    /// or [`Batch::give_up`]).
    pub fn finish(&mut self, cancel: &Cancel) -> bool {
        self.send_queued();
        for ix in 0..self.pending.len() {
            while let Some(p) = self.pending[ix].pop_front() {
                // Every answer still pending on the lane is waited for next: the lane
                // may wait for them together.
                let more = self.pending[ix].len();
                if !self.wait(ix, p, cancel, more) {
                    return false;
                }
            }
        }
        true
    }

    /// Every outcome, in input order, after submitting the first `taken` of `reqs`:
    /// waits for those in flight, and after a cancel gives up on the rest.
    pub fn finish_all(&mut self, reqs: &[Request], taken: usize, cancel: &Cancel) -> Vec<Outcome> {
        if taken < reqs.len() || !self.finish(cancel) {
            self.give_up(&reqs[taken..]);
        }
        self.take_ready()
    }

    /// Writes what is still queued (submitting writes a lane's frames only in groups),
    /// without waiting for anything.
    pub fn send_queued(&mut self) {
        let inner = self.client.inner();
        for (ix, n) in self.unflushed.iter_mut().enumerate() {
            if *n > 0 {
                inner.lanes[ix].flush_out();
                *n = 0;
            }
        }
    }

    /// Waits for `p`'s answer, and the lane perhaps for the `more` after it at once;
    /// `false` (and `p` back at the front) if `cancel` cut it short.
    fn wait(&mut self, ix: usize, p: Pending, cancel: &Cancel, more: usize) -> bool {
        // About to block: what is still queued must go out first (an answer that is
        // already there needs nothing sent).
        if !p.slot.is_done() {
            self.send_queued();
        }
        let inner = self.client.inner();
        let wait = Wait::until(p.deadline, self.budget, cancel);
        let result = inner.lanes[ix].wait_detached(&inner.context, &p.slot, &wait, more);
        if let Err(Failure {
            error: TransportError::Cancelled { .. },
            ..
        }) = result
        {
            self.pending[ix].push_front(p);
            return false;
        }
        self.out[p.index] = Some(inner.finish(p.op, ix, result, p.admission));
        true
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // Frames queued behind the lane's output belong to slots in its FIFO: they must
        // go out, or those slots would wait for answers that never come.
        self.send_queued();
        let inner = self.client.inner();
        for queue in &mut self.pending {
            for p in queue.drain(..) {
                p.slot.abandon();
                // A probe that never got its outcome proved nothing: the next call probes.
                inner.breaker.record(p.admission, Evidence::Neutral);
            }
        }
    }
}
