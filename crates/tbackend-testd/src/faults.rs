//! Fault-injection state, shared by the data connections, the group committer and the
//! control port (see the crate README for the control protocol).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

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

/// All faults; the hot path reads atomics only.
#[derive(Debug)]
pub struct Faults {
    delay_ms: AtomicU64,
    exec_delay_ms: AtomicU64,
    stall: AtomicU8,
    fail_durable_sync: AtomicBool,
    refuse_connections: AtomicBool,
    answer_armed: AtomicBool,
    answer: Mutex<Option<AnswerFault>>,
    strikes: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            delay_ms: AtomicU64::new(0),
            exec_delay_ms: AtomicU64::new(0),
            stall: AtomicU8::new(0),
            fail_durable_sync: AtomicBool::new(false),
            refuse_connections: AtomicBool::new(false),
            answer_armed: AtomicBool::new(false),
            answer: Mutex::new(None),
            strikes: AtomicU64::new(0),
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

    /// Clears every fault.
    pub fn clear(&self) {
        self.delay_ms.store(0, Ordering::SeqCst);
        self.exec_delay_ms.store(0, Ordering::SeqCst);
        self.stall.store(0, Ordering::SeqCst);
        self.fail_durable_sync.store(false, Ordering::SeqCst);
        self.refuse_connections.store(false, Ordering::SeqCst);
        *self.answer.lock().unwrap() = None;
        self.answer_armed.store(false, Ordering::SeqCst);
    }

    /// Applies the fields of a control `set` request; all are validated first, so a
    /// bad request changes nothing.
    pub fn apply(&self, fields: &Map<String, Value>) -> Result<(), String> {
        let mut delay = None;
        let mut exec_delay = None;
        let mut stall = None;
        let mut fail_sync = None;
        let mut refuse = None;
        let mut answer = None;
        for (name, v) in fields {
            match name.as_str() {
                "op" => {}
                "delay_ms" => delay = Some(as_u64(name, v)?),
                "exec_delay_ms" => exec_delay = Some(as_u64(name, v)?),
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
                other => return Err(format!("unknown fault field '{other}'")),
            }
        }
        if let Some(v) = delay {
            self.delay_ms.store(v, Ordering::SeqCst);
        }
        if let Some(v) = exec_delay {
            self.exec_delay_ms.store(v, Ordering::SeqCst);
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
        json!({
            "delay_ms": self.delay_ms(),
            "exec_delay_ms": self.exec_delay_ms(),
            "stall": self.stall().name(),
            "fail_durable_sync": self.fail_durable_sync(),
            "refuse_connections": self.refuse_connections(),
            "answer_fault": answer,
            "answer_faults_applied": self.strikes(),
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
    }
}
