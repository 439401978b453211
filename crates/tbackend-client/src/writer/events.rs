//! What a [`Writer`](super::Writer) tells its owner: facts given up, pauses while the
//! daemon is unreachable, spool trouble, segments adopted.
//!
//! An owner that asked for them ([`WriterConfig::queue_events`](super::WriterConfig))
//! drains them ([`Writer::take_events`](super::Writer::take_events), waiting with
//! [`Writer::wait_events`](super::Writer::wait_events)); the Ruby binding publishes
//! them as ActiveSupport notifications. The queue is bounded: past
//! [`Backlog::CAPACITY`] undrained events, later ones are counted, not kept. Without an
//! owner (or once it let go: [`Writer::release_events`](super::Writer::release_events))
//! the events that always reached stderr (dead letters, a failed adoption or dead-letter
//! write) still do, rate-limited: the last resort.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tbackend_core::Status;

use super::dead_letter::Reason;
use super::stderr::StderrLimiter;
use crate::cancel::Cancel;
use crate::sys;

/// The spool operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolOp {
    /// Appending an enqueued fact (it is queued in memory only).
    Write,
    /// The per-fact `fdatasync` of `Fsync::Always`.
    Fsync,
    /// The syncer's `fdatasync` (`Fsync::Batch`).
    Sync,
    /// Recording delivered facts (a crash replays them: the daemon answers replays).
    Ack,
    /// Taking over the segments of dead processes.
    Adopt,
    /// Appending to the dead-letter file.
    DeadLetter,
    /// Closing the spool at shutdown.
    Close,
}

impl SpoolOp {
    /// The name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            SpoolOp::Write => "write",
            SpoolOp::Fsync => "fsync",
            SpoolOp::Sync => "sync",
            SpoolOp::Ack => "ack",
            SpoolOp::Adopt => "adopt",
            SpoolOp::DeadLetter => "dead_letter",
            SpoolOp::Close => "close",
        }
    }
}

/// One thing that happened in the writer. No event carries a fact's values or the token.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A fact given up for good (and, with a spool, kept in the dead-letter file).
    DeadLetter {
        /// Why.
        reason: Reason,
        /// The last answer's status (`client_bug` when no request could be built).
        status: &'static str,
        /// Sends, the first included.
        attempts: u32,
        /// The fact's store.
        store: String,
        /// The fact's id.
        id: String,
        /// The dead-letter file it was appended to, if it was.
        kept: Option<PathBuf>,
    },
    /// The daemon stopped answering: nothing is sent until it does (the waits do not
    /// spend attempts).
    Paused {
        /// `unavailable` or `circuit_open`.
        status: Status,
        /// What the transport said.
        error: Option<String>,
        /// Facts waiting.
        queued: usize,
    },
    /// The daemon answers again after a [`Event::Paused`].
    Resumed {
        /// Since the pause began.
        paused_for: Duration,
        /// Facts waiting.
        queued: usize,
    },
    /// A spool operation failed. Repeats of the same failure not yet drained are
    /// folded into one event.
    SpoolError {
        /// Which.
        operation: SpoolOp,
        /// What the system said.
        error: String,
        /// How many times.
        count: u64,
    },
    /// The segment of a process that died was taken over; its facts are queued.
    Adopted {
        /// The segment (deleted once its facts were copied).
        segment: PathBuf,
        /// Its facts not yet delivered.
        facts: usize,
    },
}

impl Event {
    /// The event's name (the Ruby notification is `<name>.acts_as_tbackend`).
    pub fn name(&self) -> &'static str {
        match self {
            Event::DeadLetter { .. } => "dead_letter",
            Event::Paused { .. } => "writer_paused",
            Event::Resumed { .. } => "writer_resumed",
            Event::SpoolError { .. } => "spool_error",
            Event::Adopted { .. } => "spool_adopt",
        }
    }

    /// Its stderr line when nobody else hears it; `None` for the events that never went
    /// to stderr (the writer's state changes, spool errors that the enqueue's result or
    /// a later retry already covers).
    pub fn stderr_line(&self) -> Option<String> {
        match self {
            Event::DeadLetter {
                reason,
                status,
                attempts,
                store,
                id,
                kept,
            } => Some(format!(
                "acts_as_tbackend: fact not delivered ({}): store={store} id={id} status={status} attempts={attempts}{}",
                reason.as_str(),
                if kept.is_some() {
                    " (kept in the dead-letter file beside the spool)"
                } else {
                    ""
                }
            )),
            Event::SpoolError {
                operation,
                error,
                count,
            } => {
                let what = match operation {
                    SpoolOp::Adopt => "spool adoption failed",
                    SpoolOp::DeadLetter => "dead-letter file not written",
                    _ => return None,
                };
                let times = if *count > 1 {
                    format!(" ({count} times)")
                } else {
                    String::new()
                };
                Some(format!("acts_as_tbackend: {what}: {error}{times}"))
            }
            Event::Paused { .. } | Event::Resumed { .. } | Event::Adopted { .. } => None,
        }
    }
}

