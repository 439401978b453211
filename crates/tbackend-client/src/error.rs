//! [`TransportError`]: why no valid answer came back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// `host:port` of the daemon, shared by every error of one client.
pub type Endpoint = Arc<str>;

/// What a deadline was cut short waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Establishing the TCP connection: nothing was sent.
    Connect,
    /// Before anything was written: waiting for a connection opened by another
    /// thread or for room in a full pipeline, or out of time before sending.
    /// Nothing was sent.
    Queue,
    /// Waiting for the answer to a written request.
    Answer,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connecting",
            TimeoutPhase::Queue => "before sending (waiting for a connection or pipeline room)",
            TimeoutPhase::Answer => "waiting for the answer",
        })
    }
}

/// Why a call got no valid answer. Every message names `host:port`; none carries the
/// token or a request body.
///
/// Which status it maps to depends on whether the request may have been written, not
/// on the variant alone: see [`Outcome`](crate::Outcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Could not connect: refused, unreachable, DNS, or a lane backing off after such
    /// a failure.
    #[error("could not connect to {endpoint}: {detail}")]
    Connect {
        /// `host:port`.
        endpoint: Endpoint,
        /// The system's reason.
        detail: String,
    },
    /// A deadline passed.
    #[error("timed out after {} ms {phase} ({endpoint})", after.as_millis())]
    Timeout {
        /// `host:port`.
        endpoint: Endpoint,
        /// The budget that ran out.
        after: Duration,
        /// What was being waited for.
        phase: TimeoutPhase,
    },
    /// The daemon closed the connection before answering.
    #[error("connection to {endpoint} closed before the answer arrived")]
    Eof {
        /// `host:port`.
        endpoint: Endpoint,
    },
    /// An answer failed its CRC check; the connection was dropped.
    #[error("answer from {endpoint} failed its CRC check; connection dropped")]
    BadCrc {
        /// `host:port`.
        endpoint: Endpoint,
    },
    /// An answer announced more bytes than the cap; the connection was dropped without
    /// allocating it.
    #[error(
        "answer from {endpoint} announces {len} bytes, over the {cap}-byte cap; connection dropped"
    )]
    TooLarge {
        /// `host:port`.
        endpoint: Endpoint,
        /// The announced body length.
        len: usize,
        /// `Config::max_answer_bytes`.
        cap: usize,
    },
    /// The answer (or the stream) made no sense: not JSON, not an object, or an answer
    /// with no request outstanding.
    #[error("malformed answer from {endpoint}: {detail}")]
    Malformed {
        /// `host:port`.
        endpoint: Endpoint,
        /// What was wrong.
        detail: String,
    },
    /// A socket error after the connection was established.
    #[error("I/O error on the connection to {endpoint}: {detail}")]
    Io {
        /// `host:port`.
        endpoint: Endpoint,
        /// The system's reason.
        detail: String,
    },
    /// The circuit breaker is open: nothing was sent.
    #[error("TBackend circuit breaker open for {endpoint}")]
    CircuitOpen {
        /// `host:port`.
        endpoint: Endpoint,
    },
    /// The client is shut down (or was forgotten after a fork).
    #[error("client is shut down ({endpoint})")]
    ShutDown {
        /// `host:port`.
        endpoint: Endpoint,
    },
    /// [`Cancel::cancel`](crate::Cancel::cancel) was called.
    #[error("call to {endpoint} cancelled")]
    Cancelled {
        /// `host:port`.
        endpoint: Endpoint,
    },
}

impl TransportError {
    /// The Ruby-facing class-like name of the variant (`"Timeout"`, `"Eof"`, …), for
    /// bindings that build `"<ErrorClass>: <message>"`.
    pub fn name(&self) -> &'static str {
        match self {
            TransportError::Connect { .. } => "Connect",
            TransportError::Timeout { .. } => "Timeout",
            TransportError::Eof { .. } => "Eof",
            TransportError::BadCrc { .. } => "BadCrc",
            TransportError::TooLarge { .. } => "TooLarge",
            TransportError::Malformed { .. } => "Malformed",
            TransportError::Io { .. } => "Io",
            TransportError::CircuitOpen { .. } => "CircuitOpen",
            TransportError::ShutDown { .. } => "ShutDown",
            TransportError::Cancelled { .. } => "Cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_endpoint() {
        let e: Endpoint = Arc::from("127.0.0.1:7401");
        let all = [
            TransportError::Connect {
                endpoint: e.clone(),
                detail: "Connection refused (os error 111)".into(),
            },
            TransportError::Timeout {
                endpoint: e.clone(),
                after: Duration::from_millis(250),
                phase: TimeoutPhase::Answer,
            },
            TransportError::Eof {
                endpoint: e.clone(),
            },
            TransportError::BadCrc {
                endpoint: e.clone(),
            },
            TransportError::TooLarge {
                endpoint: e.clone(),
                len: 9,
                cap: 8,
            },
            TransportError::Malformed {
                endpoint: e.clone(),
                detail: "x".into(),
            },
            TransportError::Io {
                endpoint: e.clone(),
                detail: "x".into(),
            },
            TransportError::CircuitOpen {
                endpoint: e.clone(),
            },
            TransportError::ShutDown {
                endpoint: e.clone(),
            },
            TransportError::Cancelled { endpoint: e },
        ];
        for err in all {
            assert!(err.to_string().contains("127.0.0.1:7401"), "{err}");
        }
        assert_eq!(
            TransportError::CircuitOpen {
                endpoint: Arc::from("h:1")
            }
            .to_string(),
            "TBackend circuit breaker open for h:1"
        );
    }
}
