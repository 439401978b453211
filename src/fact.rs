//! `ActsAsTbackend::Fact`: ids and fact hashes. Ruby values are reduced to plain Rust
//! data here; the rules themselves live in `tbackend_core::fact`.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use magnus::rb_sys::{protect, AsRawValue, FromRawValue};
use magnus::{
    prelude::*, value::ReprValue, Error, Fixnum, Float, Integer, RArray, RClass, RHash, RString,
    Ruby, Symbol, Value,
};
use tbackend_core::fact::{id, store, time};

use crate::errors::{configuration, invalid_fact};
use crate::methods;

/// Days between the Julian Day epoch and 1970-01-01.
const UNIX_EPOCH_JD: i64 = 2_440_588;

pub fn derive_id(
    ruby: &Ruby,
    store: Value,
    record_id: Value,
    event_type: Value,
    source_version: Value,
    format: String,
) -> Result<String, Error> {
    let format = id_format(ruby, &format)?;
    let record = record_key(format, record_id)?;
    let version = version_token(ruby, source_version)?;
    Ok(id::derive_id(
        format,
        &to_s(store)?,
        &record,
        &to_s(event_type)?,
        &version,
    ))
}

pub fn id_format(ruby: &Ruby, format: &str) -> Result<id::IdFormat, Error> {
    format.parse().map_err(|_| {
        configuration(
            ruby,
            format!("unknown id format {format:?}: expected \"legacy\" or \"digest\""),
        )
    })
}

/// The record id as it enters the fact id: an Array is a composite key in the digest
/// format; anything else (and any id in the legacy format) is its `to_s`.
pub fn record_key(format: id::IdFormat, record_id: Value) -> Result<id::RecordId, Error> {
    Ok(match (format, RArray::from_value(record_id)) {
        (id::IdFormat::Digest, Some(parts)) => {
            id::RecordId::Composite(parts.into_iter().map(to_s).collect::<Result<_, _>>()?)
        }
        _ => id::RecordId::One(to_s(record_id)?),
    })
}

/// The 0.2 gem's version token: integer microseconds for anything time-like (it has
/// `usec` and `to_i`: Time, TimeWithZone, DateTime with ActiveSupport), else `to_s`.
pub fn version_token(ruby: &Ruby, value: Value) -> Result<id::VersionToken, Error> {
    if let Some(micros) = plain_time_micros(ruby, value) {
        return Ok(id::VersionToken::Micros(micros));
    }
    if value.respond_to(*methods::USEC, false)? && value.respond_to(*methods::TO_I, false)? {
        let seconds: i128 = value
            .funcall::<_, _, Integer>(*methods::TO_I, ())?
            .to_i128()?;
        let usec: i128 = value
            .funcall::<_, _, Integer>(*methods::USEC, ())?
            .to_i128()?;
        let micros = seconds * 1_000_000 + usec;
        if let Ok(micros) = i64::try_from(micros) {
            return Ok(id::VersionToken::Micros(micros));
        }
    }
    Ok(id::VersionToken::Text(to_s(value)?))
}

/// `to_i * 1_000_000 + usec` of a Time (the class itself, whose `to_i` and `usec` are
/// Ruby's own), read from the Time in C: every record with `updated_at` needs it, and the
/// two calls and two `respond_to?` cost about 5,000 instructions per save (issue 13).
/// Both floor, as the timespec does. None: ask the object.
fn plain_time_micros(ruby: &Ruby, value: Value) -> Option<i64> {
    // SAFETY: the GVL is held; rb_cTime is set before any extension loads.
    let time = unsafe { rb_sys::rb_cTime };
    // SAFETY: as above; rb_obj_class reads the object's class.
    let plain = unsafe { rb_sys::rb_obj_class(value.as_raw()) } == time
        && methods::ruby_own(ruby, time, &methods::TO_I)
        && methods::ruby_own(ruby, time, &methods::USEC);
    if !plain {
        return None;
    }
    let mut spec = None;
    // rb_time_timespec raises for a Time outside time_t: then the methods answer.
    protect(|| {
        // SAFETY: a Time, the GVL held, inside protect.
        spec = Some(unsafe { rb_sys::rb_time_timespec(value.as_raw()) });
        rb_sys::Qnil as rb_sys::VALUE
    })
    .ok()?;
    let spec = spec?;
    i64::try_from(i128::from(spec.tv_sec) * 1_000_000 + i128::from(spec.tv_nsec / 1_000)).ok()
}

