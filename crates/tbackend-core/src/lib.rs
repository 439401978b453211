//! The pure core of `acts_as_tbackend`: the TBackend wire protocol and facts.
//!
//! No Ruby and no I/O live here, so everything is covered by `cargo test`:
//! - [`protocol`]: frames ([`protocol::frame`]), request bodies
//!   ([`protocol::request`]) and the one status table ([`protocol::answer`]);
//! - [`fact`]: fact ids ([`fact::id`]), store names, times and JSON writing.
#![warn(missing_docs)]

pub mod fact;
pub mod protocol;

pub use fact::{derive_id, value_hash, IdFormat, RecordId, VersionToken};
pub use protocol::{classify, Classified, ErrorKind, OpKind, Status};
