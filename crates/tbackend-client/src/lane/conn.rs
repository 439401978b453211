//! The socket side of a lane: connecting, non-blocking writes with their overflow buffer,
//! reading and decoding whatever answers have arrived, and the idle-close probe.
//!
//! The socket is in blocking mode, yet every call but one says `MSG_DONTWAIT`: the one
//! that blocks is [`Conn::read_waiting`]. The daemon writes each answer as three sends
//! (length, body, CRC), so a reader woken by the first one usually finds the answer
//! incomplete. Waiting with `ppoll` (cancellable: it also watches the thread's wake fd)
//! and then reading costs two system calls per piece; a `recv` with `MSG_WAITALL` for
//! exactly the bytes still missing costs one for all of them, and a plain blocking
//! `recv` as the first wait after a request saves the `ppoll` before the first piece.
//! Measured against the `real` test daemon, per warm `write_fact_once`: 6.0 system calls
//! with `ppoll` before every read, 3.7 with `MSG_WAITALL` for the rest, 2.1 with the
//! blocking first wait too (spec/client/syscalls_spec.rb pins it). Such a `recv` cannot
//! be woken by a cancel, so `SO_RCVTIMEO` bounds it by [`REST_WAIT`], and the reader
//! checks its cancel and deadline after each. It waits for a first piece so only when
//! its deadline is further away than that (an answer is most often back sooner; if not,
//! it goes on in `ppoll`); the rest of an answer whose head has arrived is microseconds
//! away unless the daemon stalls in the middle of it, and then the reader re-checks every
//! `REST_WAIT` (tests/split_answers.rs).
//!
//! A batch waiting for many answers at once does neither: it is woken once they are all
//! there ([`Conn::wait_gathered`]), one `ppoll` and one `recv` per round instead of a
//! wake-up per piece (tests/pipelining.rs, tests/writer.rs count the reads).

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tbackend_core::protocol::frame::{Decoder, FrameError};

use super::Context;
use crate::error::{Endpoint, TimeoutPhase, TransportError};
use crate::sys;
use crate::wait::{later, Wait};

const READ_CHUNK: usize = 64 * 1024;
/// A frame's bytes beside its body: the length before it, the CRC after it.
const FRAME_OVERHEAD: usize = 8;
/// The longest a [`Conn::read_waiting`] blocks (uncancellable) for the rest of an answer.
pub(crate) const REST_WAIT: Duration = Duration::from_millis(2);

/// How a lane's reader has read answers, over all its connections.
#[derive(Default)]
pub(crate) struct ReadCounts {
    /// `recv(2)` calls reading answers.
    pub(crate) recvs: AtomicU64,
    /// Waits for answers that ended before the bytes they waited for were in (at
    /// [`REST_WAIT`], a signal, a wake-up): each is one read more than a machine that
    /// keeps up needs.
    pub(crate) short_waits: AtomicU64,
}

/// One open connection of a lane.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    endpoint: Endpoint,
    /// Counted for the lane across its connections.
    reads: Arc<ReadCounts>,
    /// Held by the reader only.
    pub(crate) read: Mutex<ReadSide>,
}

pub(crate) struct ReadSide {
    decoder: Decoder,
    buf: Box<[u8]>,
    /// The socket's `SO_RCVLOWAT` as last set (1: the kernel's default).
    lowat: usize,
    /// The shortest answer frame read on this connection so far.
    shortest: Option<usize>,
}

impl ReadSide {
    /// Bytes still to come for the answer in progress, once its length has arrived.
    pub(crate) fn missing(&self) -> usize {
        self.decoder.missing()
    }

    /// How many bytes `answers` more answers bring at the least, judged by the
    /// shortest answer this connection has carried (minus the part of the next one
    /// already buffered): `None` before any answer, or when there is nothing worth
    /// gathering. A guess, not a promise: an answer shorter than any before leaves the
    /// total short of it, which costs one [`REST_WAIT`] (see [`Conn::wait_gathered`]).
    pub(crate) fn gather_bytes(&self, answers: usize) -> Option<usize> {
        let bytes = self
            .shortest?
            .saturating_mul(answers)
            .saturating_sub(self.decoder.buffered())
            .min(READ_CHUNK);
        (bytes > 1).then_some(bytes)
    }
}

impl Conn {
    pub(crate) fn new(stream: TcpStream, cx: &Context, reads: Arc<ReadCounts>) -> Conn {
        Conn {
            stream,
            endpoint: cx.endpoint.clone(),
            reads,
            read: Mutex::new(ReadSide {
                decoder: Decoder::new(cx.config.max_answer_bytes),
                buf: vec![0; READ_CHUNK].into_boxed_slice(),
                lowat: 1,
                shortest: None,
            }),
        }
    }

