//! Ruby value → JSON bytes, in Rust, the way the daemon will read and hash them.
//!
//! Core types (Hash, Array, String, Symbol, Integer, Float, true/false/nil) are encoded
//! natively. Anything else is written exactly as `JSON.generate` in this process writes
//! it — the same bytes the 0.2 gem sent, so a retry of a fact it wrote replays instead of
//! conflicting. For most classes, the Rails values of a record among them (Time,
//! ActiveSupport::TimeWithZone, Date, DateTime, BigDecimal), that is the JSON String of
//! `to_s`: the encoder then calls `to_s` itself (see [`Encoder::generic`]); for the rest
//! it calls `JSON.generate` and checks what came back. Everything the daemon would
//! reject or mangle (NaN, Infinity, invalid UTF-8, cycles, excessive nesting, a body
//! over the cap) fails here, before anything is sent.

use std::sync::Mutex;

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
use crate::methods;

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

/// The `source_version` of a record without `updated_at`: the lowercase hex SHA-256 of its
/// (sanitized) attributes' JSON with Hash keys sorted (as Strings, by their bytes) at
/// every depth, so equal content gives the same id whatever order it came in. Raises
/// InvalidFact as `encode_json`.
pub fn content_digest(ruby: &Ruby, value: Value) -> Result<String, Error> {
    let mut encoder = Encoder::new(ruby, tbackend_core::protocol::frame::DEFAULT_MAX_REQUEST);
    encoder.sorted = true;
    encoder
        .encode(value)
        .map_err(|e| e.into_ruby(ruby, "value"))?;
    Ok(tbackend_core::fact::id::content_digest(&encoder.out))
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

impl From<Error> for EncodeError {
    fn from(e: Error) -> Self {
        EncodeError::Ruby(e)
    }
}

/// `RHash#each` with a step that may fail: the first failure stops the walk and is what
/// comes back (magnus's `foreach` takes only Ruby errors, and raising through it would
/// unwind across Ruby's frames).
pub fn try_foreach<E: From<Error>>(
    hash: RHash,
    mut step: impl FnMut(Value, Value) -> Result<(), E>,
) -> Result<(), E> {
    let mut failure = None;
    let walked = hash.foreach(|key: Value, val: Value| match step(key, val) {
        Ok(()) => Ok(ForEach::Continue),
        Err(e) => {
            failure = Some(e);
            Ok(ForEach::Stop)
        }
    });
    match failure {
        Some(e) => Err(e),
        None => walked.map_err(E::from),
    }
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
    /// Where this encoder's value starts in `out` (after a request's envelope).
    start: usize,
    cap: usize,
    /// Containers being encoded, to tell a cycle from deep nesting.
    stack: Vec<Value>,
    json: Option<RModule>,
    /// Hash keys sorted at every depth (`content_digest`).
    sorted: bool,
}

impl<'r> Encoder<'r> {
    pub fn new(ruby: &'r Ruby, cap: usize) -> Self {
        Self::appending(ruby, cap, Vec::new())
    }

    /// An encoder writing after what `out` holds; `cap` bounds only what it writes.
    pub fn appending(ruby: &'r Ruby, cap: usize, mut out: Vec<u8>) -> Self {
        // Room for a typical fact, so it is written without growing the buffer twice.
        out.reserve(256);
        Encoder {
            ruby,
            start: out.len(),
            out,
            cap,
            stack: Vec::new(),
            json: None,
            sorted: false,
        }
    }

    pub fn encode(&mut self, value: Value) -> Result<(), EncodeError> {
        self.value(value)?;
        self.check_size()
    }

    fn check_size(&self) -> Result<(), EncodeError> {
        if self.out.len() - self.start > self.cap {
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
            self.container(value, |enc| {
                if enc.sorted {
                    enc.sorted_hash(hash)
                } else {
                    enc.hash(hash)
                }
            })?;
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
        try_foreach(hash, |key, val| {
            if !first {
                self.out.push(b',');
            }
            first = false;
            let start = self.out.len();
            self.key(key)?;
            let end = self.out.len();
            self.out.push(b':');
            self.value(val)
                .map_err(|e| e.at(|| format!("[{:?}]", written_key(&self.out[start..end]))))
        })?;
        self.out.push(b'}');
        Ok(())
    }

    /// Object keys as `JSON.generate` writes them: Strings as they are, anything else
    /// by `to_s`. Written straight from the String's bytes: a copy of every key, kept only
    /// for naming a bad value, cost a malloc and a free per key.
    fn key(&mut self, key: Value) -> Result<(), EncodeError> {
        if let Some(s) = RString::from_value(key) {
            return self.string(s);
        }
        let text = self.key_text(key)?;
        wire::write_str(&mut self.out, &text);
        Ok(())
    }

    fn key_text(&self, key: Value) -> Result<String, EncodeError> {
        if let Some(s) = RString::from_value(key) {
            self.utf8(s)
        } else if let Some(sym) = Symbol::from_value(key) {
            Ok(sym.name().map_err(EncodeError::Ruby)?.into_owned())
        } else {
            let s: RString = key
                .funcall(*methods::TO_S, ())
                .map_err(|e| self.rewrap(e, key))?;
            self.utf8(s)
        }
    }

    /// A Hash with its keys (as Strings) sorted by their bytes; of keys that are equal
    /// as Strings (`:a` and `"a"`) only the last is written, as `to_h` of the sorted
    /// pairs keeps it.
    fn sorted_hash(&mut self, hash: RHash) -> Result<(), EncodeError> {
        let mut keys = Vec::with_capacity(hash.len());
        // The values in a Ruby Array, where the GC sees them while keys are converted.
        let values = self.ruby.ary_new_capa(hash.len());
        try_foreach(hash, |key, val| {
            let text = self.key_text(key)?;
            values.push(val).map_err(EncodeError::Ruby)?;
            keys.push(text);
            Ok::<(), EncodeError>(())
        })?;
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[a].as_bytes().cmp(keys[b].as_bytes()));
        self.out.push(b'{');
        let mut first = true;
        for (position, &index) in order.iter().enumerate() {
            let name = &keys[index];
            if order
                .get(position + 1)
                .is_some_and(|&next| keys[next] == *name)
            {
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            wire::write_str(&mut self.out, name);
            self.out.push(b':');
            let val: Value = values.entry(index as isize).map_err(EncodeError::Ruby)?;
            self.value(val)
                .map_err(|e| e.at(|| format!("[{name:?}]")))?;
        }
        self.out.push(b'}');
        Ok(())
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
                let digits: RString = i.funcall(*methods::TO_S, ()).map_err(EncodeError::Ruby)?;
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
        if self.generic(value)? {
            return Ok(());
        }
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

    /// An object `JSON.generate` would write as the JSON String of its `to_s` (json's own
    /// `Object#to_json`), written here without `JSON.generate` and the re-parse of its
    /// answer: about 5 µs less per value, three times per save of a model with
    /// timestamps and a decimal column. `to_s` is called as json calls it, so an app's
    /// `to_s` (or Rails 6.1's `Time::DATE_FORMATS[:default]`) still applies; which
    /// classes qualify is decided per class ([`generic_class`]). Returns false, having
    /// written nothing, when `JSON.generate` must do it: another class, an object with a
    /// singleton class, or a `to_s` that is not printable ASCII (json's escaping and
    /// encoding rules then apply, and json raises on what it cannot write).
    fn generic(&mut self, value: Value) -> Result<bool, EncodeError> {
        let class = value.class();
        // SAFETY: rb_obj_class reads the object's class; the GVL is held.
        let real = unsafe { rb_sys::rb_obj_class(value.as_raw()) };
        if class.as_raw() != real || !generic_class(self.ruby, class)? {
            return Ok(false);
        }
        let text: Value = value
            .funcall(*methods::TO_S, ())
            .map_err(|e| self.rewrap(e, value))?;
        let Some(text) = RString::from_value(text) else {
            return Ok(false);
        };
        let enc = text.enc_get();
        let ruby = self.ruby;
        if enc != ruby.utf8_encindex()
            && enc != ruby.usascii_encindex()
            && enc != ruby.ascii8bit_encindex()
        {
            return Ok(false);
        }
        // SAFETY: the bytes are read and copied before any other Ruby call.
        let bytes = unsafe { text.as_slice() };
        if !bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Ok(false);
        }
        let printable = std::str::from_utf8(bytes).expect("printable ASCII is UTF-8");
        wire::write_str(&mut self.out, printable);
        Ok(true)
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

/// A key's text back from the JSON String `key` wrote, for an error's path.
fn written_key(json: &[u8]) -> String {
    serde_json::from_slice(json).unwrap_or_else(|_| String::from_utf8_lossy(json).into_owned())
}

const CODERANGE_7BIT: u32 = rb_sys::ruby_coderange_type::RUBY_ENC_CODERANGE_7BIT as u32;
const CODERANGE_VALID: u32 = rb_sys::ruby_coderange_type::RUBY_ENC_CODERANGE_VALID as u32;

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
    // Ruby keeps what it knows of a string's bytes (its code range, found by a scan it
    // caches): ASCII only, or valid in a UTF-8 string, needs no check of ours.
    // SAFETY: a live String, the GVL held.
    let range = unsafe { rb_sys::rb_enc_str_coderange(source.as_raw()) } as u32;
    // The encoding asked again: `conv_enc` hands back the string unchanged when it cannot
    // transcode it.
    let known_utf8 = range == CODERANGE_7BIT
        || (range == CODERANGE_VALID && source.enc_get() == ruby.utf8_encindex());
    // SAFETY: the slice is used, and dropped, before any other Ruby call can run (`f`
    // never calls Ruby), so the GC cannot move or free the bytes under it.
    let bytes = unsafe { source.as_slice() };
    let text = if known_utf8 {
        // SAFETY: Ruby found these bytes ASCII, or valid UTF-8, just above.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    } else {
        std::str::from_utf8(bytes).map_err(|e| {
            EncodeError::invalid(format!(
                "invalid UTF-8 in a String (byte offset {})",
                e.valid_up_to()
            ))
        })?
    };
    Ok(f(text))
}

/// Per class, whether `JSON.generate` writes its objects as the JSON String of their
/// `to_s`, as `ActsAsTbackend::Fact.generic_json_class?` decided it when the encoder
/// first met the class. Kept for the life of the process: a class is asked once, so an
/// override of `to_json` (or a JSON.generate replaced, by Oj's mimic mode say) must be
/// in place before the first fact holding such an object is encoded, as an app's
/// initializers are. At most `GENERIC_CLASSES_CAP` classes are kept, each held from the
/// GC so its address cannot come back as another class; past that the encoder asks
/// JSON.generate.
static GENERIC_CLASSES: Mutex<Vec<(usize, bool)>> = Mutex::new(Vec::new());
const GENERIC_CLASSES_CAP: usize = 64;

fn generic_class(ruby: &Ruby, class: magnus::RClass) -> Result<bool, EncodeError> {
    let key = class.as_raw() as usize;
    let known = |table: &Vec<(usize, bool)>| table.iter().find(|(k, _)| *k == key).map(|e| e.1);
    // Never held across a Ruby call: another thread may run Ruby meanwhile.
    if let Some(verdict) = known(&GENERIC_CLASSES.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(verdict);
    }
    let Ok(fact) = ruby
        .class_object()
        .const_get::<_, RModule>("ActsAsTbackend")
        .and_then(|root| root.const_get::<_, RModule>("Fact"))
    else {
        return Ok(false);
    };
    let verdict: bool = fact
        .funcall("generic_json_class?", (class,))
        .map_err(EncodeError::Ruby)?;
    let mut table = GENERIC_CLASSES.lock().unwrap_or_else(|e| e.into_inner());
    if known(&table).is_none() && table.len() < GENERIC_CLASSES_CAP {
        magnus::gc::register_mark_object(class);
        table.push((key, verdict));
    }
    Ok(verdict)
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
