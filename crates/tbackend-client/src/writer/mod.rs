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
//!
//! **Events.** Dead letters, pauses, spool errors and adopted segments are
//! [`Event`]s: queued for an owner that drains them (the Ruby binding), or, without one,
//! the dead letters and the worst spool errors as rate-limited stderr lines.
//!
//! Layout: [`queue`] is the pure per-key queue, `flusher` the thread that empties it
//! (and, under `Fsync::Batch`, the thread that syncs the spool),
//! [`dead_letter`] the dead-letter file's record, [`events`] the event channel, `stderr`
//! the rate limiter of the last resort.

pub mod dead_letter;
pub mod events;
mod flusher;
mod queue;
mod stderr;
mod waits;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::batch::Batch;
use crate::cancel::{Cancel, Resumable, Step};
use crate::client::{Client, Outcome, Request};
use crate::wait::later;
use crate::spool::{Entry, FdRegistry, Fsync, Spool};
use crate::sys;

pub use events::{Drained, Event, SpoolOp};
use events::Events;
use flusher::State;
use queue::Queue;
pub use waits::{PausedEnqueue, PausedFlush, PausedShutdown};

/// Where a [`Writer`] sends its requests. [`Client`] is the real one; tests script
/// answers with their own.
pub trait Sink: Send + Sync + 'static {
    /// Sends every request (pipelined) and returns one outcome per request, in order.
    fn send(&self, requests: &[Request], cancel: &Cancel) -> Vec<Outcome>;
    /// Sends every request and returns at once: the outcomes are collected later with
    /// [`Round::finish`] (the flusher lingers meanwhile, and finds the answers there).
    /// By default, [`Sink::send`] now.
    fn start(&self, requests: Vec<Request>) -> Box<dyn Round> {
        Box::new(Sent(self.send(&requests, &Cancel::new())))
    }
    /// Ends calls in flight promptly and refuses later ones (writer shutdown).
    fn close(&self) {}
    /// In a forked child: give up inherited connections without touching the parent's.
    fn forget(&self) {}
}

/// Requests a [`Sink`] started: their outcomes, in order, once collected.
pub trait Round: Send {
    /// Waits for every outcome (ended early by `cancel` or by [`Sink::close`]).
    fn finish(self: Box<Self>, cancel: &Cancel) -> Vec<Outcome>;
}

/// A round whose outcomes are already known.
struct Sent(Vec<Outcome>);

impl Round for Sent {
    fn finish(self: Box<Self>, _: &Cancel) -> Vec<Outcome> {
        self.0
    }
}

/// A [`Client`]'s round: a batch written, its answers read when finished.
struct InFlight {
    batch: Batch,
    requests: Vec<Request>,
    taken: usize,
}

impl Round for InFlight {
    fn finish(mut self: Box<Self>, cancel: &Cancel) -> Vec<Outcome> {
        self.batch.finish_all(&self.requests, self.taken, cancel)
    }
}

