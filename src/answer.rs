//! Daemon answers and outcomes → the soft-result Hash.

use std::os::raw::{c_char, c_long};

use magnus::rb_sys::{protect, AsRawValue, FromRawValue};
use magnus::{prelude::*, value::LazyId, Error, IntoValue, RHash, Ruby, Value};
use rb_sys::VALUE;
use tbackend_client::Outcome;
use tbackend_core::protocol::answer::{ErrorKind, Flags, Status};
use tbackend_core::protocol::Json;

/// The answer with Symbol keys at every depth, as the 0.2 gem's
/// `JSON.parse(…, symbolize_names: true)` returned it.
///
/// Built in one `protect` with Ruby's C API (one per insert made a third of the cost).
/// A raise inside (only NoMemoryError can) unwinds through `build`'s frames, which hold
/// borrows and Ruby values only: nothing of theirs needs dropping.
pub fn to_ruby(ruby: &Ruby, json: &Json) -> Result<Value, Error> {
    // SAFETY: the GVL is held (a method Ruby called); every VALUE made is reachable from
    // the stack (conservatively scanned) or from the container it went into.
    let raw = protect(|| unsafe { build(ruby, json) })?;
    // SAFETY: `build` returns a live Ruby object.
    Ok(unsafe { Value::from_raw(raw) })
}

/// SAFETY: GVL held, inside `protect`.
unsafe fn build(ruby: &Ruby, json: &Json) -> VALUE {
    match json {
        Json::Null => ruby.qnil().as_raw(),
        Json::Bool(b) => b.into_value_with(ruby).as_raw(),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_value_with(ruby).as_raw()
            } else if let Some(u) = n.as_u64() {
                u.into_value_with(ruby).as_raw()
            } else {
                n.as_f64()
                    .unwrap_or(f64::NAN)
                    .into_value_with(ruby)
                    .as_raw()
            }
        }
        Json::Str(s) => rb_sys::rb_utf8_str_new(s.as_ptr().cast(), s.len() as c_long),
        Json::Array(items) => {
            let array = rb_sys::rb_ary_new_capa(items.len() as c_long);
            for item in items {
                rb_sys::rb_ary_push(array, build(ruby, item));
            }
            array
        }
        // A repeated key keeps its first place and its last value, as a Hash does.
        Json::Object(pairs) => {
            let hash = rb_sys::rb_hash_new();
            for (name, value) in pairs {
                let key = symbol(ruby, name);
                rb_sys::rb_hash_aset(hash, key, build(ruby, value));
            }
            hash
        }
    }
}

// The daemon's own field names, interned once: every answer carries several of them.
// Any other key (fact values are app data) becomes a dynamic Symbol the GC can free:
// interning app data as static Ids would grow the symbol table without bound.
static OK: LazyId = LazyId::new("ok");
static COMMITTED: LazyId = LazyId::new("committed");
static DURABILITY: LazyId = LazyId::new("durability");
static IDEMPOTENT_REPLAY: LazyId = LazyId::new("idempotent_replay");
static SEQ_ID: LazyId = LazyId::new("seq_id");
static FACT: LazyId = LazyId::new("fact");
static FACTS: LazyId = LazyId::new("facts");
static ID: LazyId = LazyId::new("id");
static STORE: LazyId = LazyId::new("store");
static KEY: LazyId = LazyId::new("key");
static VALUE_: LazyId = LazyId::new("value");
static VALID_TIME: LazyId = LazyId::new("valid_time");
static TRANSACTION_TIME: LazyId = LazyId::new("transaction_time");
static SCHEMA_VERSION: LazyId = LazyId::new("schema_version");
static ERROR: LazyId = LazyId::new("error");
static RETRYABLE: LazyId = LazyId::new("retryable");

fn protocol_key(name: &str) -> Option<&'static LazyId> {
    Some(match name {
        "ok" => &OK,
        "committed" => &COMMITTED,
        "durability" => &DURABILITY,
        "idempotent_replay" => &IDEMPOTENT_REPLAY,
        "seq_id" => &SEQ_ID,
        "fact" => &FACT,
        "facts" => &FACTS,
        "id" => &ID,
        "store" => &STORE,
        "key" => &KEY,
        "value" => &VALUE_,
        "valid_time" => &VALID_TIME,
        "transaction_time" => &TRANSACTION_TIME,
        "schema_version" => &SCHEMA_VERSION,
        "error" => &ERROR,
        "retryable" => &RETRYABLE,
        _ => return None,
    })
}

/// SAFETY: GVL held, inside `protect`.
unsafe fn symbol(ruby: &Ruby, name: &str) -> VALUE {
    if let Some(id) = protocol_key(name) {
        return sym(ruby, id);
    }
    let (ptr, len) = (name.as_ptr().cast::<c_char>(), name.len() as c_long);
    // An app key seen before (every fact of a store has the same ones) is found without
    // making a String to ask with; a new one becomes a dynamic Symbol, as `to_sym` makes.
    let known = rb_sys::rb_check_symbol_cstr(ptr, len, rb_sys::rb_utf8_encoding());
    if known != ruby.qnil().as_raw() {
        return known;
    }
    rb_sys::rb_to_symbol(rb_sys::rb_utf8_str_new(ptr, len))
}

