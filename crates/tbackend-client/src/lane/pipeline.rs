//! The pure state of one lane's pipeline: slots, the FIFO that matches answers to them
//! by position, tickets and generations, the oldest answer's deadline, and the reader
//! hand-off. No socket, no clock: the lane owns both and calls in under its mutex.
//!
//! A slot leaves the FIFO only when its answer is read (popped in order) or when the
//! connection is torn down (every slot completed with the error). A caller that gives up
//! marks its slot abandoned and leaves it queued, so its late answer is consumed by it
//! and can never reach the next caller; a cancelled caller only detaches from it and may
//! come back to wait again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{lock, word, Failure};
use crate::error::TransportError;
use crate::sys;

pub(crate) use super::word::{ABANDONED, DONE, LEAD, PARKED};

/// One request's place in a lane's FIFO, and how its caller waits.
pub(crate) struct Slot {
    pub(crate) word: AtomicU32,
    result: Mutex<Option<Result<Vec<u8>, TransportError>>>,
    // Written and read under the lane mutex only.
    generation: AtomicU64,
    ticket: AtomicU64,
    sent_ns: AtomicU64,
    overdue_ns: AtomicU64,
    /// Submitted by a batch (whose caller waits for many answers at once), not by a
    /// single call waiting for its own.
    pub(crate) batched: AtomicBool,
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
            batched: AtomicBool::new(false),
        })
    }

    pub(crate) fn is_done(&self) -> bool {
        self.word.load(Ordering::Acquire) & DONE != 0
    }

    /// Its caller gave up on it: whatever answer comes is dropped.
    pub(crate) fn abandon(&self) {
        self.word.fetch_or(ABANDONED, Ordering::AcqRel);
    }

    /// Marks the caller as sleeping on the word (a follower): completing wakes it, and a
    /// hand-off may pick it.
    pub(crate) fn park(&self) {
        self.word.fetch_or(PARKED, Ordering::AcqRel);
    }

    pub(crate) fn complete(&self, result: Result<Vec<u8>, TransportError>) {
        *lock(&self.result) = Some(result);
        let prev = self.word.fetch_or(DONE, Ordering::AcqRel);
        if prev & PARKED != 0 {
            sys::futex_wake(&self.word, 1);
        }
    }

    /// The result, waiting for it if a reader popped the slot and is about to complete
    /// it (completion happens after the reader drops the lane mutex).
    pub(crate) fn take_when_done(&self) -> Result<Vec<u8>, Failure> {
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

    /// The answer window it was queued with, in ns (for the timeout's text).
    pub(crate) fn window_ns(&self) -> u64 {
        self.overdue_ns
            .load(Ordering::Relaxed)
            .saturating_sub(self.sent_ns.load(Ordering::Relaxed))
    }

    /// When its answer is overdue, in ns since the client's epoch.
    pub(crate) fn overdue_ns(&self) -> u64 {
        self.overdue_ns.load(Ordering::Relaxed)
    }

    /// Its caller stops waiting; see [`word::leave`].
    pub(crate) fn leave(&self, cancelled: bool) -> u32 {
        word::leave(&self.word, cancelled)
    }
}

/// A lane's FIFO of slots for the current connection, matched to answers by position.
#[derive(Default)]
pub(crate) struct Pipeline {
    /// Counts connections of this lane; slots remember theirs.
    generation: u64,
    fifo: VecDeque<Arc<Slot>>,
    /// Tickets of the current connection: a queued slot has `ticket >= popped`.
    pushed: u64,
    popped: u64,
}

impl Pipeline {
    /// Starts the tickets of a new connection (the FIFO was emptied by the teardown of
    /// the previous one).
    pub(crate) fn new_connection(&mut self) {
        debug_assert!(self.fifo.is_empty());
        self.generation += 1;
        self.pushed = 0;
        self.popped = 0;
    }

