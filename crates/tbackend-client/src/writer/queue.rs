//! The per-key queue of a [`Writer`](super::Writer): pure state, no I/O, no clock of
//! its own (callers pass `now`).
//!
//! Facts of one key (store and key) leave one at a time, in enqueue order: the head of
//! a key is *busy* from the moment it is taken for sending until it reaches a terminal
//! result ([`Queue::finish`]), goes back to the front ([`Queue::requeue_front`]) or
//! backs off ([`Queue::delay`]). Keys whose head may be sent wait in `ready`, in the
//! order they became ready; a batch takes at most one fact per key.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::spool::{Entry, Location};

/// One queued fact.
#[derive(Debug)]
pub(super) struct Rec {
    /// Its position in the writer's enqueue order.
    pub seq: u64,
    /// Where the spool keeps it (`None` without a spool, or when the spool failed).
    pub loc: Option<Location>,
    pub entry: Arc<Entry>,
    /// Sends so far.
    pub sends: u32,
    /// Sends that count against `retry_attempts`.
    pub attempts: u32,
}

#[derive(Debug, Default)]
struct KeyQueue {
    recs: VecDeque<Rec>,
    /// The head is in flight or backing off: nothing of this key may be sent.
    busy: bool,
}

/// The queue key of a fact: its store and key.
pub(super) type Key = Arc<str>;

/// Every fact of a writer without a terminal result, by key.
#[derive(Debug, Default)]
pub(super) struct Queue {
    keys: HashMap<Key, KeyQueue>,
    /// Keys whose head may be sent now.
    ready: VecDeque<Key>,
    /// Keys whose head backs off until then.
    delayed: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Facts without a terminal result.
    len: usize,
    /// Their seqs, for `flush`.
    outstanding: BTreeSet<u64>,
    next_seq: u64,
}

