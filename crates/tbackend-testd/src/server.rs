//! Sockets: the data listener, the fixed worker pool, the connection loop with its
//! fault hooks, and the control listener.

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tbackend_core::fact::json::canonical_json;
use tbackend_core::protocol::frame::{encode_into, Decoder};

use crate::config::{Config, PollWhile, Profile};
use crate::engine::{Engine, EngineConfig};
use crate::faults::{AnswerFaultKind, Faults, Stall};

/// The real daemon enforces no frame-size limit; neither do we. The decoder only
/// buffers what arrives, so a 4 GiB header costs nothing until its body comes (the real
/// daemon allocates it up front; see transcript length_prefix_0xFFFFFFFF_no_body).
const NO_CAP: usize = usize::MAX;
const READ_CHUNK: usize = 64 * 1024;
/// How often the `real` profile's accept loop looks for new connections, as the real
/// daemon's does (docs/protocol.md §2: a new connection waits about 7 ms for its first
/// answer).
const REAL_ACCEPT_POLL: Duration = Duration::from_millis(10);
/// How long a control `set` waits for the data listener to close or rebind.
const LISTENER_SWITCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection and request counters of the control `status` op.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    active: AtomicU64,
    queued: AtomicU64,
    requests_received: AtomicU64,
    requests_answered: AtomicU64,
}

/// What the accept, worker and control threads of one daemon hold in common.
struct ServerState {
    cfg: Config,
    engine: Engine,
    faults: Arc<Faults>,
    addr: SocketAddr,
    control_port: u16,
    counters: Counters,
    queue: Mutex<VecDeque<(u64, TcpStream)>>,
    queue_cv: Condvar,
    /// Clones of every open data connection, so `drop_connections` can cut them.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    /// Whether the data listener is bound (false while refusing connections).
    listening: Mutex<bool>,
    listening_cv: Condvar,
}

/// A started daemon (threads run until the process exits).
pub struct Running {
    shared: Arc<ServerState>,
}

impl Running {
    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    pub fn control_port(&self) -> u16 {
        self.shared.control_port
    }

    pub fn config(&self) -> &Config {
        &self.shared.cfg
    }

    /// The ready line the binary prints.
    pub fn ready_line(&self) -> String {
        let cfg = &self.shared.cfg;
        format!(
            "tbackend-testd ready host={} port={} control_port={} pid={} data_dir={} auth={}",
            cfg.host,
            self.port(),
            self.control_port(),
            std::process::id(),
            cfg.data_dir
                .as_ref()
                .map_or("ephemeral".to_owned(), |d| d.display().to_string()),
            if cfg.auth { "on" } else { "off" },
        )
    }
}

/// Replays the data directory, then binds the ports and starts serving.
pub fn start(cfg: Config) -> io::Result<Running> {
    let faults = Arc::new(Faults::default());
    // Like the real daemon: the log is replayed before the port is bound, so clients
    // see "connection refused" during a restart, never a half-loaded store.
    let engine = Engine::open(
        EngineConfig {
            data_dir: cfg.data_dir.clone(),
            auth: cfg.auth,
            strict_hash: cfg.strict_hash,
            commit_interval: cfg.commit_interval,
            max_inflight: cfg.max_inflight,
            host: cfg.host.clone(),
            pool_size: cfg.pool_size,
            request_cpu_us: cfg.request_cpu_us,
        },
        Arc::clone(&faults),
    )?;
    let requested = (cfg.host.as_str(), cfg.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "host resolves to nothing"))?;
    let listener = bind(requested)?;
    let addr = listener.local_addr()?;
    engine.set_port(addr.port());
    let control = TcpListener::bind(("127.0.0.1", cfg.control_port))?;
    let shared = Arc::new(ServerState {
        engine,
        faults,
        addr,
        control_port: control.local_addr()?.port(),
        counters: Counters::default(),
        queue: Mutex::new(VecDeque::new()),
        queue_cv: Condvar::new(),
        conns: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
        listening: Mutex::new(true),
        listening_cv: Condvar::new(),
        cfg,
    });
    for i in 0..shared.cfg.pool_size {
        let s = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || worker(s))?;
    }
    let s = Arc::clone(&shared);
    thread::Builder::new()
        .name("accept".into())
        .spawn(move || accept_loop(s, listener))?;
    let s = Arc::clone(&shared);
    thread::Builder::new()
        .name("control".into())
        .spawn(move || control_loop(s, control))?;
    Ok(Running { shared })
}

