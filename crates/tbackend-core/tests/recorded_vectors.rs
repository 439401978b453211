//! The vectors recorded from the real daemon and the old gem, kept in the repository's
//! `spec/fixtures/tbackend/` (its README says what each file is).
//!
//! Each layer is pinned separately: the frame layer accepts any body with a good CRC
//! (an empty one, "hello", MessagePack, invalid UTF-8 all decode fine); telling a
//! usable answer from garbage is the answer layer's job.

use serde_json::Value;
use std::path::PathBuf;
use tbackend_core::fact::id::{derive_id, IdFormat, RecordId, VersionToken};
use tbackend_core::protocol::answer::{classify, AnswerError, OpKind, Status};
use tbackend_core::protocol::frame::{self, Decoder, FrameError, DEFAULT_MAX_ANSWER};

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../spec/fixtures/tbackend")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the fixture {} ({e})", path.display()))
}

struct FrameVector {
    name: String,
    bytes: Vec<u8>,
    body_utf8: String,
}

fn frame_vectors() -> Vec<FrameVector> {
    let vectors: Vec<FrameVector> = fixture("frames_hex.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("frames_hex.jsonl line is JSON");
            FrameVector {
                name: v["name"].as_str().unwrap().to_owned(),
                bytes: unhex(v["hex"].as_str().unwrap()),
                body_utf8: v["body_utf8"].as_str().unwrap().to_owned(),
            }
        })
        .collect();
    assert!(vectors.len() >= 20, "only {} frame vectors", vectors.len());
    vectors
}

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2));
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The body bytes match the recorded text; bodies that are not UTF-8 were recorded
/// lossily (U+FFFD), so those compare lossily and the encoder test pins their bytes.
fn assert_body(v: &FrameVector, body: &[u8]) {
    match std::str::from_utf8(body) {
        Ok(text) => assert_eq!(text, v.body_utf8, "{}", v.name),
        Err(_) => assert_eq!(String::from_utf8_lossy(body), v.body_utf8, "{}", v.name),
    }
}

#[test]
fn valid_frames_decode_whole_and_at_every_split() {
    for v in frame_vectors().iter().filter(|v| v.name != "bad_crc") {
        let mut d = Decoder::new(DEFAULT_MAX_ANSWER);
        d.feed(&v.bytes);
        let body = d
            .next_frame()
            .unwrap()
            .unwrap_or_else(|| panic!("{}", v.name));
        assert_body(v, &body);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 0);

        for split in 0..=v.bytes.len() {
            let mut d = Decoder::new(DEFAULT_MAX_ANSWER);
            d.feed(&v.bytes[..split]);
            let early = d.next_frame().unwrap();
            if split < v.bytes.len() {
                assert_eq!(early, None, "{} split at {split}", v.name);
                d.feed(&v.bytes[split..]);
                let body = d.next_frame().unwrap().unwrap();
                assert_eq!(&body, early.as_ref().unwrap_or(&body));
                assert_body(v, &body);
            } else {
                assert_body(v, &early.unwrap());
            }
            assert_eq!(d.next_frame(), Ok(None));
        }
    }
}

#[test]
fn all_valid_frames_pipelined_in_one_stream_decode_in_order_at_every_split() {
    let vectors: Vec<FrameVector> = frame_vectors()
        .into_iter()
        .filter(|v| v.name != "bad_crc")
        .collect();
    let stream: Vec<u8> = vectors.iter().flat_map(|v| v.bytes.clone()).collect();
    for split in 0..=stream.len() {
        let mut d = Decoder::new(DEFAULT_MAX_ANSWER);
        let mut bodies = Vec::new();
        for part in [&stream[..split], &stream[split..]] {
            d.feed(part);
            while let Some(body) = d.next_frame().unwrap() {
                bodies.push(body);
            }
        }
        assert_eq!(bodies.len(), vectors.len(), "split at {split}");
        for (v, body) in vectors.iter().zip(&bodies) {
            assert_body(v, body);
        }
    }
}

