//! Request execution: the ops, their checks in the daemon's order, the stores, the
//! metrics. No sockets here (see [`crate::server`]); [`Engine::handle`] maps one frame
//! body to one answer body.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tbackend_core::fact::json::{canonical_json, value_hash};

use crate::auth::{self, Registry};
use crate::fact::{Fact, FactData};
use crate::faults::Faults;
use crate::wal::{Committer, Wal, SUFFIX};

/// The ops this daemon serves, sorted (what `diagnostics_summary` reports).
pub const OPERATIONS: &[&str] = &[
    "__compaction_stats",
    "__durability_fault",
    "__durability_stats",
    "auth_token_create",
    "auth_token_delete",
    "auth_token_list",
    "cross_store_query",
    "diagnostics_stores",
    "diagnostics_summary",
    "facts_by_seq",
    "facts_for",
    "latest_for",
    "metrics",
    "ping",
    "pipeline_list",
    "query_scope",
    "size",
    "snapshot_policy_list",
    "snapshot_trigger",
    "stores",
    "trigger_list",
    "write_fact",
    "write_fact_once",
];

/// The ops `metrics.ops` counts (the real daemon's fixed set).
const COUNTED_OPS: [&str; 8] = [
    "facts_for",
    "latest_for",
    "metrics",
    "ping",
    "query_scope",
    "size",
    "write_fact",
    "write_fact_once",
];

const IN_MEMORY_WARNING: &str =
    "durable requested but daemon is ephemeral (no WAL); ack is in_memory, NOT durable";

/// What the engine needs to know of the daemon's configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `None`: ephemeral, nothing is written to disk.
    pub data_dir: Option<PathBuf>,
    pub auth: bool,
    /// Server default of `strict_hash`.
    pub strict_hash: bool,
    pub commit_interval: Duration,
    /// 0: no limit.
    pub max_inflight: usize,
    pub host: String,
    pub pool_size: usize,
    /// CPU burnt per request, in µs, before the `exec_cost_us` knob's.
    pub request_cpu_us: u64,
}

/// The counters `metrics` reports. Rules inferred from the transcripts: a request is
/// counted once it parsed as JSON (echoed ones included, overload rejections not);
/// `errors_encountered` counts every answer carrying an `error` field, parse failures
/// and overload rejections included.
#[derive(Debug, Default)]
pub struct Metrics {
    pub total_requests: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub total_latency_us: AtomicU64,
    pub overload_rejections: AtomicU64,
    pub active_connections: AtomicI64,
    ops: [AtomicU64; 8],
}

