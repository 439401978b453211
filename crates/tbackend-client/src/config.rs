//! [`Config`]: one endpoint and how to talk to it.

use std::fmt;
use std::time::Duration;

use tbackend_core::protocol::frame::{DEFAULT_MAX_ANSWER, DEFAULT_MAX_REQUEST};

/// How a [`Client`](crate::Client) reaches its daemon. `Config::default()` holds the
/// 0.2 gem's defaults (127.0.0.1:7401, 1 s connect, 2 s request, breaker 5 /
/// 5 s) plus the lane settings.
#[derive(Clone)]
pub struct Config {
    /// Daemon host name or IP address.
    pub host: String,
    /// Daemon port.
    pub port: u16,
    /// Bearer token, used by requests the client builds itself
    /// ([`Client::tail_poll`](crate::Client::tail_poll)); callers put it in their bodies.
    /// Never printed: `Debug` redacts it and no error carries it.
    pub token: Option<String>,
    /// Budget for opening one TCP connection.
    pub connect_timeout: Duration,
    /// Budget of a call given no explicit timeout; also how long a lane waits for its
    /// oldest answer before it declares the connection dead.
    pub request_timeout: Duration,
    /// Persistent connections (each one pipelined and shared by every thread). The
    /// daemon serves each connection with one of a fixed pool of workers and starves
    /// connections beyond it, so keep the sum over all processes below its pool size.
    pub lanes: usize,
    /// Requests in flight per lane; callers beyond it wait (deadline-bounded, cancellable).
    pub max_depth: usize,
    /// Consecutive `unavailable` / `timeout_unknown` outcomes that open the breaker
    /// (0 disables it).
    pub breaker_threshold: u32,
    /// How long an open breaker refuses calls before it admits one probe.
    pub breaker_cooldown: Duration,
    /// A lane with nothing in flight that has not sent a request for this long is
    /// reconnected before reuse. Keep it below the daemon's 30 s idle cut.
    pub idle_reconnect: Duration,
    /// Largest request body sent.
    pub max_request_bytes: usize,
    /// Largest answer body accepted; a larger header tears the lane down before
    /// anything is allocated.
    pub max_answer_bytes: usize,
    /// (base, max) of the exponential reconnect backoff, with full jitter, per lane.
    pub reconnect_backoff: (Duration, Duration),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 7401,
            token: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            lanes: 1,
            max_depth: 256,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(5),
            idle_reconnect: Duration::from_secs(20),
            max_request_bytes: DEFAULT_MAX_REQUEST,
            max_answer_bytes: DEFAULT_MAX_ANSWER,
            reconnect_backoff: (Duration::from_millis(50), Duration::from_secs(2)),
        }
    }
}

impl Config {
    /// The defaults, aimed at `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Config {
        Config {
            host: host.into(),
            port,
            ..Config::default()
        }
    }

    /// `host:port`, bracketing IPv6 literals.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("lanes", &self.lanes)
            .field("max_depth", &self.max_depth)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("idle_reconnect", &self.idle_reconnect)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .field("reconnect_backoff", &self.reconnect_backoff)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_token() {
        let c = Config {
            token: Some("s3cret-token".into()),
            ..Config::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("s3cret"), "{s}");
        assert!(s.contains("[REDACTED]"));
    }

    #[test]
    fn endpoint_brackets_ipv6() {
        assert_eq!(Config::new("::1", 7).endpoint(), "[::1]:7");
        assert_eq!(Config::new("db", 7401).endpoint(), "db:7401");
    }
}