/// What [`Writer::take_events`](super::Writer::take_events) hands over.
#[derive(Debug, Default)]
pub struct Drained {
    /// The events, oldest first.
    pub events: Vec<Event>,
    /// Events lost to a full queue since the last drain.
    pub dropped: u64,
    /// The writer is shut down: no event follows these.
    pub closed: bool,
}

/// The undrained events: bounded, folding repeated spool errors, counting what it
/// refuses. Pure.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    queue: VecDeque<Event>,
    dropped: u64,
}

impl Backlog {
    /// Undrained events kept at most.
    pub const CAPACITY: usize = 1024;

    pub fn push(&mut self, event: Event) {
        if let (
            Some(Event::SpoolError {
                operation,
                error,
                count,
            }),
            Event::SpoolError {
                operation: op,
                error: e,
                count: n,
            },
        ) = (self.queue.back_mut(), &event)
        {
            if operation == op && error == e {
                *count += n;
                return;
            }
        }
        if self.queue.len() >= Self::CAPACITY {
            self.dropped += 1;
        } else {
            self.queue.push_back(event);
        }
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.dropped == 0
    }

    fn take(&mut self) -> (Vec<Event>, u64) {
        (
            self.queue.drain(..).collect(),
            std::mem::take(&mut self.dropped),
        )
    }
}

#[derive(Debug, Default)]
struct Inner {
    backlog: Backlog,
    /// An owner drains: events are queued for it rather than written to stderr.
    owned: bool,
    closed: bool,
}

/// The writer's event channel: the backlog, the word a drainer sleeps on, and the
/// stderr of last resort.
#[derive(Debug, Default)]
pub(super) struct Events {
    inner: Mutex<Inner>,
    /// Bumped by every emit to an owner and by close.
    signal: AtomicU32,
    stderr: Mutex<StderrLimiter>,
}

impl Events {
    pub fn new(owned: bool) -> Events {
        Events {
            inner: Mutex::new(Inner {
                owned,
                ..Inner::default()
            }),
            ..Events::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        self.signal.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&self.signal, i32::MAX);
    }

    /// Queues `batch` for the owner, or writes its lines to stderr without one. Called
    /// with no other lock held: a slow stderr never holds up an enqueue.
    pub fn emit(&self, batch: Vec<Event>) {
        if batch.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if inner.owned && !inner.closed {
            for event in batch {
                inner.backlog.push(event);
            }
            drop(inner);
            self.wake();
        } else {
            drop(inner);
            self.write_stderr(batch.iter().filter_map(Event::stderr_line));
        }
    }

    pub fn take(&self) -> Drained {
        let mut inner = self.lock();
        let (events, dropped) = inner.backlog.take();
        Drained {
            events,
            dropped,
            closed: inner.closed,
        }
    }

    /// Sleeps until there is something to take or the writer is shut down (`true`), or
    /// `cancel` (`false`).
    pub fn wait(&self, cancel: &Cancel) -> bool {
        loop {
            let seen = self.signal.load(Ordering::SeqCst);
            {
                let inner = self.lock();
                if inner.closed || !inner.backlog.is_empty() {
                    return true;
                }
            }
            let _armed = cancel.arm(&self.signal, None);
            if cancel.is_cancelled() {
                return false;
            }
            sys::futex_wait(&self.signal, seen, None);
        }
    }

    /// The owner stops draining: what it left, and every later event, goes to stderr.
    pub fn release(&self) {
        let Drained {
            events, dropped, ..
        } = {
            let mut inner = self.lock();
            inner.owned = false;
            let (events, dropped) = inner.backlog.take();
            Drained {
                events,
                dropped,
                closed: inner.closed,
            }
        };
        let lost = (dropped > 0).then(|| {
            format!("acts_as_tbackend: {dropped} async writer event(s) dropped (nobody drained them)")
        });
        self.write_stderr(events.iter().filter_map(Event::stderr_line).chain(lost));
    }

