//! Client of the control port (fault injection and status; protocol in the README).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use serde_json::{json, Value};

use crate::wire::Conn;

/// Counters of the control `status` op.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub connections_accepted: u64,
    /// Accepted and not yet closed: `active + queued`.
    pub connections_open: u64,
    /// Owned by a worker.
    pub connections_active: u64,
    /// Accepted, waiting for a free worker, not read.
    pub connections_queued: u64,
    pub requests_received: u64,
    pub requests_answered: u64,
    pub listening: bool,
    /// The whole answer.
    pub raw: Value,
}

/// A mangled-answer fault (see the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFault {
    Close,
    CloseMidFrame,
    BadCrc,
    Garbage,
}

impl AnswerFault {
    fn name(self) -> &'static str {
        match self {
            AnswerFault::Close => "close",
            AnswerFault::CloseMidFrame => "close_mid_frame",
            AnswerFault::BadCrc => "bad_crc",
            AnswerFault::Garbage => "garbage",
        }
    }
}

/// Talks to a daemon's control port; one short connection per call.
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: SocketAddr,
}

impl ControlClient {
    pub fn new(port: u16) -> ControlClient {
        ControlClient {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        }
    }

    /// Sends a raw control request; an `ok:false` answer is an error.
    pub fn call(&self, request: Value) -> io::Result<Value> {
        let answer = Conn::connect(self.addr)?.call(&request)?;
        if answer.get("ok") == Some(&Value::Bool(true)) {
            Ok(answer)
        } else {
            Err(io::Error::other(format!("control {request}: {answer}")))
        }
    }

    /// Sets fault fields (`{"delay_ms": 5}` …); others keep their value.
    pub fn set(&self, fields: Value) -> io::Result<Value> {
        let mut req = fields;
        req.as_object_mut()
            .ok_or_else(|| io::Error::other("fields must be an object"))?
            .insert("op".into(), "set".into());
        self.call(req)
    }

    /// Clears every fault (and rebinds the data port if it was refusing).
    pub fn clear(&self) -> io::Result<()> {
        self.call(json!({"op": "clear"})).map(drop)
    }

    pub fn status(&self) -> io::Result<Status> {
        let raw = self.call(json!({"op": "status"}))?;
        let n = |k: &str| raw.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(Status {
            connections_accepted: n("connections_accepted"),
            connections_open: n("connections_open"),
            connections_active: n("connections_active"),
            connections_queued: n("connections_queued"),
            requests_received: n("requests_received"),
            requests_answered: n("requests_answered"),
            listening: raw
                .get("listening")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            raw,
        })
    }

    /// Delays every answer by `ms` (0 clears).
    pub fn delay(&self, ms: u64) -> io::Result<()> {
        self.set(json!({"delay_ms": ms})).map(drop)
    }

    /// Sleeps `ms` inside execution, holding an in-flight slot (0 clears).
    pub fn exec_delay(&self, ms: u64) -> io::Result<()> {
        self.set(json!({"exec_delay_ms": ms})).map(drop)
    }

    /// Reads requests but never answers them; `execute` decides whether they run.
    pub fn stall(&self, execute: bool) -> io::Result<()> {
        let mode = if execute { "after_exec" } else { "before_exec" };
        self.set(json!({"stall": mode})).map(drop)
    }

    pub fn unstall(&self) -> io::Result<()> {
        self.set(json!({"stall": "off"})).map(drop)
    }

    /// After `after` more requests are answered normally, the next one (on whichever
    /// connection) is not executed and its connection is closed without an answer.
    pub fn close_after(&self, after: u64) -> io::Result<()> {
        self.answer_fault(AnswerFault::Close, after, 1, false)
    }

    /// Arms a mangled-answer fault: after `after` normal answers, `count` answers
    /// (0 = all from then on) are mangled; `execute` decides whether they run.
    pub fn answer_fault(
        &self,
        kind: AnswerFault,
        after: u64,
        count: u64,
        execute: bool,
    ) -> io::Result<()> {
        self.set(json!({"answer_fault": {
            "kind": kind.name(), "after": after, "count": count, "execute": execute
        }}))
        .map(drop)
    }

    /// Sends `bytes` instead of the next answer (executed).
    pub fn garbage(&self, bytes: &[u8]) -> io::Result<()> {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.set(json!({"answer_fault": {"kind": "garbage", "hex": hex}}))
            .map(drop)
    }

    /// Closes the data listener (connects fail with ECONNREFUSED) or rebinds it.
    pub fn refuse_connections(&self, refuse: bool) -> io::Result<()> {
        self.set(json!({"refuse_connections": refuse})).map(drop)
    }

    /// Makes every durable sync fail, on all stores.
    pub fn fail_durable_sync(&self, fail: bool) -> io::Result<()> {
        self.set(json!({"fail_durable_sync": fail})).map(drop)
    }

    /// Seq order ≠ visibility order: a fact whose seq is a multiple of `every` (in
    /// `store`, or in all stores) stays invisible to every read for `lag_ms` after its
    /// insert, while later seqs are visible at once.
    pub fn visibility_lag(&self, every: u64, lag_ms: u64, store: Option<&str>) -> io::Result<()> {
        self.set(json!({"visibility_lag": {"every": every, "lag_ms": lag_ms, "store": store}}))
            .map(drop)
    }

    /// Every `every`-th insert (in `store`, or in all stores) burns one seq number first,
    /// which is never stored: a gap that never fills. `count` strikes, then the knob
    /// turns itself off (0 = no limit).
    pub fn skip_seq(&self, every: u64, count: u64, store: Option<&str>) -> io::Result<()> {
        self.set(json!({"skip_seq": {"every": every, "count": count, "store": store}}))
            .map(drop)
    }

    /// Cuts every open data connection (shutdown both ways); returns how many.
    pub fn drop_connections(&self) -> io::Result<u64> {
        let a = self.call(json!({"op": "drop_connections"}))?;
        Ok(a.get("dropped").and_then(Value::as_u64).unwrap_or(0))
    }
}
