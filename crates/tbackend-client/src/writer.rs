//! [`Writer`]: writes facts off the request path. `enqueue` hands a fact to a bounded
//! in-process queue (optionally backed by the file [`spool`](crate::spool)) and returns
//! in microseconds; one native flusher thread (no Ruby, no GVL) sends the queue through a
//! [`Sink`] (the [`Client`]), pipelined, with retries, backoff and jitter.
//!
//! **Order per key.** Facts with the same store and key are sent one at a time, in
//! enqueue order: a later one is written only once the earlier one has a terminal
//! result. Facts of different keys are pipelined together (up to `batch` per round).
//!
//! **Statuses.** `committed_acked` / `idempotent_replay` are delivered;
//! `duplicate_fact_id_conflict` and non-retryable errors are terminal failures (logged,
//! dead-lettered beside a spool). `timeout_unknown`, `rejected_before_commit` and
//! retryable errors are retried with exponential backoff and full jitter, and count as
//! attempts: after `retry_attempts` the fact is dead (one log line, the dead-letter file).
//! `unavailable` and `circuit_open` (nothing was sent: the daemon is unreachable) pause
//! the whole flusher with the same backoff and do **not** count as attempts, so a long
//! outage loses nothing: the queue fills, and the full-queue policy decides.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tbackend_core::protocol::request::RequestBuilder;
use tbackend_core::{ErrorKind, OpKind, Status};

use crate::backoff::full_jitter;
use crate::cancel::{Cancel, Resumable, Step};
use crate::client::{Client, Outcome, Request};
use crate::error::TransportError;
use crate::lane::later;
use crate::spool::{Entry, FdRegistry, Fsync, Location, Spool};
use crate::sys;

/// Where a [`Writer`] sends its requests. [`Client`] is the real one; tests script
/// answers with their own.
pub trait Sink: Send + Sync + 'static {
    /// Sends every request (pipelined) and returns one outcome per request, in order.
    fn send(&self, requests: &[Request], cancel: &Cancel) -> Vec<Outcome>;
    /// Ends calls in flight promptly and refuses later ones (writer shutdown).
    fn close(&self) {}
    /// In a forked child: give up inherited connections without touching the parent's.
    fn forget(&self) {}
}

impl Sink for Client {
    fn send(&self, requests: &[Request], cancel: &Cancel) -> Vec<Outcome> {
        self.call_batch(requests, None, cancel)
    }
    fn close(&self) {
        self.shutdown();
    }
    fn forget(&self) {
        self.clone().forget_after_fork();
    }
}

/// The spool settings of a [`WriterConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The spool directory, shared by every process of the app.
    pub dir: PathBuf,
    /// When facts are synced to disk.
    pub fsync: Fsync,
    /// `Fsync::Batch`: the longest time between two syncs.
    pub fsync_interval: Duration,
    /// A segment rolls over past this size; drained segments are deleted.
    pub segment_bytes: u64,
    /// How often the flusher looks for segments of processes that died meanwhile (a
    /// Puma worker killed while its siblings run) and adopts them.
    pub adopt_interval: Duration,
}

impl SpoolConfig {
    /// Defaults (`batch` every 50 ms, 8 MiB segments, adoption every 10 s) in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            fsync: Fsync::Batch,
            fsync_interval: Duration::from_millis(50),
            segment_bytes: 8 << 20,
            adopt_interval: Duration::from_secs(10),
        }
    }
}

/// How a [`Writer`] queues and retries.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Facts held in memory (queued or in flight) before `enqueue` refuses with `Full`.
    pub queue_size: usize,
    /// Attempts per fact that reached (or may have reached) the daemon, the first
    /// included, before it is dead-lettered.
    pub retry_attempts: u32,
    /// Backoff before the second attempt; doubles per attempt, full jitter.
    pub base_backoff: Duration,
    /// Cap of one backoff.
    pub max_backoff: Duration,
    /// Most requests pipelined per round.
    pub batch: usize,
    /// Put in each request; never stored in the spool or printed.
    pub token: Option<String>,
    /// The file spool, or `None` for memory only.
    pub spool: Option<SpoolConfig>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue_size: 10_000,
            retry_attempts: 10,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(30),
            batch: 256,
            token: None,
            spool: None,
        }
    }
}

/// Why `enqueue` did not take a fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue holds `queue_size` facts (after waiting, if asked to).
    Full,
    /// The writer is shut down.
    ShutDown,
    /// The wait for room was cancelled.
    Cancelled,
}

/// A fact `enqueue` did not take, handed back with the reason.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub reason: Refusal,
    /// The fact, untouched (boxed: a refusal is the rare path).
    pub entry: Box<Entry>,
}

/// A fact `enqueue` took.
#[derive(Debug)]
pub struct Receipt {
    /// Its position in this writer's enqueue order.
    pub seq: u64,
    /// The spool could not store it (disk full, …): it is queued in memory only.
    pub spool_error: Option<String>,
    /// `Fsync::Always` and not yet synced: the segment to `fdatasync`
    /// ([`Writer::try_enqueue`] leaves that to the caller; [`Writer::enqueue`] does it).
    pub sync: Option<Arc<File>>,
}

/// Counters and gauges of a [`Writer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Facts in memory without a terminal result (queued, backing off or in flight).
    pub queued: usize,
    /// Facts in the spool without a terminal result.
    pub spooled: usize,
    /// Bytes of the spool's segments.
    pub spool_bytes: u64,
    /// Facts taken by `enqueue`.
    pub enqueued: u64,
    /// Facts the daemon stored (`committed_acked` or `idempotent_replay`).
    pub delivered: u64,
    /// Of those, `idempotent_replay`s.
    pub replays: u64,
    /// `duplicate_fact_id_conflict`s (terminal).
    pub conflicts: u64,
    /// Other terminal failures (non-retryable errors).
    pub failed: u64,
    /// Facts that exhausted `retry_attempts`.
    pub dead: u64,
    /// Retries scheduled after an answer that may be retried (`timeout_unknown`,
    /// `rejected_before_commit`, a retryable error); waits for an unreachable daemon
    /// are not counted.
    pub retries: u64,
    /// Facts refused by a full queue under the drop policy ([`Writer::count_dropped`]).
    pub dropped: u64,
    /// Facts the spool could not store (queued in memory only).
    pub spool_errors: u64,
    /// Facts adopted from the segments of dead processes at start.
    pub adopted: u64,
}

