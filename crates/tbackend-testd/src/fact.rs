//! The fact: what a write carries (docs/protocol.md §6) and what the daemon keeps.

use serde::Deserialize;
use serde_json::{Map, Value};

/// A fact as a write sends it.
///
/// Parsed with `serde_json::from_value`, like the real daemon, so that its error texts
/// ("missing field `id`", "invalid type: string \"abc\", expected struct FactData",
/// "invalid value: integer `-1`, expected u32") come out byte for byte: the type name
/// and the field order are part of the wire contract. Unknown fields (`seq_id`,
/// `durability`, `token`, …) are dropped silently.
#[derive(Debug, Deserialize)]
pub struct FactData {
    pub id: String,
    pub store: String,
    pub key: String,
    pub value: Value,
    pub transaction_time: f64,
    pub schema_version: u32,
    pub valid_time: Option<f64>,
    pub causation: Option<String>,
    pub producer: Option<String>,
    pub derivation: Option<String>,
    pub origin_node: Option<String>,
    pub value_hash: Option<String>,
}

/// A stored fact. `value_hash` is always the server's canonical hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    pub seq_id: u64,
    pub id: String,
    pub store: String,
    pub key: String,
    pub value: Value,
    pub value_hash: String,
    pub transaction_time: f64,
    pub valid_time: Option<f64>,
    pub schema_version: u32,
    pub causation: Option<String>,
    pub producer: Option<String>,
    pub derivation: Option<String>,
    pub origin_node: Option<String>,
}

/// A fact as the log keeps it: every field, the server-assigned ones included.
#[derive(Debug, Deserialize)]
struct FactRecord {
    seq_id: u64,
    id: String,
    store: String,
    key: String,
    value: Value,
    value_hash: String,
    transaction_time: f64,
    valid_time: Option<f64>,
    schema_version: u32,
    causation: Option<String>,
    producer: Option<String>,
    derivation: Option<String>,
    origin_node: Option<String>,
}

impl Fact {
    /// The stored form of a write, with its sequence number and canonical hash.
    pub fn from_data(data: FactData, seq_id: u64, value_hash: String) -> Fact {
        Fact {
            seq_id,
            id: data.id,
            store: data.store,
            key: data.key,
            value: data.value,
            value_hash,
            transaction_time: data.transaction_time,
            valid_time: data.valid_time,
            schema_version: data.schema_version,
            causation: data.causation,
            producer: data.producer,
            derivation: data.derivation,
            origin_node: data.origin_node,
        }
    }

    /// The read form: all 13 fields, `null` for absent optionals, times as floats
    /// (an integer `transaction_time` comes back as `1780387000.0`).
    pub fn to_json(&self) -> Value {
        let opt_str = |s: &Option<String>| s.clone().map_or(Value::Null, Value::String);
        let mut m = Map::new();
        m.insert("causation".into(), opt_str(&self.causation));
        m.insert("derivation".into(), opt_str(&self.derivation));
        m.insert("id".into(), Value::String(self.id.clone()));
        m.insert("key".into(), Value::String(self.key.clone()));
        m.insert("origin_node".into(), opt_str(&self.origin_node));
        m.insert("producer".into(), opt_str(&self.producer));
        m.insert("schema_version".into(), self.schema_version.into());
        m.insert("seq_id".into(), self.seq_id.into());
        m.insert("store".into(), Value::String(self.store.clone()));
        m.insert("transaction_time".into(), float(self.transaction_time));
        m.insert(
            "valid_time".into(),
            self.valid_time.map_or(Value::Null, float),
        );
        m.insert("value".into(), self.value.clone());
        m.insert("value_hash".into(), Value::String(self.value_hash.clone()));
        Value::Object(m)
    }

    /// Parses what [`Fact::to_json`] produced (the log record).
    pub fn from_record(v: Value) -> Result<Fact, serde_json::Error> {
        let r: FactRecord = serde_json::from_value(v)?;
        Ok(Fact {
            seq_id: r.seq_id,
            id: r.id,
            store: r.store,
            key: r.key,
            value: r.value,
            value_hash: r.value_hash,
            transaction_time: r.transaction_time,
            valid_time: r.valid_time,
            schema_version: r.schema_version,
            causation: r.causation,
            producer: r.producer,
            derivation: r.derivation,
            origin_node: r.origin_node,
        })
    }
}

fn float(f: f64) -> Value {
    // JSON cannot carry NaN or infinities, so a parsed time is always finite.
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> String {
        match serde_json::from_value::<FactData>(v) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn schema_errors_match_the_daemon() {
        let base = json!({"id":"i","store":"s","key":"k","value":{"a":1},"transaction_time":1.0,"schema_version":1});
        assert_eq!(parse(base.clone()), "ok");
        assert_eq!(
            parse(json!("abc")),
            "invalid type: string \"abc\", expected struct FactData"
        );
        for field in [
            "id",
            "store",
            "key",
            "value",
            "transaction_time",
            "schema_version",
        ] {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(parse(v), format!("missing field `{field}`"));
        }
        let mut v = base.clone();
        v["schema_version"] = json!(-1);
        assert_eq!(parse(v), "invalid value: integer `-1`, expected u32");
        let mut v = base.clone();
        v["schema_version"] = json!(1.5);
        assert_eq!(parse(v), "invalid type: floating point `1.5`, expected u32");
        let mut v = base.clone();
        v["transaction_time"] = json!("2026-01-01");
        assert_eq!(
            parse(v),
            "invalid type: string \"2026-01-01\", expected f64"
        );
        let mut v = base;
        v["value"] = Value::Null;
        assert_eq!(parse(v), "ok", "a null value is a value");
    }

    #[test]
    fn record_round_trip_keeps_integer_and_float_apart() {
        let data: FactData = serde_json::from_value(json!({"id":"i","store":"s","key":"k","value":{"n":10,"f":10.0},"transaction_time":5,"schema_version":1})).unwrap();
        let fact = Fact::from_data(data, 3, "h".into());
        let json = fact.to_json();
        assert_eq!(json["transaction_time"].to_string(), "5.0");
        let back = Fact::from_record(json).unwrap();
        assert_eq!(back, fact);
        assert_eq!(back.value["f"].to_string(), "10.0");
    }
}
