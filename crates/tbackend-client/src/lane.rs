//! A lane: one persistent TCP connection, pipelined, shared by every calling thread,
//! with no thread of its own.
//!
//! The daemon serves each connection with one worker of a fixed pool and answers
//! strictly in order with no request id (docs/protocol.md §2), so a lane is a FIFO of
//! slots matched to answers by position. Leader/follower, which a prototype measured
//! 11-25% faster than a writer/reader task pair (and lighter on CPU per write): a caller writes its own frame under the lane mutex and queues its slot; the first
//! waiter that finds no reader becomes the reader, reads as many answers per `read` as
//! are there, completes the others' slots in order and, once its own slot is done, hands
//! the reader role to the oldest waiting follower. Thread hops cost more than system
//! calls here, so nothing is relayed through a lane thread.
//!
//! Invariants, all under the lane mutex:
//! - a slot leaves the FIFO only when its answer is read (popped in order) or when the
//!   connection is torn down (every slot completed with the error). A caller that gives
//!   up marks its slot abandoned and leaves it queued, so its late answer is consumed by
//!   it and can never reach the next caller; a cancelled caller only detaches from it
//!   and may come back to wait again (a Ruby interrupt that raised nothing);
//! - at most one reader per connection; when it leaves, it hands off to the oldest
//!   parked follower still waiting (and followers re-check on a short timer, so a
//!   hand-off to a caller that is just giving up cannot strand the others);
//! - socket writes never block: what does not fit goes to `pending_out`, which the reader
//!   flushes when the socket is writable, so a mutex is never held across a wait.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tbackend_core::protocol::frame::{Decoder, FrameError};

use crate::backoff::full_jitter;
use crate::cancel::{Cancel, POKE};
use crate::config::Config;
use crate::error::{Endpoint, TimeoutPhase, TransportError};
use crate::sys;

/// Slot word flags (the bits above them count pokes, see [`POKE`]).
const DONE: u32 = 1;
/// The caller gave up; the reader drops the answer.
const ABANDONED: u32 = 2;
/// The previous reader handed the reader role to this slot's caller.
const LEAD: u32 = 4;
/// The caller sleeps (or is about to) on the word: completing must wake it, and a
/// hand-off may pick it.
const PARKED: u32 = 8;

/// A lane whose last request went out longer ago than this is checked for a peer close
/// (non-blocking `MSG_PEEK`) before it is written to: the daemon cuts idle connections
/// silently (and a restarted daemon leaves closed ones behind), and a request written to a
/// cut connection would be lost as `timeout_unknown`. Short, so any pause is covered; a
/// caller in a tight loop (or with requests in flight) never pays for the probe.
const IDLE_PROBE_AFTER: Duration = Duration::from_millis(10);
/// A lane holding only abandoned requests (timed out or cancelled) this long after its
/// last write is replaced rather than drained.
const ABANDONED_REPLACE_AFTER: Duration = Duration::from_secs(1);
/// How often a follower checks that someone is reading, in case a hand-off went to a
/// caller that was leaving.
const FOLLOWER_CHECK: Duration = Duration::from_millis(20);
/// Upper bound of one sleep waiting for a connection or for pipeline room.
const PARK_CHECK: Duration = Duration::from_millis(20);
const READ_CHUNK: usize = 64 * 1024;

pub(crate) const OPEN: u8 = 0;
pub(crate) const SHUT_DOWN: u8 = 1;
pub(crate) const FORGOTTEN: u8 = 2;

/// `t + d`, saturating far in the future: a caller may pass `Duration::MAX` as "no
/// limit", and `Instant + Duration` panics on overflow.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    t.checked_add(d.min(CENTURY)).unwrap_or(t)
}

/// What the lanes of one client share.
pub(crate) struct Shared {
    pub config: Config,
    pub endpoint: Endpoint,
    pub epoch: Instant,
    pub connections_opened: AtomicU64,
    pub state: AtomicU8,
}