impl Metrics {
    fn count_request(&self, op: Option<&str>) {
        self.total_requests.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = op.and_then(|op| COUNTED_OPS.iter().position(|c| *c == op)) {
            self.ops[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn to_json(&self) -> Value {
        let total = self.total_requests.load(Ordering::Relaxed);
        let latency = self.total_latency_us.load(Ordering::Relaxed);
        let ops: Map<String, Value> = COUNTED_OPS
            .iter()
            .zip(&self.ops)
            .map(|(name, n)| ((*name).to_owned(), n.load(Ordering::Relaxed).into()))
            .collect();
        json!({
            "active_connections": self.active_connections.load(Ordering::Relaxed).max(0),
            "average_latency_us": if total == 0 { 0.0 } else { latency as f64 / total as f64 },
            "bytes_read": self.bytes_read.load(Ordering::Relaxed),
            "bytes_written": self.bytes_written.load(Ordering::Relaxed),
            "errors_encountered": self.errors.load(Ordering::Relaxed),
            "ops": ops,
            "overload_rejections": self.overload_rejections.load(Ordering::Relaxed),
            "total_latency_us": latency,
            "total_requests": total,
        })
    }
}

/// One store: its facts in arrival order (which is seq order: seq assignment, log
/// append and insert happen under the store's write lock) and two indexes.
///
/// Facts hidden by the `visibility_lag` fault are stored (writes see them: replays,
/// conflicts) but every read op skips them until their time has come.
#[derive(Debug, Default)]
pub struct Store {
    facts: Vec<Fact>,
    by_key: HashMap<String, Vec<u32>>,
    /// id → the latest fact with that id (`write_fact` may store an id twice, and a
    /// later `write_fact_once` replays against the newest; see the transcript
    /// `write_fact_once_after_write_fact_same_id_replay`).
    by_id: HashMap<String, u32>,
    last_seq: u64,
    wal: Option<Arc<Wal>>,
    /// `visibility_lag`: (index in `facts`, visible from), in insertion order. Empty
    /// unless the fault was used; expired entries are dropped from the front on insert.
    hidden: VecDeque<(u32, Instant)>,
    /// The latest deadline in `hidden`: from then on nothing is hidden.
    hidden_until: Option<Instant>,
}

/// Indexes of the facts of one store that reads must skip right now (sorted).
#[derive(Debug, Default)]
struct Hidden(Vec<u32>);

impl Hidden {
    fn contains(&self, idx: usize) -> bool {
        !self.0.is_empty() && self.0.binary_search(&(idx as u32)).is_ok()
    }
}

impl Store {
    fn insert(&mut self, fact: Fact) {
        let idx = self.facts.len() as u32;
        self.by_key.entry(fact.key.clone()).or_default().push(idx);
        self.by_id.insert(fact.id.clone(), idx);
        self.last_seq = self.last_seq.max(fact.seq_id);
        self.facts.push(fact);
    }

    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    /// Marks the fact just inserted invisible to reads until `until`.
    fn hide_last(&mut self, until: Instant) {
        self.hidden.push_back((self.facts.len() as u32 - 1, until));
        self.hidden_until = self.hidden_until.max(Some(until));
    }

    /// Drops expired `hidden` entries from the front (deadlines are in insertion order
    /// unless `lag_ms` changed; an expired entry left behind is filtered by time).
    fn prune_hidden(&mut self, now: Instant) {
        if self.hidden_until.is_some_and(|t| t <= now) {
            self.hidden.clear();
            self.hidden_until = None;
        }
        while self.hidden.front().is_some_and(|&(_, t)| t <= now) {
            self.hidden.pop_front();
        }
    }

    /// The facts reads must skip now: nothing (no allocation, no clock read) unless
    /// the `visibility_lag` fault hid some. Sorted, as `hidden` is in index order.
    fn hidden_now(&self) -> Hidden {
        let Some(until) = self.hidden_until else {
            return Hidden::default();
        };
        let now = Instant::now();
        if until <= now {
            return Hidden::default();
        }
        Hidden(
            self.hidden
                .iter()
                .filter(|&&(_, t)| t > now)
                .map(|&(i, _)| i)
                .collect(),
        )
    }

    /// Facts visible to reads.
    fn visible_len(&self) -> usize {
        self.len() - self.hidden_now().0.len()
    }

    /// Greatest `transaction_time` ≤ `as_of` among visible facts; ties go to the later
    /// arrival.
    fn latest(&self, key: &str, as_of: Option<f64>, hidden: &Hidden) -> Option<&Fact> {
        let mut best: Option<&Fact> = None;
        for &i in self.by_key.get(key)? {
            let f = &self.facts[i as usize];
            if as_of.is_some_and(|a| f.transaction_time > a) || hidden.contains(i as usize) {
                continue;
            }
            if best.is_none_or(|b| f.transaction_time >= b.transaction_time) {
                best = Some(f);
            }
        }
        best
    }
}

type StoreCell = Arc<RwLock<Store>>;

/// The daemon's state and request pipeline.
pub struct Engine {
    cfg: EngineConfig,
    wal_dir: Option<PathBuf>,
    stores: RwLock<HashMap<String, StoreCell>>,
    committer: Committer,
    registry: Registry,
    pub metrics: Metrics,
    faults: Arc<Faults>,
    inflight: AtomicUsize,
    started: Instant,
    port: AtomicU16,
}

fn err(msg: impl Into<String>) -> Value {
    json!({"error": msg.into(), "ok": false})
}

/// serde_json's message for a body that does not parse, as the real daemon's serde_json
/// words it.
///
/// One difference between serde_json versions shows on the wire: for invalid UTF-8
/// inside a string, the daemon's version reports the column just past the string's
/// closing quote (transcript invalid_utf8: `{"op":"ping","x":"<ff>"}` → column 20),
/// newer ones the column of the first bad byte (19). We translate back.
fn json_error_text(body: &[u8], e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if !msg.starts_with("invalid unicode code point at line ") {
        return msg;
    }
    let line_start = if e.line() <= 1 {
        0
    } else {
        match body
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(e.line() - 2)
        {
            Some((i, _)) => i + 1,
            None => return msg,
        }
    };
    let mut i = line_start + e.column().saturating_sub(1);
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => {
                return format!(
                    "invalid unicode code point at line {} column {}",
                    e.line(),
                    i + 1 - line_start
                )
            }
            _ => i += 1,
        }
    }
    msg
}

/// Keeps this thread busy until it has used `cost` of CPU. Busy, not asleep: the real
/// daemon's per-request cost is CPU, and on a small machine it competes with the client
/// for the same cores. Counted on the thread's CPU clock, not the wall clock, so that a
/// preempted worker still spends all of it (on a loaded machine a wall-clock spin
/// would burn only the slices it happened to get).
fn burn_cpu(cost: Duration) {
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out pointer; this clock exists on every Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    let until = thread_cpu() + cost;
    while thread_cpu() < until {
        std::hint::spin_loop();
    }
}

/// `^[A-Za-z0-9_-]+$`; no length check (docs/protocol.md §6).
pub fn valid_store_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Engine {
    /// Opens the data directory (if any) and replays every store log into memory.
    pub fn open(cfg: EngineConfig, faults: Arc<Faults>) -> io::Result<Engine> {
        let wal_dir = cfg.data_dir.as_ref().map(|d| d.join("wal"));
        let mut stores = HashMap::new();
        if let Some(dir) = &wal_dir {
            fs::create_dir_all(dir)?;
            let mut names = Vec::new();
            for entry in fs::read_dir(dir)? {
                let name = entry?.file_name();
                if let Some(store) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) {
                    if valid_store_name(store) {
                        names.push(store.to_owned());
                    }
                }
            }
            for name in names {
                let Some((wal, replay)) = Wal::open(dir, &name)? else {
                    continue;
                };
                let mut store = Store {
                    wal: Some(wal),
                    ..Store::default()
                };
                for fact in replay.facts {
                    store.insert(fact);
                }
                stores.insert(name, Arc::new(RwLock::new(store)));
            }
        }
        let registry = Registry::open(cfg.data_dir.as_deref(), cfg.auth)?;
        Ok(Engine {
            committer: Committer::start(cfg.commit_interval, Arc::clone(&faults)),
            cfg,
            wal_dir,
            stores: RwLock::new(stores),
            registry,
            metrics: Metrics::default(),
            faults,
            inflight: AtomicUsize::new(0),
            started: Instant::now(),
            port: AtomicU16::new(0),
        })
    }

