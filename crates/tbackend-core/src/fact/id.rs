//! Deterministic fact ids.
//!
//! A retry must carry the same id as the first attempt, or `write_fact_once` stores a
//! duplicate instead of answering a replay; so ids are derived from what identifies
//! the change (store, record, event, the record's version), never from wall-clock time.
//!
//! Two formats:
//! - [`IdFormat::Legacy`], the 0.2 gem's plain join, byte for byte: ledgers are full
//!   of these ids and a retry after the upgrade must still land as a replay. It is
//!   ambiguous (`("a:b", "create")` and `("a", "b:create")` give the same id) and
//!   unbounded in length.
//! - [`IdFormat::Digest`], fixed-length and unambiguous; specified in `FACT_IDS.md`
//!   and on [`derive_id`].

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Which id format [`derive_id`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdFormat {
    /// `"#{store}:#{record_id}:#{event_type}:#{token}"`, as the 0.2 gem.
    #[default]
    Legacy,
    /// `"tbf1-"` and the hex SHA-256 of the length-prefixed components.
    Digest,
}

impl IdFormat {
    /// The configuration name: `"legacy"` or `"digest"`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdFormat::Legacy => "legacy",
            IdFormat::Digest => "digest",
        }
    }
}

impl fmt::Display for IdFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An id format name other than `legacy` or `digest`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown fact id format {0:?}; expected \"legacy\" or \"digest\"")]
pub struct UnknownIdFormat(pub String);

impl FromStr for IdFormat {
    type Err = UnknownIdFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "legacy" => Ok(IdFormat::Legacy),
            "digest" => Ok(IdFormat::Digest),
            other => Err(UnknownIdFormat(other.to_owned())),
        }
    }
}

/// The record's version as it enters the id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VersionToken {
    /// A time (Time, TimeWithZone, DateTime): whole microseconds since the epoch,
    /// time zone ignored, nanoseconds truncated, as Ruby's
    /// `to_i * 1_000_000 + usec`.
    Micros(i64),
    /// Anything else, as Ruby's `to_s` renders it (`nil` → `""`, `17` → `"17"`,
    /// `1780387174.5` → `"1780387174.5"`).
    Text(String),
}

impl VersionToken {
    /// The token of a time `epoch_nanos` nanoseconds from the epoch.
    ///
    /// Ruby floors `to_i` and keeps `usec` in `0..1_000_000`, which is floor division
    /// of the nanoseconds by 1000: `-1.5 s` gives `-1500000`, not `-1499999`. A time
    /// beyond `i64` microseconds (about ±292,000 years) becomes the same decimal as
    /// [`VersionToken::Text`], as Ruby's Integer would print it.
    pub fn from_epoch_nanos(epoch_nanos: i128) -> Self {
        Self::from_micros(epoch_nanos.div_euclid(1000))
    }

    /// The token of a time given as Ruby's `to_i` (floored seconds) and `nsec`
    /// (`0..1_000_000_000`).
    pub fn from_secs_nanos(secs: i64, nsec: u32) -> Self {
        Self::from_micros(i128::from(secs) * 1_000_000 + i128::from(nsec / 1000))
    }

    fn from_micros(micros: i128) -> Self {
        match i64::try_from(micros) {
            Ok(m) => VersionToken::Micros(m),
            Err(_) => VersionToken::Text(micros.to_string()),
        }
    }

    /// The token as it appears in a legacy id and in the digest input.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for VersionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionToken::Micros(m) => write!(f, "{m}"),
            VersionToken::Text(t) => f.write_str(t),
        }
    }
}

/// The record's primary key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordId {
    /// A single key, as Ruby's `to_s` renders it.
    One(String),
    /// A composite key, one string per part, in key order.
    Composite(Vec<String>),
}

impl RecordId {
    /// The parts of the key: `One(x)` is a composite of the single part `x`.
    pub fn parts(&self) -> &[String] {
        match self {
            RecordId::One(part) => std::slice::from_ref(part),
            RecordId::Composite(parts) => parts,
        }
    }
}

/// The domain-separation prefix of every digest input; `\0` ends it so no field can
/// extend it.
pub const DIGEST_DOMAIN: &[u8] = b"acts_as_tbackend/fact-id/v1\0";

