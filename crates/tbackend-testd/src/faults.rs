//! Fault-injection state, shared by the data connections, the group committer and the
//! control port (see the crate README for the control protocol).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// Whether answers are withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    Off,
    /// Requests are read and dropped: not executed, never answered.
    BeforeExec,
    /// Requests are executed, their answers dropped: the outcome is unknown to the
    /// client, which is what a write retry must survive.
    AfterExec,
}

impl Stall {
    fn name(self) -> &'static str {
        match self {
            Stall::Off => "off",
            Stall::BeforeExec => "before_exec",
            Stall::AfterExec => "after_exec",
        }
    }
}

/// How an answer is mangled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFaultKind {
    /// No answer: the connection is closed (answers before it are delivered).
    Close,
    /// Half of the answer frame is written, then the connection is closed.
    CloseMidFrame,
    /// The answer goes out with its CRC trailer inverted; the connection stays open.
    BadCrc,
    /// Bytes that are not a frame go out instead of the answer; the connection stays open.
    Garbage,
}

impl AnswerFaultKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "close" => Self::Close,
            "close_mid_frame" => Self::CloseMidFrame,
            "bad_crc" => Self::BadCrc,
            "garbage" => Self::Garbage,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Close => "close",
            Self::CloseMidFrame => "close_mid_frame",
            Self::BadCrc => "bad_crc",
            Self::Garbage => "garbage",
        }
    }
}

/// Default garbage: a length header announcing ~3.7 GB (a client must refuse it by its
/// cap, not allocate it), then ASCII junk.
pub const DEFAULT_GARBAGE: &[u8] = b"\xde\xad\xbe\xefnot a tbackend frame";

/// A mangled-answer fault, counted over the requests of all data connections.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerFault {
    pub kind: AnswerFaultKind,
    /// Requests still answered normally before the fault strikes.
    pub after: u64,
    /// Requests still to mangle; `None`: every request from then on.
    pub count: Option<u64>,
    /// Whether a struck request is executed before its answer is mangled.
    pub execute: bool,
    /// The bytes sent by [`AnswerFaultKind::Garbage`].
    pub garbage: Vec<u8>,
}

/// What the connection loop must do with one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Strike {
    pub kind: AnswerFaultKind,
    pub execute: bool,
    pub garbage: Vec<u8>,
}

/// `visibility_lag`: a fact whose seq is a multiple of `every` (in `store`, or in any
/// store) is acknowledged normally but stays invisible to reads for `lag_ms` after its
/// insert, while later seqs are visible at once: seq order is not visibility order
/// (docs/protocol.md §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityLag {
    pub every: u64,
    pub lag_ms: u64,
    pub store: Option<String>,
}

impl VisibilityLag {
    fn to_json(&self) -> Value {
        json!({"every": self.every, "lag_ms": self.lag_ms, "store": self.store})
    }
}

/// `skip_seq`: every `every`-th insert (in `store`, or in any store) first burns one seq
/// number without storing anything, like a failed log append of another writer, then
/// is stored at the next one: the burned seq is a gap that never fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipSeq {
    pub every: u64,
    /// Strikes left; `None`: unlimited. The knob turns itself off at 0.
    pub count: Option<u64>,
    pub store: Option<String>,
    /// Matching inserts since the knob was set.
    seen: u64,
}

impl SkipSeq {
    fn to_json(&self) -> Value {
        json!({"every": self.every, "count": self.count.unwrap_or(0), "store": self.store})
    }
}

fn applies(filter: &Option<String>, store: &str) -> bool {
    filter.as_deref().is_none_or(|f| f == store)
}

#[derive(Debug, Default)]
struct SeqFaults {
    lag: Option<VisibilityLag>,
    skip: Option<SkipSeq>,
}

/// What the seq faults do to one insert.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InsertPlan {
    /// Seq numbers burned before the fact's own.
    pub burn: u64,
    /// How long the fact stays invisible to reads after its insert.
    pub hide_for: Option<Duration>,
}

