//! A record's fact in one native call (`Mirror.build_fact`): its attributes sanitized,
//! its id derived and its fact built, calling Ruby only for what the record itself must
//! answer (`id`, `updated_at`, `valid_time`). Done in Ruby, that was about 60 method
//! calls and as many objects per save (issue 13). `Sanitizer.call`, `Fact.derive_id`
//! and `Fact.build` run the same code.

use magnus::rb_sys::{AsRawValue, FromRawValue};
use magnus::{
    prelude::*, value::ReprValue, Error, RArray, RHash, RModule, RString, Ruby, Symbol, Value,
};
use tbackend_core::fact::id;

use crate::fact::{check_store, id_format, key_text, record_key, to_s, version_token, FactParts};
use crate::json;
use crate::methods;

/// `Sanitizer.call`: a new Hash of `attributes.to_h` with its keys as Strings (`to_s`),
/// only the `only` names if given, else without the `except` names, and without the
/// denylist's (`true`: `Sanitizer::DEFAULT_DENYLIST`). A list is `Array(list)`, its
/// names compared as their `to_s`.
pub fn sanitize(
    ruby: &Ruby,
    attributes: Value,
    only: Value,
    except: Value,
    denylist: Value,
) -> Result<RHash, Error> {
    let source = match RHash::from_value(attributes) {
        Some(hash) => hash,
        None => {
            let converted: Value = attributes.funcall("to_h", ())?;
            RHash::from_value(converted).ok_or_else(|| {
                Error::new(
                    ruby.exception_type_error(),
                    "attributes.to_h did not return a Hash",
                )
            })?
        }
    };
    let keep = if only.to_bool() {
        Some(names(ruby, only)?)
    } else {
        None
    };
    let drop = if keep.is_none() && except.to_bool() {
        Some(names(ruby, except)?)
    } else {
        None
    };
    let denied = denylist_names(ruby, denylist)?;
    let out = ruby.hash_new();
    json::try_foreach(source, |key, value| {
        let name = string_key(key)?;
        let wanted = match (keep, drop) {
            (Some(keep), _) => contains(keep, name)?,
            (None, Some(drop)) => !contains(drop, name)?,
            (None, None) => true,
        };
        if wanted && !denied.map_or(Ok(false), |denied| contains(denied, name))? {
            out.aset(name, value)?;
        }
        Ok::<(), Error>(())
    })?;
    Ok(out)
}

/// A key as `transform_keys(&:to_s)` makes it: a String is itself, a Symbol its (frozen)
/// name, anything else its `to_s`.
fn string_key(key: Value) -> Result<Value, Error> {
    if is_plain_string(key) {
        Ok(key)
    } else if let Some(sym) = Symbol::from_value(key) {
        // SAFETY: rb_sym2str returns the Symbol's frozen name, a live String.
        Ok(unsafe { Value::from_raw(rb_sys::rb_sym2str(sym.as_raw())) })
    } else {
        key.funcall(*methods::TO_S, ())
    }
}

fn is_plain_string(value: Value) -> bool {
    RString::from_value(value).is_some()
        // SAFETY: the GVL is held; rb_cString is set before any extension loads.
        && unsafe { rb_sys::rb_obj_class(value.as_raw()) == rb_sys::rb_cString }
}

/// `Array(list)`, its elements Strings or Symbols (anything else is replaced by its
/// `to_s`, in a new Array).
fn names(ruby: &Ruby, list: Value) -> Result<RArray, Error> {
    let array = match RArray::from_value(list) {
        Some(array) => array,
        None => ruby.module_kernel().funcall("Array", (list,))?,
    };
    let mut plain = true;
    for index in 0..array.len() {
        let item: Value = array.entry(index as isize)?;
        if RString::from_value(item).is_none() && Symbol::from_value(item).is_none() {
            plain = false;
            break;
        }
    }
    if plain {
        return Ok(array);
    }
    let converted = ruby.ary_new_capa(array.len());
    for index in 0..array.len() {
        let item: Value = array.entry(index as isize)?;
        if Symbol::from_value(item).is_some() || RString::from_value(item).is_some() {
            converted.push(item)?;
        } else {
            converted.push(item.funcall::<_, _, Value>("to_s", ())?)?;
        }
    }
    Ok(converted)
}

fn denylist_names(ruby: &Ruby, denylist: Value) -> Result<Option<RArray>, Error> {
    if !denylist.to_bool() {
        return Ok(None);
    }
    if denylist.as_raw() == ruby.qtrue().as_raw() {
        let default: RArray = ruby
            .class_object()
            .const_get::<_, RModule>("ActsAsTbackend")?
            .const_get::<_, RModule>("Sanitizer")?
            .const_get("DEFAULT_DENYLIST")?;
        return Ok(Some(default));
    }
    names(ruby, denylist).map(Some)
}

