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
  -h, --help                  print this help

On ready it prints one line to stdout:
  tbackend-testd ready host=H port=P control_port=C pid=PID data_dir=DIR|ephemeral auth=on|off
SIGTERM / SIGINT stop it. The control protocol is described in the crate README.
";

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
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
        let mut cfg = Config::default();
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
                other => return Err(format!("unknown argument: {other} (try --help)")),
            }
        }
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
        match Config::parse(args.iter().map(|s| s.to_string()))? {
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
}
