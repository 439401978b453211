//! Replays the real daemon's transcripts (`spec/fixtures/tbackend/transcripts.jsonl`,
//! and the raw frames of `frames_hex.jsonl` beside it) against fresh test daemons and
//! compares answers as JSON (byte for byte where the corpus has the response hex).
//!
//! Sections, as the corpus was recorded:
//! - rows without prefix: one daemon with a data directory, one connection, in order;
//! - `auth:` rows: an `--auth` daemon with a data directory; `<ADMIN_TOKEN>` is read
//!   from the bootstrap file, `<RO_TOKEN>`/`<WO_TOKEN>` and the token ids come from the
//!   create/list answers;
//! - `ephemeral:` rows: a daemon without data directory, `--max-inflight 2`.
//!
//! What is not compared, and why, is listed in [`IGNORED`] and [`SKIPPED`] (also in the
//! crate README). Every row of the corpus must be compared, handled by a dedicated
//! check ([`SPECIAL`]) or skipped with a reason: `every_row_is_accounted_for` fails on
//! a new row nobody looked at, or on a list entry that matches no row.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tbackend_testd::harness::TestDaemon;
use tbackend_testd::wire::Conn;

/// Fields not compared, per op_case (dotted paths), with the reason.
const IGNORED: &[(&str, &[&str], &str)] = &[
    (
        "diagnostics_summary",
        &[
            "summary.uptime_seconds",
            "summary.port",
            "summary.data_dir",
            "summary.registered_operations",
            "summary.registered_stores",
            "telemetry.average_latency_us",
            "telemetry.total_latency_us",
            "telemetry.bytes_read",
            "telemetry.bytes_written",
            "telemetry.errors_encountered",
        ],
        "uptime and latencies are timing; port and data_dir are per run; byte counters \
         depend on the recording client's JSON spacing; registered_operations lists the \
         real daemon's 33 ops (we serve fewer); registered_stores is truncated in the \
         corpus (compared as a prefix); errors_encountered is compared after correcting \
         for the skipped ops we answer with an error",
    ),
    (
        "metrics_has_no_ok_field",
        &[
            "average_latency_us",
            "total_latency_us",
            "bytes_read",
            "bytes_written",
            "errors_encountered",
        ],
        "latencies are timing, byte counters depend on the recording client's JSON \
         spacing; errors_encountered is compared after the skipped-op correction",
    ),
    (
        "ephemeral:metrics_after_overload",
        &[
            "average_latency_us",
            "total_latency_us",
            "bytes_read",
            "bytes_written",
        ],
        "latencies are timing; byte counters depend on the recording client and on the \
         size of the 800 filler facts (smaller here)",
    ),
    (
        "diagnostics_stores_one",
        &["store.estimated_memory_bytes", "store.wal_disk_bytes"],
        "memory estimate and log size depend on the in-memory layout and the on-disk \
         format (the real log is MessagePack, ours length+CRC framed JSON)",
    ),
    (
        "diagnostics_stores_all_shape_sample",
        &["store.estimated_memory_bytes", "store.wal_disk_bytes"],
        "memory estimate and log size depend on the in-memory layout and the on-disk format",
    ),
    (
        "auth:admin_create_read_only_token_for_ledger_a",
        &["id", "token"],
        "random token id and token (checked to be 16 and 64 hex digits)",
    ),
    (
        "auth:admin_create_write_only_token_for_ledger_a",
        &["id", "token"],
        "random token id and token (checked to be 16 and 64 hex digits)",
    ),
    (
        "auth:auth_token_create_unknown_role_accepted",
        &["id", "token"],
        "random token id and token (checked to be 16 and 64 hex digits)",
    ),
];

/// Rows whose order of `facts` is unspecified by the daemon: compared sorted by seq.
fn unordered_facts(op_case: &str) -> bool {
    op_case.starts_with("query_scope_")
}

/// Rows not replayed, with the reason. `send: true` rows are still sent (their side
/// effects, store creation and request counters, match the recording) but their
/// answer is not compared.
struct Skip {
    op_case: &'static str,
    send: bool,
    why: &'static str,
}

const OUTSIDE: &str = "op outside the test daemon's surface (pipelines, triggers, \
                       analytics, joins, query_slice, snapshot policies)";
const MEASUREMENT: &str = "a measurement of the real daemon, not a replayable exchange";

