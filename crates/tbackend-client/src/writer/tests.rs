//! The writer end to end, through a scripted [`Sink`].

use super::*;
use crate::error::TransportError;
use crate::spool::{decode_segment, pending_facts, DEAD_LETTER_FILE};
use std::collections::BTreeSet;
use std::collections::HashMap as Map;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Condvar;
use tbackend_core::protocol::request::RawJson;
use tbackend_core::{Classified, Status};

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
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
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
        fact: RawJson::unchecked(
            format!(r#"{{"id":"{id}","store":"s","key":"{key}","value":1}}"#).into_bytes(),
        ),
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
    // Most gaps, not all: on a loaded machine a flusher can be descheduled for tens of
    // ms, which says nothing about the backoff it chose. A cap ignored would put most
    // gaps past it.
    let slack = Duration::from_millis(30);
    for (attempt, gs) in &gaps {
        let cap =
            (Duration::from_millis(5) * 2u32.pow(attempt - 1)).min(Duration::from_millis(40));
        let within = gs.iter().filter(|g| **g <= cap + slack).count();
        assert!(within * 10 >= gs.len() * 8, "attempt {attempt}: {gs:?}");
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
        queue_events: true,
        ..fast()
    };
    let sink = Scripted::new(|_, _| Status::CommittedAcked);
    let w = Writer::start(sink.clone(), config).unwrap();
    // Another process's spool: alive (locked) while it holds facts, then gone.
    let (mut other, _) = Spool::open(&dir, 1 << 20, Fsync::Batch).unwrap();
    let orphan = other.segment_paths()[0].clone();
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
    let adopted = Event::Adopted {
        segment: orphan,
        facts: 3,
    };
    assert_eq!(w.take_events().events, [adopted]);
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
    let core = w.core.clone();
    let guard = core.lock();
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

/// `Fsync::Batch` bounds what a power loss takes to the facts of the last interval even
/// while the flusher waits on a daemon that does not answer (it may wait a whole request
/// timeout): facts enqueued meanwhile are synced within the interval, though not at once.
#[test]
fn fsync_batch_syncs_waiting_facts_while_the_flusher_is_stuck() {
    let dir = tempdir("batch");
    let mut spool = SpoolConfig::new(&dir);
    spool.fsync_interval = Duration::from_millis(400);
    let config = WriterConfig {
        spool: Some(spool),
        linger: Duration::ZERO,
        ..fast()
    };
    let sink = Scripted::new(|_, _| Status::CommittedAcked);
    sink.hold();
    let w = Writer::start(sink.clone(), config).unwrap();
    let start = Instant::now();
    put(&w, "k", "a");
    // The flusher takes "a" and waits in the held sink; "b" comes meanwhile.
    assert!(wait(|| w.core.lock().queue.ready_len() == 0));
    put(&w, "k2", "b");
    assert!(unsynced(&w).is_some(), "a and b wait unsynced");
    assert!(wait(|| unsynced(&w).is_none()), "synced while the flusher is stuck");
    // Not at once: the first fact had waited half the interval undelivered.
    assert!(start.elapsed() >= Duration::from_millis(200), "synced at once");
    assert!(sink.sent_ids().is_empty(), "nothing delivered yet");
    sink.release();
    assert!(flushed(&w));
    drop(w);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Under `Fsync::Batch` an idle writer's syncer sleeps until facts come: no wake-ups
/// every half interval while there is nothing to sync. The flusher wakes it when facts
/// are queued, and those are still synced within the interval though the flusher then
/// waits on a daemon that does not answer.
#[test]
fn fsync_batch_syncer_sleeps_while_idle_and_wakes_for_facts() {
    let dir = tempdir("batch-idle");
    let mut spool = SpoolConfig::new(&dir);
    spool.fsync_interval = Duration::from_millis(40);
    let config = WriterConfig {
        spool: Some(spool),
        ..fast()
    };
    let sink = Scripted::new(|_, _| Status::CommittedAcked);
    let w = Writer::start(sink.clone(), config).unwrap();
    let looks = |w: &Writer| w.core.lock().syncer_looks;
    let parked = |w: &Writer| w.core.lock().syncer_parked;
    assert!(wait(|| parked(&w)), "an idle writer's syncer parks");
    let before = looks(&w);
    std::thread::sleep(Duration::from_millis(300));
    // Looking every 20 ms it would have looked 15 times.
    let idle = looks(&w);
    assert!(idle <= before + 1, "{} looks while idle", idle - before);

    // A delivered fact: the syncer wakes, and parks again once it is delivered.
    put(&w, "k", "a");
    assert!(flushed(&w));
    assert!(wait(|| looks(&w) > idle && parked(&w)), "parks again after a delivery");

    // The flusher waits in a held sink; "d" comes meanwhile. Both are synced.
    sink.hold();
    let start = Instant::now();
    put(&w, "k", "c");
    assert!(wait(|| w.core.lock().queue.ready_len() == 0));
    put(&w, "k2", "d");
    assert!(!parked(&w), "facts are queued");
    assert!(wait(|| unsynced(&w).is_none()), "synced while the flusher is stuck");
    assert!(start.elapsed() >= Duration::from_millis(20), "synced at once");
    sink.release();
    assert!(flushed(&w));
    assert!(wait(|| parked(&w)), "parks again once all is delivered");
    drop(w);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// When the oldest fact the spool has not synced was appended (`None`: none waits).
fn unsynced(w: &Writer) -> Option<Instant> {
    w.core.lock().spool.as_ref().unwrap().oldest_unsynced()
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

fn dead_letter_events(w: &Writer) -> Vec<(dead_letter::Reason, &'static str, u32, String, bool)> {
    w.take_events()
        .events
        .into_iter()
        .filter_map(|e| match e {
            Event::DeadLetter {
                reason,
                status,
                attempts,
                id,
                kept,
                ..
            } => Some((reason, status, attempts, id, kept.is_some())),
            _ => None,
        })
        .collect()
}

#[test]
fn facts_given_up_are_dead_letter_events_naming_where_they_are_kept() {
    use dead_letter::Reason;
    let dir = tempdir("dead-events");
    let sink = Scripted::new(|id, _| match id {
        "conflict" => Status::DuplicateFactIdConflict,
        "doomed" => Status::TimeoutUnknown,
        "error" => Status::Error,
        _ => Status::CommittedAcked,
    });
    let config = WriterConfig {
        retry_attempts: 2,
        spool: Some(SpoolConfig::new(&dir)),
        queue_events: true,
        ..fast()
    };
    let w = Writer::start(sink, config).unwrap();
    for id in ["conflict", "doomed", "error", "fine"] {
        put(&w, id, id);
    }
    assert!(flushed(&w), "a flush that returns has its events queued");
    let mut dead = dead_letter_events(&w);
    dead.sort_by(|a, b| a.3.cmp(&b.3));
    assert_eq!(
        dead,
        [
            (Reason::Conflict, "duplicate_fact_id_conflict", 1, "conflict".into(), true),
            (Reason::Exhausted, "timeout_unknown", 2, "doomed".into(), true),
            (Reason::Error, "error", 1, "error".into(), true),
        ]
    );
    let drained = w.take_events();
    assert!(drained.events.is_empty() && drained.dropped == 0 && !drained.closed);
    assert!(w.shutdown(Duration::from_secs(1), &Cancel::new()));
    assert!(w.take_events().closed, "shut down: no event follows");
    assert!(w.wait_events(&Cancel::new()), "a closed writer never blocks a drainer");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_fact_no_encoder_vouched_for_is_checked_at_send_and_an_encoded_one_is_not() {
    use dead_letter::Reason;
    let sink = Scripted::new(|_, _| Status::CommittedAcked);
    let config = WriterConfig {
        queue_events: true,
        ..fast()
    };
    let w = Writer::start(sink.clone(), config).unwrap();
    let spliced = |id: &str| format!(r#"{{"id":"{id}"}},"error":1"#).into_bytes();
    for (id, fact) in [
        ("unchecked", RawJson::unchecked(spliced("unchecked"))),
        ("encoded", RawJson::encoded(spliced("encoded"))),
    ] {
        let e = Entry {
            fact,
            ..entry(id, id)
        };
        w.try_enqueue(e).expect("queued");
    }
    assert!(flushed(&w));
    assert_eq!(
        dead_letter_events(&w),
        [(Reason::Error, "client_bug", 1, "unchecked".into(), false)],
        "bytes from anywhere are parsed before they go into a request"
    );
    assert_eq!(
        sink.sent_ids(),
        ["encoded"],
        "bytes an encoder vouched for are sent as they are, without a parse"
    );
    assert!(w.shutdown(Duration::from_secs(1), &Cancel::new()));
}

#[test]
fn a_dead_letter_file_that_cannot_be_written_is_a_spool_error_event() {
    let dir = tempdir("dead-unwritable");
    // A directory where the file should be: the append fails, even for root.
    std::fs::create_dir_all(dir.join(DEAD_LETTER_FILE)).unwrap();
    let config = WriterConfig {
        spool: Some(SpoolConfig::new(&dir)),
        queue_events: true,
        ..fast()
    };
    let w = Writer::start(
        Scripted::new(|_, _| Status::DuplicateFactIdConflict),
        config,
    )
    .unwrap();
    put(&w, "k", "a");
    assert!(flushed(&w));
    let events = w.take_events().events;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(&events[0], Event::DeadLetter { id, kept: None, .. } if id == "a"));
    assert!(
        matches!(&events[1], Event::SpoolError { operation: SpoolOp::DeadLetter, count: 1, .. }),
        "{events:?}"
    );
    drop(w);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreachable_daemon_is_one_pause_and_one_resume() {
    let sink = Scripted::new(|_, n| {
        if n <= 6 {
            Status::Unavailable
        } else {
            Status::CommittedAcked
        }
    });
    let config = WriterConfig {
        queue_events: true,
        ..fast()
    };
    let w = Writer::start(sink.clone(), config).unwrap();
    // One fact: every round is that fact alone, whatever the scheduling.
    put(&w, "a", "x");
    assert!(flushed(&w));
    let events = w.take_events().events;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        matches!(events[0], Event::Paused { status: Status::Unavailable, queued: 1, .. }),
        "{events:?}"
    );
    assert!(matches!(events[1], Event::Resumed { queued: 0, .. }), "{events:?}");
    assert_eq!(sink.sends_of("x"), 7, "paused for several rounds");
}

#[test]
fn events_queued_for_an_owner_that_let_go_are_not_kept() {
    let config = WriterConfig {
        queue_events: true,
        ..fast()
    };
    let w = Writer::start(
        Scripted::new(|_, _| Status::DuplicateFactIdConflict),
        config,
    )
    .unwrap();
    put(&w, "k", "a");
    assert!(flushed(&w));
    // Its dead letter goes to stderr now, as do later ones.
    w.release_events();
    put(&w, "k", "b");
    assert!(flushed(&w));
    assert!(w.take_events().events.is_empty());
    assert_eq!(w.stats().conflicts, 2);
}

/// A window no test outlasts: whatever goes out went out because it had to.
fn lingering(config: WriterConfig) -> WriterConfig {
    WriterConfig {
        linger: Duration::from_secs(60),
        ..config
    }
}

#[test]
fn a_partial_batch_lingers_but_flush_and_shutdown_send_it_at_once() {
    let sink = Scripted::new(|_, _| Status::CommittedAcked);
    let w = Writer::start(sink.clone(), lingering(fast())).unwrap();
    put(&w, "a", "a1");
    put(&w, "b", "b1");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(w.stats().batches, 0, "held for the window");
    let t0 = Instant::now();
    assert!(flushed(&w));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(*sink.batches.lock().unwrap(), [vec!["a1", "b1"]]);
    // The flush is over: later facts linger again, until the shutdown's flush.
    put(&w, "a", "a2");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(w.stats().batches, 1);
    let t0 = Instant::now();
    assert!(w.shutdown(Duration::from_secs(30), &Cancel::new()));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(w.stats().batches, 2);
    assert_eq!(sink.sent_ids(), ["a1", "b1", "a2"]);
}

#[test]
fn a_full_batch_and_a_half_full_queue_go_without_lingering() {
    let sink = Scripted::new(|_, _| Status::CommittedAcked);
    let config = lingering(WriterConfig {
        batch: 3,
        ..fast()
    });
    let w = Writer::start(sink.clone(), config).unwrap();
    for k in ["a", "b", "c"] {
        put(&w, k, k);
    }
    assert!(wait(|| w.stats().delivered == 3), "{:?}", w.stats());
    // Two ready keys: no batch of 3 yet.
    put(&w, "d", "d1");
    put(&w, "e", "e1");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(w.stats().delivered, 3);
    drop(w);

    let sink = Scripted::new(|_, _| Status::CommittedAcked);
    let config = lingering(WriterConfig {
        queue_size: 4,
        ..fast()
    });
    let w = Writer::start(sink.clone(), config).unwrap();
    put(&w, "a", "a1");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(w.stats().batches, 0);
    // Half full: an enqueue would soon wait for room.
    put(&w, "b", "b1");
    assert!(wait(|| w.stats().delivered == 2), "{:?}", w.stats());
}

#[test]
fn a_busy_key_does_not_wait_for_the_window_per_fact() {
    let sink = Scripted::new(|_, _| Status::CommittedAcked);
    let w = Writer::start(sink.clone(), lingering(fast())).unwrap();
    for id in ["a1", "a2", "a3"] {
        put(&w, "a", id);
    }
    // a1 and a2 each have a fact behind them; a3, alone, lingers.
    assert!(wait(|| w.stats().delivered == 2), "{:?}", w.stats());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(sink.sent_ids(), ["a1", "a2"]);
    assert!(flushed(&w));
    assert_eq!(sink.sent_ids(), ["a1", "a2", "a3"]);
}

#[test]
fn without_linger_every_fact_goes_as_soon_as_the_flusher_sees_it() {
    let sink = Scripted::new(|_, _| Status::CommittedAcked);
    let config = WriterConfig {
        linger: Duration::ZERO,
        ..fast()
    };
    let w = Writer::start(sink.clone(), config).unwrap();
    put(&w, "a", "a1");
    assert!(wait(|| w.stats().delivered == 1), "{:?}", w.stats());
    assert_eq!(w.stats().batches, 1);
}