impl Shared {
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

/// One request's place in a lane's FIFO, and how its caller waits.
pub(crate) struct Slot {
    pub(crate) word: AtomicU32,
    result: Mutex<Option<Result<Vec<u8>, TransportError>>>,
    // Written and read under the lane mutex only.
    generation: AtomicU64,
    ticket: AtomicU64,
    sent_ns: AtomicU64,
    overdue_ns: AtomicU64,
}

impl Slot {
    pub(crate) fn new() -> Arc<Slot> {
        Arc::new(Slot {
            word: AtomicU32::new(0),
            result: Mutex::new(None),
            generation: AtomicU64::new(0),
            ticket: AtomicU64::new(0),
            sent_ns: AtomicU64::new(0),
            overdue_ns: AtomicU64::new(u64::MAX),
        })
    }

    pub(crate) fn is_done(&self) -> bool {
        self.word.load(Ordering::Acquire) & DONE != 0
    }

    /// Its caller gave up on it: whatever answer comes is dropped.
    pub(crate) fn abandon(&self) {
        self.word.fetch_or(ABANDONED, Ordering::AcqRel);
    }

    fn complete(&self, result: Result<Vec<u8>, TransportError>) {
        *lock(&self.result) = Some(result);
        let prev = self.word.fetch_or(DONE, Ordering::AcqRel);
        if prev & PARKED != 0 {
            sys::futex_wake(&self.word, 1);
        }
    }