/// All faults; the hot path reads atomics only.
#[derive(Debug)]
pub struct Faults {
    delay_ms: AtomicU64,
    exec_delay_ms: AtomicU64,
    exec_cost_us: AtomicU64,
    stall: AtomicU8,
    fail_durable_sync: AtomicBool,
    refuse_connections: AtomicBool,
    answer_armed: AtomicBool,
    answer: Mutex<Option<AnswerFault>>,
    strikes: AtomicU64,
    /// `visibility_lag` or `skip_seq` set: inserts must consult `seq`.
    seq_armed: AtomicBool,
    seq: Mutex<SeqFaults>,
    facts_hidden: AtomicU64,
    seqs_skipped: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            delay_ms: AtomicU64::new(0),
            exec_delay_ms: AtomicU64::new(0),
            exec_cost_us: AtomicU64::new(0),
            stall: AtomicU8::new(0),
            fail_durable_sync: AtomicBool::new(false),
            refuse_connections: AtomicBool::new(false),
            answer_armed: AtomicBool::new(false),
            answer: Mutex::new(None),
            strikes: AtomicU64::new(0),
            seq_armed: AtomicBool::new(false),
            seq: Mutex::new(SeqFaults::default()),
            facts_hidden: AtomicU64::new(0),
            seqs_skipped: AtomicU64::new(0),
        }
    }
}

impl Faults {
    pub fn delay_ms(&self) -> u64 {
        self.delay_ms.load(Ordering::Relaxed)
    }

    pub fn exec_delay_ms(&self) -> u64 {
        self.exec_delay_ms.load(Ordering::Relaxed)
    }

    /// CPU to burn per request, in µs: emulates the real daemon's 75–110 µs of work per
    /// write (docs/protocol.md §11), so a benchmark sees its ceiling and core contention.
    pub fn exec_cost_us(&self) -> u64 {
        self.exec_cost_us.load(Ordering::Relaxed)
    }

    pub fn stall(&self) -> Stall {
        match self.stall.load(Ordering::Relaxed) {
            1 => Stall::BeforeExec,
            2 => Stall::AfterExec,
            _ => Stall::Off,
        }
    }

    pub fn fail_durable_sync(&self) -> bool {
        self.fail_durable_sync.load(Ordering::SeqCst)
    }

    pub fn refuse_connections(&self) -> bool {
        self.refuse_connections.load(Ordering::SeqCst)
    }

    /// Answer faults applied so far.
    pub fn strikes(&self) -> u64 {
        self.strikes.load(Ordering::Relaxed)
    }

    /// Called once per request: whether this one is struck by the answer fault.
    pub fn next_strike(&self) -> Option<Strike> {
        if !self.answer_armed.load(Ordering::Acquire) {
            return None;
        }
        let mut slot = self.answer.lock().unwrap();
        let fault = slot.as_mut()?;
        if fault.after > 0 {
            fault.after -= 1;
            return None;
        }
        let strike = Strike {
            kind: fault.kind,
            execute: fault.execute,
            garbage: fault.garbage.clone(),
        };
        if let Some(count) = fault.count.as_mut() {
            *count -= 1;
            if *count == 0 {
                *slot = None;
                self.answer_armed.store(false, Ordering::Release);
            }
        }
        self.strikes.fetch_add(1, Ordering::Relaxed);
        Some(strike)
    }

    /// Called under the store's write lock for each insert (not for replays or
    /// conflicts), whose seq would be `last_seq + 1` without faults. One atomic load
    /// when neither `visibility_lag` nor `skip_seq` is set.
    pub fn plan_insert(&self, store: &str, last_seq: u64) -> InsertPlan {
        let mut plan = InsertPlan::default();
        if !self.seq_armed.load(Ordering::Acquire) {
            return plan;
        }
        let mut faults = self.seq.lock().unwrap();
        if let Some(skip) = faults.skip.as_mut().filter(|k| applies(&k.store, store)) {
            skip.seen += 1;
            if skip.seen.is_multiple_of(skip.every) {
                plan.burn = 1;
                if let Some(left) = skip.count.as_mut() {
                    *left -= 1;
                    if *left == 0 {
                        faults.skip = None;
                    }
                }
            }
        }
        let seq = last_seq + 1 + plan.burn;
        if let Some(lag) = faults.lag.as_ref().filter(|l| applies(&l.store, store)) {
            if seq.is_multiple_of(lag.every) {
                plan.hide_for = Some(Duration::from_millis(lag.lag_ms));
            }
        }
        self.seq_armed.store(
            faults.lag.is_some() || faults.skip.is_some(),
            Ordering::Release,
        );
        self.seqs_skipped.fetch_add(plan.burn, Ordering::Relaxed);
        plan
    }

    /// Counts a fact stored hidden by `visibility_lag`.
    pub fn note_hidden(&self) {
        self.facts_hidden.fetch_add(1, Ordering::Relaxed);
    }

    /// Clears every fault.
    pub fn clear(&self) {
        self.delay_ms.store(0, Ordering::SeqCst);
        self.exec_delay_ms.store(0, Ordering::SeqCst);
        self.exec_cost_us.store(0, Ordering::SeqCst);
        self.stall.store(0, Ordering::SeqCst);
        self.fail_durable_sync.store(false, Ordering::SeqCst);
        self.refuse_connections.store(false, Ordering::SeqCst);
        *self.answer.lock().unwrap() = None;
        self.answer_armed.store(false, Ordering::SeqCst);
        *self.seq.lock().unwrap() = SeqFaults::default();
        self.seq_armed.store(false, Ordering::SeqCst);
    }

