//! `ActsAsTbackend::Native::Client`: the Ruby face of `tbackend_client::Client`.
//!
//! Requests are built here from Ruby values (with the GVL), then the call runs with the
//! GVL released and an unblocking function that cancels it, so Thread#kill, Timeout and
//! Ctrl-C interrupt a waiting call at once and leave no answer behind for anyone else.
//!
//! Fork safety: the native client is held per process (see `per_process`); a forked
//! child forgets the inherited one and builds a fresh one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use magnus::{error::ErrorType, value::ReprValue, Error, RArray, RHash, Ruby, TryConvert, Value};
use tbackend_client::{tail::Cursor, Client, Config, Request, RetryPolicy};
use tbackend_core::protocol::answer::{OpKind, Status};
use tbackend_core::protocol::request::RequestBuilder;
use tbackend_core::protocol::Json;

use crate::answer::{add_attempts, result_hash, soft_result};
use crate::errors::{concurrent_use, invalid_fact};
use crate::fact::{check_store, epoch_seconds, fact_store, to_s};
use crate::json::Encoder;
use crate::nogvl::{run_resumable, run_until};
use crate::per_process::PerProcess;

/// A batch hands its requests to the wire in groups of this many: the first group is
/// written (and its answers coming back) while the next is encoded.
const BATCH_GROUP: usize = 64;

#[magnus::wrap(class = "ActsAsTbackend::Native::Client", free_immediately, size)]
pub struct RbClient {
    config: Config,
    client: Arc<PerProcess<Client>>,
}

pub(crate) fn opt<T: TryConvert>(options: RHash, key: &str) -> Result<Option<T>, Error> {
    let ruby = Ruby::get_with(options);
    match options.get(ruby.to_symbol(key)) {
        Some(v) if !v.is_nil() => Ok(Some(T::try_convert(v)?)),
        _ => Ok(None),
    }
}

pub(crate) fn seconds(value: Option<f64>) -> Option<Duration> {
    value
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
}

/// The client settings of an options Hash, as given (`Native::Client.new`; the async
/// writer adjusts them in `writer::flusher_client_config`).
pub(crate) fn config_from_options(options: RHash) -> Result<Config, Error> {
    let mut config = Config::default();
    if let Some(host) = opt::<String>(options, "host")? {
        config.host = host;
    }
    if let Some(port) = opt::<u16>(options, "port")? {
        config.port = port;
    }
    config.token = opt::<String>(options, "token")?.filter(|t| !t.is_empty());
    if let Some(d) = seconds(opt(options, "connect_timeout")?) {
        config.connect_timeout = d;
    }
    if let Some(d) = seconds(opt(options, "request_timeout")?) {
        config.request_timeout = d;
    }
    if let Some(n) = opt::<usize>(options, "lanes")? {
        config.lanes = n.max(1);
    }
    if let Some(n) = opt::<usize>(options, "max_in_flight")? {
        config.max_depth = n.max(1);
    }
    if let Some(n) = opt::<u32>(options, "breaker_threshold")? {
        config.breaker_threshold = n;
    }
    if let Some(d) = seconds(opt(options, "breaker_cooldown")?) {
        config.breaker_cooldown = d;
    }
    if let Some(d) = seconds(opt(options, "idle_reconnect")?) {
        config.idle_reconnect = d;
    }
    Ok(config)
}

impl RbClient {
    pub fn new(options: RHash) -> Result<Self, Error> {
        let config = config_from_options(options)?;
        let client = PerProcess::new(Client::new(config.clone()));
        Ok(RbClient { config, client })
    }

    /// The client for this process: rebuilt after a fork, `None` after shutdown.
    fn current(&self) -> Option<Client> {
        self.client
            .current(|| Some(Client::new(self.config.clone())))
    }

    pub fn shutdown(&self) {
        if let Some(client) = self.client.take() {
            client.shutdown();
        }
    }

    fn endpoint(&self) -> String {
        self.config.endpoint()
    }

    fn builder(&self, op: &str) -> RequestBuilder {
        RequestBuilder::new(op, self.config.token.as_deref())
    }

    fn shut_down_result(&self, ruby: &Ruby) -> Result<RHash, Error> {
        let row = Status::Unavailable.row();
        let error = format!(
            "{}: client is shut down ({})",
            row.error_class.unwrap_or_default(),
            self.endpoint()
        );
        result_hash(
            ruby,
            Status::Unavailable,
            row.flags,
            ruby.qnil().as_value(),
            Some(error),
            row.kind,
        )
    }

