//! `ActsAsTbackend::Native::Writer`: the Ruby face of `tbackend_client::writer::Writer`.
//!
//! `enqueue` encodes the fact to JSON here, with the GVL (the same encoder and checks as
//! a synchronous write, so an invalid fact fails the same way), and hands it to the
//! native queue. That normally takes the queue's mutex and, with a spool, one
//! `write(2)`, so it runs with the GVL held; anything that can wait (room in a full
//! queue, an `fsync` per fact, `flush`, `shutdown`) runs without the GVL and with an
//! unblocking function, so Timeout, Thread#kill and Ctrl-C stay prompt.
//!
//! Events (dead letters, pauses, spool errors, adopted segments) queue natively;
//! `wait_events` sleeps for them without the GVL (one Ruby thread per writer does) and
//! `take_events` hands them over as `[name, payload, stderr line or nil]`, which the
//! Ruby layer publishes as ActiveSupport notifications. `release_events` (that thread
//! ends) sends them back to stderr, the last resort.
//!
//! Fork: the writer is held per process (see `per_process`). In a forked child it is
//! forgotten and every call answers as if shut down; the Ruby layer builds the child a
//! fresh writer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use magnus::{Error, IntoValue, RArray, RHash, Ruby, Value};
use tbackend_client::spool::{Entry, Fsync};
use tbackend_client::writer::{Event, Refusal, SpoolConfig, Writer, WriterConfig};
use tbackend_client::{Client, Config};
use tbackend_core::protocol::request::RawJson;

use crate::client::{opt, seconds};
use crate::errors::configuration;
use crate::fact::{fact_field, fact_store, to_s};
use crate::json::Encoder;
use crate::nogvl::{run_resumable, run_until};
use crate::per_process::PerProcess;

#[magnus::wrap(class = "ActsAsTbackend::Native::Writer", free_immediately, size)]
pub struct RbWriter {
    writer: Arc<PerProcess<Arc<Writer>>>,
    max_request_bytes: usize,
    fsync_always: bool,
}

/// The settings of the flusher's own client: those of the options Hash (as for
/// `Native::Client.new`), with one lane and no breaker.
fn flusher_client_config(options: RHash) -> Result<Config, Error> {
    let mut config = crate::client::config_from_options(options)?;
    // One lane: the flusher is one thread that pipelines its whole batch on it.
    config.lanes = 1;
    // No breaker: it protects callers from waiting on a dead daemon, and nobody waits
    // here. The writer pauses with its own backoff (retry_base/max_backoff) instead of
    // sitting out a cooldown after every blip.
    config.breaker_threshold = 0;
    Ok(config)
}

fn writer_config(
    ruby: &Ruby,
    options: RHash,
    token: Option<String>,
) -> Result<WriterConfig, Error> {
    let mut config = WriterConfig {
        token,
        ..WriterConfig::default()
    };
    config.queue_events = opt::<bool>(options, "events")?.unwrap_or(false);
    if let Some(n) = opt::<usize>(options, "queue_size")? {
        config.queue_size = n.max(1);
    }
    if let Some(n) = opt::<u32>(options, "retry_attempts")? {
        config.retry_attempts = n.max(1);
    }
    if let Some(d) = seconds(opt(options, "retry_base_backoff")?) {
        config.base_backoff = d;
    }
    if let Some(d) = seconds(opt(options, "retry_max_backoff")?) {
        config.max_backoff = d;
    }
    // Zero is a setting here (no lingering), not "the default".
    if let Some(s) = opt::<f64>(options, "linger")?.filter(|s| s.is_finite() && *s >= 0.0) {
        config.linger = Duration::from_secs_f64(s);
    }
    if let Some(dir) = opt::<String>(options, "spool_path")?.filter(|p| !p.is_empty()) {
        let mut spool = SpoolConfig::new(PathBuf::from(dir));
        if let Some(f) = opt::<String>(options, "spool_fsync")? {
            spool.fsync = Fsync::parse(&f)
                .ok_or_else(|| configuration(ruby, format!("spool_fsync: unknown policy {f:?}")))?;
        }
        config.spool = Some(spool);
    }
    Ok(config)
}

