//! Daemon answers and outcomes → the contract's soft result Hash.

use magnus::{prelude::*, Error, IntoValue, RArray, RHash, Ruby, Value};
use serde_json::Value as Json;
use tbackend_client::Outcome;
use tbackend_core::protocol::answer::{Flags, Status};

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
                hash.aset(ruby.to_symbol(key), to_ruby(ruby, value)?)?;
            }
            hash.as_value()
        }
    })
}

/// The Ruby error class named in a transport failure's text (`"<ErrorClass>: <message>"`)
/// and raised for it in strict mode.
fn transport_class(status: Status) -> &'static str {
    match status {
        Status::Unavailable => "ActsAsTbackend::ConnectionError",
        Status::CircuitOpen => "ActsAsTbackend::CircuitOpenError",
        _ => "ActsAsTbackend::TimeoutError",
    }
}

/// `{ ok:, status:, committed:, retryable:, response:, error: }`.
pub fn soft_result(ruby: &Ruby, outcome: &Outcome) -> Result<RHash, Error> {
    let c = &outcome.classified;
    let error = match &outcome.transport {
        Some(transport) => Some(format!("{}: {transport}", transport_class(c.status))),
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
    )
}

pub fn result_hash(
    ruby: &Ruby,
    status: Status,
    flags: Flags,
    response: Value,
    error: Option<String>,
) -> Result<RHash, Error> {
    let hash = ruby.hash_new();
    hash.aset(ruby.to_symbol("ok"), flags.ok)?;
    hash.aset(ruby.to_symbol("status"), status.as_str())?;
    hash.aset(ruby.to_symbol("committed"), flags.committed)?;
    hash.aset(ruby.to_symbol("retryable"), flags.retryable)?;
    hash.aset(ruby.to_symbol("response"), response)?;
    hash.aset(ruby.to_symbol("error"), error)?;
    Ok(hash)
}

/// `{ ok:, status:, committed:, retryable: }` per attempt, for `attempts:`.
pub fn attempts_array(ruby: &Ruby, attempts: &[tbackend_client::Attempt]) -> Result<RArray, Error> {
    let array = ruby.ary_new_capa(attempts.len());
    for a in attempts {
        let hash = ruby.hash_new();
        hash.aset(ruby.to_symbol("ok"), a.ok)?;
        hash.aset(ruby.to_symbol("status"), a.status.as_str())?;
        hash.aset(ruby.to_symbol("committed"), a.committed)?;
        hash.aset(ruby.to_symbol("retryable"), a.retryable)?;
        array.push(hash)?;
    }
    Ok(array)
}