/// The prefix of every digest id.
pub const DIGEST_PREFIX: &str = "tbf1-";

/// The id of the fact recording `event_type` of the record `record_id` at `version`
/// in `store`.
///
/// **Legacy**: `"#{store}:#{record_id}:#{event_type}:#{token}"` with the token from
/// [`VersionToken`]'s `Display`. The record id is used as given: the Ruby binding
/// passes `record.id.to_s`, composite keys included (`"[1, 2]"`, which is what 0.2
/// produced), as [`RecordId::One`]. A [`RecordId::Composite`] never produced a 0.2 id,
/// so there is nothing to match; it is joined with `,` (`a,b`), which is as ambiguous
/// as the rest of the legacy format. Use the digest format for composite keys.
///
/// **Digest**: `"tbf1-"` followed by the 64 lowercase hex digits of SHA-256 over
///
/// ```text
/// "acts_as_tbackend/fact-id/v1" 0x00
/// field(store) field(event_type) field(version token as text)
/// u64be(number of record-id parts) field(part 1) … field(part n)
/// ```
///
/// where `field(s)` is the UTF-8 length of `s` as a big-endian `u64` followed by the
/// UTF-8 bytes of `s`, and the version token's text is the same as in the legacy
/// format (micros in decimal, `-` for negatives). Every component is length-prefixed,
/// so no choice of characters can make two different inputs collide short of a
/// SHA-256 collision; `One(x)` and `Composite([x])` give the same id, while
/// `Composite(["a","b"])` and `One("a:b")` differ. `Micros(17)` and `Text("17")` give
/// the same id, as in the legacy format: the token is identified by its text.
pub fn derive_id(
    format: IdFormat,
    store: &str,
    record_id: &RecordId,
    event_type: &str,
    version: &VersionToken,
) -> String {
    match format {
        IdFormat::Legacy => {
            let record = match record_id {
                RecordId::One(id) => id.clone(),
                RecordId::Composite(parts) => parts.join(","),
            };
            format!("{store}:{record}:{event_type}:{version}")
        }
        IdFormat::Digest => {
            let mut hasher = Sha256::new();
            hasher.update(DIGEST_DOMAIN);
            let mut field = |s: &str| {
                hasher.update((s.len() as u64).to_be_bytes());
                hasher.update(s.as_bytes());
            };
            field(store);
            field(event_type);
            field(&version.render());
            let parts = record_id.parts();
            hasher.update((parts.len() as u64).to_be_bytes());
            for part in parts {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part.as_bytes());
            }
            let digest = hasher.finalize();
            let mut id = String::with_capacity(DIGEST_PREFIX.len() + 64);
            id.push_str(DIGEST_PREFIX);
            push_hex(&mut id, &digest);
            id
        }
    }
}