#[allow(clippy::too_many_arguments)]
pub fn build_fact(
    ruby: &Ruby,
    fact_id: Value,
    store_name: Value,
    key: Value,
    value: Value,
    valid_time: Value,
    transaction_time: Value,
    causation: Value,
    schema_version: Value,
    producer: Value,
) -> Result<RHash, Error> {
    let store_name = to_s(store_name)?;
    check_store(ruby, &store_name)?;
    let fact_id = if let Some(s) = RString::from_value(fact_id) {
        s
    } else if let Some(sym) = Symbol::from_value(fact_id) {
        ruby.str_new(&sym.name()?)
    } else {
        return Err(invalid_fact(
            ruby,
            format!("id must be a String, got {}", class_name(fact_id)),
        ));
    };
    let schema_version = Integer::from_value(schema_version)
        .and_then(|i| i.to_u32().ok())
        .ok_or_else(|| {
            invalid_fact(
                ruby,
                format!(
                    "schema_version must be an Integer in 0..4294967295, got {}",
                    inspect(schema_version)
                ),
            )
        })?;
    let causation = if causation.is_nil() {
        None
    } else {
        Some(to_s(causation)?)
    };
    FactParts {
        id: fact_id,
        store: store_name,
        key: key_text(key)?,
        value,
        valid_time,
        transaction_time,
        causation,
        schema_version,
        producer,
    }
    .build(ruby)
}

/// A key as `Fact.build` takes it: its `to_s`.
pub fn key_text(key: Value) -> Result<String, Error> {
    to_s(key)
}

/// A fact's fields, checked and converted but for the times and the producer.
pub struct FactParts {
    pub id: RString,
    /// Already checked with `check_store`.
    pub store: String,
    pub key: String,
    pub value: Value,
    pub valid_time: Value,
    pub transaction_time: Value,
    pub causation: Option<String>,
    pub schema_version: u32,
    pub producer: Value,
}

impl FactParts {
    /// The String-keyed fact Hash, its times as float epoch seconds.
    pub fn build(self, ruby: &Ruby) -> Result<RHash, Error> {
        let transaction_time = if self.transaction_time.is_nil() {
            now_seconds()
        } else {
            epoch_seconds(ruby, "transaction_time", self.transaction_time)?
        };
        let fact = ruby.hash_new();
        fact.aset(interned("id"), self.id)?;
        fact.aset(interned("store"), self.store)?;
        fact.aset(interned("key"), self.key)?;
        fact.aset(interned("value"), self.value)?;
        fact.aset(interned("transaction_time"), transaction_time)?;
        fact.aset(interned("schema_version"), self.schema_version)?;
        if !self.valid_time.is_nil() {
            fact.aset(
                interned("valid_time"),
                epoch_seconds(ruby, "valid_time", self.valid_time)?,
            )?;
        }
        if let Some(causation) = self.causation {
            fact.aset(interned("causation"), causation)?;
        }
        if !self.producer.is_nil() {
            fact.aset(interned("producer"), to_s(self.producer)?)?;
        }
        Ok(fact)
    }
}

/// A fixed name (a fact field, a status) as Ruby's interned (frozen, deduplicated) UTF-8
/// String: no allocation per use. As a Hash key it is kept as it is; a key built per call
/// would cost two objects (the String, and the frozen copy the Hash keeps), on every save.
///
/// Each name is looked up in Ruby's table of interned Strings once and then kept here,
/// held from the GC (and so never moved): the lookup hashes the name, about 700
/// instructions, and a mirrored save asks for eight names.
pub(crate) fn interned(name: &'static str) -> RString {
    let key = (name.as_ptr() as usize, name.len());
    let known = |table: &Vec<(usize, usize, rb_sys::VALUE)>| {
        table
            .iter()
            .find(|(ptr, len, _)| (*ptr, *len) == key)
            .map(|e| e.2)
    };
    // Never held across a Ruby call.
    let cached = known(&INTERNED.lock().unwrap_or_else(|e| e.into_inner()));
    let raw = match cached {
        Some(raw) => raw,
        None => {
            // SAFETY: called with the GVL held (from a method Ruby called); the pointer
            // and length describe a valid UTF-8 &str, and rb_enc_interned_str returns a
            // live String.
            let raw = unsafe {
                rb_sys::rb_enc_interned_str(
                    name.as_ptr().cast(),
                    name.len() as std::os::raw::c_long,
                    rb_sys::rb_utf8_encoding(),
                )
            };
            let mut table = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
            if known(&table).is_none() && table.len() < INTERNED_CAP {
                // SAFETY: the GVL is held; `raw` is a live String.
                unsafe { rb_sys::rb_gc_register_mark_object(raw) };
                table.push((key.0, key.1, raw));
            }
            raw
        }
    };
    // SAFETY: `raw` is a live String (kept by the table, or just made).
    RString::from_value(unsafe { Value::from_raw(raw) }).expect("an interned String")
}

/// The names `interned` keeps: one per literal the crate passes (address and length), a
/// fixed set; past the cap (which only a bug would reach) names are looked up each time.
static INTERNED: Mutex<Vec<(usize, usize, rb_sys::VALUE)>> = Mutex::new(Vec::new());
const INTERNED_CAP: usize = 128;

pub fn validate_store_name(ruby: &Ruby, name: Value) -> Result<bool, Error> {
    check_store(ruby, &to_s(name)?)?;
    Ok(true)
}