const SKIPPED: &[Skip] = &[
    Skip {
        op_case: "query_slice_key_prefix_rules",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "query_slice_valid_time_window",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "query_slice_tx_window",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "query_slice_bad_rules_silently_ignored",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "cross_store_join_missing_params",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "analytics_aggregate",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "analytics_calculate",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "analytics_metrics_one_store",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "cross_store_join_left",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "cross_store_join_documented_param_names_fail",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "trigger_create",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "trigger_delete",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "trigger_delete_unknown",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "pipeline_create",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "pipeline_output_store",
        send: true,
        why: "reads the output of a pipeline, which the test daemon does not run",
    },
    Skip {
        op_case: "pipeline_delete",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "snapshot_policy_create",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "analytics_metrics_all_stores_shape",
        send: true,
        why: OUTSIDE,
    },
    Skip {
        op_case: "fresh_connection_first_ping_latency_ms",
        send: false,
        why: MEASUREMENT,
    },
    Skip {
        op_case: "length_prefix_0xFFFFFFFF_on_memory_limited_daemon",
        send: false,
        why: "the real daemon aborts allocating 4 GiB under a 2 GiB limit; by design the \
              test daemon allocates nothing for a header (it waits for the body, then the \
              idle timeout cuts it: see length_prefix_0xFFFFFFFF_no_body)",
    },
    Skip {
        op_case: "daemon_memory_kb_rss_vsz",
        send: false,
        why: MEASUREMENT,
    },
    Skip {
        op_case: "facts_by_seq_tail_race",
        send: false,
        why: "a race measurement; by default the test daemon makes a fact visible in seq \
              order, the control knobs visibility_lag and skip_seq reproduce the gaps \
              (tests/faults.rs)",
    },
    Skip {
        op_case: "read_cost_on_153k_fact_store",
        send: false,
        why: MEASUREMENT,
    },
    Skip {
        op_case: "fd_exhaustion_on_nofile_limited_daemon",
        send: false,
        why: "needs the daemon under prlimit --nofile=64; a resource-limit measurement",
    },
];

/// Rows checked by dedicated code rather than a plain request/answer comparison.
const SPECIAL: &[(&str, &str)] = &[
    ("stores", "the corpus keeps a sorted sample and a count; compared as such"),
    ("diagnostics_summary", "after the open connections settle; registered_stores as a prefix"),
    ("metrics_has_no_ok_field", "after the open connections settle"),
    ("ping_while_6_workers_held", "6 held connections, then a ping on a 7th"),
    ("idle_connection_no_bytes", "idle rows: same bytes against a daemon with a 0.3 s idle timeout instead of 30 s"),
    ("partial_body", "idle rows: 0.3 s idle timeout"),
    ("length_prefix_0xFFFFFFFF_no_body", "idle rows: 0.3 s idle timeout"),
    ("http_get_request", "idle rows: 0.3 s idle timeout"),
    ("partial_length_prefix", "idle rows: 0.3 s idle timeout"),
    ("idle_after_one_ping", "idle rows: 0.3 s idle timeout"),
    ("connection_17_when_16_workers_busy", "pool 16 daemon, 16 held connections, 0.5 s instead of 3 s"),
    ("write_fact_once_50MiB_value", "on its own ephemeral daemon, to keep the restart check fast"),
    ("facts_by_seq_response_frame_over_50MiB", "on its own ephemeral daemon"),
    ("restart_replay_check", "SIGINT + restart; the corpus stores are checked, the load-test store lg_2_w12_0 is emulated on orders_c62075"),
    ("write_fact_once_same_fact_12_concurrent_connections", "12 threads behind a barrier"),
    ("ephemeral:overload_4_concurrent_heavy_reads_max_inflight_2", "exec_delay_ms fault stands in for the slow 16 MB reads, making the 6/6 split deterministic"),
    ("ephemeral:metrics_after_overload", "after the open connections settle"),
];

#[derive(Debug, Clone)]
struct Row {
    op_case: String,
    request: Value,
    response: Value,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../spec/fixtures/tbackend")
}

fn load_rows() -> Vec<Row> {
    let path = corpus_dir().join("transcripts.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the conformance corpus {} ({e}); without it the test daemon \
             cannot be checked against the real daemon",
            path.display()
        )
    });
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("transcript line is JSON");
            Row {
                op_case: v["op_case"].as_str().expect("op_case").to_owned(),
                request: v["request"].clone(),
                response: v["response"].clone(),
            }
        })
        .collect()
}

