//! [`Client`]: the lanes of one endpoint, its breaker, and the calls.

use std::fmt;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use tbackend_core::protocol::answer::classify;
use tbackend_core::protocol::frame;
use tbackend_core::protocol::request::RequestBuilder;
use tbackend_core::{Classified, ErrorKind, OpKind, Status};

use crate::backoff::full_jitter;
use crate::batch::Batch;
use crate::breaker::{Admission, Breaker, BreakerState, Verdict};
use crate::cancel::{Cancel, Resumable, Step};
use crate::config::Config;
use crate::error::TransportError;
use crate::lane::{self, later, Failure, Lane, LaneStats, Shared, Slot};
use crate::sys;
use crate::tail::Cursor;

/// One request: its kind (which the status table depends on) and its body, one complete
/// JSON object built by the caller (with core's `RequestBuilder`, token included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The kind of op the body names.
    pub op: OpKind,
    /// The request object, as sent.
    pub body: Vec<u8>,
}

impl Request {
    /// A request of kind `op` with this body.
    pub fn new(op: OpKind, body: Vec<u8>) -> Request {
        Request { op, body }
    }

    /// A `ping`, with the token when auth is on.
    pub fn ping(token: Option<&str>) -> Request {
        Request::new(OpKind::Ping, RequestBuilder::new("ping", token).finish())
    }
}

/// What a call returns: the soft result, plus what only the transport knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Status, flags, error text and the daemon's answer, per the soft-result table.
    pub classified: Classified,
    /// Why no valid answer came back, when none did.
    pub transport: Option<TransportError>,
    /// The lane that carried the request (`None` when no lane was touched: breaker
    /// open, refused request, shut down).
    pub lane: Option<usize>,
}

impl Outcome {
    pub(crate) fn client_side(status: Status, error: TransportError) -> Outcome {
        Outcome {
            classified: Classified::transport(status, Some(error.to_string())),
            transport: Some(error),
            lane: None,
        }
    }

    /// A request refused before sending because it is wrong: retrying cannot help.
    fn refused(reason: String) -> Outcome {
        Outcome {
            classified: Classified {
                status: Status::Error,
                ok: false,
                committed: Some(false),
                retryable: Some(false),
                kind: ErrorKind::ClientBug,
                error: Some(reason),
                answer: Value::Null,
            },
            transport: None,
            lane: None,
        }
    }
}

/// How [`Client::call_with_retries`] retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (0 counts as 1).
    pub attempts: u32,
    /// Backoff before the second attempt; doubles after each, with full jitter.
    pub base_backoff: Duration,
    /// Cap of one backoff.
    pub max_backoff: Duration,
    /// Budget of all attempts and sleeps together (`None`: each attempt gets its
    /// attempt timeout).
    pub deadline: Option<Duration>,
    /// Budget of one attempt (`None`: the client's request timeout).
    pub attempt_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    /// The old gem's `write_fact_once_safe` defaults: 2 attempts, 50 ms.
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            deadline: None,
            attempt_timeout: None,
        }
    }
}

/// One attempt of a retried call, as the `attempts:` array of a result shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt's status.
    pub status: Status,
    /// Whether it succeeded.
    pub ok: bool,
    /// Whether the fact is stored, when known.
    pub committed: Option<bool>,
    /// Whether retrying could help, when known.
    pub retryable: Option<bool>,
}

impl Attempt {
    fn of(c: &Classified) -> Attempt {
        Attempt {
            status: c.status,
            ok: c.ok,
            committed: c.committed,
            retryable: c.retryable,
        }
    }
}

/// The breaker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerStats {
    /// Closed, open or half-open.
    pub state: BreakerState,
    /// Consecutive `unavailable` / `timeout_unknown` outcomes.
    pub consecutive_failures: u32,
    /// Times it opened.
    pub opens: u64,
}

/// A snapshot of a client's lanes and breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Per lane, in lane order.
    pub lanes: Vec<LaneStats>,
    /// The endpoint's breaker.
    pub breaker: BreakerStats,
    /// Connections opened since the client was built, all lanes.
    pub connections_opened: u64,
}

