//! The `real` profile behaves like the real daemon on the wire and in its threads: each
//! answer arrives as three TCP segments (length, body, CRC), and each connection is read
//! by a thread of its own. The fast profile, for contrast, coalesces.

mod common;

use std::collections::{HashMap, HashSet};
use std::mem;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tbackend_core::protocol::frame::encode;
use tbackend_testd::config::{Profile, REAL_REQUEST_CPU_US};
use tbackend_testd::harness::TestDaemon;
use tbackend_testd::wire::Conn;

/// Data segments this socket has received so far (`tcpi_data_segs_in`, Linux 4.6+): what
/// the peer's sends became on the wire, whatever the reads here made of them.
fn data_segments_in(conn: &Conn) -> u32 {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = mem::zeroed();
        let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            conn.stream().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info.tcpi_data_segs_in
    }
}

fn write(i: usize) -> Value {
    json!({"op": "write_fact_once", "fact": {"id": format!("p:{i}"), "store": "profile",
           "key": format!("k{i}"), "value": {"n": i}, "transaction_time": 1_780_387_000.0,
           "schema_version": 1}})
}

/// Segments received for `n` requests sent in one write, once all `n` answers are read.
fn segments_for(conn: &mut Conn, n: usize, first: usize) -> u32 {
    let mut batch = Vec::new();
    for i in first..first + n {
        batch.extend(encode(&serde_json::to_vec(&write(i)).unwrap(), usize::MAX).unwrap());
    }
    let before = data_segments_in(conn);
    conn.send_raw(&batch).unwrap();
    for _ in 0..n {
        assert_eq!(conn.recv().unwrap()["ok"], json!(true));
    }
    data_segments_in(conn) - before
}

// Segments are counted at least (`>=`): a sender retransmits now and then (a tail loss
// probe when the client's ACK is late), which adds segments, while no send of the real
// profile can share a segment with another as long as the congestion window (ten
// segments on a fresh connection) holds them all.

#[test]
fn real_profile_answers_in_three_sends() {
    let d = TestDaemon::start(opts().profile(Profile::Real));
    let status = d.control().status().unwrap().raw;
    assert_eq!(status["profile"], json!("real"));
    assert_eq!(status["request_cpu_us"], json!(REAL_REQUEST_CPU_US));
    let mut conn = d.connect().unwrap();
    for i in 0..20 {
        let segments = segments_for(&mut conn, 1, i);
        assert!(segments >= 3, "request {i}: {segments} segments");
    }
    let before = data_segments_in(&conn);
    assert_eq!(
        conn.call(&json!({"op": "ping"})).unwrap()["pong"],
        json!(true)
    );
    assert!(data_segments_in(&conn) - before >= 3, "ping");
    // Pipelined requests too: no two answers share a send.
    for i in 0..5 {
        let segments = segments_for(&mut conn, 3, 100 + 3 * i);
        assert!(
            segments >= 9,
            "round {i}: {segments} segments for 3 answers"
        );
    }
}

#[test]
fn fast_profile_answers_in_one_send() {
    let d = TestDaemon::start(opts().profile(Profile::Fast));
    let status = d.control().status().unwrap().raw;
    assert_eq!(
        (&status["profile"], &status["request_cpu_us"]),
        (&json!("fast"), &json!(0))
    );
    let mut conn = d.connect().unwrap();
    // One segment per answer, give or take a retransmission; three sends would make 60.
    let singles: u32 = (0..20).map(|i| segments_for(&mut conn, 1, i)).sum();
    assert!(singles < 30, "{singles} segments for 20 answers");
    // The answers of the requests one read brought are gathered into one send.
    let pipelined: u32 = (0..5)
        .map(|i| segments_for(&mut conn, 3, 100 + 3 * i))
        .sum();
    assert!(pipelined < 23, "{pipelined} segments for 15 answers");
}

/// The inode of each socket of `pid`, by its fd.
fn socket_inodes(pid: u32) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            let fd = entry.file_name().to_string_lossy().parse().unwrap();
            out.insert(fd, inode.parse().unwrap());
        }
    }
    out
}