/// The daemon a row was recorded against (`a:b` inside a store name is no prefix).
fn section(op_case: &str) -> &'static str {
    if op_case.starts_with("auth:") {
        "auth"
    } else if op_case.starts_with("ephemeral:") {
        "ephemeral"
    } else {
        "main"
    }
}

fn skip_of(op_case: &str) -> Option<&'static Skip> {
    SKIPPED.iter().find(|s| s.op_case == op_case)
}

fn is_special(op_case: &str) -> bool {
    SPECIAL.iter().any(|(c, _)| *c == op_case)
}

fn ignored(op_case: &str) -> &'static [&'static str] {
    IGNORED
        .iter()
        .find(|(c, _, _)| *c == op_case)
        .map_or(&[], |(_, paths, _)| paths)
}

fn sort_facts(v: &mut Value) {
    if let Some(facts) = v.get_mut("facts").and_then(Value::as_array_mut) {
        facts.sort_by_key(|f| f["seq_id"].as_u64());
    }
}

/// Compares one plain row's answer.
fn check(row: &Row, actual: &Value) {
    let (mut expected, mut actual) = (row.response.clone(), actual.clone());
    if unordered_facts(&row.op_case) {
        sort_facts(&mut expected);
        sort_facts(&mut actual);
    }
    assert_json(&row.op_case, &expected, &actual, ignored(&row.op_case));
}

/// A row whose request is raw bytes: sent on its own connection; the connection
/// outcome, the answer (byte for byte when the corpus has it) and the follow-up ping
/// are checked.
fn check_raw(d: &TestDaemon, row: &Row) {
    let mut c = d.connect().unwrap();
    c.send_raw(&unhex(row.request["raw_hex"].as_str().unwrap()))
        .unwrap();
    let r = &row.response;
    match r["connection"].as_str() {
        Some("closed_by_server_without_response") => {
            let got = c
                .wait_closed(Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("{}: connection not closed: {e}", row.op_case));
            assert!(got.is_empty(), "{}: got bytes {got:?}", row.op_case);
        }
        Some("open") => {
            let body = c.recv_body().unwrap();
            let actual: Value = serde_json::from_slice(&body).unwrap();
            assert_json(&row.op_case, &r["response"], &actual, &[]);
            if let Some(hex) = r["response_hex"].as_str() {
                let mut frame = Vec::new();
                tbackend_core::protocol::frame::encode_into(&body, usize::MAX, &mut frame).unwrap();
                assert_eq!(
                    tbackend_testd::faults::hex(&frame),
                    hex,
                    "{}: response bytes",
                    row.op_case
                );
            }
            let ping = c.call(&json!({"op": "ping"})).unwrap();
            assert_json(&row.op_case, &r["followup_ping"], &ping, &[]);
        }
        other => panic!("{}: unknown connection outcome {other:?}", row.op_case),
    }
}