/// `names.include?(name)`, the names being `to_s` of the list's elements.
fn contains(names: RArray, name: Value) -> Result<bool, Error> {
    for index in 0..names.len() {
        let item: Value = names.entry(index as isize)?;
        let item = match Symbol::from_value(item) {
            // SAFETY: as in string_key.
            Some(sym) => unsafe { Value::from_raw(rb_sys::rb_sym2str(sym.as_raw())) },
            None => item,
        };
        let equal = if RString::from_value(item).is_some() && RString::from_value(name).is_some() {
            // SAFETY: both are Strings: String#== without a method call.
            unsafe { Value::from_raw(rb_sys::rb_str_equal(item.as_raw(), name.as_raw())) }.to_bool()
        } else {
            item.funcall::<_, _, Value>("==", (name,))?.to_bool()
        };
        if equal {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `Mirror.default_key`: "store:id".
pub fn default_key(store: Value, record_id: Value) -> Result<String, Error> {
    Ok(key_of(&to_s(store)?, &to_s(record_id)?))
}

fn key_of(store: &str, record_id: &str) -> String {
    format!("{store}:{record_id}")
}

/// `Mirror.content_digest`: see `json::content_digest`.
pub fn content_digest(ruby: &Ruby, attributes: Value) -> Result<String, Error> {
    json::content_digest(ruby, attributes)
}

/// `Mirror.build_fact` over `record.attributes`, in the order of its Ruby original:
/// sanitize, `record.id`, the source version (`updated_at`, or the content digest of the
/// sanitized attributes when the record has none or it is nil), the id, the key
/// (`key`, else "store:id"), the value (`tombstone` is `Mirror::TOMBSTONE` or nil: a
/// copy of it, else the sanitized attributes), `valid_time` (else `record.valid_time`
/// when the record has one), causation "store:id:event_type", and the fact.
///
/// `shape` is `Mirror::RecordShape.of(record)`: how to tell whether the record responds
/// to `updated_at` and `valid_time` from its attributes, or nil to ask it.
#[allow(clippy::too_many_arguments)]
pub fn record_fact(
    ruby: &Ruby,
    record: Value,
    attributes: Value,
    shape: Value,
    store: Value,
    event_type: Value,
    only: Value,
    except: Value,
    denylist: Value,
    tombstone: Value,
    valid_time: Value,
    key: Value,
    format: Value,
    producer: Value,
) -> Result<RHash, Error> {
    let sanitized = sanitize(ruby, attributes, only, except, denylist)?;
    let record_id: Value = record.funcall(*methods::ID, ())?;
    let shape = RArray::from_value(shape);
    let updated_at = if responds(ruby, record, attributes, shape, 0, "updated_at")? {
        record.funcall(*methods::UPDATED_AT, ())?
    } else {
        ruby.qnil().as_value()
    };
    let version = if updated_at.is_nil() {
        id::VersionToken::Text(json::content_digest(ruby, sanitized.as_value())?)
    } else {
        version_token(ruby, updated_at)?
    };
    let format = id_format(ruby, &to_s(format)?)?;
    let record_key = record_key(format, record_id)?;
    let store = to_s(store)?;
    let event_type = to_s(event_type)?;
    let fact_id = id::derive_id(format, &store, &record_key, &event_type, &version);
    let record_text = match &record_key {
        id::RecordId::One(text) => text.clone(),
        id::RecordId::Composite(_) => to_s(record_id)?,
    };
    let key = if key.to_bool() {
        key_text(key)?
    } else {
        key_of(&store, &record_text)
    };
    let value = match RHash::from_value(tombstone) {
        Some(tombstone) => tombstone.funcall(*methods::DUP, ())?,
        None => sanitized.as_value(),
    };
    let valid_time = if valid_time.to_bool() {
        valid_time
    } else if responds(ruby, record, attributes, shape, 1, "valid_time")? {
        record.funcall(*methods::VALID_TIME, ())?
    } else {
        ruby.qnil().as_value()
    };
    let causation = format!("{store}:{record_text}:{event_type}");
    check_store(ruby, &store)?;
    FactParts {
        id: ruby.str_new(&fact_id),
        store,
        key,
        value,
        valid_time,
        transaction_time: ruby.qnil().as_value(),
        causation: Some(causation),
        schema_version: 1,
        producer,
    }
    .build(ruby)
}

/// `record.respond_to?(name)`, answered from the record's attributes when its shape
/// says how (`true`, `false`, or the attribute names of which one present means yes),
/// else by asking the record.
fn responds(
    ruby: &Ruby,
    record: Value,
    attributes: Value,
    shape: Option<RArray>,
    index: isize,
    name: &str,
) -> Result<bool, Error> {
    let plan: Value = match shape {
        Some(shape) => shape.entry(index)?,
        None => ruby.qnil().as_value(),
    };
    if plan.as_raw() == ruby.qtrue().as_raw() {
        return Ok(true);
    }
    if plan.as_raw() == ruby.qfalse().as_raw() {
        return Ok(false);
    }
    if let (Some(names), Some(attributes)) =
        (RArray::from_value(plan), RHash::from_value(attributes))
    {
        for position in 0..names.len() {
            let attribute: Value = names.entry(position as isize)?;
            if attributes.get(attribute).is_some() {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    Ok(record
        .funcall::<_, _, Value>(*methods::RESPOND_TO, (ruby.to_symbol(name),))?
        .to_bool())
}
