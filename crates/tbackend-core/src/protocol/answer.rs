//! What a daemon answer means: the status table (every status a soft result can carry,
//! listed in the README's "The client", with what each one says) and the error
//! taxonomy of docs/protocol.md §4.
//!
//! The daemon tells most errors apart only by their text, and a few by `error_code`;
//! [`classify`] turns an answer body into the soft result every client call returns.
//! [`Status::row`] is the one home of what a status means: the client, the async
//! writer, the binding and (as `ActsAsTbackend::STATUSES`) every Ruby list read it.

use serde_json::Value;
use std::fmt;
use std::ptr::NonNull;
use thiserror::Error;

use super::tree::Json;

/// The kind of operation an answer belongs to: the status table depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `write_fact_once` (and the legacy `write_fact`): answers carry `committed`.
    Write,
    /// Any read (`latest_for`, `facts_for`, `facts_by_seq`, `size`, …).
    Read,
    /// `ping`.
    Ping,
    /// `metrics`: its answers carry no `ok` at all.
    Metrics,
}

/// The `status` of a soft result, spelt exactly as the 0.2 gem spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// A write was inserted.
    CommittedAcked,
    /// A write found the same fact already stored: nothing new, nothing lost.
    IdempotentReplay,
    /// The overload limiter refused the request before it ran; retry with backoff.
    RejectedBeforeCommit,
    /// The id is taken by a fact with another key or value; never retry.
    DuplicateFactIdConflict,
    /// The daemon answered with any other failure.
    Error,
    /// A ping, read or metrics call succeeded.
    Ok,
    /// Could not connect: nothing was sent.
    Unavailable,
    /// Sent, but no valid answer came back: the request may or may not have run.
    TimeoutUnknown,
    /// The circuit breaker is open: nothing was sent.
    CircuitOpen,
    /// The connector is switched off: nothing was sent, and that is not a failure.
    Disabled,
    /// The gem's configuration cannot work: nothing was sent.
    ConfigError,
    /// The async writer queued the fact; it is delivered later.
    Enqueued,
    /// The async writer's queue stayed full: the fact was not queued.
    QueueFull,
    /// The async writer's queue was full and its policy drops: the fact was not queued.
    Dropped,
}

/// The flags of a soft result that a status fixes when no daemon answer says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flags {
    /// The call succeeded.
    pub ok: bool,
    /// Whether the fact is stored; `None` when nobody can tell.
    pub committed: Option<bool>,
    /// Whether retrying can help; `None` when nobody can tell.
    pub retryable: Option<bool>,
}

/// One row of the status table: what a status says about the call it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Row {
    /// `ok` / `committed` / `retryable`. Only [`Status::Error`] takes `committed` and
    /// `retryable` from the daemon's answer; its row (`false` / `None` / `None`) is what
    /// holds when there is none.
    pub flags: Flags,
    /// No valid daemon answer came back: strict mode raises [`Row::error_class`].
    pub transport: bool,
    /// Nothing was stored, or nobody knows whether it was, and sending the same fact
    /// again may succeed: its id makes a repeat a replay, so a retry is safe.
    pub retry_safe: bool,
    /// The error kind of a result with this status, unless the daemon's answer names a
    /// finer one (only for [`Status::Error`]).
    pub kind: ErrorKind,
    /// The Ruby error class strict mode raises for this status, also named at the head
    /// of its error text.
    pub error_class: Option<&'static str>,
}

impl Status {
    /// Every status, in the order of the soft-result table.
    pub const ALL: [Status; 14] = [
        Status::IdempotentReplay,
        Status::CommittedAcked,
        Status::RejectedBeforeCommit,
        Status::DuplicateFactIdConflict,
        Status::Error,
        Status::Ok,
        Status::Unavailable,
        Status::TimeoutUnknown,
        Status::CircuitOpen,
        Status::Disabled,
        Status::ConfigError,
        Status::Enqueued,
        Status::QueueFull,
        Status::Dropped,
    ];

