//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
// Not every test binary polls.
#[allow(unused_imports)]
pub use tbackend_testd::harness::wait_until;
use tbackend_testd::harness::{Options, TestDaemon};

/// The binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tbackend-testd"))
}

/// Options running this crate's binary.
pub fn opts() -> Options {
    Options::new().binary(bin())
}

/// Differences between `expected` and `actual`, skipping the dotted paths in `ignore`
/// (`"summary.uptime_seconds"`; array items are `[i]`).
pub fn json_diff(expected: &Value, actual: &Value, ignore: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    diff_at(expected, actual, "", ignore, &mut out);
    out
}

fn diff_at(e: &Value, a: &Value, path: &str, ignore: &[&str], out: &mut Vec<String>) {
    if ignore.contains(&path) {
        return;
    }
    match (e, a) {
        (Value::Object(em), Value::Object(am)) => {
            for (k, ev) in em {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match am.get(k) {
                    Some(av) => diff_at(ev, av, &p, ignore, out),
                    None if ignore.contains(&p.as_str()) => {}
                    None => out.push(format!("{p}: missing (expected {ev})")),
                }
            }
            for k in am.keys().filter(|k| !em.contains_key(*k)) {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if !ignore.contains(&p.as_str()) {
                    out.push(format!("{p}: unexpected field {}", am[k]));
                }
            }
        }
        (Value::Array(ea), Value::Array(aa)) if ea.len() == aa.len() => {
            for (i, (ev, av)) in ea.iter().zip(aa).enumerate() {
                diff_at(ev, av, &format!("{path}[{i}]"), ignore, out);
            }
        }
        // serde_json's equality keeps 10 and 10.0 apart, as the daemon does.
        _ if e == a => {}
        _ => out.push(format!("{path}: expected {e}, got {a}")),
    }
}

/// Panics with every difference.
pub fn assert_json(case: &str, expected: &Value, actual: &Value, ignore: &[&str]) {
    let d = json_diff(expected, actual, ignore);
    let cut = |v: &Value| {
        let s = v.to_string();
        if s.len() > 1500 {
            let cut = (0..=1500)
                .rev()
                .find(|i| s.is_char_boundary(*i))
                .unwrap_or(0);
            format!("{}…", &s[..cut])
        } else {
            s
        }
    };
    assert!(
        d.is_empty(),
        "{case}: answer differs from the real daemon:\n  {}\nexpected {}\nactual   {}",
        d.iter()
            .map(|l| cut(&Value::String(l.clone())))
            .collect::<Vec<_>>()
            .join("\n  "),
        cut(expected),
        cut(actual)
    );
}

/// Waits until exactly `open` data connections are open (the server noticed the
/// others' EOF), so connection-dependent answers are deterministic.
pub fn wait_open_connections(d: &TestDaemon, open: u64) {
    let ctl = d.control();
    assert!(
        wait_until(Duration::from_secs(5), || ctl
            .status()
            .is_ok_and(|s| s.connections_open == open)),
        "daemon never settled at {open} open connections: {:?}",
        ctl.status()
    );
}

/// A valid fact.
pub fn fact(store: &str, id: &str, key: &str, value: Value, tt: f64) -> Value {
    json!({"id": id, "store": store, "key": key, "value": value, "transaction_time": tt, "schema_version": 1})
}

/// A `write_fact_once` request.
pub fn wfo(store: &str, id: &str, key: &str, value: Value, tt: f64) -> Value {
    json!({"op": "write_fact_once", "fact": fact(store, id, key, value, tt)})
}

pub fn unhex(s: &str) -> Vec<u8> {
    tbackend_testd::faults::unhex(s).expect("valid hex")
}
