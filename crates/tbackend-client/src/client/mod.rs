//! [`Client`]: the lanes of one endpoint, its breaker, and the calls. The calls that a
//! cancel only pauses are in [`paused`], the request check in [`check`].

mod check;
mod paused;

use std::fmt;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tbackend_core::protocol::answer::{classify_owned, Answer};
use tbackend_core::protocol::frame;
use tbackend_core::protocol::request::RequestBuilder;
use tbackend_core::{Classified, ErrorKind, OpKind, Status};

use crate::backoff::full_jitter;
use crate::batch::Batch;
use crate::breaker::{Admission, Breaker, BreakerState, Evidence};
use crate::cancel::{Cancel, Step};
use crate::config::Config;
use crate::error::TransportError;
use crate::lane::{self, Context, Failure, Lane, LaneStats, Slot};
use crate::sys;
use crate::tail::Cursor;
use crate::wait::later;

use check::check_body;
pub use paused::{CallStep, PausedCall, PausedRetries, PausedTail, RetryStep};
use paused::Phase;

/// One request: its kind (which the status table depends on) and its body, one complete
/// JSON object built by the caller (with core's `RequestBuilder`, token included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The kind of op the body names.
    pub op: OpKind,
    body: Vec<u8>,
    /// Whether the body came from a `RequestBuilder`, which refuses the keys `check_body`
    /// looks for as they are added: the call then skips that second pass over the body.
    /// (What the builder was handed through `encoded`/`value_slot` it trusts to be one
    /// JSON value; everything else it writes or parses itself.)
    built: bool,
}

impl Request {
    /// A request of kind `op` with this body, made any way at all: it is checked before
    /// it is sent.
    pub fn new(op: OpKind, body: Vec<u8>) -> Request {
        Request {
            op,
            body,
            built: false,
        }
    }

    /// A request of kind `op` from core's builder.
    pub fn built(op: OpKind, builder: RequestBuilder) -> Request {
        Request {
            op,
            body: builder.finish(),
            built: true,
        }
    }

    /// A `ping`, with the token when auth is on.
    pub fn ping(token: Option<&str>) -> Request {
        Request::built(OpKind::Ping, RequestBuilder::new("ping", token))
    }

    /// The request object, as sent.
    pub fn body(&self) -> &[u8] {
        &self.body
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
                answer: Answer::none(),
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
    pub(crate) context: Context,
    pub(crate) breaker: Breaker,
    /// Never dropped after `forget_after_fork`: a forked child must not run the
    /// destructors of state another thread of the parent may have been using.
    pub(crate) lanes: ManuallyDrop<Box<[Lane]>>,
    rng: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.context.state.load(Ordering::Acquire) != lane::FORGOTTEN {
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
            .field("endpoint", &self.inner.context.endpoint)
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
                context: Context {
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
        &self.inner.context.config
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
        let budget = timeout.unwrap_or(inner.context.config.request_timeout);
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
        if let Some(e) = inner.context.closed_error() {
            return Some(Outcome::client_side(Status::Unavailable, e));
        }
        inner.breaker.refuses().then(|| {
            let e = TransportError::CircuitOpen {
                endpoint: inner.context.endpoint.clone(),
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
        batch.finish_all(reqs, taken, cancel)
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
                .unwrap_or(self.inner.context.config.request_timeout),
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
            RequestBuilder::new("facts_by_seq", self.inner.context.config.token.as_deref());
        if let Err(e) = body
            .str("store", store)
            .and_then(|b| b.u64("after_seq", cursor.after_seq()))
        {
            return Step::Done((Outcome::refused(e.to_string()), Vec::new()));
        }
        let req = Request::built(OpKind::Read, body);
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
            connections_opened: inner.context.connections_opened.load(Ordering::Relaxed),
        }
    }

    /// Closes every lane. Calls in flight end (`timeout_unknown` if their request was
    /// written); later calls get `unavailable` ("client is shut down") at once.
    pub fn shutdown(&self) {
        let inner = &*self.inner;
        let _ = inner.context.state.compare_exchange(
            lane::OPEN,
            lane::SHUT_DOWN,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        for lane in inner.lanes.iter() {
            lane.shut_down(&inner.context);
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
        inner.context.state.store(lane::FORGOTTEN, Ordering::Release);
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
        let cx = &self.context;
        if let Some(e) = cx.closed_error() {
            return Admitted::Answered(Outcome::client_side(Status::Unavailable, e));
        }
        let Some(admission) = self.breaker.admit() else {
            let e = TransportError::CircuitOpen {
                endpoint: cx.endpoint.clone(),
            };
            return Admitted::Answered(Outcome::client_side(Status::CircuitOpen, e));
        };
        let checked = if req.built {
            Ok(())
        } else {
            check_body(req.op, &req.body)
        };
        let checked = checked.and_then(|()| {
            frame::encode(&req.body, cx.config.max_request_bytes)
                .map_err(|e| format!("request refused: {e}"))
        });
        match checked {
            Ok(frame) => Admitted::Send(frame, admission),
            Err(reason) => {
                self.breaker.record(admission, Evidence::Neutral);
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
                lane.backing_off(&self.context, now),
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
            .find(|&i| !self.lanes[i].backing_off(&self.context, now))
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
            Ok(body) => match classify_owned(op, body) {
                Ok(classified) => Outcome {
                    classified,
                    transport: None,
                    lane: Some(lane),
                },
                Err(e) => {
                    let error = TransportError::Malformed {
                        endpoint: self.context.endpoint.clone(),
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
        let evidence = match &outcome.transport {
            None => Evidence::Answered,
            Some(TransportError::Cancelled { .. } | TransportError::ShutDown { .. }) => {
                Evidence::Neutral
            }
            Some(_) => Evidence::Failed,
        };
        self.breaker.record(admission, evidence);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
