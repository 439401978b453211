//! The waiting roles of a lane's callers: the one reader, which reads answers and
//! completes everyone's slots, and the followers, which sleep on their slot until it is
//! done or the reader role is handed to them.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{Conn, REST_WAIT};
use super::pipeline::{complete_all, wake_reader, DONE, LEAD};
use super::{lock, Context, Failure, Lane, Link, PollUntil, Role, Slot};
use crate::error::TransportError;
use crate::sys;
use crate::wait::Wait;

/// How often a follower checks that someone is reading, in case a hand-off went to a
/// caller that was leaving.
const FOLLOWER_CHECK: Duration = Duration::from_millis(20);

impl Lane {
    /// Waits for a slot submitted with [`Mode::Detached`](super::Mode::Detached), or
    /// again for one whose wait a cancel cut short. `more`: answers of the same batch
    /// due after this one that its caller waits for next, which the reader then waits
    /// for together (see [`Conn::wait_gathered`]).
    pub(crate) fn wait_detached(
        &self,
        cx: &Context,
        slot: &Arc<Slot>,
        wait: &Wait,
        more: usize,
    ) -> Result<Vec<u8>, Failure> {
        let _armed = wait.arm(&slot.word);
        let role = {
            let mut st = self.lock();
            if slot.is_done() || !st.queued(slot) {
                None
            } else if !st.reader {
                let Link::Up(conn) = &st.link else {
                    unreachable!("a queued slot implies a connection")
                };
                let conn = conn.clone();
                st.become_reader(wait.wake);
                Some(Role::Reader(conn, None))
            } else {
                slot.park();
                Some(Role::Follower)
            }
        };
        match role {
            None => slot.take_when_done(),
            Some(Role::Reader(conn, first)) => self.read(cx, conn, slot, wait, first, more),
            Some(_) => self.follow(cx, slot, wait, more),
        }
    }

    /// The reader: reads answers and completes slots until `me` is done, its caller
    /// gives up, or the connection breaks.
    pub(super) fn read(
        &self,
        cx: &Context,
        conn: Arc<Conn>,
        me: &Arc<Slot>,
        wait: &Wait,
        mut poll_first: Option<PollUntil>,
        more: usize,
    ) -> Result<Vec<u8>, Failure> {
        let mut side = lock(&conn.read);
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        let mut done: Vec<(Arc<Slot>, Vec<u8>)> = Vec::new();
        let mut first_wait = true;
        // Answers to wait for together, while they all belong to batches (0: one at a
        // time, as a single call reads).
        let mut run = if more > 0 {
            self.lock().pipeline.batched_run(me, more)
        } else {
            0
        };
        loop {
            // Not before the first read: a batch collected late (the writer's round, after
            // its linger window) finds its answers there, and one read takes them all.
            let gather = (run > 1 && poll_first.is_some() && !wait.cancelled())
                .then(|| side.gather_bytes(run))
                .flatten();
            if gather.is_none() && poll_first.is_some() {
                conn.wake_on_any(&mut side);
            }
            let mut broken = match (poll_first.take(), gather) {
                (Some((until, want_write)), Some(bytes)) => {
                    let timeout = until.saturating_duration_since(Instant::now());
                    conn.wait_gathered(&mut side, bytes, want_write, wait.wake, timeout);
                    conn.read_available(&mut side, &mut bodies)
                }
                // The rest of an answer whose head is in, or the first wait for an
                // answer, which is most often shorter than REST_WAIT: one recv, no
                // ppoll (conn.rs says why).
                (Some((until, false)), None)
                    if !wait.cancelled()
                        && (side.missing() > 0
                            || (first_wait && until > Instant::now() + REST_WAIT)) =>
                {
                    first_wait = false;
                    let missing = side.missing();
                    conn.read_waiting(&mut side, missing, &mut bodies)
                }
                (Some((until, want_write)), None) => {
                    if !wait.cancelled() {
                        let timeout = until.saturating_duration_since(Instant::now());
                        sys::poll_socket(conn.stream.as_raw_fd(), want_write, wait.wake, timeout);
                    }
                    conn.read_available(&mut side, &mut bodies)
                }
                // `gather` is only ever set with a wait to make.
                (None, _) => conn.read_available(&mut side, &mut bodies),
            };
            let now = Instant::now();
            let mut st = self.lock();
            if !matches!(&st.link, Link::Up(c) if Arc::ptr_eq(c, &conn)) {
                // Torn down by a writer or by shutdown: every slot of this connection,
                // ours included, has been completed.
                drop(st);
                return me.take_when_done();
            }
            if !st.pipeline.match_answers(&mut bodies, &mut done) {
                bodies.clear();
                broken.get_or_insert(TransportError::Malformed {
                    endpoint: cx.endpoint.clone(),
                    detail: "an answer arrived with no request outstanding".into(),
                });
            }
            if !done.is_empty() {
                self.in_flight.store(st.pipeline.len(), Ordering::Relaxed);
                if !st.parked.is_empty() {
                    self.wake_parked(&mut st);
                }
            }
            if broken.is_none() && !st.out.pending.is_empty() {
                if let Err(e) = st.out.flush(&conn) {
                    broken = Some(e);
                }
            }
            let front_overdue = st
                .pipeline
                .front()
                .map(|s| (s.clone(), cx.instant(s.overdue_ns())));
            if broken.is_none() {
                if let Some((front, at)) = &front_overdue {
                    if now >= *at {
                        broken = Some(cx.overdue(front));
                    }
                }
            }
            if let Some(error) = broken {
                self.teardown(&mut st, error, true);
                drop(st);
                complete_all(&mut done);
                return me.take_when_done();
            }
            let mine = st.pipeline.answered(me);
            let cancelled = wait.cancelled();
            let give_up = !mine && (cancelled || wait.expired(now));
            if mine || give_up {
                st.stop_reading();
                if give_up {
                    // Queued and not popped, so not complete: the answer, when it comes,
                    // is consumed by this slot, whether its caller comes back for it
                    // (cancelled: detached) or not (past its deadline: abandoned). Done
                    // under the mutex, so the hand-off below cannot pick this slot.
                    me.leave(cancelled);
                }
                let next = st.pipeline.hand_off();
                drop(st);
                wake_reader(next);
                complete_all(&mut done);
                return if mine {
                    me.take_when_done()
                } else {
                    Err(cx.gave_up(cancelled, wait.budget))
                };
            }
            let until = front_overdue.map_or(wait.deadline, |(_, at)| at.min(wait.deadline));
            poll_first = Some((until, !st.out.pending.is_empty()));
            if run > 0 {
                run = st.pipeline.batched_run(me, more);
            }
            drop(st);
            complete_all(&mut done);
        }
    }