/// The version token of a record that has no `updated_at`: the lowercase hex SHA-256 of
/// its content's canonical JSON (the Ruby binding writes it with Hash keys sorted), so
/// the same content always gets the same id.
pub fn content_digest(canonical_json: &[u8]) -> String {
    let mut hex = String::with_capacity(64);
    push_hex(&mut hex, &Sha256::digest(canonical_json));
    hex
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(s: &str) -> RecordId {
        RecordId::One(s.to_owned())
    }

    fn composite(parts: &[&str]) -> RecordId {
        RecordId::Composite(parts.iter().map(|p| p.to_string()).collect())
    }

    fn text(s: &str) -> VersionToken {
        VersionToken::Text(s.to_owned())
    }

    #[test]
    fn content_digest_is_hex_sha256() {
        // Ruby: Digest::SHA256.hexdigest('{"a":1}')
        assert_eq!(
            content_digest(br#"{"a":1}"#),
            "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
        );
    }

    #[test]
    fn format_names() {
        assert_eq!("legacy".parse(), Ok(IdFormat::Legacy));
        assert_eq!("digest".parse(), Ok(IdFormat::Digest));
        assert_eq!(IdFormat::default(), IdFormat::Legacy);
        let err = "Digest".parse::<IdFormat>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown fact id format \"Digest\"; expected \"legacy\" or \"digest\""
        );
        assert_eq!(IdFormat::Digest.to_string(), "digest");
    }

    #[test]
    fn ruby_time_to_micros() {
        // Time.at(-2, 500000000, :nsec): to_i = -2, usec = 500000.
        assert_eq!(
            VersionToken::from_epoch_nanos(-1_500_000_000),
            VersionToken::Micros(-1_500_000)
        );
        assert_eq!(
            VersionToken::from_secs_nanos(-2, 500_000_000),
            VersionToken::Micros(-1_500_000)
        );
        // Time.at(-2, 499999999, :nsec): usec = 499999, truncated toward the past.
        assert_eq!(
            VersionToken::from_epoch_nanos(-1_500_000_001),
            VersionToken::Micros(-1_500_001)
        );
        assert_eq!(
            VersionToken::from_secs_nanos(-2, 499_999_999),
            VersionToken::Micros(-1_500_001)
        );
        assert_eq!(VersionToken::from_epoch_nanos(-1), VersionToken::Micros(-1));
        assert_eq!(
            VersionToken::from_epoch_nanos(1_700_000_000_999_999_999),
            VersionToken::Micros(1_700_000_000_999_999)
        );
        let huge = i128::from(i64::MAX) * 1000 + 1000;
        assert_eq!(
            VersionToken::from_epoch_nanos(huge),
            text("9223372036854775808")
        );
        assert_eq!(
            VersionToken::from_secs_nanos(i64::MIN, 0),
            text("-9223372036854775808000000")
        );
    }

    #[test]
    fn legacy_is_the_plain_join() {
        assert_eq!(
            derive_id(
                IdFormat::Legacy,
                "orders",
                &one("a:b"),
                "create",
                &VersionToken::Micros(100_000_000)
            ),
            "orders:a:b:create:100000000"
        );
        assert_eq!(
            derive_id(
                IdFormat::Legacy,
                "orders",
                &one("[1, 2]"),
                "update",
                &text("")
            ),
            "orders:[1, 2]:update:"
        );
        assert_eq!(
            derive_id(
                IdFormat::Legacy,
                "orders",
                &composite(&["1", "2"]),
                "update",
                &text("7")
            ),
            "orders:1,2:update:7"
        );
    }

    /// `(store, record id, event type, version, id)`, computed independently from the
    /// spec in FACT_IDS.md (Python's hashlib) and copied there.
    fn digest_vectors() -> Vec<(
        &'static str,
        RecordId,
        &'static str,
        VersionToken,
        &'static str,
    )> {
        vec![
            (
                "orders",
                one("42"),
                "order.accepted",
                VersionToken::Micros(1780387174500000),
                "tbf1-ded3880e79f03a235bb6d0d3e9c5ecc4ee618f7e5119f1ab583f889c06ceb84d",
            ),
            (
                "orders",
                one("a:b"),
                "create",
                VersionToken::Micros(100000000),
                "tbf1-ec3584d9f65edcf01562f1fb5539c58fef45a5a7f9118d444a219fba8923d9c3",
            ),
            (
                "orders",
                one("a"),
                "b:create",
                VersionToken::Micros(100000000),
                "tbf1-121f2279f060c3bb9d3b77d2e19677aa5bce88bb5556ce80376c74a1f2d1a0cf",
            ),
            (
                "orders",
                composite(&["a", "b"]),
                "create",
                VersionToken::Micros(100000000),
                "tbf1-78e862c1054bc1d076183a48af5eb70e18d36a59ff43d7fa581b6bdb508526af",
            ),
            (
                "s",
                one("1"),
                "e",
                VersionToken::Micros(-1500000),
                "tbf1-0b4468f6a8eb402a9c9da53b6df9a91dbb1bb6772ce0cabf0e913fccab7fe9dd",
            ),
            (
                "orders",
                one("42"),
                "update",
                text(""),
                "tbf1-e04d7d9e580f441d0e66bc6ce9f14ffb293fa2d12823e2d39d1eda10208e970e",
            ),
            (
                "orders",
                one("42"),
                "update",
                text("17"),
                "tbf1-346ba16deb3bbb3e9e497c152440698a070bed6d99956cfe3e631b12222118ce",
            ),
            (
                "Orders-v2",
                one("ключ/ü"),
                "créé",
                text("2026-07-03T10:00:00Z"),
                "tbf1-56b3e66415691f8201320449423517f950ff716bee574560fbec0c40cb87d2a6",
            ),
            (
                "",
                one(""),
                "",
                text(""),
                "tbf1-becbd180e2c3714cac6c6cedad17a331a0e2326a85dd95b6346f25d5d87e613f",
            ),
            (
                "",
                composite(&[]),
                "",
                text(""),
                "tbf1-e8539f203f551518e0c3d3dc73af27244cb22644ca67d4ffc916c368c1926090",
            ),
            (
                "",
                composite(&["", ""]),
                "",
                text(""),
                "tbf1-ba6a171e12dde0775f4d079d825622d79d227dde27d614d5ac8ec5c1605b0f68",
            ),
            (
                "line_items",
                composite(&["1", "2"]),
                "update",
                VersionToken::Micros(1780387174123456),
                "tbf1-9a828fd89c4d5cdb1f5f750eb1f12cf3bd951d39381f636a8dd5357fee9e28f8",
            ),
            (
                "emoji",
                one("😀"),
                "e\0x",
                VersionToken::Micros(0),
                "tbf1-81f66ea96056e4d7b7711dd9ed7e6d60271d6d386bc35cfc7ddb55c56df6bdd7",
            ),
        ]
    }

    #[test]
    fn digest_vectors_match_the_spec() {
        for (store, record, event, version, id) in digest_vectors() {
            assert_eq!(
                derive_id(IdFormat::Digest, store, &record, event, &version),
                id,
                "{store} {record:?} {event} {version:?}"
            );
        }
    }

    #[test]
    fn digest_separates_what_legacy_confuses() {
        let v = VersionToken::Micros(100_000_000);
        let ids: Vec<String> = [
            (one("a:b"), "create"),
            (one("a"), "b:create"),
            (composite(&["a", "b"]), "create"),
            (composite(&["a:b"]), "create"),
        ]
        .iter()
        .map(|(r, e)| derive_id(IdFormat::Digest, "orders", r, e, &v))
        .collect();
        assert_eq!(
            derive_id(IdFormat::Legacy, "orders", &one("a:b"), "create", &v),
            derive_id(IdFormat::Legacy, "orders", &one("a"), "b:create", &v),
        );
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
        assert_ne!(ids[1], ids[2]);
        assert_eq!(ids[0], ids[3], "One(x) is the composite of one part x");
    }

    #[test]
    fn digest_empty_parts_are_distinct() {
        let v = text("");
        let id = |r: RecordId| derive_id(IdFormat::Digest, "", &r, "", &v);
        let ids = [
            id(composite(&[])),
            id(composite(&[""])),
            id(composite(&["", ""])),
        ];
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[1], ids[2]);
        assert_ne!(ids[0], ids[2]);
        assert_eq!(id(one("")), ids[1]);
    }

    proptest! {
        #[test]
        fn digest_has_a_fixed_shape(store in ".*", event in ".*", parts in prop::collection::vec(".*", 0..4), micros in any::<i64>()) {
            let id = derive_id(IdFormat::Digest, &store, &RecordId::Composite(parts), &event, &VersionToken::Micros(micros));
            prop_assert_eq!(id.len(), 69);
            prop_assert!(id.starts_with("tbf1-"));
            prop_assert!(id[5..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }

        #[test]
        fn moving_a_separator_changes_the_digest(a in "[a-z:]{0,6}", b in "[a-z:]{0,6}", c in "[a-z:]{0,6}") {
            // Split "a:b:c" between record id and event type in two different places.
            let v = VersionToken::Micros(1);
            let first = derive_id(IdFormat::Digest, "s", &RecordId::One(format!("{a}:{b}")), &c, &v);
            let second = derive_id(IdFormat::Digest, "s", &RecordId::One(a.clone()), &format!("{b}:{c}"), &v);
            prop_assert_ne!(first, second);
        }
    }
}
