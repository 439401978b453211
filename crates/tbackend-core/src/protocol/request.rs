//! Request bodies (docs/protocol.md §3), written straight to bytes.
//!
//! The daemon is lax in ways that hurt: a top-level `"error"` key makes it echo the
//! request back unexecuted and unauthenticated, and a top-level `store` on a write is
//! what its store ACL checks instead of `fact.store`. [`RequestBuilder`] refuses both,
//! and refuses duplicate keys, whose meaning would depend on the daemon's parser.

use crate::fact::json;
use thiserror::Error;

/// Why a request could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// The key is never safe to send at the top level.
    #[error("refusing to send a top-level {key:?} key in a {op:?} request: {reason}")]
    ForbiddenKey {
        /// The operation being built.
        op: String,
        /// The refused key.
        key: String,
        /// What the daemon would do with it.
        reason: &'static str,
    },
    /// The key was already set (`op` and `token` are set by [`RequestBuilder::new`]).
    #[error("duplicate top-level key {0:?} in request")]
    DuplicateKey(String),
    /// The value is not a valid JSON value (raw JSON) or not representable (NaN, ±Infinity).
    #[error("invalid value for {key:?}: {detail}")]
    InvalidValue {
        /// The key whose value was refused.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
}

/// Whether `op` writes facts: such requests may not carry a top-level `store`.
pub fn is_write_op(op: &str) -> bool {
    matches!(op, "write_fact_once" | "write_fact")
}

/// Writes one request object, `{"op":…,"token":…,…}`, key by key.
///
/// ```
/// use tbackend_core::protocol::request::RequestBuilder;
/// let mut req = RequestBuilder::new("latest_for", Some("t0k"));
/// req.str("store", "orders")?.str("key", "orders:42")?;
/// assert_eq!(
///     req.finish(),
///     br#"{"op":"latest_for","token":"t0k","store":"orders","key":"orders:42"}"#
/// );
/// # Ok::<(), tbackend_core::protocol::request::RequestError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    /// Where the op's JSON String ends in `out` (it starts right after `{"op":`).
    op_end: usize,
    write: bool,
    out: Vec<u8>,
    /// Where each top-level key's JSON String sits in `out`, to refuse a repeat by its
    /// bytes: no copy of a key is kept (a `String` each was a malloc per parameter).
    keys: Vec<(usize, usize)>,
}

/// JSON bytes to send as one parameter's value, and whether they are known to be
/// exactly one JSON value.
///
/// A queued fact may be sent many times (retries) and every send builds its request
/// afresh; checking the bytes there cost the async writer a third of its instructions
/// per fact. So the check belongs to where the bytes come from: an encoder that writes
/// one value by construction says so once ([`RawJson::encoded`]), and bytes from
/// anywhere else (a file, a caller) are checked each time they are sent
/// ([`RequestBuilder::raw_json`]), so a bug upstream still cannot splice keys into the
/// envelope. Equality compares the bytes only.
#[derive(Debug, Clone)]
pub struct RawJson {
    bytes: Vec<u8>,
    one_value: bool,
}

impl RawJson {
    /// Bytes from anywhere: checked to be one JSON value whenever they are sent.
    pub fn unchecked(bytes: Vec<u8>) -> Self {
        RawJson {
            bytes,
            one_value: false,
        }
    }

    /// Bytes an encoder wrote that writes exactly one JSON value by construction (the
    /// binding's, which writes every container itself and parses what a foreign
    /// `to_json` made): sent without a parse.
    pub fn encoded(bytes: Vec<u8>) -> Self {
        RawJson {
            bytes,
            one_value: true,
        }
    }
}

impl std::ops::Deref for RawJson {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for RawJson {}

/// How every request body starts; the op's JSON String follows.
const OP_PREFIX: &[u8] = b"{\"op\":";

impl RequestBuilder {
    /// Starts a request for `op`, with the bearer `token` when there is one (the daemon
    /// wants it at the top level of every op once auth is on).
    pub fn new(op: &str, token: Option<&str>) -> Self {
        Self::with_capacity(op, token, 64)
    }

    /// [`Self::new`] with room for a body of `capacity` bytes, so a request carrying a
    /// large value is not copied as its buffer grows.
    pub fn with_capacity(op: &str, token: Option<&str>, capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(OP_PREFIX);
        json::write_str(&mut out, op);
        let mut keys = Vec::with_capacity(4);
        // `"op"`, between the prefix's `{` and `:`.
        keys.push((1, OP_PREFIX.len() - 1));
        let mut builder = RequestBuilder {
            op_end: out.len(),
            write: is_write_op(op),
            out,
            keys,
        };
        if let Some(token) = token {
            builder
                .key("token")
                .expect("a fresh request has no token key");
            json::write_str(&mut builder.out, token);
        }
        builder
    }

    fn op(&self) -> String {
        serde_json::from_slice(&self.out[OP_PREFIX.len()..self.op_end])
            .expect("written by write_str")
    }

