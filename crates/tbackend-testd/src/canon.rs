//! Canonical JSON: compact, object keys sorted by bytes at every depth.
//!
//! The daemon answers in this form and hashes fact values in it (docs/protocol.md §1, §6).
//! `serde_json::Map` happens to be a `BTreeMap` today, but a single crate in the build
//! enabling serde_json's `preserve_order` feature would silently turn it into an
//! insertion-ordered map for every crate of the workspace; sorting here keeps the
//! answers and the hashes right whatever the feature set.

use serde_json::Value;

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write(value, &mut out);
    out
}

/// Appends the canonical bytes of `value` to `out`.
pub fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(v, out);
            }
            out.push(b']');
        }
        // Scalars: serde_json's own forms (integers as digits, floats shortest
        // round-trip with a `.0` kept, strings escaped as serde_json escapes them).
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec cannot fail"),
    }
}

/// Appends `s` as a JSON string.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// The server's canonical value hash: lowercase hex BLAKE3 of the canonical bytes.
pub fn value_hash(value: &Value) -> String {
    blake3::hash(&to_vec(value)).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_vectors_of_the_protocol() {
        assert_eq!(
            value_hash(&json!({"a": 1})),
            "d59b6562d7c9b121bc9760873d787890ef4d429aad33a70b405baa0fa08a1f53"
        );
        assert_eq!(
            value_hash(&json!({"total": 10, "status": "open", "items": [1, 2]})),
            "81e6034f5e9809b4713ee7adc1361e4af05ea9a7beb4c90f7fd31a9b65d80d32"
        );
    }

    #[test]
    fn keys_sorted_at_every_depth_numbers_kept_apart() {
        let v: Value =
            serde_json::from_str(r#"{"b":{"z":1,"a":10.0},"a":[{"y":"é\n","x":null}]}"#).unwrap();
        assert_eq!(
            String::from_utf8(to_vec(&v)).unwrap(),
            r#"{"a":[{"x":null,"y":"é\n"}],"b":{"a":10.0,"z":1}}"#
        );
    }
}
