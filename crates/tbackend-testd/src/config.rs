//! Command-line configuration.

use std::path::PathBuf;
use std::time::Duration;

/// Usage text of `--help`.
pub const USAGE: &str = "\
tbackend-testd: a test double of the TBackend daemon (wire protocol, quirks, fault injection)

USAGE:
  tbackend-testd [OPTIONS]

OPTIONS:
  --host HOST                 address to listen on (default 127.0.0.1)
  --port PORT                 data port; 0 picks a free one (default 7401)
  --control-port PORT         fault-injection control port on 127.0.0.1; 0 picks a free
                              one (default 0)
  --pool-size N               worker threads = connections served at once (default 16);
                              a worker owns a connection until it closes, later
                              connections are accepted but not read
  --idle-timeout SECONDS      close a connection after this long without input
                              (default 30; fractions allowed, e.g. 0.3)
  --max-inflight N            overload limiter: answer 'overloaded' to a request arriving
                              while N execute (default 0 = off)
  --data-dir DIR              keep a log per store under DIR/wal and tokens under
                              DIR/security; without it the daemon is ephemeral
  --auth                      require a token on every op
  --commit-interval-ms MS     group-commit window of durable writes (default 5)
  --strict-hash               reject writes whose value_hash differs from the server's
  --profile fast|real         fast (default; or $TBACKEND_TESTD_PROFILE): answers as
                              quickly as it can, for tests. real: behaves like the real
                              daemon where speed is concerned (each answer in three
                              sends, workers polling for the next request only while
                              connections are no more than cores, the accept loop
                              polling every 10 ms, the real daemon's CPU per request),
                              for benchmarks
  --request-cpu-us US         CPU burnt per request, in µs (default: the profile's;
                              0 for fast, 8 for real)
  -h, --help                  print this help

On ready it prints one line to stdout:
  tbackend-testd ready host=H port=P control_port=C pid=PID data_dir=DIR|ephemeral auth=on|off
SIGTERM / SIGINT stop it. The control protocol is described in the crate README.
";

/// The environment variable that picks the profile when `--profile` is not given.
pub const PROFILE_ENV: &str = "TBACKEND_TESTD_PROFILE";

/// CPU the `real` profile burns per request, in µs: calibrated with `tbackend-load`
/// so that a native client sees the real daemon's rates and their ratios over 1, 2 and
/// 12 connections (the crate README says what was measured).
pub const REAL_REQUEST_CPU_US: u64 = 8;

/// How long a worker polls its socket for the next request before it blocks in `read`,
/// and when it does (see [`Profile::poll`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    pub budget: Duration,
    pub when: PollWhile,
}

/// Which workers poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollWhile {
    /// Only the worker of the only active connection.
    Alone,
    /// Any worker, while there are no more active connections than cores.
    CoresSpare,
}

/// How the daemon spends its time: as fast as it can, or as the real one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// For tests: answers coalesced into one send, a lone connection polls briefly for
    /// its next request, no CPU burnt.
    #[default]
    Fast,
    /// For benchmarks: the real daemon's measured behaviour (docs/protocol.md §2, §11):
    /// one worker thread per connection blocking in its read, every answer written as
    /// three sends (length, body, CRC), the accept loop polling every 10 ms,
    /// [`REAL_REQUEST_CPU_US`] of CPU per request, and workers polling for their next
    /// request while there are no more connections than cores.
    Real,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Fast => "fast",
            Profile::Real => "real",
        }
    }

    pub fn parse(s: &str) -> Result<Profile, String> {
        match s {
            "fast" => Ok(Profile::Fast),
            "real" => Ok(Profile::Real),
            other => Err(format!("unknown profile '{other}' (fast or real)")),
        }
    }

    /// CPU burnt per request unless `--request-cpu-us` says otherwise.
    pub fn request_cpu_us(self) -> u64 {
        match self {
            Profile::Fast => 0,
            Profile::Real => REAL_REQUEST_CPU_US,
        }
    }

    /// How workers wait for the next request. Polling saves the worker's wake-up on a
    /// request-answer round trip (two thread wake-ups bound one connection's rate here),
    /// and costs a core while it lasts. The real daemon's workers behave as the `real`
    /// poll does: with two connections on two cores they take the CPU their clients
    /// need (2 : 1 is only about 1.65), and with a dozen they stop polling (12 : 2 is
    /// about 1.6, so no CPU goes to waiting). The fast profile polls only for a lone
    /// connection, where a core is surely spare.
    pub fn poll(self) -> Poll {
        match self {
            Profile::Fast => Poll {
                budget: Duration::from_micros(60),
                when: PollWhile::Alone,
            },
            Profile::Real => Poll {
                budget: Duration::from_micros(100),
                when: PollWhile::CoresSpare,
            },
        }
    }
}

/// The daemon's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub control_port: u16,
    pub pool_size: usize,
    pub idle_timeout: Duration,
    pub max_inflight: usize,
    pub data_dir: Option<PathBuf>,
    pub auth: bool,
    pub commit_interval: Duration,
    pub strict_hash: bool,
    pub profile: Profile,
    /// CPU burnt per request, in µs (the `exec_cost_us` control knob adds to it).
    pub request_cpu_us: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 7401,
            control_port: 0,
            pool_size: 16,
            idle_timeout: Duration::from_secs(30),
            max_inflight: 0,
            data_dir: None,
            auth: false,
            commit_interval: Duration::from_millis(5),
            strict_hash: false,
            profile: Profile::Fast,
            request_cpu_us: 0,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Config),
    Help,
}