#[derive(Default)]
struct Counters {
    enqueued: AtomicU64,
    delivered: AtomicU64,
    replays: AtomicU64,
    conflicts: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
    retries: AtomicU64,
    dropped: AtomicU64,
    spool_errors: AtomicU64,
    adopted: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Rec {
    seq: u64,
    loc: Option<Location>,
    entry: Arc<Entry>,
    /// Sends so far.
    sends: u32,
    /// Sends that count against `retry_attempts`.
    attempts: u32,
}

#[derive(Default)]
struct KeyQueue {
    recs: VecDeque<Rec>,
    /// The head is in flight or backing off: nothing of this key may be sent.
    busy: bool,
}

struct State {
    keys: HashMap<Arc<str>, KeyQueue>,
    /// Keys whose head may be sent now.
    ready: VecDeque<Arc<str>>,
    /// Keys whose head backs off until then.
    delayed: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    /// Facts in memory without a terminal result.
    queued: usize,
    /// Their seqs, for `flush`.
    outstanding: BTreeSet<u64>,
    next_seq: u64,
    spool: Option<Spool>,
    /// The daemon is unreachable: nothing is sent before then.
    pause_until: Option<Instant>,
    unreachable_streak: u32,
    last_sync: Instant,
    next_adoption: Instant,
    closed: bool,
    rng: u64,
}

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;

struct Shared {
    state: Mutex<State>,
    sink: Box<dyn Sink>,
    config: WriterConfig,
    /// Bumped by every enqueue and by shutdown; the flusher sleeps on it.
    work: AtomicU32,
    /// The flusher sleeps (or is about to): an enqueue must wake it.
    idle: AtomicBool,
    /// Bumped whenever facts reach a terminal result; `flush` and blocked enqueues
    /// sleep on it.
    progress: AtomicU32,
    stop: AtomicU8,
    counters: Counters,
    log: Mutex<LogLimiter>,
    /// The spool's open segment fds, reachable without the queue's mutex (fork).
    spool_fds: Option<Arc<FdRegistry>>,
}

/// The background writer. `Send + Sync`; dropping it stops the flusher (without
/// waiting for the queue: call [`Writer::shutdown`] for a bounded drain).
pub struct Writer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// An enqueue waiting for room, cut short by its [`Cancel`]; see
/// [`Writer::start_enqueue`]. Dropping it drops the fact.
#[derive(Debug)]
pub struct PausedEnqueue<'w> {
    writer: &'w Writer,
    entry: Box<Entry>,
    deadline: Option<Instant>,
}

impl Resumable for PausedEnqueue<'_> {
    type Output = Result<Receipt, Refused>;
    fn step(self, cancel: &Cancel) -> Step<Self::Output, Self> {
        let PausedEnqueue {
            writer,
            mut entry,
            deadline,
        } = self;
        let sh = &*writer.shared;
        loop {
            let seen = sh.progress.load(Ordering::SeqCst);
            match writer.try_enqueue(*entry) {
                Ok(mut receipt) => {
                    if let Some(file) = receipt.sync.take() {
                        if let Err(e) = file.sync_data() {
                            receipt.spool_error = Some(format!("spool fsync failed: {e}"));
                            bump(&sh.counters.spool_errors);
                        }
                    }
                    return Step::Done(Ok(receipt));
                }
                Err(Refused {
                    reason: Refusal::Full,
                    entry: back,
                }) => {
                    let now = Instant::now();
                    let Some(until) = deadline.filter(|d| *d > now) else {
                        return Step::Done(Err(Refused {
                            reason: Refusal::Full,
                            entry: back,
                        }));
                    };
                    if cancel.is_cancelled() {
                        return Step::Paused(PausedEnqueue {
                            writer,
                            entry: back,
                            deadline,
                        });
                    }
                    sh.wait_progress(seen, until - now, cancel);
                    entry = back;
                }
                Err(other) => return Step::Done(Err(other)),
            }
        }
    }
}

/// A flush cut short by its [`Cancel`]; see [`Writer::start_flush`].
#[derive(Debug)]
pub struct PausedFlush<'w> {
    writer: &'w Writer,
    /// Done once every seq below this has a terminal result.
    target: u64,
    deadline: Option<Instant>,
}

impl Resumable for PausedFlush<'_> {
    type Output = bool;
    fn step(self, cancel: &Cancel) -> Step<bool, Self> {
        let sh = &*self.writer.shared;
        loop {
            let seen = sh.progress.load(Ordering::SeqCst);
            let done = sh
                .lock()
                .outstanding
                .first()
                .is_none_or(|first| *first >= self.target);
            if done {
                return Step::Done(true);
            }
            let left = match self.deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Step::Done(false),
                },
                None => None,
            };
            if cancel.is_cancelled() {
                return Step::Paused(self);
            }
            sh.wait_progress(seen, left.unwrap_or(Duration::from_secs(1)), cancel);
        }
    }
}

/// A shutdown cut short by its [`Cancel`] while it flushed; see
/// [`Writer::start_shutdown`].
#[derive(Debug)]
pub struct PausedShutdown<'w> {
    /// `None` once the shutdown is finished.
    flush: Option<PausedFlush<'w>>,
}

impl Resumable for PausedShutdown<'_> {
    type Output = bool;
    fn step(mut self, cancel: &Cancel) -> Step<bool, Self> {
        let flush = self.flush.take().expect("a paused shutdown is unfinished");
        let writer = flush.writer;
        match flush.step(cancel) {
            Step::Done(drained) => {
                writer.finish_shutdown();
                Step::Done(drained)
            }
            Step::Paused(flush) => {
                self.flush = Some(flush);
                Step::Paused(self)
            }
        }
    }
}

