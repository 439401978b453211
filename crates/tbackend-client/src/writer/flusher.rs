//! The flusher thread of a [`Writer`](super::Writer): takes batches from the
//! [`Queue`], sends them through the [`Sink`](super::Sink), decides each fact's
//! [`Fate`], backs off, pauses while the daemon is unreachable, syncs and adopts spool
//! segments, dead-letters. Everything it has to say becomes an [`Event`], emitted once
//! the queue's mutex is released.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tbackend_core::protocol::request::RequestBuilder;
use tbackend_core::{ErrorKind, OpKind, Status};

use super::dead_letter::{raw_fact, DeadLetterRecord, Reason};
use super::events::{Event, SpoolOp};
use super::queue::{Key, Queue, Rec};
use super::{bump, Round, WriterCore, AWAKE, IDLE, LINGERING, RUNNING};
use crate::backoff::full_jitter;
use crate::cancel::Cancel;
use crate::client::{Outcome, Request};
use crate::error::TransportError;
use crate::wait::later;
use crate::spool::{Entry, Spool, DEAD_LETTER_FILE};
use crate::sys;

/// Everything behind the writer's mutex.
pub(super) struct State {
    pub queue: Queue,
    pub spool: Option<Spool>,
    /// The daemon is unreachable: nothing is sent before then.
    pub pause_until: Option<Instant>,
    pub unreachable_streak: u32,
    /// When the current pause began (`None`: not paused).
    pub paused_at: Option<Instant>,
    pub next_adoption: Instant,
    pub closed: bool,
    /// Facts below this seq are awaited by a flush or a shutdown: no lingering for them.
    pub flush_below: u64,
    /// When the current linger window began: at the end of the last round (so a steady
    /// trickle wakes the flusher once per window, not per fact) or, after an idle spell,
    /// when the flusher first found a fact to send. `None`: no window open.
    pub linger_from: Option<Instant>,
    pub rng: u64,
    /// The syncer sleeps without a timeout: nothing was queued or unsynced when it last
    /// looked. The flusher wakes it when it finds facts queued.
    pub syncer_parked: bool,
    /// The syncer's looks so far (tests count its wake-ups with it).
    pub syncer_looks: u64,
}

impl State {
    fn jitter(&mut self, base: Duration, max: Duration, n: u32) -> Duration {
        full_jitter(base, max, n, &mut self.rng)
    }

    /// Events for the segments the spool adopted since the last call.
    pub fn adoption_events(&mut self, events: &mut Vec<Event>) {
        if let Some(spool) = self.spool.as_mut() {
            events.extend(
                spool
                    .take_adoptions()
                    .into_iter()
                    .map(|(segment, facts)| Event::Adopted { segment, facts }),
            );
        }
    }
}

/// The longest linger window a round's outcomes wait through, uncollected. With a
/// short window the answers are there when it ends and the flusher wakes once per round;
/// a longer one collects them as they come, so spool acks, stats and retries do not lag
/// behind by a whole window.
const HOLD_MAX: Duration = Duration::from_millis(10);

/// A round sent and not yet settled: the facts of its requests (in order) and those
/// no request could be built for.
struct Sending {
    round: Option<Box<dyn Round>>,
    slots: Vec<Key>,
    refused: Vec<(Key, String)>,
}

/// What becomes of a fact after one outcome.
enum Fate {
    Delivered {
        replay: bool,
    },
    Terminal(Reason),
    /// Retry after a backoff; counts as an attempt.
    Retry,
    /// The daemon is unreachable: pause everything, retry without counting.
    Unreachable,
    /// Writer stopping: leave the fact for the spool or the next flush.
    Interrupted,
}

