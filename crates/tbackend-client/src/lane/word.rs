//! A slot's flag word: how its caller, the reader that completes it and the reader that
//! hands the reader role on agree without the lane mutex (the caller leaves without it).
//! The bits above the flags count pokes ([`crate::cancel::POKE`]).

use std::sync::atomic::Ordering;

#[cfg(loom)]
use loom::sync::atomic::AtomicU32;
#[cfg(not(loom))]
use std::sync::atomic::AtomicU32;

/// The answer (or the connection's error) is in the slot.
pub(crate) const DONE: u32 = 1;
/// The caller gave up; the reader drops the answer.
pub(crate) const ABANDONED: u32 = 2;
/// The previous reader handed the reader role to this slot's caller.
pub(crate) const LEAD: u32 = 4;
/// The caller sleeps (or is about to) on the word: completing must wake it, and a
/// hand-off may pick it.
pub(crate) const PARKED: u32 = 8;

/// A waiting caller leaves its queued slot: for good past its deadline (abandoned: the
/// answer is dropped when it comes), or for now when cancelled (detached: no longer
/// parked, so no hand-off picks it, and it can be waited for again; the binding does,
/// when the interrupt that cancelled it raised nothing). Returns the word before: a
/// `LEAD` in it is a reader role the caller must pass on.
pub(crate) fn leave(word: &AtomicU32, cancelled: bool) -> u32 {
    if cancelled {
        word.fetch_and(!(PARKED | LEAD), Ordering::AcqRel)
    } else {
        word.fetch_or(ABANDONED, Ordering::AcqRel)
    }
}

/// Hands the reader role to the caller of this word if it still waits, parked: `true` if
/// it took (the caller then sees `LEAD`, or its [`leave`] returns it).
pub(crate) fn offer_lead(word: &AtomicU32) -> bool {
    let mut w = word.load(Ordering::Acquire);
    loop {
        if w & (DONE | ABANDONED) != 0 || w & PARKED == 0 {
            return false;
        }
        // A CAS, not fetch_or: a caller leaving concurrently must either see LEAD (and
        // pass it on) or have its leaving seen here.
        match word.compare_exchange(w, w | LEAD, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => w = now,
        }
    }
}

/// Model checks of the hand-off against a leaving caller (`--cfg loom`, README.md
/// "Model checks"): a reader role is never handed to a caller that left without learning
/// of it, which would leave the lane with no reader until a follower's timer fires.
#[cfg(all(test, loom))]
mod models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn race(cancelled: bool) {
        loom::model(move || {
            let word = Arc::new(AtomicU32::new(PARKED));
            let w = word.clone();
            let reader = thread::spawn(move || offer_lead(&w));
            let before = leave(&word, cancelled);
            let handed = reader.join().unwrap();
            assert!(
                !handed || before & LEAD != 0,
                "the role went to a caller that left without seeing it"
            );
            if !handed {
                assert_eq!(word.load(Ordering::SeqCst) & LEAD, 0);
            }
        });
    }

    #[test]
    fn a_hand_off_racing_a_timeout_is_seen_or_refused() {
        race(false);
    }

    #[test]
    fn a_hand_off_racing_a_cancel_is_seen_or_refused() {
        race(true);
    }
}
