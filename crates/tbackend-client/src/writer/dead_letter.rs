//! One line of the dead-letter file beside the spool (`dead-letter.jsonl`): a fact the
//! writer gave up on, with its content, so `rake tbackend:dead_letters:replay` can send
//! it again exactly as it was sent. The Ruby side (DeadLetters) reads and writes the same
//! format.

use serde::Serialize;
use serde_json::value::RawValue;

/// Why a fact was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// It spent `retry_attempts` on answers that may be retried.
    Exhausted,
    /// `duplicate_fact_id_conflict`: the daemon holds another fact under its id.
    Conflict,
    /// A non-retryable error (or a request that could not be built).
    Error,
}

impl Reason {
    /// The name in records, events and log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Exhausted => "exhausted",
            Reason::Conflict => "conflict",
            Reason::Error => "error",
        }
    }
}

/// One record, fields in the file's order. `fact` is the fact's JSON exactly as sent
/// (`null` if it is not JSON, which the writer never sends).
#[derive(Debug, Serialize)]
pub(super) struct DeadLetterRecord<'a> {
    /// Epoch seconds.
    pub at: f64,
    pub reason: Reason,
    pub status: &'a str,
    pub error: &'a str,
    /// Sends, the first included.
    pub attempts: u32,
    pub store: &'a str,
    pub key: &'a str,
    pub id: &'a str,
    pub durability: Option<&'a str>,
    pub fact: Option<&'a RawValue>,
}

impl DeadLetterRecord<'_> {
    /// The line to append, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a dead-letter record serializes");
        line.push(b'\n');
        line
    }
}

/// `fact` as raw JSON, if it is JSON.
pub(super) fn raw_fact(fact: &[u8]) -> Option<&RawValue> {
    serde_json::from_slice(fact).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_the_fact_byte_for_byte_and_escapes_the_rest() {
        let fact = br#"{"id":"f\"1","value":{"n":1e2,"x":1.50}}"#;
        let record = DeadLetterRecord {
            at: 1.5,
            reason: Reason::Exhausted,
            status: "timeout_unknown",
            error: "timed out \"reading\"\n",
            attempts: 3,
            store: "s",
            key: "k\u{0}",
            id: "f\"1",
            durability: None,
            fact: raw_fact(fact),
        };
        let line = String::from_utf8(record.to_line()).unwrap();
        assert_eq!(
            line,
            concat!(
                r#"{"at":1.5,"reason":"exhausted","status":"timeout_unknown","#,
                r#""error":"timed out \"reading\"\n","attempts":3,"store":"s","key":"k\u0000","#,
                r#""id":"f\"1","durability":null,"fact":{"id":"f\"1","value":{"n":1e2,"x":1.50}}}"#,
                "\n"
            )
        );
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["error"], "timed out \"reading\"\n");
        assert_eq!(back["key"], "k\u{0}");
    }

    #[test]
    fn a_fact_that_is_not_json_is_recorded_as_null() {
        let record = DeadLetterRecord {
            at: 0.0,
            reason: Reason::Conflict,
            status: "duplicate_fact_id_conflict",
            error: "",
            attempts: 1,
            store: "s",
            key: "k",
            id: "i",
            durability: Some("accepted"),
            fact: raw_fact(b"\xff not json"),
        };
        let v: serde_json::Value = serde_json::from_slice(&record.to_line()).unwrap();
        assert_eq!(v["fact"], serde_json::Value::Null);
        assert_eq!(v["reason"], "conflict");
        assert_eq!(v["durability"], "accepted");
    }
}