fn fate(o: &Outcome) -> Fate {
    if matches!(
        o.transport,
        Some(TransportError::ShutDown { .. } | TransportError::Cancelled { .. })
    ) {
        return Fate::Interrupted;
    }
    let c = &o.classified;
    let row = c.status.row();
    match c.status {
        _ if row.flags.committed == Some(true) => Fate::Delivered {
            replay: c.status == Status::IdempotentReplay,
        },
        Status::DuplicateFactIdConflict => Fate::Terminal(Reason::Conflict),
        // Nothing was sent: the daemon cannot be reached.
        _ if row.transport && row.kind == ErrorKind::NotApplied => Fate::Unreachable,
        _ if row.retry_safe || c.retryable == Some(true) => Fate::Retry,
        _ => Fate::Terminal(Reason::Error),
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Why a fact is dead-lettered: reason, last status (`client_bug` when no request
/// could be built), last error.
struct Death<'a> {
    reason: Reason,
    status: &'static str,
    error: &'a str,
}

impl WriterCore {
    /// How often the spool is synced while facts wait undelivered (`Fsync::Batch`
    /// only).
    pub(super) fn sync_interval(&self) -> Option<Duration> {
        self.config
            .spool
            .as_ref()
            .filter(|s| s.fsync == crate::spool::Fsync::Batch)
            .map(|s| s.fsync_interval)
    }

    /// The syncer thread (`Fsync::Batch`): syncs the spool's segment when a fact
    /// appended since the last sync has waited undelivered for half the interval (a
    /// delivered fact needs none). It looks every half interval, so no fact waits
    /// unsynced longer than the interval; waking when each fact fell due would wake it
    /// once per fact of a trickle, for facts delivered meanwhile. A thread of its own,
    /// because the flusher may wait on a slow daemon for a whole request timeout, and
    /// facts keep coming meanwhile. `every` is [`WriterCore::sync_interval`].
    ///
    /// With nothing queued, nothing unsynced and no linger window open it parks until
    /// the flusher finds facts queued ([`WriterCore::unpark_syncer`]), so an idle
    /// process pays no wake-ups. The flusher, not the enqueue, wakes it: that keeps the
    /// system call off the request path, and the enqueue that ends an idle spell wakes
    /// the flusher anyway.
    pub(super) fn run_syncer(&self, every: Duration) {
        let half = every / 2;
        loop {
            let seen = self.syncer_word.load(Ordering::SeqCst);
            if self.stop.load(Ordering::SeqCst) != RUNNING {
                return;
            }
            let (file, parked) = {
                let mut st = self.lock();
                st.syncer_looks += 1;
                let oldest = st.spool.as_ref().and_then(Spool::oldest_unsynced);
                let file = if oldest.is_some_and(|oldest| oldest.elapsed() >= half) {
                    st.spool.as_mut().and_then(Spool::take_dirty)
                } else {
                    None
                };
                // With a linger window open the flusher may sleep through enqueues until
                // it ends: the syncer keeps looking. Without one, an enqueue wakes an
                // idle flusher, and a busy one looks at the queue again at once.
                st.syncer_parked =
                    oldest.is_none() && st.queue.len() == 0 && st.linger_from.is_none();
                (file, st.syncer_parked)
            };
            let mut events = Vec::new();
            self.sync(file, &mut events);
            self.events.emit(events);
            sys::futex_wait(&self.syncer_word, seen, (!parked).then_some(half));
        }
    }

    /// Wakes the syncer if it parked and facts are queued now (they may wait
    /// unsynced). The flusher asks at every look at the queue.
    fn unpark_syncer(&self, st: &mut State) {
        if st.syncer_parked && st.queue.len() > 0 {
            st.syncer_parked = false;
            self.wake_syncer();
        }
    }

    /// Ends the syncer's sleep, parked or not.
    pub(super) fn wake_syncer(&self) {
        self.syncer_word.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&self.syncer_word, i32::MAX);
    }

    fn request(&self, e: &Entry) -> Result<Request, String> {
        // The envelope's own keys and the token fit in the slack.
        let capacity = e.fact.len() + 128 + self.config.token.as_ref().map_or(0, String::len);
        let mut b = RequestBuilder::with_capacity(
            "write_fact_once",
            self.config.token.as_deref(),
            capacity,
        );
        if let Some(d) = &e.durability {
            b.str("durability", d).map_err(|e| e.to_string())?;
        }
        b.raw_json("fact", &e.fact).map_err(|e| e.to_string())?;
        Ok(Request::built(OpKind::Write, b))
    }

    /// Syncs the segment `take_dirty` handed over, outside the queue's mutex.
    fn sync(&self, file: Option<Arc<std::fs::File>>, events: &mut Vec<Event>) {
        if let Some(Err(e)) = file.map(|f| f.sync_data()) {
            events.push(Event::SpoolError {
                operation: SpoolOp::Sync,
                error: e.to_string(),
                count: 1,
            });
        }
    }

    /// The flusher thread.
    pub(super) fn run(&self) {
        let batch_max = self.config.batch.max(1);
        let linger = self.config.linger;
        // The last round sent, its outcomes not yet collected: it waits through the
        // linger window that follows it ([`WriterCore::holds_round`]), so the flusher
        // sleeps once per round (the answers are there when the window ends) instead of
        // once for the answers and once for the window. Collected before the next round
        // and before any other sleep.
        let mut in_flight: Option<Sending> = None;
        loop {
            let seen = self.work.load(Ordering::SeqCst);
            if self.stop.load(Ordering::SeqCst) != RUNNING {
                if let Some(round) = in_flight.take() {
                    self.settle(round);
                }
                return;
            }
            let now = Instant::now();
            let mut st = self.lock();
            self.unpark_syncer(&mut st);
            st.queue.promote_due(now);
            if in_flight.is_some() && !self.holds_round(&st, now) {
                drop(st);
                if let Some(round) = in_flight.take() {
                    self.settle(round);
                }
                continue;
            }
            let mut events = Vec::new();
            if st.spool.is_some() && now >= st.next_adoption {
                self.adopt(&mut st, now, &mut events);
            }
            let paused = st.pause_until.is_some_and(|t| t > now);
            let linger_until = self.linger_until(&mut st, now, paused);
            let batch = if paused || linger_until.is_some() {
                Vec::new()
            } else {
                st.pause_until = None;
                st.linger_from = None;
                st.queue.take_batch(batch_max)
            };
            if batch.is_empty() {
                let mut wake = earliest(st.queue.next_due(), linger_until);
                if paused {
                    wake = earliest(wake, st.pause_until);
                }
                if st.spool.is_some() {
                    wake = earliest(wake, Some(st.next_adoption));
                }
                let sleep = if linger_until.is_some() {
                    LINGERING
                } else {
                    IDLE
                };
                self.sleep.store(sleep, Ordering::SeqCst);
                drop(st);
                self.events.emit(events);
                let timeout = wake.map(|w| w.saturating_duration_since(Instant::now()));
                if timeout != Some(Duration::ZERO) {
                    sys::futex_wait(&self.work, seen, timeout);
                }
                self.sleep.store(AWAKE, Ordering::SeqCst);
                continue;
            }
            drop(st);
            self.events.emit(events);
            in_flight = Some(self.start_round(batch));
            if !linger.is_zero() {
                // The next window starts now: what arrives while it lasts goes out in
                // one round at its end.
                self.lock().linger_from = Some(Instant::now());
            }
        }
    }

    /// Whether the round in flight is left uncollected for now: only through the linger
    /// window that followed it, nothing urgent waiting, and only for a short window (see
    /// [`HOLD_MAX`]).
    fn holds_round(&self, st: &State, now: Instant) -> bool {
        let linger = self.config.linger;
        !linger.is_zero()
            && linger <= HOLD_MAX
            && !self.urgent(st)
            && st.pause_until.is_none_or(|t| t <= now)
            && st.linger_from.is_some_and(|from| now < later(from, linger))
    }

    /// When the flusher should send what is ready, if it is to linger until then rather
    /// than now (see [`WriterConfig::linger`](super::WriterConfig::linger)). Opens a
    /// window for facts found ready outside one; closes a window that ended.
    fn linger_until(&self, st: &mut State, now: Instant, paused: bool) -> Option<Instant> {
        let linger = self.config.linger;
        if paused || linger.is_zero() || self.urgent(st) {
            return None;
        }
        let from = match st.linger_from {
            Some(from) => from,
            None if st.queue.has_ready() => *st.linger_from.insert(now),
            None => return None,
        };
        let until = later(from, linger);
        if now < until {
            return Some(until);
        }
        // Over: what is ready goes now; with nothing, the flusher idles until an enqueue.
        st.linger_from = None;
        None
    }

    /// Sends a round; [`WriterCore::settle`] collects its outcomes.
    fn start_round(&self, batch: Vec<(Key, Arc<Entry>)>) -> Sending {
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
        let round = (!requests.is_empty()).then(|| {
            bump(&self.counters.batches);
            self.sink.start(requests)
        });
        Sending {
            round,
            slots,
            refused,
        }
    }

    /// Waits for a round's outcomes and decides each fact's fate.
    fn settle(&self, sending: Sending) {
        let Sending {
            round,
            slots,
            refused,
        } = sending;
        let outcomes = round.map_or_else(Vec::new, |r| r.finish(&Cancel::new()));
        let mut st = self.lock();
        let mut acks = Vec::new();
        // Dead-lettered facts: acknowledged as dead, not as delivered.
        let mut dead = Vec::new();
        let mut events = Vec::new();
        let queued_before = st.queue.len();
        let now = Instant::now();
        let cfg = &self.config;
        let mut answered = false;
        let mut unreachable: Option<&Outcome> = None;
        for (key, error) in refused {
            if let Some(rec) = st.queue.finish(&key) {
                bump(&self.counters.failed);
                let death = Death {
                    reason: Reason::Error,
                    status: "client_bug",
                    error: &error,
                };
                self.dead_letter(&st, &rec, &death, &mut events);
                dead.extend(rec.loc);
            }
        }
        for (key, outcome) in slots.into_iter().zip(&outcomes) {
            let fate = fate(outcome);
            match fate {
                Fate::Unreachable => {
                    unreachable.get_or_insert(outcome);
                }
                Fate::Interrupted => {}
                _ => answered = true,
            }
            match fate {
                Fate::Delivered { replay } => {
                    acks.extend(st.queue.finish(&key).and_then(|rec| rec.loc));
                    bump(&self.counters.delivered);
                    if replay {
                        bump(&self.counters.replays);
                    }
                }
                Fate::Terminal(reason) => {
                    if let Some(rec) = st.queue.finish(&key) {
                        bump(if reason == Reason::Conflict {
                            &self.counters.conflicts
                        } else {
                            &self.counters.failed
                        });
                        let c = &outcome.classified;
                        let error = c.error.clone().unwrap_or_default();
                        let death = Death {
                            reason,
                            status: c.status.as_str(),
                            error: &error,
                        };
                        self.dead_letter(&st, &rec, &death, &mut events);
                        dead.extend(rec.loc);
                    }
                }
                Fate::Retry => {
                    let attempts = match st.queue.head(&key) {
                        Some(head) => {
                            head.attempts += 1;
                            head.attempts
                        }
                        None => continue,
                    };
                    if attempts >= cfg.retry_attempts.max(1) {
                        if let Some(rec) = st.queue.finish(&key) {
                            bump(&self.counters.dead);
                            let c = &outcome.classified;
                            let error = outcome
                                .transport
                                .as_ref()
                                .map(|t| t.to_string())
                                .or_else(|| c.error.clone())
                                .unwrap_or_default();
                            let death = Death {
                                reason: Reason::Exhausted,
                                status: c.status.as_str(),
                                error: &error,
                            };
                            self.dead_letter(&st, &rec, &death, &mut events);
                            dead.extend(rec.loc);
                        }
                    } else {
                        bump(&self.counters.retries);
                        let sleep = st.jitter(cfg.base_backoff, cfg.max_backoff, attempts);
                        st.queue.delay(key, later(now, sleep));
                    }
                }
                Fate::Unreachable | Fate::Interrupted => st.queue.requeue_front(key),
            }
        }
        if answered {
            st.unreachable_streak = 0;
            if let Some(since) = st.paused_at.take() {
                events.push(Event::Resumed {
                    paused_for: now.saturating_duration_since(since),
                    queued: st.queue.len(),
                });
            }
        } else if st.pause_until.is_none() && st.queue.has_ready() {
            st.unreachable_streak = st.unreachable_streak.saturating_add(1);
            let n = st.unreachable_streak;
            let sleep = st.jitter(cfg.base_backoff, cfg.max_backoff, n);
            st.pause_until = Some(later(now, sleep.max(Duration::from_millis(1))));
            if let (None, Some(o)) = (st.paused_at, unreachable) {
                st.paused_at = Some(now);
                events.push(Event::Paused {
                    status: o.classified.status,
                    error: o
                        .transport
                        .as_ref()
                        .map(|t| t.to_string())
                        .or_else(|| o.classified.error.clone()),
                    queued: st.queue.len(),
                });
            }
        }
        if !acks.is_empty() || !dead.is_empty() {
            if let Some(spool) = st.spool.as_mut() {
                // A lost ack only means a replay after a crash, which the daemon
                // answers idempotently: reported, nothing else to do.
                for acked in [spool.ack(&acks), spool.ack_dead(&dead)] {
                    if let Err(e) = acked {
                        events.push(Event::SpoolError {
                            operation: SpoolOp::Ack,
                            error: e.to_string(),
                            count: 1,
                        });
                    }
                }
            }
        }
        let settled = st.queue.len() < queued_before;
        drop(st);
        // Before the progress wake: a flush that returns has its events queued.
        self.events.emit(events);
        if settled {
            self.progressed();
        }
    }

    /// Takes over the segments of writers that died since the last look.
    fn adopt(&self, st: &mut State, now: Instant, events: &mut Vec<Event>) {
        let every = self
            .config
            .spool
            .as_ref()
            .map_or(Duration::MAX, |s| s.adopt_interval);
        st.next_adoption = later(now, every);
        let Some(spool) = st.spool.as_mut() else {
            return;
        };
        let adopted = spool.adopt_orphans();
        st.adoption_events(events);
        match adopted {
            Ok(adopted) => {
                for (loc, entry) in adopted {
                    st.queue.push(Some(loc), entry);
                    bump(&self.counters.adopted);
                }
            }
            Err(e) => events.push(Event::SpoolError {
                operation: SpoolOp::Adopt,
                error: e.to_string(),
                count: 1,
            }),
        }
    }

    /// The fact in the dead-letter file (with a spool) and its event (no values, no
    /// token).
    fn dead_letter(&self, st: &State, rec: &Rec, death: &Death<'_>, events: &mut Vec<Event>) {
        let e = &rec.entry;
        let mut kept = None;
        let mut failure = None;
        if let Some(spool) = &st.spool {
            let record = DeadLetterRecord {
                at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
                reason: death.reason,
                status: death.status,
                error: death.error,
                attempts: rec.sends,
                store: &e.store,
                key: &e.key,
                id: &e.id,
                durability: e.durability.as_deref(),
                fact: raw_fact(&e.fact),
            };
            match spool.dead_letter(&record.to_line()) {
                Ok(()) => kept = Some(spool.dir().join(DEAD_LETTER_FILE)),
                Err(err) => {
                    failure = Some(Event::SpoolError {
                        operation: SpoolOp::DeadLetter,
                        error: err.to_string(),
                        count: 1,
                    })
                }
            }
        }
        events.push(Event::DeadLetter {
            reason: death.reason,
            status: death.status,
            attempts: rec.sends,
            store: e.store.clone(),
            id: e.id.clone(),
            kept,
        });
        events.extend(failure);
    }
}