/// The inode of the daemon's end of the loopback connection whose client port is
/// `client_port` (from /proc/net/tcp: local and remote addresses in hex, inode 10th).
fn server_side_inode(daemon_port: u16, client_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        (port(f[1]) == Some(daemon_port) && port(f[2]) == Some(client_port))
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// For each thread of `pid` blocked in a read, the inode of the socket it reads.
fn readers(pid: u32) -> HashMap<u64, Vec<u32>> {
    let inodes = socket_inodes(pid);
    let mut out: HashMap<u64, Vec<u32>> = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid: u32 = task.file_name().to_string_lossy().parse().unwrap();
        let Ok(call) = std::fs::read_to_string(task.path().join("syscall")) else {
            continue;
        };
        let mut fields = call.split_whitespace();
        let Some(Ok(nr)) = fields.next().map(str::parse::<libc::c_long>) else {
            continue; // "running"
        };
        if nr != libc::SYS_recvfrom && nr != libc::SYS_read {
            continue;
        }
        let Some(fd) = fields
            .next()
            .and_then(|a| u32::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        else {
            continue;
        };
        if let Some(&inode) = inodes.get(&fd) {
            out.entry(inode).or_default().push(tid);
        }
    }
    out
}

#[test]
fn real_profile_reads_each_connection_on_a_thread_of_its_own() {
    let d = TestDaemon::start(opts().profile(Profile::Real).pool_size(8));
    let pid = d.pid().unwrap();
    let mut conns: Vec<Conn> = (0..3).map(|_| d.connect().unwrap()).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(conn.call(&write(i)).unwrap()["ok"], json!(true));
    }
    let inodes: Vec<u64> = conns
        .iter()
        .map(|c| {
            let port = c.stream().local_addr().unwrap().port();
            server_side_inode(d.port(), port).expect("the daemon's end of the connection")
        })
        .collect();
    // Between requests every connection's worker waits in its own blocking read.
    let mut seen = HashMap::new();
    let settled = wait_until(Duration::from_secs(10), || {
        seen = readers(pid);
        inodes
            .iter()
            .all(|i| seen.get(i).is_some_and(|t| t.len() == 1))
    });
    assert!(
        settled,
        "readers by socket inode {seen:?}, connections {inodes:?}"
    );
    let threads: HashSet<u32> = inodes.iter().map(|i| seen[i][0]).collect();
    assert_eq!(threads.len(), 3, "{seen:?}");
    assert_eq!(
        d.control().status().unwrap().raw["connections_active"],
        json!(3)
    );
    // And the same thread keeps its connection: another round, the same readers.
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(conn.call(&write(10 + i)).unwrap()["ok"], json!(true));
    }
    let again = wait_until(Duration::from_secs(10), || {
        seen = readers(pid);
        inodes.iter().all(|i| {
            seen.get(i)
                .is_some_and(|t| t.len() == 1 && threads.contains(&t[0]))
        })
    });
    assert!(again, "readers moved: {seen:?}");
}

/// CPU time the process `pid` has used so far (user + system).
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((fields[0] + fields[1]) * 1000 / ticks)
}

#[test]
fn real_profile_spends_its_cpu_on_each_request_but_pings() {
    let mut o = opts().profile(Profile::Real);
    o.extra_args = vec!["--request-cpu-us".into(), "2000".into()];
    let d = TestDaemon::start(o);
    let pid = d.pid().unwrap();
    let mut conn = d.connect().unwrap();
    let before = process_cpu(pid);
    for i in 0..50 {
        assert_eq!(conn.call(&write(i)).unwrap()["ok"], json!(true));
    }
    let spent = process_cpu(pid) - before;
    // 50 × 2 ms of CPU, whatever else the machine runs (less one clock tick).
    assert!(
        spent >= Duration::from_millis(90),
        "{spent:?} for 50 writes"
    );
    let before = process_cpu(pid);
    for _ in 0..50 {
        assert_eq!(
            conn.call(&json!({"op": "ping"})).unwrap()["pong"],
            json!(true)
        );
    }
    let spent = process_cpu(pid) - before;
    assert!(spent < Duration::from_millis(50), "{spent:?} for 50 pings");
}