    /// Tells the engine the port it serves (known only after the log replay).
    pub fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Relaxed);
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Requests executing right now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// One request frame body → one answer body (canonical JSON).
    pub fn handle(&self, body: &[u8]) -> Vec<u8> {
        let answer = self.answer(body);
        if answer.get("error").is_some() {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
        canonical_json(&answer)
    }

    fn answer(&self, body: &[u8]) -> Value {
        let req: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return err(format!(
                    "Invalid JSON request: {}",
                    json_error_text(body, &e)
                ))
            }
        };
        let op = req.get("op").and_then(Value::as_str).map(str::to_owned);
        // Quirk: a request with a top-level "error" key is echoed verbatim, neither
        // executed nor auth-checked (docs/protocol.md §3).
        if req.get("error").is_some() {
            self.metrics.count_request(op.as_deref());
            return req;
        }
        let max = self.cfg.max_inflight;
        let running = self.inflight.fetch_add(1, Ordering::SeqCst);
        if max > 0 && running >= max {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            self.metrics
                .overload_rejections
                .fetch_add(1, Ordering::Relaxed);
            return json!({
                "committed": false,
                "error": "TBackend overloaded: max in-flight request limit reached",
                "error_code": "overloaded",
                "max_inflight_requests": max,
                "ok": false,
                "retryable": true,
            });
        }
        let started = Instant::now();
        self.metrics.count_request(op.as_deref());
        let exec_delay = self.faults.exec_delay_ms();
        if exec_delay > 0 {
            std::thread::sleep(Duration::from_millis(exec_delay));
        }
        // The real daemon answers a ping in about half a write's round trip: the
        // profile's CPU goes to the ops that do work.
        let profile_cost = match op.as_deref() {
            Some("ping") => 0,
            _ => self.cfg.request_cpu_us,
        };
        let exec_cost = profile_cost + self.faults.exec_cost_us();
        if exec_cost > 0 {
            burn_cpu(Duration::from_micros(exec_cost));
        }
        let answer = self.execute(req, op.as_deref().unwrap_or(""));
        self.metrics
            .total_latency_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        answer
    }

    fn execute(&self, req: Value, op: &str) -> Value {
        if self.cfg.auth {
            if let Err(denied) = self.authorize(&req, op) {
                return denied;
            }
        }
        let Value::Object(mut req) = req else {
            return err("Unknown operation: ");
        };
        match op {
            "ping" => json!({"ok": true, "pong": true}),
            "write_fact_once" => self.write(&mut req, true),
            "write_fact" => self.write(&mut req, false),
            "latest_for" => self.latest_for(&req),
            "facts_for" => self.facts_for(&req),
            "facts_by_seq" => self.facts_by_seq(&req),
            "query_scope" => self.query_scope(&req),
            "size" => self.size(&req),
            "stores" => {
                let mut names: Vec<String> = self.stores.read().unwrap().keys().cloned().collect();
                names.sort();
                json!({"ok": true, "stores": names})
            }
            "metrics" => self.metrics.to_json(),
            "diagnostics_summary" => self.diagnostics_summary(),
            "diagnostics_stores" => self.diagnostics_stores(&req),
            "cross_store_query" => self.cross_store_query(&req),
            "__durability_stats" => self.durability_stats(&req),
            "__durability_fault" => self.durability_fault(&req),
            "__compaction_stats" => json!({
                "compaction_enabled": false, "dir_fsyncs": 0, "file_fsyncs": 0, "ok": true
            }),
            "snapshot_trigger" => json!({
                "compaction_enabled": false,
                "error": "compaction disabled; start daemon with --enable-compaction true for safe manual compaction",
                "error_code": "compaction_disabled",
                "ok": false,
            }),
            "trigger_list" => json!({"ok": true, "triggers": []}),
            "pipeline_list" => json!({"ok": true, "pipelines": []}),
            "snapshot_policy_list" => json!({"ok": true, "policies": []}),
            "auth_token_create" => self.registry.create(&Value::Object(req)),
            "auth_token_list" => self.registry.list(),
            "auth_token_delete" => self.registry.delete(&Value::Object(req)),
            other => err(format!("Unknown operation: {other}")),
        }
    }

    fn authorize(&self, req: &Value, op: &str) -> Result<(), Value> {
        let Some(token) = req.get("token").and_then(Value::as_str) else {
            return Err(err("Authentication failed: missing 'token' parameter"));
        };
        let Some(rec) = self.registry.lookup(token) else {
            return Err(err("Authentication failed: invalid token"));
        };
        if !auth::role_allows(&rec.role, op) {
            return Err(err(format!(
                "Access denied: role '{}' cannot execute operation '{op}'",
                rec.role
            )));
        }
        // Quirk: on a write the top-level `store` is what the ACL checks, before
        // `fact.store`; a write-only token can so write to a store it may not use
        // (transcript auth:write_only_store_param_overrides_fact_store_for_acl).
        let mut store = req.get("store").and_then(Value::as_str);
        if store.is_none() && matches!(op, "write_fact" | "write_fact_once") {
            store = req.pointer("/fact/store").and_then(Value::as_str);
        }
        if let Some(store) = store {
            if !rec.may_use_store(store) {
                return Err(err(format!(
                    "Access denied: token not authorized for store '{store}'"
                )));
            }
        }
        Ok(())
    }

    /// The store named `name`, created (with an empty log) if new: any op naming a
    /// store creates it, reads included.
    fn store(&self, name: &str) -> StoreCell {
        if let Some(cell) = self.stores.read().unwrap().get(name) {
            return Arc::clone(cell);
        }
        let mut stores = self.stores.write().unwrap();
        if let Some(cell) = stores.get(name) {
            return Arc::clone(cell);
        }
        let mut store = Store::default();
        if let Some(dir) = &self.wal_dir {
            match Wal::open(dir, name) {
                Ok(Some((wal, replay))) => {
                    for fact in replay.facts {
                        store.insert(fact);
                    }
                    store.wal = Some(wal);
                }
                // Too long for a file name: in memory only, silently (docs/protocol.md §6).
                Ok(None) => {}
                Err(e) => eprintln!("tbackend-testd: cannot open the log of store {name}: {e}"),
            }
        }
        let cell = Arc::new(RwLock::new(store));
        stores.insert(name.to_owned(), Arc::clone(&cell));
        cell
    }

    /// `store` parameter of a read: present, a string, a valid name.
    fn named_store(&self, req: &Map<String, Value>) -> Result<StoreCell, Value> {
        let Some(name) = req.get("store").and_then(Value::as_str) else {
            return Err(err("Missing 'store' parameter"));
        };
        if !valid_store_name(name) {
            return Err(err("Invalid store name"));
        }
        Ok(self.store(name))
    }

    fn write(&self, req: &mut Map<String, Value>, once: bool) -> Value {
        let Some(fact) = req.remove("fact") else {
            return err("Missing 'fact' parameter");
        };
        let data: FactData = match serde_json::from_value(fact) {
            Ok(d) => d,
            Err(e) => return err(format!("Invalid fact data: {e}")),
        };
        let hash = value_hash(&data.value);
        let strict = req
            .get("strict_hash")
            .and_then(Value::as_bool)
            .unwrap_or(self.cfg.strict_hash);
        if let (true, Some(client)) = (strict, &data.value_hash) {
            if *client != hash {
                return json!({
                    "client_value_hash": client,
                    "committed": false,
                    "error": "client value_hash does not match server canonical hash",
                    "error_code": "value_hash_mismatch",
                    "ok": false,
                    "retryable": false,
                    "server_value_hash": hash,
                });
            }
        }
        if !valid_store_name(&data.store) {
            return err("Invalid store name");
        }
        let cell = self.store(&data.store);
        let (seq, replay, wal) = {
            let mut store = cell.write().unwrap();
            let existing = if once {
                store.by_id.get(&data.id).map(|&i| &store.facts[i as usize])
            } else {
                None
            };
            match existing {
                // Replay iff same key and JSON-equal value (serde_json's equality
                // ignores key order and keeps 10 and 10.0 apart); times and metadata
                // are not compared and the stored fact keeps its first ones.
                Some(f) if f.key == data.key && f.value == data.value => {
                    (f.seq_id, true, store.wal.clone())
                }
                Some(f) => {
                    return json!({
                        "committed": false,
                        "error": "Duplicate fact id conflict",
                        "error_code": "duplicate_fact_id_conflict",
                        "existing_key": f.key,
                        "existing_value_hash": f.value_hash,
                        "ok": false,
                        "retryable": false,
                    })
                }
                None => {
                    // Faults: `skip_seq` burns seqs first, `visibility_lag` hides the
                    // fact from reads for a while.
                    let plan = self.faults.plan_insert(&data.store, store.last_seq);
                    // A failed append still uses its seq up: gaps are possible.
                    store.last_seq += 1 + plan.burn;
                    let seq = store.last_seq;
                    let fact = Fact::from_data(data, seq, hash);
                    if let Some(wal) = &store.wal {
                        if let Err(e) = wal.append(&fact) {
                            return err(format!("WAL write failed: {e}"));
                        }
                    }
                    store.insert(fact);
                    if store.hidden_until.is_some() {
                        store.prune_hidden(Instant::now());
                    }
                    if let Some(lag) = plan.hide_for {
                        store.hide_last(Instant::now() + lag);
                        self.faults.note_hidden();
                    }
                    (seq, false, store.wal.clone())
                }
            }
        };
        let durable = req.get("durability").and_then(Value::as_str) == Some("durable");
        let mut answer = Map::new();
        answer.insert("committed".into(), true.into());
        answer.insert("ok".into(), true.into());
        answer.insert("seq_id".into(), seq.into());
        if once {
            answer.insert("idempotent_replay".into(), replay.into());
        }
        let durability = match (durable, wal) {
            (false, _) => "accepted",
            (true, None) => {
                answer.insert("warning".into(), IN_MEMORY_WARNING.into());
                "in_memory"
            }
            (true, Some(wal)) => match self.committer.wait_durable(&wal, seq) {
                Ok(()) => "durable",
                Err(detail) => {
                    // The fact IS stored and logged; only the sync failed, so the
                    // outcome is "unknown" to the client and a retry is a replay.
                    answer.insert("committed".into(), false.into());
                    answer.insert("ok".into(), false.into());
                    answer.insert("retryable".into(), true.into());
                    answer.insert(
                        "error".into(),
                        format!("durable sync failed: {detail}").into(),
                    );
                    "accepted"
                }
            },
        };
        answer.insert("durability".into(), durability.into());
        Value::Object(answer)
    }

    fn latest_for(&self, req: &Map<String, Value>) -> Value {
        let cell = match self.named_store(req) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let Some(key) = req.get("key").and_then(Value::as_str) else {
            return err("Missing 'key' parameter");
        };
        let as_of = req.get("as_of").and_then(Value::as_f64);
        let store = cell.read().unwrap();
        let hidden = store.hidden_now();
        let fact = store
            .latest(key, as_of, &hidden)
            .map_or(Value::Null, Fact::to_json);
        json!({"fact": fact, "ok": true})
    }

    fn facts_for(&self, req: &Map<String, Value>) -> Value {
        let cell = match self.named_store(req) {
            Ok(c) => c,
            Err(e) => return e,
        };
        // Wrongly typed bounds are ignored, not rejected (`as_of:"250"` = no bound).
        let since = req.get("since").and_then(Value::as_f64);
        let as_of = req.get("as_of").and_then(Value::as_f64);
        let store = cell.read().unwrap();
        let hidden = store.hidden_now();
        let in_window = |f: &Fact| {
            since.is_none_or(|s| f.transaction_time >= s)
                && as_of.is_none_or(|a| f.transaction_time <= a)
        };
        let mut facts: Vec<&Fact> = match req.get("key").and_then(Value::as_str) {
            Some(key) => store
                .by_key
                .get(key)
                .map(|idx| {
                    idx.iter()
                        .filter(|&&i| !hidden.contains(i as usize))
                        .map(|&i| &store.facts[i as usize])
                        .filter(|f| in_window(f))
                        .collect()
                })
                .unwrap_or_default(),
            None => store
                .facts
                .iter()
                .enumerate()
                .filter(|&(i, f)| !hidden.contains(i) && in_window(f))
                .map(|(_, f)| f)
                .collect(),
        };
        // Stable: equal times keep arrival order.
        facts.sort_by(|a, b| a.transaction_time.total_cmp(&b.transaction_time));
        let facts: Vec<Value> = facts.into_iter().map(Fact::to_json).collect();
        json!({"facts": facts, "ok": true})
    }

    fn facts_by_seq(&self, req: &Map<String, Value>) -> Value {
        let cell = match self.named_store(req) {
            Ok(c) => c,
            Err(e) => return e,
        };
        // `after_seq:"3"` and `after_seq:-1` both mean 0; `limit` does not exist.
        let after = req.get("after_seq").and_then(Value::as_u64).unwrap_or(0);
        let until = req.get("until_seq").and_then(Value::as_u64);
        let store = cell.read().unwrap();
        let hidden = store.hidden_now();
        let mut facts: Vec<&Fact> = store
            .facts
            .iter()
            .enumerate()
            .filter(|&(i, f)| {
                f.seq_id > after && until.is_none_or(|u| f.seq_id <= u) && !hidden.contains(i)
            })
            .map(|(_, f)| f)
            .collect();
        facts.sort_by_key(|f| f.seq_id);
        let facts: Vec<Value> = facts.into_iter().map(Fact::to_json).collect();
        json!({"facts": facts, "ok": true})
    }

    fn query_scope(&self, req: &Map<String, Value>) -> Value {
        let cell = match self.named_store(req) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let Some(filters) = req.get("filters") else {
            return err("Missing 'filters' parameter");
        };
        // Filters that are not an object match nothing (transcript
        // query_scope_filters_not_object), they are not an error.
        let Some(filters) = filters.as_object() else {
            return json!({"facts": [], "ok": true});
        };
        let as_of = req.get("as_of").and_then(Value::as_f64);
        let store = cell.read().unwrap();
        let hidden = store.hidden_now();
        let mut keys: Vec<&String> = store.by_key.keys().collect();
        keys.sort();
        // The latest fact per key first, then the filter: a key whose latest fact
        // does not match is absent even if an older one would.
        let facts: Vec<Value> = keys
            .into_iter()
            .filter_map(|k| store.latest(k, as_of, &hidden))
            // Only object values have fields: a null or scalar value never matches,
            // not even empty filters (transcript query_scope_empty_filter_all_latest).
            .filter(|f| {
                f.value.as_object().is_some_and(|value| {
                    filters
                        .iter()
                        .all(|(field, want)| value.get(field) == Some(want))
                })
            })
            .map(Fact::to_json)
            .collect();
        json!({"facts": facts, "ok": true})
    }

    fn size(&self, req: &Map<String, Value>) -> Value {
        let size = match req.get("store").and_then(Value::as_str) {
            Some(name) if !valid_store_name(name) => return err("Invalid store name"),
            Some(name) => self.store(name).read().unwrap().visible_len(),
            None => self.total_facts(),
        };
        json!({"ok": true, "size": size})
    }

    /// Facts visible to reads, across stores (`size` without store, the summary).
    fn total_facts(&self) -> usize {
        let cells: Vec<StoreCell> = self.stores.read().unwrap().values().cloned().collect();
        cells.iter().map(|c| c.read().unwrap().visible_len()).sum()
    }

    fn diagnostics_summary(&self) -> Value {
        // The real summary embeds `metrics` by running it as a request: it shows up in
        // total_requests and ops.metrics (transcript diagnostics_summary).
        self.metrics.count_request(Some("metrics"));
        let mut names: Vec<String> = self.stores.read().unwrap().keys().cloned().collect();
        names.sort();
        json!({
            "ok": true,
            "summary": {
                "background_services_count": 3,
                "data_dir": self.cfg.data_dir.as_ref().map_or("ephemeral".to_owned(), |d| d.display().to_string()),
                "host": self.cfg.host,
                "middlewares_count": 4,
                "pool_size": self.cfg.pool_size,
                "port": self.port.load(Ordering::Relaxed),
                "registered_operations": OPERATIONS,
                "registered_stores": names,
                "total_facts_across_stores": self.total_facts(),
                "total_stores": names.len(),
                "uptime_seconds": self.started.elapsed().as_secs_f64(),
            },
            "telemetry": self.metrics.to_json(),
        })
    }

    fn store_diagnostics(name: &str, store: &Store) -> Value {
        let max_depth = store.by_key.values().map(Vec::len).max().unwrap_or(0);
        // An estimate, as the real one: the canonical size of the facts plus the keys.
        let estimated: usize = store
            .facts
            .iter()
            .map(|f| canonical_json(&f.value).len() + f.id.len() + f.key.len() + 160)
            .sum();
        json!({
            "estimated_memory_bytes": estimated,
            "has_persistence": store.wal.is_some(),
            "in_memory_facts": store.len(),
            "key_cardinality": store.by_key.len(),
            "max_version_depth": max_depth,
            "store_name": name,
            "wal_disk_bytes": store.wal.as_ref().map_or(0, |w| w.disk_bytes()),
        })
    }

    fn diagnostics_stores(&self, req: &Map<String, Value>) -> Value {
        if req.get("store").is_some() {
            let cell = match self.named_store(req) {
                Ok(c) => c,
                Err(e) => return e,
            };
            let name = req["store"].as_str().unwrap_or_default();
            let store = cell.read().unwrap();
            return json!({"ok": true, "store": Self::store_diagnostics(name, &store)});
        }
        let mut cells: Vec<(String, StoreCell)> = self
            .stores
            .read()
            .unwrap()
            .iter()
            .map(|(n, c)| (n.clone(), Arc::clone(c)))
            .collect();
        cells.sort_by(|a, b| a.0.cmp(&b.0));
        let list: Vec<Value> = cells
            .iter()
            .map(|(n, c)| Self::store_diagnostics(n, &c.read().unwrap()))
            .collect();
        json!({"ok": true, "stores": list})
    }

    fn cross_store_query(&self, req: &Map<String, Value>) -> Value {
        // `keys` is checked first (transcript cross_store_query_documented_queries_shape_fails).
        let Some(keys) = req.get("keys").and_then(Value::as_array) else {
            return err("Missing 'keys' array parameter");
        };
        let Some(stores) = req.get("stores").and_then(Value::as_array) else {
            return err("Missing 'stores' array parameter");
        };
        let as_of = req.get("as_of").and_then(Value::as_f64);
        let mut results = Map::new();
        for name in stores.iter().filter_map(Value::as_str) {
            if !valid_store_name(name) {
                return err("Invalid store name");
            }
            let cell = self.store(name);
            let store = cell.read().unwrap();
            let hidden = store.hidden_now();
            let per_key: Map<String, Value> = keys
                .iter()
                .filter_map(Value::as_str)
                .map(|k| {
                    let fact = store
                        .latest(k, as_of, &hidden)
                        .map_or(Value::Null, Fact::to_json);
                    (k.to_owned(), fact)
                })
                .collect();
            results.insert(name.to_owned(), Value::Object(per_key));
        }
        json!({"ok": true, "results": results})
    }

    fn durability_stats(&self, req: &Map<String, Value>) -> Value {
        let cell = match self.named_store(req) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let wal = cell.read().unwrap().wal.clone();
        let stats = wal.as_ref().map(|w| w.stats()).unwrap_or_default();
        json!({
            "durable_capable": wal.is_some(),
            "ok": true,
            "sync_count": stats.sync_count,
            "synced_seq": stats.synced_seq,
            "write_seq": stats.write_seq,
        })
    }

    fn durability_fault(&self, req: &Map<String, Value>) -> Value {
        let cell = match self.named_store(req) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let Some(wal) = cell.read().unwrap().wal.clone() else {
            return err("ephemeral; no WAL");
        };
        let armed = req.get("armed").and_then(Value::as_bool).unwrap_or(false);
        wal.set_armed(armed);
        json!({"armed": armed, "ok": true})
    }
}