// The result keys not among the daemon's, interned once: every call builds one of these
// Hashes.
static STATUS: LazyId = LazyId::new("status");
static RESPONSE: LazyId = LazyId::new("response");
static ERROR_KIND: LazyId = LazyId::new("error_kind");
static ATTEMPT_COUNT: LazyId = LazyId::new("attempt_count");
static ATTEMPTS: LazyId = LazyId::new("attempts");

fn key(ruby: &Ruby, id: &LazyId) -> magnus::value::Id {
    LazyId::get_inner_with(id, ruby)
}

fn sym(ruby: &Ruby, id: &LazyId) -> VALUE {
    key(ruby, id).into_value_with(ruby).as_raw()
}

/// `result[:status]`: the status name as Ruby's interned (frozen, deduplicated) String.
fn status_string(status: Status) -> VALUE {
    crate::fact::interned(status.as_str()).as_raw()
}

/// `{ ok:, status:, committed:, retryable:, response:, error: }`, plus `error_kind:` when
/// the call failed.
pub fn soft_result(ruby: &Ruby, outcome: &Outcome) -> Result<RHash, Error> {
    let c = &outcome.classified;
    let error = match &outcome.transport {
        // Every transport status names its class; the fallback only keeps a future row
        // that forgets one readable.
        Some(transport) => Some(format!(
            "{}: {transport}",
            c.status
                .row()
                .error_class
                .unwrap_or("ActsAsTbackend::TransportError")
        )),
        None => c.error.clone(),
    };
    let response = if c.answer.is_none() {
        ruby.qnil().as_value()
    } else {
        to_ruby(ruby, c.answer.tree())?
    };
    result_hash(
        ruby,
        c.status,
        Flags {
            ok: c.ok,
            committed: c.committed,
            retryable: c.retryable,
        },
        response,
        error,
        c.kind,
    )
}

pub fn result_hash(
    ruby: &Ruby,
    status: Status,
    flags: Flags,
    response: Value,
    error: Option<String>,
    kind: ErrorKind,
) -> Result<RHash, Error> {
    let error = error.into_value_with(ruby);
    let mut pairs = [
        sym(ruby, &OK),
        flags.ok.into_value_with(ruby).as_raw(),
        sym(ruby, &STATUS),
        status_string(status),
        sym(ruby, &COMMITTED),
        flags.committed.into_value_with(ruby).as_raw(),
        sym(ruby, &RETRYABLE),
        flags.retryable.into_value_with(ruby).as_raw(),
        sym(ruby, &RESPONSE),
        response.as_raw(),
        sym(ruby, &ERROR),
        error.as_raw(),
        0,
        0,
    ];
    // Only a failure has a kind: a success keeps the 0.2 gem's six keys.
    let len = match error_kind(kind) {
        Some(kind) => {
            pairs[12] = sym(ruby, &ERROR_KIND);
            pairs[13] = kind.into_value_with(ruby).as_raw();
            14
        }
        None => 12,
    };
    new_hash(&pairs[..len])
}

/// A Hash of `pairs` (key, value, key, value…) in one call, and one `protect`, instead
/// of one of each per key.
fn new_hash(pairs: &[VALUE]) -> Result<RHash, Error> {
    // SAFETY: the GVL is held; `pairs` holds live values, reachable from this frame
    // while the Hash is made.
    let raw = protect(|| unsafe {
        let hash = rb_sys::rb_hash_new();
        rb_sys::rb_hash_bulk_insert(pairs.len() as c_long, pairs.as_ptr(), hash);
        hash
    })?;
    // SAFETY: `raw` is the Hash just made.
    Ok(RHash::from_value(unsafe { Value::from_raw(raw) }).expect("rb_hash_new makes a Hash"))
}

/// Adds `attempt_count:` and `attempts:` (`{ ok:, status:, committed:, retryable: }` per
/// attempt) to the result of `write_fact_once_safe`.
pub fn add_attempts(
    ruby: &Ruby,
    result: RHash,
    attempts: &[tbackend_client::Attempt],
) -> Result<(), Error> {
    let array = ruby.ary_new_capa(attempts.len());
    for a in attempts {
        array.push(new_hash(&[
            sym(ruby, &OK),
            a.ok.into_value_with(ruby).as_raw(),
            sym(ruby, &STATUS),
            status_string(a.status),
            sym(ruby, &COMMITTED),
            a.committed.into_value_with(ruby).as_raw(),
            sym(ruby, &RETRYABLE),
            a.retryable.into_value_with(ruby).as_raw(),
        ])?)?;
    }
    result.aset(key(ruby, &ATTEMPT_COUNT), attempts.len())?;
    result.aset(key(ruby, &ATTEMPTS), array)?;
    Ok(())
}

/// `result[:error_kind]`: absent (`nil`) on success, else the kind's name.
pub fn error_kind(kind: ErrorKind) -> Option<&'static str> {
    (kind != ErrorKind::None).then(|| kind.as_str())
}
