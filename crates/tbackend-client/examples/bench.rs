//! Writes/s and latency of the native client against `tbackend-load` (the ceiling: one
//! thread per connection, raw pipelining) on the same number of daemon connections.
//!
//! ```text
//! cargo run --release -p tbackend-client --example bench -- [--seconds 3] [--rounds 3]
//! ```
//!
//! Each workload runs on a fresh `tbackend-testd` (release build, found like the tests
//! find it, or `$TBACKEND_TESTD_BIN` / `$TBACKEND_LOAD_BIN`), rounds alternate the
//! workloads, and the summary prints per-workload medians and the paired ratios of
//! each round. `write_fact_once` with unique ids and a 16-byte payload, as
//! `tbackend-load --op write_fact_once` sends.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;
use tbackend_client::{Cancel, Client, Config, OpKind, Request};
use tbackend_core::protocol::request::RequestBuilder;
use tbackend_testd::{Options, TestDaemon};

#[derive(Clone, Copy, Debug)]
enum Workload {
    Client { threads: usize, lanes: usize },
    Batch { lanes: usize, size: usize },
    Load { conns: usize, depth: usize },
}

impl Workload {
    fn name(&self) -> String {
        match self {
            Workload::Client { threads, lanes } => {
                format!("client {threads:>2} thr / {lanes} lane")
            }
            Workload::Batch { lanes, size } => format!("batch {size} / {lanes} lane"),
            Workload::Load { conns, depth } => format!("load {conns:>2} conn × depth {depth}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Result {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Client CPU (user + system) per write, in µs.
    cpu_us: f64,
}

fn cpu_time(who: i32) -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let mut seconds = 3.0;
    let mut rounds = 3;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().expect("value");
        match a.as_str() {
            "--seconds" => seconds = v.parse().unwrap(),
            "--rounds" => rounds = v.parse().unwrap(),
            other => panic!("unknown {other}"),
        }
    }
    let (testd, load) = binaries();
    println!("open-breaker call: {:.2} µs", open_breaker_call_us());
    let duration = Duration::from_secs_f64(seconds);
    let workloads = [
        Workload::Client {
            threads: 1,
            lanes: 1,
        },
        Workload::Load { conns: 1, depth: 1 },
        Workload::Client {
            threads: 12,
            lanes: 1,
        },
        Workload::Load {
            conns: 1,
            depth: 12,
        },
        Workload::Client {
            threads: 12,
            lanes: 2,
        },
        Workload::Load { conns: 2, depth: 6 },
        Workload::Load {
            conns: 12,
            depth: 1,
        },
        Workload::Batch {
            lanes: 1,
            size: 1000,
        },
        Workload::Batch {
            lanes: 2,
            size: 1000,
        },
        Workload::Load {
            conns: 1,
            depth: 256,
        },
    ];
    let mut results: Vec<Vec<Result>> = vec![Vec::new(); workloads.len()];
    for round in 0..rounds {
        for (i, w) in workloads.iter().enumerate() {
            let d = TestDaemon::start(Options::new().binary(&testd));
            let cpu0 = (cpu_time(libc::RUSAGE_SELF), cpu_time(libc::RUSAGE_CHILDREN));
            let mut r = match *w {
                Workload::Client { threads, lanes } => run_client(&d, threads, lanes, duration),
                Workload::Batch { lanes, size } => run_batch(&d, lanes, size, duration),
                Workload::Load { conns, depth } => run_load(&load, &d, conns, depth, duration),
            };
            let cpu = match w {
                Workload::Load { .. } => cpu_time(libc::RUSAGE_CHILDREN) - cpu0.1,
                _ => cpu_time(libc::RUSAGE_SELF) - cpu0.0,
            };
            r.cpu_us = cpu.as_secs_f64() * 1e6 / (r.rate * duration.as_secs_f64());
            println!(
                "round {round} {:<26} {:>8.0} w/s  p50 {:.3} ms  p99 {:.3} ms  cpu {:.1} µs/w",
                w.name(),
                r.rate,
                r.p50_ms,
                r.p99_ms,
                r.cpu_us
            );
            results[i].push(r);
        }
    }
    println!("\nmedians over {rounds} rounds of {seconds} s (fresh daemon per run):");
    for (w, rs) in workloads.iter().zip(&results) {
        let m = |f: fn(&Result) -> f64| median(rs.iter().map(f).collect());
        println!(
            "  {:<26} {:>8.0} w/s  p50 {:.3} ms  p99 {:.3} ms  cpu {:.1} µs/w",
            w.name(),
            m(|r| r.rate),
            m(|r| r.p50_ms),
            m(|r| r.p99_ms),
            m(|r| r.cpu_us)
        );
    }
    let ratio = |a: usize, b: usize| {
        let per_round: Vec<f64> = results[a]
            .iter()
            .zip(&results[b])
            .map(|(x, y)| x.rate / y.rate)
            .collect();
        format!(
            "{:.2} (rounds: {})",
            median(per_round.clone()),
            per_round
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    println!("\npaired ratios (same round):");
    println!(
        "  client 1 thr/1 lane   ÷ load 1 conn depth 1   = {}",
        ratio(0, 1)
    );
    println!(
        "  client 12 thr/1 lane  ÷ load 1 conn depth 12  = {}",
        ratio(2, 3)
    );
    println!(
        "  client 12 thr/2 lanes ÷ load 2 conns depth 6  = {}",
        ratio(4, 5)
    );
    println!(
        "  client 12 thr/1 lane  ÷ load 12 conns         = {}",
        ratio(2, 6)
    );
    println!(
        "  client 12 thr/2 lanes ÷ load 12 conns         = {}",
        ratio(4, 6)
    );
    println!(
        "  batch 1000 / 1 lane   ÷ load 1 conn depth 256 = {}",
        ratio(7, 9)
    );
    println!(
        "  batch 1000 / 2 lanes  ÷ load 1 conn depth 256 = {}",
        ratio(8, 9)
    );
}

fn request(run: &str, t: usize, i: u64) -> Request {
    let fact = format!(
        r#"{{"id":"{run}:{t}:{i}","store":"load","key":"k{}","value":{{"n":{i},"payload":"xxxxxxxxxxxxxxxx"}},"transaction_time":{},"schema_version":1}}"#,
        i % 1024,
        1_780_387_000.0 + i as f64 / 1000.0
    );
    let mut b = RequestBuilder::new("write_fact_once", None);
    b.raw("fact", fact.as_bytes()).unwrap();
    Request::built(OpKind::Write, b)
}

fn config(d: &TestDaemon, lanes: usize) -> Config {
    Config {
        lanes,
        ..Config::new("127.0.0.1", d.port())
    }
}

fn run_client(d: &TestDaemon, threads: usize, lanes: usize, duration: Duration) -> Result {
    let c = Client::new(config(d, lanes));
    let barrier = Arc::new(Barrier::new(threads));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (c, barrier) = (c.clone(), barrier.clone());
            std::thread::spawn(move || {
                let cancel = Cancel::new();
                let mut lat = Vec::new();
                barrier.wait();
                let until = Instant::now() + duration;
                let mut i = 0;
                while Instant::now() < until {
                    let req = request("c", t, i);
                    let t0 = Instant::now();
                    let o = c.call(&req, None, &cancel);
                    lat.push(t0.elapsed().as_micros() as u64);
                    assert!(o.classified.ok, "{o:?}");
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    summarize(&mut lat, start.elapsed())
}

fn run_batch(d: &TestDaemon, lanes: usize, size: usize, duration: Duration) -> Result {
    let c = Client::new(config(d, lanes));
    let cancel = Cancel::new();
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut n = 0u64;
    while start.elapsed() < duration {
        let reqs: Vec<_> = (0..size as u64).map(|i| request("b", 0, n + i)).collect();
        n += size as u64;
        let t0 = Instant::now();
        let out = c.call_batch(&reqs, None, &cancel);
        // Per-request latency is not observable inside a batch: report the batch's.
        lat.extend(std::iter::repeat_n(t0.elapsed().as_micros() as u64, 1));
        assert!(out.iter().all(|o| o.classified.ok));
    }
    let elapsed = start.elapsed();
    let mut r = summarize(&mut lat, elapsed);
    r.rate = n as f64 / elapsed.as_secs_f64();
    r
}

fn run_load(
    load: &PathBuf,
    d: &TestDaemon,
    conns: usize,
    depth: usize,
    duration: Duration,
) -> Result {
    let out = Command::new(load)
        .args(["--port", &d.port().to_string(), "--op", "write_fact_once"])
        .args(["--conns", &conns.to_string(), "--depth", &depth.to_string()])
        .args(["--duration", &duration.as_secs_f64().to_string()])
        .output()
        .expect("running tbackend-load");
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
    };
    Result {
        rate: field("rate_per_s"),
        p50_ms: field("p50_ms"),
        p99_ms: field("p99_ms"),
        cpu_us: 0.0,
    }
}

/// The cost of a call the open breaker refuses (no socket touched).
fn open_breaker_call_us() -> f64 {
    let d = TestDaemon::start(Options::new().binary(binaries().0));
    let port = d.port();
    d.control().refuse_connections(true).unwrap();
    let c = Client::new(Config {
        breaker_threshold: 1,
        breaker_cooldown: Duration::from_secs(600),
        ..Config::new("127.0.0.1", port)
    });
    let cancel = Cancel::new();
    let req = request("o", 0, 0);
    assert!(!c.call(&req, None, &cancel).classified.ok);
    let n = 200_000;
    let t0 = Instant::now();
    for _ in 0..n {
        let o = c.call(&req, None, &cancel);
        assert_eq!(o.classified.status, tbackend_client::Status::CircuitOpen);
    }
    t0.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn summarize(lat: &mut [u64], elapsed: Duration) -> Result {
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    Result {
        rate: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        cpu_us: 0.0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Release builds of the daemon and the load client.
fn binaries() -> (PathBuf, PathBuf) {
    if let (Some(d), Some(l)) = (
        std::env::var_os("TBACKEND_TESTD_BIN"),
        std::env::var_os("TBACKEND_LOAD_BIN"),
    ) {
        return (d.into(), l.into());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "-p", "tbackend-testd", "--bins"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo build --release -p tbackend-testd");
    let exe = |name: &str| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .unwrap_or_else(|| panic!("no {name} built: {}", String::from_utf8_lossy(&out.stderr)))
    };
    (exe("tbackend-testd"), exe("tbackend-load"))
}
