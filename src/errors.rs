//! Error classes are defined in Ruby (lib/acts_as_tbackend/errors.rb) so Ruby code can
//! document and rescue them; Rust looks them up by name when it raises one.

use magnus::{prelude::*, Error, ExceptionClass, RModule, Ruby};

fn class(ruby: &Ruby, name: &str) -> ExceptionClass {
    ruby.class_object()
        .const_get::<_, RModule>("ActsAsTbackend")
        .and_then(|m| m.const_get::<_, ExceptionClass>(name))
        .unwrap_or_else(|_| ruby.exception_arg_error())
}

/// An `ActsAsTbackend::InvalidFact` (an ArgumentError) with `message`.
pub fn invalid_fact(ruby: &Ruby, message: impl Into<String>) -> Error {
    Error::new(class(ruby, "InvalidFact"), message.into())
}

/// An `ActsAsTbackend::ConfigurationError` (an ArgumentError) with `message`.
pub fn configuration(ruby: &Ruby, message: impl Into<String>) -> Error {
    Error::new(class(ruby, "ConfigurationError"), message.into())
}

/// An `ActsAsTbackend::InternalError`: a bug of ours, reported instead of crashing.
pub fn internal(ruby: &Ruby, message: impl Into<String>) -> Error {
    Error::new(class(ruby, "InternalError"), message.into())
}

/// An `ActsAsTbackend::ConcurrentUseError`: one object used by two callers at once.
pub fn concurrent_use(ruby: &Ruby, message: impl Into<String>) -> Error {
    Error::new(class(ruby, "ConcurrentUseError"), message.into())
}
