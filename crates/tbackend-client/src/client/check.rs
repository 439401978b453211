//! The request check every call makes before sending.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use tbackend_core::OpKind;

/// The daemon is lax about two top-level keys (docs/protocol.md §3): `"error"` makes it echo
/// the request back unexecuted and unauthenticated, and `"store"` on a write is what its
/// ACL checks instead of `fact.store`. Core's builder refuses both; this re-check is one
/// pass over the body, so a body built any other way cannot slip them through.
pub(super) fn check_body(op: OpKind, body: &[u8]) -> Result<(), String> {
    let keys: TopKeys = serde_json::from_slice(body)
        .map_err(|e| format!("request refused: the body is not one JSON object: {e}"))?;
    if keys.error {
        return Err("request refused: a top-level \"error\" key makes the daemon echo the request unexecuted".into());
    }
    if keys.store && op == OpKind::Write {
        return Err(
            "request refused: a top-level \"store\" on a write would be checked by the store ACL instead of fact.store"
                .into(),
        );
    }
    Ok(())
}

#[derive(Default)]
struct TopKeys {
    error: bool,
    store: bool,
}

impl<'de> Deserialize<'de> for TopKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopKeys, A::Error> {
                let mut keys = TopKeys::default();
                while let Some(key) = map.next_key::<Key>()? {
                    map.next_value::<IgnoredAny>()?;
                    match key {
                        Key::Error => keys.error = true,
                        Key::Store => keys.store = true,
                        Key::Other => {}
                    }
                }
                Ok(keys)
            }
        }
        d.deserialize_map(V)
    }
}

enum Key {
    Error,
    Store,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "error" => Key::Error,
                    "store" => Key::Store,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_checks() {
        assert!(check_body(
            OpKind::Read,
            br#"{"op":"latest_for","store":"s","key":"k"}"#
        )
        .is_ok());
        assert!(check_body(
            OpKind::Write,
            br#"{"op":"write_fact_once","fact":{"store":"s"}}"#
        )
        .is_ok());
        let e = check_body(
            OpKind::Write,
            br#"{"op":"write_fact_once","store":"s","fact":{}}"#,
        )
        .unwrap_err();
        assert!(e.contains("ACL"), "{e}");
        let e = check_body(OpKind::Ping, br#"{"op":"ping","error":"x"}"#).unwrap_err();
        assert!(e.contains("echo"), "{e}");
        assert!(
            check_body(OpKind::Ping, br#"{"op":"ping","err\u006fr":1}"#).is_err(),
            "escaped key"
        );
        assert!(check_body(OpKind::Ping, b"[1]").is_err());
        assert!(check_body(OpKind::Ping, br#"{"op":"ping"} {}"#).is_err());
        assert!(check_body(OpKind::Ping, b"").is_err());
    }
}
