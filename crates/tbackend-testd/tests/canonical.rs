//! The test daemon answers and hashes in tbackend-core's canonical JSON, byte for byte,
//! for the inputs where a second implementation would drift: keys whose UTF-8 and UTF-16
//! orders differ, escapes, `-0.0` and `10.0`, the integer extremes. Through the engine,
//! without sockets: what a client's `value_hash` must equal, and what a read returns.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tbackend_core::fact::json::{canonical_json, value_hash};
use tbackend_testd::engine::{Engine, EngineConfig};
use tbackend_testd::faults::Faults;

fn engine() -> Engine {
    Engine::open(
        EngineConfig {
            data_dir: None,
            auth: false,
            strict_hash: true,
            commit_interval: Duration::from_millis(5),
            max_inflight: 0,
            host: "127.0.0.1".into(),
            pool_size: 1,
            request_cpu_us: 0,
        },
        Arc::new(Faults::default()),
    )
    .unwrap()
}

fn call(engine: &Engine, req: &Value) -> Vec<u8> {
    engine.handle(&serde_json::to_vec(req).unwrap())
}

/// Values as a request carries them (parsed by the engine from these bytes).
const TRICKY: &[&str] = &[
    // U+FF61 sorts before U+1F600 by UTF-8 bytes, after it by UTF-16 units.
    r#"{"😀":1,"｡":2,"é":3,"z":4,"B":5,"a":6,"":7}"#,
    r#"{"s":"\u0000\u0001\u001f\u007f\"\\/\b\f\n\r\t\u2028\u2029é😀"}"#,
    // `-0` is read as the float -0.0, `1e300` is written `1e+300`.
    r#"{"f":[10.0,-0.0,0.1,1e300,1.5e-7,1780387174.5,10,-0]}"#,
    r#"{"i":[18446744073709551615,-9223372036854775808,9223372036854775807,0]}"#,
    r#"{"b":{"z":[{"y":null,"x":true}],"a":{}},"a":[[],{},false]}"#,
    r#"[]"#,
    r#""just a string""#,
    r#"12.50"#,
];

/// The canonical bytes of the cases above, written out, so that neither side can move
/// without this failing.
const EXPECTED: &[&str] = &[
    r#"{"":7,"B":5,"a":6,"z":4,"é":3,"｡":2,"😀":1}"#,
    "{\"s\":\"\\u0000\\u0001\\u001f\u{7f}\\\"\\\\/\\b\\f\\n\\r\\t\u{2028}\u{2029}é😀\"}",
    r#"{"f":[10.0,-0.0,0.1,1e+300,1.5e-7,1780387174.5,10,-0.0]}"#,
    r#"{"i":[18446744073709551615,-9223372036854775808,9223372036854775807,0]}"#,
    r#"{"a":[[],{},false],"b":{"a":{},"z":[{"x":true,"y":null}]}}"#,
    r#"[]"#,
    r#""just a string""#,
    r#"12.5"#,
];

#[test]
fn core_and_testd_write_and_hash_the_same_bytes() {
    let engine = engine();
    for (i, (input, expected)) in TRICKY.iter().zip(EXPECTED).enumerate() {
        let value: Value = serde_json::from_str(input).unwrap();
        let canonical = canonical_json(&value);
        assert_eq!(
            String::from_utf8(canonical.clone()).unwrap(),
            *expected,
            "core's canonical form of {input}"
        );
        let hash = value_hash(&value);
        assert_eq!(hash, blake3::hash(expected.as_bytes()).to_hex().to_string());

        // strict_hash: the engine refuses a write whose client hash differs from its own.
        let key = format!("k{i}");
        let fact = |hash: &str| {
            json!({"id": format!("canon:{i}"), "store": "canon", "key": key, "value": value,
                   "transaction_time": 1_780_387_000.0, "schema_version": 1, "value_hash": hash})
        };
        let wrong: Value = serde_json::from_slice(&call(
            &engine,
            &json!({"op": "write_fact_once", "fact": fact("0".repeat(64).as_str())}),
        ))
        .unwrap();
        assert_eq!(wrong["server_value_hash"], json!(hash), "{input}");
        let written: Value = serde_json::from_slice(&call(
            &engine,
            &json!({"op": "write_fact_once", "fact": fact(&hash)}),
        ))
        .unwrap();
        assert_eq!(written["ok"], json!(true), "{input}: {written}");

        // A read answers the stored value in the same bytes, followed by the same hash.
        let answer = call(
            &engine,
            &json!({"op": "latest_for", "store": "canon", "key": key}),
        );
        let needle = format!("\"value\":{expected},\"value_hash\":\"{hash}\"");
        let text = String::from_utf8(answer.clone()).unwrap();
        assert!(text.contains(&needle), "{text}\nlacks {needle}");
        // The whole answer is in canonical form.
        let parsed: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(canonical_json(&parsed), answer);
    }
}
