//! The circuit breaker of one endpoint, shared by its lanes (lock-free).
//!
//! The 0.2 gem let every concurrent request through when half-open; here one
//! compare-and-swap elects exactly one probe.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// What the breaker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused (`circuit_open`) until the cooldown ends.
    Open,
    /// One probe is in flight; everyone else is refused.
    HalfOpen,
}

/// How a call was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Normal,
    /// The one call allowed while half-open: its outcome closes or re-opens the breaker.
    Probe,
}

/// What a call's outcome tells the breaker about the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evidence {
    /// The daemon answered (whatever it said).
    Answered,
    /// `unavailable` or `timeout_unknown`.
    Failed,
    /// Nothing learned about the daemon (cancelled, shut down, refused client-side).
    Neutral,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    /// When it last opened, in ns since `epoch`.
    opened_at: AtomicU64,
    opens: AtomicU64,
    threshold: u32,
    cooldown: Duration,
    epoch: Instant,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration, epoch: Instant) -> Breaker {
        Breaker {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            threshold,
            cooldown,
            epoch,
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Whether a call may go through: `None` means answer `circuit_open` at once.
    pub(crate) fn admit(&self) -> Option<Admission> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Some(Admission::Normal),
            OPEN => {
                let opened = self.opened_at.load(Ordering::Acquire);
                let cooldown = self.cooldown.as_nanos().min(u64::MAX as u128) as u64;
                if self.now_ns() < opened.saturating_add(cooldown) {
                    return None;
                }
                self.state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Relaxed)
                    .ok()
                    .map(|_| Admission::Probe)
            }
            _ => None,
        }
    }

    /// Whether `admit` would refuse right now, without taking the probe slot: open and
    /// cooling down, or half-open with the probe out. Lets a caller answer `circuit_open`
    /// without giving up the GVL first.
    pub(crate) fn refuses(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => false,
            OPEN => {
                let opened = self.opened_at.load(Ordering::Acquire);
                let cooldown = self.cooldown.as_nanos().min(u64::MAX as u128) as u64;
                self.now_ns() < opened.saturating_add(cooldown)
            }
            _ => true,
        }
    }

    pub(crate) fn record(&self, admission: Admission, evidence: Evidence) {
        match (admission, evidence) {
            (Admission::Probe, Evidence::Answered) => {
                self.failures.store(0, Ordering::Relaxed);
                self.state.store(CLOSED, Ordering::Release);
            }
            (Admission::Probe, Evidence::Failed) => self.open(),
            // A cancelled probe proved nothing: let the next call probe at once.
            (Admission::Probe, Evidence::Neutral) => self.state.store(OPEN, Ordering::Release),
            (Admission::Normal, Evidence::Answered) => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
            }
            (Admission::Normal, Evidence::Failed) => {
                let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if self.threshold > 0
                    && n >= self.threshold
                    && self.state.load(Ordering::Acquire) == CLOSED
                {
                    // The time goes first: an admit() that sees OPEN must not read the
                    // previous opening's time and let a probe through at once.
                    self.opened_at.store(self.now_ns(), Ordering::Release);
                    if self
                        .state
                        .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        self.opens.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (Admission::Normal, Evidence::Neutral) => {}
        }
    }

    fn open(&self) {
        self.opened_at.store(self.now_ns(), Ordering::Release);
        self.state.store(OPEN, Ordering::Release);
        self.opens.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn breaker(cooldown_ms: u64) -> Breaker {
        Breaker::new(3, Duration::from_millis(cooldown_ms), Instant::now())
    }

    #[test]
    fn opens_after_threshold_and_success_resets() {
        let b = breaker(10_000);
        for _ in 0..2 {
            b.record(Admission::Normal, Evidence::Failed);
        }
        b.record(Admission::Normal, Evidence::Answered);
        assert_eq!(b.consecutive_failures(), 0);
        for _ in 0..2 {
            b.record(Admission::Normal, Evidence::Failed);
        }
        assert_eq!(b.admit(), Some(Admission::Normal));
        b.record(Admission::Normal, Evidence::Neutral);
        b.record(Admission::Normal, Evidence::Failed);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), None);
        assert_eq!(b.opens(), 1);
    }

    #[test]
    fn refuses_agrees_with_admit_and_takes_no_probe() {
        let b = breaker(20);
        assert!(!b.refuses());
        for _ in 0..3 {
            b.record(Admission::Normal, Evidence::Failed);
        }
        assert!(b.refuses());
        assert_eq!(b.admit(), None);
        std::thread::sleep(Duration::from_millis(30));
        // Cooled down: not refused, and asking did not use up the probe.
        assert!(!b.refuses());
        assert!(!b.refuses());
        assert_eq!(b.admit(), Some(Admission::Probe));
        assert!(b.refuses(), "half-open with the probe out");
        b.record(Admission::Probe, Evidence::Answered);
        assert!(!b.refuses());
    }

    #[test]
    fn one_probe_after_cooldown() {
        let b = breaker(20);
        for _ in 0..3 {
            b.record(Admission::Normal, Evidence::Failed);
        }
        assert_eq!(b.admit(), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit(), Some(Admission::Probe));
        assert_eq!(b.admit(), None, "only one probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(Admission::Probe, Evidence::Failed);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), None, "a failed probe restarts the cooldown");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit(), Some(Admission::Probe));
        b.record(Admission::Probe, Evidence::Neutral);
        assert_eq!(
            b.admit(),
            Some(Admission::Probe),
            "a cancelled probe is retried at once"
        );
        b.record(Admission::Probe, Evidence::Answered);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.opens(), 2);
    }

    #[test]
    fn concurrent_admits_elect_exactly_one_probe() {
        for _ in 0..50 {
            let b = Arc::new(breaker(0));
            for _ in 0..3 {
                b.record(Admission::Normal, Evidence::Failed);
            }
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let probes: usize = (0..8)
                .map(|_| {
                    let (b, barrier) = (b.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        usize::from(b.admit() == Some(Admission::Probe))
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum();
            assert_eq!(probes, 1);
        }
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(1), Instant::now());
        for _ in 0..100 {
            b.record(Admission::Normal, Evidence::Failed);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