/// Binds the data port. std sets SO_REUSEADDR on Unix listeners, which is what lets a
/// restarted daemon (after SIGKILL, with connections in TIME_WAIT) rebind its fixed
/// port at once, and the refuse-connections fault rebind the same port.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn set_listening(shared: &ServerState, value: bool) {
    *shared.listening.lock().unwrap() = value;
    shared.listening_cv.notify_all();
}

fn accept_loop(shared: Arc<ServerState>, listener: TcpListener) {
    let mut listener = Some(listener);
    loop {
        if shared.faults.refuse_connections() {
            // Closing the listening socket is what makes connects fail with
            // ECONNREFUSED, as during a real daemon's restart. Connections whose
            // handshake completed are open for their clients: accept them first, or
            // closing the listener would reset them.
            if let Some(l) = listener.take() {
                accept_pending(&shared, &l);
                drop(l); // closed before the control answer goes out
                set_listening(&shared, false);
            }
            thread::sleep(Duration::from_millis(5));
            continue;
        }
        let Some(l) = listener.as_ref() else {
            match bind(shared.addr) {
                Ok(l) => {
                    listener = Some(l);
                    set_listening(&shared, true);
                }
                Err(e) => {
                    eprintln!("tbackend-testd: rebinding {}: {e}", shared.addr);
                    thread::sleep(Duration::from_millis(20));
                }
            }
            continue;
        };
        if shared.cfg.profile == Profile::Real {
            thread::sleep(REAL_ACCEPT_POLL);
        } else {
            let mut pfd = libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 20) };
        }
        accept_pending(&shared, l);
    }
}

/// Accepts every connection waiting in the backlog (the listener is non-blocking).
fn accept_pending(shared: &ServerState, l: &TcpListener) {
    loop {
        match l.accept() {
            Ok((stream, _)) => enqueue(shared, stream),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: back off, the real daemon keeps going too.
                eprintln!("tbackend-testd: accept: {e}");
                thread::sleep(Duration::from_millis(10));
                break;
            }
        }
    }
}

fn enqueue(shared: &ServerState, stream: TcpStream) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    if let Ok(clone) = stream.try_clone() {
        shared.conns.lock().unwrap().insert(id, clone);
    }
    let c = &shared.counters;
    c.accepted.fetch_add(1, Ordering::SeqCst);
    c.open.fetch_add(1, Ordering::SeqCst);
    c.queued.fetch_add(1, Ordering::SeqCst);
    shared.queue.lock().unwrap().push_back((id, stream));
    shared.queue_cv.notify_one();
}

