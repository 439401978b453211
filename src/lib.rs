//! The Ruby face of the native core. This crate is the only place that touches Ruby:
//! everything it calls lives in `tbackend-core`, which `cargo test` covers without one.

mod errors;
mod fact;
mod json;

use magnus::{function, prelude::*, Error, Ruby};

#[magnus::init(name = "acts_as_tbackend_native")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let root = ruby.define_module("ActsAsTbackend")?;
    let native = root.define_module("Native")?;
    native.const_set(
        "DEFAULT_MAX_REQUEST_BYTES",
        tbackend_core::protocol::frame::DEFAULT_MAX_REQUEST,
    )?;
    native.const_set(
        "DEFAULT_MAX_ANSWER_BYTES",
        tbackend_core::protocol::frame::DEFAULT_MAX_ANSWER,
    )?;
    native.define_singleton_method("derive_id", function!(fact::derive_id, 5))?;
    native.define_singleton_method("build_fact", function!(fact::build_fact, 9))?;
    native.define_singleton_method(
        "validate_store_name",
        function!(fact::validate_store_name, 1),
    )?;
    native.define_singleton_method("epoch_seconds", function!(fact::epoch_seconds_for, 1))?;
    native.define_singleton_method("encode_json", function!(json::encode_json, 2))?;
    Ok(())
}
