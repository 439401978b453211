//! `ActsAsTbackend::Native.spool_status` and the spool's file names, so that Ruby asks
//! `tbackend_client::spool` instead of repeating its layout.

use std::path::Path;

use magnus::{function, prelude::*, Error, RHash, RModule, Ruby};
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
/// `oldest_pending_at` is in seconds since the epoch (Float) or nil. Raises IOError when
/// the directory cannot be read.
fn spool_status(ruby: &Ruby, dir: String) -> Result<RHash, Error> {
    let status = spool::status(Path::new(&dir)).map_err(|e| {
        Error::new(
            ruby.exception_io_error(),
            format!("spool status of {dir}: {e}"),
        )
    })?;
    let segments = ruby.ary_new_capa(status.segments.len());
    for s in &status.segments {
        segments.push(segment(ruby, s)?)?;
    }
    let hash = ruby.hash_new();
    hash.aset(ruby.to_symbol("segments"), segments)?;
    hash.aset(ruby.to_symbol("dead_letters"), status.dead_letters)?;
    Ok(hash)
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
