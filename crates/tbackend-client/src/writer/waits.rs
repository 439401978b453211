//! The waits of a [`Writer`] that a [`Cancel`] only pauses: for room in a full queue,
//! for a flush, for a shutdown's flush.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{bump, Event, Receipt, Refusal, Refused, SpoolOp, Writer};
use crate::cancel::{Cancel, Resumable, Step};
use crate::spool::Entry;

/// An enqueue waiting for room, cut short by its [`Cancel`]; see
/// [`Writer::start_enqueue`]. Dropping it drops the fact.
#[derive(Debug)]
pub struct PausedEnqueue<'w> {
    pub(super) writer: &'w Writer,
    pub(super) entry: Box<Entry>,
    pub(super) deadline: Option<Instant>,
}

impl Resumable for PausedEnqueue<'_> {
    type Output = Result<Receipt, Refused>;
    fn step(self, cancel: &Cancel) -> Step<Self::Output, Self> {
        let PausedEnqueue {
            writer,
            mut entry,
            deadline,
        } = self;
        let sh = &*writer.core;
        loop {
            let seen = sh.progress.load(Ordering::SeqCst);
            match writer.try_enqueue(*entry) {
                Ok(mut receipt) => {
                    if let Some(file) = receipt.sync.take() {
                        if let Err(e) = file.sync_data() {
                            receipt.spool_error = Some(format!("spool fsync failed: {e}"));
                            bump(&sh.counters.spool_errors);
                            sh.events.emit(vec![Event::SpoolError {
                                operation: SpoolOp::Fsync,
                                error: e.to_string(),
                                count: 1,
                            }]);
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
    pub(super) writer: &'w Writer,
    /// Done once every seq below this has a terminal result.
    pub(super) target: u64,
    pub(super) deadline: Option<Instant>,
}

impl Resumable for PausedFlush<'_> {
    type Output = bool;
    fn step(self, cancel: &Cancel) -> Step<bool, Self> {
        let sh = &*self.writer.core;
        loop {
            let seen = sh.progress.load(Ordering::SeqCst);
            if sh.lock().queue.settled_below(self.target) {
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
    pub(super) flush: Option<PausedFlush<'w>>,
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