    /// A follower: sleeps on its slot until completed, handed the reader role, or its
    /// caller gives up.
    pub(super) fn follow(
        &self,
        cx: &Context,
        me: &Arc<Slot>,
        wait: &Wait,
        more: usize,
    ) -> Result<Vec<u8>, Failure> {
        let mut next_check = Instant::now() + FOLLOWER_CHECK;
        loop {
            let w = me.word.load(Ordering::Acquire);
            if w & DONE != 0 {
                return me.take_when_done();
            }
            let now = Instant::now();
            if w & LEAD != 0 || now >= next_check {
                next_check = now + FOLLOWER_CHECK;
                me.word.fetch_and(!LEAD, Ordering::AcqRel);
                if let Some(conn) = self.try_lead(me, wait.wake) {
                    return self.read(cx, conn, me, wait, None, more);
                }
                continue;
            }
            let cancelled = wait.cancelled();
            if cancelled || wait.expired(now) {
                let prev = me.leave(cancelled);
                if prev & DONE != 0 {
                    return me.take_when_done();
                }
                if prev & LEAD != 0 {
                    // We were handed the reader role on our way out: pass it on.
                    let st = self.lock();
                    let next = if st.reader {
                        None
                    } else {
                        st.pipeline.hand_off()
                    };
                    drop(st);
                    wake_reader(next);
                }
                return Err(cx.gave_up(cancelled, wait.budget));
            }
            sys::futex_wait(&me.word, w, Some(wait.deadline.min(next_check) - now));
        }
    }

    fn try_lead(&self, me: &Arc<Slot>, wake: Option<RawFd>) -> Option<Arc<Conn>> {
        let mut st = self.lock();
        if st.reader || me.is_done() || !st.queued(me) {
            return None;
        }
        let Link::Up(conn) = &st.link else {
            return None;
        };
        let conn = conn.clone();
        st.become_reader(wake);
        Some(conn)
    }
}