    /// Applies the fields of a control `set` request; all are validated first, so a
    /// bad request changes nothing.
    pub fn apply(&self, fields: &Map<String, Value>) -> Result<(), String> {
        let mut delay = None;
        let mut exec_delay = None;
        let mut exec_cost = None;
        let mut stall = None;
        let mut fail_sync = None;
        let mut refuse = None;
        let mut answer = None;
        let mut lag = None;
        let mut skip = None;
        for (name, v) in fields {
            match name.as_str() {
                "op" => {}
                "delay_ms" => delay = Some(as_u64(name, v)?),
                "exec_delay_ms" => exec_delay = Some(as_u64(name, v)?),
                "exec_cost_us" => exec_cost = Some(as_u64(name, v)?),
                "stall" => stall = Some(match v {
                    Value::Bool(false) => Stall::Off,
                    Value::Bool(true) => Stall::BeforeExec,
                    Value::String(s) if s == "off" => Stall::Off,
                    Value::String(s) if s == "before_exec" => Stall::BeforeExec,
                    Value::String(s) if s == "after_exec" => Stall::AfterExec,
                    _ => return Err(
                        "'stall' must be a bool or one of \"off\", \"before_exec\", \"after_exec\""
                            .into(),
                    ),
                }),
                "fail_durable_sync" => fail_sync = Some(as_bool(name, v)?),
                "refuse_connections" => refuse = Some(as_bool(name, v)?),
                "answer_fault" => answer = Some(parse_answer_fault(v)?),
                "visibility_lag" => lag = Some(parse_visibility_lag(v)?),
                "skip_seq" => skip = Some(parse_skip_seq(v)?),
                other => return Err(format!("unknown fault field '{other}'")),
            }
        }
        if let Some(v) = delay {
            self.delay_ms.store(v, Ordering::SeqCst);
        }
        if let Some(v) = exec_delay {
            self.exec_delay_ms.store(v, Ordering::SeqCst);
        }
        if let Some(v) = exec_cost {
            self.exec_cost_us.store(v, Ordering::SeqCst);
        }
        if let Some(v) = stall {
            let code = match v {
                Stall::Off => 0,
                Stall::BeforeExec => 1,
                Stall::AfterExec => 2,
            };
            self.stall.store(code, Ordering::SeqCst);
        }
        if let Some(v) = fail_sync {
            self.fail_durable_sync.store(v, Ordering::SeqCst);
        }
        if let Some(v) = refuse {
            self.refuse_connections.store(v, Ordering::SeqCst);
        }
        if let Some(v) = answer {
            let armed = v.is_some();
            *self.answer.lock().unwrap() = v;
            self.answer_armed.store(armed, Ordering::Release);
        }
        if lag.is_some() || skip.is_some() {
            let mut faults = self.seq.lock().unwrap();
            if let Some(v) = lag {
                faults.lag = v;
            }
            if let Some(v) = skip {
                faults.skip = v;
            }
            self.seq_armed.store(
                faults.lag.is_some() || faults.skip.is_some(),
                Ordering::Release,
            );
        }
        Ok(())
    }

    /// The current faults, as `status` reports them.
    pub fn to_json(&self) -> Value {
        let answer = self.answer.lock().unwrap().as_ref().map(|f| {
            json!({
                "kind": f.kind.name(),
                "after": f.after,
                "count": f.count.unwrap_or(0),
                "execute": f.execute,
                "hex": hex(&f.garbage),
            })
        });
        let (lag, skip) = {
            let faults = self.seq.lock().unwrap();
            (
                faults.lag.as_ref().map(VisibilityLag::to_json),
                faults.skip.as_ref().map(SkipSeq::to_json),
            )
        };
        json!({
            "delay_ms": self.delay_ms(),
            "exec_delay_ms": self.exec_delay_ms(),
            "exec_cost_us": self.exec_cost_us(),
            "stall": self.stall().name(),
            "fail_durable_sync": self.fail_durable_sync(),
            "refuse_connections": self.refuse_connections(),
            "answer_fault": answer,
            "answer_faults_applied": self.strikes(),
            "visibility_lag": lag,
            "facts_hidden": self.facts_hidden.load(Ordering::Relaxed),
            "skip_seq": skip,
            "seqs_skipped": self.seqs_skipped.load(Ordering::Relaxed),
        })
    }
}

