//! A daemon answer read in place: strings borrowed from the body, objects as lists of
//! pairs in the order sent. An answer is parsed once per call (see
//! [`super::answer::Answer`]); as a `serde_json::Value` that parse cost a `String` per
//! key, a B-tree and a walk to free them, and the binding walked it once more.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// One JSON value of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as serde_json reads it.
    Number(Number),
    /// A string: borrowed unless it had escapes.
    Str(Cow<'a, str>),
    /// An array.
    Array(Vec<Json<'a>>),
    /// An object's pairs in the order sent; a repeated key is kept each time (see
    /// [`Json::get`]).
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses one JSON value that borrows from `body`.
    pub fn parse(body: &'a [u8]) -> serde_json::Result<Json<'a>> {
        // One UTF-8 check of the whole body, not one per string.
        let text = std::str::from_utf8(body).map_err(|e| {
            de::Error::custom(format_args!(
                "invalid UTF-8 at byte {} of the answer",
                e.valid_up_to()
            ))
        })?;
        serde_json::from_str(text)
    }

    /// An object's value for `key`: the last one sent, as the daemon's parser (and
    /// `serde_json::Value`) keeps it.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(pairs) => pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The same value as a `serde_json::Value` (a repeated key keeps its last value).
    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::Str(s) => Value::String(s.as_ref().to_owned()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(pairs) => Value::Object(
                pairs
                    .iter()
                    .map(|(k, v)| (k.as_ref().to_owned(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// A view of a `serde_json::Value`, for code that has one to hand over as an answer.
    pub fn of(value: &'a Value) -> Json<'a> {
        match value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::Str(Cow::Borrowed(s)),
            Value::Array(items) => Json::Array(items.iter().map(Json::of).collect()),
            Value::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Json::of(v)))
                    .collect(),
            ),
        }
    }

    /// The JSON type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "boolean",
            Json::Number(_) => "number",
            Json::Str(_) => "string",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }
}

/// Compact JSON exactly as `serde_json::Value` writes it (keys sorted): what error texts
/// said before answers were read in place. Only failures are rendered, so the copy is
/// no cost to a call that succeeds.
impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_value(), f)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json<'de>, E> {
        Number::from_f64(n)
            .map(Json::Number)
            .ok_or_else(|| E::custom("a number JSON cannot carry"))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(8));
        // serde_json hands a key to `visit_borrowed_str` (or `visit_str` when escaped).
        while let Some(key) = map.next_key::<Json<'de>>()? {
            let Json::Str(key) = key else {
                return Err(de::Error::custom("an object key that is not a string"));
            };
            pairs.push((key, map.next_value()?));
        }
        Ok(Json::Object(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_plain_strings_and_keeps_order() {
        let body = br#"{"z":1,"a":"x","e":"q\"","n":[true,null,-2,1.5e3]}"#;
        let j = Json::parse(body).unwrap();
        let Json::Object(pairs) = &j else {
            panic!("{j:?}")
        };
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["z", "a", "e", "n"]);
        assert!(matches!(j.get("a"), Some(Json::Str(Cow::Borrowed("x")))));
        assert_eq!(j.get("e").and_then(Json::as_str), Some("q\""));
        assert_eq!(j.to_value(), serde_json::from_slice::<Value>(body).unwrap());
        assert_eq!(
            j.to_string(),
            serde_json::from_slice::<Value>(body).unwrap().to_string()
        );
    }

    #[test]
    fn a_repeated_key_reads_as_its_last_value() {
        let j = Json::parse(br#"{"op":"ping","op":"size"}"#).unwrap();
        assert_eq!(j.get("op").and_then(Json::as_str), Some("size"));
        assert_eq!(j.to_value()["op"], "size");
    }

    #[test]
    fn a_value_seen_as_a_tree_is_the_same_value() {
        let v: Value =
            serde_json::json!({"a": [1, {"b": null}], "c": "d", "e": u64::MAX, "f": -0.5});
        assert_eq!(Json::of(&v).to_value(), v);
    }

    #[test]
    fn refuses_what_is_not_one_json_value() {
        assert!(Json::parse(b"").is_err());
        assert!(Json::parse(b"{} {}").is_err());
        assert!(Json::parse(b"{\"a\":").is_err());
        assert!(Json::parse(b"{\"a\":\"\xff\"}").is_err());
    }
}
