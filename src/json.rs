//! Ruby value → JSON bytes, in Rust, the way the daemon will read and hash them.
//!
//! Core types (Hash, Array, String, Symbol, Integer, Float, true/false/nil) are encoded
//! natively. Anything else is encoded by `JSON.generate` in this process, so an app with
//! ActiveSupport gets ActiveSupport's encoding — the same bytes the 0.2 gem sent, so a
//! retry of a fact it wrote replays instead of conflicting. Everything the daemon would
//! reject or mangle (NaN, Infinity, invalid UTF-8, cycles, excessive nesting, a body
//! over the cap) fails here, before anything is sent.

use magnus::rb_sys::AsRawValue;
use magnus::{
    encoding::EncodingCapable,
    prelude::*,
    r_hash::ForEach,
    value::{Qfalse, Qtrue, ReprValue},
    Error, Float, Integer, RArray, RHash, RModule, RString, Ruby, Symbol, Value,
};
use tbackend_core::fact::json as wire;

use crate::errors::invalid_fact;
use crate::fact::class_name;

/// `JSON.generate`'s default `max_nesting`; the daemon's parser stops at 128 levels
/// and a fact value sits two levels into the request.
const MAX_DEPTH: usize = 100;

pub fn encode_json(ruby: &Ruby, value: Value, max_bytes: usize) -> Result<RString, Error> {
    let mut encoder = Encoder::new(ruby, max_bytes);
    encoder
        .encode(value)
        .map_err(|e| e.into_ruby(ruby, "value"))?;
    Ok(ruby.enc_str_new(&encoder.out, ruby.utf8_encoding()))
}

/// The `value_hash` the daemon would store for `value` written in a fact: its JSON as
/// sent, read back as the daemon reads it and hashed in canonical form (so `10` and
/// `10.0` differ, and Hash order does not matter). Raises InvalidFact as `encode_json`.
pub fn value_hash(ruby: &Ruby, value: Value) -> Result<String, Error> {
    let mut encoder = Encoder::new(ruby, tbackend_core::protocol::frame::DEFAULT_MAX_REQUEST);
    encoder
        .encode(value)
        .map_err(|e| e.into_ruby(ruby, "value"))?;
    let parsed: serde_json::Value = serde_json::from_slice(&encoder.out)
        .map_err(|e| invalid_fact(ruby, format!("value: {e}")))?;
    Ok(wire::value_hash(&parsed))
}

/// Why a value cannot be encoded, with the path to the offending part.
pub enum EncodeError {
    Invalid {
        message: String,
        path: Vec<String>,
    },
    /// An exception that is not ours to rewrap (Interrupt, NoMemoryError…).
    Ruby(Error),
}

impl EncodeError {
    fn invalid(message: impl Into<String>) -> Self {
        EncodeError::Invalid {
            message: message.into(),
            path: Vec::new(),
        }
    }

    fn at(mut self, segment: impl FnOnce() -> String) -> Self {
        if let EncodeError::Invalid { path, .. } = &mut self {
            path.push(segment());
        }
        self
    }

    /// The Ruby exception, naming the offending part from `root` (`value`, `fact`).
    pub fn into_ruby(self, ruby: &Ruby, root: &str) -> Error {
        match self {
            EncodeError::Ruby(e) => e,
            EncodeError::Invalid { message, path } => {
                let location: String = path.iter().rev().map(String::as_str).collect();
                invalid_fact(ruby, format!("{root}{location}: {message}"))
            }
        }
    }
}

pub struct Encoder<'r> {
    ruby: &'r Ruby,
    pub out: Vec<u8>,
    cap: usize,
    /// Containers being encoded, to tell a cycle from deep nesting.
    stack: Vec<Value>,
    json: Option<RModule>,
}

impl<'r> Encoder<'r> {
    pub fn new(ruby: &'r Ruby, cap: usize) -> Self {
        Encoder {
            ruby,
            out: Vec::with_capacity(256),
            cap,
            stack: Vec::new(),
            json: None,
        }
    }

    pub fn encode(&mut self, value: Value) -> Result<(), EncodeError> {
        self.value(value)?;
        self.check_size()
    }

    fn check_size(&self) -> Result<(), EncodeError> {
        if self.out.len() > self.cap {
            return Err(EncodeError::invalid(format!(
                "encodes to more than {} bytes, the request size cap",
                self.cap
            )));
        }
        Ok(())
    }

    fn value(&mut self, value: Value) -> Result<(), EncodeError> {
        if value.is_nil() {
            self.out.extend_from_slice(b"null");
        } else if let Some(b) = bool_of(value) {
            self.out
                .extend_from_slice(if b { b"true" } else { b"false" });
        } else if let Some(s) = RString::from_value(value) {
            self.string(s)?;
        } else if let Some(sym) = Symbol::from_value(value) {
            let name = sym.name().map_err(EncodeError::Ruby)?;
            wire::write_str(&mut self.out, &name);
        } else if let Some(i) = Integer::from_value(value) {
            self.integer(i)?;
        } else if let Some(f) = Float::from_value(value) {
            wire::write_f64(&mut self.out, f.to_f64())
                .map_err(|e| EncodeError::invalid(e.to_string()))?;
        } else if let Some(hash) = RHash::from_value(value) {
            self.container(value, |enc| enc.hash(hash))?;
        } else if let Some(array) = RArray::from_value(value) {
            self.container(value, |enc| enc.array(array))?;
        } else {
            self.foreign(value)?;
        }
        Ok(())
    }

