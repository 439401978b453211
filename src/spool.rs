//! `ActsAsTbackend::Native.spool_status` and the spool's file names, so that Ruby asks
//! `tbackend_client::spool` instead of repeating its layout.

use std::path::Path;

use magnus::{function, prelude::*, Class, Error, RHash, RModule, Ruby};
use tbackend_client::spool::{self, SegmentStatus};

/// Registers the spool's functions and constants on `ActsAsTbackend::Native`.
pub fn define(native: RModule) -> Result<(), Error> {
    native.const_set("SPOOL_DEAD_LETTER_FILE", spool::DEAD_LETTER_FILE)?;
    native.const_set("DEAD_LETTER_LOCK_SUFFIX", spool::LOCK_SUFFIX)?;
    native.define_singleton_method("spool_status", function!(spool_status, 1))?;
    Ok(())
}

/// `{ segments: [{ file:, bytes:, held:, pending:, delivered:, dead:, oldest_pending_at: }],
/// dead_letters: }` of the spool directory `dir`, oldest segment first;
/// `oldest_pending_at` is in seconds since the epoch (Float) or nil. Raises the
/// `Errno::*` of a directory or file that cannot be read, as Ruby's own `Dir` would.
fn spool_status(ruby: &Ruby, dir: String) -> Result<RHash, Error> {
    let status = spool::status(Path::new(&dir)).map_err(|e| os_error(ruby, &dir, &e))?;
    let segments = ruby.ary_new_capa(status.segments.len());
    for s in &status.segments {
        segments.push(segment(ruby, s)?)?;
    }
    let hash = ruby.hash_new();
    hash.aset(ruby.to_symbol("segments"), segments)?;
    hash.aset(ruby.to_symbol("dead_letters"), status.dead_letters)?;
    Ok(hash)
}

fn os_error(ruby: &Ruby, dir: &str, e: &std::io::Error) -> Error {
    let message = format!("spool status of {dir}: {e}");
    let Some(errno) = e.raw_os_error() else {
        return Error::new(ruby.exception_io_error(), message);
    };
    // SystemCallError.new picks the Errno class of `errno`.
    match ruby
        .exception_system_call_error()
        .new_instance((message, errno))
    {
        Ok(exception) => exception.into(),
        Err(e) => e,
    }
}

fn segment(ruby: &Ruby, s: &SegmentStatus) -> Result<RHash, Error> {
    let hash = ruby.hash_new();
    hash.aset(ruby.to_symbol("file"), s.file.as_str())?;
    hash.aset(ruby.to_symbol("bytes"), s.bytes)?;
    hash.aset(ruby.to_symbol("held"), s.held)?;
    hash.aset(ruby.to_symbol("pending"), s.pending)?;
    hash.aset(ruby.to_symbol("delivered"), s.delivered)?;
    hash.aset(ruby.to_symbol("dead"), s.dead)?;
    hash.aset(
        ruby.to_symbol("oldest_pending_at"),
        s.oldest_pending_at.map(|us| us as f64 / 1e6),
    )?;
    Ok(hash)
}
