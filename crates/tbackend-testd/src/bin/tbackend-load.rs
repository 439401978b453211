//! `tbackend-load`: a load generator for a TBackend daemon (the real one or the test
//! double), the ceiling against which connector benchmarks are read.
//!
//! N connections, one thread each, each keeping up to `--depth` requests in flight
//! (pipelining; answers come back in order). Latency is measured per request from its
//! send to its answer.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tbackend_testd::wire::Conn;

const USAGE: &str = "\
tbackend-load: load generator for a TBackend daemon

USAGE:
  tbackend-load --port PORT [OPTIONS]

OPTIONS:
  --host HOST            daemon host (default 127.0.0.1)
  --port PORT            daemon port (required)
  --conns N              connections, one thread each (default 1)
  --depth D              requests in flight per connection (default 1 = one at a time)
  --op OP                ping | write_fact_once (default ping)
  --duration SECONDS     run this long (default 5, unless --count is given)
  --count N              total requests instead of a duration
  --store NAME           store of the writes (default load)
  --durability MODE      durability of the writes (default: none sent = accepted)
  --value-bytes N        size of the payload string in each value (default 16)
  --token TOKEN          token sent with every request (auth)
  -h, --help             this help

Prints one summary line: op, conns, depth, requests, errors, elapsed, rate, latency
p50/p99/max (ms).
";

#[derive(Clone)]
struct Args {
    addr: SocketAddr,
    conns: usize,
    depth: usize,
    op: String,
    duration: Option<Duration>,
    count: Option<u64>,
    store: String,
    durability: Option<String>,
    value_bytes: usize,
    token: Option<String>,
}

fn parse() -> Result<Option<Args>, String> {
    let mut host = "127.0.0.1".to_owned();
    let mut port: Option<u16> = None;
    let mut a = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        conns: 1,
        depth: 1,
        op: "ping".into(),
        duration: None,
        count: None,
        store: "load".into(),
        durability: None,
        value_bytes: 16,
        token: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--host" => host = v,
            "--port" => port = Some(num(&v)? as u16),
            "--conns" => a.conns = num(&v)?.max(1) as usize,
            "--depth" => a.depth = num(&v)?.max(1) as usize,
            "--op" => a.op = v,
            "--duration" => {
                let s: f64 = v
                    .parse()
                    .map_err(|_| format!("--duration: not a number: {v}"))?;
                a.duration = Some(Duration::from_secs_f64(s));
            }
            "--count" => a.count = Some(num(&v)?),
            "--store" => a.store = v,
            "--durability" => a.durability = Some(v),
            "--value-bytes" => a.value_bytes = num(&v)? as usize,
            "--token" => a.token = Some(v),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let port = port.ok_or("--port is required")?;
    a.addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("host resolves to nothing")?;
    if !matches!(a.op.as_str(), "ping" | "write_fact_once") {
        return Err(format!("unsupported --op {}", a.op));
    }
    if a.duration.is_none() && a.count.is_none() {
        a.duration = Some(Duration::from_secs(5));
    }
    Ok(Some(a))
}

struct Outcome {
    latencies_us: Vec<u64>,
    errors: u64,
}

fn request(a: &Args, run: &str, conn: usize, i: u64, payload: &str) -> Value {
    let mut req = match a.op.as_str() {
        "ping" => json!({"op": "ping"}),
        _ => json!({
            "op": "write_fact_once",
            "fact": {
                "id": format!("{run}:{conn}:{i}"),
                "store": a.store,
                "key": format!("k{}", i % 1024),
                "value": {"n": i, "payload": payload},
                "transaction_time": 1_780_387_000.0 + i as f64 / 1000.0,
                "schema_version": 1,
            }
        }),
    };
    if let Some(d) = &a.durability {
        req["durability"] = json!(d);
    }
    if let Some(t) = &a.token {
        req["token"] = json!(t);
    }
    req
}

fn drive(
    a: &Args,
    run: &str,
    conn_no: usize,
    budget: Option<u64>,
    deadline: Option<Instant>,
) -> Outcome {
    let mut out = Outcome {
        latencies_us: Vec::new(),
        errors: 0,
    };
    let mut conn = match Conn::connect(a.addr) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connection {conn_no}: {e}");
            out.errors += 1;
            return out;
        }
    };
    let payload = "x".repeat(a.value_bytes);
    let mut sent = 0u64;
    let mut in_flight: VecDeque<Instant> = VecDeque::new();
    loop {
        let may_send = |sent: u64| {
            budget.is_none_or(|b| sent < b) && deadline.is_none_or(|d| Instant::now() < d)
        };
        while in_flight.len() < a.depth && may_send(sent) {
            let req = request(a, run, conn_no, sent, &payload);
            if let Err(e) = conn.send(&req) {
                eprintln!("connection {conn_no}: send: {e}");
                out.errors += 1;
                return out;
            }
            in_flight.push_back(Instant::now());
            sent += 1;
        }
        let Some(t0) = in_flight.pop_front() else {
            return out;
        };
        match conn.recv() {
            Ok(answer) => {
                out.latencies_us.push(t0.elapsed().as_micros() as u64);
                if answer.get("ok") != Some(&Value::Bool(true)) {
                    out.errors += 1;
                }
            }
            Err(e) => {
                eprintln!("connection {conn_no}: recv: {e}");
                out.errors += 1;
                return out;
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tbackend-load: {e}");
            return ExitCode::from(2);
        }
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let run = format!("load-{}-{nanos}", std::process::id());
    let started = Instant::now();
    let deadline = a.duration.map(|d| started + d);
    let handles: Vec<_> = (0..a.conns)
        .map(|i| {
            let a = a.clone();
            let run = run.clone();
            let budget = a
                .count
                .map(|c| c / a.conns as u64 + u64::from((i as u64) < c % a.conns as u64));
            std::thread::spawn(move || drive(&a, &run, i, budget, deadline))
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for h in handles {
        let o = h.join().expect("load thread panicked");
        lat.extend(o.latencies_us);
        errors += o.errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "op={} conns={} depth={} requests={} errors={} elapsed_s={:.3} rate_per_s={:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        a.op,
        a.conns,
        a.depth,
        lat.len(),
        errors,
        elapsed,
        lat.len() as f64 / elapsed,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().map_or(0.0, |m| *m as f64 / 1000.0),
    );
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
