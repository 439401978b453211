//! [`Cancel`]: how another thread, or a signal handler, stops a waiting call.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use imp::{
    eventfd_signal, fence, futex_wake, yield_now, AtomicBool, AtomicI32, AtomicPtr, AtomicU32,
};

/// What the protocol runs on: the real atomics and system calls, or, with `--cfg loom`,
/// loom's atomics, under which the models below explore every interleaving.
#[cfg(not(loom))]
mod imp {
    pub(super) use crate::sys::{eventfd_signal, futex_wake};
    pub(super) use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU32};
    pub(super) use std::thread::yield_now;
}

#[cfg(loom)]
mod imp {
    pub(super) use loom::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU32};
    pub(super) use loom::thread::yield_now;
    use std::os::fd::RawFd;

    /// A modelled sleeper compares the word instead of sleeping on it, so changing the
    /// word is the whole wake-up.
    pub(super) fn futex_wake(_word: *const AtomicU32, _n: i32) {}
    pub(super) fn eventfd_signal(_fd: RawFd) {}
}

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

/// `Cancel::new`, `const` except under loom (whose atomics cannot be built in a const).
macro_rules! new_cancel {
    ($($constness:ident)?) => {
        /// A handle that has not been cancelled.
        pub $($constness)? fn new() -> Cancel {
            Cancel {
                cancelled: AtomicBool::new(false),
                target: AtomicPtr::new(std::ptr::null_mut()),
                wake_fd: AtomicI32::new(-1),
                busy: AtomicU32::new(0),
            }
        }
    };
}

impl Cancel {
    #[cfg(not(loom))]
    new_cancel!(const);
    #[cfg(loom)]
    new_cancel!();

    /// Cancels the call waiting on this handle (and any later call given it).
    /// Async-signal-safe and idempotent.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.busy.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fences of `arm` and `Armed::drop` (store, fence, then load the
        // other side's variable on both sides): either this cancel sees the word armed,
        // or the armed caller sees the cancel; and either this cancel sees the word
        // disarmed, or the disarm sees `busy` raised. SeqCst accesses alone promise that
        // too, but loom models them weaker; the fences are what it checks.
        fence(Ordering::SeqCst);
        let word = self.target.load(Ordering::SeqCst);
        if !word.is_null() {
            // SAFETY: `Armed::drop` clears `target` and then waits for `busy` to reach
            // zero before the word can be freed, so a non-null word read while `busy`
            // is raised is alive until the decrement below.
            unsafe { (*word).fetch_add(POKE, Ordering::SeqCst) };
            futex_wake(word, i32::MAX);
        }
        let fd = self.wake_fd.load(Ordering::SeqCst);
        if fd >= 0 {
            eventfd_signal(fd);
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
        fence(Ordering::SeqCst);
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
        fence(Ordering::SeqCst);
        // A concurrent cancel() holds the old pointer for a few instructions and one
        // system call; a signal handler on this very thread has already finished.
        while c.busy.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
            yield_now();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sys;
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

/// Model checks of the protocol between [`Cancel::cancel`] and [`Cancel::arm`] /
/// [`Armed`]'s drop, under every interleaving loom finds: `RUSTFLAGS='--cfg loom' cargo test
/// -p tbackend-client --lib` (README.md, "Model checks"). The caller's sleep is modelled by
/// what ends it: `FUTEX_WAIT` returns when the word differs from the value it was given.
#[cfg(all(test, loom))]
mod models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Stored into a word once it is disarmed: it stands for the memory being freed or
    /// reused, which a late poke would corrupt.
    const FREED: u32 = 0xDEAD;

    /// The call the handle belongs to: arms `word`, reads the word and the flag the way a
    /// caller does before it sleeps, "sleeps" until `canceller` is done, and checks it
    /// would have woken: it saw the cancel, or the cancel changed the word it sleeps on.
    fn wait_once(cancel: &Cancel, word: &AtomicU32, canceller: thread::JoinHandle<()>) {
        let armed = cancel.arm(word, Some(7));
        let seen = word.load(Ordering::SeqCst);
        let cancelled = cancel.is_cancelled();
        // "Asleep" until the cancel is over: it must have changed the word or been seen.
        canceller.join().unwrap();
        assert!(
            cancelled || word.load(Ordering::SeqCst) != seen,
            "a cancel after arming left the sleeper asleep"
        );
        drop(armed);
    }

    #[test]
    fn a_cancel_is_never_lost() {
        loom::model(|| {
            let cancel = Arc::new(Cancel::new());
            let c = cancel.clone();
            let canceller = thread::spawn(move || c.cancel());
            let word = AtomicU32::new(0);
            wait_once(&cancel, &word, canceller);
        });
    }

    #[test]
    fn a_cancel_never_touches_a_word_after_disarm() {
        loom::model(|| {
            let cancel = Arc::new(Cancel::new());
            let c = cancel.clone();
            let canceller = thread::spawn(move || c.cancel());
            let word = AtomicU32::new(0);
            {
                let _armed = cancel.arm(&word, Some(7));
                let _ = cancel.is_cancelled();
            }
            word.store(FREED, Ordering::SeqCst);
            canceller.join().unwrap();
            assert_eq!(word.load(Ordering::SeqCst), FREED, "poked after disarm");
        });
    }

    #[test]
    fn a_handle_rearmed_on_another_word_leaves_the_first_alone() {
        // A resumed call arms the same handle again, on a new slot's word.
        loom::model(|| {
            let cancel = Arc::new(Cancel::new());
            let c = cancel.clone();
            let canceller = thread::spawn(move || c.cancel());
            let first = AtomicU32::new(0);
            drop(cancel.arm(&first, None));
            first.store(FREED, Ordering::SeqCst);
            let second = AtomicU32::new(0);
            wait_once(&cancel, &second, canceller);
            assert_eq!(first.load(Ordering::SeqCst), FREED, "poked after disarm");
        });
    }

    #[test]
    fn two_cancels_racing_a_disarm_both_finish_with_it() {
        // The busy count, not a flag: a second cancel (a signal handler on another thread)
        // must hold the disarm back too.
        let mut model = loom::model::Builder::new();
        // Three threads: bound the preemptions, or the state space takes hours.
        model.preemption_bound = Some(3);
        model.check(|| {
            let cancel = Arc::new(Cancel::new());
            let spawn = || {
                let c = cancel.clone();
                thread::spawn(move || c.cancel())
            };
            let (a, b) = (spawn(), spawn());
            let word = AtomicU32::new(0);
            drop(cancel.arm(&word, None));
            word.store(FREED, Ordering::SeqCst);
            a.join().unwrap();
            b.join().unwrap();
            assert_eq!(word.load(Ordering::SeqCst), FREED, "poked after disarm");
        });
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