impl Queue {
    /// Queues `entry` behind the facts of its key; returns its seq.
    pub fn push(&mut self, loc: Option<Location>, entry: Entry) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key: Key = Arc::from(format!("{}\u{0}{}", entry.store, entry.key));
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
        self.len += 1;
        self.outstanding.insert(seq);
        seq
    }

    /// Facts without a terminal result.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The seq the next fact gets: every fact queued so far is below it.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether every fact below `target` has a terminal result.
    pub fn settled_below(&self, target: u64) -> bool {
        self.outstanding.first().is_none_or(|first| *first >= target)
    }

    /// Whether a key's head may be sent now.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Keys whose head may be sent now: the size of the next batch, were it unbounded.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Whether some key holds facts behind its head: they leave one round each.
    pub fn backlogged(&self) -> bool {
        self.len > self.keys.len()
    }

    /// Moves the keys whose backoff ended by `now` to the ready ones.
    pub fn promote_due(&mut self, now: Instant) {
        while let Some(Reverse((t, _))) = self.delayed.peek() {
            if *t > now {
                break;
            }
            let Reverse((_, key)) = self.delayed.pop().expect("peeked");
            self.ready.push_back(key);
        }
    }

    /// When the earliest backoff ends.
    pub fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes the heads of up to `max` ready keys for sending (each counts a send and
    /// makes its key busy).
    pub fn take_batch(&mut self, max: usize) -> Vec<(Key, Arc<Entry>)> {
        let mut batch = Vec::new();
        while batch.len() < max {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(head) = self.keys.get_mut(&key).and_then(|kq| {
                kq.busy = true;
                kq.recs.front_mut()
            }) else {
                continue;
            };
            head.sends += 1;
            let entry = head.entry.clone();
            batch.push((key, entry));
        }
        batch
    }

    /// The head of `key` reached a terminal result: it leaves, the next fact of the key
    /// may go.
    pub fn finish(&mut self, key: &Key) -> Option<Rec> {
        let kq = self.keys.get_mut(key)?;
        let rec = kq.recs.pop_front()?;
        kq.busy = false;
        if kq.recs.is_empty() {
            self.keys.remove(key);
        } else {
            self.ready.push_back(key.clone());
        }
        self.len -= 1;
        self.outstanding.remove(&rec.seq);
        Some(rec)
    }

    /// The head of `key`.
    pub fn head(&mut self, key: &Key) -> Option<&mut Rec> {
        self.keys.get_mut(key)?.recs.front_mut()
    }

    /// The head of `key` is sent again after `until`; the key stays busy meanwhile.
    pub fn delay(&mut self, key: Key, until: Instant) {
        self.delayed.push(Reverse((until, key)));
    }

    /// The head of `key` goes back to the front: it is the next of its key to be sent,
    /// and its key the next to be taken.
    pub fn requeue_front(&mut self, key: Key) {
        if let Some(kq) = self.keys.get_mut(&key) {
            kq.busy = false;
            self.ready.push_front(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(key: &str, id: &str) -> Entry {
        Entry {
            store: "s".into(),
            key: key.into(),
            id: id.into(),
            durability: None,
            fact: tbackend_core::protocol::request::RawJson::unchecked(Vec::new()),
        }
    }

    fn ids(batch: &[(Key, Arc<Entry>)]) -> Vec<&str> {
        batch.iter().map(|(_, e)| e.id.as_str()).collect()
    }

    #[test]
    fn a_batch_takes_one_fact_per_key_in_ready_order() {
        let mut q = Queue::default();
        for (k, id) in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("c", "c1"), ("b", "b2")] {
            q.push(None, entry(k, id));
        }
        assert_eq!(q.len(), 5);
        let batch = q.take_batch(10);
        assert_eq!(ids(&batch), ["a1", "b1", "c1"]);
        assert!(q.take_batch(10).is_empty(), "every key is busy");
        let rec = q.finish(&batch[1].0).unwrap();
        assert_eq!((rec.entry.id.as_str(), rec.sends), ("b1", 1));
        assert_eq!(ids(&q.take_batch(10)), ["b2"]);
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn a_batch_stops_at_its_maximum_and_leaves_the_rest_ready() {
        let mut q = Queue::default();
        for k in ["a", "b", "c"] {
            q.push(None, entry(k, k));
        }
        assert_eq!(ids(&q.take_batch(2)), ["a", "b"]);
        assert_eq!(ids(&q.take_batch(2)), ["c"]);
    }

    #[test]
    fn a_requeued_head_is_sent_next_and_counts_its_sends() {
        let mut q = Queue::default();
        q.push(None, entry("a", "a1"));
        q.push(None, entry("b", "b1"));
        let batch = q.take_batch(1);
        q.requeue_front(batch[0].0.clone());
        let again = q.take_batch(1);
        assert_eq!(ids(&again), ["a1"]);
        assert_eq!(q.head(&again[0].0).unwrap().sends, 2);
    }

    #[test]
    fn a_delayed_head_waits_for_its_time_and_holds_its_key() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.push(None, entry("a", "a1"));
        q.push(None, entry("a", "a2"));
        let key = q.take_batch(1)[0].0.clone();
        q.delay(key, t0 + Duration::from_millis(10));
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(10)));
        q.promote_due(t0);
        assert!(!q.has_ready() && q.take_batch(5).is_empty(), "a2 waits behind a1");
        q.promote_due(t0 + Duration::from_millis(10));
        assert_eq!(q.next_due(), None);
        assert_eq!(ids(&q.take_batch(5)), ["a1"]);
    }

    #[test]
    fn settled_below_tracks_every_fact_without_a_terminal_result() {
        let mut q = Queue::default();
        assert!(q.settled_below(q.next_seq()));
        for id in ["a1", "a2"] {
            q.push(None, entry("a", id));
        }
        let b = q.push(None, entry("b", "b1"));
        let target = q.next_seq();
        assert_eq!(target, 3);
        let batch = q.take_batch(5);
        let b_key = batch[1].0.clone();
        assert_eq!(q.finish(&b_key).unwrap().seq, b);
        assert!(!q.settled_below(target), "a's facts are out");
        assert!(q.settled_below(0));
        let a_key = batch[0].0.clone();
        q.finish(&a_key);
        q.take_batch(5);
        q.finish(&a_key);
        assert!(q.settled_below(target));
        assert_eq!(q.len(), 0);
        assert!(q.finish(&a_key).is_none(), "a finished key is gone");
    }
}
