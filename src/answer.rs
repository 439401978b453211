//! Daemon answers and outcomes → the soft-result Hash.

use magnus::{prelude::*, value::LazyId, Error, IntoValue, RArray, RHash, Ruby, Value};
use serde_json::Value as Json;
use tbackend_client::Outcome;
use tbackend_core::protocol::answer::{ErrorKind, Flags, Status};

/// The answer with Symbol keys at every depth, as the 0.2 gem's
/// `JSON.parse(…, symbolize_names: true)` returned it.
pub fn to_ruby(ruby: &Ruby, json: &Json) -> Result<Value, Error> {
    Ok(match json {
        Json::Null => ruby.qnil().as_value(),
        Json::Bool(b) => b.into_value_with(ruby),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_value_with(ruby)
            } else if let Some(u) = n.as_u64() {
                u.into_value_with(ruby)
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_value_with(ruby)
            }
        }
        Json::String(s) => ruby.str_new(s).as_value(),
        Json::Array(items) => {
            let array = ruby.ary_new_capa(items.len());
            for item in items {
                array.push(to_ruby(ruby, item)?)?;
            }
            array.as_value()
        }
        Json::Object(map) => {
            let hash = ruby.hash_new();
            for (key, value) in map {
                hash.aset(symbol(ruby, key), to_ruby(ruby, value)?)?;
            }
            hash.as_value()
        }
    })
}

// The daemon's own field names, interned once: every answer carries several of them.
// Any other key (fact values are app data) becomes a dynamic Symbol the GC can free:
// interning app data as static Ids would grow the symbol table without bound.
static PROTOCOL_KEYS: [(&str, LazyId); 16] = [
    ("ok", LazyId::new("ok")),
    ("committed", LazyId::new("committed")),
    ("durability", LazyId::new("durability")),
    ("idempotent_replay", LazyId::new("idempotent_replay")),
    ("seq_id", LazyId::new("seq_id")),
    ("fact", LazyId::new("fact")),
    ("facts", LazyId::new("facts")),
    ("id", LazyId::new("id")),
    ("store", LazyId::new("store")),
    ("key", LazyId::new("key")),
    ("value", LazyId::new("value")),
    ("valid_time", LazyId::new("valid_time")),
    ("transaction_time", LazyId::new("transaction_time")),
    ("schema_version", LazyId::new("schema_version")),
    ("error", LazyId::new("error")),
    ("retryable", LazyId::new("retryable")),
];

fn symbol(ruby: &Ruby, name: &str) -> Value {
    match PROTOCOL_KEYS.iter().find(|(known, _)| *known == name) {
        Some((_, id)) => LazyId::get_inner_with(id, ruby).into_value_with(ruby),
        None => ruby.to_symbol(name).as_value(),
    }
}

// The result keys, interned once: every call builds one of these Hashes.
static OK: LazyId = LazyId::new("ok");
static STATUS: LazyId = LazyId::new("status");
static COMMITTED: LazyId = LazyId::new("committed");
static RETRYABLE: LazyId = LazyId::new("retryable");
static RESPONSE: LazyId = LazyId::new("response");
static ERROR: LazyId = LazyId::new("error");
static ERROR_KIND: LazyId = LazyId::new("error_kind");

fn key(ruby: &Ruby, id: &LazyId) -> magnus::value::Id {
    LazyId::get_inner_with(id, ruby)
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
    let response = if c.answer.is_null() {
        ruby.qnil().as_value()
    } else {
        to_ruby(ruby, &c.answer)?
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
    let hash = ruby.hash_new();
    hash.aset(key(ruby, &OK), flags.ok)?;
    hash.aset(key(ruby, &STATUS), crate::fact::interned(status.as_str()))?;
    hash.aset(key(ruby, &COMMITTED), flags.committed)?;
    hash.aset(key(ruby, &RETRYABLE), flags.retryable)?;
    hash.aset(key(ruby, &RESPONSE), response)?;
    hash.aset(key(ruby, &ERROR), error)?;
    // Only a failure has a kind: a success keeps the 0.2 gem's six keys.
    if let Some(kind) = error_kind(kind) {
        hash.aset(key(ruby, &ERROR_KIND), kind)?;
    }
    Ok(hash)
}

/// `{ ok:, status:, committed:, retryable: }` per attempt, for `attempts:`.
pub fn attempts_array(ruby: &Ruby, attempts: &[tbackend_client::Attempt]) -> Result<RArray, Error> {
    let array = ruby.ary_new_capa(attempts.len());
    for a in attempts {
        let hash = ruby.hash_new();
        hash.aset(key(ruby, &OK), a.ok)?;
        hash.aset(key(ruby, &STATUS), a.status.as_str())?;
        hash.aset(key(ruby, &COMMITTED), a.committed)?;
        hash.aset(key(ruby, &RETRYABLE), a.retryable)?;
        array.push(hash)?;
    }
    Ok(array)
}

/// `result[:error_kind]`: absent (`nil`) on success, else the kind's name.
pub fn error_kind(kind: ErrorKind) -> Option<&'static str> {
    (kind != ErrorKind::None).then(|| kind.as_str())
}
