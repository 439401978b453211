//! Every control-port fault knob, and the status counters.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tbackend_core::protocol::frame::{crc32, encode};
use tbackend_testd::control::AnswerFault;
use tbackend_testd::harness::TestDaemon;
use tbackend_testd::wire::Conn;

fn ping() -> Value {
    json!({"op": "ping"})
}

fn size(d: &TestDaemon, store: &str) -> u64 {
    d.connect()
        .unwrap()
        .call(&json!({"op": "size", "store": store}))
        .unwrap()["size"]
        .as_u64()
        .unwrap()
}

/// Reads one frame without checking its CRC: (body, crc_ok).
fn read_frame_raw(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(header) as usize + 4];
    s.read_exact(&mut rest).unwrap();
    let (body, trailer) = rest.split_at(rest.len() - 4);
    let ok = crc32(body).to_be_bytes() == trailer;
    (body.to_vec(), ok)
}

fn raw_conn(d: &TestDaemon) -> TcpStream {
    let s = TcpStream::connect(d.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn delay_every_answer() {
    let d = TestDaemon::start(opts());
    let ctl = d.control();
    let mut c = d.connect().unwrap();
    ctl.delay(150).unwrap();
    let t0 = Instant::now();
    assert_eq!(c.call(&ping()).unwrap()["pong"], true);
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t0.elapsed()
    );
    ctl.clear().unwrap();
    let t0 = Instant::now();
    c.call(&ping()).unwrap();
    assert!(t0.elapsed() < Duration::from_millis(100));
}

#[test]
fn overload_limiter_with_exec_delay() {
    let d = TestDaemon::start(opts().max_inflight(1));
    d.control().exec_delay(400).unwrap();
    let mut slow = d.connect().unwrap();
    slow.send(&ping()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut other = d.connect().unwrap();
    let t0 = Instant::now();
    let a = other.call(&ping()).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "rejected at once"
    );
    assert_eq!(
        a,
        json!({"committed": false, "error": "TBackend overloaded: max in-flight request limit reached",
               "error_code": "overloaded", "max_inflight_requests": 1, "ok": false, "retryable": true})
    );
    assert_eq!(slow.recv().unwrap()["pong"], true);
    d.control().clear().unwrap();
    // The connection stays open and the limiter lets requests through again.
    assert_eq!(other.call(&ping()).unwrap()["pong"], true);
    let m = other.call(&json!({"op": "metrics"})).unwrap();
    assert_eq!(m["overload_rejections"], 1);
}

#[test]
fn exec_cost_burns_cpu_per_request() {
    let d = TestDaemon::start(opts());
    let mut c = d.connect().unwrap();
    d.control().set(json!({"exec_cost_us": 20_000})).unwrap();
    let t0 = Instant::now();
    for _ in 0..5 {
        c.call(&ping()).unwrap();
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "5 × 20 ms of work"
    );
    assert_eq!(
        d.control().status().unwrap().raw["faults"]["exec_cost_us"],
        20_000
    );
    d.control().clear().unwrap();
    // Cleared: five pings take less than the 100 ms of CPU they cost with the knob (a
    // bound on the five, not on one: on a loaded machine one ping can take 15 ms).
    let t0 = Instant::now();
    for _ in 0..5 {
        c.call(&ping()).unwrap();
    }
    assert!(t0.elapsed() < Duration::from_millis(100), "cleared");
}

#[test]
fn stall_before_exec_drops_requests() {
    let d = TestDaemon::start(opts());
    let ctl = d.control();
    ctl.stall(false).unwrap();
    let mut c = d.connect().unwrap();
    c.send(&wfo("st", "st:1", "k", json!(1), 1.0)).unwrap();
    c.set_timeout(Duration::from_millis(300)).unwrap();
    assert!(c.recv().is_err(), "no answer while stalled");
    ctl.unstall().unwrap();
    assert_eq!(
        size(&d, "st"),
        0,
        "a stalled request before execution did nothing"
    );
    // The stalled request is never answered; the next one is.
    c.set_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(c.call(&ping()).unwrap()["pong"], true);
    assert!(ctl.status().unwrap().requests_received >= 2);
}

#[test]
fn stall_after_exec_executes_without_answer() {
    let d = TestDaemon::start(opts());
    let ctl = d.control();
    ctl.stall(true).unwrap();
    let mut c = d.connect().unwrap();
    c.send(&wfo("st", "st:1", "k", json!(1), 1.0)).unwrap();
    c.set_timeout(Duration::from_millis(300)).unwrap();
    assert!(c.recv().is_err());
    ctl.unstall().unwrap();
    assert_eq!(size(&d, "st"), 1, "executed although unanswered");
    // The retry of an unknown outcome is a replay.
    let a = d
        .connect()
        .unwrap()
        .call(&wfo("st", "st:1", "k", json!(1), 1.0))
        .unwrap();
    assert_eq!(a["idempotent_replay"], true);
}

#[test]
fn close_after_n_requests() {
    let d = TestDaemon::start(opts());
    d.control().close_after(2).unwrap();
    let mut c = d.connect().unwrap();
    c.call(&ping()).unwrap();
    c.call(&ping()).unwrap();
    c.send(&wfo("ca", "ca:1", "k", json!(1), 1.0)).unwrap();
    let e = c.recv().unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
        ),
        "{e}"
    );
    assert_eq!(size(&d, "ca"), 0, "the struck request was not executed");
    // One-shot: later connections are served.
    assert_eq!(d.connect().unwrap().call(&ping()).unwrap()["pong"], true);
    assert_eq!(
        d.control().status().unwrap().raw["faults"]["answer_faults_applied"],
        1
    );
}

