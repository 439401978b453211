//! A lane: one persistent TCP connection, pipelined, shared by every calling thread,
//! with no thread of its own.
//!
//! The daemon serves each connection with one worker of a fixed pool and answers
//! strictly in order with no request id (docs/protocol.md §2), so a lane is a FIFO of
//! slots matched to answers by position. Leader/follower, which a prototype measured
//! 11-25% faster than a writer/reader task pair (and lighter on CPU per write): a caller
//! writes its own frame under the lane mutex and queues its slot; the first waiter that
//! finds no reader becomes the reader, reads as many answers per `read` as are there,
//! completes the others' slots in order and, once its own slot is done, hands the reader
//! role to the oldest waiting follower. Thread hops cost more than system calls here, so
//! nothing is relayed through a lane thread.
//!
//! Three layers: [`pipeline`] is the pure state (slots, FIFO, tickets, generations,
//! overdue answers, hand-off), unit-tested without sockets; [`conn`] is the socket
//! (connect, non-blocking writes, reads, the idle probe); this module ties them together
//! under the lane mutex (submitting, connecting, teardown) and [`reader`] runs the
//! reader and follower roles.
//!
//! Invariants, all under the lane mutex:
//! - a slot leaves the FIFO only when its answer is read or the connection is torn down
//!   (see [`pipeline`]);
//! - at most one reader per connection; when it leaves, it hands off to the oldest
//!   parked follower still waiting (and followers re-check on a short timer, so a
//!   hand-off to a caller that is just giving up cannot strand the others);
//! - socket writes never block: what does not fit goes to the [`conn::Outbox`], which
//!   the reader flushes when the socket is writable, so a mutex is never held across a
//!   wait.

mod conn;
mod pipeline;
mod reader;
mod word;

use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::backoff::full_jitter;
use crate::cancel::POKE;
use crate::config::Config;
use crate::error::{Endpoint, TimeoutPhase, TransportError};
use crate::sys;
use crate::wait::{later, Wait};

use conn::{Conn, Outbox, ReadCounts};
pub(crate) use pipeline::Slot;
use pipeline::Pipeline;

/// A lane whose last request went out longer ago than this is checked for a peer close
/// (non-blocking `MSG_PEEK`) before it is written to: the daemon cuts idle connections
/// silently (and a restarted daemon leaves closed ones behind), and a request written to a
/// cut connection would be lost as `timeout_unknown`. Short, so any pause is covered; a
/// caller in a tight loop (or with requests in flight) never pays for the probe.
const IDLE_PROBE_AFTER: Duration = Duration::from_millis(10);
/// A lane holding only abandoned requests (timed out or cancelled) this long after its
/// last write is replaced rather than drained.
const ABANDONED_REPLACE_AFTER: Duration = Duration::from_secs(1);
/// Upper bound of one sleep waiting for a connection or for pipeline room.
const PARK_CHECK: Duration = Duration::from_millis(20);

pub(crate) const OPEN: u8 = 0;
pub(crate) const SHUT_DOWN: u8 = 1;
pub(crate) const FORGOTTEN: u8 = 2;

/// What every lane of one client works with: the endpoint, its configuration, the
/// clock origin of the ns timestamps, and whether the client is still open.
pub(crate) struct Context {
    pub config: Config,
    pub endpoint: Endpoint,
    pub epoch: Instant,
    pub connections_opened: AtomicU64,
    pub state: AtomicU8,
}

impl Context {
    pub(crate) fn closed_error(&self) -> Option<TransportError> {
        (self.state.load(Ordering::Acquire) != OPEN).then(|| TransportError::ShutDown {
            endpoint: self.endpoint.clone(),
        })
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch)
            .as_nanos()
            .min(u64::MAX as u128) as u64
    }

    fn instant(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    fn timeout(&self, after: Duration, phase: TimeoutPhase) -> TransportError {
        TransportError::Timeout {
            endpoint: self.endpoint.clone(),
            after,
            phase,
        }
    }

    fn cancelled(&self) -> TransportError {
        TransportError::Cancelled {
            endpoint: self.endpoint.clone(),
        }
    }

    /// The front slot's answer did not come within its window.
    fn overdue(&self, front: &Slot) -> TransportError {
        self.timeout(Duration::from_nanos(front.window_ns()), TimeoutPhase::Answer)
    }

    /// The error of a caller that stopped waiting for a written request.
    fn gave_up(&self, cancelled: bool, budget: Duration) -> Failure {
        let error = if cancelled {
            self.cancelled()
        } else {
            self.timeout(budget, TimeoutPhase::Answer)
        };
        Failure { error, sent: true }
    }
}