    fn key(&mut self, key: &str) -> Result<(), RequestError> {
        let forbidden = match key {
            "error" => {
                Some("the daemon echoes such a request back without running or authenticating it")
            }
            "store" if self.write => {
                Some("the store ACL would check it instead of fact.store; the fact names its store")
            }
            _ => None,
        };
        if let Some(reason) = forbidden {
            return Err(RequestError::ForbiddenKey {
                op: self.op(),
                key: key.to_owned(),
                reason,
            });
        }
        let comma = self.out.len();
        self.out.push(b',');
        let start = self.out.len();
        json::write_str(&mut self.out, key);
        let written = &self.out[start..];
        let repeated = self
            .keys
            .iter()
            .any(|&(from, to)| &self.out[from..to] == written);
        if repeated {
            self.out.truncate(comma);
            return Err(RequestError::DuplicateKey(key.to_owned()));
        }
        self.keys.push((start, self.out.len()));
        self.out.push(b':');
        Ok(())
    }

    /// Adds a string parameter.
    pub fn str(&mut self, key: &str, value: &str) -> Result<&mut Self, RequestError> {
        self.key(key)?;
        json::write_str(&mut self.out, value);
        Ok(self)
    }

    /// Adds a float parameter (times are floats on the wire). NaN and ±Infinity are
    /// refused: JSON cannot carry them.
    pub fn f64(&mut self, key: &str, value: f64) -> Result<&mut Self, RequestError> {
        if let Err(e) = json::check_f64(value) {
            return Err(RequestError::InvalidValue {
                key: key.to_owned(),
                detail: e.to_string(),
            });
        }
        self.key(key)?;
        json::write_f64(&mut self.out, value).expect("checked finite above");
        Ok(self)
    }

    /// Adds a signed integer parameter.
    pub fn i64(&mut self, key: &str, value: i64) -> Result<&mut Self, RequestError> {
        self.key(key)?;
        json::write_i64(&mut self.out, value);
        Ok(self)
    }

    /// Adds an unsigned integer parameter (`after_seq`, `until_seq`).
    pub fn u64(&mut self, key: &str, value: u64) -> Result<&mut Self, RequestError> {
        self.key(key)?;
        json::write_u64(&mut self.out, value);
        Ok(self)
    }

    /// Adds a boolean parameter (`strict_hash`).
    pub fn bool(&mut self, key: &str, value: bool) -> Result<&mut Self, RequestError> {
        self.key(key)?;
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
        Ok(self)
    }