/// A pool thread: owns one connection until it closes, then takes the next. A
/// connection waiting in the queue is accepted but not read, and nothing tells its
/// client so (docs/protocol.md §2).
fn worker(shared: Arc<ServerState>) {
    loop {
        let (id, stream) = {
            let mut q = shared.queue.lock().unwrap();
            loop {
                if let Some(item) = q.pop_front() {
                    break item;
                }
                q = shared.queue_cv.wait(q).unwrap();
            }
        };
        let c = &shared.counters;
        c.queued.fetch_sub(1, Ordering::SeqCst);
        c.active.fetch_add(1, Ordering::SeqCst);
        shared
            .engine
            .metrics
            .active_connections
            .fetch_add(1, Ordering::SeqCst);
        serve(&shared, stream);
        shared.conns.lock().unwrap().remove(&id);
        shared
            .engine
            .metrics
            .active_connections
            .fetch_sub(1, Ordering::SeqCst);
        c.active.fetch_sub(1, Ordering::SeqCst);
        c.open.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Next {
    Continue,
    Close,
}

/// Serves one connection. It ends only on peer EOF, a bad CRC, the idle timeout, a
/// failed write, or an injected fault; application errors never close it.
fn serve(shared: &ServerState, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // A read that waits longer than the idle timeout ends the connection: no request
    // for that long, or a frame stalled halfway, is closed silently.
    if stream
        .set_read_timeout(Some(shared.cfg.idle_timeout))
        .is_err()
    {
        return;
    }
    let mut decoder = Decoder::new(NO_CAP);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    let poll = shared.cfg.profile.poll();
    let cores = cores();
    loop {
        let active = shared.counters.active.load(Ordering::Relaxed) as usize;
        let spun = if polls(poll.when, active, cores) {
            spin_read(&stream, &mut buf, poll.budget)
        } else {
            None
        };
        let n = match spun.unwrap_or_else(|| stream.read(&mut buf)) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        shared
            .engine
            .metrics
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        decoder.feed(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => {
                    if let Next::Close = on_frame(shared, &mut stream, &body, &mut out) {
                        let _ = flush(shared, &mut stream, &mut out);
                        return;
                    }
                }
                Ok(None) => break,
                // Bad CRC: close at once, no answer; frames behind it are lost.
                Err(_) => {
                    let _ = flush(shared, &mut stream, &mut out);
                    return;
                }
            }
        }
        if flush(shared, &mut stream, &mut out).is_err() {
            return;
        }
    }
}

/// The cores this daemon may run on. A one-core machine never polls: the client it
/// would wait for needs that core. Both profiles poll (`Profile::poll`): the real daemon
/// answers a lone connection's ping in 0.04 ms (docs/protocol.md §11), which a worker
/// that blocks at once does not reach here.
fn cores() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

fn polls(when: PollWhile, active: usize, cores: usize) -> bool {
    cores >= 2
        && match when {
            PollWhile::Alone => active <= 1,
            PollWhile::CoresSpare => active <= cores,
        }
}

/// Non-blocking reads for up to `budget`; `None` when nothing came.
fn spin_read(stream: &TcpStream, buf: &mut [u8], budget: Duration) -> Option<io::Result<usize>> {
    let deadline = Instant::now() + budget;
    loop {
        // SAFETY: `buf` is valid for writes of its length; the fd is open.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Some(Ok(n as usize));
        }
        let err = io::Error::last_os_error();
        if err.kind() != ErrorKind::WouldBlock && err.kind() != ErrorKind::Interrupted {
            return Some(Err(err));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::hint::spin_loop();
    }
}

fn flush(shared: &ServerState, stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let result = send(shared, stream, out);
    out.clear();
    result
}

fn send(shared: &ServerState, stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    let result = stream.write_all(bytes);
    shared
        .engine
        .metrics
        .bytes_written
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    result
}

/// Queues one answer frame. The fast profile gathers the answers of one read into a
/// single send; the real daemon writes each answer at once as three sends (length,
/// body, CRC), which with `TCP_NODELAY` are three segments, and three wake-ups for a
/// client that waits for them.
fn emit(shared: &ServerState, stream: &mut TcpStream, frame: &[u8], out: &mut Vec<u8>) -> Next {
    if shared.cfg.profile == Profile::Fast {
        out.extend_from_slice(frame);
        return Next::Continue;
    }
    let (len, rest) = frame.split_at(4);
    let (body, crc) = rest.split_at(rest.len() - 4);
    let sent = flush(shared, stream, out)
        .and_then(|()| send(shared, stream, len))
        .and_then(|()| send(shared, stream, body))
        .and_then(|()| send(shared, stream, crc));
    match sent {
        Ok(()) => Next::Continue,
        Err(_) => Next::Close,
    }
}

fn on_frame(shared: &ServerState, stream: &mut TcpStream, body: &[u8], out: &mut Vec<u8>) -> Next {
    let faults = &shared.faults;
    shared
        .counters
        .requests_received
        .fetch_add(1, Ordering::SeqCst);
    if faults.stall() == Stall::BeforeExec {
        return Next::Continue;
    }
    let strike = faults.next_strike();
    let answer = match &strike {
        Some(s) if !s.execute => {
            if s.kind == AnswerFaultKind::Close {
                return Next::Close;
            }
            canonical_json(&json!({"error": "injected fault: request not executed", "ok": false}))
        }
        _ => shared.engine.handle(body),
    };
    if faults.stall() == Stall::AfterExec {
        return Next::Continue;
    }
    let delay = faults.delay_ms();
    if delay > 0 {
        if flush(shared, stream, out).is_err() {
            return Next::Close;
        }
        thread::sleep(Duration::from_millis(delay));
    }
    let mut frame = Vec::with_capacity(answer.len() + 8);
    encode_into(&answer, NO_CAP, &mut frame).expect("an answer fits a u32 length");
    let Some(strike) = strike else {
        shared
            .counters
            .requests_answered
            .fetch_add(1, Ordering::SeqCst);
        return emit(shared, stream, &frame, out);
    };
    match strike.kind {
        AnswerFaultKind::Close => Next::Close,
        AnswerFaultKind::CloseMidFrame => {
            out.extend_from_slice(&frame[..frame.len() / 2]);
            Next::Close
        }
        AnswerFaultKind::BadCrc => {
            let n = frame.len();
            for b in &mut frame[n - 4..] {
                *b ^= 0xff;
            }
            emit(shared, stream, &frame, out)
        }
        AnswerFaultKind::Garbage => {
            out.extend_from_slice(&strike.garbage);
            Next::Continue
        }
    }
}

fn control_loop(shared: Arc<ServerState>, listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let s = Arc::clone(&shared);
        let _ = thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || control_conn(&s, stream));
    }
}