impl Config {
    /// Parses the arguments after the program name; `--flag value` and `--flag=value`.
    /// Without `--profile`, the profile comes from `$TBACKEND_TESTD_PROFILE`.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
        let env = std::env::var(PROFILE_ENV).ok().filter(|v| !v.is_empty());
        Config::parse_with(args, env.as_deref())
    }

    fn parse_with<I: IntoIterator<Item = String>>(
        args: I,
        env_profile: Option<&str>,
    ) -> Result<Command, String> {
        let mut cfg = Config::default();
        let mut profile = env_profile
            .map(|p| Profile::parse(p).map_err(|e| format!("{PROFILE_ENV}: {e}")))
            .transpose()?;
        let mut request_cpu_us = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(Command::Help),
                "--host" => cfg.host = value("--host")?,
                "--port" => cfg.port = number("--port", &value("--port")?)?,
                "--control-port" => {
                    cfg.control_port = number("--control-port", &value("--control-port")?)?
                }
                "--pool-size" => {
                    cfg.pool_size = number("--pool-size", &value("--pool-size")?)?;
                    if cfg.pool_size == 0 {
                        return Err("--pool-size must be at least 1".into());
                    }
                }
                "--idle-timeout" => {
                    let v = value("--idle-timeout")?;
                    let secs: f64 = v
                        .parse()
                        .map_err(|_| format!("--idle-timeout: not a number: {v}"))?;
                    if !(secs.is_finite() && secs > 0.0) {
                        return Err("--idle-timeout must be a positive number of seconds".into());
                    }
                    cfg.idle_timeout = Duration::from_secs_f64(secs);
                }
                "--max-inflight" => {
                    cfg.max_inflight = number("--max-inflight", &value("--max-inflight")?)?
                }
                "--data-dir" => cfg.data_dir = Some(PathBuf::from(value("--data-dir")?)),
                "--auth" => cfg.auth = flag_value(inline.as_deref(), "--auth")?,
                "--commit-interval-ms" => {
                    let ms: u64 = number("--commit-interval-ms", &value("--commit-interval-ms")?)?;
                    cfg.commit_interval = Duration::from_millis(ms);
                }
                "--strict-hash" => {
                    cfg.strict_hash = flag_value(inline.as_deref(), "--strict-hash")?
                }
                "--profile" => profile = Some(Profile::parse(&value("--profile")?)?),
                "--request-cpu-us" => {
                    request_cpu_us = Some(number("--request-cpu-us", &value("--request-cpu-us")?)?)
                }
                other => return Err(format!("unknown argument: {other} (try --help)")),
            }
        }
        cfg.profile = profile.unwrap_or_default();
        cfg.request_cpu_us = request_cpu_us.unwrap_or(cfg.profile.request_cpu_us());
        Ok(Command::Run(cfg))
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{name}: not a valid number: {v}"))
}

fn flag_value(inline: Option<&str>, name: &str) -> Result<bool, String> {
    match inline {
        None | Some("true") | Some("on") | Some("1") => Ok(true),
        Some("false") | Some("off") | Some("0") => Ok(false),
        Some(v) => Err(format!("{name}: expected true or false, got {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        parse_env(args, None)
    }

    fn parse_env(args: &[&str], env: Option<&str>) -> Result<Config, String> {
        match Config::parse_with(args.iter().map(|s| s.to_string()), env)? {
            Command::Run(c) => Ok(c),
            Command::Help => Err("help".into()),
        }
    }

    #[test]
    fn flags() {
        let c = parse(&[
            "--port",
            "0",
            "--idle-timeout=0.3",
            "--auth",
            "--data-dir",
            "/tmp/x",
            "--max-inflight",
            "2",
        ])
        .unwrap();
        assert_eq!(c.port, 0);
        assert_eq!(c.idle_timeout, Duration::from_millis(300));
        assert!(c.auth);
        assert_eq!(c.max_inflight, 2);
        assert_eq!(c.data_dir, Some(PathBuf::from("/tmp/x")));
        assert!(parse(&["--idle-timeout", "0"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--port"]).is_err());
        assert_eq!(parse(&["--help"]).unwrap_err(), "help");
    }

    #[test]
    fn profiles() {
        let fast = parse(&[]).unwrap();
        assert_eq!((fast.profile, fast.request_cpu_us), (Profile::Fast, 0));
        let real = parse(&["--profile", "real"]).unwrap();
        assert_eq!(
            (real.profile, real.request_cpu_us),
            (Profile::Real, REAL_REQUEST_CPU_US)
        );
        let tuned = parse(&["--profile=real", "--request-cpu-us", "7"]).unwrap();
        assert_eq!(tuned.request_cpu_us, 7);
        assert!(parse(&["--profile", "slow"]).is_err());
        // The environment picks the profile; the flag wins over it.
        assert_eq!(parse_env(&[], Some("real")).unwrap().profile, Profile::Real);
        let flag = parse_env(&["--profile", "fast"], Some("real")).unwrap();
        assert_eq!(flag.profile, Profile::Fast);
        assert!(USAGE.contains(&format!("0 for fast, {REAL_REQUEST_CPU_US} for real")));
        let err = parse_env(&[], Some("turbo")).unwrap_err();
        assert!(err.contains("TBACKEND_TESTD_PROFILE"), "{err}");
    }
}