    fn recv(&self, buf: &mut [u8], flags: libc::c_int) -> std::io::Result<usize> {
        self.reads.recvs.fetch_add(1, Ordering::Relaxed);
        sys::recv(self.stream.as_raw_fd(), buf, flags)
    }

    /// Sets `SO_RCVLOWAT` (when it changes): the kernel wakes a waiter on the socket
    /// only once that many bytes are there. A failure leaves the old value, which only
    /// means more or fewer wake-ups.
    fn set_lowat(&self, side: &mut ReadSide, bytes: usize) {
        if side.lowat == bytes {
            return;
        }
        if sys::set_rcvlowat(self.stream.as_raw_fd(), bytes).is_ok() {
            side.lowat = bytes;
        }
    }

    /// Before any wait that is not [`Conn::wait_gathered`]: woken by the first byte.
    pub(crate) fn wake_on_any(&self, side: &mut ReadSide) {
        self.set_lowat(side, 1);
    }

    /// Sleeps (cancellable, at most [`REST_WAIT`] and `timeout`) until `bytes` have
    /// arrived, in one `ppoll` that the kernel wakes once, not at every piece of every
    /// answer; the caller then reads them with [`Conn::read_available`]. For a batch
    /// waiting for many answers at once: the daemon sends each in three pieces, and a
    /// reader woken by each piece spends more on waking than on reading. Should fewer
    /// bytes come (an answer shorter than `bytes` supposed, or the daemon slower than
    /// `REST_WAIT`), the poll ends at its timeout and the caller reads what is there,
    /// so nothing waits longer than that for a wrong guess.
    pub(crate) fn wait_gathered(
        &self,
        side: &mut ReadSide,
        bytes: usize,
        want_write: bool,
        wake: Option<std::os::fd::RawFd>,
        timeout: Duration,
    ) {
        self.set_lowat(side, bytes);
        let ready = sys::poll_socket(
            self.stream.as_raw_fd(),
            want_write,
            wake,
            timeout.min(REST_WAIT),
        );
        if !ready {
            self.reads.short_waits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads what the socket holds now (without waiting) and appends the whole answers
    /// it completes to `bodies`. Whole frames that arrived before an EOF or a broken
    /// frame are still good answers: they are appended before the error is returned.
    pub(crate) fn read_available(
        &self,
        side: &mut ReadSide,
        bodies: &mut Vec<Vec<u8>>,
    ) -> Option<TransportError> {
        let mut broken = None;
        loop {
            match self.recv(&mut side.buf, libc::MSG_DONTWAIT) {
                Ok(0) => {
                    broken = Some(self.eof());
                    break;
                }
                Ok(n) => {
                    side.decoder.feed(&side.buf[..n]);
                    if n < side.buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    broken = Some(io_error(self.endpoint.clone(), e));
                    break;
                }
            }
        }
        self.decode(side, bodies, broken)
    }

    /// Waits (at most [`REST_WAIT`], not cancellable) in one `recv`: with `missing`
    /// above 0, for that many bytes (the rest of the answer in progress); otherwise for
    /// any. Like [`Conn::read_available`] otherwise; less (a timeout, a signal) is fine:
    /// the caller loops.
    pub(crate) fn read_waiting(
        &self,
        side: &mut ReadSide,
        missing: usize,
        bodies: &mut Vec<Vec<u8>>,
    ) -> Option<TransportError> {
        let (want, flags) = if missing > 0 {
            (missing.min(side.buf.len()), libc::MSG_WAITALL)
        } else {
            (side.buf.len(), 0)
        };
        let broken = match self.recv(&mut side.buf[..want], flags) {
            Ok(0) => Some(self.eof()),
            Ok(n) => {
                side.decoder.feed(&side.buf[..n]);
                None
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => None,
            Err(e) => Some(io_error(self.endpoint.clone(), e)),
        };
        self.decode(side, bodies, broken)
    }

    fn eof(&self) -> TransportError {
        TransportError::Eof {
            endpoint: self.endpoint.clone(),
        }
    }

    fn decode(
        &self,
        side: &mut ReadSide,
        bodies: &mut Vec<Vec<u8>>,
        mut broken: Option<TransportError>,
    ) -> Option<TransportError> {
        loop {
            match side.decoder.next_frame() {
                Ok(Some(body)) => {
                    let frame = body.len() + FRAME_OVERHEAD;
                    side.shortest = Some(side.shortest.map_or(frame, |s| s.min(frame)));
                    bodies.push(body);
                }
                Ok(None) => break,
                Err(e) => {
                    broken = Some(frame_error(self.endpoint.clone(), e));
                    break;
                }
            }
        }
        broken
    }

    /// Whether the daemon closed an idle connection (or sent bytes nobody asked for,
    /// which makes it just as unusable). Does not wait.
    pub(crate) fn peer_gone(&self) -> bool {
        let mut byte = [0u8; 1];
        // Not counted with the reads of answers.
        match sys::recv(
            self.stream.as_raw_fd(),
            &mut byte,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        ) {
            Ok(_) => true,
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        }
    }
}

/// What a lane has to write: socket writes never block, so what the socket does not
/// take waits here for the reader to flush when the socket is writable.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) pending: Vec<u8>,
    /// `write(2)` calls so far, all connections.
    pub(crate) writes: u64,
}

impl Outbox {
    /// Writes a whole frame or queues the rest; never blocks. On error, whether not one
    /// byte of this frame left.
    pub(crate) fn write_frame(
        &mut self,
        conn: &Conn,
        frame: &[u8],
    ) -> Result<(), (TransportError, bool)> {
        if !self.pending.is_empty() {
            self.flush(conn).map_err(|e| (e, false))?;
            if !self.pending.is_empty() {
                self.pending.extend_from_slice(frame);
                return Ok(());
            }
        }
        let mut off = 0;
        while off < frame.len() {
            self.writes += 1;
            match sys::send_nonblocking(conn.stream.as_raw_fd(), &frame[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.pending.extend_from_slice(&frame[off..]);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err((io_error(conn.endpoint.clone(), e), off == 0)),
            }
        }
        Ok(())
    }

    /// Writes as much of the pending output as the socket takes now.
    pub(crate) fn flush(&mut self, conn: &Conn) -> Result<(), TransportError> {
        let mut off = 0;
        let mut result = Ok(());
        while off < self.pending.len() {
            self.writes += 1;
            match sys::send_nonblocking(conn.stream.as_raw_fd(), &self.pending[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(io_error(conn.endpoint.clone(), e));
                    break;
                }
            }
        }
        self.pending.drain(..off);
        result
    }
}

/// Opens a connection within the wait's deadline and the connect timeout. On error,
/// whether the failure counts towards the reconnect backoff (a cancel does not).
pub(crate) fn connect(cx: &Context, wait: &Wait) -> Result<TcpStream, (TransportError, bool)> {
    let start = std::time::Instant::now();
    let connect_deadline = wait.deadline.min(later(start, cx.config.connect_timeout));
    let endpoint = || cx.endpoint.clone();
    let addrs = (cx.config.host.as_str(), cx.config.port)
        .to_socket_addrs()
        .map_err(|e| {
            let detail = format!("cannot resolve {:?}: {e}", cx.config.host);
            (
                TransportError::Connect {
                    endpoint: endpoint(),
                    detail,
                },
                true,
            )
        })?;
    let mut last = None;
    for addr in addrs {
        match sys::connect(&addr, connect_deadline, wait.wake, &|| wait.cancelled()) {
            Ok(stream) => {
                // Blocking only for read_waiting, and then at most REST_WAIT (see above).
                let blocking = stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_read_timeout(Some(REST_WAIT)));
                match blocking {
                    Ok(()) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(sys::ConnectError::Cancelled) => {
                return Err((
                    TransportError::Cancelled {
                        endpoint: endpoint(),
                    },
                    false,
                ));
            }
            Err(sys::ConnectError::TimedOut) => {
                let after = if connect_deadline < wait.deadline {
                    cx.config.connect_timeout
                } else {
                    wait.budget
                };
                let error = TransportError::Timeout {
                    endpoint: endpoint(),
                    after,
                    phase: TimeoutPhase::Connect,
                };
                return Err((error, true));
            }
            Err(sys::ConnectError::Io(e)) => last = Some(e),
        }
    }
    let detail = last.map_or_else(
        || "host resolves to no address".to_owned(),
        |e| e.to_string(),
    );
    Err((
        TransportError::Connect {
            endpoint: endpoint(),
            detail,
        },
        true,
    ))
}

fn io_error(endpoint: Endpoint, e: std::io::Error) -> TransportError {
    TransportError::Io {
        endpoint,
        detail: e.to_string(),
    }
}

fn frame_error(endpoint: Endpoint, e: FrameError) -> TransportError {
    match e {
        FrameError::BadCrc { .. } => TransportError::BadCrc { endpoint },
        FrameError::TooLarge { len, cap } => TransportError::TooLarge { endpoint, len, cap },
    }
}