    fn one(&self, ruby: &Ruby, request: Request, timeout: Option<f64>) -> Result<RHash, Error> {
        let Some(client) = self.current() else {
            return self.shut_down_result(ruby);
        };
        // An open breaker answers in microseconds: not worth giving up the GVL for.
        if let Some(outcome) = client.refused_outright() {
            return soft_result(ruby, &outcome);
        }
        let timeout = seconds(timeout);
        // An interrupt that raised nothing does not end the call (see `run_until`); one
        // that raised drops the paused call (its answer is discarded when it comes).
        let outcome = run_resumable(ruby, "client", |cancel| {
            client.start(&request, timeout, cancel).into()
        })?;
        soft_result(ruby, &outcome)
    }

    fn read(
        &self,
        ruby: &Ruby,
        builder: RequestBuilder,
        timeout: Option<f64>,
    ) -> Result<RHash, Error> {
        self.one(ruby, Request::built(OpKind::Read, builder), timeout)
    }

    fn write_request(
        &self,
        ruby: &Ruby,
        fact: Value,
        durability: Option<String>,
    ) -> Result<Request, Error> {
        fact_store(ruby, fact)?;
        let mut builder = self.builder("write_fact_once");
        if let Some(d) = durability {
            builder
                .str("durability", &d)
                .map_err(|e| refused(ruby, e))?;
        }
        // The fact is encoded in place, after the envelope: no buffer of its own.
        let body = builder.value_slot("fact").map_err(|e| refused(ruby, e))?;
        let mut encoder =
            Encoder::appending(ruby, self.config.max_request_bytes, std::mem::take(body));
        let encoded = encoder.encode(fact);
        *body = encoder.out;
        encoded.map_err(|e| e.into_ruby(ruby, "fact"))?;
        Ok(Request::built(OpKind::Write, builder))
    }

    pub fn write_fact_once(
        ruby: &Ruby,
        rb_self: &Self,
        fact: Value,
        durability: Option<String>,
        timeout: Option<f64>,
    ) -> Result<RHash, Error> {
        let request = rb_self.write_request(ruby, fact, durability)?;
        rb_self.one(ruby, request, timeout)
    }

    pub fn write_fact_once_safe(
        ruby: &Ruby,
        rb_self: &Self,
        fact: Value,
        durability: Option<String>,
        timeout: Option<f64>,
        attempts: u32,
        backoff: f64,
    ) -> Result<RHash, Error> {
        let request = rb_self.write_request(ruby, fact, durability)?;
        let attempts = attempts.max(1);
        let per_attempt = seconds(timeout).unwrap_or(rb_self.config.request_timeout);
        let base = seconds(Some(backoff)).unwrap_or(Duration::from_millis(50));
        let policy = RetryPolicy {
            attempts,
            base_backoff: base,
            max_backoff: base.saturating_mul(16).min(Duration::from_secs(5)),
            // Every attempt gets its full budget, plus room for the backoffs between them.
            deadline: Some(
                per_attempt.saturating_mul(attempts)
                    + base.saturating_mul(16).saturating_mul(attempts),
            ),
            attempt_timeout: Some(per_attempt),
        };
        let Some(client) = rb_self.current() else {
            return rb_self.shut_down_result(ruby);
        };
        // As in `one`: an interrupt that raised nothing does not end the retries.
        let (outcome, tried) = run_resumable(ruby, "client", |cancel| {
            client.start_with_retries(&request, &policy, cancel).into()
        })?;
        let result = soft_result(ruby, &outcome)?;
        add_attempts(ruby, result, &tried)?;
        Ok(result)
    }

    /// One result per fact, in order. An invalid fact gets its own soft error; the
    /// others are still sent, pipelined.
    pub fn write_facts_once(
        ruby: &Ruby,
        rb_self: &Self,
        facts: RArray,
        durability: Option<String>,
        timeout: Option<f64>,
    ) -> Result<RArray, Error> {
        rb_self.pipelined(ruby, facts, timeout, |fact| {
            rb_self.write_request(ruby, fact, durability.clone())
        })
    }

    /// The latest fact of every key of one store, one soft result per key in order
    /// (`response: {fact: nil}` for a key without facts), pipelined like
    /// `write_facts_once`.
    pub fn latest_for_many(
        ruby: &Ruby,
        rb_self: &Self,
        store: Value,
        keys: RArray,
        as_of: Value,
        timeout: Option<f64>,
    ) -> Result<RArray, Error> {
        let store = to_s(store)?;
        check_store(ruby, &store)?;
        let as_of = if as_of.is_nil() {
            None
        } else {
            Some(epoch_seconds(ruby, "as_of", as_of)?)
        };
        let token = rb_self.config.token.clone();
        rb_self.pipelined(ruby, keys, timeout, |key| {
            tbackend_client::reads::latest_for_request(token.as_deref(), &store, &to_s(key)?, as_of)
                .map_err(|e| refused(ruby, e))
        })
    }