/// Replaces placeholder strings anywhere in `v`.
fn substitute(v: &Value, subs: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) => Value::String(subs.get(s).cloned().unwrap_or_else(|| s.clone())),
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, subs)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), substitute(x, subs)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_hex(s: &Value, len: usize) -> bool {
    s.as_str().is_some_and(|s| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

#[test]
fn every_row_is_accounted_for() {
    let rows = load_rows();
    assert_eq!(
        rows.len(),
        216,
        "the corpus changed: review the skip and special lists"
    );
    for (name, what) in SKIPPED
        .iter()
        .map(|s| (s.op_case, "SKIPPED"))
        .chain(SPECIAL.iter().map(|(c, _)| (*c, "SPECIAL")))
        .chain(IGNORED.iter().map(|(c, _, _)| (*c, "IGNORED")))
    {
        assert!(
            rows.iter().any(|r| r.op_case == name),
            "{what} entry {name} matches no corpus row"
        );
    }
    for s in SKIPPED {
        eprintln!("skipped {}: {}", s.op_case, s.why);
    }
    let skipped = rows
        .iter()
        .filter(|r| skip_of(&r.op_case).is_some())
        .count();
    let special = rows.iter().filter(|r| is_special(&r.op_case)).count();
    eprintln!(
        "corpus: {} rows, {} compared as plain exchanges, {special} by dedicated checks, {skipped} skipped",
        rows.len(),
        rows.len() - skipped - special
    );
    // Keep the skip list small: a growing one means the double drifts from the daemon.
    assert!(skipped <= 26, "{skipped} skipped rows");
}

#[test]
fn main_section() {
    let rows: Vec<Row> = load_rows()
        .into_iter()
        .filter(|r| section(&r.op_case) == "main")
        .collect();
    let mut d = TestDaemon::start(opts().temp_data_dir());
    let mut conn = d.connect().unwrap();
    // Ops we answer with an error where the real daemon succeeded (skipped rows that
    // are still sent): errors_encountered is that much higher here.
    let mut error_skew = 0u64;
    for row in &rows {
        let case = row.op_case.as_str();
        if let Some(skip) = skip_of(case) {
            if skip.send && row.request.get("op").is_some() {
                let a = conn.call(&row.request).unwrap();
                if a.get("error").is_some() && row.response.get("error").is_none() {
                    error_skew += 1;
                }
            }
            continue;
        }
        match case {
            "stores" => {
                let a = conn.call(&row.request).unwrap();
                assert_eq!(a["ok"], true);
                let mut names: Vec<Value> = a["stores"].as_array().unwrap().clone();
                names.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
                assert_eq!(Value::Array(names), row.response["stores_sample"]);
                assert_eq!(
                    a["stores"].as_array().unwrap().len() as u64,
                    row.response["count"].as_u64().unwrap()
                );
            }
            "diagnostics_summary" | "metrics_has_no_ok_field" => {
                wait_open_connections(&d, 1);
                let a = conn.call(&row.request).unwrap();
                check(row, &a);
                let (expected_errors, actual_errors) = if case == "diagnostics_summary" {
                    let listed: Vec<Value> = row.response["summary"]["registered_stores"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|s| *s != "...truncated")
                        .cloned()
                        .collect();
                    let ours = a["summary"]["registered_stores"].as_array().unwrap();
                    assert_eq!(
                        &ours[..listed.len()],
                        &listed[..],
                        "registered_stores prefix"
                    );
                    (
                        &row.response["telemetry"]["errors_encountered"],
                        &a["telemetry"]["errors_encountered"],
                    )
                } else {
                    (
                        &row.response["errors_encountered"],
                        &a["errors_encountered"],
                    )
                };
                assert_eq!(
                    actual_errors.as_u64().unwrap(),
                    expected_errors.as_u64().unwrap() + error_skew,
                    "{case}: errors_encountered (with {error_skew} skipped-op errors)"
                );
            }
            "ping_while_6_workers_held" => {
                let held: Vec<Conn> = (0..6)
                    .map(|_| {
                        let mut c = d.connect().unwrap();
                        c.call(&json!({"op": "ping"})).unwrap();
                        c
                    })
                    .collect();
                let mut c = d.connect().unwrap();
                let a = c.call(&row.request).unwrap();
                assert_json(case, &row.response["response"], &a, &[]);
                drop(held);
            }
            "restart_replay_check" => {
                restart_check(&mut d, row);
                conn = d.connect().unwrap();
            }
            "write_fact_once_same_fact_12_concurrent_connections" => {
                concurrent_check(&d, row);
            }
            _ if is_special(case) => {} // checked by their own tests below
            _ if row.request.get("raw_hex").is_some() => check_raw(&d, row),
            _ if row.request.is_array() => {
                // Pipelined: all frames in one write, answers in order.
                let reqs = row.request.as_array().unwrap();
                let mut bytes = Vec::new();
                for r in reqs {
                    tbackend_core::protocol::frame::encode_into(
                        &serde_json::to_vec(r).unwrap(),
                        usize::MAX,
                        &mut bytes,
                    )
                    .unwrap();
                }
                conn.send_raw(&bytes).unwrap();
                let answers: Vec<Value> = reqs.iter().map(|_| conn.recv().unwrap()).collect();
                assert_json(case, &row.response, &Value::Array(answers), &[]);
            }
            _ => {
                let a = conn.call(&row.request).unwrap();
                check(row, &a);
            }
        }
    }
}

/// restart_replay_check: SIGINT, restart on the same data dir and port, then what the
/// real check looked at.
fn restart_check(d: &mut TestDaemon, row: &Row) {
    let expected = &row.response;
    let status = d.stop_with(libc::SIGINT).unwrap();
    assert!(status.success(), "SIGINT exit: {status:?}");
    let t0 = Instant::now();
    d.restart().unwrap();
    eprintln!("restart_replay_check: ready after {:?}", t0.elapsed());
    let mut c = d.connect().unwrap();
    let stores = c.call(&json!({"op": "stores"})).unwrap();
    let names: Vec<&str> = stores["stores"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let long: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.starts_with("LLLL"))
        .collect();
    assert_eq!(
        json!(long),
        expected["long_name_store_after_restart"],
        "a store without log is gone"
    );
    let ghost: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.starts_with("ghost"))
        .collect();
    assert_eq!(
        json!(ghost),
        expected["ghost_store_after_restart"],
        "an empty store survives"
    );
    let faulty = c
        .call(&json!({"op": "facts_by_seq", "store": "faulty_c62075"}))
        .unwrap();
    let pairs: Vec<Value> = faulty["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| json!([f["id"], f["seq_id"]]))
        .collect();
    assert_eq!(Value::Array(pairs), expected["faulty_store_facts"]);
    // The real check used its load-test store; the same on orders_c62075: the next
    // insert takes size+1, an old fact replays with its original seq.
    let size = c
        .call(&json!({"op": "size", "store": "orders_c62075"}))
        .unwrap()["size"]
        .as_u64()
        .unwrap();
    let next = c
        .call(&wfo(
            "orders_c62075",
            "orders_c62075:after-restart",
            "after-restart",
            json!({"n": 1}),
            5.0,
        ))
        .unwrap();
    let mut want = expected["next_write_seq"].clone();
    want["seq_id"] = json!(size + 1);
    assert_json("restart_replay_check.next_write_seq", &want, &next, &[]);
    let replay = c
        .call(&json!({"op": "write_fact_once", "fact": {"id": "orders_c62075:t:2", "store": "orders_c62075", "key": "t", "value": {"v": 2, "status": "closed"}, "transaction_time": 300.0, "schema_version": 1}}))
        .unwrap();
    let mut want = expected["replay_after_restart"].clone();
    want["seq_id"] = json!(21);
    assert_json(
        "restart_replay_check.replay_after_restart",
        &want,
        &replay,
        &[],
    );
}

fn concurrent_check(d: &TestDaemon, row: &Row) {
    let barrier = Arc::new(Barrier::new(12));
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let req = row.request.clone();
            let mut c = d.connect().unwrap();
            std::thread::spawn(move || {
                barrier.wait();
                c.call(&req).unwrap()
            })
        })
        .collect();
    let answers: Vec<Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let inserted = answers
        .iter()
        .filter(|a| a["idempotent_replay"] == false)
        .count();
    let replays = answers
        .iter()
        .filter(|a| a["idempotent_replay"] == true)
        .count();
    let mut seqs: Vec<u64> = answers
        .iter()
        .map(|a| a["seq_id"].as_u64().unwrap())
        .collect();
    seqs.sort();
    seqs.dedup();
    let mut c = d.connect().unwrap();
    let size = c.call(&json!({"op": "size", "store": "concur"})).unwrap()["size"].clone();
    let actual = json!({"inserted": inserted, "replays": replays, "seq_ids": seqs, "size": size});
    assert_json(&row.op_case, &row.response, &actual, &[]);
}

