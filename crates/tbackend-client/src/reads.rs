//! Batched reads: `latest_for` over many keys of one store in one pipelined call, the
//! read side of [`Client::call_batch`]. A verify of a million rows asks for a million
//! latest facts; one round trip each would take minutes where a pipelined batch takes
//! seconds.

use std::time::Duration;

use tbackend_core::protocol::request::{RequestBuilder, RequestError};
use tbackend_core::OpKind;

use crate::cancel::Cancel;
use crate::client::{Client, Outcome, Request};

/// The `latest_for` request of one key (`as_of` in epoch seconds), with the token when
/// auth is on.
pub fn latest_for_request(
    token: Option<&str>,
    store: &str,
    key: &str,
    as_of: Option<f64>,
) -> Result<Request, RequestError> {
    let mut builder = RequestBuilder::new("latest_for", token);
    builder.str("store", store)?.str("key", key)?;
    if let Some(as_of) = as_of {
        builder.f64("as_of", as_of)?;
    }
    Ok(Request::built(OpKind::Read, builder))
}

impl Client {
    /// The latest fact of every key, one outcome per key in input order (the answer's
    /// `fact` is `null` for a key without facts), pipelined across the lanes like
    /// [`Client::call_batch`], whose timeout and cancel rules apply.
    pub fn latest_for_many<K: AsRef<str>>(
        &self,
        store: &str,
        keys: &[K],
        as_of: Option<f64>,
        timeout: Option<Duration>,
        cancel: &Cancel,
    ) -> Result<Vec<Outcome>, RequestError> {
        let token = self.config().token.clone();
        let reqs = keys
            .iter()
            .map(|key| latest_for_request(token.as_deref(), store, key.as_ref(), as_of))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.call_batch(&reqs, timeout, cancel))
    }
}
