//! The native TBackend client: the network half of `acts_as_tbackend`, in pure Rust
//! (no Ruby, no async runtime, no thread of its own).
//!
//! - [`Client`]: a few persistent **lanes** per endpoint, each one TCP connection that
//!   pipelines the requests of every calling thread (leader/follower, described in
//!   `src/lane/` and the README), with deadlines, a shared circuit breaker, reconnect
//!   backoff, idle-cut avoidance and fork safety ([`Client::forget_after_fork`]).
//! - [`Cancel`]: cancels a waiting call from another thread or a signal handler
//!   (async-signal-safe), the hook Ruby's unblocking functions need.
//! - [`tail::Cursor`]: a gap-safe cursor over `facts_by_seq`.
//! - [`Client::latest_for_many`] ([`reads`]): `latest_for` over many keys, pipelined.
//! - [`writer::Writer`]: writes facts off the request path: a bounded queue, optionally
//!   backed by a crash-safe file [`spool`], flushed by a native thread with retries.
//!
//! Every call returns an [`Outcome`] whose `classified` part comes from core's status
//! table (the 0.2 gem's statuses): `unavailable` when nothing was sent,
//! `timeout_unknown` when the request may have run, `circuit_open` when the breaker
//! refused it.
#![warn(missing_docs)]

// Every wait, wake-up and poll of this crate is a Linux system call (futex, eventfd,
// ppoll; see `src/sys.rs`), so the modules built on them exist on Linux only and any
// other target stops here with one clear error instead of a cascade of missing symbols.
#[cfg(not(target_os = "linux"))]
compile_error!("acts_as_tbackend's native client supports Linux only (futex, eventfd, ppoll)");

/// Items that exist on Linux only: the system calls and everything that waits on them.
#[cfg_attr(loom, allow(unused_macros))]
macro_rules! linux_only {
    ($($item:item)*) => { $( #[cfg(target_os = "linux")] $item )* };
}

/// The whole crate but the cancel and slot-word protocols, which `--cfg loom`
/// builds alone and model-checks under loom's atomics (README.md, "Model checks"): everything else sleeps
/// on real futex words, which loom cannot model.
macro_rules! not_loom {
    ($($item:item)*) => { $( #[cfg(not(loom))] $item )* };
}

not_loom! {
    mod backoff;
    mod breaker;
    mod config;
    mod error;
    pub mod tail;

    linux_only! {
        mod batch;
        mod cancel;
        mod client;
        mod lane;
        pub mod reads;
        pub mod spool;
        mod sys;
        mod wait;
        pub mod writer;

        pub use batch::Batch;
        pub use cancel::{Cancel, Resumable, Step};
        pub use client::{
            Attempt, BreakerStats, CallStep, Client, Outcome, PausedCall, PausedRetries, PausedTail,
            Request, RetryPolicy, RetryStep, Stats,
        };
        pub use lane::LaneStats;
        pub use sys::process_id;
    }

    pub use breaker::BreakerState;
    pub use config::Config;
    pub use error::{Endpoint, TimeoutPhase, TransportError};
    pub use tbackend_core::{Classified, ErrorKind, OpKind, Status};
}

// Outside the models, nothing uses them in this build.
#[cfg(loom)]
#[cfg_attr(not(test), allow(dead_code))]
mod cancel;
#[cfg(loom)]
pub use cancel::{Cancel, Resumable, Step};
#[cfg(loom)]
#[cfg_attr(not(test), allow(dead_code))]
#[path = "lane/word.rs"]
mod slot_word;