pub(crate) struct Inner {
    pub(crate) shared: Shared,
    pub(crate) breaker: Breaker,
    /// Never dropped after `forget_after_fork`: a forked child must not run the
    /// destructors of state another thread of the parent may have been using.
    pub(crate) lanes: ManuallyDrop<Box<[Lane]>>,
    rng: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.shared.state.load(Ordering::Acquire) != lane::FORGOTTEN {
            // SAFETY: dropped exactly once, here, and never touched again.
            unsafe { ManuallyDrop::drop(&mut self.lanes) };
        }
    }
}

/// The native TBackend client of one endpoint: `Send + Sync`, cheap to clone, shared
/// by every thread of the process.
///
/// It holds `config.lanes` persistent connections, opened lazily, each pipelining the
/// requests of any number of threads, so the daemon sees the same few connections
/// however many threads call (its fixed worker pool starves connections beyond its
/// size). No call ever panics or blocks past its deadline; every failure is an
/// [`Outcome`] with the 0.2 gem's status.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.shared.endpoint)
            .field("lanes", &self.inner.lanes.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `config`; connects lazily, on the first call of each lane.
    pub fn new(config: Config) -> Client {
        let epoch = Instant::now();
        let lanes: Box<[Lane]> = (0..config.lanes.max(1))
            .map(|i| Lane::new(i, epoch))
            .collect();
        let breaker = Breaker::new(config.breaker_threshold, config.breaker_cooldown, epoch);
        let seed = epoch.elapsed().as_nanos() as u64 ^ (u64::from(std::process::id()) << 17) | 1;
        Client {
            inner: Arc::new(Inner {
                shared: Shared {
                    endpoint: Arc::from(config.endpoint()),
                    config,
                    epoch,
                    connections_opened: AtomicU64::new(0),
                    state: AtomicU8::new(lane::OPEN),
                },
                breaker,
                lanes: ManuallyDrop::new(lanes),
                rng: AtomicU64::new(seed),
            }),
        }
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// Sends one request and waits for its answer, at most `timeout` (default: the
    /// config's `request_timeout`), or until `cancel` is cancelled.
    pub fn call(&self, req: &Request, timeout: Option<Duration>, cancel: &Cancel) -> Outcome {
        match self.start(req, timeout, cancel) {
            CallStep::Done(outcome) => outcome,
            CallStep::Paused(paused) => paused.give_up(),
        }
    }

    /// [`Client::call`] that a cancel only pauses: the request, if written, stays queued
    /// for its answer, and [`PausedCall::resume`] waits for it again (or, if it was not
    /// written yet, sends it), within the same deadline. For callers whose cancel means
    /// "let me run something first" — Ruby's unblocking function fires for every
    /// interrupt, and most (a signal trap, `Thread#wakeup`) raise nothing, after which
    /// the call must go on as if never disturbed.
    pub fn start(&self, req: &Request, timeout: Option<Duration>, cancel: &Cancel) -> CallStep {
        let inner = &*self.inner;
        let (frame, admission) = match inner.admit(req) {
            Admitted::Send(frame, admission) => (frame, admission),
            Admitted::Answered(outcome) => return CallStep::Done(outcome),
        };
        let budget = timeout.unwrap_or(inner.shared.config.request_timeout);
        PausedCall {
            client: self.clone(),
            op: req.op,
            frame,
            admission: Some(admission),
            lane: inner.pick_lane(),
            slot: Slot::new(),
            sent: false,
            deadline: later(Instant::now(), budget),
            budget,
        }
        .resume(cancel)
    }

    /// The outcome every call would get right now without touching a socket — the client
    /// is shut down, or the breaker is open (or half-open with its probe out) — or `None`.
    /// Takes nothing (no probe slot), so a `None` caller goes on through [`Client::call`].
    pub fn refused_outright(&self) -> Option<Outcome> {
        let inner = &*self.inner;
        if let Some(e) = inner.shared.closed_error() {
            return Some(Outcome::client_side(Status::Unavailable, e));
        }
        inner.breaker.refuses().then(|| {
            let e = TransportError::CircuitOpen {
                endpoint: inner.shared.endpoint.clone(),
            };
            Outcome::client_side(Status::CircuitOpen, e)
        })
    }

    /// Sends every request pipelined across the lanes from this one thread and returns
    /// one outcome per request, in input order: the way to backfill at full daemon speed.
    ///
    /// `timeout` (default `request_timeout`) bounds each request from the moment it is
    /// written, not the whole batch. A cancel ends the batch promptly: requests not yet
    /// written come back `unavailable`, written ones `timeout_unknown`.
    pub fn call_batch(
        &self,
        reqs: &[Request],
        timeout: Option<Duration>,
        cancel: &Cancel,
    ) -> Vec<Outcome> {
        let mut batch = self.batch(timeout);
        let taken = batch.submit(reqs, cancel);
        if taken < reqs.len() || !batch.finish(cancel) {
            batch.give_up(&reqs[taken..]);
        }
        batch.take_ready()
    }

    /// [`Client::call_batch`] in steps: submit requests as they are built, collect the
    /// outcomes known so far, finish. `timeout` bounds each request as in `call_batch`.
    pub fn batch(&self, timeout: Option<Duration>) -> Batch {
        Batch::new(self, timeout)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// [`Client::call`], retried on `unavailable`, `timeout_unknown` and
    /// `rejected_before_commit` with exponential backoff and full jitter, within
    /// `policy.deadline`. Sleeps hold no lane and end early on `cancel`. Returns the last
    /// outcome and every attempt.
    ///
    /// Retrying `timeout_unknown` is only safe for idempotent requests: reads and
    /// `write_fact_once` (a retry lands as a replay), never the legacy `write_fact`.
    pub fn call_with_retries(
        &self,
        req: &Request,
        policy: &RetryPolicy,
        cancel: &Cancel,
    ) -> (Outcome, Vec<Attempt>) {
        match self.start_with_retries(req, policy, cancel) {
            RetryStep::Done(outcome, attempts) => (outcome, attempts),
            RetryStep::Paused(paused) => paused.give_up(),
        }
    }

    /// [`Client::call_with_retries`] that a cancel only pauses, as [`Client::start`]
    /// does for one call: an attempt in flight stays queued, a backoff keeps its end, and
    /// [`PausedRetries::resume`] goes on from there.
    pub fn start_with_retries(
        &self,
        req: &Request,
        policy: &RetryPolicy,
        cancel: &Cancel,
    ) -> RetryStep {
        PausedRetries {
            client: self.clone(),
            req: req.clone(),
            attempts_allowed: policy.attempts.max(1),
            base_backoff: policy.base_backoff,
            max_backoff: policy.max_backoff,
            deadline: policy.deadline.map(|d| later(Instant::now(), d)),
            request_timeout: policy
                .attempt_timeout
                .unwrap_or(self.inner.shared.config.request_timeout),
            attempts: Vec::new(),
            phase: Phase::Next,
        }
        .resume(cancel)
    }

    /// One poll of a gap-safe tail over `facts_by_seq` (docs/protocol.md §8): asks for the
    /// facts after `cursor.after_seq()` and returns, with the outcome, the facts the
    /// cursor releases — only over an unbroken run of seqs, never one twice. The
    /// answer's `facts` array is moved into the returned facts (and the held ones).
    /// A cancel ends the poll (`timeout_unknown` once the request is out).
    pub fn tail_poll(
        &self,
        store: &str,
        cursor: &mut Cursor<Value>,
        timeout: Option<Duration>,
        cancel: &Cancel,
    ) -> (Outcome, Vec<(u64, Value)>) {
        match self.start_tail_poll(store, cursor, timeout, cancel) {
            Step::Done(polled) => polled,
            Step::Paused(paused) => paused.give_up(),
        }
    }

    /// [`Client::tail_poll`] that a cancel only pauses, as [`Client::start`] does a call.
    pub fn start_tail_poll<'c>(
        &self,
        store: &str,
        cursor: &'c mut Cursor<Value>,
        timeout: Option<Duration>,
        cancel: &Cancel,
    ) -> Step<(Outcome, Vec<(u64, Value)>), PausedTail<'c>> {
        let mut body =
            RequestBuilder::new("facts_by_seq", self.inner.shared.config.token.as_deref());
        if let Err(e) = body
            .str("store", store)
            .and_then(|b| b.u64("after_seq", cursor.after_seq()))
        {
            return Step::Done((Outcome::refused(e.to_string()), Vec::new()));
        }
        let req = Request::new(OpKind::Read, body.finish());
        let polled_at = Instant::now();
        PausedTail {
            call: self.start(&req, timeout, cancel),
            cursor,
            polled_at,
        }
        .settle()
    }

    /// Lanes, breaker and connection counters.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        Stats {
            lanes: inner.lanes.iter().map(Lane::stats).collect(),
            breaker: BreakerStats {
                state: inner.breaker.state(),
                consecutive_failures: inner.breaker.consecutive_failures(),
                opens: inner.breaker.opens(),
            },
            connections_opened: inner.shared.connections_opened.load(Ordering::Relaxed),
        }
    }

    /// Closes every lane. Calls in flight end (`timeout_unknown` if their request was
    /// written); later calls get `unavailable` ("client is shut down") at once.
    pub fn shutdown(&self) {
        let inner = &*self.inner;
        let _ = inner.shared.state.compare_exchange(
            lane::OPEN,
            lane::SHUT_DOWN,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        for lane in inner.lanes.iter() {
            lane.shut_down(&inner.shared);
        }
    }

    /// For a forked child: gives up this client without disturbing the parent.
    ///
    /// Locks nothing (another thread may have held a lane mutex at fork time and does
    /// not exist in the child), closes the inherited sockets with close(2) only (a
    /// shutdown(2) would cut the parent's connections, which share them), and leaks the
    /// rest. Clones still held in the child answer `unavailable` from then on.
    ///
    /// Call it first in the child, before any other method of this client: the others
    /// may take a lane mutex.
    pub fn forget_after_fork(self) {
        let inner = &*self.inner;
        inner.shared.state.store(lane::FORGOTTEN, Ordering::Release);
        for lane in inner.lanes.iter() {
            let fd = lane.fd.swap(-1, Ordering::AcqRel);
            if fd >= 0 {
                sys::close_inherited(fd);
            }
        }
        std::mem::forget(self);
    }

    fn jitter(&self, base: Duration, max: Duration, attempt: u32) -> Duration {
        // Racy on purpose: two threads drawing the same number only costs spread.
        let mut state = self.inner.rng.load(Ordering::Relaxed);
        let sleep = full_jitter(base, max, attempt, &mut state);
        self.inner.rng.store(state, Ordering::Relaxed);
        sleep
    }
}

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
    client: Client,
    op: OpKind,
    frame: Vec<u8>,
    /// Taken by the verdict: `finish` or `Drop`.
    admission: Option<Admission>,
    lane: usize,
    slot: Arc<Slot>,
    /// Whether the frame went out (its slot is queued on `lane`).
    sent: bool,
    deadline: Instant,
    budget: Duration,
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
        let result = if self.sent {
            lane.wait_detached(
                &inner.shared,
                &self.slot,
                self.deadline,
                self.budget,
                cancel,
            )
        } else {
            lane.exchange(
                &inner.shared,
                &self.slot,
                &self.frame,
                self.deadline,
                self.budget,
                cancel,
            )
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
            endpoint: self.client.inner.shared.endpoint.clone(),
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
                .record(admission, Verdict::Neutral);
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
    client: Client,
    req: Request,
    attempts_allowed: u32,
    base_backoff: Duration,
    max_backoff: Duration,
    deadline: Option<Instant>,
    request_timeout: Duration,
    attempts: Vec<Attempt>,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
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
    call: CallStep,
    cursor: &'c mut Cursor<Value>,
    polled_at: Instant,
}