/// Why a request failed, and whether it may have reached the daemon.
#[derive(Debug)]
pub(crate) struct Failure {
    pub error: TransportError,
    /// `false`: certainly not sent (`unavailable`); `true`: may have run
    /// (`timeout_unknown`).
    pub sent: bool,
}

impl Failure {
    fn unsent(error: TransportError) -> Failure {
        Failure { error, sent: false }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not turn every later call into a panic: the state a
    // poisoned lane mutex guards is still consistent (no invariant spans an unwind).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Link {
    Down,
    /// A caller is connecting with the mutex released; others park.
    Connecting,
    Up(Arc<Conn>),
}

struct LaneState {
    link: Link,
    pipeline: Pipeline,
    /// Callers waiting for a connection or for pipeline room.
    parked: Vec<Arc<Slot>>,
    reader: bool,
    /// The reader's wake eventfd: poked when the outbox fills up.
    reader_wake: Option<RawFd>,
    out: Outbox,
    last_sent: Instant,
    connect_failures: u32,
    retry_at: Option<Instant>,
    /// Why the last connect failed (the system's reason, without the endpoint).
    connect_error: String,
    last_error: Option<String>,
    connects: u64,
    rng: u64,
}

impl LaneState {
    /// Whether `slot` waits in the FIFO of the current connection.
    fn queued(&self, slot: &Slot) -> bool {
        matches!(self.link, Link::Up(_)) && self.pipeline.holds(slot)
    }

    /// Takes the reader role for the caller whose thread `wake` wakes.
    fn become_reader(&mut self, wake: Option<RawFd>) {
        self.reader = true;
        self.reader_wake = wake;
    }

    fn stop_reading(&mut self) {
        self.reader = false;
        self.reader_wake = None;
    }

    /// The reader polls for input only: tell it when there is output to flush.
    fn poke_reader_to_flush(&self) {
        if self.out.pending.is_empty() {
            return;
        }
        if let (true, Some(fd)) = (self.reader, self.reader_wake) {
            sys::eventfd_signal(fd);
        }
    }
}

/// Counters of one lane, for [`Client::stats`](crate::Client::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneStats {
    /// Whether the lane holds an open connection.
    pub connected: bool,
    /// Requests written and not yet answered (abandoned ones included: their answers
    /// are still due).
    pub in_flight: usize,
    /// Connections opened after the first.
    pub reconnects: u64,
    /// Connections opened so far (the current one's number).
    pub generation: u64,
    /// The last connection failure or teardown reason.
    pub last_error: Option<String>,
    /// `write(2)` calls on the lane's connections so far (a batch groups its frames).
    pub socket_writes: u64,
    /// `recv(2)` calls reading answers on the lane's connections so far (a batch
    /// waiting for many answers reads them together).
    pub socket_reads: u64,
    /// Waits for answers that ended before the bytes they waited for were in (2 ms at
    /// most, then the reader reads what is there): each costs one of `socket_reads` that
    /// a machine keeping up would not make.
    pub short_waits: u64,
}

pub(crate) struct Lane {
    state: Mutex<LaneState>,
    /// FIFO length, readable without the mutex for routing.
    pub in_flight: AtomicUsize,
    /// ns since the epoch before which reconnects are refused (0: none), for routing.
    retry_at_ns: AtomicU64,
    /// The socket fd of the current connection (-1: none). A forked child closes it
    /// without taking the mutex, which another thread may have held at fork time.
    pub fd: AtomicI32,
    connected: AtomicBool,
    /// How every connection of the lane has read answers.
    reads: Arc<ReadCounts>,
}