impl Drop for PausedShutdown<'_> {
    fn drop(&mut self) {
        if let Some(flush) = self.flush.take() {
            flush.writer.finish_shutdown();
        }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Opens the spool (adopting the segments of dead processes, whose facts are queued
    /// first) and starts the flusher thread. An error names the spool directory when
    /// that is what failed.
    pub fn start(sink: impl Sink, config: WriterConfig) -> std::io::Result<Writer> {
        let now = Instant::now();
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = clock ^ (u64::from(std::process::id()) << 21) | 1;
        let mut state = State {
            keys: HashMap::new(),
            ready: VecDeque::new(),
            delayed: BinaryHeap::new(),
            queued: 0,
            outstanding: BTreeSet::new(),
            next_seq: 0,
            spool: None,
            pause_until: None,
            unreachable_streak: 0,
            last_sync: now,
            next_adoption: later(
                now,
                config
                    .spool
                    .as_ref()
                    .map_or(Duration::MAX, |s| s.adopt_interval),
            ),
            closed: false,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
        };
        let counters = Counters::default();
        let mut spool_fds = None;
        if let Some(sc) = &config.spool {
            let (spool, adopted) =
                Spool::open(&sc.dir, sc.segment_bytes, sc.fsync).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("spool {}: {e}", sc.dir.display()))
                })?;
            spool_fds = Some(spool.fd_registry());
            state.spool = Some(spool);
            for (loc, entry) in adopted {
                state.push(Some(loc), entry);
                bump(&counters.adopted);
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            sink: Box::new(sink),
            config,
            work: AtomicU32::new(0),
            idle: AtomicBool::new(false),
            progress: AtomicU32::new(0),
            stop: AtomicU8::new(RUNNING),
            counters,
            log: Mutex::new(LogLimiter::default()),
            spool_fds,
        });
        let runner = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tbackend-writer".into())
            .spawn(move || runner.run())?;
        Ok(Writer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `entry` without ever waiting (other than for the queue's mutex and, with
    /// a spool, one `write(2)`). With `Fsync::Always` the receipt names the segment the
    /// caller must sync before reporting success.
    pub fn try_enqueue(&self, entry: Entry) -> Result<Receipt, Refused> {
        let sh = &*self.shared;
        let mut st = sh.lock();
        if st.closed {
            return Err(Refused {
                reason: Refusal::ShutDown,
                entry: Box::new(entry),
            });
        }
        if st.queued >= sh.config.queue_size.max(1) {
            return Err(Refused {
                reason: Refusal::Full,
                entry: Box::new(entry),
            });
        }
        let (loc, spool_error, sync) = match st.spool.as_mut() {
            Some(spool) => match spool.append_fact(&entry) {
                Ok(loc) => {
                    let always = sh.config.spool.as_ref().map(|s| s.fsync) == Some(Fsync::Always);
                    let sync = always.then(|| spool.file_of(loc.segment)).flatten();
                    (Some(loc), None, sync)
                }
                Err(e) => (None, Some(format!("spool write failed: {e}")), None),
            },
            None => (None, None, None),
        };
        let seq = st.push(loc, entry);
        drop(st);
        bump(&sh.counters.enqueued);
        if spool_error.is_some() {
            bump(&sh.counters.spool_errors);
        }
        sh.poke();
        Ok(Receipt {
            seq,
            spool_error,
            sync,
        })
    }

    /// Queues `entry`, waiting up to `wait` for room when the queue is full (`None`:
    /// no wait), and with `Fsync::Always` syncs the spool before returning. `cancel`
    /// ends the wait (async-signal-safe, for Ruby's unblocking function).
    pub fn enqueue(
        &self,
        entry: Entry,
        wait: Option<Duration>,
        cancel: &Cancel,
    ) -> Result<Receipt, Refused> {
        match self.start_enqueue(entry, wait, cancel) {
            Step::Done(result) => result,
            Step::Paused(paused) => Err(Refused {
                reason: Refusal::Cancelled,
                entry: paused.entry,
            }),
        }
    }

    /// [`Writer::enqueue`] that a cancel only pauses: [`Resumable::step`] waits on for
    /// room, until the first deadline.
    pub fn start_enqueue(
        &self,
        entry: Entry,
        wait: Option<Duration>,
        cancel: &Cancel,
    ) -> Step<Result<Receipt, Refused>, PausedEnqueue<'_>> {
        PausedEnqueue {
            writer: self,
            entry: Box::new(entry),
            deadline: wait.map(|w| later(Instant::now(), w)),
        }
        .step(cancel)
    }

    /// Waits until every fact enqueued before the call has a terminal result: `true`,
    /// or `false` at `timeout` (`None`: no limit) or on `cancel`.
    pub fn flush(&self, timeout: Option<Duration>, cancel: &Cancel) -> bool {
        match self.start_flush(timeout, cancel) {
            Step::Done(done) => done,
            Step::Paused(_) => false,
        }
    }

    /// [`Writer::flush`] that a cancel only pauses: [`Resumable::step`] waits on for
    /// the same facts, until the first deadline.
    pub fn start_flush(
        &self,
        timeout: Option<Duration>,
        cancel: &Cancel,
    ) -> Step<bool, PausedFlush<'_>> {
        // Bound first: a guard in the struct expression would be held through the wait.
        let target = self.shared.lock().next_seq;
        PausedFlush {
            writer: self,
            target,
            deadline: timeout.map(|t| later(Instant::now(), t)),
        }
        .step(cancel)
    }

    /// Refuses later enqueues, flushes for at most `timeout`, then stops the flusher
    /// (ending its calls in flight), syncs the spool and closes it, so the next writer
    /// (in this process or another) adopts what is left. `true` when everything was
    /// settled; otherwise `stats().queued` says how much was not (kept in the spool, or
    /// lost without one). Later calls return at once; `stats` keeps working.
    pub fn shutdown(&self, timeout: Duration, cancel: &Cancel) -> bool {
        match self.start_shutdown(timeout, cancel) {
            Step::Done(drained) => drained,
            Step::Paused(_) => false,
        }
    }

    /// [`Writer::shutdown`] that a cancel only pauses: [`Resumable::step`] goes on
    /// flushing until the first deadline. A paused shutdown dropped (given up) stops
    /// the flusher and closes the spool at once, as a cancelled one does.
    pub fn start_shutdown(
        &self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Step<bool, PausedShutdown<'_>> {
        let sh = &*self.shared;
        if sh.stop.load(Ordering::SeqCst) != RUNNING {
            return Step::Done(sh.lock().queued == 0);
        }
        let target = {
            let mut state = sh.lock();
            state.closed = true;
            state.next_seq
        };
        PausedShutdown {
            flush: Some(PausedFlush {
                writer: self,
                target,
                deadline: Some(later(Instant::now(), timeout)),
            }),
        }
        .step(cancel)
    }

    /// Stops the flusher and closes the spool: the end of every shutdown.
    fn finish_shutdown(&self) {
        self.stop_thread();
        self.close_spool();
    }

    /// Syncs and closes the spool (deleting its drained segments) once the flusher is
    /// stopped.
    fn close_spool(&self) {
        let spool = self.shared.lock().spool.take();
        if let Some(spool) = spool {
            let _ = spool.close();
        }
    }

    fn stop_thread(&self) {
        let sh = &*self.shared;
        sh.stop.store(STOPPING, Ordering::SeqCst);
        sh.sink.close();
        sh.work.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&sh.work, i32::MAX);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        // Enqueues waiting for room see the shutdown now rather than at their deadline.
        sh.progress.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&sh.progress, i32::MAX);
    }

    /// Counts a fact the caller dropped because the queue was full.
    pub fn count_dropped(&self) {
        bump(&self.shared.counters.dropped);
    }

    /// Counters and gauges.
    pub fn stats(&self) -> WriterStats {
        let sh = &*self.shared;
        let c = &sh.counters;
        let (queued, spooled, spool_bytes) = {
            let st = sh.lock();
            let (p, b) = st
                .spool
                .as_ref()
                .map_or((0, 0), |s| (s.pending(), s.bytes()));
            (st.queued, p, b)
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStats {
            queued,
            spooled,
            spool_bytes,
            enqueued: get(&c.enqueued),
            delivered: get(&c.delivered),
            replays: get(&c.replays),
            conflicts: get(&c.conflicts),
            failed: get(&c.failed),
            dead: get(&c.dead),
            retries: get(&c.retries),
            dropped: get(&c.dropped),
            spool_errors: get(&c.spool_errors),
            adopted: get(&c.adopted),
        }
    }

    /// The spool's segment files, oldest first (empty without a spool).
    pub fn spool_segments(&self) -> Vec<PathBuf> {
        self.shared
            .lock()
            .spool
            .as_ref()
            .map(|s| s.segment_paths())
            .unwrap_or_default()
    }

    /// For a forked child: gives this writer up without running it or touching the
    /// parent's spool. The flusher thread does not exist in the child, so nothing is
    /// sent twice; the inherited segment fds are closed (the parent keeps its lock);
    /// the sink forgets its inherited connections. Locks nothing: the queue's mutex may
    /// have been held at fork time by the flusher, which does not exist here. Takes an
    /// `Arc` so that clones held by threads of the parent (which do not exist here
    /// either) do not stand in the way; none of them is ever dropped.
    pub fn forget_after_fork(self: Arc<Self>) {
        let sh = &*self.shared;
        if let Some(fds) = &sh.spool_fds {
            fds.close_inherited();
        }
        sh.sink.forget();
        std::mem::forget(self);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.stop_thread();
        self.close_spool();
    }
}