    /// Adds a parameter from a `serde_json::Value` (keys in the map's order).
    pub fn value(
        &mut self,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<&mut Self, RequestError> {
        self.key(key)?;
        serde_json::to_writer(&mut self.out, value).expect("writing to a Vec cannot fail");
        Ok(self)
    }

    /// Adds a parameter already serialised as JSON (a fact the binding wrote with
    /// [`crate::fact::json`]). It is checked to be exactly one JSON value, so a bug
    /// upstream cannot splice extra keys into the envelope.
    pub fn raw(&mut self, key: &str, json_value: &[u8]) -> Result<&mut Self, RequestError> {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(json_value) {
            return Err(RequestError::InvalidValue {
                key: key.to_owned(),
                detail: format!("not one JSON value: {e}"),
            });
        }
        self.encoded(key, json_value)
    }

    /// [`Self::raw`], without the parse when `value` is known to be one JSON value.
    pub fn raw_json(&mut self, key: &str, value: &RawJson) -> Result<&mut Self, RequestError> {
        if value.one_value {
            self.encoded(key, value)
        } else {
            self.raw(key, value)
        }
    }

    /// [`Self::raw`] without its parse, for JSON from an encoder that writes exactly one
    /// value by construction (the binding's, which writes every container itself and
    /// parses what a foreign `to_json` made). That parse was 2.5 k of a write's 41 k
    /// instructions.
    /// Bytes from anywhere else (a file, a socket, a caller) go through `raw`.
    pub fn encoded(&mut self, key: &str, json_value: &[u8]) -> Result<&mut Self, RequestError> {
        let body = self.value_slot(key)?;
        // Room for the closing brace too: a fact fills the buffer, and `finish` would
        // otherwise copy the whole body once more to add one byte.
        body.reserve(json_value.len() + 1);
        body.extend_from_slice(json_value);
        Ok(self)
    }

    /// The body with `key` written, for such an encoder to append its one value to in
    /// place (no buffer of its own to copy from). Nothing else may be written to it.
    pub fn value_slot(&mut self, key: &str) -> Result<&mut Vec<u8>, RequestError> {
        self.key(key)?;
        Ok(&mut self.out)
    }

    /// The finished body, ready for [`crate::protocol::frame::encode`].
    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parsed(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn ping_without_token_is_the_protocol_example() {
        assert_eq!(
            RequestBuilder::new("ping", None).finish(),
            br#"{"op":"ping"}"#
        );
    }

    #[test]
    fn write_request() {
        let fact = br#"{"id":"orders:42:create:0","store":"orders","key":"orders:42","value":{"a":1},"transaction_time":1.5,"schema_version":1}"#;
        let mut req = RequestBuilder::new("write_fact_once", Some("tok\"en"));
        req.raw("fact", fact)
            .unwrap()
            .str("durability", "durable")
            .unwrap()
            .bool("strict_hash", false)
            .unwrap();
        let body = req.finish();
        assert_eq!(
            parsed(&body),
            json!({
                "op": "write_fact_once",
                "token": "tok\"en",
                "fact": parsed(fact),
                "durability": "durable",
                "strict_hash": false
            })
        );
    }

    #[test]
    fn read_request_with_numbers() {
        let mut req = RequestBuilder::new("facts_by_seq", None);
        req.str("store", "orders")
            .unwrap()
            .u64("after_seq", 3)
            .unwrap()
            .i64("until_seq", -1)
            .unwrap()
            .f64("as_of", 250.0)
            .unwrap()
            .value("filters", &json!({"status": "open"}))
            .unwrap();
        assert_eq!(
            req.finish(),
            br#"{"op":"facts_by_seq","store":"orders","after_seq":3,"until_seq":-1,"as_of":250.0,"filters":{"status":"open"}}"#
        );
    }

    #[test]
    fn refuses_a_top_level_error_key_on_every_op() {
        for op in ["ping", "latest_for", "write_fact_once", "metrics"] {
            let mut req = RequestBuilder::new(op, None);
            let err = req.str("error", "x").unwrap_err();
            assert!(matches!(err, RequestError::ForbiddenKey { ref key, .. } if key == "error"));
            assert!(err.to_string().contains("echoes"), "{err}");
            assert!(req.raw("error", b"1").is_err());
        }
    }

    #[test]
    fn refuses_a_top_level_store_on_writes_only() {
        for op in ["write_fact_once", "write_fact"] {
            let mut req = RequestBuilder::new(op, None);
            let err = req.str("store", "ledger_a").unwrap_err();
            assert!(err.to_string().contains("ACL"), "{err}");
        }
        let mut req = RequestBuilder::new("latest_for", None);
        assert!(req.str("store", "ledger_a").is_ok());
    }

    #[test]
    fn refuses_duplicate_keys() {
        let mut req = RequestBuilder::new("latest_for", Some("t"));
        assert_eq!(
            req.str("op", "size").unwrap_err(),
            RequestError::DuplicateKey("op".into())
        );
        assert_eq!(
            req.str("token", "u").unwrap_err(),
            RequestError::DuplicateKey("token".into())
        );
        req.str("key", "k").unwrap();
        assert!(req.str("key", "k").is_err());
        // A refused key leaves the body as it was.
        assert_eq!(
            req.finish(),
            br#"{"op":"latest_for","token":"t","key":"k"}"#
        );
        // Without a token, `token` is free (but nobody should set it by hand).
        let mut req = RequestBuilder::new("ping", None);
        assert!(req.str("token", "t").is_ok());
    }

    #[test]
    fn refuses_non_finite_floats_and_bad_raw_json() {
        let mut req = RequestBuilder::new("latest_for", None);
        assert!(matches!(
            req.f64("as_of", f64::NAN),
            Err(RequestError::InvalidValue { .. })
        ));
        assert!(req.f64("as_of", f64::INFINITY).is_err());
        assert!(req.raw("fact", b"{\"a\":1},\"error\":1").is_err());
        assert!(req.raw("fact", b"").is_err());
        assert!(
            req.raw("fact", b"{\"a\":1} ").is_ok(),
            "whitespace is still one value"
        );
        assert_eq!(
            parsed(&req.finish()),
            json!({"op": "latest_for", "fact": {"a": 1}})
        );
    }

    #[test]
    fn raw_json_is_checked_unless_an_encoder_vouched_for_it() {
        let splice = b"{\"a\":1},\"error\":1".to_vec();
        let mut req = RequestBuilder::with_capacity("write_fact_once", None, 8);
        assert!(matches!(
            req.raw_json("fact", &RawJson::unchecked(splice.clone())),
            Err(RequestError::InvalidValue { .. })
        ));
        // Vouched-for bytes go out as they are: no parse, which is the point.
        req.raw_json("fact", &RawJson::encoded(splice.clone()))
            .unwrap();
        assert_eq!(
            req.finish(),
            b"{\"op\":\"write_fact_once\",\"fact\":{\"a\":1},\"error\":1}"
        );
        assert_eq!(RawJson::encoded(splice.clone()), RawJson::unchecked(splice));
    }

    #[test]
    fn escapes_op_and_token() {
        let body = RequestBuilder::new("p\"ing\n", Some("a\\b")).finish();
        assert_eq!(parsed(&body), json!({"op": "p\"ing\n", "token": "a\\b"}));
    }
}
