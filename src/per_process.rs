//! The one fork rule of the binding: a native object belongs to the process that built
//! it. `Native::Client` and `Native::Writer` keep theirs in a [`PerProcess`], stamped
//! with the pid that built it (`tbackend_client::process_id`, cached per fork).
//!
//! In another process (a forked child) the value is forgotten, never used, shut down or
//! dropped: its sockets are the parent's connections too (a `shutdown(2)` would cut
//! them), its locks may have been held at the fork by parent threads that do not exist
//! here, and a writer's queue and spool segment are the parent's to deliver and hold.
//! That happens at once for every live one through the Process._fork hook
//! (`Native.after_fork`, which walks [`LIVE`]), or on the child's first call, or when
//! Ruby garbage-collects the object in the child.
//!
//! The registry is here, with `Weak` references, and not in Ruby: Ruby 3.1's
//! `ObjectSpace::WeakMap#keys` hands back keys that have died.
//!
//! Both mutexes are only taken with the GVL held, and Ruby forks only with the GVL held,
//! so neither can be inherited locked.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tbackend_client::writer::Writer;
use tbackend_client::{process_id, Client};

/// How a forked child gives up a value its parent built, without touching what the
/// parent still uses (async-signal-safe work only: atomics and close(2)).
pub(crate) trait Inherited: Send + 'static {
    fn forget_after_fork(self);
}

impl Inherited for Client {
    fn forget_after_fork(self) {
        Client::forget_after_fork(self);
    }
}

impl Inherited for Arc<Writer> {
    fn forget_after_fork(self) {
        Writer::forget_after_fork(self);
    }
}

/// Every [`PerProcess`] built and not yet dropped, as the fork hook sees them.
trait Claim: Send + Sync {
    fn claim(&self);
}

struct Live {
    slots: Vec<Weak<dyn Claim>>,
    /// Dead entries are swept when the list reaches this length, so it stays within
    /// twice the live count (and never sweeps at every registration).
    sweep_at: usize,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    slots: Vec::new(),
    sweep_at: 64,
});

fn live() -> MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn register(slot: Weak<dyn Claim>) {
    let mut live = live();
    if live.slots.len() >= live.sweep_at {
        live.slots.retain(|s| s.strong_count() > 0);
        live.sweep_at = (live.slots.len() * 2).max(64);
    }
    live.slots.push(slot);
}

/// `Native.after_fork`: in a forked child, forgets at once every value the parent built
/// (closing the child's copies of its sockets); a no-op in the process that built them.
pub(crate) fn after_fork() {
    let slots: Vec<Arc<dyn Claim>> = live().slots.iter().filter_map(Weak::upgrade).collect();
    for slot in slots {
        slot.claim();
    }
}

/// A value owned by one process; empty once taken (shut down) or forgotten.
pub(crate) struct PerProcess<T: Inherited> {
    slot: Mutex<Slot<T>>,
}

struct Slot<T: Inherited> {
    pid: u32,
    value: Option<T>,
    /// Forgotten after a fork while it held a value: this process builds its own on
    /// first use (`current`), unless it is shut down first.
    rebuild: bool,
}

impl<T: Inherited> Slot<T> {
    /// Forgets a value another process built and stamps the slot with this process.
    fn claim(&mut self) {
        let pid = process_id();
        if self.pid == pid {
            return;
        }
        if let Some(inherited) = self.value.take() {
            inherited.forget_after_fork();
            self.rebuild = true;
        }
        self.pid = pid;
    }
}

impl<T: Inherited> Drop for Slot<T> {
    fn drop(&mut self) {
        // Garbage-collected in a forked child: forgotten, never dropped (dropping a
        // writer stops and joins a flusher thread that only exists in the parent).
        self.claim();
    }
}

impl<T: Inherited> PerProcess<T> {
    fn slot(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Inherited> Claim for PerProcess<T> {
    fn claim(&self) {
        self.slot().claim();
    }
}

impl<T: Inherited + Clone> PerProcess<T> {
    /// A new value of this process, known to the fork hook.
    pub(crate) fn new(value: T) -> Arc<Self> {
        let this = Arc::new(PerProcess {
            slot: Mutex::new(Slot {
                pid: process_id(),
                value: Some(value),
                rebuild: false,
            }),
        });
        let weak: Weak<PerProcess<T>> = Arc::downgrade(&this);
        register(weak);
        this
    }

    /// This process's value. In a forked child the inherited one is forgotten first and
    /// the child gets `rebuild()` (`None`: it stays empty, as if shut down); one shut
    /// down before the fork stays shut down.
    pub(crate) fn current(&self, rebuild: impl FnOnce() -> Option<T>) -> Option<T> {
        let mut slot = self.slot();
        slot.claim();
        if std::mem::take(&mut slot.rebuild) {
            slot.value = rebuild();
        }
        slot.value.clone()
    }

    /// Takes this process's value out (to shut it down); an inherited one is forgotten.
    pub(crate) fn take(&self) -> Option<T> {
        let mut slot = self.slot();
        slot.claim();
        slot.rebuild = false;
        slot.value.take()
    }
}
