//! The Ruby face of the native core. This crate is the only place that touches Ruby:
//! everything it calls lives in `tbackend-core`, which `cargo test` covers without one.

mod answer;
mod client;
mod errors;
mod fact;
mod json;
mod methods;
mod nogvl;
mod per_process;
mod record;
mod spool;
mod writer;

use magnus::{function, method, prelude::*, Error, RHash, Ruby};
use tbackend_core::Status;

use client::{RbClient, RbTailCursor};
use writer::RbWriter;

/// `ActsAsTbackend::STATUSES`: the status table, frozen, status name =>
/// `{ ok:, committed:, retryable:, transport:, retry_safe:, error_kind: }`.
fn statuses(ruby: &Ruby) -> Result<RHash, Error> {
    let table = ruby.hash_new();
    for status in Status::ALL {
        let row = status.row();
        let entry = ruby.hash_new();
        entry.aset(ruby.to_symbol("ok"), row.flags.ok)?;
        entry.aset(ruby.to_symbol("committed"), row.flags.committed)?;
        entry.aset(ruby.to_symbol("retryable"), row.flags.retryable)?;
        entry.aset(ruby.to_symbol("transport"), row.transport)?;
        entry.aset(ruby.to_symbol("retry_safe"), row.retry_safe)?;
        entry.aset(ruby.to_symbol("error_kind"), answer::error_kind(row.kind))?;
        entry.freeze();
        table.aset(status.as_str(), entry)?;
    }
    table.freeze();
    Ok(table)
}

/// `ActsAsTbackend::Native::STRICT_ERRORS`: the class strict mode raises for each
/// transport status, frozen.
fn strict_errors(ruby: &Ruby) -> Result<RHash, Error> {
    let table = ruby.hash_new();
    for status in Status::ALL {
        if let Some(class) = errors::strict_class(ruby, status) {
            table.aset(status.as_str(), class)?;
        }
    }
    table.freeze();
    Ok(table)
}

#[magnus::init(name = "acts_as_tbackend_native")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let root = ruby.define_module("ActsAsTbackend")?;
    errors::load(ruby, root)?;
    root.const_set("STATUSES", statuses(ruby)?)?;
    let native = root.define_module("Native")?;
    native.const_set("STRICT_ERRORS", strict_errors(ruby)?)?;
    native.const_set(
        "DEFAULT_MAX_REQUEST_BYTES",
        tbackend_core::protocol::frame::DEFAULT_MAX_REQUEST,
    )?;
    native.const_set(
        "DEFAULT_MAX_ANSWER_BYTES",
        tbackend_core::protocol::frame::DEFAULT_MAX_ANSWER,
    )?;
    native.define_singleton_method("after_fork", function!(per_process::after_fork, 0))?;
    native.define_singleton_method("derive_id", function!(fact::derive_id, 5))?;
    native.define_singleton_method("build_fact", function!(fact::build_fact, 9))?;
    native.define_singleton_method(
        "validate_store_name",
        function!(fact::validate_store_name, 1),
    )?;
    native.define_singleton_method("record_fact", function!(record::record_fact, 13))?;
    native.define_singleton_method("sanitize", function!(record::sanitize, 4))?;
    native.define_singleton_method("default_key", function!(record::default_key, 2))?;
    native.define_singleton_method("content_digest", function!(record::content_digest, 1))?;
    native.define_singleton_method("encode_json", function!(json::encode_json, 2))?;
    native.define_singleton_method("value_hash", function!(json::value_hash, 1))?;
    spool::define(native)?;

    let client = native.define_class("Client", ruby.class_object())?;
    client.define_singleton_method("new", function!(RbClient::new, 1))?;
    client.define_method("write_fact_once", method!(RbClient::write_fact_once, 3))?;
    client.define_method(
        "write_fact_once_safe",
        method!(RbClient::write_fact_once_safe, 5),
    )?;
    client.define_method("write_facts_once", method!(RbClient::write_facts_once, 3))?;
    client.define_method("latest_for", method!(RbClient::latest_for, 4))?;
    client.define_method("latest_for_many", method!(RbClient::latest_for_many, 4))?;
    client.define_method("facts_for", method!(RbClient::facts_for, 5))?;
    client.define_method("facts_by_seq", method!(RbClient::facts_by_seq, 4))?;
    client.define_method("ping", method!(RbClient::ping, 1))?;
    client.define_method(
        "diagnostics_summary",
        method!(RbClient::diagnostics_summary, 1),
    )?;
    client.define_method("stats", method!(RbClient::stats, 0))?;
    client.define_method("shutdown", method!(RbClient::rb_shutdown, 0))?;
    client.define_method("tail_poll", method!(RbClient::tail_poll, 3))?;

    let cursor = native.define_class("TailCursor", ruby.class_object())?;
    cursor.define_singleton_method("new", function!(RbTailCursor::new, 2))?;
    cursor.define_method("after_seq", method!(RbTailCursor::after_seq, 0))?;
    cursor.define_method("held", method!(RbTailCursor::held, 0))?;
    cursor.define_method("skipped", method!(RbTailCursor::skipped, 0))?;

    let writer = native.define_class("Writer", ruby.class_object())?;
    writer.define_singleton_method("new", function!(RbWriter::new, 2))?;
    writer.define_method("enqueue", method!(RbWriter::enqueue, 3))?;
    writer.define_method("flush", method!(RbWriter::flush, 1))?;
    writer.define_method("shutdown", method!(RbWriter::shutdown, 1))?;
    writer.define_method("count_dropped", method!(RbWriter::count_dropped, 0))?;
    writer.define_method("stats", method!(RbWriter::stats, 0))?;
    writer.define_method("spool_segments", method!(RbWriter::spool_segments, 0))?;
    writer.define_method("wait_events", method!(RbWriter::wait_events, 0))?;
    writer.define_method("take_events", method!(RbWriter::take_events, 0))?;
    writer.define_method("release_events", method!(RbWriter::release_events, 0))?;
    writer.define_method("write_stderr", method!(RbWriter::write_stderr, 1))?;
    Ok(())
}
