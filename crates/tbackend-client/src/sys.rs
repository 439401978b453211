//! The few system calls std does not wrap: futex waits, a per-thread wake eventfd,
//! `ppoll` over a socket and that eventfd, `send`/`recv` with per-call flags (a lane's
//! socket blocks for one kind of read only, lane/conn.rs) and a non-blocking connect.
//!
//! Why each exists: a waiting caller must be wakeable from an async-signal-safe
//! function (Ruby's unblocking function, possibly in signal context), which rules out
//! condition variables and anything that locks or allocates. A futex word can be poked
//! with an atomic plus `FUTEX_WAKE`; a thread blocked in `poll` on a socket can be woken
//! by a `write(2)` to an eventfd it also polls.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Sleeps while `*word == expected`, at most `timeout`. Spurious returns are fine: every
/// caller re-checks its condition in a loop.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(timespec);
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 for the whole call and `ts_ptr` is null or
    // points to a timespec on this stack frame; FUTEX_WAIT only reads both.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `n` threads sleeping on `word`. Async-signal-safe (one system call).
pub(crate) fn futex_wake(word: *const AtomicU32, n: i32) {
    // SAFETY: the caller guarantees `word` points to a live AtomicU32; FUTEX_WAKE does
    // not dereference it in user space and never blocks.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *const u32,
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

/// Adds 1 to an eventfd. Async-signal-safe: one `write(2)`, no allocation, no lock.
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64; a stale or closed fd only yields an error,
    // which is ignored (a wake-up is best effort, every waiter also has a deadline).
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

fn eventfd_drain(fd: RawFd) {
    let mut buf: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64; the fd is non-blocking.
    unsafe { libc::read(fd, (&mut buf as *mut u64).cast(), 8) };
}

/// Bumped in every forked child (pthread_atfork), so a thread-local wake fd inherited
/// from the parent is replaced instead of shared: the parent's thread with the same
/// thread-local still polls that very eventfd, and a child draining it would swallow the
/// parent's cancel wake-ups.
static FORK_GENERATION: AtomicU32 = AtomicU32::new(0);
static ATFORK: Once = Once::new();

extern "C" fn bump_fork_generation() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

fn register_atfork() {
    ATFORK.call_once(|| {
        // SAFETY: registers a plain extern "C" fn that only bumps an atomic, which is
        // all a child handler may safely do.
        unsafe { libc::pthread_atfork(None, None, Some(bump_fork_generation)) };
    });
}

/// The pid, cached per fork generation as `generation << 32 | pid` (0: not cached yet).
static PID: AtomicU64 = AtomicU64::new(0);

/// `getpid()` without a system call on every use: the pid is cached until the next
/// fork, which the pthread_atfork child handler counts (every fork through libc, Ruby's
/// included, runs it). Callers check it on every call to notice they run in a child.
pub fn process_id() -> u32 {
    register_atfork();
    let generation = u64::from(FORK_GENERATION.load(Ordering::Acquire));
    let cached = PID.load(Ordering::Acquire);
    if cached != 0 && cached >> 32 == generation {
        return cached as u32;
    }
    let pid = std::process::id();
    PID.store(generation << 32 | u64::from(pid), Ordering::Release);
    pid
}

struct WakeFd {
    fd: RawFd,
    generation: u32,
}

impl Drop for WakeFd {
    fn drop(&mut self) {
        // SAFETY: this thread owns the fd (in a child, its own inherited copy, whose
        // closing leaves the parent's untouched).
        unsafe { libc::close(self.fd) };
    }
}

thread_local! {
    static WAKE_FD: RefCell<Option<WakeFd>> = const { RefCell::new(None) };
}

/// This thread's wake eventfd, created on first use (`None` if the process is out of
/// fds: waits then fall back to short poll timeouts).
pub(crate) fn thread_wake_fd() -> Option<RawFd> {
    register_atfork();
    let generation = FORK_GENERATION.load(Ordering::Relaxed);
    WAKE_FD
        .try_with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.as_ref().is_some_and(|w| w.generation != generation) {
                *cell = None;
            }
            if cell.is_none() {
                // SAFETY: plain eventfd(2); the result is checked.
                let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
                if fd < 0 {
                    return None;
                }
                *cell = Some(WakeFd { fd, generation });
            }
            cell.as_ref().map(|w| w.fd)
        })
        .ok()
        .flatten()
}

/// Waits until `sock` is readable (or writable when `want_write`), the wake fd is
/// signalled, `timeout` passes or a signal arrives; the caller re-checks everything
/// after it anyway. The wake fd is drained here. True when the socket is ready.
pub(crate) fn poll_socket(
    sock: RawFd,
    want_write: bool,
    wake: Option<RawFd>,
    timeout: Duration,
) -> bool {
    let mut events = libc::POLLIN;
    if want_write {
        events |= libc::POLLOUT;
    }
    poll_with_wake(sock, events, wake, timeout) != 0
}