    /// One request per item, built by `build` with the GVL held, sent pipelined across
    /// the lanes; one soft result per item, in order. An item `build` refuses gets its
    /// own soft error; the others are still sent.
    fn pipelined(
        &self,
        ruby: &Ruby,
        items: RArray,
        timeout: Option<f64>,
        mut build: impl FnMut(Value) -> Result<Request, Error>,
    ) -> Result<RArray, Error> {
        // Results go in input order as soon as they are known: a refused item's (or, on a
        // shut-down client, every item's) at once, a sent one's as a nil placeholder that
        // its outcome replaces when it comes. Kept in a Ruby Array, so the GC sees them.
        let results = ruby.ary_new_capa(items.len());
        let client = self.current();
        let mut batch = client.as_ref().map(|c| c.batch(seconds(timeout)));
        let mut awaiting: VecDeque<usize> = VecDeque::new();
        let mut group = Vec::with_capacity(BATCH_GROUP);
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            // Encoding needs the GVL; the group before is on the wire meanwhile.
            for item in items.by_ref().take(BATCH_GROUP) {
                let result = match build(item) {
                    Ok(request) if batch.is_some() => {
                        awaiting.push_back(results.len());
                        group.push(request);
                        ruby.qnil().as_value()
                    }
                    Ok(_) => self.shut_down_result(ruby)?.as_value(),
                    Err(e) => invalid_result(ruby, e)?.as_value(),
                };
                results.push(result)?;
            }
            let Some(batch) = &mut batch else {
                continue;
            };
            let last = items.peek().is_none();
            // An interrupt that raised nothing (see `one`) only pauses the batch: it goes
            // on from the first request not yet taken, or the first answer not yet in.
            let mut taken = 0;
            run_until(ruby, "client", |cancel| {
                taken += batch.submit(&group[taken..], cancel);
                let done = taken == group.len()
                    && if last {
                        batch.finish(cancel)
                    } else {
                        batch.collect_ready(cancel)
                    };
                done.then_some(())
            })?;
            group.clear();
            // Answers already in become Ruby results while the rest are on their way.
            for outcome in batch.take_ready() {
                let index = awaiting.pop_front().expect("one outcome per request sent");
                results.store(index as isize, soft_result(ruby, &outcome)?)?;
            }
        }
        Ok(results)
    }

    fn read_builder(&self, ruby: &Ruby, op: &str, store: Value) -> Result<RequestBuilder, Error> {
        let store = to_s(store)?;
        check_store(ruby, &store)?;
        let mut builder = self.builder(op);
        builder.str("store", &store).map_err(|e| refused(ruby, e))?;
        Ok(builder)
    }

    fn time_param(
        ruby: &Ruby,
        builder: &mut RequestBuilder,
        key: &str,
        value: Value,
    ) -> Result<(), Error> {
        if !value.is_nil() {
            let seconds = epoch_seconds(ruby, key, value)?;
            builder.f64(key, seconds).map_err(|e| refused(ruby, e))?;
        }
        Ok(())
    }

    pub fn latest_for(
        ruby: &Ruby,
        rb_self: &Self,
        store: Value,
        key: Value,
        as_of: Value,
        timeout: Option<f64>,
    ) -> Result<RHash, Error> {
        let mut b = rb_self.read_builder(ruby, "latest_for", store)?;
        b.str("key", &to_s(key)?).map_err(|e| refused(ruby, e))?;
        Self::time_param(ruby, &mut b, "as_of", as_of)?;
        rb_self.read(ruby, b, timeout)
    }

    pub fn facts_for(
        ruby: &Ruby,
        rb_self: &Self,
        store: Value,
        key: Value,
        since: Value,
        as_of: Value,
        timeout: Option<f64>,
    ) -> Result<RHash, Error> {
        let mut b = rb_self.read_builder(ruby, "facts_for", store)?;
        if !key.is_nil() {
            b.str("key", &to_s(key)?).map_err(|e| refused(ruby, e))?;
        }
        Self::time_param(ruby, &mut b, "since", since)?;
        Self::time_param(ruby, &mut b, "as_of", as_of)?;
        rb_self.read(ruby, b, timeout)
    }

    pub fn facts_by_seq(
        ruby: &Ruby,
        rb_self: &Self,
        store: Value,
        after_seq: Option<u64>,
        until_seq: Option<u64>,
        timeout: Option<f64>,
    ) -> Result<RHash, Error> {
        let mut b = rb_self.read_builder(ruby, "facts_by_seq", store)?;
        b.u64("after_seq", after_seq.unwrap_or(0))
            .map_err(|e| refused(ruby, e))?;
        if let Some(until) = until_seq {
            b.u64("until_seq", until).map_err(|e| refused(ruby, e))?;
        }
        rb_self.read(ruby, b, timeout)
    }

    pub fn ping(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<RHash, Error> {
        let builder = rb_self.builder("ping");
        rb_self.one(ruby, Request::built(OpKind::Ping, builder), timeout)
    }

    pub fn diagnostics_summary(
        ruby: &Ruby,
        rb_self: &Self,
        timeout: Option<f64>,
    ) -> Result<RHash, Error> {
        let builder = rb_self.builder("diagnostics_summary");
        rb_self.one(ruby, Request::built(OpKind::Read, builder), timeout)
    }

    pub fn stats(ruby: &Ruby, rb_self: &Self) -> Result<RHash, Error> {
        let hash = ruby.hash_new();
        let Some(client) = rb_self.current() else {
            hash.aset(ruby.to_symbol("shut_down"), true)?;
            return Ok(hash);
        };
        let stats = client.stats();
        let lanes = ruby.ary_new_capa(stats.lanes.len());
        for lane in &stats.lanes {
            let h = ruby.hash_new();
            h.aset(ruby.to_symbol("connected"), lane.connected)?;
            h.aset(ruby.to_symbol("in_flight"), lane.in_flight)?;
            h.aset(ruby.to_symbol("reconnects"), lane.reconnects)?;
            h.aset(ruby.to_symbol("generation"), lane.generation)?;
            h.aset(ruby.to_symbol("last_error"), lane.last_error.clone())?;
            lanes.push(h)?;
        }
        let breaker = ruby.hash_new();
        let state = match stats.breaker.state {
            tbackend_client::BreakerState::Closed => "closed",
            tbackend_client::BreakerState::Open => "open",
            tbackend_client::BreakerState::HalfOpen => "half_open",
        };
        breaker.aset(ruby.to_symbol("state"), state)?;
        breaker.aset(
            ruby.to_symbol("consecutive_failures"),
            stats.breaker.consecutive_failures,
        )?;
        breaker.aset(ruby.to_symbol("opens"), stats.breaker.opens)?;
        hash.aset(ruby.to_symbol("lanes"), lanes)?;
        hash.aset(ruby.to_symbol("breaker"), breaker)?;
        hash.aset(
            ruby.to_symbol("connections_opened"),
            stats.connections_opened,
        )?;
        Ok(hash)
    }

    /// One poll of a gap-safe tail: `[soft result, facts released in seq order]`.
    pub fn tail_poll(
        ruby: &Ruby,
        rb_self: &Self,
        cursor: &RbTailCursor,
        store: Value,
        timeout: Option<f64>,
    ) -> Result<RArray, Error> {
        let store = to_s(store)?;
        check_store(ruby, &store)?;
        let timeout = seconds(timeout);
        // The cursor is leased for the poll (the GVL-free section borrows it) and goes
        // back once the poll is over. A poll that an interrupt raising nothing cut short
        // goes on (see `run_until`), within its timeout; one that raised drops the lease
        // unsettled (see `CursorLease`).
        let mut lease = cursor.lease(ruby, &store)?;
        let polled = match rb_self.current() {
            Some(client) => Ok(run_resumable(ruby, "client", |cancel| {
                client.start_tail_poll(&store, lease.cursor(), timeout, cancel)
            })?),
            None => Err(Status::Unavailable),
        };
        lease.settle();
        let pair = ruby.ary_new_capa(2);
        match polled {
            Ok((outcome, released)) => {
                pair.push(soft_result(ruby, &outcome)?)?;
                let facts = ruby.ary_new_capa(released.len());
                for (_, fact) in &released {
                    facts.push(crate::answer::to_ruby(ruby, &Json::of(fact))?)?;
                }
                pair.push(facts)?;
            }
            Err(_) => {
                pair.push(rb_self.shut_down_result(ruby)?)?;
                pair.push(ruby.ary_new())?;
            }
        }
        Ok(pair)
    }

    pub fn rb_shutdown(&self) {
        self.shutdown();
    }
}

