//! Connection, durability and restart behaviour beyond the transcripts.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tbackend_core::protocol::frame::encode_into;
use tbackend_testd::harness::TestDaemon;
use tbackend_testd::wire::Conn;

fn ping() -> Value {
    json!({"op": "ping"})
}

fn durable(mut req: Value) -> Value {
    req["durability"] = json!("durable");
    req
}

#[test]
fn ready_line_and_sigterm() {
    let mut d = TestDaemon::start(opts().auth());
    let line = d.ready_line().to_owned();
    let pid = d.pid().unwrap();
    assert_eq!(
        line,
        format!(
            "tbackend-testd ready host=127.0.0.1 port={} control_port={} pid={pid} data_dir=ephemeral auth=on",
            d.port(),
            d.control_port()
        )
    );
    let status = d.terminate().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn slot_starvation_with_pool_2() {
    let d = TestDaemon::start(opts().pool_size(2));
    let mut a = d.connect().unwrap();
    let mut b = d.connect().unwrap();
    a.call(&ping()).unwrap();
    b.call(&ping()).unwrap();
    let mut third = d.connect().unwrap();
    third.send(&ping()).unwrap();
    third.set_timeout(Duration::from_millis(400)).unwrap();
    assert!(
        third.recv().is_err(),
        "accepted but not read while both workers are held"
    );
    let s = d.control().status().unwrap();
    assert_eq!((s.connections_active, s.connections_queued), (2, 1));
    drop(a);
    third.set_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        third.recv().unwrap()["pong"],
        true,
        "served once a worker is free"
    );
    assert_eq!(b.call(&ping()).unwrap()["pong"], true);
}

#[test]
fn idle_timeout_is_reset_by_requests() {
    let d = TestDaemon::start(opts().idle_timeout(Duration::from_millis(300)));
    let mut busy = d.connect().unwrap();
    let mut idle = d.connect().unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(800) {
        assert_eq!(busy.call(&ping()).unwrap()["pong"], true);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        idle.wait_closed(Duration::from_millis(100)).is_ok(),
        "the idle one was closed"
    );
    assert_eq!(
        busy.call(&ping()).unwrap()["pong"],
        true,
        "the busy one lives"
    );
    // A frame stalled halfway is cut too.
    let mut half = d.connect().unwrap();
    half.send_raw(&[0, 0, 0, 13, b'{']).unwrap();
    let t0 = Instant::now();
    assert!(half.wait_closed(Duration::from_secs(2)).unwrap().is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(250));
}

#[test]
fn bad_crc_loses_the_frames_behind_it() {
    let d = TestDaemon::start(opts());
    let mut c = d.connect().unwrap();
    let mut bytes = Vec::new();
    encode_into(br#"{"op":"ping"}"#, 100, &mut bytes).unwrap();
    bytes.extend_from_slice(&[0, 0, 0, 13]);
    bytes.extend_from_slice(br#"{"op":"ping"}"#);
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    encode_into(br#"{"op":"ping"}"#, 100, &mut bytes).unwrap();
    c.send_raw(&bytes).unwrap();
    assert_eq!(
        c.recv().unwrap()["pong"],
        true,
        "the frame before is answered"
    );
    assert!(
        c.recv().is_err(),
        "then the connection is closed, the frame behind lost"
    );
}

#[test]
fn pipelining_answers_in_order() {
    let d = TestDaemon::start(opts());
    let mut c = d.connect().unwrap();
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for i in 0..200u64 {
        let (req, want) = match i % 4 {
            0 => (ping(), json!({"ok": true, "pong": true})),
            1 => (
                wfo("pipe", &format!("pipe:{i}"), "k", json!(i), i as f64),
                json!({"committed": true, "durability": "accepted", "idempotent_replay": false, "ok": true, "seq_id": i / 4 + 1}),
            ),
            2 => (
                json!({"op": "size", "store": "pipe"}),
                json!({"ok": true, "size": i / 4 + 1}),
            ),
            _ => (
                json!({"op": format!("nope{i}")}),
                json!({"error": format!("Unknown operation: nope{i}"), "ok": false}),
            ),
        };
        encode_into(&serde_json::to_vec(&req).unwrap(), usize::MAX, &mut bytes).unwrap();
        expected.push(want);
    }
    c.send_raw(&bytes).unwrap();
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&c.recv().unwrap(), want, "answer {i}");
    }
}

#[test]
fn twelve_identical_concurrent_writes_one_insert() {
    let d = TestDaemon::start(opts().temp_data_dir());
    let barrier = Arc::new(Barrier::new(12));
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let mut c = d.connect().unwrap();
            std::thread::spawn(move || {
                barrier.wait();
                c.call(&wfo("c12", "c12:1", "k", json!({"a": 1}), 5.0))
                    .unwrap()
            })
        })
        .collect();
    let answers: Vec<Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        answers
            .iter()
            .filter(|a| a["idempotent_replay"] == false)
            .count(),
        1
    );
    assert_eq!(
        answers
            .iter()
            .filter(|a| a["idempotent_replay"] == true)
            .count(),
        11
    );
    assert!(answers.iter().all(|a| a["seq_id"] == 1 && a["ok"] == true));
}