    /// The name Ruby sees in `result[:status]`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::CommittedAcked => "committed_acked",
            Status::IdempotentReplay => "idempotent_replay",
            Status::RejectedBeforeCommit => "rejected_before_commit",
            Status::DuplicateFactIdConflict => "duplicate_fact_id_conflict",
            Status::Error => "error",
            Status::Ok => "ok",
            Status::Unavailable => "unavailable",
            Status::TimeoutUnknown => "timeout_unknown",
            Status::CircuitOpen => "circuit_open",
            Status::Disabled => "disabled",
            Status::ConfigError => "config_error",
            Status::Enqueued => "enqueued",
            Status::QueueFull => "queue_full",
            Status::Dropped => "dropped",
        }
    }

    /// The status table: this status's row.
    pub const fn row(self) -> Row {
        use ErrorKind as K;
        const T: Option<bool> = Some(true);
        const F: Option<bool> = Some(false);
        const N: Option<bool> = None;
        // (ok, committed, retryable, transport, retry_safe, kind, strict-mode class)
        let (ok, committed, retryable, transport, retry_safe, kind, error_class) = match self {
            Status::CommittedAcked => (true, T, F, false, false, K::None, None),
            Status::IdempotentReplay => (true, T, F, false, false, K::None, None),
            Status::RejectedBeforeCommit => (false, F, T, false, true, K::Overloaded, None),
            Status::DuplicateFactIdConflict => (false, F, F, false, false, K::Conflict, None),
            Status::Error => (false, N, N, false, false, K::Other, None),
            Status::Ok => (true, N, F, false, false, K::None, None),
            Status::Unavailable => (
                false,
                N,
                T,
                true,
                true,
                K::NotApplied,
                Some("ActsAsTbackend::ConnectionError"),
            ),
            Status::TimeoutUnknown => (
                false,
                N,
                N,
                true,
                true,
                K::OutcomeUnknown,
                Some("ActsAsTbackend::TimeoutError"),
            ),
            Status::CircuitOpen => (
                false,
                N,
                T,
                true,
                true,
                K::NotApplied,
                Some("ActsAsTbackend::CircuitOpenError"),
            ),
            Status::Disabled => (true, N, F, false, false, K::None, None),
            Status::ConfigError => (false, N, F, false, false, K::Config, None),
            Status::Enqueued => (true, N, F, false, false, K::None, None),
            Status::QueueFull => (false, F, T, false, true, K::NotApplied, None),
            Status::Dropped => (false, F, T, false, true, K::NotApplied, None),
        };
        Row {
            flags: Flags {
                ok,
                committed,
                retryable,
            },
            transport,
            retry_safe,
            kind,
            error_class,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, finer than [`Status`]: tells a configuration problem from a bug
/// from a transient failure, which the daemon mostly says only in prose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Nothing went wrong.
    None,
    /// `duplicate_fact_id_conflict`: the id holds another key or value. Permanent.
    Conflict,
    /// `value_hash_mismatch`: a strict-hash write sent a wrong `value_hash`. Permanent.
    HashMismatch,
    /// `overloaded`: refused before running; retry with backoff.
    Overloaded,
    /// The request may have taken effect: `durable sync failed` (the fact IS stored,
    /// only its fsync failed), any other retryable answer without a code, or a request
    /// sent without a valid answer. Retry with the same fact id.
    OutcomeUnknown,
    /// Certainly not applied and safe to retry: `WAL write failed`, or nothing was
    /// sent (could not connect, breaker open).
    NotApplied,
    /// `Authentication failed…`: a missing or unknown token. A configuration problem.
    Auth,
    /// `Access denied…`: the token's role or stores do not allow this. A configuration
    /// problem.
    AccessDenied,
    /// The gem's own configuration cannot work (`config_error`): nothing was sent.
    Config,
    /// The request itself is wrong, so retrying cannot help: `Invalid fact data…`,
    /// `Invalid store name`, `Missing…`, `Invalid JSON request…`, `Unknown operation…`.
    ClientBug,
    /// Any other failure.
    Other,
}

impl ErrorKind {
    /// A stable snake_case name for logs and the Ruby side.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::None => "none",
            ErrorKind::Conflict => "conflict",
            ErrorKind::HashMismatch => "hash_mismatch",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::NotApplied => "not_applied",
            ErrorKind::Auth => "auth",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::Config => "config",
            ErrorKind::ClientBug => "client_bug",
            ErrorKind::Other => "other",
        }
    }

    /// Reads an error from its `error_code` (when the daemon gave one) and its text.
    ///
    /// `retryable` matters only for answers with no code and unrecognised text: the
    /// daemon marks "maybe stored" failures retryable without a code, so an unknown
    /// retryable error is treated as one (the safe reading for an idempotent write).
    pub fn from_error(code: Option<&str>, text: Option<&str>, retryable: Option<bool>) -> Self {
        match code {
            Some("duplicate_fact_id_conflict") => return ErrorKind::Conflict,
            Some("value_hash_mismatch") => return ErrorKind::HashMismatch,
            Some("overloaded") => return ErrorKind::Overloaded,
            _ => {}
        }
        let text = text.unwrap_or("");
        const CLIENT_BUG: [&str; 5] = [
            "Invalid fact data",
            "Invalid store name",
            "Missing ",
            "Invalid JSON request",
            "Unknown operation",
        ];
        if text.starts_with("durable sync failed") {
            ErrorKind::OutcomeUnknown
        } else if text.starts_with("WAL write failed") {
            ErrorKind::NotApplied
        } else if text.starts_with("Authentication failed") {
            ErrorKind::Auth
        } else if text.starts_with("Access denied") {
            ErrorKind::AccessDenied
        } else if CLIENT_BUG.iter().any(|prefix| text.starts_with(prefix)) {
            ErrorKind::ClientBug
        } else if code.is_none() && retryable == Some(true) {
            ErrorKind::OutcomeUnknown
        } else {
            ErrorKind::Other
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified answer: the soft result minus what only the client knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    /// The row of the status table.
    pub status: Status,
    /// Whether the call succeeded.
    pub ok: bool,
    /// Whether the fact is stored; `None` when nobody can tell.
    pub committed: Option<bool>,
    /// Whether retrying can help; `None` when nobody can tell.
    pub retryable: Option<bool>,
    /// The finer reason, [`ErrorKind::None`] on success.
    pub kind: ErrorKind,
    /// The daemon's `error` (a non-string one rendered as JSON), or our description
    /// of a malformed answer; `None` on success.
    pub error: Option<String>,
    /// The whole answer object, as received.
    pub answer: Answer,
}

/// A daemon answer object as it came (nothing when there was none), read once, in place:
/// [`Answer::tree`] borrows its strings from the bytes received. [`classify`] reads it
/// for the status and the binding hands the same tree to Ruby, so an answer is parsed
/// once per call.
pub struct Answer {
    // Borrows from `bytes`, so it is declared (and dropped) first.
    tree: Json<'static>,
    bytes: Bytes,
}

impl Answer {
    /// No answer: the call got none.
    pub fn none() -> Answer {
        Answer {
            tree: Json::Null,
            bytes: Bytes::new(Vec::new()),
        }
    }

    fn parse(body: Vec<u8>) -> serde_json::Result<Answer> {
        let bytes = Bytes::new(body);
        // SAFETY: the tree borrows `bytes`' heap block, which stays where it is, unchanged,
        // until `bytes` drops, after the tree (field order). `'static` never leaves this
        // type: `tree()` lends the tree for as long as `&self` only.
        let tree =
            unsafe { std::mem::transmute::<Json<'_>, Json<'static>>(Json::parse(bytes.get())?) };
        Ok(Answer { tree, bytes })
    }

    /// An answer made from an object (a part taken out of one, say).
    pub fn of_object(object: &serde_json::Map<String, Value>) -> Answer {
        let body = serde_json::to_vec(object).expect("writing to a Vec cannot fail");
        Answer::parse(body).expect("serde_json wrote one JSON object")
    }

    /// Whether there is no answer.
    pub fn is_none(&self) -> bool {
        self.bytes.get().is_empty()
    }

    /// The answer's bytes, as received.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.get()
    }

    /// The answer, `Json::Null` when there is none.
    pub fn tree(&self) -> &Json<'_> {
        &self.tree
    }

    /// The answer as a `serde_json::Value`, `Value::Null` when there is none.
    pub fn value(&self) -> Value {
        self.tree.to_value()
    }
}