#[test]
fn auth_section() {
    let rows: Vec<Row> = load_rows()
        .into_iter()
        .filter(|r| section(&r.op_case) == "auth")
        .collect();
    let d = TestDaemon::start(opts().temp_data_dir().auth());
    let mut subs: HashMap<String, String> = HashMap::new();
    subs.insert("<ADMIN_TOKEN>".into(), d.admin_token().unwrap());
    assert!(
        is_hex(&json!(subs["<ADMIN_TOKEN>"]), 64),
        "bootstrap token is 64 hex digits"
    );
    let mut conn = d.connect().unwrap();
    for row in &rows {
        let case = row.op_case.as_str();
        let a = conn.call(&substitute(&row.request, &subs)).unwrap();
        match case {
            "auth:admin_create_read_only_token_for_ledger_a"
            | "auth:admin_create_write_only_token_for_ledger_a"
            | "auth:auth_token_create_unknown_role_accepted" => {
                assert!(is_hex(&a["id"], 16), "{case}: id {}", a["id"]);
                assert!(is_hex(&a["token"], 64), "{case}: token");
                subs.insert(
                    row.response["id"].as_str().unwrap().into(),
                    a["id"].as_str().unwrap().into(),
                );
                let placeholder = match case {
                    "auth:admin_create_read_only_token_for_ledger_a" => "<RO_TOKEN>",
                    "auth:admin_create_write_only_token_for_ledger_a" => "<WO_TOKEN>",
                    _ => "<OTHER_TOKEN>",
                };
                subs.insert(placeholder.into(), a["token"].as_str().unwrap().into());
                check(row, &a);
            }
            "auth:auth_token_list" => {
                let corpus_admin = row.response["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["role"] == "admin")
                    .unwrap();
                let ours_admin = a["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["role"] == "admin")
                    .unwrap();
                subs.insert(
                    corpus_admin["id"].as_str().unwrap().into(),
                    ours_admin["id"].as_str().unwrap().into(),
                );
                assert_json(case, &substitute(&row.response, &subs), &a, &[]);
            }
            _ => assert_json(case, &substitute(&row.response, &subs), &a, ignored(case)),
        }
    }
}

#[test]
fn ephemeral_section() {
    let rows: Vec<Row> = load_rows()
        .into_iter()
        .filter(|r| section(&r.op_case) == "ephemeral")
        .collect();
    let d = TestDaemon::start(opts().max_inflight(2));
    assert!(d.ready_line().contains("data_dir=ephemeral"));
    let mut conn = d.connect().unwrap();
    for row in &rows {
        let case = row.op_case.as_str();
        match case {
            "ephemeral:overload_4_concurrent_heavy_reads_max_inflight_2" => {
                overload_check(&d, &mut conn, row)
            }
            "ephemeral:metrics_after_overload" => {
                wait_open_connections(&d, 1);
                let a = conn.call(&row.request).unwrap();
                check(row, &a);
            }
            _ => {
                let a = conn.call(&row.request).unwrap();
                check(row, &a);
            }
        }
    }
}

/// The recording filled store "big" with 800 `write_fact`s (~16 MB, hence the slow
/// reads), then ran 4 connections × 3 sequential `facts_for`. Here the filler facts
/// are small and an `exec_delay_ms` fault keeps each read in flight for 300 ms, which
/// makes the split exact: the first two reads run, the two other connections are
/// rejected three times each.
fn overload_check(d: &TestDaemon, conn: &mut Conn, row: &Row) {
    let mut batch = Vec::new();
    for i in 0..800 {
        let req = json!({"op": "write_fact", "fact": fact("big", &format!("big:{i}"), &format!("k{}", i % 40), json!({"i": i, "pad": "x".repeat(64)}), i as f64)});
        tbackend_core::protocol::frame::encode_into(
            &serde_json::to_vec(&req).unwrap(),
            usize::MAX,
            &mut batch,
        )
        .unwrap();
        if i % 50 == 49 {
            conn.send_raw(&batch).unwrap();
            batch.clear();
            for _ in 0..50 {
                assert_eq!(conn.recv().unwrap()["ok"], true);
            }
        }
    }
    d.control().exec_delay(300).unwrap();
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let req = row.request.clone();
            let mut c = d.connect().unwrap();
            std::thread::spawn(move || {
                barrier.wait();
                (0..3)
                    .map(|_| c.call(&req).unwrap())
                    .collect::<Vec<Value>>()
            })
        })
        .collect();
    let answers: Vec<Value> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    d.control().exec_delay(0).unwrap();
    let overloaded: Vec<&Value> = answers
        .iter()
        .filter(|a| a["error_code"] == "overloaded")
        .collect();
    let ok = answers.iter().filter(|a| a["ok"] == true).count();
    let expected = &row.response;
    assert_eq!(answers.len() as u64, expected["total"].as_u64().unwrap());
    assert_eq!(
        overloaded.len() as u64,
        expected["overloaded"].as_u64().unwrap()
    );
    assert_eq!(ok as u64, expected["ok"].as_u64().unwrap());
    assert_json(
        &row.op_case,
        &expected["sample_overload_response"],
        overloaded[0],
        &[],
    );
}