fn as_u64(name: &str, v: &Value) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("'{name}' must be a non-negative integer"))
}

fn as_bool(name: &str, v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("'{name}' must be a bool"))
}

fn parse_answer_fault(v: &Value) -> Result<Option<AnswerFault>, String> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err("'answer_fault' must be an object or null".into()),
    };
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .and_then(AnswerFaultKind::parse)
        .ok_or("'answer_fault.kind' must be one of \"close\", \"close_mid_frame\", \"bad_crc\", \"garbage\"")?;
    let mut fault = AnswerFault {
        kind,
        after: 0,
        count: Some(1),
        execute: true,
        garbage: DEFAULT_GARBAGE.to_vec(),
    };
    for (name, v) in obj {
        match name.as_str() {
            "kind" => {}
            "after" => fault.after = as_u64("answer_fault.after", v)?,
            "count" => {
                let n = as_u64("answer_fault.count", v)?;
                fault.count = (n > 0).then_some(n);
            }
            "execute" => fault.execute = as_bool("answer_fault.execute", v)?,
            "hex" => {
                fault.garbage = v
                    .as_str()
                    .and_then(unhex)
                    .filter(|b| !b.is_empty())
                    .ok_or("'answer_fault.hex' must be a non-empty even-length hex string")?
            }
            other => return Err(format!("unknown answer_fault field '{other}'")),
        }
    }
    Ok(Some(fault))
}

/// The optional `store` of a seq fault: absent or `null` means every store.
fn parse_store(field: &str, v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if crate::engine::valid_store_name(s) => Ok(Some(s.clone())),
        Some(_) => Err(format!("'{field}' must be a store name or null")),
    }
}

fn parse_visibility_lag(v: &Value) -> Result<Option<VisibilityLag>, String> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err("'visibility_lag' must be an object or null".into()),
    };
    let mut lag = VisibilityLag {
        every: 1,
        lag_ms: 0,
        store: parse_store("visibility_lag.store", obj.get("store"))?,
    };
    let mut has_lag = false;
    for (name, v) in obj {
        match name.as_str() {
            "store" => {}
            "every" => lag.every = as_u64("visibility_lag.every", v)?,
            "lag_ms" => {
                lag.lag_ms = as_u64("visibility_lag.lag_ms", v)?;
                has_lag = true;
            }
            other => return Err(format!("unknown visibility_lag field '{other}'")),
        }
    }
    if !has_lag {
        return Err("'visibility_lag.lag_ms' is required".into());
    }
    if lag.every == 0 {
        return Err("'visibility_lag.every' must be at least 1".into());
    }
    Ok(Some(lag))
}