    /// No event follows: a waiting drainer takes what is left and ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake();
    }

    /// Lines on stderr through the rate limiter.
    pub fn write_stderr(&self, lines: impl IntoIterator<Item = String>) {
        let mut lines = lines.into_iter().peekable();
        if lines.peek().is_none() {
            return;
        }
        let mut limiter = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        for line in lines {
            limiter.line(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn spool_error(op: SpoolOp, error: &str) -> Event {
        Event::SpoolError {
            operation: op,
            error: error.into(),
            count: 1,
        }
    }

    fn adopted(n: usize) -> Event {
        Event::Adopted {
            segment: PathBuf::from(format!("seg-{n}")),
            facts: n,
        }
    }

    #[test]
    fn the_backlog_is_bounded_and_counts_what_it_refuses() {
        let mut backlog = Backlog::default();
        for n in 0..Backlog::CAPACITY + 5 {
            backlog.push(adopted(n));
        }
        let (events, dropped) = backlog.take();
        assert_eq!((events.len(), dropped), (Backlog::CAPACITY, 5));
        assert_eq!(events[0], adopted(0), "the oldest are kept");
        assert!(backlog.is_empty());
    }

    #[test]
    fn repeated_spool_errors_fold_into_the_last_undrained_one() {
        let mut backlog = Backlog::default();
        backlog.push(spool_error(SpoolOp::Write, "No space left on device"));
        backlog.push(spool_error(SpoolOp::Write, "No space left on device"));
        backlog.push(spool_error(SpoolOp::Fsync, "No space left on device"));
        backlog.push(spool_error(SpoolOp::Fsync, "No space left on device"));
        backlog.push(adopted(1));
        backlog.push(spool_error(SpoolOp::Fsync, "No space left on device"));
        let (events, _) = backlog.take();
        let counts: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::SpoolError { count, .. } => Some(*count),
                _ => None,
            })
            .collect();
        assert_eq!(counts, [2, 2, 1]);
        // A full backlog still folds a repeat into its last event.
        for n in 0..Backlog::CAPACITY {
            backlog.push(adopted(n));
        }
        backlog.push(spool_error(SpoolOp::Ack, "EIO"));
        backlog.take();
        backlog.push(spool_error(SpoolOp::Ack, "EIO"));
        assert_eq!(backlog.take().0.len(), 1);
    }

    #[test]
    fn only_problems_have_a_stderr_line() {
        let dead = Event::DeadLetter {
            reason: Reason::Conflict,
            status: "duplicate_fact_id_conflict",
            attempts: 1,
            store: "s".into(),
            id: "f1".into(),
            kept: Some(PathBuf::from("/spool/dead-letter.jsonl")),
        };
        assert_eq!(
            dead.stderr_line().unwrap(),
            "acts_as_tbackend: fact not delivered (conflict): store=s id=f1 \
             status=duplicate_fact_id_conflict attempts=1 (kept in the dead-letter file beside the spool)"
        );
        let mut adopt = spool_error(SpoolOp::Adopt, "EACCES");
        if let Event::SpoolError { count, .. } = &mut adopt {
            *count = 3;
        }
        assert_eq!(
            adopt.stderr_line().unwrap(),
            "acts_as_tbackend: spool adoption failed: EACCES (3 times)"
        );
        assert_eq!(spool_error(SpoolOp::Write, "ENOSPC").stderr_line(), None);
        assert_eq!(adopted(1).stderr_line(), None);
    }

    #[test]
    fn a_drainer_wakes_for_an_event_for_close_and_for_a_cancel() {
        let events = Arc::new(Events::new(true));
        let e2 = events.clone();
        let waiter = std::thread::spawn(move || {
            let woke = e2.wait(&Cancel::new());
            (woke, e2.take())
        });
        std::thread::sleep(Duration::from_millis(30));
        events.emit(vec![adopted(1)]);
        let (woke, drained) = waiter.join().unwrap();
        assert!(woke && !drained.closed);
        assert_eq!(drained.events, [adopted(1)]);

        let cancel = Arc::new(Cancel::new());
        let (e2, c2) = (events.clone(), cancel.clone());
        let waiter = std::thread::spawn(move || e2.wait(&c2));
        std::thread::sleep(Duration::from_millis(30));
        let t0 = Instant::now();
        cancel.cancel();
        assert!(!waiter.join().unwrap(), "cancelled");
        assert!(t0.elapsed() < Duration::from_secs(1));

        events.emit(vec![adopted(2)]);
        events.close();
        assert!(events.wait(&Cancel::new()));
        let drained = events.take();
        assert!(drained.closed);
        assert_eq!(drained.events, [adopted(2)], "what came before the close");
        assert!(events.wait(&Cancel::new()), "a closed channel never blocks");
        events.emit(vec![adopted(3)]);
        assert!(events.take().events.is_empty(), "after the close: stderr");
    }

    #[test]
    fn without_an_owner_nothing_is_queued() {
        let events = Events::new(false);
        events.emit(vec![adopted(1), spool_error(SpoolOp::Write, "x")]);
        assert!(events.take().events.is_empty());
        let owned = Events::new(true);
        owned.emit(vec![adopted(1)]);
        owned.release();
        owned.emit(vec![adopted(2)]);
        assert!(owned.take().events.is_empty(), "released: nothing waits");
    }
}
