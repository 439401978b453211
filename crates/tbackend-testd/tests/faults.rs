//! Every control-port fault knob, and the status counters.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tbackend_core::protocol::frame::{crc32, encode};
use tbackend_testd::control::AnswerFault;
use tbackend_testd::harness::TestDaemon;

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
                   "refuse_connections": true, "answer_fault": {"kind": "garbage", "count": 0}}))
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
            f["answer_fault"].clone()
        ),
        (
            json!(0),
            json!(0),
            json!("off"),
            json!(false),
            json!(false),
            Value::Null
        )
    );
    let t0 = Instant::now();
    assert_eq!(d.connect().unwrap().call(&ping()).unwrap()["pong"], true);
    assert!(t0.elapsed() < Duration::from_millis(500));
}