/// The idle rows, with a 0.3 s idle timeout instead of the recorded 30 s.
#[test]
fn idle_rows_with_short_timeout() {
    let rows = load_rows();
    let d = TestDaemon::start(opts().idle_timeout(Duration::from_millis(300)));
    let cases = [
        "idle_connection_no_bytes",
        "partial_body",
        "length_prefix_0xFFFFFFFF_no_body",
        "http_get_request",
        "partial_length_prefix",
        "idle_after_one_ping",
    ];
    let conns: Vec<(String, Conn, Instant)> = cases
        .iter()
        .map(|case| {
            let row = rows.iter().find(|r| r.op_case == *case).unwrap();
            let mut c = d.connect().unwrap();
            if *case == "idle_after_one_ping" {
                c.call(&json!({"op": "ping"})).unwrap();
            }
            c.send_raw(&unhex(row.request["raw_hex"].as_str().unwrap()))
                .unwrap();
            assert_eq!(row.response["bytes_received"], "", "{case}");
            (case.to_string(), c, Instant::now())
        })
        .collect();
    for (case, mut c, t0) in conns {
        let got = c
            .wait_closed(Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{case}: not closed: {e}"));
        let after = t0.elapsed();
        assert!(got.is_empty(), "{case}: got {got:?}");
        assert!(
            after >= Duration::from_millis(250),
            "{case}: closed too early ({after:?})"
        );
    }
}

#[test]
fn connection_17_waits_for_a_free_worker() {
    let rows = load_rows();
    let row = rows
        .iter()
        .find(|r| r.op_case == "connection_17_when_16_workers_busy")
        .unwrap();
    let d = TestDaemon::start(opts().pool_size(16));
    let mut held: Vec<Conn> = (0..16)
        .map(|_| {
            let mut c = d.connect().unwrap();
            c.call(&json!({"op": "ping"})).unwrap();
            c
        })
        .collect();
    let mut c17 = d.connect().unwrap();
    c17.send(&json!({"op": "ping"})).unwrap();
    c17.set_timeout(Duration::from_millis(500)).unwrap();
    assert!(c17.recv().is_err(), "no answer while 16 workers are held");
    let status = d.control().status().unwrap();
    assert_eq!(
        (status.connections_active, status.connections_queued),
        (16, 1)
    );
    held.pop();
    c17.set_timeout(Duration::from_secs(5)).unwrap();
    let a = c17.recv().unwrap();
    assert_json(&row.op_case, &row.response["response"], &a, &[]);
}

#[test]
fn fifty_mib_value_round_trip() {
    let rows = load_rows();
    let write = rows
        .iter()
        .find(|r| r.op_case == "write_fact_once_50MiB_value")
        .unwrap();
    let d = TestDaemon::start(opts());
    let mut c = d.connect().unwrap();
    let blob = "b".repeat(52_428_800);
    let a = c
        .call(&wfo(
            "bigframe",
            "bigframe:1",
            "k",
            json!({"blob": blob}),
            1.0,
        ))
        .unwrap();
    assert_json(&write.op_case, &write.response, &a, &[]);
    c.send(&json!({"op": "facts_by_seq", "store": "bigframe"}))
        .unwrap();
    // recv_body verifies the CRC.
    let body = c.recv_body().unwrap();
    assert!(
        body.len() > 52_428_800,
        "answer body of {} bytes",
        body.len()
    );
}

/// frames_hex.jsonl: each `*_request` frame sent as is, its `*_response` compared byte
/// for byte.
#[test]
fn raw_frames_byte_exact() {
    let path = corpus_dir().join("frames_hex.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let frames: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_name: HashMap<&str, &str> = frames
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["hex"].as_str().unwrap()))
        .collect();
    let d = TestDaemon::start(opts());
    let mut c = d.connect().unwrap();
    let mut pairs = 0;
    for f in &frames {
        let name = f["name"].as_str().unwrap();
        let Some(base) = name.strip_suffix("_request") else {
            continue;
        };
        let Some(expected) = by_name.get(format!("{base}_response").as_str()) else {
            continue;
        };
        c.send_raw(&unhex(f["hex"].as_str().unwrap())).unwrap();
        let body = c.recv_body().unwrap();
        let mut frame = Vec::new();
        tbackend_core::protocol::frame::encode_into(&body, usize::MAX, &mut frame).unwrap();
        assert_eq!(tbackend_testd::faults::hex(&frame), *expected, "{base}");
        pairs += 1;
    }
    assert_eq!(pairs, 6);
}
