//! Facts: their ids, store names, times and JSON, all pure.

pub mod id;
pub mod json;
pub mod store;
pub mod time;

pub use id::{derive_id, IdFormat, RecordId, VersionToken};
pub use json::{value_hash, JsonError};
pub use store::{validate_store_name, StoreNameError, MAX_STORE_NAME_LEN};
pub use time::{check_finite, parse_iso8601, TimeError};
