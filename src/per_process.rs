//! The one fork rule of the binding: a native object belongs to the process that built
//! it. `Native::Client` and `Native::Writer` keep theirs in a [`PerProcess`], stamped
//! with the pid that built it (`tbackend_client::process_id`, cached per fork).
//!
//! In another process (a forked child) the value is forgotten, never used, shut down or
//! dropped: its sockets are the parent's connections too (a `shutdown(2)` would cut
//! them), its locks may have been held at the fork by parent threads that do not exist
//! here, and a writer's queue and spool segment are the parent's to deliver and hold.
//! That happens on the child's first call, or at once through the Process._fork hook
//! (`after_fork`), or when Ruby garbage-collects the object in the child.
//!
//! The mutex is only taken with the GVL held, and Ruby forks only with the GVL held, so
//! it can never be inherited locked.

use std::sync::{Arc, Mutex, MutexGuard};

use tbackend_client::writer::Writer;
use tbackend_client::{process_id, Client};

/// How a forked child gives up a value its parent built, without touching what the
/// parent still uses (async-signal-safe work only: atomics and close(2)).
pub(crate) trait Inherited {
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

/// A value owned by one process; empty once taken (shut down) or forgotten.
pub(crate) struct PerProcess<T: Inherited> {
    slot: Mutex<Slot<T>>,
}

struct Slot<T: Inherited> {
    pid: u32,
    value: Option<T>,
}

impl<T: Inherited> Slot<T> {
    /// Forgets a value another process built and stamps the slot with this process.
    fn claim(&mut self) -> bool {
        let pid = process_id();
        if self.pid == pid {
            return false;
        }
        if let Some(inherited) = self.value.take() {
            inherited.forget_after_fork();
        }
        self.pid = pid;
        true
    }
}

impl<T: Inherited> Drop for Slot<T> {
    fn drop(&mut self) {
        // Garbage-collected in a forked child: forgotten, never dropped (dropping a
        // writer stops and joins a flusher thread that only exists in the parent).
        self.claim();
    }
}

impl<T: Inherited + Clone> PerProcess<T> {
    pub(crate) fn new(value: T) -> Self {
        PerProcess {
            slot: Mutex::new(Slot {
                pid: process_id(),
                value: Some(value),
            }),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This process's value. In a forked child the inherited one is forgotten first and
    /// the child gets `rebuild()` (`None`: it stays empty, as if shut down); one shut
    /// down before the fork stays shut down.
    pub(crate) fn current(&self, rebuild: impl FnOnce() -> Option<T>) -> Option<T> {
        let mut slot = self.slot();
        let inherited = slot.value.is_some();
        if slot.claim() && inherited {
            slot.value = rebuild();
        }
        slot.value.clone()
    }

    /// Takes this process's value out (to shut it down); an inherited one is forgotten.
    pub(crate) fn take(&self) -> Option<T> {
        let mut slot = self.slot();
        slot.claim();
        slot.value.take()
    }
}