/// A fact that could not be encoded, as the soft, non-retryable result of its write.
/// Anything that is not an error (a `throw`, `break`) propagates.
fn invalid_result(ruby: &Ruby, error: Error) -> Result<RHash, Error> {
    let text = match error.error_type() {
        ErrorType::Error(class, message) => format!("{class}: {message}"),
        ErrorType::Exception(exception) => {
            let class = unsafe { exception.classname() }.into_owned();
            format!(
                "{class}: {}",
                exception.funcall::<_, _, String>("message", ())?
            )
        }
        ErrorType::Jump(_) => return Err(error),
    };
    let flags = tbackend_core::protocol::answer::Flags {
        ok: false,
        committed: Some(false),
        retryable: Some(false),
    };
    result_hash(
        ruby,
        Status::Error,
        flags,
        ruby.qnil().as_value(),
        Some(text),
        tbackend_core::ErrorKind::ClientBug,
    )
}

/// `ActsAsTbackend::Native::TailCursor`: where a gap-safe tail stands.
///
/// One poll at a time: a poll leases the cursor and a second poll while the lease is
/// out raises `ConcurrentUseError` (it would have to start over from the last settled
/// seq and hand out the same facts again).
#[magnus::wrap(class = "ActsAsTbackend::Native::TailCursor", free_immediately, size)]
pub struct RbTailCursor {
    slot: Mutex<CursorSlot>,
    after_seq: AtomicU64,
    grace: Duration,
}