fn control_conn(shared: &ServerState, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut decoder = Decoder::new(16 * 1024 * 1024);
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.feed(&buf[..n]);
        loop {
            let body = match decoder.next_frame() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(_) => return,
            };
            let answer = match serde_json::from_slice::<Value>(&body) {
                Ok(req) => control_op(shared, &req),
                Err(e) => json!({"ok": false, "error": format!("invalid JSON: {e}")}),
            };
            let mut frame = Vec::new();
            encode_into(&canonical_json(&answer), NO_CAP, &mut frame).expect("small answer");
            if stream.write_all(&frame).is_err() {
                return;
            }
        }
    }
}

fn control_op(shared: &ServerState, req: &Value) -> Value {
    match req.get("op").and_then(Value::as_str).unwrap_or("") {
        "ping" => json!({"ok": true, "pong": true}),
        "status" => status(shared),
        "set" => {
            let Some(fields) = req.as_object() else {
                return json!({"ok": false, "error": "request must be an object"});
            };
            if let Err(e) = shared.faults.apply(fields) {
                return json!({"ok": false, "error": e});
            }
            if let Err(e) = await_listener(shared) {
                return json!({"ok": false, "error": e});
            }
            json!({"ok": true, "faults": shared.faults.to_json()})
        }
        "clear" => {
            shared.faults.clear();
            if let Err(e) = await_listener(shared) {
                return json!({"ok": false, "error": e});
            }
            json!({"ok": true, "faults": shared.faults.to_json()})
        }
        "drop_connections" => {
            let conns = shared.conns.lock().unwrap();
            for s in conns.values() {
                let _ = s.shutdown(Shutdown::Both);
            }
            json!({"ok": true, "dropped": conns.len()})
        }
        other => json!({"ok": false, "error": format!("unknown control op '{other}'")}),
    }
}

/// Waits until the data listener matches the refuse-connections fault, so that a
/// client connecting right after the control answer sees the new state.
fn await_listener(shared: &ServerState) -> Result<(), String> {
    let want = !shared.faults.refuse_connections();
    let deadline = Instant::now() + LISTENER_SWITCH_TIMEOUT;
    let mut listening = shared.listening.lock().unwrap();
    while *listening != want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "data listener did not {} in time",
                if want { "rebind" } else { "close" }
            ));
        }
        listening = shared.listening_cv.wait_timeout(listening, left).unwrap().0;
    }
    Ok(())
}

fn status(shared: &ServerState) -> Value {
    let c = &shared.counters;
    json!({
        "ok": true,
        "port": shared.addr.port(),
        "control_port": shared.control_port,
        "pool_size": shared.cfg.pool_size,
        "profile": shared.cfg.profile.name(),
        "request_cpu_us": shared.cfg.request_cpu_us,
        "listening": *shared.listening.lock().unwrap(),
        "connections_accepted": c.accepted.load(Ordering::SeqCst),
        "connections_open": c.open.load(Ordering::SeqCst),
        "connections_active": c.active.load(Ordering::SeqCst),
        "connections_queued": c.queued.load(Ordering::SeqCst),
        "requests_received": c.requests_received.load(Ordering::SeqCst),
        "requests_answered": c.requests_answered.load(Ordering::SeqCst),
        "inflight": shared.engine.inflight(),
        "faults": shared.faults.to_json(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_poll_as_their_profile_says() {
        let fast = Profile::Fast.poll().when;
        let real = Profile::Real.poll().when;
        // (active connections, cores) -> (fast polls, real polls)
        for (active, cores, want) in [
            (1, 2, (true, true)),
            (2, 2, (false, true)),
            (3, 2, (false, false)),
            (12, 2, (false, false)),
            (4, 4, (false, true)),
            (1, 1, (false, false)),
        ] {
            assert_eq!(
                (polls(fast, active, cores), polls(real, active, cores)),
                want,
                "{active} active on {cores} cores"
            );
        }
    }
}