impl<'c> PausedTail<'c> {
    /// Stops here; the cursor stays where it was.
    pub fn give_up(self) -> (Outcome, Vec<(u64, Value)>) {
        match self.call {
            CallStep::Paused(call) => (call.give_up(), Vec::new()),
            CallStep::Done(_) => unreachable!("a finished poll is never paused"),
        }
    }

    fn settle(self) -> Step<(Outcome, Vec<(u64, Value)>), PausedTail<'c>> {
        let mut outcome = match self.call {
            CallStep::Done(outcome) => outcome,
            CallStep::Paused(_) => return Step::Paused(self),
        };
        if !outcome.classified.ok {
            return Step::Done((outcome, Vec::new()));
        }
        let facts = match outcome.classified.answer.get_mut("facts").map(Value::take) {
            Some(Value::Array(facts)) => facts,
            _ => Vec::new(),
        };
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

/// What [`Inner::admit`] decided.
pub(crate) enum Admitted {
    /// Send this frame.
    Send(Vec<u8>, Admission),
    /// Answered without touching a lane.
    Answered(Outcome),
}

impl Inner {
    /// Everything a call checks before touching a lane: client state, the request
    /// itself, the breaker. Returns the frame to send and the breaker's admission.
    pub(crate) fn admit(&self, req: &Request) -> Admitted {
        let sh = &self.shared;
        if let Some(e) = sh.closed_error() {
            return Admitted::Answered(Outcome::client_side(Status::Unavailable, e));
        }
        let Some(admission) = self.breaker.admit() else {
            let e = TransportError::CircuitOpen {
                endpoint: sh.endpoint.clone(),
            };
            return Admitted::Answered(Outcome::client_side(Status::CircuitOpen, e));
        };
        let checked = check_body(req.op, &req.body).and_then(|()| {
            frame::encode(&req.body, sh.config.max_request_bytes)
                .map_err(|e| format!("request refused: {e}"))
        });
        match checked {
            Ok(frame) => Admitted::Send(frame, admission),
            Err(reason) => {
                self.breaker.record(admission, Verdict::Neutral);
                Admitted::Answered(Outcome::refused(reason))
            }
        }
    }