struct CursorSlot {
    /// `None` after a poll that an interrupt ended (it may have moved the cursor past
    /// facts it never handed out): the next poll starts again at the last settled seq.
    cursor: Option<Cursor<serde_json::Value>>,
    /// The process whose poll holds the lease. A forked child does not inherit the
    /// parent's poll (its thread is not there), so another pid's lease is no lease.
    leased_by: Option<u32>,
}

/// The cursor, out of its slot for one poll. Dropped without [`CursorLease::settle`]
/// (an interrupt raised), it leaves the slot empty; either way the lease ends.
struct CursorLease<'a> {
    owner: &'a RbTailCursor,
    /// `None` once settled.
    cursor: Option<Cursor<serde_json::Value>>,
}

impl CursorLease<'_> {
    fn cursor(&mut self) -> &mut Cursor<serde_json::Value> {
        self.cursor
            .as_mut()
            .expect("a lease holds its cursor until settled")
    }

    /// The poll is over and its facts handed out: the cursor goes back, its seq settled.
    fn settle(mut self) {
        let cursor = self.cursor.take();
        if let Some(c) = &cursor {
            self.owner.after_seq.store(c.after_seq(), Ordering::Release);
        }
        self.owner.slot().cursor = cursor;
    }
}

impl Drop for CursorLease<'_> {
    fn drop(&mut self) {
        let mut slot = self.owner.slot();
        if self.cursor.is_some() {
            slot.cursor = None;
        }
        slot.leased_by = None;
    }
}

impl RbTailCursor {
    pub fn new(after_seq: u64, grace: f64) -> Self {
        let grace = seconds(Some(grace)).unwrap_or_default();
        RbTailCursor {
            slot: Mutex::new(CursorSlot {
                cursor: Some(Cursor::new(after_seq, grace)),
                leased_by: None,
            }),
            after_seq: AtomicU64::new(after_seq),
            grace,
        }
    }

    fn slot(&self) -> MutexGuard<'_, CursorSlot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cursor for one poll, or `ConcurrentUseError` while another poll has it.
    fn lease(&self, ruby: &Ruby, store: &str) -> Result<CursorLease<'_>, Error> {
        let pid = tbackend_client::process_id();
        let mut slot = self.slot();
        if slot.leased_by == Some(pid) {
            return Err(concurrent_use(
                ruby,
                format!(
                    "this tail of store {store:?} is in use by another poll \
                     (poll one Tail from one thread at a time: give each thread its own)"
                ),
            ));
        }
        slot.leased_by = Some(pid);
        let cursor = slot
            .cursor
            .take()
            .unwrap_or_else(|| Cursor::new(self.after_seq.load(Ordering::Acquire), self.grace));
        Ok(CursorLease {
            owner: self,
            cursor: Some(cursor),
        })
    }

    pub fn after_seq(&self) -> u64 {
        self.after_seq.load(Ordering::Acquire)
    }

    pub fn held(&self) -> usize {
        self.slot().cursor.as_ref().map_or(0, |c| c.held())
    }

    pub fn skipped(&self) -> u64 {
        self.slot().cursor.as_ref().map_or(0, |c| c.skipped())
    }
}

/// A request the builder refused (a forbidden or duplicate key, a non-finite number).
fn refused(ruby: &Ruby, error: impl std::fmt::Display) -> Error {
    invalid_fact(ruby, error.to_string())
}