impl RbWriter {
    /// `Native::Writer.new(client_options, writer_options)`: opens the spool (adopting
    /// what dead processes left) and starts the flusher thread.
    pub fn new(ruby: &Ruby, client_options: RHash, options: RHash) -> Result<Self, Error> {
        let client = flusher_client_config(client_options)?;
        let max_request_bytes = client.max_request_bytes;
        let config = writer_config(ruby, options, client.token.clone())?;
        let fsync_always = config.spool.as_ref().map(|s| s.fsync) == Some(Fsync::Always);
        let writer = Writer::start(Client::new(client), config)
            .map_err(|e| configuration(ruby, format!("cannot start the async writer: {e}")))?;
        Ok(RbWriter {
            writer: PerProcess::new(Arc::new(writer)),
            max_request_bytes,
            fsync_always,
        })
    }

    /// The writer, if it belongs to this process and is not shut down.
    fn current(&self) -> Option<Arc<Writer>> {
        self.writer.current(|| None)
    }

    fn entry(&self, ruby: &Ruby, fact: Value, durability: Option<String>) -> Result<Entry, Error> {
        let (hash, store) = fact_store(ruby, fact)?;
        let key = fact_field(ruby, hash, "key")
            .map(to_s)
            .transpose()?
            .unwrap_or_default();
        let id = fact_field(ruby, hash, "id")
            .map(to_s)
            .transpose()?
            .unwrap_or_default();
        let mut encoder = Encoder::new(ruby, self.max_request_bytes);
        encoder
            .encode(fact)
            .map_err(|e| e.into_ruby(ruby, "fact"))?;
        Ok(Entry {
            store,
            key,
            id,
            durability,
            fact: RawJson::encoded(encoder.out),
        })
    }

