//! [`Wait`]: how one caller waits — until when, with what budget, what stops it early,
//! and what wakes its poll.

use std::os::fd::RawFd;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use crate::cancel::{Armed, Cancel};
use crate::config::Config;
use crate::sys;

/// `t + d`, saturating far in the future: a caller may pass `Duration::MAX` as "no
/// limit", and `Instant + Duration` panics on overflow.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    t.checked_add(d.min(CENTURY)).unwrap_or(t)
}

/// One caller's wait, passed whole to every step that may block.
#[derive(Clone, Copy)]
pub(crate) struct Wait<'a> {
    /// When the caller gives up.
    pub deadline: Instant,
    /// The time it was given, as its timeout errors report it.
    pub budget: Duration,
    /// Stops the wait early from another thread or a signal handler.
    pub cancel: &'a Cancel,
    /// The calling thread's eventfd, which a [`Cancel`] (or a writer with output for the
    /// reader) signals to end its `poll`; `None` if none could be made (then polls end
    /// on their short timers).
    pub wake: Option<RawFd>,
}

impl<'a> Wait<'a> {
    /// A wait of the calling thread until `deadline`.
    pub(crate) fn until(deadline: Instant, budget: Duration, cancel: &'a Cancel) -> Wait<'a> {
        Wait {
            deadline,
            budget,
            cancel,
            wake: sys::thread_wake_fd(),
        }
    }

    /// Registers `word`, the futex word this wait sleeps on, and the wake fd with the
    /// cancel; the caller re-checks [`Wait::cancelled`] after (see [`Cancel::arm`]).
    pub(crate) fn arm<'w>(&'w self, word: &'w AtomicU32) -> Armed<'w> {
        self.cancel.arm(word, self.wake)
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub(crate) fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// How long a lane waits for this caller's answer before it declares the connection
    /// dead: the budget, but never less than the client's request timeout (a caller with
    /// a short budget gives up alone; the connection is not to blame).
    pub(crate) fn answer_window(&self, config: &Config) -> Duration {
        self.budget.max(config.request_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > later(now, Duration::from_secs(3600)));
        assert_eq!(later(now, Duration::ZERO), now);
    }

    #[test]
    fn a_wait_knows_its_deadline_cancel_and_window() {
        let cancel = Cancel::new();
        let now = Instant::now();
        let config = Config {
            request_timeout: Duration::from_secs(5),
            ..Config::new("127.0.0.1", 9)
        };
        let w = Wait::until(later(now, Duration::from_millis(10)), Duration::from_millis(10), &cancel);
        assert!(!w.expired(now));
        assert!(w.expired(now + Duration::from_millis(10)));
        assert_eq!(w.answer_window(&config), Duration::from_secs(5));
        let long = Wait {
            budget: Duration::from_secs(9),
            ..w
        };
        assert_eq!(long.answer_window(&config), Duration::from_secs(9));
        assert!(!w.cancelled());
        cancel.cancel();
        assert!(w.cancelled());
    }
}
