//! [`Cancel`]: how another thread, or a signal handler, stops a waiting call.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, Ordering};

use crate::sys;

/// Added to a registered futex word by [`Cancel::cancel`]. It lives above the flag bits
/// of a slot word, so it changes the word (a `FUTEX_WAIT` that raced with the cancel
/// returns at once) without touching any flag.
pub(crate) const POKE: u32 = 1 << 8;

/// A cancellation handle for one call at a time (not shared by concurrent calls).
///
/// The caller makes one per call (or reuses one for the attempts of a retried call) and
/// passes `&Cancel`; any thread may call [`Cancel::cancel`] while the call waits. The
/// call then returns within a few milliseconds with
/// [`TransportError::Cancelled`](crate::TransportError::Cancelled): status
/// `timeout_unknown` if its request may have been written, `unavailable` if not. A
/// cancelled request's slot stays in its lane's queue, so its late answer is discarded
/// and can never reach another caller.
///
/// `cancel()` is async-signal-safe: atomics, `FUTEX_WAKE` and a `write(2)` to the waiting
/// thread's eventfd — nothing that allocates or locks — which is what Ruby's unblocking
/// functions need (`RB_NOGVL_UBF_ASYNC_SAFE`). Once cancelled, a `Cancel` stays cancelled.
#[derive(Debug)]
pub struct Cancel {
    cancelled: AtomicBool,
    /// The futex word the call sleeps on now, or null.
    target: AtomicPtr<AtomicU32>,
    /// The eventfd of the thread that may be blocked in `poll`, or -1.
    wake_fd: AtomicI32,
    /// `cancel()` calls between reading `target`/`wake_fd` and finishing with them: the
    /// call may not free the word or reuse the fd while this is non-zero.
    busy: AtomicU32,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

impl Cancel {
    /// A handle that has not been cancelled.
    pub const fn new() -> Cancel {
        Cancel {
            cancelled: AtomicBool::new(false),
            target: AtomicPtr::new(std::ptr::null_mut()),
            wake_fd: AtomicI32::new(-1),
            busy: AtomicU32::new(0),
        }
    }

    /// Cancels the call waiting on this handle (and any later call given it).
    /// Async-signal-safe and idempotent.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.busy.fetch_add(1, Ordering::SeqCst);
        let word = self.target.load(Ordering::SeqCst);
        if !word.is_null() {
            // SAFETY: `Armed::drop` clears `target` and then waits for `busy` to reach
            // zero before the word can be freed, so a non-null word read while `busy`
            // is raised is alive until the decrement below.
            unsafe { (*word).fetch_add(POKE, Ordering::SeqCst) };
            sys::futex_wake(word, i32::MAX);
        }
        let fd = self.wake_fd.load(Ordering::SeqCst);
        if fd >= 0 {
            sys::eventfd_signal(fd);
        }
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Registers the word this thread is about to sleep on and its wake fd, until the
    /// returned guard drops. The caller must re-check [`Cancel::is_cancelled`] after
    /// arming (a cancel that came earlier saw nothing to wake).
    pub(crate) fn arm<'a>(&'a self, word: &'a AtomicU32, wake_fd: Option<RawFd>) -> Armed<'a> {
        self.wake_fd.store(wake_fd.unwrap_or(-1), Ordering::SeqCst);
        self.target
            .store(word as *const AtomicU32 as *mut AtomicU32, Ordering::SeqCst);
        Armed { cancel: self }
    }
}

/// Keeps a word registered with a [`Cancel`]; see [`Cancel::arm`].
pub(crate) struct Armed<'a> {
    cancel: &'a Cancel,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let c = self.cancel;
        c.target.store(std::ptr::null_mut(), Ordering::SeqCst);
        c.wake_fd.store(-1, Ordering::SeqCst);
        // A concurrent cancel() holds the old pointer for a few instructions and one
        // system call; a signal handler on this very thread has already finished.
        while c.busy.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn cancel_pokes_the_armed_word() {
        let cancel = Arc::new(Cancel::new());
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || {
            let word = AtomicU32::new(0);
            let _armed = c2.arm(&word, None);
            let t0 = Instant::now();
            while !c2.is_cancelled() && t0.elapsed() < Duration::from_secs(5) {
                sys::futex_wait(&word, 0, Some(Duration::from_secs(5)));
            }
            (t0.elapsed(), word.load(Ordering::SeqCst))
        });
        std::thread::sleep(Duration::from_millis(30));
        cancel.cancel();
        let (elapsed, word) = t.join().unwrap();
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
        assert_eq!(word, POKE);
        cancel.cancel();
        assert!(cancel.is_cancelled());
    }

    #[test]
    fn unarmed_cancel_touches_nothing() {
        let cancel = Cancel::new();
        {
            let word = AtomicU32::new(7);
            let _armed = cancel.arm(&word, None);
        }
        cancel.cancel();
        assert!(cancel.is_cancelled());
    }
}

/// Where work that a [`Cancel`] only pauses stands after one run.
#[derive(Debug)]
pub enum Step<T, P> {
    /// The work is over.
    Done(T),
    /// Cancelled while it waited: [`Resumable::step`] goes on, dropping gives up.
    Paused(P),
}

/// Work that a cancel pauses instead of ending, and that goes on afterwards as if never
/// disturbed, within the deadline it started with. For callers whose cancel means "let me
/// run something first": Ruby's unblocking function fires for every interrupt, and most
/// (a signal trap, `Thread#wakeup`) raise nothing.
pub trait Resumable: Sized + Send {
    /// What the finished work gives.
    type Output: Send;
    /// Goes on with a fresh `cancel` (a cancelled one stays cancelled).
    fn step(self, cancel: &Cancel) -> Step<Self::Output, Self>;
}