    /// Least requests in flight wins, so a slow request on one lane does not hold up
    /// calls another lane can serve; lanes backing off from a failed connect come last.
    fn pick_lane(&self) -> usize {
        if self.lanes.len() == 1 {
            return 0;
        }
        let now = Instant::now();
        let mut best = 0;
        let mut best_score = (true, usize::MAX, true);
        for (i, lane) in self.lanes.iter().enumerate() {
            let score = (
                lane.backing_off(&self.shared, now),
                lane.in_flight.load(Ordering::Relaxed),
                !lane.is_connected(),
            );
            if score < best_score {
                best = i;
                best_score = score;
            }
        }
        best
    }

    /// Round robin from `n`, skipping lanes that back off from a failed connect.
    pub(crate) fn next_lane(&self, n: usize) -> usize {
        let count = self.lanes.len();
        let now = Instant::now();
        (0..count)
            .map(|k| (n + k) % count)
            .find(|&i| !self.lanes[i].backing_off(&self.shared, now))
            .unwrap_or(n % count)
    }

    pub(crate) fn finish(
        &self,
        op: OpKind,
        lane: usize,
        result: Result<Vec<u8>, Failure>,
        admission: Admission,
    ) -> Outcome {
        let outcome = match result {
            Ok(body) => match classify(op, &body) {
                Ok(classified) => Outcome {
                    classified,
                    transport: None,
                    lane: Some(lane),
                },
                Err(e) => {
                    let error = TransportError::Malformed {
                        endpoint: self.shared.endpoint.clone(),
                        detail: e.to_string(),
                    };
                    Outcome {
                        lane: Some(lane),
                        ..Outcome::client_side(Status::TimeoutUnknown, error)
                    }
                }
            },
            Err(Failure { error, sent }) => {
                let status = if sent {
                    Status::TimeoutUnknown
                } else {
                    Status::Unavailable
                };
                Outcome {
                    lane: Some(lane),
                    ..Outcome::client_side(status, error)
                }
            }
        };
        let verdict = match &outcome.transport {
            None => Verdict::Answered,
            Some(TransportError::Cancelled { .. } | TransportError::ShutDown { .. }) => {
                Verdict::Neutral
            }
            Some(_) => Verdict::Failed,
        };
        self.breaker.record(admission, verdict);
        outcome
    }
}

fn worth_retrying(o: &Outcome) -> bool {
    let status_retryable = matches!(
        o.classified.status,
        Status::Unavailable | Status::TimeoutUnknown | Status::RejectedBeforeCommit
    );
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

/// The daemon is lax about two top-level keys (docs/protocol.md §3): `"error"` makes it echo
/// the request back unexecuted and unauthenticated, and `"store"` on a write is what its
/// ACL checks instead of `fact.store`. Core's builder refuses both; this re-check is one
/// pass over the body, so a body built any other way cannot slip them through.
fn check_body(op: OpKind, body: &[u8]) -> Result<(), String> {
    let keys: TopKeys = serde_json::from_slice(body)
        .map_err(|e| format!("request refused: the body is not one JSON object: {e}"))?;
    if keys.error {
        return Err("request refused: a top-level \"error\" key makes the daemon echo the request unexecuted".into());
    }
    if keys.store && op == OpKind::Write {
        return Err(
            "request refused: a top-level \"store\" on a write would be checked by the store ACL instead of fact.store"
                .into(),
        );
    }
    Ok(())
}

#[derive(Default)]
struct TopKeys {
    error: bool,
    store: bool,
}

impl<'de> Deserialize<'de> for TopKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopKeys, A::Error> {
                let mut keys = TopKeys::default();
                while let Some(key) = map.next_key::<Key>()? {
                    map.next_value::<IgnoredAny>()?;
                    match key {
                        Key::Error => keys.error = true,
                        Key::Store => keys.store = true,
                        Key::Other => {}
                    }
                }
                Ok(keys)
            }
        }
        d.deserialize_map(V)
    }
}