/// One `ppoll` over `sock` (for `events`) and the wake fd; drains the wake fd and
/// returns the socket's `revents` (0 on timeout, signal or wake-up).
fn poll_with_wake(
    sock: RawFd,
    events: libc::c_short,
    wake: Option<RawFd>,
    timeout: Duration,
) -> libc::c_short {
    let mut fds = [
        libc::pollfd {
            fd: sock,
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // Without a wake fd a cancel can only be noticed by time: keep the sleeps short.
    let timeout = if wake.is_some() {
        timeout
    } else {
        timeout.min(Duration::from_millis(2))
    };
    let ts = timespec(timeout);
    // SAFETY: `fds` and `ts` live on this frame for the whole call; a negative fd
    // entry is ignored by the kernel.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
    if n > 0 && fds[1].revents != 0 {
        eventfd_drain(fds[1].fd);
    }
    if n > 0 {
        fds[0].revents
    } else {
        0
    }
}

/// Why [`connect`] gave up.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Io(io::Error),
    TimedOut,
    Cancelled,
}

/// Connects a non-blocking TCP socket (TCP_NODELAY, close-on-exec) to `addr` before
/// `deadline`. Unlike `TcpStream::connect_timeout`, the wait can be cut short through
/// the thread's wake fd, so a cancelled call never sits out a whole connect timeout.
pub(crate) fn connect(
    addr: &SocketAddr,
    deadline: Instant,
    wake: Option<RawFd>,
    cancelled: &dyn Fn() -> bool,
) -> Result<TcpStream, ConnectError> {
    let (family, storage, len) = sockaddr(addr);
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(ConnectError::Io(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh socket we own; TcpStream takes ownership and closes it on
    // every return path below.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(ConnectError::Io(err));
        }
        loop {
            if cancelled() {
                return Err(ConnectError::Cancelled);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ConnectError::TimedOut);
            }
            let ready = poll_socket_out(fd, wake, deadline - now);
            if ready {
                break;
            }
        }
        if let Some(err) = stream.take_error().map_err(ConnectError::Io)? {
            return Err(ConnectError::Io(err));
        }
    }
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    Ok(stream)
}

fn poll_socket_out(sock: RawFd, wake: Option<RawFd>, timeout: Duration) -> bool {
    poll_with_wake(sock, libc::POLLOUT, wake, timeout) != 0
}

fn sockaddr(addr: &SocketAddr) -> (libc::c_int, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (
                libc::AF_INET,
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                libc::AF_INET6,
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// `recv(2)` with `flags`.
pub(crate) fn recv(sock: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is live and writable for its whole length during the call.
    let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `SO_RCVLOWAT`: the kernel wakes a waiter on `sock` (poll, recv) only once `bytes`
/// have arrived.
pub(crate) fn set_rcvlowat(sock: RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` lives on this frame for the call and its size is passed.
    let set = unsafe {
        libc::setsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `send(2)` that never blocks (the socket itself is blocking, for [`recv`] with
/// `MSG_WAITALL`) and never raises SIGPIPE.
pub(crate) fn send_nonblocking(sock: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is live and readable for its whole length during the call.
    let n = unsafe {
        libc::send(
            sock,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// close(2) and nothing else: in a forked child, dropping the inherited connection must
/// not `shutdown(2)` it, which would cut the parent's connection too.
pub(crate) fn close_inherited(fd: RawFd) {
    // SAFETY: the caller passes an fd this process owns and will never use again.
    unsafe { libc::close(fd) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn futex_wake_ends_a_wait() {
        let word = Arc::new(AtomicU32::new(0));
        let w2 = word.clone();
        let t = std::thread::spawn(move || {
            let t0 = Instant::now();
            while w2.load(Ordering::Acquire) == 0 {
                futex_wait(&w2, 0, Some(Duration::from_secs(5)));
            }
            t0.elapsed()
        });
        std::thread::sleep(Duration::from_millis(20));
        word.store(1, Ordering::Release);
        futex_wake(&*word, 1);
        assert!(t.join().unwrap() < Duration::from_secs(2));
    }

    #[test]
    fn futex_wait_times_out() {
        let word = AtomicU32::new(0);
        let t0 = Instant::now();
        futex_wait(&word, 0, Some(Duration::from_millis(20)));
        let e = t0.elapsed();
        assert!(
            e >= Duration::from_millis(15) && e < Duration::from_secs(1),
            "{e:?}"
        );
    }

    #[test]
    fn wake_fd_interrupts_a_poll() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = thread_wake_fd().unwrap();
        assert_eq!(thread_wake_fd(), Some(fd), "cached per thread");
        eventfd_signal(fd);
        let t0 = Instant::now();
        use std::os::fd::AsRawFd;
        poll_socket(s.as_raw_fd(), false, Some(fd), Duration::from_secs(5));
        assert!(t0.elapsed() < Duration::from_secs(1));
        // Drained: the next poll sleeps its whole timeout.
        let t0 = Instant::now();
        poll_socket(s.as_raw_fd(), false, Some(fd), Duration::from_millis(20));
        assert!(t0.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn connect_refused_and_ok() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let s = connect(&addr, deadline, thread_wake_fd(), &|| false).unwrap();
        assert!(s.nodelay().unwrap());
        drop(listener);
        match connect(&addr, deadline, thread_wake_fd(), &|| false) {
            Err(ConnectError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!("{other:?}"),
        }
    }
}