/// How a submitting caller will wait.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Waits right after submitting (single calls).
    Wait,
    /// Waits later (batches): never becomes the reader at submit time, and only queues
    /// the frame behind the lane's unsent output, to go out with the frames after it in
    /// one write at [`Lane::flush_out`] (or when the reader next flushes): a batch costs a
    /// system call per group of requests, not one each. With `park_on_full` false, a full
    /// pipeline is reported instead of waited for.
    Detached { park_on_full: bool },
}

pub(crate) enum Role {
    /// Reads for the lane; with the poll to start with when the caller just wrote (its
    /// answer cannot be there yet, so a first `read` would only say EAGAIN).
    Reader(Arc<Conn>, Option<PollUntil>),
    Follower,
    Detached,
}

/// A poll to make before reading: until when, and whether output is pending.
pub(crate) type PollUntil = (Instant, bool);

pub(crate) enum SubmitError {
    Failed(Failure),
    Full,
}

impl Lane {
    pub(crate) fn new(index: usize, epoch: Instant) -> Lane {
        let seed = (epoch.elapsed().as_nanos() as u64)
            ^ ((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            ^ (std::process::id() as u64) << 32;
        Lane {
            state: Mutex::new(LaneState {
                link: Link::Down,
                pipeline: Pipeline::default(),
                parked: Vec::new(),
                reader: false,
                reader_wake: None,
                out: Outbox::default(),
                last_sent: Instant::now(),
                connect_failures: 0,
                retry_at: None,
                connect_error: String::new(),
                last_error: None,
                connects: 0,
                rng: seed | 1,
            }),
            in_flight: AtomicUsize::new(0),
            retry_at_ns: AtomicU64::new(0),
            fd: AtomicI32::new(-1),
            connected: AtomicBool::new(false),
            reads: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LaneState> {
        lock(&self.state)
    }

    /// Whether the lane refuses connects for a while (no lock: routing).
    pub(crate) fn backing_off(&self, cx: &Context, now: Instant) -> bool {
        let at = self.retry_at_ns.load(Ordering::Relaxed);
        at != 0 && cx.ns(now) < at
    }

    /// Sends `frame` for `slot` and waits for its answer: the whole round trip of one
    /// call. A cancel leaves a written request queued and its slot detached, not
    /// abandoned (see [`Lane::wait_detached`]).
    pub(crate) fn exchange(
        &self,
        cx: &Context,
        slot: &Arc<Slot>,
        frame: &[u8],
        wait: &Wait,
    ) -> Result<Vec<u8>, Failure> {
        let _armed = wait.arm(&slot.word);
        let role = match self.submit(cx, slot, frame, wait, Mode::Wait) {
            Ok(role) => role,
            Err(SubmitError::Failed(f)) => return Err(f),
            Err(SubmitError::Full) => unreachable!("Mode::Wait parks on a full pipeline"),
        };
        match role {
            Role::Reader(conn, first) => self.read(cx, conn, slot, wait, first, 0),
            Role::Follower => self.follow(cx, slot, wait, 0),
            Role::Detached => unreachable!(),
        }
    }

    /// Writes `frame` and queues `slot` for its answer, which the lane then waits for
    /// [`Wait::answer_window`] before declaring the connection dead.
    pub(crate) fn submit(
        &self,
        cx: &Context,
        slot: &Arc<Slot>,
        frame: &[u8],
        wait: &Wait,
        mode: Mode,
    ) -> Result<Role, SubmitError> {
        let fail = |error| Err(SubmitError::Failed(Failure::unsent(error)));
        let mut retried_write = false;
        let mut st = self.lock();
        loop {
            if let Some(e) = cx.closed_error() {
                return fail(e);
            }
            if wait.cancelled() {
                return fail(cx.cancelled());
            }
            let now = Instant::now();
            if wait.expired(now) {
                return fail(cx.timeout(wait.budget, TimeoutPhase::Queue));
            }
            let conn = match &st.link {
                Link::Up(conn) => conn.clone(),
                Link::Connecting => {
                    st = self.park(st, slot, wait.deadline);
                    continue;
                }
                Link::Down => {
                    if let Some(at) = st.retry_at.filter(|at| now < *at) {
                        return fail(TransportError::Connect {
                            endpoint: cx.endpoint.clone(),
                            detail: format!(
                                "{} (backing off, next attempt in {} ms)",
                                st.connect_error,
                                (at - now).as_millis()
                            ),
                        });
                    }
                    st.link = Link::Connecting;
                    drop(st);
                    let result = conn::connect(cx, wait);
                    st = self.lock();
                    match result {
                        Ok(stream) if cx.closed_error().is_none() => {
                            self.install(cx, &mut st, stream);
                            continue;
                        }
                        // Shut down while connecting: the new connection is dropped.
                        Ok(_) => {
                            st.link = Link::Down;
                            self.wake_parked(&mut st);
                            continue;
                        }
                        Err((error, counts)) => {
                            self.connect_failed(cx, &mut st, &error, counts);
                            return fail(error);
                        }
                    }
                }
            };
            // Nobody reads, so nobody watches the deadline of the oldest answer.
            if !st.reader {
                if let Some(front) = st.pipeline.overdue(cx.ns(now)) {
                    let error = cx.overdue(front);
                    self.teardown(&mut st, error, true);
                    continue;
                }
            }
            let idle = now.saturating_duration_since(st.last_sent);
            if idle >= IDLE_PROBE_AFTER.min(cx.config.idle_reconnect) && !st.pipeline.has_live()
            {
                // Abandoned slots only, for a while: their answers are worthless, and a
                // fresh connection is cheaper than reasoning about what is still
                // buffered. (Sooner, their answers may still be on the way: the probe
                // would mistake them for a close.)
                let empty = st.pipeline.is_empty();
                let stale = idle >= cx.config.idle_reconnect
                    || (!empty && idle >= ABANDONED_REPLACE_AFTER);
                if stale || (empty && conn.peer_gone()) {
                    let error = TransportError::Io {
                        endpoint: cx.endpoint.clone(),
                        detail: format!("idle connection replaced after {} ms", idle.as_millis()),
                    };
                    self.teardown(&mut st, error, false);
                    continue;
                }
            }
            if st.pipeline.len() >= cx.config.max_depth.max(1) {
                if matches!(
                    mode,
                    Mode::Detached {
                        park_on_full: false
                    }
                ) {
                    return Err(SubmitError::Full);
                }
                st = self.park(st, slot, wait.deadline);
                continue;
            }
            let detached = matches!(mode, Mode::Detached { .. });
            if detached {
                st.out.pending.extend_from_slice(frame);
            } else if let Err((error, nothing_written)) = st.out.write_frame(&conn, frame) {
                self.teardown(&mut st, error.clone(), true);
                // Not one byte left: the request cannot have reached the daemon, so it
                // is safe to send on a fresh connection, whatever the op.
                if nothing_written && !retried_write {
                    retried_write = true;
                    continue;
                }
                return Err(SubmitError::Failed(Failure {
                    error,
                    sent: !nothing_written,
                }));
            }
            st.last_sent = now;
            slot.batched.store(detached, Ordering::Relaxed);
            let overdue_at = cx.ns(crate::wait::later(now, wait.answer_window(&cx.config)));
            st.pipeline.push(slot, cx.ns(now), overdue_at);
            self.in_flight.store(st.pipeline.len(), Ordering::Relaxed);
            let role = match mode {
                Mode::Wait if !st.reader => {
                    st.become_reader(wait.wake);
                    let front = st.pipeline.front().map_or(u64::MAX, |s| s.overdue_ns());
                    let until = cx.instant(front).min(wait.deadline);
                    Role::Reader(conn, Some((until, !st.out.pending.is_empty())))
                }
                Mode::Wait => {
                    slot.park();
                    Role::Follower
                }
                Mode::Detached { .. } => Role::Detached,
            };
            if !detached && !matches!(role, Role::Reader(..)) {
                st.poke_reader_to_flush();
            }
            return Ok(role);
        }
    }

    /// Writes what [`Mode::Detached`] submissions queued, as far as the socket takes it
    /// now; the rest is left to the reader, which is told to flush it.
    pub(crate) fn flush_out(&self) {
        let mut st = self.lock();
        if st.out.pending.is_empty() {
            return;
        }
        let Link::Up(conn) = &st.link else {
            return;
        };
        let conn = conn.clone();
        if let Err(error) = st.out.flush(&conn) {
            self.teardown(&mut st, error, true);
            return;
        }
        st.poke_reader_to_flush();
    }

    /// Sleeps on `slot`'s word until poked (connection ready or failed, pipeline room,
    /// cancel) or a short recheck interval passes.
    fn park<'a>(
        &'a self,
        mut st: MutexGuard<'a, LaneState>,
        slot: &Arc<Slot>,
        deadline: Instant,
    ) -> MutexGuard<'a, LaneState> {
        st.parked.push(slot.clone());
        let w = slot.word.load(Ordering::Acquire);
        drop(st);
        let now = Instant::now();
        if now < deadline {
            sys::futex_wait(&slot.word, w, Some((deadline - now).min(PARK_CHECK)));
        }
        let mut st = self.lock();
        st.parked.retain(|s| !Arc::ptr_eq(s, slot));
        st
    }

    fn wake_parked(&self, st: &mut LaneState) {
        for s in st.parked.drain(..) {
            s.word.fetch_add(POKE, Ordering::AcqRel);
            sys::futex_wake(&s.word, 1);
        }
    }

    fn install(&self, cx: &Context, st: &mut LaneState, stream: TcpStream) {
        st.pipeline.new_connection();
        st.stop_reading();
        st.out.pending.clear();
        st.last_sent = Instant::now();
        st.connect_failures = 0;
        st.retry_at = None;
        st.connects += 1;
        self.retry_at_ns.store(0, Ordering::Relaxed);
        self.fd.store(stream.as_raw_fd(), Ordering::Release);
        self.connected.store(true, Ordering::Relaxed);
        cx.connections_opened.fetch_add(1, Ordering::Relaxed);
        st.link = Link::Up(Arc::new(Conn::new(stream, cx, self.reads.clone())));
        self.wake_parked(st);
    }

    fn connect_failed(
        &self,
        cx: &Context,
        st: &mut LaneState,
        error: &TransportError,
        counts: bool,
    ) {
        st.link = Link::Down;
        if counts {
            st.connect_failures = st.connect_failures.saturating_add(1);
            let (base, max) = cx.config.reconnect_backoff;
            let delay = full_jitter(base, max, st.connect_failures, &mut st.rng);
            let at = later(Instant::now(), delay);
            st.retry_at = Some(at);
            self.retry_at_ns.store(cx.ns(at).max(1), Ordering::Relaxed);
            st.connect_error = match error {
                TransportError::Connect { detail, .. } => detail.clone(),
                other => other.to_string(),
            };
            st.last_error = Some(error.to_string());
        }
        self.wake_parked(st);
    }

    /// Closes the connection and completes every queued slot with `error`.
    fn teardown(&self, st: &mut LaneState, error: TransportError, record: bool) {
        // Down or Connecting stay as they are: a connecting caller installs (or, after
        // a shutdown, drops) its own socket.
        if let Link::Up(conn) = &st.link {
            // shutdown(2) wakes a reader blocked in poll on this socket at once; the fd
            // itself closes when the last holder drops the connection.
            let _ = conn.stream.shutdown(Shutdown::Both);
            self.fd.store(-1, Ordering::Release);
            self.connected.store(false, Ordering::Relaxed);
            st.link = Link::Down;
        }
        st.pipeline.fail_all(&error);
        self.in_flight.store(0, Ordering::Relaxed);
        st.stop_reading();
        st.out.pending.clear();
        if record {
            st.last_error = Some(error.to_string());
        }
        self.wake_parked(st);
    }

    pub(crate) fn shut_down(&self, cx: &Context) {
        let mut st = self.lock();
        let error = TransportError::ShutDown {
            endpoint: cx.endpoint.clone(),
        };
        self.teardown(&mut st, error, false);
    }

    pub(crate) fn stats(&self) -> LaneStats {
        let st = self.lock();
        LaneStats {
            connected: matches!(st.link, Link::Up(_)),
            in_flight: st.pipeline.len(),
            reconnects: st.connects.saturating_sub(1),
            generation: st.pipeline.generation(),
            last_error: st.last_error.clone(),
            socket_writes: st.out.writes,
            socket_reads: self.reads.recvs.load(Ordering::Relaxed),
            short_waits: self.reads.short_waits.load(Ordering::Relaxed),
        }
    }

    /// Whether the lane holds a connection (no lock).
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}
