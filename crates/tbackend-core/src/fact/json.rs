//! JSON writing for the Ruby binding, byte-compatible with serde_json, and the
//! daemon's canonical form and value hash (docs/protocol.md §1, §6): the only ones in
//! the workspace, `tbackend-testd` answers, logs and hashes with them too.
//!
//! The binding walks Ruby objects and writes JSON straight into a buffer instead of
//! building a `serde_json::Value` first; these writers produce exactly what serde_json
//! would, so a value written here hashes and compares as the daemon expects.

use serde_json::Value;
use thiserror::Error;

/// A value JSON cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum JsonError {
    /// NaN or ±Infinity: JSON has no such numbers, and the old gem raised deep inside
    /// its encoder on them.
    #[error("{} cannot be written as JSON: only finite numbers can", ruby_name(*.0))]
    NonFinite(f64),
}

/// The name Ruby (and the app developer reading the error) gives a non-finite float.
fn ruby_name(f: f64) -> &'static str {
    if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes: `"` and `\`,
/// `\b \f \n \r \t`, other control characters as `\u00XX` (lowercase hex); everything
/// else, non-ASCII included, as is.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Nearly every string needs no escape; a branch-free pass (which the compiler
    // vectorises) says so at a fraction of the per-byte match below.
    if !bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    }) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut run_start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run_start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(byte >> 4) as usize]);
            out.push(HEX[(byte & 0xf) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        run_start = i + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

/// `Ok(f)` when `f` can be written as JSON.
pub fn check_f64(f: f64) -> Result<f64, JsonError> {
    if f.is_finite() {
        Ok(f)
    } else {
        Err(JsonError::NonFinite(f))
    }
}

/// Appends a float in serde_json's form: shortest round-trip digits, an integral
/// value keeps its `.0` (`10.0`), since the daemon tells `10` from `10.0`.
pub fn write_f64(out: &mut Vec<u8>, f: f64) -> Result<(), JsonError> {
    check_f64(f)?;
    serde_json::to_writer(out, &f).expect("writing to a Vec cannot fail");
    Ok(())
}

/// Appends a signed integer.
pub fn write_i64(out: &mut Vec<u8>, n: i64) {
    // serde_json's integer writer, not `write!`: the formatting machinery cost a write
    // about 1 % of its CPU.
    serde_json::to_writer(out, &n).expect("writing to a Vec cannot fail");
}

/// Appends an unsigned integer.
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    serde_json::to_writer(out, &n).expect("writing to a Vec cannot fail");
}

/// Appends `value` in the daemon's canonical form: object keys sorted by their bytes
/// at every depth, no whitespace, arrays in order, serde_json's numbers and strings.
///
/// Sorting here rather than relying on serde_json's default `BTreeMap` keeps the hash
/// right even if some other crate in the build turns on `preserve_order`.
pub fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            serde_json::to_writer(&mut *out, n).expect("writing to a Vec cannot fail")
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_canonical(out, item);
            }
            out.push(b'}');
        }
    }
}

/// `value` in the daemon's canonical form (see [`write_canonical`]).
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(&mut out, value);
    out
}

/// The daemon's `value_hash`: lowercase hex BLAKE3 of [`canonical_json`].
pub fn value_hash(value: &Value) -> String {
    blake3::hash(&canonical_json(value)).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn s(value: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_like_serde_json() {
        assert_eq!(s(""), r#""""#);
        assert_eq!(s("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(s("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(s("\u{0}\u{1}\u{1f}"), r#""\u0000\u0001\u001f""#);
        assert_eq!(s("\u{7f}é€😀/"), "\"\u{7f}é€😀/\"");
        for c in (0u32..0x250).chain([0x2028, 0x2029, 0xfeff, 0x10ffff]) {
            let c = char::from_u32(c).unwrap();
            let text = format!("x{c}y");
            assert_eq!(s(&text), serde_json::to_string(&text).unwrap(), "{c:?}");
        }
    }

    #[test]
    fn floats_like_serde_json() {
        let f = |x: f64| {
            let mut out = Vec::new();
            write_f64(&mut out, x).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(f(10.0), "10.0");
        assert_eq!(f(-0.0), "-0.0");
        assert_eq!(f(0.1), "0.1");
        assert_eq!(f(1780387174.5), "1780387174.5");
        assert_eq!(f(1e300), "1e+300");
        assert_eq!(f(1.5e-7), "1.5e-7");
        assert_eq!(f(f64::MAX), serde_json::to_string(&f64::MAX).unwrap());
    }

    #[test]
    fn non_finite_floats_are_refused() {
        let mut out = Vec::new();
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = write_f64(&mut out, x).unwrap_err();
            assert!(
                err.to_string().contains("cannot be written as JSON"),
                "{err}"
            );
        }
        assert!(out.is_empty(), "nothing is written on error");
        assert_eq!(
            JsonError::NonFinite(f64::NEG_INFINITY).to_string(),
            "-Infinity cannot be written as JSON: only finite numbers can"
        );
    }

    #[test]
    fn integers() {
        let mut out = Vec::new();
        write_i64(&mut out, i64::MIN);
        out.push(b' ');
        write_u64(&mut out, u64::MAX);
        out.push(b' ');
        write_i64(&mut out, 0);
        assert_eq!(out, b"-9223372036854775808 18446744073709551615 0");
    }

    #[test]
    fn value_hash_protocol_vectors() {
        assert_eq!(
            value_hash(&json!({"a": 1})),
            "d59b6562d7c9b121bc9760873d787890ef4d429aad33a70b405baa0fa08a1f53"
        );
        assert_eq!(
            value_hash(&json!({"items": [1, 2], "status": "open", "total": 10})),
            "81e6034f5e9809b4713ee7adc1361e4af05ea9a7beb4c90f7fd31a9b65d80d32"
        );
    }

    #[test]
    fn value_hash_transcript_vectors() {
        // value / value_hash pairs the daemon returned in transcripts.jsonl.
        let cases = [
            (
                json!({"status": "open", "total": 10}),
                "452e032a7bb59c6407a8fc2a5381f7e5906736114bd762111e2b81a87feb95bc",
            ),
            (
                json!({"v": 1}),
                "a122c9c1c4a049739faab492b1836cad8d709d1215698427ba3592174b01743f",
            ),
            (
                json!({"status": "open", "v": 3}),
                "ce675f9c0cc56c4bfeb30e2ea530e231f26db44bfd63af662c8f275fe56865cb",
            ),
            (
                json!({"v": 4, "status": "tie"}),
                "a0207ed9a4a2264604aae5b0de5f4e3bf4a8d5cfbf09aa2735915fa22328b7ef",
            ),
            (
                json!({"amt": 5, "agent_ref": "a-1"}),
                "15b93588041ea6c082fb9a0dc5a3b7dfa3532eab2b3d63db592701a321201eae",
            ),
        ];
        for (value, hash) in cases {
            assert_eq!(value_hash(&value), hash, "{value}");
        }
    }

    #[test]
    fn canonical_form() {
        let value: Value =
            serde_json::from_str(r#"{ "b": [3, {"z": 1.0, "a": null}], "a": "é\n", "B": true }"#)
                .unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&value)).unwrap(),
            "{\"B\":true,\"a\":\"é\\n\",\"b\":[3,{\"a\":null,\"z\":1.0}]}"
        );
    }

    proptest! {
        #[test]
        fn write_str_matches_serde_json(text in any::<String>()) {
            let mut out = Vec::new();
            write_str(&mut out, &text);
            prop_assert_eq!(&out, &serde_json::to_vec(&text).unwrap());
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, text);
        }

        #[test]
        fn write_f64_matches_serde_json(x in any::<f64>()) {
            let mut out = Vec::new();
            match write_f64(&mut out, x) {
                Ok(()) => {
                    prop_assert_eq!(&out, &serde_json::to_vec(&x).unwrap());
                    let back: f64 = serde_json::from_slice(&out).unwrap();
                    prop_assert_eq!(back.to_bits(), x.to_bits());
                }
                Err(_) => prop_assert!(!x.is_finite()),
            }
        }

        #[test]
        fn canonical_json_is_serde_json_with_sorted_keys(
            pairs in prop::collection::vec((".{0,4}", any::<i32>()), 0..8)
        ) {
            let value = Value::Object(pairs.into_iter().map(|(k, v)| (k, json!(v))).collect());
            // Without `preserve_order`, serde_json's map is sorted by key bytes already.
            prop_assert_eq!(canonical_json(&value), serde_json::to_vec(&value).unwrap());
        }
    }
}