    /// Connections so far (the current one's number).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn len(&self) -> usize {
        self.fifo.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.fifo.is_empty()
    }

    /// Queues `slot` behind the others, its request written at `sent_ns` and its answer
    /// overdue at `overdue_ns`.
    pub(crate) fn push(&mut self, slot: &Arc<Slot>, sent_ns: u64, overdue_ns: u64) {
        slot.generation.store(self.generation, Ordering::Relaxed);
        slot.ticket.store(self.pushed, Ordering::Relaxed);
        slot.sent_ns.store(sent_ns, Ordering::Relaxed);
        slot.overdue_ns.store(overdue_ns, Ordering::Relaxed);
        self.pushed += 1;
        self.fifo.push_back(slot.clone());
    }

    /// Pairs each answer in `bodies` with the oldest queued slot, in order, into `done`
    /// (to complete once the lane mutex is released). `false` if an answer came with no
    /// request outstanding (the bodies after it are dropped).
    pub(crate) fn match_answers(
        &mut self,
        bodies: &mut Vec<Vec<u8>>,
        done: &mut Vec<(Arc<Slot>, Vec<u8>)>,
    ) -> bool {
        for body in bodies.drain(..) {
            match self.fifo.pop_front() {
                Some(slot) => {
                    self.popped += 1;
                    done.push((slot, body));
                }
                None => return false,
            }
        }
        true
    }

    /// Whether `slot`'s answer has been read (it was popped).
    pub(crate) fn answered(&self, slot: &Slot) -> bool {
        slot.ticket.load(Ordering::Relaxed) < self.popped
    }

    /// Whether `slot` waits in the FIFO of the current connection (given the lane has
    /// one).
    pub(crate) fn holds(&self, slot: &Slot) -> bool {
        slot.generation.load(Ordering::Relaxed) == self.generation
            && slot.ticket.load(Ordering::Relaxed) >= self.popped
    }

    /// How many answers, from the next one on, a batch reader waiting for `slot` and
    /// `more` answers after it may wait for in one go: those due before its own and its
    /// `more`, as far as they all belong to batches. A single call's answer stops the
    /// run, so no single call waits for answers behind its own.
    pub(crate) fn batched_run(&self, slot: &Slot, more: usize) -> usize {
        let ahead = slot.ticket.load(Ordering::Relaxed).saturating_sub(self.popped) as usize;
        self.fifo
            .iter()
            .take(ahead.saturating_add(1).saturating_add(more))
            .take_while(|s| s.batched.load(Ordering::Relaxed))
            .count()
    }

    /// The oldest slot, whose answer comes next.
    pub(crate) fn front(&self) -> Option<&Arc<Slot>> {
        self.fifo.front()
    }

    /// The oldest slot if its answer is overdue at `now_ns`.
    pub(crate) fn overdue(&self, now_ns: u64) -> Option<&Arc<Slot>> {
        self.fifo.front().filter(|s| now_ns >= s.overdue_ns())
    }

    /// Whether some queued slot still has a caller waiting for it.
    pub(crate) fn has_live(&self) -> bool {
        self.fifo
            .iter()
            .any(|s| s.word.load(Ordering::Acquire) & ABANDONED == 0)
    }

    /// Completes every queued slot with `error` (the connection is gone).
    pub(crate) fn fail_all(&mut self, error: &TransportError) {
        for slot in self.fifo.drain(..) {
            slot.complete(Err(error.clone()));
        }
    }

    /// Gives the reader role to the oldest parked follower still waiting, if any: the one
    /// to wake (with [`wake_reader`], after the lane mutex is released).
    pub(crate) fn hand_off(&self) -> Option<Arc<Slot>> {
        self.fifo.iter().find(|s| word::offer_lead(&s.word)).cloned()
    }
}

/// Wakes the follower [`Pipeline::hand_off`] picked, once the lane mutex is released:
/// woken while the mutex is held, it would often preempt the holder and then sleep again
/// on the mutex it needs to take the role (one more thread hop, the costly kind here).
pub(crate) fn wake_reader(next: Option<Arc<Slot>>) {
    if let Some(slot) = next {
        sys::futex_wake(&slot.word, 1);
    }
}