enum Key {
    Error,
    Store,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "error" => Key::Error,
                    "store" => Key::Store,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_checks() {
        assert!(check_body(
            OpKind::Read,
            br#"{"op":"latest_for","store":"s","key":"k"}"#
        )
        .is_ok());
        assert!(check_body(
            OpKind::Write,
            br#"{"op":"write_fact_once","fact":{"store":"s"}}"#
        )
        .is_ok());
        let e = check_body(
            OpKind::Write,
            br#"{"op":"write_fact_once","store":"s","fact":{}}"#,
        )
        .unwrap_err();
        assert!(e.contains("ACL"), "{e}");
        let e = check_body(OpKind::Ping, br#"{"op":"ping","error":"x"}"#).unwrap_err();
        assert!(e.contains("echo"), "{e}");
        assert!(
            check_body(OpKind::Ping, br#"{"op":"ping","err\u006fr":1}"#).is_err(),
            "escaped key"
        );
        assert!(check_body(OpKind::Ping, b"[1]").is_err());
        assert!(check_body(OpKind::Ping, br#"{"op":"ping"} {}"#).is_err());
        assert!(check_body(OpKind::Ping, b"").is_err());
    }

    #[test]
    fn refused_requests_never_touch_a_socket() {
        // Port 9 on loopback: nothing listens; a connect would be refused.
        let client = Client::new(Config::new("127.0.0.1", 9));
        let o = client.call(
            &Request::new(
                OpKind::Write,
                br#"{"op":"write_fact_once","store":"x"}"#.to_vec(),
            ),
            None,
            &Cancel::new(),
        );
        assert_eq!(o.classified.status, Status::Error);
        assert_eq!(o.classified.retryable, Some(false));
        assert_eq!(o.classified.kind, ErrorKind::ClientBug);
        assert_eq!(o.lane, None);
        assert_eq!(client.stats().connections_opened, 0);
        assert_eq!(client.stats().lanes[0].last_error, None);
    }

    #[test]
    fn oversized_request_is_refused() {
        let client = Client::new(Config {
            max_request_bytes: 10,
            ..Config::new("127.0.0.1", 9)
        });
        let o = client.call(&Request::ping(Some("a-long-token")), None, &Cancel::new());
        assert_eq!(o.classified.status, Status::Error);
        assert!(o.classified.error.unwrap().contains("cap"));
    }

    #[test]
    fn client_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Client>();
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<Cancel>();
    }
}