#[test]
fn concurrent_distinct_writes_get_unique_contiguous_seqs() {
    let d = TestDaemon::start(opts().temp_data_dir());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let mut c = d.connect().unwrap();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        c.call(&wfo("cc", &format!("cc:{t}:{i}"), "k", json!(i), 1.0))
                            .unwrap()["seq_id"]
                            .as_u64()
                            .unwrap()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=400).collect::<Vec<u64>>());
}

#[test]
fn group_commit_window_is_paid_by_a_lone_durable_writer() {
    let d = TestDaemon::start(opts().temp_data_dir().commit_interval_ms(60));
    let mut c = d.connect().unwrap();
    let t0 = Instant::now();
    let a = c
        .call(&durable(wfo("gc", "gc:1", "k", json!(1), 1.0)))
        .unwrap();
    assert_eq!(a["durability"], "durable");
    assert!(
        t0.elapsed() >= Duration::from_millis(55),
        "{:?}",
        t0.elapsed()
    );
    let t0 = Instant::now();
    c.call(&wfo("gc", "gc:2", "k", json!(2), 1.0)).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "accepted does not wait"
    );
    let stats = c
        .call(&json!({"op": "__durability_stats", "store": "gc"}))
        .unwrap();
    assert_eq!(
        stats,
        json!({"durable_capable": true, "ok": true, "sync_count": 1, "synced_seq": 1, "write_seq": 2})
    );
}

#[test]
fn sigkill_restart_keeps_every_acknowledged_fact() {
    let mut d = TestDaemon::start(opts().temp_data_dir().commit_interval_ms(1));
    let port = d.port();
    let mut c = d.connect().unwrap();
    let mut written = Vec::new();
    for i in 0..40u64 {
        let mut req = wfo(
            "rs",
            &format!("rs:{i}"),
            &format!("k{}", i % 3),
            json!({"i": i, "f": 1.5, "n": 10}),
            i as f64,
        );
        if i % 4 == 0 {
            req = durable(req);
        }
        let a = c.call(&req).unwrap();
        assert_eq!(a["seq_id"], i + 1);
        written.push(req["fact"].clone());
    }
    c.call(&json!({"op": "latest_for", "store": "ghost", "key": "x"}))
        .unwrap();
    let before = c
        .call(&json!({"op": "facts_by_seq", "store": "rs"}))
        .unwrap();
    d.kill();
    assert!(Conn::connect(d.addr()).is_err(), "dead");
    d.restart().unwrap();
    assert_eq!(d.port(), port, "same port after a SIGKILL");
    let mut c = d.connect().unwrap();
    assert_eq!(
        c.call(&json!({"op": "facts_by_seq", "store": "rs"}))
            .unwrap(),
        before,
        "every fact, byte for byte"
    );
    let stores = c.call(&json!({"op": "stores"})).unwrap();
    assert_eq!(
        stores["stores"],
        json!(["ghost", "rs"]),
        "empty stores survive too"
    );
    // seq resumes, replays answer with the original seq.
    let a = c.call(&wfo("rs", "rs:new", "k", json!(0), 0.0)).unwrap();
    assert_eq!(a["seq_id"], 41);
    let a = c
        .call(&json!({"op": "write_fact_once", "fact": written[7]}))
        .unwrap();
    assert_eq!(
        (&a["idempotent_replay"], &a["seq_id"]),
        (&json!(true), &json!(8))
    );
    // A conflicting retry after restart is still a conflict (10 vs 10.0 kept apart).
    let mut f = written[7].clone();
    f["value"]["n"] = json!(10.0);
    let a = c
        .call(&json!({"op": "write_fact_once", "fact": f}))
        .unwrap();
    assert_eq!(a["error_code"], "duplicate_fact_id_conflict");
    let stats = c
        .call(&json!({"op": "__durability_stats", "store": "rs"}))
        .unwrap();
    assert_eq!(
        (&stats["write_seq"], &stats["synced_seq"]),
        (&json!(41), &json!(40))
    );
}