    /// The result, waiting for it if a reader popped the slot and is about to complete
    /// it (completion happens after the reader drops the lane mutex).
    fn take_when_done(&self) -> Result<Vec<u8>, Failure> {
        loop {
            let w = self.word.load(Ordering::Acquire);
            if w & DONE != 0 {
                break;
            }
            self.word.fetch_or(PARKED, Ordering::AcqRel);
            sys::futex_wait(&self.word, w | PARKED, Some(Duration::from_millis(1)));
        }
        let taken = lock(&self.result).take();
        match taken {
            Some(Ok(body)) => Ok(body),
            Some(Err(error)) => Err(Failure { error, sent: true }),
            None => unreachable!("a slot is completed exactly once and taken once"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not turn every later call into a panic: the state a
    // poisoned lane mutex guards is still consistent (no invariant spans an unwind).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Conn {
    stream: TcpStream,
    endpoint: Endpoint,
    read: Mutex<ReadSide>,
}

struct ReadSide {
    decoder: Decoder,
    buf: Box<[u8]>,
}

enum Link {
    Down,
    /// A caller is connecting with the mutex released; others park.
    Connecting,
    Up(Arc<Conn>),
}

struct LaneState {
    link: Link,
    /// Counts connections of this lane; slots remember theirs.
    generation: u64,
    fifo: VecDeque<Arc<Slot>>,
    /// Tickets of the current connection: a queued slot has `ticket >= popped`.
    pushed: u64,
    popped: u64,
    /// Callers waiting for a connection or for pipeline room.
    parked: Vec<Arc<Slot>>,
    reader: bool,
    /// The reader's wake eventfd: poked when `pending_out` fills up.
    reader_wake: Option<RawFd>,
    pending_out: Vec<u8>,
    last_sent: Instant,
    connect_failures: u32,
    retry_at: Option<Instant>,
    /// Why the last connect failed (the system's reason, without the endpoint).
    connect_error: String,
    last_error: Option<String>,
    connects: u64,
    socket_writes: u64,
    rng: u64,
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
                generation: 0,
                fifo: VecDeque::new(),
                pushed: 0,
                popped: 0,
                parked: Vec::new(),
                reader: false,
                reader_wake: None,
                pending_out: Vec::new(),
                last_sent: Instant::now(),
                connect_failures: 0,
                retry_at: None,
                connect_error: String::new(),
                last_error: None,
                connects: 0,
                socket_writes: 0,
                rng: seed | 1,
            }),
            in_flight: AtomicUsize::new(0),
            retry_at_ns: AtomicU64::new(0),
            fd: AtomicI32::new(-1),
            connected: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LaneState> {
        lock(&self.state)
    }

    /// Whether the lane refuses connects for a while (no lock: routing).
    pub(crate) fn backing_off(&self, sh: &Shared, now: Instant) -> bool {
        let at = self.retry_at_ns.load(Ordering::Relaxed);
        at != 0 && sh.ns(now) < at
    }

    /// Sends `frame` for `slot` and waits for its answer until `deadline`: the whole
    /// round trip of one call. A cancel leaves a written request queued and its slot
    /// detached, not abandoned (see [`Lane::wait_detached`]).
    pub(crate) fn exchange(
        &self,
        sh: &Shared,
        slot: &Arc<Slot>,
        frame: &[u8],
        deadline: Instant,
        budget: Duration,
        cancel: &Cancel,
    ) -> Result<Vec<u8>, Failure> {
        let wake = sys::thread_wake_fd();
        let _armed = cancel.arm(&slot.word, wake);
        let window = budget.max(sh.config.request_timeout);
        let role = match self.submit(
            sh,
            slot,
            frame,
            deadline,
            budget,
            window,
            cancel,
            wake,
            Mode::Wait,
        ) {
            Ok(role) => role,
            Err(SubmitError::Failed(f)) => return Err(f),
            Err(SubmitError::Full) => unreachable!("Mode::Wait parks on a full pipeline"),
        };
        match role {
            Role::Reader(conn, first) => {
                self.read(sh, conn, slot, deadline, budget, cancel, wake, first)
            }
            Role::Follower => self.follow(sh, slot, deadline, budget, cancel, wake),
            Role::Detached => unreachable!(),
        }
    }

    /// Writes `frame` and queues `slot` for its answer. `window` is how long the lane
    /// waits for that answer before declaring the connection dead.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        &self,
        sh: &Shared,
        slot: &Arc<Slot>,
        frame: &[u8],
        deadline: Instant,
        budget: Duration,
        window: Duration,
        cancel: &Cancel,
        wake: Option<RawFd>,
        mode: Mode,
    ) -> Result<Role, SubmitError> {
        let fail = |error| Err(SubmitError::Failed(Failure::unsent(error)));
        let endpoint = || sh.endpoint.clone();
        let mut retried_write = false;
        let mut st = self.lock();
        loop {
            if let Some(e) = sh.closed_error() {
                return fail(e);
            }
            if cancel.is_cancelled() {
                return fail(TransportError::Cancelled {
                    endpoint: endpoint(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return fail(timeout(sh, budget, TimeoutPhase::Queue));
            }
            let conn = match &st.link {
                Link::Up(conn) => conn.clone(),
                Link::Connecting => {
                    st = self.park(st, slot, deadline);
                    continue;
                }
                Link::Down => {
                    if let Some(at) = st.retry_at.filter(|at| now < *at) {
                        return fail(TransportError::Connect {
                            endpoint: endpoint(),
                            detail: format!(
                                "{} (backing off, next attempt in {} ms)",
                                st.connect_error,
                                (at - now).as_millis()
                            ),
                        });
                    }
                    st.link = Link::Connecting;
                    drop(st);
                    let result = self.connect(sh, deadline, budget, cancel, wake);
                    st = self.lock();
                    match result {
                        Ok(stream) if sh.closed_error().is_none() => {
                            self.install(sh, &mut st, stream);
                            continue;
                        }
                        // Shut down while connecting: the new connection is dropped.
                        Ok(_) => {
                            st.link = Link::Down;
                            self.wake_parked(&mut st);
                            continue;
                        }
                        Err((error, counts)) => {
                            self.connect_failed(sh, &mut st, &error, counts);
                            return fail(error);
                        }
                    }
                }
            };
            // Nobody reads, so nobody watches the deadline of the oldest answer.
            if !st.reader {
                if let Some(front) = st.fifo.front() {
                    if sh.ns(now) >= front.overdue_ns.load(Ordering::Relaxed) {
                        let error = overdue(sh, front);
                        self.teardown(&mut st, error, true);
                        continue;
                    }
                }
            }
            let idle = now.saturating_duration_since(st.last_sent);
            if idle >= IDLE_PROBE_AFTER.min(sh.config.idle_reconnect) && !has_live(&st) {
                // Abandoned slots only, for a while: their answers are worthless, and a
                // fresh connection is cheaper than reasoning about what is still
                // buffered. (Sooner, their answers may still be on the way: the probe
                // would mistake them for a close.)
                let stale = idle >= sh.config.idle_reconnect
                    || (!st.fifo.is_empty() && idle >= ABANDONED_REPLACE_AFTER);
                if stale || (st.fifo.is_empty() && peer_gone(&conn)) {
                    let error = TransportError::Io {
                        endpoint: endpoint(),
                        detail: format!("idle connection replaced after {} ms", idle.as_millis()),
                    };
                    self.teardown(&mut st, error, false);
                    continue;
                }
            }
            if st.fifo.len() >= sh.config.max_depth.max(1) {
                if matches!(
                    mode,
                    Mode::Detached {
                        park_on_full: false
                    }
                ) {
                    return Err(SubmitError::Full);
                }
                if now >= deadline {
                    return fail(timeout(sh, budget, TimeoutPhase::Queue));
                }
                st = self.park(st, slot, deadline);
                continue;
            }
            let detached = matches!(mode, Mode::Detached { .. });
            if detached {
                st.pending_out.extend_from_slice(frame);
            } else if let Err((error, nothing_written)) = self.write_frame(&mut st, &conn, frame) {
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
            slot.generation.store(st.generation, Ordering::Relaxed);
            slot.ticket.store(st.pushed, Ordering::Relaxed);
            slot.sent_ns.store(sh.ns(now), Ordering::Relaxed);
            slot.overdue_ns
                .store(sh.ns(later(now, window)), Ordering::Relaxed);
            st.pushed += 1;
            st.fifo.push_back(slot.clone());
            self.in_flight.store(st.fifo.len(), Ordering::Relaxed);
            let role = match mode {
                Mode::Wait if !st.reader => {
                    st.reader = true;
                    st.reader_wake = wake;
                    let front = st
                        .fifo
                        .front()
                        .map_or(u64::MAX, |s| s.overdue_ns.load(Ordering::Relaxed));
                    let until = sh.instant(front).min(deadline);
                    Role::Reader(conn, Some((until, !st.pending_out.is_empty())))
                }
                Mode::Wait => {
                    slot.word.fetch_or(PARKED, Ordering::AcqRel);
                    Role::Follower
                }
                Mode::Detached { .. } => Role::Detached,
            };
            if !detached && !matches!(role, Role::Reader(..)) {
                poke_reader_to_flush(&st);
            }
            return Ok(role);
        }
    }

    /// Writes what [`Mode::Detached`] submissions queued, as far as the socket takes it
    /// now; the rest is left to the reader, which is told to flush it.
    pub(crate) fn flush_out(&self) {
        let mut st = self.lock();
        if st.pending_out.is_empty() {
            return;
        }
        let Link::Up(conn) = &st.link else {
            return;
        };
        let conn = conn.clone();
        if let Err(error) = flush_pending(&mut st, &conn) {
            self.teardown(&mut st, error, true);
            return;
        }
        poke_reader_to_flush(&st);
    }

    /// Waits for a slot submitted with [`Mode::Detached`].
    pub(crate) fn wait_detached(
        &self,
        sh: &Shared,
        slot: &Arc<Slot>,
        deadline: Instant,
        budget: Duration,
        cancel: &Cancel,
    ) -> Result<Vec<u8>, Failure> {
        let wake = sys::thread_wake_fd();
        let _armed = cancel.arm(&slot.word, wake);
        let role = {
            let mut st = self.lock();
            if slot.is_done() || !queued(&st, slot) {
                None
            } else if !st.reader {
                let Link::Up(conn) = &st.link else {
                    unreachable!("a queued slot implies a connection")
                };
                let conn = conn.clone();
                st.reader = true;
                st.reader_wake = wake;
                Some(Role::Reader(conn, None))
            } else {
                slot.word.fetch_or(PARKED, Ordering::AcqRel);
                Some(Role::Follower)
            }
        };
        match role {
            None => slot.take_when_done(),
            Some(Role::Reader(conn, first)) => {
                self.read(sh, conn, slot, deadline, budget, cancel, wake, first)
            }
            Some(_) => self.follow(sh, slot, deadline, budget, cancel, wake),
        }
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

    fn connect(
        &self,
        sh: &Shared,
        deadline: Instant,
        budget: Duration,
        cancel: &Cancel,
        wake: Option<RawFd>,
    ) -> Result<TcpStream, (TransportError, bool)> {
        let start = Instant::now();
        let connect_deadline = deadline.min(later(start, sh.config.connect_timeout));
        let endpoint = || sh.endpoint.clone();
        let addrs = (sh.config.host.as_str(), sh.config.port)
            .to_socket_addrs()
            .map_err(|e| {
                let detail = format!("cannot resolve {:?}: {e}", sh.config.host);
                (
                    TransportError::Connect {
                        endpoint: endpoint(),
                        detail,
                    },
                    true,
                )
            })?;
        let mut last = None;
        for addr in addrs {
            match sys::connect(&addr, connect_deadline, wake, &|| cancel.is_cancelled()) {
                Ok(stream) => return Ok(stream),
                Err(sys::ConnectError::Cancelled) => {
                    return Err((
                        TransportError::Cancelled {
                            endpoint: endpoint(),
                        },
                        false,
                    ));
                }
                Err(sys::ConnectError::TimedOut) => {
                    let after = if connect_deadline < deadline {
                        sh.config.connect_timeout
                    } else {
                        budget
                    };
                    let error = TransportError::Timeout {
                        endpoint: endpoint(),
                        after,
                        phase: TimeoutPhase::Connect,
                    };
                    return Err((error, true));
                }
                Err(sys::ConnectError::Io(e)) => last = Some(e),
            }
        }
        let detail = last.map_or_else(
            || "host resolves to no address".to_owned(),
            |e| e.to_string(),
        );
        Err((
            TransportError::Connect {
                endpoint: endpoint(),
                detail,
            },
            true,
        ))
    }

    fn install(&self, sh: &Shared, st: &mut LaneState, stream: TcpStream) {
        st.generation += 1;
        st.pushed = 0;
        st.popped = 0;
        st.reader = false;
        st.reader_wake = None;
        st.pending_out.clear();
        st.last_sent = Instant::now();
        st.connect_failures = 0;
        st.retry_at = None;
        st.connects += 1;
        self.retry_at_ns.store(0, Ordering::Relaxed);
        self.fd.store(stream.as_raw_fd(), Ordering::Release);
        self.connected.store(true, Ordering::Relaxed);
        sh.connections_opened.fetch_add(1, Ordering::Relaxed);
        st.link = Link::Up(Arc::new(Conn {
            stream,
            endpoint: sh.endpoint.clone(),
            read: Mutex::new(ReadSide {
                decoder: Decoder::new(sh.config.max_answer_bytes),
                buf: vec![0; READ_CHUNK].into_boxed_slice(),
            }),
        }));
        self.wake_parked(st);
    }

    fn connect_failed(
        &self,
        sh: &Shared,
        st: &mut LaneState,
        error: &TransportError,
        counts: bool,
    ) {
        st.link = Link::Down;
        if counts {
            st.connect_failures = st.connect_failures.saturating_add(1);
            let (base, max) = sh.config.reconnect_backoff;
            let delay = full_jitter(base, max, st.connect_failures, &mut st.rng);
            let at = later(Instant::now(), delay);
            st.retry_at = Some(at);
            self.retry_at_ns.store(sh.ns(at).max(1), Ordering::Relaxed);
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
        for slot in st.fifo.drain(..) {
            slot.complete(Err(error.clone()));
        }
        self.in_flight.store(0, Ordering::Relaxed);
        st.reader = false;
        st.reader_wake = None;
        st.pending_out.clear();
        if record {
            st.last_error = Some(error.to_string());
        }
        self.wake_parked(st);
    }

    pub(crate) fn shut_down(&self, sh: &Shared) {
        let mut st = self.lock();
        let error = TransportError::ShutDown {
            endpoint: sh.endpoint.clone(),
        };
        self.teardown(&mut st, error, false);
    }

    /// Writes a whole frame or queues the rest; never blocks. On error, whether not one
    /// byte of this frame left.
    fn write_frame(
        &self,
        st: &mut LaneState,
        conn: &Conn,
        frame: &[u8],
    ) -> Result<(), (TransportError, bool)> {
        if !st.pending_out.is_empty() {
            flush_pending(st, conn).map_err(|e| (e, false))?;
            if !st.pending_out.is_empty() {
                st.pending_out.extend_from_slice(frame);
                return Ok(());
            }
        }
        let mut off = 0;
        while off < frame.len() {
            st.socket_writes += 1;
            match (&conn.stream).write(&frame[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    st.pending_out.extend_from_slice(&frame[off..]);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err((io_error(conn.endpoint.clone(), e), off == 0)),
            }
        }
        Ok(())
    }

    /// The reader: reads answers and completes slots until `me` is done, its caller
    /// gives up, or the connection breaks.
    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        sh: &Shared,
        conn: Arc<Conn>,
        me: &Arc<Slot>,
        deadline: Instant,
        budget: Duration,
        cancel: &Cancel,
        wake: Option<RawFd>,
        mut poll_first: Option<PollUntil>,
    ) -> Result<Vec<u8>, Failure> {
        let mut side = lock(&conn.read);
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        let mut done: Vec<(Arc<Slot>, Vec<u8>)> = Vec::new();
        let endpoint = || sh.endpoint.clone();
        loop {
            if let Some((until, want_write)) = poll_first.take() {
                if !cancel.is_cancelled() {
                    let timeout = until.saturating_duration_since(Instant::now());
                    sys::poll_socket(conn.stream.as_raw_fd(), want_write, wake, timeout);
                }
            }
            let mut broken: Option<TransportError> = None;
            {
                let ReadSide { decoder, buf } = &mut *side;
                loop {
                    match (&conn.stream).read(buf) {
                        Ok(0) => {
                            broken = Some(TransportError::Eof {
                                endpoint: endpoint(),
                            });
                            break;
                        }
                        Ok(n) => {
                            decoder.feed(&buf[..n]);
                            if n < buf.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            broken = Some(io_error(endpoint(), e));
                            break;
                        }
                    }
                }
                // Whole frames that arrived before an EOF are still good answers.
                loop {
                    match decoder.next_frame() {
                        Ok(Some(body)) => bodies.push(body),
                        Ok(None) => break,
                        Err(e) => {
                            broken = Some(frame_error(endpoint(), e));
                            break;
                        }
                    }
                }
            }
            let now = Instant::now();
            let mut st = self.lock();
            if !matches!(&st.link, Link::Up(c) if Arc::ptr_eq(c, &conn)) {
                // Torn down by a writer or by shutdown: every slot of this connection,
                // ours included, has been completed.
                drop(st);
                return me.take_when_done();
            }
            for body in bodies.drain(..) {
                match st.fifo.pop_front() {
                    Some(slot) => {
                        st.popped += 1;
                        done.push((slot, body));
                    }
                    None => {
                        broken.get_or_insert(TransportError::Malformed {
                            endpoint: endpoint(),
                            detail: "an answer arrived with no request outstanding".into(),
                        });
                        break;
                    }
                }
            }
            if !done.is_empty() {
                self.in_flight.store(st.fifo.len(), Ordering::Relaxed);
                if !st.parked.is_empty() {
                    self.wake_parked(&mut st);
                }
            }
            if broken.is_none() && !st.pending_out.is_empty() {
                if let Err(e) = flush_pending(&mut st, &conn) {
                    broken = Some(e);
                }
            }
            let front_overdue = st
                .fifo
                .front()
                .map(|s| (s.clone(), sh.instant(s.overdue_ns.load(Ordering::Relaxed))));
            if broken.is_none() {
                if let Some((front, at)) = &front_overdue {
                    if now >= *at {
                        broken = Some(overdue(sh, front));
                    }
                }
            }
            if let Some(error) = broken {
                self.teardown(&mut st, error, true);
                drop(st);
                complete_all(&mut done);
                return me.take_when_done();
            }
            let mine = me.ticket.load(Ordering::Relaxed) < st.popped;
            let cancelled = cancel.is_cancelled();
            let give_up = !mine && (cancelled || now >= deadline);
            if mine || give_up {
                st.reader = false;
                st.reader_wake = None;
                if give_up {
                    // Queued and not popped, so not complete: the answer, when it comes,
                    // is consumed by this slot, whether its caller comes back for it
                    // (cancelled: detached) or not (past its deadline: abandoned). Done
                    // under the mutex, so the hand-off below cannot pick this slot.
                    leave(me, cancelled);
                }
                let next = hand_off(&st);
                drop(st);
                wake_reader(next);
                complete_all(&mut done);
                return if mine {
                    me.take_when_done()
                } else {
                    Err(gave_up(sh, cancelled, budget))
                };
            }
            let until = front_overdue.map_or(deadline, |(_, at)| at.min(deadline));
            poll_first = Some((until, !st.pending_out.is_empty()));
            drop(st);
            complete_all(&mut done);
        }
    }

    /// A follower: sleeps on its slot until completed, handed the reader role, or its
    /// caller gives up.
    fn follow(
        &self,
        sh: &Shared,
        me: &Arc<Slot>,
        deadline: Instant,
        budget: Duration,
        cancel: &Cancel,
        wake: Option<RawFd>,
    ) -> Result<Vec<u8>, Failure> {
        let mut next_check = Instant::now() + FOLLOWER_CHECK;
        loop {
            let w = me.word.load(Ordering::Acquire);
            if w & DONE != 0 {
                return me.take_when_done();
            }
            let now = Instant::now();
            if w & LEAD != 0 || now >= next_check {
                next_check = now + FOLLOWER_CHECK;
                me.word.fetch_and(!LEAD, Ordering::AcqRel);
                if let Some(conn) = self.try_lead(me, wake) {
                    return self.read(sh, conn, me, deadline, budget, cancel, wake, None);
                }
                continue;
            }
            let cancelled = cancel.is_cancelled();
            if cancelled || now >= deadline {
                let prev = leave(me, cancelled);
                if prev & DONE != 0 {
                    return me.take_when_done();
                }
                if prev & LEAD != 0 {
                    // We were handed the reader role on our way out: pass it on.
                    let st = self.lock();
                    let next = if st.reader { None } else { hand_off(&st) };
                    drop(st);
                    wake_reader(next);
                }
                return Err(gave_up(sh, cancelled, budget));
            }
            sys::futex_wait(&me.word, w, Some(deadline.min(next_check) - now));
        }
    }

    fn try_lead(&self, me: &Arc<Slot>, wake: Option<RawFd>) -> Option<Arc<Conn>> {
        let mut st = self.lock();
        if st.reader || me.is_done() || !queued(&st, me) {
            return None;
        }
        let Link::Up(conn) = &st.link else {
            return None;
        };
        let conn = conn.clone();
        st.reader = true;
        st.reader_wake = wake;
        Some(conn)
    }

    pub(crate) fn stats(&self) -> LaneStats {
        let st = self.lock();
        LaneStats {
            connected: matches!(st.link, Link::Up(_)),
            in_flight: st.fifo.len(),
            reconnects: st.connects.saturating_sub(1),
            generation: st.generation,
            last_error: st.last_error.clone(),
            socket_writes: st.socket_writes,
        }
    }

    /// Whether the lane holds a connection (no lock).
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// A waiting caller leaves its queued slot: for good past its deadline (abandoned: the
/// answer is dropped when it comes), or for now when cancelled (detached: no longer
/// parked, so no hand-off picks it, and [`Lane::wait_detached`] can wait for it again;
/// the binding does, when the interrupt that cancelled it raised nothing). Returns the
/// word before: a `LEAD` in it is a reader role the caller must pass on.
fn leave(slot: &Slot, cancelled: bool) -> u32 {
    if cancelled {
        slot.word.fetch_and(!(PARKED | LEAD), Ordering::AcqRel)
    } else {
        slot.word.fetch_or(ABANDONED, Ordering::AcqRel)
    }
}

/// Whether `slot` waits in the FIFO of the current connection.
fn queued(st: &LaneState, slot: &Slot) -> bool {
    matches!(st.link, Link::Up(_))
        && slot.generation.load(Ordering::Relaxed) == st.generation
        && slot.ticket.load(Ordering::Relaxed) >= st.popped
}

/// Whether some queued slot still has a caller waiting for it.
fn has_live(st: &LaneState) -> bool {
    st.fifo
        .iter()
        .any(|s| s.word.load(Ordering::Acquire) & ABANDONED == 0)
}

/// Gives the reader role to the oldest parked follower still waiting, if any: the one to
/// wake (with [`wake_reader`], after the lane mutex is released).
fn hand_off(st: &LaneState) -> Option<Arc<Slot>> {
    for slot in &st.fifo {
        let mut w = slot.word.load(Ordering::Acquire);
        loop {
            if w & (DONE | ABANDONED) != 0 || w & PARKED == 0 {
                break;
            }
            // A CAS, not fetch_or: a caller abandoning concurrently must either see LEAD
            // (and pass it on) or have its ABANDONED seen here.
            match slot
                .word
                .compare_exchange(w, w | LEAD, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(slot.clone()),
                Err(now) => w = now,
            }
        }
    }
    None
}

/// Wakes the follower [`hand_off`] picked, once the lane mutex is released: woken while
/// the mutex is held, it would often preempt the holder and then sleep again on the
/// mutex it needs to take the role (one more thread hop, the costly kind here).
fn wake_reader(next: Option<Arc<Slot>>) {
    if let Some(slot) = next {
        sys::futex_wake(&slot.word, 1);
    }
}

/// The reader polls for input only: tell it when there is output to flush.
fn poke_reader_to_flush(st: &LaneState) {
    if st.pending_out.is_empty() {
        return;
    }
    if let (true, Some(fd)) = (st.reader, st.reader_wake) {
        sys::eventfd_signal(fd);
    }
}

fn complete_all(done: &mut Vec<(Arc<Slot>, Vec<u8>)>) {
    for (slot, body) in done.drain(..) {
        slot.complete(Ok(body));
    }
}

/// Writes as much of `pending_out` as the socket takes now.
fn flush_pending(st: &mut LaneState, conn: &Conn) -> Result<(), TransportError> {
    let mut off = 0;
    while off < st.pending_out.len() {
        st.socket_writes += 1;
        match (&conn.stream).write(&st.pending_out[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(conn.endpoint.clone(), e)),
        }
    }
    st.pending_out.drain(..off);
    Ok(())
}

/// Whether the daemon closed an idle connection (or sent bytes nobody asked for, which
/// makes it just as unusable). Non-blocking: the socket is in non-blocking mode.
fn peer_gone(conn: &Conn) -> bool {
    let mut byte = [0u8; 1];
    match conn.stream.peek(&mut byte) {
        Ok(_) => true,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

fn io_error(endpoint: Endpoint, e: std::io::Error) -> TransportError {
    TransportError::Io {
        endpoint,
        detail: e.to_string(),
    }
}

fn frame_error(endpoint: Endpoint, e: FrameError) -> TransportError {
    match e {
        FrameError::BadCrc { .. } => TransportError::BadCrc { endpoint },
        FrameError::TooLarge { len, cap } => TransportError::TooLarge { endpoint, len, cap },
    }
}

fn timeout(sh: &Shared, after: Duration, phase: TimeoutPhase) -> TransportError {
    TransportError::Timeout {
        endpoint: sh.endpoint.clone(),
        after,
        phase,
    }
}

fn overdue(sh: &Shared, front: &Slot) -> TransportError {
    let window = front
        .overdue_ns
        .load(Ordering::Relaxed)
        .saturating_sub(front.sent_ns.load(Ordering::Relaxed));
    timeout(sh, Duration::from_nanos(window), TimeoutPhase::Answer)
}

fn gave_up(sh: &Shared, cancelled: bool, budget: Duration) -> Failure {
    let error = if cancelled {
        TransportError::Cancelled {
            endpoint: sh.endpoint.clone(),
        }
    } else {
        timeout(sh, budget, TimeoutPhase::Answer)
    };
    Failure { error, sent: true }
}