#[test]
fn the_bad_crc_frame_is_rejected() {
    let vectors = frame_vectors();
    let v = vectors
        .iter()
        .find(|v| v.name == "bad_crc")
        .expect("a bad_crc vector");
    let mut d = Decoder::new(DEFAULT_MAX_ANSWER);
    d.feed(&v.bytes);
    assert_eq!(
        d.next_frame(),
        Err(FrameError::BadCrc {
            expected: 0,
            actual: frame::crc32(br#"{"op":"ping"}"#)
        })
    );
    // Byte by byte too: the error comes with the last byte, not before.
    let mut d = Decoder::new(DEFAULT_MAX_ANSWER);
    for (i, byte) in v.bytes.iter().enumerate() {
        d.feed(std::slice::from_ref(byte));
        let next = d.next_frame();
        if i + 1 < v.bytes.len() {
            assert_eq!(next, Ok(None));
        } else {
            assert!(matches!(next, Err(FrameError::BadCrc { .. })));
        }
    }
}

#[test]
fn the_encoder_reproduces_every_valid_frame() {
    for v in frame_vectors().iter().filter(|v| v.name != "bad_crc") {
        let body = &v.bytes[frame::HEADER_LEN..v.bytes.len() - frame::TRAILER_LEN];
        assert_eq!(
            frame::encode(body, frame::DEFAULT_MAX_REQUEST).unwrap(),
            v.bytes,
            "{}",
            v.name
        );
        assert_eq!(frame::body_len(&v.bytes), Some(body.len()));
        if std::str::from_utf8(body).is_ok() {
            assert_eq!(body, v.body_utf8.as_bytes(), "{}", v.name);
        }
    }
}

/// What the answer layer makes of each frame body, had the daemon sent it as an answer
/// to a ping: the malformed bodies the daemon refuses as requests are refused here too.
#[test]
fn the_answer_layer_pins_what_the_frame_layer_lets_through() {
    let expect_not_json = ["zero_len", "not_json", "msgpack", "trailing", "bad_utf8"];
    let expect_not_object = [("json_array", "array"), ("json_string", "string")];
    for v in frame_vectors().iter().filter(|v| v.name != "bad_crc") {
        let body = &v.bytes[frame::HEADER_LEN..v.bytes.len() - frame::TRAILER_LEN];
        let result = classify(OpKind::Ping, body);
        if expect_not_json.contains(&v.name.as_str()) {
            assert!(
                matches!(result, Err(AnswerError::NotJson(_))),
                "{}: {result:?}",
                v.name
            );
        } else if let Some((_, found)) = expect_not_object.iter().find(|(n, _)| *n == v.name) {
            assert_eq!(result, Err(AnswerError::NotObject(found)), "{}", v.name);
        } else {
            assert!(result.is_ok(), "{}: {result:?}", v.name);
        }
    }
}

#[test]
fn recorded_answers_classify_to_their_status() {
    let vectors = frame_vectors();
    let body = |name: &str| {
        let v = vectors.iter().find(|v| v.name == name).unwrap();
        v.bytes[frame::HEADER_LEN..v.bytes.len() - frame::TRAILER_LEN].to_vec()
    };
    let status = |op, name: &str| classify(op, &body(name)).unwrap().status;
    assert_eq!(status(OpKind::Ping, "ping_response"), Status::Ok);
    assert_eq!(
        status(OpKind::Write, "write_fact_once_insert_response"),
        Status::CommittedAcked
    );
    assert_eq!(
        status(OpKind::Write, "write_fact_once_replay_response"),
        Status::IdempotentReplay
    );
    assert_eq!(
        status(OpKind::Write, "write_fact_once_conflict_response"),
        Status::DuplicateFactIdConflict
    );
    assert_eq!(status(OpKind::Read, "latest_for_response"), Status::Ok);
    assert_eq!(status(OpKind::Read, "unknown_op_response"), Status::Error);
    // Requests have no `ok`: read as answers, they are failures…
    assert_eq!(status(OpKind::Ping, "ping_request"), Status::Error);
    assert_eq!(status(OpKind::Ping, "ws"), Status::Error);
    // …and a duplicate key keeps its last value, as the daemon's parser does.
    let dup = classify(OpKind::Ping, &body("dupkey")).unwrap();
    assert_eq!(dup.answer.value()["op"], "size");
}

fn op_kind(op: &str) -> OpKind {
    match op {
        "write_fact_once" | "write_fact" => OpKind::Write,
        "ping" => OpKind::Ping,
        "metrics" => OpKind::Metrics,
        _ => OpKind::Read,
    }
}

/// Every recorded request/answer pair classifies without surprise: success exactly
/// when the answer says so.
#[test]
fn every_transcript_answer_classifies() {
    let mut checked = 0;
    for line in fixture("transcripts.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let t: Value = serde_json::from_str(line).unwrap();
        let (Some(op), Some(answer)) = (t["request"]["op"].as_str(), t["response"].as_object())
        else {
            continue;
        };
        if answer.contains_key("connection") || answer.contains_key("note") {
            continue;
        }
        let kind = op_kind(op);
        let body = serde_json::to_vec(answer).unwrap();
        let r = classify(kind, &body).unwrap_or_else(|e| panic!("{}: {e}", t["op_case"]));
        let says_ok = answer.get("ok") == Some(&Value::Bool(true));
        let expected_ok = match kind {
            OpKind::Write => says_ok && answer.get("committed") == Some(&Value::Bool(true)),
            OpKind::Metrics => says_ok || !answer.contains_key("ok"),
            _ => says_ok,
        };
        assert_eq!(r.ok, expected_ok, "{}", t["op_case"]);
        assert_eq!(r.ok, r.status.row().flags.ok, "{}", t["op_case"]);
        if !r.ok {
            assert!(r.error.is_some(), "{}", t["op_case"]);
        }
        checked += 1;
    }
    assert!(checked > 150, "only {checked} transcript answers checked");
}

#[test]
fn legacy_fact_ids_match_the_old_gem() {
    let file: Value = serde_json::from_str(&fixture("legacy_fact_ids.json")).unwrap();
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for case in cases {
        let store = case["store"].as_str().unwrap();
        let event_type = case["event_type"].as_str().unwrap();
        // The binding hands over `record.id.to_s`.
        let record_id = match &case["record_id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("unexpected record_id {other}"),
        };
        let source = &case["source_version"];
        let versions: Vec<VersionToken> = match source["kind"].as_str().unwrap() {
            "time" => {
                let ns = source["epoch_ns"].as_i64().unwrap();
                // Both ways the binding may read a Time: total nanoseconds, or Ruby's
                // `to_i` and `nsec`.
                vec![
                    VersionToken::from_epoch_nanos(i128::from(ns)),
                    VersionToken::from_secs_nanos(
                        ns.div_euclid(1_000_000_000),
                        ns.rem_euclid(1_000_000_000) as u32,
                    ),
                ]
            }
            "integer" => vec![VersionToken::Text(source["value"].to_string())],
            "string" => vec![VersionToken::Text(
                source["value"].as_str().unwrap().to_owned(),
            )],
            // Ruby's Float#to_s; for this vector it agrees with Rust's shortest form.
            "float" => vec![VersionToken::Text(format!(
                "{}",
                source["value"].as_f64().unwrap()
            ))],
            "nil" => vec![VersionToken::Text(String::new())],
            other => panic!("unexpected source_version kind {other}"),
        };
        let expected = case["expected_id"].as_str().unwrap();
        for version in versions {
            assert_eq!(
                derive_id(
                    IdFormat::Legacy,
                    store,
                    &RecordId::One(record_id.clone()),
                    event_type,
                    &version
                ),
                expected
            );
        }
    }
}
