//! Helpers of the integration tests: the test daemon, clients aimed at it, requests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use tbackend_client::{Cancel, Client, Config, OpKind, Outcome, Request, Status};
use tbackend_core::protocol::request::RequestBuilder;
use tbackend_testd::harness::locate_binary;
// Not every test binary polls.
#[allow(unused_imports)]
pub use tbackend_testd::harness::wait_until;
pub use tbackend_testd::{Options, TestDaemon};

/// The daemon binary: `$TBACKEND_TESTD_BIN`, else built here with the cargo running the
/// tests (a no-op when up to date), so a fresh clone's `cargo test -p tbackend-client`
/// needs no extra step and never runs a stale daemon.
pub fn daemon_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("TBACKEND_TESTD_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "-p",
                "tbackend-testd",
                "--bin",
                "tbackend-testd",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running cargo build -p tbackend-testd");
        let built = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| {
                m["reason"] == "compiler-artifact" && m["target"]["name"] == "tbackend-testd"
            })
            .find_map(|m| m["executable"].as_str().map(PathBuf::from));
        built.or_else(locate_binary).unwrap_or_else(|| {
            panic!(
                "cannot build tbackend-testd: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    })
    .clone()
}

pub fn opts() -> Options {
    Options::new().binary(daemon_bin())
}

pub fn start(o: Options) -> TestDaemon {
    TestDaemon::start(o)
}

/// Short timeouts, fast backoff and breaker off unless a test wants them.
pub fn config(d: &TestDaemon) -> Config {
    Config {
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(1),
        breaker_threshold: 0,
        reconnect_backoff: (Duration::from_millis(5), Duration::from_millis(100)),
        ..Config::new("127.0.0.1", d.port())
    }
}

pub fn client(d: &TestDaemon) -> Client {
    Client::new(config(d))
}

pub fn fact(store: &str, id: &str, key: &str, value: Value) -> Value {
    json!({"id": id, "store": store, "key": key, "value": value,
           "transaction_time": 1_780_387_000.5, "schema_version": 1})
}

pub fn write(store: &str, id: &str, key: &str, value: Value) -> Request {
    let fact = serde_json::to_vec(&fact(store, id, key, value)).unwrap();
    let mut b = RequestBuilder::new("write_fact_once", None);
    b.raw("fact", &fact).unwrap();
    Request::built(OpKind::Write, b)
}

pub fn latest_for(store: &str, key: &str) -> Request {
    let mut b = RequestBuilder::new("latest_for", None);
    b.str("store", store).unwrap().str("key", key).unwrap();
    Request::built(OpKind::Read, b)
}

pub fn ping() -> Request {
    Request::ping(None)
}

pub fn call(c: &Client, r: &Request) -> Outcome {
    c.call(r, None, &Cancel::new())
}

/// Every fact of `store` by seq, through a fresh plain connection.
pub fn all_facts(d: &TestDaemon, store: &str) -> Vec<Value> {
    let mut conn = d.connect().unwrap();
    let a = conn
        .call(&json!({"op": "facts_by_seq", "store": store, "after_seq": 0}))
        .unwrap();
    a["facts"].as_array().cloned().unwrap_or_default()
}

pub fn seq_of(o: &Outcome) -> u64 {
    o.classified.answer.value()["seq_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq_id in {o:?}"))
}

pub fn assert_status(o: &Outcome, status: Status) {
    assert_eq!(o.classified.status, status, "{o:#?}");
}

/// The first lane's reads of answers so far, less those a busy machine added: a wait for
/// a batch's answers that ended before they were all in is followed by one read more.
pub fn lane_reads(c: &Client) -> u64 {
    let lane = &c.stats().lanes[0];
    lane.socket_reads - lane.short_waits
}

/// Open data connections the daemon sees (settles first: closes are noticed async).
pub fn open_connections(d: &TestDaemon) -> u64 {
    d.control().status().unwrap().connections_open
}

/// A `Cancel` that a thread of its own cancels after `after`, as an interrupt would hit a
/// waiting caller; join the handle once the call has returned.
pub fn cancel_after(after: Duration) -> (Arc<Cancel>, std::thread::JoinHandle<()>) {
    let cancel = Arc::new(Cancel::new());
    let canceller = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            cancel.cancel();
        })
    };
    (cancel, canceller)
}