fn parse_skip_seq(v: &Value) -> Result<Option<SkipSeq>, String> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err("'skip_seq' must be an object or null".into()),
    };
    let mut skip = SkipSeq {
        every: 1,
        count: None,
        store: parse_store("skip_seq.store", obj.get("store"))?,
        seen: 0,
    };
    for (name, v) in obj {
        match name.as_str() {
            "store" => {}
            "every" => skip.every = as_u64("skip_seq.every", v)?,
            "count" => {
                let n = as_u64("skip_seq.count", v)?;
                skip.count = (n > 0).then_some(n);
            }
            other => return Err(format!("unknown skip_seq field '{other}'")),
        }
    }
    if skip.every == 0 {
        return Err("'skip_seq.every' must be at least 1".into());
    }
    Ok(Some(skip))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(f: &Faults, v: Value) -> Result<(), String> {
        f.apply(v.as_object().unwrap())
    }

    #[test]
    fn answer_fault_counts_after_then_strikes_count_times() {
        let f = Faults::default();
        set(
            &f,
            json!({"answer_fault": {"kind": "bad_crc", "after": 2, "count": 2}}),
        )
        .unwrap();
        let got: Vec<bool> = (0..6).map(|_| f.next_strike().is_some()).collect();
        assert_eq!(got, [false, false, true, true, false, false]);
        assert_eq!(f.strikes(), 2);
        set(
            &f,
            json!({"answer_fault": {"kind": "garbage", "count": 0, "hex": "0102"}}),
        )
        .unwrap();
        for _ in 0..5 {
            assert_eq!(f.next_strike().unwrap().garbage, vec![1, 2]);
        }
        f.clear();
        assert!(f.next_strike().is_none());
    }

    #[test]
    fn bad_set_changes_nothing() {
        let f = Faults::default();
        assert!(set(&f, json!({"delay_ms": 5, "bogus": 1})).is_err());
        assert_eq!(f.delay_ms(), 0);
        assert!(set(&f, json!({"stall": "sometimes"})).is_err());
        assert!(set(&f, json!({"answer_fault": {"kind": "explode"}})).is_err());
        set(&f, json!({"stall": "after_exec", "delay_ms": 5})).unwrap();
        assert_eq!(f.stall(), Stall::AfterExec);
        assert_eq!(f.delay_ms(), 5);
        for bad in [
            json!({"visibility_lag": {"every": 2}}),
            json!({"visibility_lag": {"every": 0, "lag_ms": 5}}),
            json!({"visibility_lag": {"lag_ms": -1}}),
            json!({"visibility_lag": {"lag_ms": 5, "store": "no/slash"}}),
            json!({"visibility_lag": {"lag_ms": 5, "jitter": 1}}),
            json!({"visibility_lag": 5}),
            json!({"skip_seq": {"every": 0}}),
            json!({"skip_seq": {"count": "1"}}),
            json!({"skip_seq": {"every": 2, "gap": 3}}),
            json!({"skip_seq": {"every": 2}, "delay_ms": "x"}),
        ] {
            assert!(set(&f, bad.clone()).is_err(), "{bad}");
        }
        assert_eq!(f.to_json()["visibility_lag"], Value::Null);
        assert_eq!(f.to_json()["skip_seq"], Value::Null);
        assert!(!f.seq_armed.load(Ordering::SeqCst));
    }

    fn plans(f: &Faults, store: &str, inserts: usize) -> Vec<(u64, bool)> {
        let mut last = 0;
        (0..inserts)
            .map(|_| {
                let p = f.plan_insert(store, last);
                last += 1 + p.burn;
                (last, p.hide_for.is_some())
            })
            .collect()
    }

    #[test]
    fn off_plans_plain_inserts() {
        let f = Faults::default();
        assert_eq!(f.plan_insert("s", 41), InsertPlan::default());
    }

    #[test]
    fn visibility_lag_hides_multiples_of_every() {
        let f = Faults::default();
        set(
            &f,
            json!({"visibility_lag": {"every": 3, "lag_ms": 250, "store": "s"}}),
        )
        .unwrap();
        let got = plans(&f, "s", 7);
        let hidden: Vec<u64> = got.iter().filter(|p| p.1).map(|p| p.0).collect();
        assert_eq!(hidden, [3, 6]);
        assert_eq!(
            f.plan_insert("s", 8).hide_for,
            Some(Duration::from_millis(250))
        );
        assert_eq!(f.plan_insert("other", 8), InsertPlan::default());
        assert_eq!(
            f.to_json()["visibility_lag"],
            json!({"every": 3, "lag_ms": 250, "store": "s"})
        );
        set(&f, json!({"visibility_lag": null})).unwrap();
        assert_eq!(f.plan_insert("s", 8), InsertPlan::default());
        assert!(!f.seq_armed.load(Ordering::SeqCst));
    }

    #[test]
    fn skip_seq_every_and_count() {
        let f = Faults::default();
        set(&f, json!({"skip_seq": {"every": 2}})).unwrap();
        let seqs: Vec<u64> = plans(&f, "s", 5).into_iter().map(|p| p.0).collect();
        assert_eq!(seqs, [1, 3, 4, 6, 7]);
        // Counted over all stores when no store is named: the 6th insert burns.
        assert_eq!(f.plan_insert("t", 0).burn, 1);
        assert_eq!(f.plan_insert("u", 0).burn, 0);
        assert_eq!(f.to_json()["seqs_skipped"], 3);
        // One-shot: the next insert burns one, then the knob is off.
        set(&f, json!({"skip_seq": {"count": 1}})).unwrap();
        let seqs: Vec<u64> = plans(&f, "s", 3).into_iter().map(|p| p.0).collect();
        assert_eq!(seqs, [2, 3, 4]);
        assert_eq!(f.to_json()["skip_seq"], Value::Null);
        assert!(!f.seq_armed.load(Ordering::SeqCst));
        // Both at once: a hidden seq is computed after the burn.
        set(
            &f,
            json!({"skip_seq": {"every": 3, "count": 2, "store": "s"},
                   "visibility_lag": {"every": 4, "lag_ms": 1}}),
        )
        .unwrap();
        assert_eq!(
            f.to_json()["skip_seq"],
            json!({"every": 3, "count": 2, "store": "s"})
        );
        assert_eq!(
            plans(&f, "s", 8),
            [
                (1, false),
                (2, false),
                (4, true),
                (5, false),
                (6, false),
                (8, true),
                (9, false),
                (10, false)
            ]
        );
        f.clear();
        assert_eq!(f.plan_insert("s", 3), InsertPlan::default());
    }
}