impl State {
    fn push(&mut self, loc: Option<Location>, entry: Entry) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key: Arc<str> = Arc::from(format!("{}\u{0}{}", entry.store, entry.key));
        let kq = self.keys.entry(key.clone()).or_default();
        if !kq.busy && kq.recs.is_empty() {
            self.ready.push_back(key);
        }
        kq.recs.push_back(Rec {
            seq,
            loc,
            entry: Arc::new(entry),
            sends: 0,
            attempts: 0,
        });
        self.queued += 1;
        self.outstanding.insert(seq);
        seq
    }

    /// The head of `key` reached a terminal result: the next fact of the key may go.
    fn finish(&mut self, key: &Arc<str>, acks: &mut Vec<Location>) -> Option<Rec> {
        let kq = self.keys.get_mut(key)?;
        let rec = kq.recs.pop_front()?;
        kq.busy = false;
        if kq.recs.is_empty() {
            self.keys.remove(key);
        } else {
            self.ready.push_back(key.clone());
        }
        self.queued -= 1;
        self.outstanding.remove(&rec.seq);
        if let Some(loc) = rec.loc {
            acks.push(loc);
        }
        Some(rec)
    }

    fn head(&mut self, key: &Arc<str>) -> Option<&mut Rec> {
        self.keys.get_mut(key)?.recs.front_mut()
    }

    fn jitter(&mut self, base: Duration, max: Duration, n: u32) -> Duration {
        full_jitter(base, max, n, &mut self.rng)
    }
}

