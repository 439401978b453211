//! Error classes are defined in Ruby (lib/acts_as_tbackend/errors.rb) so Ruby code can
//! document and rescue them. The binding looks each one up once, when it loads, and
//! refuses to load without it: a renamed class must not turn into a silent
//! `ArgumentError` at the first raise.

use std::sync::OnceLock;

use magnus::{prelude::*, value::Opaque, Error, ExceptionClass, RModule, Ruby};
use tbackend_core::Status;

/// The classes the binding raises or names, by their name under `ActsAsTbackend`.
#[derive(Clone, Copy)]
pub enum Class {
    InvalidFact,
    ConfigurationError,
    InternalError,
    ConcurrentUseError,
    ConnectionError,
    TimeoutError,
    CircuitOpenError,
}

const CLASSES: [(Class, &str); 7] = [
    (Class::InvalidFact, "InvalidFact"),
    (Class::ConfigurationError, "ConfigurationError"),
    (Class::InternalError, "InternalError"),
    (Class::ConcurrentUseError, "ConcurrentUseError"),
    (Class::ConnectionError, "ConnectionError"),
    (Class::TimeoutError, "TimeoutError"),
    (Class::CircuitOpenError, "CircuitOpenError"),
];

// Each class is registered with the GC when it is found: removing its constant later
// cannot free what this table holds.
static TABLE: OnceLock<[Opaque<ExceptionClass>; 7]> = OnceLock::new();

/// Looks every class up; called once by the extension's init, which fails with the
/// returned error (a `NameError` naming the class) if one is missing.
pub fn load(ruby: &Ruby, root: RModule) -> Result<(), Error> {
    let mut found = Vec::with_capacity(CLASSES.len());
    for (index, (which, name)) in CLASSES.into_iter().enumerate() {
        debug_assert_eq!(which as usize, index, "CLASSES follows the order of Class");
        let class: ExceptionClass = root.const_get(name).map_err(|e| {
            Error::new(
                ruby.exception_name_error(),
                format!("acts_as_tbackend_native needs ActsAsTbackend::{name} (lib/acts_as_tbackend/errors.rb): {e}"),
            )
        })?;
        magnus::gc::register_mark_object(class);
        found.push(Opaque::from(class));
    }
    // Every class the status table names must be one of them.
    for status in Status::ALL {
        if let Some(name) = status.row().error_class {
            if lookup(name).is_none() {
                return Err(Error::new(
                    ruby.exception_name_error(),
                    format!("status {status} names {name}, which the binding does not load"),
                ));
            }
        }
    }
    let table: [Opaque<ExceptionClass>; 7] = found
        .try_into()
        .unwrap_or_else(|_| unreachable!("one class per name"));
    // A second load of the extension finds the same constants.
    let _ = TABLE.set(table);
    Ok(())
}

/// The class itself.
pub fn class(ruby: &Ruby, which: Class) -> ExceptionClass {
    let table = TABLE
        .get()
        .expect("errors::load runs in the extension's init, before any method is defined");
    ruby.get_inner(table[which as usize])
}

/// The strict-mode class of a transport status, as the status table names it.
pub fn strict_class(ruby: &Ruby, status: Status) -> Option<ExceptionClass> {
    lookup(status.row().error_class?).map(|which| class(ruby, which))
}

fn lookup(full_name: &str) -> Option<Class> {
    let name = full_name.strip_prefix("ActsAsTbackend::")?;
    CLASSES
        .iter()
        .find(|(_, known)| *known == name)
        .map(|(which, _)| *which)
}

/// An `ActsAsTbackend::InvalidFact` (an ArgumentError) with `message`.
pub fn invalid_fact(ruby: &Ruby, message: impl Into<String>) -> Error {
    Error::new(class(ruby, Class::InvalidFact), message.into())
}

/// An `ActsAsTbackend::ConfigurationError` (an ArgumentError) with `message`.
pub fn configuration(ruby: &Ruby, message: impl Into<String>) -> Error {
    Error::new(class(ruby, Class::ConfigurationError), message.into())
}

/// An `ActsAsTbackend::InternalError`: a bug of ours, reported instead of crashing.
pub fn internal(ruby: &Ruby, message: impl Into<String>) -> Error {
    Error::new(class(ruby, Class::InternalError), message.into())
}

/// An `ActsAsTbackend::ConcurrentUseError`: one object used by two callers at once.
pub fn concurrent_use(ruby: &Ruby, message: impl Into<String>) -> Error {
    Error::new(class(ruby, Class::ConcurrentUseError), message.into())
}
