//! Running blocking work with the GVL released.
//!
//! magnus has no wrapper, so this calls `rb_nogvl` directly. Two measured traps shape
//! it: plain `rb_thread_call_without_gvl` can longjmp across Rust frames
//! when an interrupt is pending, and when the caller is the process's only Ruby thread,
//! Ruby 3.1 spawns a helper thread for every release unless the unblocking function is
//! declared async-signal-safe. Ours only flips atomics, wakes a futex and writes to an
//! eventfd (see `tbackend_client::Cancel`), so it qualifies.

use std::any::Any;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tbackend_client::{Cancel, Resumable, Step};

/// What `without_gvl` hands back.
pub enum NoGvl<R> {
    /// The work ran to the end (possibly cut short by `cancel`, which it must observe).
    Done(R),
    /// An interrupt was already pending: the work never started.
    NotStarted,
    /// The work panicked: a bug, reported as a Ruby exception instead of killing the process.
    Panicked(String),
}

struct Call<F, R> {
    work: Option<F>,
    result: Option<Result<R, Box<dyn Any + Send>>>,
}

unsafe extern "C" fn trampoline<F, R>(data: *mut c_void) -> *mut c_void
where
    F: FnOnce() -> R,
{
    // SAFETY: `data` is the `Call` that `without_gvl` keeps alive across rb_nogvl.
    let call = unsafe { &mut *(data as *mut Call<F, R>) };
    if let Some(work) = call.work.take() {
        call.result = Some(catch_unwind(AssertUnwindSafe(work)));
    }
    std::ptr::null_mut()
}

unsafe extern "C" fn unblock<C: Fn()>(data: *mut c_void) {
    // SAFETY: `data` points at the `cancel` closure borrowed for the whole rb_nogvl call.
    let cancel = unsafe { &*(data as *const C) };
    cancel();
}

/// Runs `work` without the GVL. `cancel` is Ruby's unblocking function: it runs when the
/// thread is interrupted (Thread#kill, Thread#raise, Timeout, Ctrl-C), possibly in signal
/// context, and must make `work` return promptly without allocating or locking.
/// `Send` on the work proves no Ruby object crosses into the GVL-free section.
pub fn without_gvl<F, R, C>(work: F, cancel: &C) -> NoGvl<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
    C: Fn() + Sync,
{
    let mut call: Call<F, R> = Call {
        work: Some(work),
        result: None,
    };
    let flags = (rb_sys::RB_NOGVL_UBF_ASYNC_SAFE | rb_sys::RB_NOGVL_INTR_FAIL) as i32;
    // SAFETY: both pointers outlive the call; the callbacks match their data types.
    unsafe {
        rb_sys::rb_nogvl(
            Some(trampoline::<F, R>),
            &mut call as *mut Call<F, R> as *mut c_void,
            Some(unblock::<C>),
            cancel as *const C as *mut c_void,
            flags,
        );
    }
    match call.result {
        Some(Ok(r)) => NoGvl::Done(r),
        Some(Err(panic)) => NoGvl::Panicked(panic_message(&panic)),
        None => NoGvl::NotStarted,
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Runs `work` without the GVL, cancellable by any Ruby interrupt (`Thread#kill`,
/// `Timeout`, `Thread#raise`, Ctrl-C), and back on the GVL: the one way every native
/// call waits. An interrupt pending before the work starts is often only the timer's
/// request to pass the GVL on: it is served (a real Thread#raise or kill raises here)
/// and the work starts again. A panic becomes an `InternalError` naming `what`.
pub fn run_cancellable<R: Send>(
    ruby: &magnus::Ruby,
    what: &str,
    work: impl FnOnce(&tbackend_client::Cancel) -> R + Send,
) -> Result<R, magnus::Error> {
    let cancel = tbackend_client::Cancel::new();
    let mut work = Some(work);
    loop {
        match without_gvl(
            || (work.take().expect("work runs at most once"))(&cancel),
            &|| cancel.cancel(),
        ) {
            NoGvl::Done(r) => {
                ruby.thread_check_ints()?;
                return Ok(r);
            }
            NoGvl::NotStarted => ruby.thread_check_ints()?,
            NoGvl::Panicked(message) => {
                return Err(crate::errors::internal(
                    ruby,
                    format!("acts_as_tbackend native {what} bug (please report): {message}"),
                ))
            }
        }
    }
}

/// [`run_cancellable`] for work that a cancel only pauses: `step` runs, without the GVL,
/// until it gives `Some`. Ruby's unblocking function fires for every interrupt, and most
/// raise nothing (a signal trap that returns, `Thread#wakeup`; on Ruby 3.3 also a signal
/// a forked child inherited unhandled): after each cancel the pending interrupts run
/// here, and unless one raised (`Thread#kill`, `Thread#raise`, `Timeout`, Ctrl-C — then
/// the error leaves at once, dropping what `step` kept), `step` goes on, within the
/// deadline it started with. Every native wait that must survive those goes through here.
pub fn run_until<R: Send>(
    ruby: &magnus::Ruby,
    what: &str,
    mut step: impl FnMut(&Cancel) -> Option<R> + Send,
) -> Result<R, magnus::Error> {
    loop {
        if let Some(r) = run_cancellable(ruby, what, &mut step)? {
            return Ok(r);
        }
    }
}

/// [`run_until`] over a [`Resumable`]: `start` begins the work, the paused work it (or a
/// later step) hands back goes on.
pub fn run_resumable<P: Resumable>(
    ruby: &magnus::Ruby,
    what: &str,
    start: impl FnOnce(&Cancel) -> Step<P::Output, P> + Send,
) -> Result<P::Output, magnus::Error> {
    let mut start = Some(start);
    let mut paused: Option<P> = None;
    run_until(ruby, what, |cancel| {
        let step = match paused.take() {
            Some(p) => p.step(cancel),
            None => (start.take().expect("started once"))(cancel),
        };
        match step {
            Step::Done(r) => Some(r),
            Step::Paused(p) => {
                paused = Some(p);
                None
            }
        }
    })
}