    fn container(
        &mut self,
        value: Value,
        body: impl FnOnce(&mut Self) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        if self.stack.iter().any(|v| v.as_raw() == value.as_raw()) {
            return Err(EncodeError::invalid(
                "cyclic structure (it contains itself)",
            ));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(EncodeError::invalid(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        self.stack.push(value);
        let result = body(self);
        self.stack.pop();
        result?;
        self.check_size()
    }

    fn hash(&mut self, hash: RHash) -> Result<(), EncodeError> {
        self.out.push(b'{');
        let mut first = true;
        let mut failure = None;
        let walked = hash.foreach(|key: Value, val: Value| {
            if !first {
                self.out.push(b',');
            }
            first = false;
            let step = self.key(key).and_then(|name| {
                self.out.push(b':');
                self.value(val).map_err(|e| e.at(|| format!("[{name:?}]")))
            });
            match step {
                Ok(()) => Ok(ForEach::Continue),
                Err(e) => {
                    failure = Some(e);
                    Ok(ForEach::Stop)
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        walked.map_err(EncodeError::Ruby)?;
        self.out.push(b'}');
        Ok(())
    }

    /// Object keys as `JSON.generate` writes them: Strings as they are, anything else
    /// by `to_s`.
    fn key(&mut self, key: Value) -> Result<String, EncodeError> {
        let text = if let Some(s) = RString::from_value(key) {
            self.utf8(s)?
        } else if let Some(sym) = Symbol::from_value(key) {
            sym.name().map_err(EncodeError::Ruby)?.into_owned()
        } else {
            let s: RString = key.funcall("to_s", ()).map_err(|e| self.rewrap(e, key))?;
            self.utf8(s)?
        };
        wire::write_str(&mut self.out, &text);
        Ok(text)
    }

    fn array(&mut self, array: RArray) -> Result<(), EncodeError> {
        self.out.push(b'[');
        let mut index = 0;
        // Indexing, not a borrowed slice: the array may change under a foreign to_json.
        while index < array.len() {
            if index > 0 {
                self.out.push(b',');
            }
            let item: Value = array.entry(index as isize).map_err(EncodeError::Ruby)?;
            self.value(item)
                .map_err(|e| e.at(|| format!("[{index}]")))?;
            index += 1;
        }
        self.out.push(b']');
        Ok(())
    }

    fn integer(&mut self, i: Integer) -> Result<(), EncodeError> {
        match i.to_i64() {
            Ok(n) => wire::write_i64(&mut self.out, n),
            // A Bignum: its decimal digits, as JSON.generate writes it.
            Err(_) => {
                let digits: RString = i.funcall("to_s", ()).map_err(EncodeError::Ruby)?;
                self.out
                    .extend_from_slice(digits.to_string().map_err(EncodeError::Ruby)?.as_bytes());
            }
        }
        Ok(())
    }

    fn string(&mut self, s: RString) -> Result<(), EncodeError> {
        let ruby = self.ruby;
        let out = &mut self.out;
        with_utf8(ruby, s, |text| wire::write_str(out, text))
    }

    /// The string's text as an owned UTF-8 String (keys: needed again for error paths).
    fn utf8(&self, s: RString) -> Result<String, EncodeError> {
        with_utf8(self.ruby, s, str::to_owned)
    }

    /// Any other object: exactly what `JSON.generate` in this process makes of it.
    fn foreign(&mut self, value: Value) -> Result<(), EncodeError> {
        let json = match self.json {
            Some(m) => m,
            None => {
                let m: RModule = self
                    .ruby
                    .class_object()
                    .const_get("JSON")
                    .map_err(EncodeError::Ruby)?;
                self.json = Some(m);
                m
            }
        };
        let generated: RString = json
            .funcall("generate", (value,))
            .map_err(|e| self.rewrap(e, value))?;
        let text = self.utf8(generated)?;
        // Whatever a custom to_json produced must still be one well-formed JSON value.
        if serde_json::from_str::<serde_json::Value>(&text).is_err() {
            return Err(EncodeError::invalid(format!(
                "JSON.generate made invalid JSON of a {}",
                class_name(value)
            )));
        }
        self.out.extend_from_slice(text.as_bytes());
        Ok(())
    }

    /// A StandardError raised while converting becomes a clear InvalidFact naming the
    /// class; anything else (Interrupt, NoMemoryError…) passes through untouched.
    fn rewrap(&self, err: Error, value: Value) -> EncodeError {
        if err.is_kind_of(self.ruby.exception_standard_error()) {
            EncodeError::invalid(format!(
                "a {} cannot be encoded as JSON: {err}",
                class_name(value)
            ))
        } else {
            EncodeError::Ruby(err)
        }
    }
}

/// Runs `f` over the string's text as UTF-8, without copying it. UTF-8, ASCII and binary
/// strings must already hold valid UTF-8 bytes; other encodings are transcoded as
/// JSON.generate would.
fn with_utf8<R>(ruby: &Ruby, s: RString, f: impl FnOnce(&str) -> R) -> Result<R, EncodeError> {
    let enc = s.enc_get();
    let source = if enc == ruby.utf8_encindex()
        || enc == ruby.usascii_encindex()
        || enc == ruby.ascii8bit_encindex()
    {
        s
    } else {
        s.conv_enc(ruby.utf8_encoding())
            .map_err(|e| EncodeError::invalid(format!("cannot be transcoded to UTF-8 ({e})")))?
    };
    // SAFETY: the slice is used, and dropped, before any other Ruby call can run (`f`
    // never calls Ruby), so the GC cannot move or free the bytes under it.
    let bytes = unsafe { source.as_slice() };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        EncodeError::invalid(format!(
            "invalid UTF-8 in a String (byte offset {})",
            e.valid_up_to()
        ))
    })?;
    Ok(f(text))
}

fn bool_of(value: Value) -> Option<bool> {
    if Qtrue::from_value(value).is_some() {
        Some(true)
    } else if Qfalse::from_value(value).is_some() {
        Some(false)
    } else {
        None
    }
}