impl Sink for Client {
    fn send(&self, requests: &[Request], cancel: &Cancel) -> Vec<Outcome> {
        self.call_batch(requests, None, cancel)
    }
    fn start(&self, requests: Vec<Request>) -> Box<dyn Round> {
        let mut batch = self.batch(None);
        let taken = batch.submit(&requests, &Cancel::new());
        batch.send_queued();
        Box::new(InFlight {
            batch,
            requests,
            taken,
        })
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
    /// `Fsync::Batch`: the longest a fact waits undelivered and unsynced.
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

/// [`WriterConfig::linger`] by default. Facts arriving every 0.6-0.9 ms (one request of
/// a busy app thread) cost the flusher 70-130 µs of CPU each when sent one by one,
/// mostly thread wake-ups; 5 ms gathers five to eight per round and 28-47 µs each
/// (bench/request_path.rb; 3 ms saved less). Well below what a background write's
/// latency matters for.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(5);

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
    /// How long the flusher waits for more facts before it sends fewer than a `batch`
    /// (Kafka's `linger.ms`): a trickle of facts then goes out in pipelined rounds, one
    /// wake-up, one write and one spool acknowledgement for many facts instead of for
    /// each. A fact waits at most this long; `flush`, `shutdown`, a full `batch`, a key
    /// with facts behind its head and a queue half full send at once. Zero: every fact is sent as soon as the flusher
    /// sees it. Up to 10 ms, a round's outcomes are collected when the window after it
    /// ends, so its facts count as delivered (and are acknowledged in the spool) up to
    /// one window later; whatever sends at once also collects at once.
    pub linger: Duration,
    /// Put in each request; never stored in the spool or printed.
    pub token: Option<String>,
    /// The file spool, or `None` for memory only.
    pub spool: Option<SpoolConfig>,
    /// Queue [`Event`]s for an owner that drains them ([`Writer::take_events`]) instead
    /// of writing the dead letters and the worst spool errors to stderr.
    pub queue_events: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue_size: 10_000,
            retry_attempts: 10,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(30),
            batch: 256,
            linger: DEFAULT_LINGER,
            token: None,
            spool: None,
            queue_events: false,
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
    /// Rounds sent to the daemon (each pipelines up to `batch` facts): against
    /// `delivered`, how well [`WriterConfig::linger`] gathers a trickle.
    pub batches: u64,
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
    batches: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;

/// The flusher is working: nobody needs to wake it.
const AWAKE: u8 = 0;
/// The flusher sleeps with nothing to send: any enqueue wakes it.
const IDLE: u8 = 1;
/// The flusher waits out its linger window: only an urgent poke (a flush, a shutdown,
/// a full batch, a queue filling up) wakes it, so a trickle of enqueues costs no
/// wake-up each.
const LINGERING: u8 = 2;

/// What the [`Writer`] handle, its flusher thread and its paused waits share.
struct WriterCore {
    state: Mutex<State>,
    sink: Box<dyn Sink>,
    config: WriterConfig,
    /// Bumped by every enqueue and by shutdown; the flusher sleeps on it.
    work: AtomicU32,
    /// How the flusher sleeps ([`AWAKE`], [`IDLE`], [`LINGERING`]): which pokes must
    /// wake it.
    sleep: AtomicU8,
    /// Bumped whenever facts reach a terminal result; `flush` and blocked enqueues
    /// sleep on it.
    progress: AtomicU32,
    /// Threads sleeping on `progress`: without any, the flusher skips the wake.
    progress_waiters: AtomicU32,
    stop: AtomicU8,
    /// Bumped by shutdown, and by the flusher for a parked syncer; the syncer sleeps
    /// on it.
    syncer_word: AtomicU32,
    counters: Counters,
    events: Events,
    /// The spool's open segment fds, reachable without the queue's mutex (fork).
    spool_fds: Option<Arc<FdRegistry>>,
}

/// The background writer. `Send + Sync`; dropping it stops the flusher (without
/// waiting for the queue: call [`Writer::shutdown`] for a bounded drain).
pub struct Writer {
    core: Arc<WriterCore>,
    /// The flusher, and the syncer under `Fsync::Batch`.
    threads: Mutex<Vec<JoinHandle<()>>>,
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
            queue: Queue::default(),
            spool: None,
            pause_until: None,
            unreachable_streak: 0,
            paused_at: None,
            next_adoption: later(
                now,
                config
                    .spool
                    .as_ref()
                    .map_or(Duration::MAX, |s| s.adopt_interval),
            ),
            closed: false,
            flush_below: 0,
            linger_from: None,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            syncer_parked: false,
            syncer_looks: 0,
        };
        let counters = Counters::default();
        let events = Events::new(config.queue_events);
        let mut spool_fds = None;
        if let Some(sc) = &config.spool {
            let (spool, adopted) =
                Spool::open(&sc.dir, sc.segment_bytes, sc.fsync).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("spool {}: {e}", sc.dir.display()))
                })?;
            spool_fds = Some(spool.fd_registry());
            state.spool = Some(spool);
            for (loc, entry) in adopted {
                state.queue.push(Some(loc), entry);
                bump(&counters.adopted);
            }
            let mut adoptions = Vec::new();
            state.adoption_events(&mut adoptions);
            events.emit(adoptions);
        }
        let core = Arc::new(WriterCore {
            state: Mutex::new(state),
            sink: Box::new(sink),
            config,
            work: AtomicU32::new(0),
            sleep: AtomicU8::new(AWAKE),
            progress: AtomicU32::new(0),
            progress_waiters: AtomicU32::new(0),
            stop: AtomicU8::new(RUNNING),
            syncer_word: AtomicU32::new(0),
            counters,
            events,
            spool_fds,
        });
        let runner = core.clone();
        let mut threads = vec![std::thread::Builder::new()
            .name("tbackend-writer".into())
            .spawn(move || runner.run())?];
        if let Some(every) = core.sync_interval() {
            let syncer = core.clone();
            let spawned = std::thread::Builder::new()
                .name("tbackend-sync".into())
                .spawn(move || syncer.run_syncer(every));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    // Dropping it stops the flusher and closes the spool.
                    drop(Writer {
                        core,
                        threads: Mutex::new(threads),
                    });
                    return Err(e);
                }
            }
        }
        Ok(Writer {
            core,
            threads: Mutex::new(threads),
        })
    }

    /// Queues `entry` without ever waiting (other than for the queue's mutex and, with
    /// a spool, one `write(2)`). With `Fsync::Always` the receipt names the segment the
    /// caller must sync before reporting success.
    pub fn try_enqueue(&self, entry: Entry) -> Result<Receipt, Refused> {
        let sh = &*self.core;
        let mut st = sh.lock();
        if st.closed {
            return Err(Refused {
                reason: Refusal::ShutDown,
                entry: Box::new(entry),
            });
        }
        if st.queue.len() >= sh.config.queue_size.max(1) {
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
                Err(e) => (None, Some(e), None),
            },
            None => (None, None, None),
        };
        let seq = st.queue.push(loc, entry);
        let urgent = sh.urgent(&st);
        drop(st);
        bump(&sh.counters.enqueued);
        let spool_error = spool_error.map(|e| {
            bump(&sh.counters.spool_errors);
            sh.events.emit(vec![Event::SpoolError {
                operation: SpoolOp::Write,
                error: e.to_string(),
                count: 1,
            }]);
            format!("spool write failed: {e}")
        });
        sh.poke(urgent);
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
        let target = self.core.hurry(|_| ());
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
        let sh = &*self.core;
        if sh.stop.load(Ordering::SeqCst) != RUNNING {
            return Step::Done(sh.lock().queue.len() == 0);
        }
        let target = sh.hurry(|state| state.closed = true);
        PausedShutdown {
            flush: Some(PausedFlush {
                writer: self,
                target,
                deadline: Some(later(Instant::now(), timeout)),
            }),
        }
        .step(cancel)
    }

    /// Stops the flusher, closes the spool and then the event channel: the end of
    /// every shutdown.
    fn finish_shutdown(&self) {
        self.stop_thread();
        self.close_spool();
        self.core.events.close();
    }

    /// Syncs and closes the spool (deleting its drained segments) once the flusher is
    /// stopped.
    fn close_spool(&self) {
        let spool = self.core.lock().spool.take();
        if let Some(Err(e)) = spool.map(Spool::close) {
            self.core.events.emit(vec![Event::SpoolError {
                operation: SpoolOp::Close,
                error: e.to_string(),
                count: 1,
            }]);
        }
    }

    fn stop_thread(&self) {
        let sh = &*self.core;
        sh.stop.store(STOPPING, Ordering::SeqCst);
        sh.sink.close();
        sh.work.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&sh.work, i32::MAX);
        sh.wake_syncer();
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
        // Enqueues waiting for room see the shutdown now rather than at their deadline.
        sh.progressed();
    }

    /// Counts a fact the caller dropped because the queue was full.
    pub fn count_dropped(&self) {
        bump(&self.core.counters.dropped);
    }

    /// Counters and gauges.
    pub fn stats(&self) -> WriterStats {
        let sh = &*self.core;
        let c = &sh.counters;
        let (queued, spooled, spool_bytes) = {
            let st = sh.lock();
            let (p, b) = st
                .spool
                .as_ref()
                .map_or((0, 0), |s| (s.pending(), s.bytes()));
            (st.queue.len(), p, b)
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
            batches: get(&c.batches),
        }
    }

    /// The spool's segment files, oldest first (empty without a spool).
    pub fn spool_segments(&self) -> Vec<PathBuf> {
        self.core
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
        let sh = &*self.core;
        if let Some(fds) = &sh.spool_fds {
            fds.close_inherited();
        }
        sh.sink.forget();
        std::mem::forget(self);
    }

    /// Takes the queued [`Event`]s (with [`WriterConfig::queue_events`]), without
    /// waiting. `closed` once the writer is shut down: nothing follows.
    pub fn take_events(&self) -> Drained {
        self.core.events.take()
    }

    /// Sleeps until there are events to take or the writer is shut down (`true`), or
    /// until `cancel` (`false`). For one draining thread, without the queue's mutex.
    pub fn wait_events(&self, cancel: &Cancel) -> bool {
        self.core.events.wait(cancel)
    }

    /// The owner stops draining (its thread ends): what it left, and every later event,
    /// goes to stderr as if events were never queued.
    pub fn release_events(&self) {
        self.core.events.release();
    }

    /// Lines on stderr through the writer's rate limiter (events the owner drained and
    /// nobody heard).
    pub fn write_stderr(&self, lines: impl IntoIterator<Item = String>) {
        self.core.events.write_stderr(lines);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.core.lock().closed = true;
        self.finish_shutdown();
    }
}

