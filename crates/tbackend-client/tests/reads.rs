//! `Client::latest_for_many` against the test daemon: one outcome per key, in order,
//! pipelined; a key without facts answers `fact: null`; a daemon that is down gives every
//! key a transport status.

mod common;

use common::*;
use serde_json::json;
use serde_json::Value;
use tbackend_client::reads::latest_for_request;
use tbackend_client::{Cancel, Client, OpKind, Request, Status};
use tbackend_core::protocol::request::RequestBuilder;

fn write_fact(fact: &Value) -> Request {
    let mut b = RequestBuilder::new("write_fact_once", None);
    b.raw("fact", &serde_json::to_vec(fact).unwrap()).unwrap();
    Request::built(OpKind::Write, b)
}

#[test]
fn latest_for_many_answers_every_key_in_order() {
    let d = start(opts());
    let c = client(&d);
    let mut writes = Vec::new();
    for i in 0..300u64 {
        writes.push(write(
            "many",
            &format!("a-{i}"),
            &format!("k{i}"),
            json!({"n": i}),
        ));
        // Every third key gets a second fact, later by transaction time.
        if i.is_multiple_of(3) {
            let key = format!("k{i}");
            let mut f = fact("many", &format!("b-{i}"), &key, json!({"n": i, "v": 2}));
            f["transaction_time"] = json!(1_780_387_001.5);
            writes.push(write_fact(&f));
        }
    }
    for o in c.call_batch(&writes, None, &Cancel::new()) {
        assert_status(&o, Status::CommittedAcked);
    }

    // Keys in reverse order, with unknown ones in between.
    let mut keys: Vec<String> = (0..300).rev().map(|i| format!("k{i}")).collect();
    keys.insert(10, "nope-1".into());
    keys.push("nope-2".into());
    let before = d.control().status().unwrap();
    let outcomes = c
        .latest_for_many("many", &keys, None, None, &Cancel::new())
        .unwrap();
    assert_eq!(outcomes.len(), keys.len());
    for (key, o) in keys.iter().zip(&outcomes) {
        assert_status(o, Status::Ok);
        let fact = &o.classified.answer.value()["fact"];
        if key.starts_with("nope") {
            assert!(fact.is_null(), "{key}: {fact}");
            continue;
        }
        let i: u64 = key[1..].parse().unwrap();
        assert_eq!(fact["key"], json!(key));
        let expected = if i.is_multiple_of(3) {
            json!({"n": i, "v": 2})
        } else {
            json!({"n": i})
        };
        assert_eq!(fact["value"], expected, "{key}");
    }
    // All on the client's connections: pipelined, not one connection per key.
    let after = d.control().status().unwrap();
    assert_eq!(after.connections_open, before.connections_open);
}

#[test]
fn latest_for_many_with_as_of_and_the_token() {
    let d = start(opts());
    let c = client(&d);
    let mut early = fact("asof", "e", "k", json!({"at": "early"}));
    early["transaction_time"] = json!(100.0);
    let mut late = fact("asof", "l", "k", json!({"at": "late"}));
    late["transaction_time"] = json!(200.0);
    for f in [early, late] {
        assert_status(&call(&c, &write_fact(&f)), Status::CommittedAcked);
    }
    let at = |as_of| {
        c.latest_for_many("asof", &["k"], as_of, None, &Cancel::new())
            .unwrap()
            .remove(0)
            .classified
            .answer
            .value()["fact"]["value"]["at"]
            .clone()
    };
    assert_eq!(at(None), json!("late"));
    assert_eq!(at(Some(150.0)), json!("early"));

    let req = latest_for_request(Some("secret"), "s", "k", Some(1.5)).unwrap();
    let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
    assert_eq!(
        body,
        json!({"op": "latest_for", "token": "secret", "store": "s", "key": "k", "as_of": 1.5})
    );
}

#[test]
fn latest_for_many_with_the_daemon_down_answers_each_key_unavailable() {
    let d = start(opts());
    let config = config(&d);
    drop(d);
    let c = Client::new(config);
    let outcomes = c
        .latest_for_many("many", &["a", "b", "c"], None, None, &Cancel::new())
        .unwrap();
    assert_eq!(outcomes.len(), 3);
    for o in &outcomes {
        assert!(!o.classified.ok, "{o:?}");
        assert_eq!(o.classified.status, Status::Unavailable, "{o:?}");
    }
}
