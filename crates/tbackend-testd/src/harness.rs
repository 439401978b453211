//! [`TestDaemon`]: the daemon binary as a child process of a test.
//!
//! A child process (not threads in the test) so a test can SIGKILL it and restart it on
//! the same data directory and port, as a crash would. The child is always killed when
//! the `TestDaemon` is dropped, panics included.
//!
//! Finding the binary: [`Options::binary`], else `$TBACKEND_TESTD_BIN`, else
//! `tbackend-testd` next to the running test executable's target directory, else
//! `<workspace>/target/{debug,release}/tbackend-testd`. This crate's integration tests
//! pass `env!("CARGO_BIN_EXE_tbackend-testd")`; other crates run
//! `cargo build -p tbackend-testd` first (or set `TBACKEND_TESTD_BIN`).

use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::auth::{BOOTSTRAP_FILE, EPHEMERAL_ADMIN_TOKEN};
use crate::config::Profile;
use crate::control::ControlClient;
use crate::wire::Conn;

/// Where a test daemon keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// No data directory: nothing persists, durable writes answer `in_memory`.
    Ephemeral,
    /// A fresh directory under the system temp dir, removed on drop (kept if
    /// `TBACKEND_TESTD_KEEP_DATA` is set).
    Temp,
    /// This directory (created if missing, never removed).
    Path(PathBuf),
}

/// How to start a [`TestDaemon`]. Defaults: ephemeral, a free port, pool 16, idle
/// timeout 30 s, no auth, no limiter, 5 ms commit window, the profile the daemon picks
/// (`$TBACKEND_TESTD_PROFILE`, else fast).
#[derive(Debug, Clone)]
pub struct Options {
    pub port: u16,
    pub pool_size: usize,
    pub idle_timeout: Duration,
    pub max_inflight: usize,
    pub data_dir: DataDir,
    pub auth: bool,
    pub commit_interval_ms: u64,
    pub strict_hash: bool,
    /// `--profile`; `None` leaves the choice to the daemon.
    pub profile: Option<Profile>,
    /// The binary to run; see the module doc for the search when `None`.
    pub binary: Option<PathBuf>,
    /// More arguments, appended as they are.
    pub extra_args: Vec<String>,
    /// How long to wait for the ready line (log replay included).
    pub ready_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            port: 0,
            pool_size: 16,
            idle_timeout: Duration::from_secs(30),
            max_inflight: 0,
            data_dir: DataDir::Ephemeral,
            auth: false,
            commit_interval_ms: 5,
            strict_hash: false,
            profile: None,
            binary: None,
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

impl Options {
    pub fn new() -> Options {
        Options::default()
    }
    pub fn temp_data_dir(mut self) -> Self {
        self.data_dir = DataDir::Temp;
        self
    }
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = DataDir::Path(dir.into());
        self
    }
    pub fn auth(mut self) -> Self {
        self.auth = true;
        self
    }
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }
    pub fn max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = n;
        self
    }
    pub fn commit_interval_ms(mut self, ms: u64) -> Self {
        self.commit_interval_ms = ms;
        self
    }
    pub fn strict_hash(mut self) -> Self {
        self.strict_hash = true;
        self
    }
    /// Fast for tests, real for benchmarks (see [`Profile`]).
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = Some(profile);
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }
}

/// A running `tbackend-testd` child process.
#[derive(Debug)]
pub struct TestDaemon {
    opts: Options,
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    control_port: u16,
    data_dir: Option<PathBuf>,
    remove_dir: bool,
    ready_line: String,
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

impl TestDaemon {
    /// Starts a daemon; panics (with the reason) if it does not come up.
    pub fn start(opts: Options) -> TestDaemon {
        TestDaemon::try_start(opts).unwrap_or_else(|e| panic!("starting tbackend-testd: {e}"))
    }