#[test]
fn torn_log_tail_is_tolerated() {
    let mut d = TestDaemon::start(opts().temp_data_dir());
    let mut c = d.connect().unwrap();
    for i in 0..3 {
        c.call(&wfo("torn", &format!("torn:{i}"), "k", json!(i), 1.0))
            .unwrap();
    }
    d.kill();
    let log = d.data_dir().unwrap().join("wal").join("torn.wal");
    let clean_len = std::fs::metadata(&log).unwrap().len();
    // A record cut short, as a crash in the middle of write(2) leaves it.
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"'])
        .unwrap();
    drop(f);
    d.restart().unwrap();
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        clean_len,
        "tail truncated"
    );
    let mut c = d.connect().unwrap();
    assert_eq!(
        c.call(&json!({"op": "size", "store": "torn"})).unwrap()["size"],
        3
    );
    assert_eq!(
        c.call(&wfo("torn", "torn:3", "k", json!(3), 1.0)).unwrap()["seq_id"],
        4
    );
    d.restart().unwrap();
    let mut c = d.connect().unwrap();
    assert_eq!(
        c.call(&json!({"op": "size", "store": "torn"})).unwrap()["size"],
        4
    );
}

#[test]
fn auth_tokens_persist_as_asked() {
    let mut d = TestDaemon::start(opts().temp_data_dir().auth());
    let admin = d.admin_token().unwrap();
    let file = d
        .data_dir()
        .unwrap()
        .join("security")
        .join("BOOTSTRAP_ADMIN_TOKEN");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut c = d.connect().unwrap();
    let kept = c
        .call(&json!({"op": "auth_token_create", "token": admin, "target_role": "read_only", "allowed_stores": ["*"], "persist": true}))
        .unwrap();
    let lost = c
        .call(&json!({"op": "auth_token_create", "token": admin, "target_role": "read_only", "allowed_stores": ["*"]}))
        .unwrap();
    let saved = std::fs::read_to_string(d.data_dir().unwrap().join("security").join("tokens.json"))
        .unwrap();
    assert!(
        !saved.contains(kept["token"].as_str().unwrap()),
        "only hashes on disk"
    );
    d.restart().unwrap();
    assert_eq!(d.admin_token().unwrap(), admin, "bootstrap happens once");
    let mut c = d.connect().unwrap();
    assert_eq!(
        c.call(&json!({"op": "ping", "token": admin})).unwrap()["pong"],
        true
    );
    assert_eq!(
        c.call(&json!({"op": "ping", "token": kept["token"]}))
            .unwrap()["pong"],
        true
    );
    assert_eq!(
        c.call(&json!({"op": "ping", "token": lost["token"]}))
            .unwrap()["error"],
        "Authentication failed: invalid token"
    );
    let list = c
        .call(&json!({"op": "auth_token_list", "token": admin}))
        .unwrap();
    assert_eq!(list["count"], 2);
    // Unknown roles may ping and nothing else.
    let odd = c
        .call(&json!({"op": "auth_token_create", "token": admin, "target_role": "superuser", "allowed_stores": ["*"]}))
        .unwrap();
    assert_eq!(
        c.call(&json!({"op": "ping", "token": odd["token"]}))
            .unwrap()["pong"],
        true
    );
    assert_eq!(
        c.call(&json!({"op": "size", "token": odd["token"]}))
            .unwrap()["error"],
        "Access denied: role 'superuser' cannot execute operation 'size'"
    );
}

#[test]
fn overlong_store_name_lives_in_memory_only() {
    let mut d = TestDaemon::start(opts().temp_data_dir());
    let long = "L".repeat(300);
    let mut c = d.connect().unwrap();
    let a = c
        .call(&durable(wfo(&long, "l:1", "k", json!(1), 1.0)))
        .unwrap();
    assert_eq!(a["durability"], "in_memory");
    assert_eq!(
        c.call(&json!({"op": "size", "store": long})).unwrap()["size"],
        1
    );
    d.restart().unwrap();
    let mut c = d.connect().unwrap();
    assert_eq!(
        c.call(&json!({"op": "stores"})).unwrap()["stores"],
        json!([])
    );
}
