//! The calls a [`Cancel`] only pauses: one call ([`PausedCall`]), a retried call
//! ([`PausedRetries`]) and a tail poll ([`PausedTail`]), each resumable within the
//! deadline it started with.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tbackend_core::protocol::answer::Answer;
use tbackend_core::{OpKind, Status};

use super::{Attempt, Client, Outcome, Request};
use crate::breaker::{Admission, Evidence};
use crate::cancel::{Cancel, Resumable, Step};
use crate::error::TransportError;
use crate::lane::{Failure, Slot};
use crate::sys;
use crate::tail::Cursor;
use crate::wait::{later, Wait};

/// Where [`Client::start`] or [`PausedCall::resume`] got to.
#[derive(Debug)]
pub enum CallStep {
    /// The call is over.
    Done(Outcome),
    /// Cancelled while it waited: resume it, or drop it (or [`PausedCall::give_up`]).
    Paused(PausedCall),
}

/// A call cut short by its [`Cancel`]. Dropping it gives the call up: a written
/// request's answer is then discarded when it comes, as for any cancelled call.
pub struct PausedCall {
    pub(super) client: Client,
    pub(super) op: OpKind,
    pub(super) frame: Vec<u8>,
    /// Taken by the verdict: `finish` or `Drop`.
    pub(super) admission: Option<Admission>,
    pub(super) lane: usize,
    pub(super) slot: Arc<Slot>,
    /// Whether the frame went out (its slot is queued on `lane`).
    pub(super) sent: bool,
    pub(super) deadline: Instant,
    pub(super) budget: Duration,
}

impl fmt::Debug for PausedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PausedCall")
            .field("lane", &self.lane)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl PausedCall {
    /// Goes on waiting for the answer (sending the request first if the cancel came
    /// before it was written), with a fresh `cancel` and the call's first deadline.
    pub fn resume(mut self, cancel: &Cancel) -> CallStep {
        let inner = &*self.client.inner;
        let lane = &inner.lanes[self.lane];
        let wait = Wait::until(self.deadline, self.budget, cancel);
        let result = if self.sent {
            lane.wait_detached(&inner.context, &self.slot, &wait, 0)
        } else {
            lane.exchange(&inner.context, &self.slot, &self.frame, &wait)
        };
        match result {
            Err(Failure {
                error: TransportError::Cancelled { .. },
                sent,
            }) => {
                self.sent = sent;
                CallStep::Paused(self)
            }
            result => CallStep::Done(self.finish(result)),
        }
    }

    /// The outcome of giving up now: `timeout_unknown` (cancelled) if the request was
    /// written, `unavailable` if not; a late answer is discarded.
    pub fn give_up(self) -> Outcome {
        let error = TransportError::Cancelled {
            endpoint: self.client.inner.context.endpoint.clone(),
        };
        let sent = self.sent;
        self.finish(Err(Failure { error, sent }))
    }

    fn finish(mut self, result: Result<Vec<u8>, Failure>) -> Outcome {
        let admission = self.admission.take().expect("a verdict is given once");
        self.client
            .inner
            .finish(self.op, self.lane, result, admission)
    }
}

impl Drop for PausedCall {
    fn drop(&mut self) {
        // Queued and given up: its answer, when it comes, is consumed by this slot.
        self.slot.abandon();
        if let Some(admission) = self.admission.take() {
            // A probe that never got its verdict proved nothing: the next call probes.
            self.client
                .inner
                .breaker
                .record(admission, Evidence::Neutral);
        }
    }
}

/// Where [`Client::start_with_retries`] or [`PausedRetries::resume`] got to.
#[derive(Debug)]
pub enum RetryStep {
    /// The last outcome and every attempt.
    Done(Outcome, Vec<Attempt>),
    /// Cancelled during an attempt or a backoff: resume it, or give it up.
    Paused(PausedRetries),
}

/// A retried call cut short by its [`Cancel`]; see [`Client::start_with_retries`].
#[derive(Debug)]
pub struct PausedRetries {
    pub(super) client: Client,
    pub(super) req: Request,
    pub(super) attempts_allowed: u32,
    pub(super) base_backoff: Duration,
    pub(super) max_backoff: Duration,
    pub(super) deadline: Option<Instant>,
    pub(super) request_timeout: Duration,
    pub(super) attempts: Vec<Attempt>,
    pub(super) phase: Phase,
}

#[derive(Debug)]
pub(super) enum Phase {
    /// The next attempt is due.
    Next,
    /// An attempt waits for its answer.
    Call(PausedCall),
    /// Backing off after `last`, until `until`.
    Backoff { last: Outcome, until: Instant },
}

