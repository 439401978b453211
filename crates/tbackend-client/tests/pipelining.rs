//! Many threads over few connections: every answer reaches its own caller, in order.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tbackend_client::{Cancel, Client, Config, OpKind, Request, Status};
use tbackend_testd::harness::wait_until;

const THREADS: usize = 12;
const PER_THREAD: usize = 150;

/// 12 threads over 1 lane, mixing fresh writes, replays of their own earlier writes and
/// reads of their own keys. Answers carry no request id, so each check below would
/// catch an answer delivered to the wrong caller: a write's seq must map back to its id,
/// a replay must carry the original seq, a read must return the caller's own fact.
#[test]
fn twelve_threads_one_lane_every_answer_is_its_own() {
    let d = start(opts());
    let c = client(&d);
    let max_open = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (ctl, max_open, stop) = (d.control(), max_open.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = ctl.status() {
                    max_open.fetch_max(s.connections_open, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (c, barrier) = (c.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut seqs: Vec<(String, u64)> = Vec::new();
                for i in 0..PER_THREAD {
                    let id = format!("t{t}-{i}");
                    let key = format!("k{t}-{i}");
                    let o = call(&c, &write("pipe", &id, &key, json!({"t": t, "i": i})));
                    assert_status(&o, Status::CommittedAcked);
                    let seq = seq_of(&o);
                    seqs.push((id.clone(), seq));
                    if i % 3 == 0 {
                        let o = call(&c, &latest_for("pipe", &key));
                        assert_status(&o, Status::Ok);
                        assert_eq!(
                            o.classified.answer.value()["fact"]["id"],
                            id.as_str(),
                            "{o:?}"
                        );
                    }
                    if i % 5 == 4 {
                        let (old_id, old_seq) = &seqs[i / 2];
                        let j = i / 2;
                        let o = call(
                            &c,
                            &write(
                                "pipe",
                                old_id,
                                &format!("k{t}-{j}"),
                                json!({"t": t, "i": j}),
                            ),
                        );
                        assert_status(&o, Status::IdempotentReplay);
                        assert_eq!(seq_of(&o), *old_seq, "replay of {old_id}");
                    }
                }
                seqs
            })
        })
        .collect();
    let mut by_seq: HashMap<u64, String> = HashMap::new();
    for h in handles {
        for (id, seq) in h.join().unwrap() {
            assert!(by_seq.insert(seq, id).is_none(), "seq given twice");
        }
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let facts = all_facts(&d, "pipe");
    assert_eq!(facts.len(), THREADS * PER_THREAD);
    for f in &facts {
        let seq = f["seq_id"].as_u64().unwrap();
        assert_eq!(
            f["id"].as_str(),
            by_seq.get(&seq).map(String::as_str),
            "seq {seq}"
        );
    }
    assert!(
        max_open.load(Ordering::Relaxed) <= 1,
        "daemon saw more connections than lanes"
    );
    let stats = c.stats();
    assert_eq!(stats.connections_opened, 1, "{stats:?}");
    assert_eq!(stats.lanes[0].in_flight, 0);
}

/// A batch groups its frames: far fewer socket writes than requests, every one answered.
#[test]
fn call_batch_groups_its_writes() {
    let d = start(opts());
    let c = Client::new(Config {
        max_depth: 256,
        ..config(&d)
    });
    assert_status(&call(&c, &ping()), Status::Ok);
    let before = c.stats().lanes[0].socket_writes;
    let reqs: Vec<_> = (0..1000)
        .map(|i| write("grouped", &format!("g{i}"), &format!("k{i}"), json!(i)))
        .collect();
    let outcomes = c.call_batch(&reqs, None, &Cancel::new());
    assert!(outcomes
        .iter()
        .all(|o| o.classified.status == Status::CommittedAcked));
    let writes = c.stats().lanes[0].socket_writes - before;
    // One write per group of 32 at most, plus the partial writes a full socket forces.
    assert!(
        writes <= 1000 / 32 + 40,
        "{writes} socket writes for 1000 requests"
    );
    assert_eq!(all_facts(&d, "grouped").len(), 1000);
}

/// A batch that must wait for room on a lane full of other callers' requests first sends
/// the frames it queued on the other lanes, instead of holding them while it waits.
#[test]
fn a_batch_waiting_for_room_sends_what_it_queued_elsewhere() {
    let d = start(opts());
    let c = Client::new(Config {
        lanes: 2,
        max_depth: 2,
        ..config(&d)
    });
    let warm = c.call_batch(&[ping(), ping()], None, &Cancel::new());
    assert!(warm.iter().all(|o| o.classified.ok));
    let received = || d.control().status().unwrap().requests_received;
    // Three calls the daemon reads and never answers, routed by least in flight:
    // lane 0, lane 1, lane 0. Lane 0 is then full, lane 1 has room for one.
    d.control().stall(false).unwrap();
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let before = received();
        let c = c.clone();
        stalled.push(std::thread::spawn(move || {
            c.call(&ping(), Some(Duration::from_secs(2)), &Cancel::new())
        }));
        assert!(wait_until(Duration::from_secs(2), || received() > before));
    }
    d.control().unstall().unwrap();
    assert_eq!(c.stats().lanes[0].in_flight, 2);
    assert_eq!(c.stats().lanes[1].in_flight, 1);
    // Request 0 is refused before any lane (a top-level "error" key), request 1 is
    // queued on lane 1, request 2 waits for room on lane 0.
    let refused = Request::new(OpKind::Read, br#"{"op":"ping","error":"x"}"#.to_vec());
    let before = received();
    let batch = {
        let c = c.clone();
        std::thread::spawn(move || {
            c.call_batch(
                &[refused, ping(), ping()],
                Some(Duration::from_millis(800)),
                &Cancel::new(),
            )
        })
    };
    assert!(
        wait_until(Duration::from_millis(500), || received() > before),
        "the frame queued on lane 1 stayed unsent while the batch waited for lane 0"
    );
    let out = batch.join().unwrap();
    assert_eq!(out.len(), 3);
    assert!(
        !out[0].classified.ok && out[0].transport.is_none(),
        "{:?}",
        out[0]
    );
    for s in stalled {
        s.join().unwrap();
    }
}

/// A batch dropped before it finishes (its caller interrupted between steps) still sends
/// what it queued, and its answers go nowhere: the next call gets its own.
#[test]
fn a_dropped_batch_leaves_the_lane_clean() {
    let d = start(opts());
    let c = client(&d);
    let reqs: Vec<_> = (0..100)
        .map(|i| write("dropped", &format!("d{i}"), &format!("k{i}"), json!(i)))
        .collect();
    let mut batch = c.batch(None);
    batch.submit(&reqs, &Cancel::new());
    assert_eq!(batch.len(), 100);
    drop(batch);
    // Nothing else is written to the lane: the drop itself sent the queued frames.
    let until = Instant::now() + Duration::from_secs(3);
    while all_facts(&d, "dropped").len() < 100 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(all_facts(&d, "dropped").len(), 100);
    for i in 0..20 {
        let o = call(&c, &latest_for("dropped", &format!("k{i}")));
        assert_status(&o, Status::Ok);
        assert_eq!(
            o.classified.answer.value()["fact"]["value"],
            json!(i),
            "{o:?}"
        );
    }
    assert_eq!(c.stats().lanes[0].in_flight, 0);
}

/// 1,000 writes in one batch over 2 lanes: outcomes come back in input order.
#[test]
fn call_batch_of_1000_preserves_order() {
    let d = start(opts());
    let c = Client::new(Config {
        lanes: 2,
        max_depth: 64,
        ..config(&d)
    });
    let reqs: Vec<_> = (0..1000)
        .map(|i| {
            if i % 10 == 9 {
                latest_for("batch", &format!("k{}", i - 1))
            } else {
                write("batch", &format!("b{i}"), &format!("k{i}"), json!(i))
            }
        })
        .collect();
    let t0 = Instant::now();
    let outcomes = c.call_batch(&reqs, None, &Cancel::new());
    let elapsed = t0.elapsed();
    assert_eq!(outcomes.len(), 1000);
    let facts = all_facts(&d, "batch");
    let id_of: HashMap<u64, String> = facts
        .iter()
        .map(|f| {
            (
                f["seq_id"].as_u64().unwrap(),
                f["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut lanes_used = [0usize; 2];
    for (i, o) in outcomes.iter().enumerate() {
        lanes_used[o.lane.unwrap()] += 1;
        if i % 10 == 9 {
            // A read issued right after the write on another lane may run before it:
            // it answers the fact or nothing, never another request's answer.
            assert_status(o, Status::Ok);
            let fact = &o.classified.answer.value()["fact"];
            assert!(
                fact.is_null() || fact["id"] == format!("b{}", i - 1),
                "{o:?}"
            );
        } else {
            assert_status(o, Status::CommittedAcked);
            assert_eq!(id_of[&seq_of(o)], format!("b{i}"));
        }
    }
    assert!(
        lanes_used.iter().all(|&n| n > 100),
        "both lanes carry the batch: {lanes_used:?}"
    );
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    assert_eq!(c.stats().connections_opened, 2);
}

/// A request stuck on one lane does not hold up calls another lane can serve.
#[test]
fn a_slow_lane_does_not_stall_the_other() {
    let d = start(opts());
    let c = Client::new(Config {
        lanes: 2,
        ..config(&d)
    });
    // Open both lanes.
    let warm = c.call_batch(&[ping(), ping()], None, &Cancel::new());
    assert!(warm.iter().all(|o| o.classified.ok));
    d.control().stall(false).unwrap();
    let received = d.control().status().unwrap().requests_received;
    let slow = {
        let c = c.clone();
        std::thread::spawn(move || {
            c.call(&ping(), Some(Duration::from_millis(1500)), &Cancel::new())
        })
    };
    // Stalled only once the daemon has read it: unstalling earlier would let it through.
    assert!(wait_until(Duration::from_secs(2), || d
        .control()
        .status()
        .unwrap()
        .requests_received
        > received));
    d.control().unstall().unwrap();
    for _ in 0..20 {
        let t0 = Instant::now();
        let o = call(&c, &ping());
        assert_status(&o, Status::Ok);
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
    }
    let o = slow.join().unwrap();
    assert_status(&o, Status::TimeoutUnknown);
    assert_ne!(o.lane, None);
}

/// A storm of per-call timeouts around the daemon's answer time: many slots are
/// abandoned mid-pipeline, yet every answer a caller does get is its own.
#[test]
fn timeouts_storm_never_misdelivers() {
    let d = start(opts());
    let c = client(&d);
    // The daemon answers one connection's requests one after another, each 1 ms late,
    // so an answer takes 1–4 ms here, around the timeouts drawn below. (Callers faster
    // than the daemon would fill the pipeline with abandoned requests and time out all.)
    d.control().delay(1).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ (t as u64 + 1);
                let (mut answered, mut timed_out) = (0, 0);
                let mut seqs = Vec::new();
                // Timeouts follow the observed answer time (longer after a timeout,
                // shorter after an answer), so about half the calls give up, however
                // fast this machine is today.
                let mut center_us = 2000u64;
                for i in 0..200 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let timeout = Duration::from_micros(center_us / 2 + rng % center_us);
                    let key = format!("s{t}-{}", i / 2);
                    let id = format!("st{t}-{}", i / 2);
                    let req = if i % 2 == 0 {
                        write("storm", &id, &key, json!(i / 2))
                    } else {
                        latest_for("storm", &key)
                    };
                    let o = c.call(&req, Some(timeout), &Cancel::new());
                    match o.classified.status {
                        // Unsent: the deadline passed while another thread connected.
                        Status::TimeoutUnknown | Status::Unavailable => {
                            timed_out += 1;
                            center_us = (center_us * 5 / 4).min(50_000);
                        }
                        Status::CommittedAcked | Status::IdempotentReplay => {
                            answered += 1;
                            center_us = (center_us * 4 / 5).max(300);
                            seqs.push((id, seq_of(&o)));
                        }
                        Status::Ok => {
                            answered += 1;
                            center_us = (center_us * 4 / 5).max(300);
                            let fact = &o.classified.answer.value()["fact"];
                            assert!(fact.is_null() || fact["id"] == id.as_str(), "{o:?}");
                            assert!(o.classified.answer.value().get("seq_id").is_none(), "{o:?}");
                        }
                        other => panic!("{other:?}: {o:?}"),
                    }
                    std::thread::sleep(Duration::from_millis(3));
                }
                (answered, timed_out, seqs)
            })
        })
        .collect();
    let (mut answered, mut timed_out) = (0, 0);
    let mut seqs = Vec::new();
    for h in handles {
        let (a, t, s) = h.join().unwrap();
        answered += a;
        timed_out += t;
        seqs.extend(s);
    }
    assert!(
        answered >= 100 && timed_out >= 100,
        "answered {answered}, timed out {timed_out}"
    );
    d.control().delay(0).unwrap();
    let id_of: HashMap<u64, String> = all_facts(&d, "storm")
        .iter()
        .map(|f| {
            (
                f["seq_id"].as_u64().unwrap(),
                f["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (id, seq) in seqs {
        assert_eq!(id_of.get(&seq), Some(&id));
    }
}

/// A batch waiting for its answers reads them together: the kernel wakes its reader once
/// they are all there (by the shortest answer seen so far), not at each of the three
/// pieces of each answer the real daemon sends.
#[test]
fn a_batch_reads_its_answers_together() {
    const ROUNDS: usize = 5;
    const PER_ROUND: usize = 32;
    let d = start(opts().profile(tbackend_testd::config::Profile::Real));
    let c = Client::new(Config {
        max_depth: 256,
        ..config(&d)
    });
    // The first answers on a connection say how long answers are.
    assert_status(
        &call(&c, &write("gather", "g-warm", "k-warm", json!(0))),
        Status::CommittedAcked,
    );
    let before = lane_reads(&c);
    for r in 0..ROUNDS {
        let reqs: Vec<_> = (0..PER_ROUND)
            .map(|i| {
                write(
                    "gather",
                    &format!("g{r}-{i}"),
                    &format!("k{r}-{i}"),
                    json!(i),
                )
            })
            .collect();
        let outcomes = c.call_batch(&reqs, None, &Cancel::new());
        assert!(
            outcomes
                .iter()
                .all(|o| o.classified.status == Status::CommittedAcked),
            "{outcomes:?}"
        );
    }
    let reads = lane_reads(&c) - before;
    // A read finding nothing yet and one once the answers are in, when the machine
    // keeps up; a busy one adds one for each wait it cuts short (not counted here) and
    // some for answers that trickle in (up to 25 seen beside the other tests of this
    // file); about one per answer when read as they come (140-160).
    assert!(
        reads <= (ROUNDS * PER_ROUND / 4) as u64,
        "{reads} socket reads (short waits not counted) for {ROUNDS} rounds of {PER_ROUND} answers: {:?}",
        c.stats().lanes[0]
    );
    assert_eq!(all_facts(&d, "gather").len(), ROUNDS * PER_ROUND + 1);
}

/// Answers shorter than every answer before (pings after writes) leave a batch's
/// gathering wait short of the bytes it expected: it reads what came at its 2 ms
/// re-check, and every answer still reaches its request.
#[test]
fn a_batch_of_answers_shorter_than_expected_still_completes() {
    let d = start(opts().profile(tbackend_testd::config::Profile::Real));
    let c = Client::new(Config {
        max_depth: 256,
        ..config(&d)
    });
    let writes: Vec<_> = (0..4)
        .map(|i| write("short", &format!("s{i}"), &format!("k{i}"), json!(i)))
        .collect();
    assert!(c
        .call_batch(&writes, None, &Cancel::new())
        .iter()
        .all(|o| o.classified.status == Status::CommittedAcked));
    let mixed: Vec<_> = (0..12)
        .map(|i| {
            if i % 4 == 3 {
                latest_for("short", &format!("k{}", i / 4))
            } else {
                ping()
            }
        })
        .collect();
    let started = Instant::now();
    let outcomes = c.call_batch(&mixed, None, &Cancel::new());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for (i, o) in outcomes.iter().enumerate() {
        assert_status(o, Status::Ok);
        if i % 4 == 3 {
            assert_eq!(
                o.classified.answer.value()["fact"]["id"],
                format!("s{}", i / 4),
                "{o:?}"
            );
        }
    }
}