    /// `[status, error]`: `"enqueued"` (error: a spool failure, the fact is queued in
    /// memory only), `"full"` (after waiting up to `wait` seconds, if given),
    /// `"shut_down"`. Raises `InvalidFact` for a fact that can never be written.
    pub fn enqueue(
        ruby: &Ruby,
        rb_self: &Self,
        fact: Value,
        durability: Option<String>,
        wait: Option<f64>,
    ) -> Result<RArray, Error> {
        let entry = rb_self.entry(ruby, fact, durability)?;
        let answer = |status: &'static str, error: Option<String>| -> Result<RArray, Error> {
            let pair = ruby.ary_new_capa(2);
            pair.push(crate::fact::interned(status))?;
            pair.push(error)?;
            Ok(pair)
        };
        let Some(writer) = rb_self.current() else {
            return answer("shut_down", None);
        };
        let wait = seconds(wait);
        let result = if rb_self.fsync_always {
            run_resumable(ruby, "writer", |cancel| {
                writer.start_enqueue(entry, wait, cancel)
            })?
        } else {
            match writer.try_enqueue(entry) {
                Err(refused) if refused.reason == Refusal::Full && wait.is_some() => {
                    let entry = *refused.entry;
                    run_resumable(ruby, "writer", |cancel| {
                        writer.start_enqueue(entry, wait, cancel)
                    })?
                }
                other => other,
            }
        };
        match result {
            Ok(receipt) => answer("enqueued", receipt.spool_error),
            Err(refused) => match refused.reason {
                Refusal::Full | Refusal::Cancelled => answer("full", None),
                Refusal::ShutDown => answer("shut_down", None),
            },
        }
    }

    /// `true` once every fact enqueued before the call has a terminal result.
    pub fn flush(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<bool, Error> {
        let Some(writer) = rb_self.current() else {
            return Ok(true);
        };
        let timeout = seconds(timeout).unwrap_or(Duration::ZERO);
        run_resumable(ruby, "writer", |cancel| {
            writer.start_flush(Some(timeout), cancel)
        })
    }

    /// Flushes for at most `timeout`, then stops the flusher and closes the spool; `true`
    /// when nothing was left undelivered. Later enqueues answer `shut_down`.
    pub fn shutdown(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<bool, Error> {
        let Some(writer) = rb_self.current() else {
            return Ok(true);
        };
        let timeout = seconds(timeout).unwrap_or(Duration::ZERO);
        run_resumable(ruby, "writer", |cancel| {
            writer.start_shutdown(timeout, cancel)
        })
    }

    pub fn count_dropped(&self) {
        if let Some(w) = self.current() {
            w.count_dropped();
        }
    }

    pub fn stats(ruby: &Ruby, rb_self: &Self) -> Result<RHash, Error> {
        let hash = ruby.hash_new();
        let Some(writer) = rb_self.current() else {
            hash.aset(ruby.to_symbol("shut_down"), true)?;
            return Ok(hash);
        };
        let s = writer.stats();
        let pairs: [(&str, u64); 14] = [
            ("queued", s.queued as u64),
            ("spooled", s.spooled as u64),
            ("spool_bytes", s.spool_bytes),
            ("enqueued", s.enqueued),
            ("delivered", s.delivered),
            ("replays", s.replays),
            ("conflicts", s.conflicts),
            ("failed", s.failed),
            ("dead", s.dead),
            ("retries", s.retries),
            ("dropped", s.dropped),
            ("spool_errors", s.spool_errors),
            ("adopted", s.adopted),
            ("batches", s.batches),
        ];
        for (name, value) in pairs {
            hash.aset(ruby.to_symbol(name), value)?;
        }
        Ok(hash)
    }

    /// The spool's segment files of this writer, oldest first.
    pub fn spool_segments(&self) -> Vec<String> {
        self.current()
            .map(|w| {
                w.spool_segments()
                    .into_iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sleeps without the GVL until events are queued or the writer is shut down
    /// (at once in a process that does not own the writer). Interrupts that raise
    /// nothing do not end the wait.
    pub fn wait_events(ruby: &Ruby, rb_self: &Self) -> Result<(), Error> {
        let Some(writer) = rb_self.current() else {
            return Ok(());
        };
        run_until(ruby, "writer events", |cancel| {
            writer.wait_events(cancel).then_some(())
        })
    }

    /// `[events, dropped, closed]`: each event `[name, payload, line]` (`line`: what
    /// stderr gets when nobody hears it, or nil), the events lost to a full queue, and
    /// whether the writer is shut down (no event follows).
    pub fn take_events(ruby: &Ruby, rb_self: &Self) -> Result<RArray, Error> {
        let drained = rb_self.current().map(|w| w.take_events());
        let (events, dropped, closed) = match drained {
            Some(d) => (d.events, d.dropped, d.closed),
            None => (Vec::new(), 0, true),
        };
        let list = ruby.ary_new_capa(events.len());
        for event in &events {
            let triple = ruby.ary_new_capa(3);
            triple.push(event.name())?;
            triple.push(event_payload(ruby, event)?)?;
            triple.push(event.stderr_line())?;
            list.push(triple)?;
        }
        let answer = ruby.ary_new_capa(3);
        answer.push(list)?;
        answer.push(dropped)?;
        answer.push(closed)?;
        Ok(answer)
    }

    /// The draining thread is gone: events go to stderr from now on.
    pub fn release_events(&self) {
        if let Some(w) = self.current() {
            w.release_events();
        }
    }

    /// Lines on stderr through the writer's rate limiter.
    pub fn write_stderr(&self, lines: Vec<String>) {
        match self.current() {
            Some(w) => w.write_stderr(lines),
            None => lines.iter().for_each(|line| eprintln!("{line}")),
        }
    }
}

/// The notification payload of an event (Symbol keys; no values, no token).
fn event_payload(ruby: &Ruby, event: &Event) -> Result<RHash, Error> {
    let hash = ruby.hash_new();
    let set = |key: &str, value: Value| hash.aset(ruby.to_symbol(key), value);
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    match event {
        Event::DeadLetter {
            reason,
            status,
            attempts,
            store,
            id,
            kept,
        } => {
            set("fact_id", id.as_str().into_value_with(ruby))?;
            set("store", store.as_str().into_value_with(ruby))?;
            set("status", (*status).into_value_with(ruby))?;
            set("attempts", (*attempts).into_value_with(ruby))?;
            set("reason", reason.as_str().into_value_with(ruby))?;
            set("kept", kept.as_deref().map(path).into_value_with(ruby))?;
        }
        Event::Paused {
            status,
            error,
            queued,
        } => {
            set("status", status.as_str().into_value_with(ruby))?;
            set("error", error.clone().into_value_with(ruby))?;
            set("queued", (*queued as u64).into_value_with(ruby))?;
        }
        Event::Resumed { paused_for, queued } => {
            set("paused_for", paused_for.as_secs_f64().into_value_with(ruby))?;
            set("queued", (*queued as u64).into_value_with(ruby))?;
        }
        Event::SpoolError {
            operation,
            error,
            count,
        } => {
            set("operation", operation.as_str().into_value_with(ruby))?;
            set("error", error.as_str().into_value_with(ruby))?;
            set("count", (*count).into_value_with(ruby))?;
        }
        Event::Adopted { segment, facts } => {
            set("segment", path(segment).into_value_with(ruby))?;
            set("facts", (*facts as u64).into_value_with(ruby))?;
        }
    }
    Ok(hash)
}
