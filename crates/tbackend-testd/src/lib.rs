//! `tbackend-testd`: a test double of the TBackend temporal-ledger daemon.
//!
//! It speaks the real daemon's wire protocol (`docs/protocol.md`) with its quirks,
//! answers byte for byte like the recorded transcripts (`spec/fixtures/tbackend/`),
//! persists to an append-only log per store, and adds a control port for fault injection
//! so client tests can exercise timeouts, broken frames, refused connections and failed
//! syncs.
//!
//! - [`server`] runs the daemon in this process ([`server::start`]); the binary is a
//!   thin wrapper around it.
//! - [`harness::TestDaemon`] spawns the binary as a child process (so a test can
//!   SIGKILL and restart it) and offers a [`control::ControlClient`].
//! - [`wire::Conn`] is a minimal blocking client of the framing, for tests and the load
//!   generator.

pub mod auth;
pub mod config;
pub mod control;
pub mod engine;
pub mod fact;
pub mod faults;
pub mod harness;
pub mod server;
pub mod wal;
pub mod wire;

pub use config::Config;
pub use control::ControlClient;
pub use harness::{Options, TestDaemon};