impl WriterCore {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the flusher there is work; wakes it if it sleeps idle, or lingers and the
    /// work is `urgent`.
    fn poke(&self, urgent: bool) {
        self.work.fetch_add(1, Ordering::SeqCst);
        match self.sleep.load(Ordering::SeqCst) {
            IDLE => sys::futex_wake(&self.work, 1),
            LINGERING if urgent => sys::futex_wake(&self.work, 1),
            _ => {}
        }
    }

    /// Whether what is queued must go out without lingering: a flush or shutdown waits
    /// for it, a whole batch is ready, a key has facts behind its head (they leave one
    /// round each: lingering would hold a busy key to one fact per window), or the queue
    /// is half full (enqueues would soon wait for room).
    fn urgent(&self, st: &State) -> bool {
        st.closed
            || !st.queue.settled_below(st.flush_below)
            || st.queue.backlogged()
            || st.queue.ready_len() >= self.config.batch.max(1)
            || st.queue.len() * 2 >= self.config.queue_size.max(1)
    }

    /// For a flush (and a shutdown, whose `prepare` closes the writer): every fact
    /// queued so far is to be sent without lingering. Returns the seq below which they
    /// all are.
    fn hurry(&self, prepare: impl FnOnce(&mut State)) -> u64 {
        let mut st = self.lock();
        prepare(&mut st);
        let target = st.queue.next_seq();
        st.flush_below = st.flush_below.max(target);
        let waiting = !st.queue.settled_below(target);
        drop(st);
        if waiting {
            self.poke(true);
        }
        target
    }

    /// Wakes whoever sleeps on `progress` (nobody, mostly: then no system call).
    fn progressed(&self) {
        self.progress.fetch_add(1, Ordering::SeqCst);
        if self.progress_waiters.load(Ordering::SeqCst) > 0 {
            sys::futex_wake(&self.progress, i32::MAX);
        }
    }

    fn wait_progress(&self, seen: u32, max: Duration, cancel: &Cancel) {
        let _armed = cancel.arm(&self.progress, None);
        if cancel.is_cancelled() {
            return;
        }
        // Counted before the wait reads `progress`, so a bump that does not see us
        // happened before it: the wait then returns at once.
        self.progress_waiters.fetch_add(1, Ordering::SeqCst);
        sys::futex_wait(&self.progress, seen, Some(max));
        self.progress_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}
