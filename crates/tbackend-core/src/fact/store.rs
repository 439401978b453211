//! Store names.
//!
//! The daemon accepts `^[A-Za-z0-9_-]+$` with no length check, but it names a log file
//! after the store: a name too long for a file name (about 251 bytes and up) gets no
//! log and its facts are silently lost on restart. We cap names well below that.

use thiserror::Error;

/// The longest store name we accept, in bytes.
pub const MAX_STORE_NAME_LEN: usize = 200;

/// Why a store name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreNameError {
    /// The name is the empty string.
    #[error("store name is empty")]
    Empty,
    /// The name is longer than [`MAX_STORE_NAME_LEN`].
    #[error(
        "store name is {len} bytes long; the limit is {max} (the daemon loses stores whose name is too long for a file name)",
        max = MAX_STORE_NAME_LEN
    )]
    TooLong {
        /// The name's length in bytes.
        len: usize,
    },
    /// The name holds a character outside `A-Z a-z 0-9 _ -`.
    #[error("store name {name:?} contains {ch:?} (U+{code:04X}) at byte {index}; only A-Z, a-z, 0-9, '_' and '-' are allowed", code = *ch as u32)]
    InvalidChar {
        /// The whole name.
        name: String,
        /// The first offending character.
        ch: char,
        /// Its byte offset in the name.
        index: usize,
    },
}

/// Checks `name` against the daemon's rule and our length cap.
pub fn validate_store_name(name: &str) -> Result<(), StoreNameError> {
    if name.is_empty() {
        return Err(StoreNameError::Empty);
    }
    if let Some((index, ch)) = name
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(StoreNameError::InvalidChar {
            name: name.to_owned(),
            ch,
            index,
        });
    }
    if name.len() > MAX_STORE_NAME_LEN {
        return Err(StoreNameError::TooLong { len: name.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for name in [
            "orders",
            "Orders-v2",
            "spark_lead_signals",
            "_",
            "-",
            "0",
            &"x".repeat(MAX_STORE_NAME_LEN),
        ] {
            assert_eq!(validate_store_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_empty() {
        let err = validate_store_name("").unwrap_err();
        assert_eq!(err, StoreNameError::Empty);
        assert_eq!(err.to_string(), "store name is empty");
    }

    #[test]
    fn refuses_too_long_with_the_length() {
        let err = validate_store_name(&"L".repeat(300)).unwrap_err();
        assert_eq!(err, StoreNameError::TooLong { len: 300 });
        assert!(err
            .to_string()
            .starts_with("store name is 300 bytes long; the limit is 200"));
        assert_eq!(
            validate_store_name(&"L".repeat(201)),
            Err(StoreNameError::TooLong { len: 201 })
        );
    }

    #[test]
    fn names_the_first_offending_character() {
        // The names the daemon refused in transcripts.jsonl.
        let cases = [
            ("has space", ' ', 3),
            ("dot.name", '.', 3),
            ("slash/name", '/', 5),
            ("ünï", 'ü', 0),
            ("a:b", ':', 1),
            ("ok\nno", '\n', 2),
            ("abcé", 'é', 3),
        ];
        for (name, ch, index) in cases {
            assert_eq!(
                validate_store_name(name),
                Err(StoreNameError::InvalidChar {
                    name: name.to_owned(),
                    ch,
                    index
                }),
                "{name}"
            );
        }
        assert_eq!(
            validate_store_name("dot.name").unwrap_err().to_string(),
            "store name \"dot.name\" contains '.' (U+002E) at byte 3; only A-Z, a-z, 0-9, '_' and '-' are allowed"
        );
    }

    #[test]
    fn a_bad_character_is_reported_before_the_length() {
        let name = format!("{} x", "a".repeat(300));
        assert!(matches!(
            validate_store_name(&name),
            Err(StoreNameError::InvalidChar { ch: ' ', .. })
        ));
    }
}