/// What the flusher decided for one outcome.
enum Verdict {
    Delivered {
        replay: bool,
    },
    Terminal(&'static str),
    /// Retry after a backoff; counts as an attempt.
    Retry,
    /// The daemon is unreachable: pause everything, retry without counting.
    Unreachable,
    /// Writer stopping: leave the fact for the spool or the next flush.
    Interrupted,
}

fn verdict(o: &Outcome) -> Verdict {
    if matches!(
        o.transport,
        Some(TransportError::ShutDown { .. } | TransportError::Cancelled { .. })
    ) {
        return Verdict::Interrupted;
    }
    let c = &o.classified;
    let row = c.status.row();
    match c.status {
        _ if row.flags.committed == Some(true) => Verdict::Delivered {
            replay: c.status == Status::IdempotentReplay,
        },
        Status::DuplicateFactIdConflict => Verdict::Terminal("conflict"),
        // Nothing was sent: the daemon cannot be reached.
        _ if row.transport && row.kind == ErrorKind::NotApplied => Verdict::Unreachable,
        _ if row.retry_safe || c.retryable == Some(true) => Verdict::Retry,
        _ => Verdict::Terminal("error"),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the flusher if it sleeps.
    fn poke(&self) {
        self.work.fetch_add(1, Ordering::SeqCst);
        if self.idle.load(Ordering::SeqCst) {
            sys::futex_wake(&self.work, 1);
        }
    }

    fn wait_progress(&self, seen: u32, max: Duration, cancel: &Cancel) {
        let _armed = cancel.arm(&self.progress, None);
        if cancel.is_cancelled() {
            return;
        }
        sys::futex_wait(&self.progress, seen, Some(max));
    }

    fn sync_interval(&self) -> Option<Duration> {
        self.config
            .spool
            .as_ref()
            .filter(|s| s.fsync == Fsync::Batch)
            .map(|s| s.fsync_interval)
    }

    fn request(&self, e: &Entry) -> Result<Request, String> {
        let mut b = RequestBuilder::new("write_fact_once", self.config.token.as_deref());
        if let Some(d) = &e.durability {
            b.str("durability", d).map_err(|e| e.to_string())?;
        }
        b.raw("fact", &e.fact).map_err(|e| e.to_string())?;
        Ok(Request::new(OpKind::Write, b.finish()))
    }

    /// The flusher thread.
    fn run(&self) {
        let batch_max = self.config.batch.max(1);
        loop {
            let seen = self.work.load(Ordering::SeqCst);
            if self.stop.load(Ordering::SeqCst) != RUNNING {
                return;
            }
            let now = Instant::now();
            let mut st = self.lock();
            while let Some(Reverse((t, _))) = st.delayed.peek() {
                if *t > now {
                    break;
                }
                let Reverse((_, key)) = st.delayed.pop().expect("peeked");
                st.ready.push_back(key);
            }
            let mut lines = Vec::new();
            if st.spool.is_some() && now >= st.next_adoption {
                self.adopt(&mut st, now, &mut lines);
            }
            let sync_file = match self.sync_interval() {
                Some(every) if now.duration_since(st.last_sync) >= every => {
                    st.last_sync = now;
                    st.spool.as_mut().and_then(Spool::take_dirty)
                }
                _ => None,
            };
            let paused = st.pause_until.is_some_and(|t| t > now);
            let mut batch: Vec<(Arc<str>, Arc<Entry>)> = Vec::new();
            if !paused {
                st.pause_until = None;
                while batch.len() < batch_max {
                    let Some(key) = st.ready.pop_front() else {
                        break;
                    };
                    let Some(kq) = st.keys.get_mut(&key) else {
                        continue;
                    };
                    let Some(head) = kq.recs.front_mut() else {
                        continue;
                    };
                    kq.busy = true;
                    head.sends += 1;
                    let entry = head.entry.clone();
                    batch.push((key, entry));
                }
            }
            if batch.is_empty() {
                let mut wake = st.delayed.peek().map(|Reverse((t, _))| *t);
                if paused {
                    wake = earliest(wake, st.pause_until);
                }
                if let Some(every) = self.sync_interval() {
                    if st.spool.as_ref().is_some_and(Spool::is_dirty) {
                        wake = earliest(wake, Some(st.last_sync + every));
                    }
                }
                if st.spool.is_some() {
                    wake = earliest(wake, Some(st.next_adoption));
                }
                self.idle.store(true, Ordering::SeqCst);
                drop(st);
                self.log(lines);
                if let Some(f) = sync_file {
                    let _ = f.sync_data();
                }
                let timeout = wake.map(|w| w.saturating_duration_since(Instant::now()));
                if timeout != Some(Duration::ZERO) {
                    sys::futex_wait(&self.work, seen, timeout);
                }
                self.idle.store(false, Ordering::SeqCst);
                continue;
            }
            drop(st);
            self.log(lines);
            if let Some(f) = sync_file {
                let _ = f.sync_data();
            }
            self.send_batch(batch);
        }
    }

    fn send_batch(&self, batch: Vec<(Arc<str>, Arc<Entry>)>) {
        let mut requests = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        for (key, entry) in batch {
            match self.request(&entry) {
                Ok(r) => {
                    slots.push(key);
                    requests.push(r);
                }
                Err(e) => refused.push((key, e)),
            }
        }
        let outcomes = if requests.is_empty() {
            Vec::new()
        } else {
            self.sink.send(&requests, &Cancel::new())
        };
        let mut st = self.lock();
        let mut acks = Vec::new();
        let mut dead = Vec::new();
        let mut lines = Vec::new();
        let queued_before = st.queued;
        let now = Instant::now();
        let cfg = &self.config;
        let mut answered = false;
        for (key, error) in refused {
            if let Some(rec) = st.finish(&key, &mut dead) {
                bump(&self.counters.failed);
                self.dead_letter(&st, &rec, ("error", "client_bug", &error), &mut lines);
            }
        }
        for (key, outcome) in slots.into_iter().zip(outcomes) {
            let v = verdict(&outcome);
            if !matches!(v, Verdict::Unreachable | Verdict::Interrupted) {
                answered = true;
            }
            match v {
                Verdict::Delivered { replay } => {
                    st.finish(&key, &mut acks);
                    bump(&self.counters.delivered);
                    if replay {
                        bump(&self.counters.replays);
                    }
                }
                Verdict::Terminal(reason) => {
                    if let Some(rec) = st.finish(&key, &mut dead) {
                        bump(if reason == "conflict" {
                            &self.counters.conflicts
                        } else {
                            &self.counters.failed
                        });
                        let c = &outcome.classified;
                        let error = c.error.clone().unwrap_or_default();
                        let why = (reason, c.status.as_str(), error.as_str());
                        self.dead_letter(&st, &rec, why, &mut lines);
                    }
                }
                Verdict::Retry => {
                    let attempts = match st.head(&key) {
                        Some(head) => {
                            head.attempts += 1;
                            head.attempts
                        }
                        None => continue,
                    };
                    if attempts >= cfg.retry_attempts.max(1) {
                        if let Some(rec) = st.finish(&key, &mut dead) {
                            bump(&self.counters.dead);
                            let c = &outcome.classified;
                            let error = outcome
                                .transport
                                .as_ref()
                                .map(|t| t.to_string())
                                .or_else(|| c.error.clone())
                                .unwrap_or_default();
                            let why = ("exhausted", c.status.as_str(), error.as_str());
                            self.dead_letter(&st, &rec, why, &mut lines);
                        }
                    } else {
                        bump(&self.counters.retries);
                        let sleep = st.jitter(cfg.base_backoff, cfg.max_backoff, attempts);
                        st.delayed.push(Reverse((later(now, sleep), key)));
                    }
                }
                Verdict::Unreachable | Verdict::Interrupted => self.requeue_front(&mut st, key),
            }
        }
        if answered {
            st.unreachable_streak = 0;
        } else if st.pause_until.is_none() && !st.ready.is_empty() {
            st.unreachable_streak = st.unreachable_streak.saturating_add(1);
            let n = st.unreachable_streak;
            let sleep = st.jitter(cfg.base_backoff, cfg.max_backoff, n);
            st.pause_until = Some(later(now, sleep.max(Duration::from_millis(1))));
        }
        if !acks.is_empty() || !dead.is_empty() {
            if let Some(spool) = st.spool.as_mut() {
                // A lost ack only means a replay after a crash, which the daemon
                // answers idempotently; nothing to do about a failed one.
                let _ = spool.ack(&acks);
                let _ = spool.ack_dead(&dead);
            }
        }
        let settled = st.queued < queued_before;
        drop(st);
        self.log(lines);
        if settled {
            self.progress.fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(&self.progress, i32::MAX);
        }
    }

    /// Takes over the segments of writers that died since the last look.
    fn adopt(&self, st: &mut State, now: Instant, lines: &mut Vec<String>) {
        let every = self
            .config
            .spool
            .as_ref()
            .map_or(Duration::MAX, |s| s.adopt_interval);
        st.next_adoption = later(now, every);
        let Some(spool) = st.spool.as_mut() else {
            return;
        };
        match spool.adopt_orphans() {
            Ok(adopted) => {
                for (loc, entry) in adopted {
                    st.push(Some(loc), entry);
                    bump(&self.counters.adopted);
                }
            }
            Err(e) => lines.push(format!("acts_as_tbackend: spool adoption failed: {e}")),
        }
    }

    fn log(&self, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        for line in lines {
            log.line(&line);
        }
    }

    /// The head of `key` goes back to the front: it is the next of its key to be sent.
    fn requeue_front(&self, st: &mut State, key: Arc<str>) {
        if let Some(kq) = st.keys.get_mut(&key) {
            kq.busy = false;
            st.ready.push_front(key);
        }
    }

    /// One log line (no values, no token; written by the caller once the queue's mutex
    /// is released, so a slow stderr never holds up `enqueue`) and, with a spool, the
    /// fact in the dead-letter file.
    fn dead_letter(
        &self,
        st: &State,
        rec: &Rec,
        (reason, status, error): (&str, &str, &str),
        lines: &mut Vec<String>,
    ) {
        let e = &rec.entry;
        let line = format!(
            "acts_as_tbackend: fact not delivered ({reason}): store={} id={} status={status} attempts={}{}",
            e.store,
            e.id,
            rec.sends,
            if st.spool.is_some() {
                " (kept in the dead-letter file beside the spool)"
            } else {
                ""
            }
        );
        lines.push(line);
        if let Some(spool) = &st.spool {
            let at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let fact = std::str::from_utf8(&e.fact).unwrap_or("null");
            let record = format!(
                "{{\"at\":{at},\"reason\":{},\"status\":{},\"error\":{},\"attempts\":{},\"store\":{},\"key\":{},\"id\":{},\"durability\":{},\"fact\":{fact}}}\n",
                json_str(reason),
                json_str(status),
                json_str(error),
                rec.sends,
                json_str(&e.store),
                json_str(&e.key),
                json_str(&e.id),
                e.durability.as_deref().map_or("null".to_string(), json_str),
            );
            if let Err(err) = spool.dead_letter(record.as_bytes()) {
                lines.push(format!(
                    "acts_as_tbackend: dead-letter file not written: {err}"
                ));
            }
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// At most `BURST` lines per second on stderr; what it holds back is counted into the
/// next line, so a flood (a wrong token fails every fact) stays readable and not silent.
#[derive(Default)]
struct LogLimiter {
    window: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl LogLimiter {
    const BURST: u32 = 10;

    fn line(&mut self, text: &str) {
        let now = Instant::now();
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.lines = 0;
        }
        if self.lines >= Self::BURST {
            self.suppressed += 1;
            return;
        }
        self.lines += 1;
        let suppressed = std::mem::take(&mut self.suppressed);
        let mut err = std::io::stderr().lock();
        if suppressed > 0 {
            let _ = writeln!(
                err,
                "acts_as_tbackend: {suppressed} more such lines suppressed"
            );
        }
        let _ = writeln!(err, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{decode_segment, pending_facts, DEAD_LETTER_FILE};
    use std::collections::HashMap as Map;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Condvar;
    use tbackend_core::Classified;

    type Script = dyn Fn(&str, u32) -> Status + Send + Sync;

    /// A sink that answers from a script: `(fact id, nth send of that id) -> status`.
    /// It logs every send, can be held shut (a stalled daemon) and honours `close`.
    struct Scripted {
        script: Box<Script>,
        log: Mutex<Vec<(String, Instant)>>,
        batches: Mutex<Vec<Vec<String>>>,
        sends: Mutex<Map<String, u32>>,
        gate: Mutex<bool>,
        opened: Condvar,
        closed: AtomicBool,
    }

    impl Scripted {
        fn new(script: impl Fn(&str, u32) -> Status + Send + Sync + 'static) -> Arc<Scripted> {
            Arc::new(Scripted {
                script: Box::new(script),
                log: Mutex::new(Vec::new()),
                batches: Mutex::new(Vec::new()),
                sends: Mutex::new(Map::new()),
                gate: Mutex::new(true),
                opened: Condvar::new(),
                closed: AtomicBool::new(false),
            })
        }
        fn hold(&self) {
            *self.gate.lock().unwrap() = false;
        }
        fn release(&self) {
            *self.gate.lock().unwrap() = true;
            self.opened.notify_all();
        }
        fn sends_of(&self, id: &str) -> u32 {
            self.sends.lock().unwrap().get(id).copied().unwrap_or(0)
        }
        fn sent_ids(&self) -> Vec<String> {
            self.log
                .lock()
                .unwrap()
                .iter()
                .map(|(id, _)| id.clone())
                .collect()
        }
    }

    fn fact_id(r: &Request) -> String {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["fact"]["id"].as_str().unwrap().to_string()
    }

    impl Sink for Arc<Scripted> {
        fn send(&self, requests: &[Request], _cancel: &Cancel) -> Vec<Outcome> {
            let mut open = self.gate.lock().unwrap();
            while !*open && !self.closed.load(Ordering::SeqCst) {
                open = self.opened.wait(open).unwrap();
            }
            drop(open);
            let ids: Vec<String> = requests.iter().map(fact_id).collect();
            self.batches.lock().unwrap().push(ids.clone());
            ids.iter()
                .map(|id| {
                    if self.closed.load(Ordering::SeqCst) {
                        return Outcome {
                            classified: Classified::transport(Status::Unavailable, None),
                            transport: Some(TransportError::ShutDown {
                                endpoint: Arc::from("test"),
                            }),
                            lane: None,
                        };
                    }
                    let n = {
                        let mut sends = self.sends.lock().unwrap();
                        let n = sends.entry(id.clone()).or_insert(0);
                        *n += 1;
                        *n
                    };
                    self.log.lock().unwrap().push((id.clone(), Instant::now()));
                    Outcome {
                        classified: Classified::transport((self.script)(id, n), None),
                        transport: None,
                        lane: Some(0),
                    }
                })
                .collect()
        }
        fn close(&self) {
            self.closed.store(true, Ordering::SeqCst);
            self.opened.notify_all();
        }
    }

    fn fast() -> WriterConfig {
        WriterConfig {
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..WriterConfig::default()
        }
    }

    fn entry(key: &str, id: &str) -> Entry {
        Entry {
            store: "s".into(),
            key: key.into(),
            id: id.into(),
            durability: None,
            fact: format!(r#"{{"id":"{id}","store":"s","key":"{key}","value":1}}"#).into_bytes(),
        }
    }

    fn put(w: &Writer, key: &str, id: &str) {
        w.try_enqueue(entry(key, id)).expect("queued");
    }

    fn flushed(w: &Writer) -> bool {
        w.flush(Some(Duration::from_secs(10)), &Cancel::new())
    }

    fn tempdir(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tbwriter-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A later fact of a key is never sent before the earlier one has a terminal
    /// result, however the answers go; different keys share batches.
    #[test]
    fn per_key_order_holds_through_retries() {
        // Deterministic "random" failures: about a third of the sends fail retryably.
        let sink = Scripted::new(|id, n| {
            let h = id
                .bytes()
                .fold(n.wrapping_mul(7919), |h, b| h.wrapping_mul(31) ^ b as u32);
            match h % 6 {
                0 => Status::TimeoutUnknown,
                1 => Status::RejectedBeforeCommit,
                _ if n > 1 => Status::IdempotentReplay,
                _ => Status::CommittedAcked,
            }
        });
        let w = Writer::start(sink.clone(), fast()).unwrap();
        for n in 0..60 {
            for k in 0..12 {
                put(&w, &format!("k{k}"), &format!("k{k}-{n:03}"));
            }
        }
        assert!(flushed(&w));
        let mut last: Map<String, String> = Map::new();
        for id in sink.sent_ids() {
            let key = id.split('-').next().unwrap().to_string();
            if let Some(prev) = last.get(&key) {
                assert!(*prev <= id, "{id} sent after {prev}");
            }
            last.insert(key, id);
        }
        for batch in sink.batches.lock().unwrap().iter() {
            let keys: BTreeSet<&str> = batch
                .iter()
                .map(|id| id.split('-').next().unwrap())
                .collect();
            assert_eq!(
                keys.len(),
                batch.len(),
                "one fact per key per batch: {batch:?}"
            );
        }
        assert!(
            sink.batches.lock().unwrap().iter().any(|b| b.len() > 1),
            "keys are pipelined together"
        );
        let s = w.stats();
        assert_eq!((s.delivered, s.queued, s.dead, s.failed), (720, 0, 0, 0));
        assert!(s.retries > 0);
    }

    #[test]
    fn retryable_statuses_are_retried_and_terminal_ones_are_not() {
        let sink = Scripted::new(|id, n| match (id, n) {
            ("unavailable", 1..=2) => Status::Unavailable,
            ("circuit", 1..=2) => Status::CircuitOpen,
            ("timeout", 1..=2) => Status::TimeoutUnknown,
            ("rejected", 1) => Status::RejectedBeforeCommit,
            ("timeout" | "rejected", _) => Status::IdempotentReplay,
            ("conflict", _) => Status::DuplicateFactIdConflict,
            ("error", _) => Status::Error,
            ("replay", _) => Status::IdempotentReplay,
            _ => Status::CommittedAcked,
        });
        let w = Writer::start(sink.clone(), fast()).unwrap();
        let ids = [
            "unavailable",
            "circuit",
            "timeout",
            "rejected",
            "conflict",
            "error",
            "replay",
            "committed",
        ];
        for id in ids {
            put(&w, id, id);
        }
        assert!(flushed(&w));
        let sends: Vec<u32> = ids.iter().map(|id| sink.sends_of(id)).collect();
        assert_eq!(sends, vec![3, 3, 3, 2, 1, 1, 1, 1]);
        let s = w.stats();
        assert_eq!(s.delivered, 6);
        assert_eq!(s.replays, 3);
        assert_eq!(s.conflicts, 1);
        assert_eq!(s.failed, 1);
        assert_eq!(s.dead, 0);
        assert_eq!(
            s.retries, 3,
            "waits for an unreachable daemon are not retries"
        );
    }

    #[test]
    fn exhausted_attempts_go_to_the_dead_letter_file_and_leave_the_spool() {
        let dir = tempdir("dead");
        let sink = Scripted::new(|id, _| {
            if id == "doomed" {
                Status::TimeoutUnknown
            } else {
                Status::CommittedAcked
            }
        });
        let config = WriterConfig {
            retry_attempts: 4,
            spool: Some(SpoolConfig::new(&dir)),
            ..fast()
        };
        let w = Writer::start(sink.clone(), config.clone()).unwrap();
        put(&w, "k", "doomed");
        put(&w, "k", "after");
        assert!(flushed(&w));
        assert_eq!(sink.sends_of("doomed"), 4);
        assert_eq!(
            sink.sends_of("after"),
            1,
            "the key moves on after a dead fact"
        );
        let s = w.stats();
        assert_eq!((s.dead, s.delivered, s.retries, s.spooled), (1, 1, 3, 0));
        let text = std::fs::read_to_string(dir.join(DEAD_LETTER_FILE)).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["reason"], "exhausted");
        assert_eq!(line["status"], "timeout_unknown");
        assert_eq!(line["attempts"], 4);
        assert_eq!(line["fact"]["id"], "doomed");
        assert!(w.shutdown(Duration::from_secs(1), &Cancel::new()));
        let segments = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .to_string_lossy()
                    .ends_with(".spool")
            })
            .count();
        assert_eq!(segments, 0, "a drained spool leaves no segment behind");
        // Nothing is left for a later writer to replay.
        let again = Writer::start(Scripted::new(|_, _| Status::CommittedAcked), config).unwrap();
        assert_eq!(again.stats().adopted, 0);
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreachable_daemon_pauses_without_spending_attempts() {
        let sink = Scripted::new(|_, n| {
            if n <= 12 {
                Status::Unavailable
            } else {
                Status::CommittedAcked
            }
        });
        let config = WriterConfig {
            retry_attempts: 2,
            ..fast()
        };
        let w = Writer::start(sink.clone(), config).unwrap();
        put(&w, "a", "x");
        put(&w, "b", "y");
        assert!(flushed(&w));
        let s = w.stats();
        assert_eq!((s.delivered, s.dead), (2, 0));
        assert_eq!(sink.sends_of("x"), 13);
    }

    #[test]
    fn backoff_grows_with_full_jitter_up_to_the_cap() {
        let sink = Scripted::new(|_, n| {
            if n <= 6 {
                Status::RejectedBeforeCommit
            } else {
                Status::CommittedAcked
            }
        });
        let config = WriterConfig {
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(40),
            ..WriterConfig::default()
        };
        let w = Writer::start(sink.clone(), config).unwrap();
        for k in 0..30 {
            put(&w, &format!("k{k}"), &format!("f{k}"));
        }
        assert!(flushed(&w));
        let log = sink.log.lock().unwrap();
        let mut gaps: Map<u32, Vec<Duration>> = Map::new();
        for k in 0..30 {
            let id = format!("f{k}");
            let times: Vec<Instant> = log
                .iter()
                .filter(|(i, _)| *i == id)
                .map(|(_, t)| *t)
                .collect();
            assert_eq!(times.len(), 7);
            for (n, pair) in times.windows(2).enumerate() {
                gaps.entry(n as u32 + 1)
                    .or_default()
                    .push(pair[1] - pair[0]);
            }
        }
        let slack = Duration::from_millis(30);
        for (attempt, gs) in &gaps {
            let cap =
                (Duration::from_millis(5) * 2u32.pow(attempt - 1)).min(Duration::from_millis(40));
            assert!(
                gs.iter().all(|g| *g <= cap + slack),
                "attempt {attempt}: {gs:?}"
            );
        }
        // Jitter: the last gaps (cap 40 ms) spread instead of all being the cap.
        let last = &gaps[&6];
        let min = last.iter().min().unwrap();
        let max = last.iter().max().unwrap();
        assert!(*max - *min > Duration::from_millis(10), "{last:?}");
    }

    #[test]
    fn a_full_queue_refuses_waits_and_takes_when_room_appears() {
        let sink = Scripted::new(|_, _| Status::CommittedAcked);
        sink.hold();
        let config = WriterConfig {
            queue_size: 3,
            ..fast()
        };
        let w = Arc::new(Writer::start(sink.clone(), config).unwrap());
        for n in 0..3 {
            put(&w, "k", &format!("f{n}"));
        }
        let refused = w.try_enqueue(entry("k", "f3")).unwrap_err();
        assert_eq!(refused.reason, Refusal::Full);
        assert_eq!(refused.entry.id, "f3", "handed back untouched");
        let t0 = Instant::now();
        let refused = w
            .enqueue(
                entry("k", "f3"),
                Some(Duration::from_millis(100)),
                &Cancel::new(),
            )
            .unwrap_err();
        assert_eq!(refused.reason, Refusal::Full);
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert!(
            !w.flush(Some(Duration::from_millis(50)), &Cancel::new()),
            "stalled"
        );
        // A cancel ends the wait at once.
        let cancel = Arc::new(Cancel::new());
        let (w2, c2) = (w.clone(), cancel.clone());
        let waiter = std::thread::spawn(move || {
            w2.enqueue(entry("k", "f3"), Some(Duration::from_secs(30)), &c2)
                .map(|_| ())
                .map_err(|r| r.reason)
        });
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        cancel.cancel();
        assert_eq!(waiter.join().unwrap(), Err(Refusal::Cancelled));
        assert!(t0.elapsed() < Duration::from_secs(1));
        // Room appears while a caller waits: it gets in.
        let w3 = w.clone();
        let waiter = std::thread::spawn(move || {
            w3.enqueue(
                entry("k", "f3"),
                Some(Duration::from_secs(10)),
                &Cancel::new(),
            )
            .is_ok()
        });
        std::thread::sleep(Duration::from_millis(50));
        sink.release();
        assert!(waiter.join().unwrap());
        assert!(flushed(&w));
        assert_eq!(sink.sent_ids(), vec!["f0", "f1", "f2", "f3"]);
    }

    #[test]
    fn unacknowledged_facts_are_replayed_by_the_next_writer_in_order() {
        let dir = tempdir("replay");
        let config = WriterConfig {
            spool: Some(SpoolConfig::new(&dir)),
            ..fast()
        };
        // The first writer delivers the first five facts, then the daemon goes away.
        let delivered = Arc::new(AtomicUsize::new(0));
        let d2 = delivered.clone();
        let sink = Scripted::new(move |_, _| {
            if d2.fetch_add(1, Ordering::SeqCst) < 5 {
                Status::CommittedAcked
            } else {
                Status::Unavailable
            }
        });
        let w = Writer::start(sink.clone(), config.clone()).unwrap();
        for n in 0..12 {
            put(&w, "k", &format!("f{n:02}"));
        }
        assert!(wait(|| w.stats().delivered == 5));
        assert_eq!(w.stats().spooled, 7);
        // Stopped without delivering the rest: what a crash leaves, acks included.
        assert!(!w.shutdown(Duration::from_millis(20), &Cancel::new()));
        assert_eq!(w.stats().queued, 7);
        let seg = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".spool"))
            .unwrap();
        let pending = pending_facts(decode_segment(&std::fs::read(seg).unwrap()).records);
        assert_eq!(pending.len(), 7);
        let sink = Scripted::new(|_, _| Status::CommittedAcked);
        let next = Writer::start(sink.clone(), config).unwrap();
        assert_eq!(next.stats().adopted, 7);
        put(&next, "k", "f99");
        assert!(flushed(&next));
        let expected: Vec<String> = (5..12)
            .map(|n| format!("f{n:02}"))
            .chain(["f99".into()])
            .collect();
        assert_eq!(
            sink.sent_ids(),
            expected,
            "the rest, in order, before newer facts"
        );
        assert_eq!(next.stats().spooled, 0);
        drop(next);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_running_writer_adopts_the_segment_of_a_writer_that_died_meanwhile() {
        let dir = tempdir("adopt-live");
        let mut spool = SpoolConfig::new(&dir);
        spool.adopt_interval = Duration::from_millis(30);
        let config = WriterConfig {
            spool: Some(spool),
            ..fast()
        };
        let sink = Scripted::new(|_, _| Status::CommittedAcked);
        let w = Writer::start(sink.clone(), config).unwrap();
        // Another process's spool: alive (locked) while it holds facts, then gone.
        let (mut other, _) = Spool::open(&dir, 1 << 20, Fsync::Batch).unwrap();
        for n in 0..3 {
            other
                .append_fact(&entry("k", &format!("orphan-{n}")))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            w.stats().adopted,
            0,
            "a live writer's segment is left alone"
        );
        drop(other);
        assert!(wait(|| w.stats().delivered == 3));
        assert_eq!(sink.sent_ids(), vec!["orphan-0", "orphan-1", "orphan-2"]);
        assert_eq!(w.stats().adopted, 3);
        assert_eq!(w.spool_segments().len(), 1);
        let files = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .to_string_lossy()
                    .ends_with(".spool")
            })
            .count();
        assert_eq!(files, 1, "the orphan is deleted");
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shutdown_ends_a_stalled_send_and_refuses_later_enqueues() {
        let sink = Scripted::new(|_, _| Status::CommittedAcked);
        sink.hold();
        let w = Writer::start(sink.clone(), fast()).unwrap();
        put(&w, "k", "a");
        let t0 = Instant::now();
        assert!(!w.shutdown(Duration::from_millis(50), &Cancel::new()));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(w.stats().queued, 1);
        let refused = w.try_enqueue(entry("k", "b")).unwrap_err();
        assert_eq!(refused.reason, Refusal::ShutDown);
        let t0 = Instant::now();
        assert!(!w.shutdown(Duration::from_secs(5), &Cancel::new()), "again");
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "a second shutdown returns at once"
        );
    }

    #[test]
    fn a_cancel_only_pauses_a_started_flush_and_shutdown() {
        let sink = Scripted::new(|_, _| Status::CommittedAcked);
        sink.hold();
        let w = Writer::start(sink.clone(), fast()).unwrap();
        put(&w, "k", "a");
        let cancelled = Cancel::new();
        cancelled.cancel();
        let Step::Paused(flush) = w.start_flush(Some(Duration::from_secs(10)), &cancelled) else {
            panic!("a cancelled flush of an undelivered fact is paused");
        };
        put(&w, "k", "b");
        sink.release();
        assert!(matches!(flush.step(&Cancel::new()), Step::Done(true)));
        assert_eq!(sink.sends_of("a"), 1);
        // The shutdown's flush goes on likewise; given up, it still stops the writer.
        sink.hold();
        put(&w, "k", "c");
        let Step::Paused(shutdown) = w.start_shutdown(Duration::from_secs(10), &cancelled) else {
            panic!("a cancelled shutdown with a fact queued is paused");
        };
        assert_eq!(w.try_enqueue(entry("k", "d")).unwrap_err().reason, Refusal::ShutDown);
        sink.release();
        assert!(matches!(shutdown.step(&Cancel::new()), Step::Done(true)));
        assert_eq!(w.stats().queued, 0);
        let sink = Scripted::new(|_, _| Status::CommittedAcked);
        sink.hold();
        let w = Writer::start(sink.clone(), fast()).unwrap();
        put(&w, "k", "e");
        let Step::Paused(shutdown) = w.start_shutdown(Duration::from_secs(10), &cancelled) else {
            panic!("paused");
        };
        let t0 = Instant::now();
        drop(shutdown);
        assert!(t0.elapsed() < Duration::from_secs(2), "given up, the shutdown ends");
        assert!(!w.shutdown(Duration::from_secs(5), &Cancel::new()), "already shut down");
    }

    #[test]
    fn shutdown_releases_an_enqueue_waiting_for_room() {
        let sink = Scripted::new(|_, _| Status::CommittedAcked);
        sink.hold();
        let config = WriterConfig {
            queue_size: 1,
            ..fast()
        };
        let w = Arc::new(Writer::start(sink, config).unwrap());
        put(&w, "k", "a");
        let w2 = w.clone();
        let waiter = std::thread::spawn(move || {
            w2.enqueue(
                entry("k", "b"),
                Some(Duration::from_secs(30)),
                &Cancel::new(),
            )
            .map(|_| ())
            .map_err(|r| r.reason)
        });
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        assert!(!w.shutdown(Duration::from_millis(10), &Cancel::new()));
        assert_eq!(waiter.join().unwrap(), Err(Refusal::ShutDown));
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    /// The fds of this process open on `path`.
    fn fds_of(path: &std::path::Path) -> Vec<i32> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                (std::fs::read_link(e.path()).ok()? == path)
                    .then(|| e.file_name().to_str()?.parse().ok())
                    .flatten()
            })
            .collect()
    }

    #[test]
    fn a_forked_child_closes_the_spool_fds_even_with_the_queue_locked() {
        let dir = tempdir("fork");
        let config = WriterConfig {
            spool: Some(SpoolConfig::new(&dir)),
            ..fast()
        };
        let w =
            Arc::new(Writer::start(Scripted::new(|_, _| Status::CommittedAcked), config).unwrap());
        let w_clone = w.clone();
        let segment = w.spool_segments()[0].clone();
        let fds = fds_of(&segment);
        assert_eq!(fds.len(), 1);
        // The flusher may hold the queue's mutex at the moment of the fork; hold it here.
        let shared = w.shared.clone();
        let guard = shared.lock();
        // SAFETY: the child only runs forget_after_fork (atomics, close(2); the scripted
        // sink forgets nothing), fcntl(2) and _exit: no allocation, no lock.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            std::mem::forget(guard);
            // Another thread of the parent held a clone at fork time.
            std::mem::forget(w_clone);
            w.forget_after_fork();
            // SAFETY: F_GETFD on an fd number only reads the descriptor table.
            let open = fds
                .iter()
                .any(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } != -1);
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(i32::from(open)) };
        }
        drop(guard);
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child kept the segment open (status {status})"
        );
        // The parent still holds its segment's lock.
        let probe = std::fs::File::open(&segment).unwrap();
        // SAFETY: flock on an fd this File owns.
        let rc = unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, -1, "the parent's lock is gone");
        put(&w, "k", "after-fork");
        assert!(flushed(&w));
        drop((w, w_clone));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fsync_always_hands_back_the_segment_to_sync() {
        let dir = tempdir("always");
        let mut spool = SpoolConfig::new(&dir);
        spool.fsync = Fsync::Always;
        let config = WriterConfig {
            spool: Some(spool),
            ..fast()
        };
        let sink = Scripted::new(|_, _| Status::CommittedAcked);
        let w = Writer::start(sink, config).unwrap();
        assert!(w.try_enqueue(entry("k", "a")).unwrap().sync.is_some());
        let receipt = w.enqueue(entry("k", "b"), None, &Cancel::new()).unwrap();
        assert!(receipt.sync.is_none() && receipt.spool_error.is_none());
        assert!(flushed(&w));
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn wait(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}