impl PausedRetries {
    /// Goes on from where the cancel stopped it, with a fresh `cancel`.
    pub fn resume(mut self, cancel: &Cancel) -> RetryStep {
        loop {
            let step = match std::mem::replace(&mut self.phase, Phase::Next) {
                Phase::Next => {
                    let budget = match self.deadline {
                        Some(d) => d
                            .saturating_duration_since(Instant::now())
                            .min(self.request_timeout),
                        None => self.request_timeout,
                    };
                    self.client.start(&self.req, Some(budget), cancel)
                }
                Phase::Call(paused) => paused.resume(cancel),
                Phase::Backoff { last, until } => {
                    let left = until.saturating_duration_since(Instant::now());
                    if !sleep_unless_cancelled(left, cancel) {
                        self.phase = Phase::Backoff { last, until };
                        return RetryStep::Paused(self);
                    }
                    continue;
                }
            };
            let outcome = match step {
                CallStep::Done(outcome) => outcome,
                CallStep::Paused(paused) => {
                    self.phase = Phase::Call(paused);
                    return RetryStep::Paused(self);
                }
            };
            self.attempts.push(Attempt::of(&outcome.classified));
            let n = self.attempts.len() as u32;
            if n >= self.attempts_allowed || !worth_retrying(&outcome) {
                return RetryStep::Done(outcome, self.attempts);
            }
            let sleep = self.client.jitter(self.base_backoff, self.max_backoff, n);
            let now = Instant::now();
            // A retry needs time for the sleep and at least a little for the attempt.
            if self
                .deadline
                .is_some_and(|d| later(now, sleep + Duration::from_millis(1)) >= d)
            {
                return RetryStep::Done(outcome, self.attempts);
            }
            self.phase = Phase::Backoff {
                last: outcome,
                until: later(now, sleep),
            };
        }
    }

    /// Stops here: an attempt in flight is given up (its outcome is the last), a backoff
    /// ends with the outcome before it.
    pub fn give_up(mut self) -> (Outcome, Vec<Attempt>) {
        let outcome = match std::mem::replace(&mut self.phase, Phase::Next) {
            Phase::Call(paused) => {
                let outcome = paused.give_up();
                self.attempts.push(Attempt::of(&outcome.classified));
                outcome
            }
            Phase::Backoff { last, .. } => last,
            Phase::Next => unreachable!("paused only in a call or a backoff"),
        };
        (outcome, self.attempts)
    }
}

/// A tail poll cut short by its [`Cancel`]; see [`Client::start_tail_poll`].
#[derive(Debug)]
pub struct PausedTail<'c> {
    /// Paused, until `settle` finds it done.
    pub(super) call: CallStep,
    pub(super) cursor: &'c mut Cursor<Value>,
    pub(super) polled_at: Instant,
}

impl<'c> PausedTail<'c> {
    /// Stops here; the cursor stays where it was.
    pub fn give_up(self) -> (Outcome, Vec<(u64, Value)>) {
        match self.call {
            CallStep::Paused(call) => (call.give_up(), Vec::new()),
            CallStep::Done(_) => unreachable!("a finished poll is never paused"),
        }
    }

    pub(super) fn settle(self) -> Step<(Outcome, Vec<(u64, Value)>), PausedTail<'c>> {
        let mut outcome = match self.call {
            CallStep::Done(outcome) => outcome,
            CallStep::Paused(_) => return Step::Paused(self),
        };
        if !outcome.classified.ok {
            return Step::Done((outcome, Vec::new()));
        }
        // The facts leave the answer: the soft result carries `facts: null`, and each
        // fact reaches Ruby once, as a released one.
        let mut answer = match outcome.classified.answer.value() {
            Value::Object(answer) => answer,
            _ => Map::new(),
        };
        let facts = match answer.get_mut("facts").map(Value::take) {
            Some(Value::Array(facts)) => facts,
            _ => Vec::new(),
        };
        outcome.classified.answer = Answer::of_object(&answer);
        let items = facts.into_iter().filter_map(|f| {
            let seq = f.get("seq_id")?.as_u64()?;
            Some((seq, f))
        });
        let released = self.cursor.feed(items, self.polled_at);
        Step::Done((outcome, released))
    }
}

impl Resumable for PausedTail<'_> {
    type Output = (Outcome, Vec<(u64, Value)>);
    fn step(mut self, cancel: &Cancel) -> Step<Self::Output, Self> {
        if let CallStep::Paused(call) = self.call {
            self.call = call.resume(cancel);
        }
        self.settle()
    }
}

impl From<CallStep> for Step<Outcome, PausedCall> {
    fn from(step: CallStep) -> Self {
        match step {
            CallStep::Done(outcome) => Step::Done(outcome),
            CallStep::Paused(paused) => Step::Paused(paused),
        }
    }
}

impl Resumable for PausedCall {
    type Output = Outcome;
    fn step(self, cancel: &Cancel) -> Step<Outcome, PausedCall> {
        self.resume(cancel).into()
    }
}

impl From<RetryStep> for Step<(Outcome, Vec<Attempt>), PausedRetries> {
    fn from(step: RetryStep) -> Self {
        match step {
            RetryStep::Done(outcome, tried) => Step::Done((outcome, tried)),
            RetryStep::Paused(paused) => Step::Paused(paused),
        }
    }
}

impl Resumable for PausedRetries {
    type Output = (Outcome, Vec<Attempt>);
    fn step(self, cancel: &Cancel) -> Step<Self::Output, PausedRetries> {
        self.resume(cancel).into()
    }
}

fn worth_retrying(o: &Outcome) -> bool {
    // An open breaker refuses every attempt until its cooldown ends: retrying inside
    // one call cannot help.
    let status = o.classified.status;
    let status_retryable = status.row().retry_safe && status != Status::CircuitOpen;
    status_retryable
        && !matches!(
            o.transport,
            Some(TransportError::Cancelled { .. } | TransportError::ShutDown { .. })
        )
}

/// Sleeps `d` unless `cancel` fires first; `false` if it did.
fn sleep_unless_cancelled(d: Duration, cancel: &Cancel) -> bool {
    let word = AtomicU32::new(0);
    let _armed = cancel.arm(&word, None);
    let until = later(Instant::now(), d);
    loop {
        if cancel.is_cancelled() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        sys::futex_wait(&word, word.load(Ordering::Acquire), Some(until - now));
    }
}