    pub fn try_start(opts: Options) -> io::Result<TestDaemon> {
        let binary = match &opts.binary {
            Some(b) => b.clone(),
            None => locate_binary().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "tbackend-testd binary not found: build it (cargo build -p tbackend-testd) or set TBACKEND_TESTD_BIN",
                )
            })?,
        };
        let (data_dir, remove_dir) = match &opts.data_dir {
            DataDir::Ephemeral => (None, false),
            DataDir::Temp => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let dir = std::env::temp_dir().join(format!(
                    "tbackend-testd-{}-{}-{nanos}",
                    std::process::id(),
                    NEXT_DIR.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&dir)?;
                (
                    Some(dir),
                    std::env::var_os("TBACKEND_TESTD_KEEP_DATA").is_none(),
                )
            }
            DataDir::Path(p) => {
                std::fs::create_dir_all(p)?;
                (Some(p.clone()), false)
            }
        };
        let mut daemon = TestDaemon {
            port: opts.port,
            control_port: 0,
            opts,
            binary,
            child: None,
            data_dir,
            remove_dir,
            ready_line: String::new(),
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let o = &self.opts;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--control-port")
            .arg(self.control_port.to_string())
            .arg("--pool-size")
            .arg(o.pool_size.to_string())
            .arg("--idle-timeout")
            .arg(o.idle_timeout.as_secs_f64().to_string())
            .arg("--max-inflight")
            .arg(o.max_inflight.to_string())
            .arg("--commit-interval-ms")
            .arg(o.commit_interval_ms.to_string());
        if let Some(dir) = &self.data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        if o.auth {
            cmd.arg("--auth");
        }
        if o.strict_hash {
            cmd.arg("--strict-hash");
        }
        if let Some(profile) = o.profile {
            cmd.arg("--profile").arg(profile.name());
        }
        cmd.args(&o.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
        });
        let line = match rx.recv_timeout(o.ready_timeout) {
            Ok(Ok(line)) if line.starts_with("tbackend-testd ready ") => line,
            other => {
                let _ = child.kill();
                let status = child.wait().ok();
                return Err(io::Error::other(format!(
                    "no ready line from {} (got {other:?}, exit {status:?})",
                    self.binary.display()
                )));
            }
        };
        let field = |name: &str| -> Option<u16> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        self.port =
            field("port").ok_or_else(|| io::Error::other(format!("bad ready line {line}")))?;
        self.control_port = field("control_port")
            .ok_or_else(|| io::Error::other(format!("bad ready line {line}")))?;
        self.ready_line = line.trim_end().to_owned();
        self.child = Some(child);
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn control_port(&self) -> u16 {
        self.control_port
    }

    /// The child's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn ready_line(&self) -> &str {
        &self.ready_line
    }

    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    pub fn control(&self) -> ControlClient {
        ControlClient::new(self.control_port)
    }

    /// A fresh data connection.
    pub fn connect(&self) -> io::Result<Conn> {
        Conn::connect(self.addr())
    }

    /// The bootstrap admin token of an `--auth` daemon.
    pub fn admin_token(&self) -> io::Result<String> {
        match &self.data_dir {
            None => Ok(EPHEMERAL_ADMIN_TOKEN.to_owned()),
            Some(dir) => Ok(
                std::fs::read_to_string(dir.join("security").join(BOOTSTRAP_FILE))?
                    .trim()
                    .to_owned(),
            ),
        }
    }

    /// SIGKILL, then reap: a crash, nothing flushed by the daemon.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> io::Result<ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` (e.g. `libc::SIGINT`), then waits for the exit.
    pub fn stop_with(&mut self, signal: i32) -> io::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("daemon not running"))?;
        // SAFETY: plain kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        child.wait()
    }

    /// Starts the daemon again (killing it first if it runs) on the same data
    /// directory, data port and control port.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill();
        if self.remove_dir {
            if let Some(dir) = &self.data_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Where the `tbackend-testd` binary is, without [`Options::binary`].
pub fn locate_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TBACKEND_TESTD_BIN") {
        return Some(PathBuf::from(p));
    }
    let name = format!("tbackend-testd{}", std::env::consts::EXE_SUFFIX);
    // A test executable lives in target/<profile>/deps/.
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(&name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join(&name))
        .find(|c| c.is_file())
}

/// Polls `f` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