/// Completes the slots [`Pipeline::match_answers`] paired with their answers.
pub(crate) fn complete_all(done: &mut Vec<(Arc<Slot>, Vec<u8>)>) {
    for (slot, body) in done.drain(..) {
        slot.complete(Ok(body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn eof() -> TransportError {
        TransportError::Eof {
            endpoint: Arc::from("127.0.0.1:9"),
        }
    }

    fn body(n: u8) -> Vec<u8> {
        vec![n]
    }

    /// A pipeline on its first connection with `n` slots queued, overdue at 100, 200, ...
    fn queued(n: usize) -> (Pipeline, Vec<Arc<Slot>>) {
        let mut p = Pipeline::default();
        p.new_connection();
        let slots: Vec<_> = (0..n).map(|_| Slot::new()).collect();
        for (i, s) in slots.iter().enumerate() {
            p.push(s, i as u64, 100 * (i as u64 + 1));
        }
        (p, slots)
    }

    #[test]
    fn answers_complete_slots_in_fifo_order() {
        let (mut p, slots) = queued(3);
        assert_eq!(p.len(), 3);
        let mut bodies = vec![body(0), body(1)];
        let mut done = Vec::new();
        assert!(p.match_answers(&mut bodies, &mut done));
        assert!(bodies.is_empty());
        assert_eq!(p.len(), 1);
        assert!(p.answered(&slots[0]) && p.answered(&slots[1]));
        assert!(!p.answered(&slots[2]));
        assert!(Arc::ptr_eq(p.front().unwrap(), &slots[2]));
        // Popped, but not complete until the reader has released the lane mutex.
        assert!(!slots[0].is_done());
        complete_all(&mut done);
        assert!(done.is_empty());
        assert_eq!(slots[0].take_when_done().unwrap(), body(0));
        assert_eq!(slots[1].take_when_done().unwrap(), body(1));
        assert!(!slots[2].is_done());
    }

    #[test]
    fn a_batched_run_stops_at_a_single_call_and_at_the_waiter_s_last_answer() {
        let (mut p, slots) = queued(6);
        for (i, s) in slots.iter().enumerate() {
            s.batched.store(i != 4, Ordering::Relaxed);
        }
        // Waiting for slot 1 and two more: slots 0..=3, all batched.
        assert_eq!(p.batched_run(&slots[1], 2), 4);
        // Slot 4 is a single call's: the run ends before it.
        assert_eq!(p.batched_run(&slots[2], 3), 4);
        assert_eq!(p.batched_run(&slots[0], 0), 1);
        let mut done = Vec::new();
        assert!(p.match_answers(&mut vec![body(0), body(1), body(2), body(3)], &mut done));
        assert_eq!(p.batched_run(&slots[5], 0), 0, "a single call's answer comes first");
    }

    #[test]
    fn an_answer_with_no_request_outstanding_is_refused() {
        let (mut p, slots) = queued(1);
        let mut bodies = vec![body(0), body(1), body(2)];
        let mut done = Vec::new();
        assert!(!p.match_answers(&mut bodies, &mut done));
        assert_eq!(done.len(), 1, "the first answer still belongs to the first slot");
        assert!(Arc::ptr_eq(&done[0].0, &slots[0]));
        assert!(p.is_empty());
    }

    #[test]
    fn a_slot_of_an_older_connection_is_not_held() {
        let (mut p, slots) = queued(2);
        assert!(p.holds(&slots[0]) && p.holds(&slots[1]));
        assert_eq!(p.generation(), 1);
        p.fail_all(&eof());
        assert!(p.is_empty());
        p.new_connection();
        assert_eq!(p.generation(), 2);
        let fresh = Slot::new();
        p.push(&fresh, 0, 100);
        // Same ticket (0) as slots[0], but of generation 1: not in this FIFO.
        assert!(!p.holds(&slots[0]));
        assert!(p.holds(&fresh));
        let mut done = Vec::new();
        assert!(p.match_answers(&mut vec![body(9)], &mut done));
        assert!(!p.holds(&fresh), "popped");
        assert!(p.answered(&fresh));
    }

    #[test]
    fn teardown_fails_every_queued_slot_as_possibly_sent() {
        let (mut p, slots) = queued(2);
        p.fail_all(&eof());
        for s in &slots {
            let f = s.take_when_done().unwrap_err();
            assert!(f.sent);
            assert!(matches!(f.error, TransportError::Eof { .. }));
        }
    }

    #[test]
    fn overdue_is_the_front_slot_past_its_window() {
        let (mut p, slots) = queued(2);
        assert!(p.overdue(99).is_none());
        assert!(Arc::ptr_eq(p.overdue(100).unwrap(), &slots[0]));
        assert_eq!(slots[0].window_ns(), 100);
        assert_eq!(slots[1].window_ns(), 199);
        // Only the front counts: the second slot's window is checked once it is first.
        p.match_answers(&mut vec![body(0)], &mut Vec::new());
        assert!(p.overdue(150).is_none());
        assert!(Arc::ptr_eq(p.overdue(200).unwrap(), &slots[1]));
        p.match_answers(&mut vec![body(1)], &mut Vec::new());
        assert!(p.overdue(u64::MAX).is_none());
    }

    #[test]
    fn abandoned_slots_are_not_live() {
        let (p, slots) = queued(2);
        assert!(p.has_live());
        slots[0].abandon();
        assert!(p.has_live());
        slots[1].leave(false);
        assert!(!p.has_live());
    }

    #[test]
    fn hand_off_picks_the_oldest_parked_follower_still_waiting() {
        let (p, slots) = queued(4);
        assert!(p.hand_off().is_none(), "nobody parked");
        slots[0].park();
        slots[0].abandon();
        slots[1].park();
        slots[1].leave(true); // cancelled: detached, no longer parked
        slots[2].park();
        slots[3].park();
        let next = p.hand_off().expect("slot 2 waits");
        assert!(Arc::ptr_eq(&next, &slots[2]));
        assert_ne!(slots[2].word.load(Ordering::Acquire) & LEAD, 0);
        assert_eq!(slots[3].word.load(Ordering::Acquire) & LEAD, 0);
        wake_reader(Some(next));
    }

    #[test]
    fn a_cancelled_caller_detaches_and_sees_a_lead_it_must_pass_on() {
        let (p, slots) = queued(1);
        slots[0].park();
        p.hand_off().unwrap();
        let prev = slots[0].leave(true);
        assert_ne!(prev & LEAD, 0, "the caller learns it was handed the role");
        let w = slots[0].word.load(Ordering::Acquire);
        assert_eq!(w & (LEAD | PARKED | ABANDONED), 0, "detached, may wait again");
        assert!(p.holds(&slots[0]));
    }

    #[test]
    fn a_done_slot_is_never_handed_the_reader_role() {
        let (mut p, slots) = queued(2);
        slots[0].park();
        slots[1].park();
        let mut done = Vec::new();
        p.match_answers(&mut vec![body(0)], &mut done);
        complete_all(&mut done);
        slots[1].complete(Err(eof()));
        assert!(p.hand_off().is_none());
    }
}