impl Default for Answer {
    fn default() -> Self {
        Answer::none()
    }
}

impl Clone for Answer {
    fn clone(&self) -> Self {
        if self.is_none() {
            return Answer::none();
        }
        Answer::parse(self.bytes().to_vec()).expect("it parsed before")
    }
}

impl PartialEq for Answer {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

/// Owned bytes held by a raw pointer: moving their owner asserts nothing about them, so
/// a tree may keep borrowing them while the owner moves.
struct Bytes(NonNull<[u8]>);

impl Bytes {
    fn new(body: Vec<u8>) -> Bytes {
        Bytes(NonNull::from(Box::leak(body.into_boxed_slice())))
    }

    fn get(&self) -> &[u8] {
        // SAFETY: the block is ours, alive until drop, and never written after `new`.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        // SAFETY: made by `Box::leak` in `new`, freed only here.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

// SAFETY: plain bytes, owned, never written after `new`: like a `Box<[u8]>`.
unsafe impl Send for Bytes {}
unsafe impl Sync for Bytes {}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Answer({:?})", String::from_utf8_lossy(self.bytes()))
    }
}

impl Classified {
    /// The result of a call that got no daemon answer (or, for a daemon status, its
    /// row without an answer, which is what test doubles need).
    pub fn transport(status: Status, error: Option<String>) -> Self {
        let Row { flags, kind, .. } = status.row();
        Classified {
            status,
            ok: flags.ok,
            committed: flags.committed,
            retryable: flags.retryable,
            kind,
            error,
            answer: Answer::none(),
        }
    }
}

/// The answer body could not be read as an answer at all. The request was sent and
/// may have run, so the client reports [`Status::TimeoutUnknown`]
/// (see [`AnswerError::into_classified`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AnswerError {
    /// The body is not one JSON value (empty, truncated, invalid UTF-8, garbage after it).
    #[error("daemon answer is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("daemon answer is a JSON {0}, not an object")]
    NotObject(&'static str),
}

impl AnswerError {
    /// The soft result for a request whose answer was unreadable.
    pub fn into_classified(self) -> Classified {
        Classified::transport(Status::TimeoutUnknown, Some(self.to_string()))
    }
}

/// Classifies the answer body of an `op` request.
pub fn classify(op: OpKind, body: &[u8]) -> Result<Classified, AnswerError> {
    classify_owned(op, body.to_vec())
}

/// [`classify`], keeping `body` as the answer without a copy.
pub fn classify_owned(op: OpKind, body: Vec<u8>) -> Result<Classified, AnswerError> {
    let answer = Answer::parse(body).map_err(|e| AnswerError::NotJson(e.to_string()))?;
    let mut classified = match answer.tree() {
        tree @ Json::Object(_) => classify_object(op, tree),
        other => return Err(AnswerError::NotObject(other.type_name())),
    };
    classified.answer = answer;
    Ok(classified)
}

/// Classifies an answer already parsed into an object (its `answer` left empty).
fn classify_object(op: OpKind, answer: &Json<'_>) -> Classified {
    let ok_field = answer.get("ok");
    let ok = ok_field == Some(&Json::Bool(true));
    let committed = answer.get("committed").and_then(Json::as_bool);
    let retryable = answer.get("retryable").and_then(Json::as_bool);
    let code = answer.get("error_code").and_then(Json::as_str);

    let status = match op {
        OpKind::Write if ok && committed == Some(true) => {
            if answer.get("idempotent_replay") == Some(&Json::Bool(true)) {
                Some(Status::IdempotentReplay)
            } else {
                Some(Status::CommittedAcked)
            }
        }
        // The limiter runs before the op is even looked up, so every op can be
        // refused this way, and none of them ran.
        _ if code == Some("overloaded") && committed == Some(false) => {
            Some(Status::RejectedBeforeCommit)
        }
        OpKind::Write if code == Some("duplicate_fact_id_conflict") => {
            Some(Status::DuplicateFactIdConflict)
        }
        OpKind::Read | OpKind::Ping if ok => Some(Status::Ok),
        // Only `metrics` answers without `ok`; an `ok: false` is still a failure
        // (e.g. a read-only token is denied it).
        OpKind::Metrics if ok || ok_field.is_none() => Some(Status::Ok),
        _ => None,
    };
    let daemon_error = match answer.get("error") {
        None | Some(Json::Null) => None,
        Some(Json::Str(text)) => Some(text.as_ref().to_owned()),
        Some(other) => Some(other.to_string()),
    };
    match status {
        Some(status @ (Status::RejectedBeforeCommit | Status::DuplicateFactIdConflict)) => {
            Classified::transport(status, daemon_error)
        }
        Some(status) => Classified::transport(status, None),
        None => {
            let kind =
                ErrorKind::from_error(code, answer.get("error").and_then(Json::as_str), retryable);
            let error = daemon_error.or_else(|| Some(describe_missing_error(op, ok_field)));
            Classified {
                status: Status::Error,
                ok: false,
                committed,
                retryable,
                kind,
                error,
                answer: Answer::none(),
            }
        }
    }
}

/// Says what was wrong with a failed answer that carries no `error` of its own, so a
/// log line never reads `error=nil` for a failure.
fn describe_missing_error(op: OpKind, ok: Option<&Json<'_>>) -> String {
    match ok {
        None => "daemon answer has no `ok` field".to_owned(),
        Some(Json::Bool(true)) if op == OpKind::Write => {
            "daemon answered ok to a write without `committed: true`".to_owned()
        }
        Some(Json::Bool(_)) => "daemon answered ok:false without an error message".to_owned(),
        Some(other) => format!("daemon answer has a non-boolean `ok`: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(op: OpKind, body: &str) -> Classified {
        classify(op, body.as_bytes()).unwrap()
    }

    #[test]
    fn an_answer_keeps_its_tree_as_it_moves_and_is_copied() {
        let body = br#"{"fact":{"id":"x","value":{"s":"q\"r"}},"ok":true}"#;
        let answer = classify(OpKind::Read, body).unwrap().answer;
        let moved = std::thread::spawn(move || answer).join().unwrap();
        let copy = moved.clone();
        assert_eq!(copy, moved);
        drop(moved);
        let id = copy.tree().get("fact").and_then(|f| f.get("id"));
        assert_eq!(id.and_then(Json::as_str), Some("x"));
        assert_eq!(copy.value()["fact"]["value"]["s"], "q\"r");
        assert_eq!(copy.bytes(), body);
        assert!(Answer::none().is_none() && Answer::none().tree() == &Json::Null);
    }

    fn flags(r: &Classified) -> (bool, Option<bool>, Option<bool>) {
        (r.ok, r.committed, r.retryable)
    }

    // Answers below are copied from transcripts.jsonl (compact, keys sorted as the
    // daemon sends them).

    #[test]
    fn write_inserted() {
        let r = c(
            OpKind::Write,
            r#"{"committed":true,"durability":"accepted","idempotent_replay":false,"ok":true,"seq_id":1}"#,
        );
        assert_eq!(r.status, Status::CommittedAcked);
        assert_eq!(flags(&r), (true, Some(true), Some(false)));
        assert_eq!(r.kind, ErrorKind::None);
        assert_eq!(r.error, None);
        assert_eq!(r.answer.value()["seq_id"], 1);
    }

    #[test]
    fn write_replayed() {
        let r = c(
            OpKind::Write,
            r#"{"committed":true,"durability":"durable","idempotent_replay":true,"ok":true,"seq_id":1}"#,
        );
        assert_eq!(r.status, Status::IdempotentReplay);
        assert_eq!(flags(&r), (true, Some(true), Some(false)));
    }

    #[test]
    fn write_in_memory_ack_with_warning_is_still_committed() {
        let r = c(
            OpKind::Write,
            r#"{"committed":true,"durability":"in_memory","idempotent_replay":false,"ok":true,"seq_id":2,"warning":"durable requested but daemon is ephemeral (no WAL); ack is in_memory, NOT durable"}"#,
        );
        assert_eq!(r.status, Status::CommittedAcked);
    }

    #[test]
    fn legacy_write_fact_without_idempotent_replay_is_committed() {
        let r = c(
            OpKind::Write,
            r#"{"committed":true,"durability":"accepted","ok":true,"seq_id":17}"#,
        );
        assert_eq!(r.status, Status::CommittedAcked);
    }

    #[test]
    fn write_conflict() {
        let r = c(
            OpKind::Write,
            r#"{"committed":false,"error":"Duplicate fact id conflict","error_code":"duplicate_fact_id_conflict","existing_key":"order-1","existing_value_hash":"81e6034f5e9809b4713ee7adc1361e4af05ea9a7beb4c90f7fd31a9b65d80d32","ok":false,"retryable":false}"#,
        );
        assert_eq!(r.status, Status::DuplicateFactIdConflict);
        assert_eq!(flags(&r), (false, Some(false), Some(false)));
        assert_eq!(r.kind, ErrorKind::Conflict);
        assert_eq!(r.error.as_deref(), Some("Duplicate fact id conflict"));
        assert_eq!(r.answer.value()["existing_key"], "order-1");
    }

    #[test]
    fn conflict_code_ignores_the_daemon_flags() {
        // The table fixes false/false/false whatever the answer says.
        let r = c(
            OpKind::Write,
            r#"{"error":"Duplicate fact id conflict","error_code":"duplicate_fact_id_conflict","ok":false}"#,
        );
        assert_eq!(r.status, Status::DuplicateFactIdConflict);
        assert_eq!(flags(&r), (false, Some(false), Some(false)));
    }

    const OVERLOADED: &str = r#"{"committed":false,"error":"TBackend overloaded: max in-flight request limit reached","error_code":"overloaded","max_inflight_requests":2,"ok":false,"retryable":true}"#;

    #[test]
    fn overload_is_rejected_before_commit_for_every_op() {
        for op in [OpKind::Write, OpKind::Read, OpKind::Ping, OpKind::Metrics] {
            let r = c(op, OVERLOADED);
            assert_eq!(r.status, Status::RejectedBeforeCommit, "{op:?}");
            assert_eq!(flags(&r), (false, Some(false), Some(true)));
            assert_eq!(r.kind, ErrorKind::Overloaded);
            assert_eq!(
                r.error.as_deref(),
                Some("TBackend overloaded: max in-flight request limit reached")
            );
        }
    }

    #[test]
    fn overload_without_committed_false_is_a_plain_error() {
        let r = c(
            OpKind::Write,
            r#"{"error":"TBackend overloaded","error_code":"overloaded","ok":false,"retryable":true}"#,
        );
        assert_eq!(r.status, Status::Error);
        assert_eq!(flags(&r), (false, None, Some(true)));
        assert_eq!(r.kind, ErrorKind::Overloaded);
    }

    #[test]
    fn durable_sync_failure_passes_flags_through_and_is_outcome_unknown() {
        let r = c(
            OpKind::Write,
            r#"{"committed":false,"durability":"accepted","error":"durable sync failed: injected fdatasync fault","idempotent_replay":false,"ok":false,"retryable":true,"seq_id":2}"#,
        );
        assert_eq!(r.status, Status::Error);
        assert_eq!(flags(&r), (false, Some(false), Some(true)));
        assert_eq!(r.kind, ErrorKind::OutcomeUnknown);
        assert_eq!(
            r.error.as_deref(),
            Some("durable sync failed: injected fdatasync fault")
        );
    }

    #[test]
    fn strict_hash_mismatch() {
        let r = c(
            OpKind::Write,
            r#"{"client_value_hash":"deadbeef","committed":false,"error":"client value_hash does not match server canonical hash","error_code":"value_hash_mismatch","ok":false,"retryable":false,"server_value_hash":"d59b6562d7c9b121bc9760873d787890ef4d429aad33a70b405baa0fa08a1f53"}"#,
        );
        assert_eq!(r.status, Status::Error);
        assert_eq!(flags(&r), (false, Some(false), Some(false)));
        assert_eq!(r.kind, ErrorKind::HashMismatch);
    }

    #[test]
    fn wal_write_failure_is_not_applied() {
        let r = c(
            OpKind::Write,
            r#"{"error":"WAL write failed: No space left on device (os error 28)","ok":false}"#,
        );
        assert_eq!(r.status, Status::Error);
        assert_eq!(flags(&r), (false, None, None));
        assert_eq!(r.kind, ErrorKind::NotApplied);
    }

    #[test]
    fn auth_and_acl_errors() {
        let cases = [
            (
                OpKind::Ping,
                r#"{"error":"Authentication failed: missing 'token' parameter","ok":false}"#,
                ErrorKind::Auth,
            ),
            (
                OpKind::Ping,
                r#"{"error":"Authentication failed: invalid token","ok":false}"#,
                ErrorKind::Auth,
            ),
            (
                OpKind::Read,
                r#"{"error":"Access denied: token not authorized for store 'ledger_b'","ok":false}"#,
                ErrorKind::AccessDenied,
            ),
            (
                OpKind::Write,
                r#"{"error":"Access denied: role 'read_only' cannot execute operation 'write_fact_once'","ok":false}"#,
                ErrorKind::AccessDenied,
            ),
            (
                OpKind::Metrics,
                r#"{"error":"Access denied: role 'read_only' cannot execute operation 'metrics'","ok":false}"#,
                ErrorKind::AccessDenied,
            ),
        ];
        for (op, body, kind) in cases {
            let r = c(op, body);
            assert_eq!(r.status, Status::Error, "{body}");
            assert_eq!(flags(&r), (false, None, None), "{body}");
            assert_eq!(r.kind, kind, "{body}");
            assert!(r.error.unwrap().starts_with(&kind_prefix(kind)));
        }
    }

    fn kind_prefix(kind: ErrorKind) -> String {
        match kind {
            ErrorKind::Auth => "Authentication failed".into(),
            ErrorKind::AccessDenied => "Access denied".into(),
            _ => String::new(),
        }
    }

    #[test]
    fn client_bugs() {
        for text in [
            "Invalid fact data: missing field `id`",
            "Invalid fact data: invalid type: string \"abc\", expected struct FactData",
            "Invalid store name",
            "Missing 'fact' parameter",
            "Missing 'store' parameter",
            "Missing 'key' parameter",
            "Invalid JSON request: EOF while parsing a value at line 1 column 0",
            "Unknown operation: ",
            "Unknown operation: nope",
        ] {
            let body = serde_json::json!({"error": text, "ok": false}).to_string();
            for op in [OpKind::Write, OpKind::Read] {
                let r = c(op, &body);
                assert_eq!(r.status, Status::Error);
                assert_eq!(r.kind, ErrorKind::ClientBug, "{text}");
                assert_eq!(r.error.as_deref(), Some(text));
            }
        }
    }

    #[test]
    fn other_errors() {
        let r = c(
            OpKind::Read,
            r#"{"error":"Cannot delete the last remaining admin token (Lockout Prevention)","ok":false}"#,
        );
        assert_eq!((r.status, r.kind), (Status::Error, ErrorKind::Other));
        let r = c(
            OpKind::Read,
            r#"{"compaction_enabled":false,"error":"compaction disabled; start daemon with --enable-compaction true for safe manual compaction","error_code":"compaction_disabled","ok":false}"#,
        );
        assert_eq!((r.status, r.kind), (Status::Error, ErrorKind::Other));
    }

    #[test]
    fn unknown_retryable_error_without_code_is_outcome_unknown() {
        let r = c(
            OpKind::Write,
            r#"{"error":"something new","ok":false,"retryable":true}"#,
        );
        assert_eq!(r.kind, ErrorKind::OutcomeUnknown);
        assert_eq!(flags(&r), (false, None, Some(true)));
    }

    #[test]
    fn non_bool_flags_become_none() {
        let r = c(
            OpKind::Write,
            r#"{"committed":"no","error":"x","ok":false,"retryable":1}"#,
        );
        assert_eq!(flags(&r), (false, None, None));
    }

    #[test]
    fn ping_and_reads() {
        let r = c(OpKind::Ping, r#"{"ok":true,"pong":true}"#);
        assert_eq!(r.status, Status::Ok);
        assert_eq!(flags(&r), (true, None, Some(false)));
        let r = c(
            OpKind::Read,
            r#"{"fact":{"causation":null,"derivation":null,"id":"a:1","key":"k","origin_node":null,"producer":null,"schema_version":1,"seq_id":1,"store":"ledger_a","transaction_time":1780387000.0,"valid_time":null,"value":{"v":1},"value_hash":"a122c9c1c4a049739faab492b1836cad8d709d1215698427ba3592174b01743f"},"ok":true}"#,
        );
        assert_eq!(r.status, Status::Ok);
        assert_eq!(r.answer.value()["fact"]["value"]["v"], 1);
        let r = c(OpKind::Read, r#"{"fact":null,"ok":true}"#);
        assert_eq!(r.status, Status::Ok);
        let r = c(OpKind::Read, r#"{"facts":[],"ok":true}"#);
        assert_eq!(r.status, Status::Ok);
    }

    #[test]
    fn a_write_answer_for_a_read_is_still_ok() {
        // Reads look at `ok` only.
        let r = c(
            OpKind::Read,
            r#"{"committed":true,"idempotent_replay":true,"ok":true}"#,
        );
        assert_eq!(r.status, Status::Ok);
        assert_eq!(flags(&r), (true, None, Some(false)));
    }

    #[test]
    fn a_read_answer_for_a_write_is_an_error() {
        let r = c(OpKind::Write, r#"{"ok":true,"pong":true}"#);
        assert_eq!(r.status, Status::Error);
        assert_eq!(flags(&r), (false, None, None));
        assert_eq!(
            r.error.as_deref(),
            Some("daemon answered ok to a write without `committed: true`")
        );
    }

    #[test]
    fn metrics_without_ok_is_success() {
        let r = c(
            OpKind::Metrics,
            r#"{"active_connections":1,"average_latency_us":178.5681818181818,"bytes_read":15702,"bytes_written":43775,"errors_encountered":48,"ops":{"facts_for":7,"latest_for":12,"metrics":2,"ping":17,"query_scope":5,"size":6,"write_fact":5,"write_fact_once":51},"overload_rejections":0,"total_latency_us":23571,"total_requests":132}"#,
        );
        assert_eq!(r.status, Status::Ok);
        assert_eq!(flags(&r), (true, None, Some(false)));
        assert_eq!(r.answer.value()["ops"]["ping"], 17);
    }

    #[test]
    fn answers_without_ok_fail_except_for_metrics() {
        // What the daemon echoes for a request with a top-level `error` key.
        let echo = r#"{"error":"x","op":"ping","token":"secret"}"#;
        for op in [OpKind::Write, OpKind::Read, OpKind::Ping] {
            let r = c(op, echo);
            assert_eq!(r.status, Status::Error);
            assert_eq!(flags(&r), (false, None, None));
            assert_eq!(r.error.as_deref(), Some("x"));
        }
        let r = c(OpKind::Ping, r#"{"pong":true}"#);
        assert_eq!(r.status, Status::Error);
        assert_eq!(r.error.as_deref(), Some("daemon answer has no `ok` field"));
        let r = c(OpKind::Read, r#"{"ok":"true"}"#);
        assert_eq!(r.status, Status::Error);
        assert_eq!(
            r.error.as_deref(),
            Some(r#"daemon answer has a non-boolean `ok`: "true""#)
        );
    }

    #[test]
    fn non_string_error_is_rendered_as_json() {
        let r = c(
            OpKind::Read,
            r#"{"error":1,"op":"facts_for","store":"ledger_a"}"#,
        );
        assert_eq!(r.error.as_deref(), Some("1"));
        assert_eq!(r.kind, ErrorKind::Other);
    }

    #[test]
    fn ok_false_without_error_text() {
        let r = c(OpKind::Read, r#"{"ok":false}"#);
        assert_eq!(r.status, Status::Error);
        assert_eq!(
            r.error.as_deref(),
            Some("daemon answered ok:false without an error message")
        );
    }

    #[test]
    fn unreadable_answers() {
        assert!(matches!(
            classify(OpKind::Ping, b""),
            Err(AnswerError::NotJson(_))
        ));
        assert!(matches!(
            classify(OpKind::Ping, b"hello"),
            Err(AnswerError::NotJson(_))
        ));
        assert!(matches!(
            classify(OpKind::Ping, br#"{"ok":true} xyz"#),
            Err(AnswerError::NotJson(_))
        ));
        assert!(matches!(
            classify(OpKind::Ping, b"{\"ok\":true,\"x\":\"\xff\"}"),
            Err(AnswerError::NotJson(_))
        ));
        assert_eq!(
            classify(OpKind::Ping, b"[1,2]"),
            Err(AnswerError::NotObject("array"))
        );
        assert_eq!(
            classify(OpKind::Metrics, b"\"ping\""),
            Err(AnswerError::NotObject("string"))
        );
        assert_eq!(
            classify(OpKind::Read, b"null"),
            Err(AnswerError::NotObject("null"))
        );
        let r = classify(OpKind::Write, b"[1,2]").unwrap_or_else(AnswerError::into_classified);
        assert_eq!(r.status, Status::TimeoutUnknown);
        assert_eq!(flags(&r), (false, None, None));
        assert_eq!(r.kind, ErrorKind::OutcomeUnknown);
        assert_eq!(
            r.error.as_deref(),
            Some("daemon answer is a JSON array, not an object")
        );
        assert!(r.answer.is_none());
    }

    #[test]
    fn surrounding_whitespace_is_fine() {
        let r = c(OpKind::Ping, "\n {\"ok\":true,\"pong\":true}\n");
        assert_eq!(r.status, Status::Ok);
    }

    #[test]
    fn the_table() {
        const T: Option<bool> = Some(true);
        const F: Option<bool> = Some(false);
        const N: Option<bool> = None;
        #[rustfmt::skip]
        let expect = [
            // status, ok, committed, retryable, transport, retry_safe, kind, strict-mode class
            (Status::IdempotentReplay, "idempotent_replay", true, T, F, false, false, ErrorKind::None, None),
            (Status::CommittedAcked, "committed_acked", true, T, F, false, false, ErrorKind::None, None),
            (Status::RejectedBeforeCommit, "rejected_before_commit", false, F, T, false, true, ErrorKind::Overloaded, None),
            (Status::DuplicateFactIdConflict, "duplicate_fact_id_conflict", false, F, F, false, false, ErrorKind::Conflict, None),
            (Status::Error, "error", false, N, N, false, false, ErrorKind::Other, None),
            (Status::Ok, "ok", true, N, F, false, false, ErrorKind::None, None),
            (Status::Unavailable, "unavailable", false, N, T, true, true, ErrorKind::NotApplied, Some("ActsAsTbackend::ConnectionError")),
            (Status::TimeoutUnknown, "timeout_unknown", false, N, N, true, true, ErrorKind::OutcomeUnknown, Some("ActsAsTbackend::TimeoutError")),
            (Status::CircuitOpen, "circuit_open", false, N, T, true, true, ErrorKind::NotApplied, Some("ActsAsTbackend::CircuitOpenError")),
            (Status::Disabled, "disabled", true, N, F, false, false, ErrorKind::None, None),
            (Status::ConfigError, "config_error", false, N, F, false, false, ErrorKind::Config, None),
            (Status::Enqueued, "enqueued", true, N, F, false, false, ErrorKind::None, None),
            (Status::QueueFull, "queue_full", false, F, T, false, true, ErrorKind::NotApplied, None),
            (Status::Dropped, "dropped", false, F, T, false, true, ErrorKind::NotApplied, None),
        ];
        // ALL lists every status once, in this order (config_error and the async
        // statuses were once left out of it).
        assert_eq!(Status::ALL.to_vec(), expect.map(|row| row.0).to_vec());
        for (status, name, ok, committed, retryable, transport, retry_safe, kind, class) in expect {
            assert_eq!(status.as_str(), name);
            assert_eq!(status.to_string(), name);
            let flags = Flags {
                ok,
                committed,
                retryable,
            };
            assert_eq!(
                status.row(),
                Row {
                    flags,
                    transport,
                    retry_safe,
                    kind,
                    error_class: class,
                },
                "{name}"
            );
            let t = Classified::transport(status, None);
            assert_eq!((t.ok, t.committed, t.retryable), (ok, committed, retryable));
            assert_eq!(t.kind, kind);
            assert!(t.answer.is_none());
        }
    }

    #[test]
    fn transport_kinds() {
        let t = Classified::transport(
            Status::Unavailable,
            Some("Errno::ECONNREFUSED: refused".into()),
        );
        assert_eq!(t.kind, ErrorKind::NotApplied);
        assert_eq!(t.error.as_deref(), Some("Errno::ECONNREFUSED: refused"));
        assert_eq!(
            Classified::transport(Status::CircuitOpen, None).kind,
            ErrorKind::NotApplied
        );
        assert_eq!(
            Classified::transport(Status::TimeoutUnknown, None).kind,
            ErrorKind::OutcomeUnknown
        );
        assert_eq!(
            Classified::transport(Status::Disabled, None).kind,
            ErrorKind::None
        );
    }

    #[test]
    fn classified_statuses_agree_with_the_table() {
        // Whatever classify returns for a fixed row must be that row's defaults.
        let bodies = [
            (
                OpKind::Write,
                r#"{"committed":true,"idempotent_replay":true,"ok":true}"#,
            ),
            (OpKind::Write, r#"{"committed":true,"ok":true}"#),
            (OpKind::Read, OVERLOADED),
            (
                OpKind::Write,
                r#"{"committed":true,"error_code":"duplicate_fact_id_conflict","ok":false,"retryable":true}"#,
            ),
            (OpKind::Ping, r#"{"ok":true}"#),
        ];
        for (op, body) in bodies {
            let r = c(op, body);
            assert_ne!(r.status, Status::Error);
            assert_eq!(
                Flags {
                    ok: r.ok,
                    committed: r.committed,
                    retryable: r.retryable
                },
                r.status.row().flags,
                "{body}"
            );
        }
    }
}