pub fn check_store(ruby: &Ruby, name: &str) -> Result<(), Error> {
    store::validate_store_name(name).map_err(|e| invalid_fact(ruby, e.to_string()))
}

/// A fact Hash's field, under a String or a Symbol key (`Fact.build` makes String keys,
/// hand-written facts often use Symbols); nil counts as absent. Asked with the interned
/// String and the static Symbol: no object is made to ask (a `&str` key would make a
/// String per lookup, on every write).
pub fn fact_field(ruby: &Ruby, hash: RHash, name: &'static str) -> Option<Value> {
    hash.get(interned(name))
        .or_else(|| hash.get(ruby.sym_new(name)))
        .filter(|v| !v.is_nil())
}

/// A fact to be written: a Hash whose store the daemon would neither refuse nor lose.
/// Returns the Hash and the store name.
pub fn fact_store(ruby: &Ruby, fact: Value) -> Result<(RHash, String), Error> {
    let Some(hash) = RHash::from_value(fact) else {
        return Err(invalid_fact(ruby, "fact must be a Hash"));
    };
    let Some(store) = fact_field(ruby, hash, "store") else {
        return Err(invalid_fact(ruby, "fact has no store"));
    };
    let store = to_s(store)?;
    check_store(ruby, &store)?;
    Ok((hash, store))
}

/// Float epoch seconds for a time given as Time/TimeWithZone, DateTime, Date (UTC
/// midnight: a date has no zone, and the machine's must not leak in), Numeric or an
/// ISO-8601 String. The 0.2 gem called `to_f` on whatever it got: a String became
/// garbage and a Date raised.
pub fn epoch_seconds(ruby: &Ruby, field: &str, value: Value) -> Result<f64, Error> {
    let bad = |detail: String| invalid_fact(ruby, format!("{field}: {detail}"));
    let seconds = if let Some(f) = Float::from_value(value) {
        f.to_f64()
    } else if let Some(s) = RString::from_value(value) {
        return time::parse_iso8601(&s.to_string()?).map_err(|e| bad(e.to_string()));
    } else if is_a(ruby, value, "Numeric") {
        value.funcall::<_, _, f64>("to_f", ())?
    } else if is_a(ruby, value, "Time") {
        // Not through `to_time`: plain Ruby gets Time#to_time only once `date` is loaded.
        value.funcall::<_, _, f64>("to_f", ())?
    } else if is_a(ruby, value, "DateTime") {
        // From the exact astronomical Julian day (UTC), not `to_time`: under ActiveSupport
        // 7.2 the first `to_time` warns about Rails 8's zone-preserving change, and only the
        // instant matters here. (2 * ajd - 2 * 2440587.5) * 43200 = seconds since the epoch.
        value
            .funcall::<_, _, Value>("ajd", ())?
            .funcall::<_, _, Value>("*", (2,))?
            .funcall::<_, _, Value>("-", (2 * UNIX_EPOCH_JD - 1,))?
            .funcall::<_, _, Value>("*", (43_200,))?
            .funcall::<_, _, f64>("to_f", ())?
    } else if is_a(ruby, value, "Date") {
        let jd: i64 = value.funcall("jd", ())?;
        ((jd - UNIX_EPOCH_JD) * 86_400) as f64
    } else if value.respond_to("to_time", false)? {
        value
            .funcall::<_, _, Value>("to_time", ())?
            .funcall::<_, _, f64>("to_f", ())?
    } else {
        return Err(bad(format!(
            "expected a Time, DateTime, Date, Numeric or ISO-8601 String, got {}",
            class_name(value)
        )));
    };
    time::check_finite(seconds).map_err(|e| bad(e.to_string()))
}

fn now_seconds() -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs_f64()
}

fn is_a(ruby: &Ruby, value: Value, class: &str) -> bool {
    ruby.class_object()
        .const_get::<_, RClass>(class)
        .map(|c| value.is_kind_of(c))
        .unwrap_or(false)
}

/// `value.to_s` as Rust text (Strings without a method call).
pub fn to_s(value: Value) -> Result<String, Error> {
    if let Some(s) = RString::from_value(value) {
        return s.to_string();
    }
    // A record's id, usually: Ruby's own Integer#to_s writes the same digits.
    if let Some(n) = Fixnum::from_value(value) {
        // SAFETY: the GVL is held; rb_cInteger is set before any extension loads.
        let integer = unsafe { rb_sys::rb_cInteger };
        if methods::ruby_own(&Ruby::get_with(value), integer, &methods::TO_S) {
            return Ok(n.to_i64().to_string());
        }
    }
    value
        .funcall::<_, _, RString>(*methods::TO_S, ())?
        .to_string()
}

pub fn class_name(value: Value) -> String {
    unsafe { value.classname() }.into_owned()
}

fn inspect(value: Value) -> String {
    value.inspect()
}