#[test]
fn close_mid_frame() {
    let d = TestDaemon::start(opts());
    d.control()
        .answer_fault(AnswerFault::CloseMidFrame, 0, 1, true)
        .unwrap();
    let mut s = raw_conn(&d);
    s.write_all(
        &encode(
            &serde_json::to_vec(&wfo("cm", "cm:1", "k", json!(1), 1.0)).unwrap(),
            1 << 20,
        )
        .unwrap(),
    )
    .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let full = encode(br#"{"committed":true,"durability":"accepted","idempotent_replay":false,"ok":true,"seq_id":1}"#, 1 << 20).unwrap();
    assert_eq!(
        got,
        full[..full.len() / 2],
        "half of the answer frame, then EOF"
    );
    assert_eq!(size(&d, "cm"), 1, "executed");
}

#[test]
fn bad_crc_answer_keeps_the_connection() {
    let d = TestDaemon::start(opts());
    d.control()
        .answer_fault(AnswerFault::BadCrc, 1, 1, true)
        .unwrap();
    let mut s = raw_conn(&d);
    let ping_frame = encode(br#"{"op":"ping"}"#, 100).unwrap();
    let mut crc_ok = Vec::new();
    for _ in 0..3 {
        s.write_all(&ping_frame).unwrap();
        let (body, ok) = read_frame_raw(&mut s);
        assert_eq!(body, br#"{"ok":true,"pong":true}"#);
        crc_ok.push(ok);
    }
    assert_eq!(crc_ok, [true, false, true]);
    // The client's codec reports it as a broken frame.
    d.control()
        .answer_fault(AnswerFault::BadCrc, 0, 1, true)
        .unwrap();
    let e = d.connect().unwrap().call(&ping()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
}

#[test]
fn garbage_answer() {
    let d = TestDaemon::start(opts());
    d.control()
        .garbage(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        .unwrap();
    let mut s = raw_conn(&d);
    s.write_all(&encode(br#"{"op":"ping"}"#, 100).unwrap())
        .unwrap();
    let mut got = [0u8; 28];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 400 Bad Request\r\n\r\n");
    // Default garbage: a header announcing ~3.7 GB, which a capped client refuses.
    d.control()
        .answer_fault(AnswerFault::Garbage, 0, 1, true)
        .unwrap();
    s.write_all(&encode(br#"{"op":"ping"}"#, 100).unwrap())
        .unwrap();
    let mut got = vec![0u8; tbackend_testd::faults::DEFAULT_GARBAGE.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, tbackend_testd::faults::DEFAULT_GARBAGE);
    // Still open, next answer is clean.
    s.write_all(&encode(br#"{"op":"ping"}"#, 100).unwrap())
        .unwrap();
    assert!(read_frame_raw(&mut s).1);
}

#[test]
fn refuse_connections_then_rebind_same_port() {
    let d = TestDaemon::start(opts());
    let mut held = d.connect().unwrap();
    d.control().refuse_connections(true).unwrap();
    let e = TcpStream::connect(d.addr()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    assert!(!d.control().status().unwrap().listening);
    assert_eq!(
        held.call(&ping()).unwrap()["pong"],
        true,
        "open connections keep working"
    );
    d.control().clear().unwrap();
    assert_eq!(d.connect().unwrap().call(&ping()).unwrap()["pong"], true);
}

#[test]
fn fail_durable_sync_globally() {
    let d = TestDaemon::start(opts().temp_data_dir());
    d.control().fail_durable_sync(true).unwrap();
    let mut c = d.connect().unwrap();
    let mut req = wfo("fd", "fd:1", "k", json!(1), 1.0);
    req["durability"] = json!("durable");
    let a = c.call(&req).unwrap();
    assert_eq!(
        a,
        json!({"committed": false, "durability": "accepted", "error": "durable sync failed: injected fdatasync fault",
               "idempotent_replay": false, "ok": false, "retryable": true, "seq_id": 1})
    );
    let mut other = wfo("fd2", "fd2:1", "k", json!(1), 1.0);
    other["durability"] = json!("durable");
    assert_eq!(
        c.call(&other).unwrap()["error"],
        "durable sync failed: injected fdatasync fault",
        "every store"
    );
    d.control().fail_durable_sync(false).unwrap();
    let a = c.call(&req).unwrap();
    assert_eq!(
        (
            &a["ok"],
            &a["durability"],
            &a["idempotent_replay"],
            &a["seq_id"]
        ),
        (&json!(true), &json!("durable"), &json!(true), &json!(1))
    );
}

#[test]
fn drop_connections_cuts_everything() {
    let d = TestDaemon::start(opts().pool_size(1));
    let mut a = d.connect().unwrap();
    a.call(&ping()).unwrap();
    let mut b = d.connect().unwrap(); // queued behind a
    wait_until(Duration::from_secs(2), || {
        d.control().status().unwrap().connections_queued == 1
    });
    assert_eq!(d.control().drop_connections().unwrap(), 2);
    assert!(a.wait_closed(Duration::from_secs(2)).is_ok());
    assert!(b.wait_closed(Duration::from_secs(2)).is_ok());
    wait_open_connections(&d, 0);
}

#[test]
fn status_counts_connections_and_requests() {
    let d = TestDaemon::start(opts().pool_size(2));
    let ctl = d.control();
    let s0 = ctl.status().unwrap();
    assert_eq!(
        (
            s0.connections_accepted,
            s0.connections_open,
            s0.requests_received
        ),
        (0, 0, 0)
    );
    let mut a = d.connect().unwrap();
    let mut b = d.connect().unwrap();
    a.call(&ping()).unwrap();
    b.call(&ping()).unwrap();
    b.call(&ping()).unwrap();
    let _c = d.connect().unwrap();
    assert!(wait_until(Duration::from_secs(2), || ctl
        .status()
        .unwrap()
        .connections_accepted
        == 3));
    let s = ctl.status().unwrap();
    assert_eq!(
        (
            s.connections_open,
            s.connections_active,
            s.connections_queued,
            s.requests_received,
            s.requests_answered
        ),
        (3, 2, 1, 3, 3)
    );
    drop(a);
    assert!(wait_until(Duration::from_secs(2), || {
        let s = ctl.status().unwrap();
        (
            s.connections_open,
            s.connections_active,
            s.connections_queued,
        ) == (2, 2, 0)
    }));
}

#[test]
fn clear_resets_every_fault() {
    let d = TestDaemon::start(opts());
    let ctl = d.control();
    ctl.set(json!({"delay_ms": 1000, "exec_delay_ms": 1000, "stall": "after_exec", "fail_durable_sync": true,
                   "refuse_connections": true, "answer_fault": {"kind": "garbage", "count": 0},
                   "visibility_lag": {"every": 1, "lag_ms": 60000}, "skip_seq": {"every": 1}}))
        .unwrap();
    let bad = ctl.set(json!({"no_such_fault": 1})).unwrap_err();
    assert!(bad.to_string().contains("unknown fault field"), "{bad}");
    ctl.clear().unwrap();
    let f = &ctl.status().unwrap().raw["faults"];
    assert_eq!(
        (
            f["delay_ms"].clone(),
            f["exec_delay_ms"].clone(),
            f["stall"].clone(),
            f["fail_durable_sync"].clone(),
            f["refuse_connections"].clone(),
            f["answer_fault"].clone(),
            f["visibility_lag"].clone(),
            f["skip_seq"].clone()
        ),
        (
            json!(0),
            json!(0),
            json!("off"),
            json!(false),
            json!(false),
            Value::Null,
            Value::Null,
            Value::Null
        )
    );
    let t0 = Instant::now();
    let mut c = d.connect().unwrap();
    assert_eq!(c.call(&ping()).unwrap()["pong"], true);
    assert!(t0.elapsed() < Duration::from_millis(500));
    assert_eq!(
        c.call(&wfo("cl", "cl:1", "k", json!(1), 1.0)).unwrap()["seq_id"],
        1
    );
    assert_eq!(by_seq(&mut c, "cl", 0), [1]);
}

fn seqs_of(answer: &Value) -> Vec<u64> {
    answer["facts"]
        .as_array()
        .unwrap_or_else(|| panic!("no facts in {answer}"))
        .iter()
        .map(|f| f["seq_id"].as_u64().unwrap())
        .collect()
}

fn by_seq(c: &mut Conn, store: &str, after: u64) -> Vec<u64> {
    seqs_of(
        &c.call(&json!({"op": "facts_by_seq", "store": store, "after_seq": after}))
            .unwrap(),
    )
}

#[test]
fn visibility_lag_hides_every_nth_seq_for_lag_ms() {
    const LAG_MS: u64 = 1500;
    let d = TestDaemon::start(opts());
    let ctl = d.control();
    ctl.visibility_lag(3, LAG_MS, Some("vl")).unwrap();
    let f = &ctl.status().unwrap().raw["faults"];
    assert_eq!(
        f["visibility_lag"],
        json!({"every": 3, "lag_ms": LAG_MS, "store": "vl"})
    );
    let mut c = d.connect().unwrap();
    // Seqs 3 (key c, its only fact) and 6 (key a, its latest version) are hidden.
    let keys = ["a", "b", "c", "a", "b", "a", "b"];
    let mut sent_3 = None;
    for (i, key) in (1..).zip(keys) {
        if i == 3 {
            sent_3 = Some(Instant::now());
        }
        let a = c
            .call(&wfo(
                "vl",
                &format!("vl:{i}"),
                key,
                json!({"n": i}),
                i as f64,
            ))
            .unwrap();
        assert_eq!(
            a,
            json!({"committed": true, "durability": "accepted", "idempotent_replay": false,
                   "ok": true, "seq_id": i}),
            "a hidden fact is acknowledged normally"
        );
    }
    for i in 1..=3 {
        c.call(&wfo("vo", &format!("vo:{i}"), "k", json!(i), 1.0))
            .unwrap();
    }

    // Right after the writes: seq 3 and 6 are missing, 4, 5 and 7 are there.
    assert_eq!(by_seq(&mut c, "vl", 0), [1, 2, 4, 5, 7]);
    assert_eq!(by_seq(&mut c, "vo", 0), [1, 2, 3], "only the named store");
    let read = |c: &mut Conn, req: Value| c.call(&req).unwrap();
    let latest = read(
        &mut c,
        json!({"op": "latest_for", "store": "vl", "key": "a"}),
    );
    assert_eq!(latest["fact"]["seq_id"], 4, "the previous version");
    let latest_c = read(
        &mut c,
        json!({"op": "latest_for", "store": "vl", "key": "c"}),
    );
    assert_eq!(latest_c["fact"], Value::Null);
    let facts_for = read(
        &mut c,
        json!({"op": "facts_for", "store": "vl", "key": "a"}),
    );
    assert_eq!(seqs_of(&facts_for), [1, 4]);
    let facts_for = read(&mut c, json!({"op": "facts_for", "store": "vl"}));
    assert_eq!(seqs_of(&facts_for), [1, 2, 4, 5, 7]);
    let scope = read(
        &mut c,
        json!({"op": "query_scope", "store": "vl", "filters": {}}),
    );
    assert_eq!(seqs_of(&scope), [4, 7], "key c has no visible fact");
    let cross = read(
        &mut c,
        json!({"op": "cross_store_query", "stores": ["vl"], "keys": ["a", "c"]}),
    );
    assert_eq!(
        (
            &cross["results"]["vl"]["a"]["seq_id"],
            &cross["results"]["vl"]["c"]
        ),
        (&json!(4), &Value::Null)
    );
    assert_eq!(size(&d, "vl"), 5);
    // Writes see the hidden fact: a replay answers its original seq, a conflict is one.
    let replay = c
        .call(&wfo("vl", "vl:3", "c", json!({"n": 3}), 99.0))
        .unwrap();
    assert_eq!(
        (&replay["idempotent_replay"], &replay["seq_id"]),
        (&json!(true), &json!(3))
    );
    let conflict = c
        .call(&wfo("vl", "vl:6", "a", json!({"n": 0}), 6.0))
        .unwrap();
    assert_eq!(conflict["error_code"], "duplicate_fact_id_conflict");
    assert_eq!(conflict["existing_key"], "a");
    // A tailer using "highest seq seen" as its cursor has moved past 3 and 6.
    let cursor = 7;
    assert_eq!(by_seq(&mut c, "vl", cursor), Vec::<u64>::new());
    assert_eq!(ctl.status().unwrap().raw["faults"]["facts_hidden"], 2);
    assert!(
        sent_3.unwrap().elapsed() < Duration::from_millis(LAG_MS),
        "the checks above ran within the lag"
    );

    // After lag_ms the facts appear, not before.
    assert!(wait_until(Duration::from_secs(5), || by_seq(
        &mut c, "vl", 0
    )
    .len()
        == 7));
    assert!(sent_3.unwrap().elapsed() >= Duration::from_millis(LAG_MS));
    assert_eq!(by_seq(&mut c, "vl", 0), [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(
        by_seq(&mut c, "vl", cursor),
        Vec::<u64>::new(),
        "the naive tailer missed them for good"
    );
    assert_eq!(
        by_seq(&mut c, "vl", 2),
        [3, 4, 5, 6, 7],
        "re-reading the gap finds them"
    );
    let latest = read(
        &mut c,
        json!({"op": "latest_for", "store": "vl", "key": "a"}),
    );
    assert_eq!(latest["fact"]["seq_id"], 6);
    assert_eq!(size(&d, "vl"), 7);

    // Cleared: seq 9 is visible at once.
    ctl.clear().unwrap();
    assert_eq!(
        ctl.status().unwrap().raw["faults"]["visibility_lag"],
        Value::Null
    );
    for i in 8..=9 {
        c.call(&wfo(
            "vl",
            &format!("vl:{i}"),
            "b",
            json!({"n": i}),
            i as f64,
        ))
        .unwrap();
    }
    assert_eq!(by_seq(&mut c, "vl", 7), [8, 9]);
}

#[test]
fn skip_seq_gaps_never_fill_and_survive_restart() {
    let mut d = TestDaemon::start(opts().temp_data_dir());
    d.control().skip_seq(2, 0, Some("sk")).unwrap();
    let mut c = d.connect().unwrap();
    let write = |c: &mut Conn, store: &str, i: u64| {
        let a = c
            .call(&wfo(
                store,
                &format!("{store}:{i}"),
                "k",
                json!(i),
                i as f64,
            ))
            .unwrap();
        assert_eq!(a["ok"], true, "{a}");
        a["seq_id"].as_u64().unwrap()
    };
    // Every 2nd insert burns a seq first: 2 and 5 are gone.
    let acks: Vec<u64> = (1..=5).map(|i| write(&mut c, "sk", i)).collect();
    assert_eq!(acks, [1, 3, 4, 6, 7]);
    // A replay is not an insert: it keeps its seq and does not count.
    let replay = c.call(&wfo("sk", "sk:2", "k", json!(2), 2.0)).unwrap();
    assert_eq!(
        (&replay["idempotent_replay"], &replay["seq_id"]),
        (&json!(true), &json!(3))
    );
    assert_eq!(write(&mut c, "sk", 6), 9, "the 6th insert burns 8");
    let other: Vec<u64> = (1..=3).map(|i| write(&mut c, "so", i)).collect();
    assert_eq!(other, [1, 2, 3], "only the named store");
    // One-shot: the next insert burns one, then the knob is off.
    d.control().skip_seq(1, 1, Some("sk")).unwrap();
    assert_eq!(write(&mut c, "sk", 7), 11);
    assert_eq!(write(&mut c, "sk", 8), 12);
    let f = d.control().status().unwrap().raw["faults"].clone();
    assert_eq!(
        (&f["skip_seq"], &f["seqs_skipped"]),
        (&Value::Null, &json!(4))
    );

    let stored = [1, 3, 4, 6, 7, 9, 11, 12];
    assert_eq!(by_seq(&mut c, "sk", 0), stored);
    let gap = c
        .call(&json!({"op": "facts_by_seq", "store": "sk", "after_seq": 1, "until_seq": 2}))
        .unwrap();
    assert_eq!(seqs_of(&gap), Vec::<u64>::new());
    assert_eq!(size(&d, "sk"), 8);

    // SIGKILL and restart on the same data: the gaps stay, seq resumes after the max.
    d.kill();
    d.restart().unwrap();
    let mut c = d.connect().unwrap();
    assert_eq!(by_seq(&mut c, "sk", 0), stored);
    assert_eq!(
        d.control().status().unwrap().raw["faults"]["skip_seq"],
        Value::Null
    );
    assert_eq!(write(&mut c, "sk", 9), 13);
    assert_eq!(write(&mut c, "so", 4), 4);
    let replay = c.call(&wfo("sk", "sk:6", "k", json!(6), 6.0)).unwrap();
    assert_eq!(
        (&replay["idempotent_replay"], &replay["seq_id"]),
        (&json!(true), &json!(9))
    );
    assert_eq!(by_seq(&mut c, "sk", 0), [1, 3, 4, 6, 7, 9, 11, 12, 13]);
}

/// A tailer that advances its cursor only over an unbroken run of seqs and gives a gap
/// up after `grace` (docs/protocol.md §8), next to the naive "highest seq seen" one.
#[test]
fn gap_safe_tailer_against_both_knobs() {
    const LAG_MS: u64 = 600;
    const WRITES: u64 = 80;
    let d = TestDaemon::start(opts());
    d.control()
        .set(json!({"visibility_lag": {"every": 5, "lag_ms": LAG_MS},
                    "skip_seq": {"every": 7}}))
        .unwrap();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let mut c = d.connect().unwrap();
            std::thread::spawn(move || {
                for i in 0..WRITES / 2 {
                    let a = c
                        .call(&wfo("tail", &format!("w{w}:{i}"), "k", json!(i), 1.0))
                        .unwrap();
                    assert_eq!(a["ok"], true);
                }
            })
        })
        .collect();

    let grace = Duration::from_millis(3 * LAG_MS);
    let mut c = d.connect().unwrap();
    let mut naive_cursor = 0;
    let mut naive_seen = BTreeSet::new();
    let mut safe_cursor = 0;
    let mut safe_seen = BTreeSet::new();
    // Missing seqs below the highest seen, with the time they were first missed.
    let mut gaps: BTreeMap<u64, Instant> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = by_seq(&mut c, "tail", naive_cursor);
        naive_cursor = got.iter().copied().max().unwrap_or(naive_cursor);
        naive_seen.extend(got);

        safe_seen.extend(by_seq(&mut c, "tail", safe_cursor));
        let max = safe_seen.last().copied().unwrap_or(0);
        for seq in safe_cursor + 1..max {
            if !safe_seen.contains(&seq) {
                gaps.entry(seq).or_insert_with(Instant::now);
            }
        }
        loop {
            let next = safe_cursor + 1;
            if safe_seen.contains(&next) {
                gaps.remove(&next);
            } else if gaps.get(&next).is_some_and(|t| t.elapsed() >= grace) {
                gaps.remove(&next); // a gap that never filled: give it up
            } else {
                break;
            }
            safe_cursor = next;
        }
        let done = writers.iter().all(|w| w.is_finished());
        if done && safe_cursor == max && safe_seen.len() as u64 == WRITES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tailer stuck at {safe_cursor}: gaps {gaps:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    for w in writers {
        w.join().unwrap();
    }

    let stored: BTreeSet<u64> = by_seq(&mut c, "tail", 0).into_iter().collect();
    assert_eq!(stored.len() as u64, WRITES);
    assert_eq!(safe_seen, stored, "the gap-safe tailer got every fact");
    let faults = d.control().status().unwrap().raw["faults"].clone();
    let skipped = faults["seqs_skipped"].as_u64().unwrap();
    assert_eq!(skipped, WRITES / 7);
    assert_eq!(*stored.last().unwrap(), WRITES + skipped);
    let hidden = faults["facts_hidden"].as_u64().unwrap();
    assert_eq!(
        hidden as usize,
        stored.iter().filter(|s| *s % 5 == 0).count()
    );
    let missed: Vec<u64> = stored.difference(&naive_seen).copied().collect();
    assert!(!missed.is_empty(), "the naive tailer misses hidden facts");
    assert!(missed.iter().all(|s| s % 5 == 0), "{missed:?}");
}
