//! Deadlines, broken answers, refused and idle connections, against the daemon's fault
//! knobs. Every wait is bounded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tbackend_client::{Cancel, Client, Config, Status, TransportError};
use tbackend_testd::control::AnswerFault;

fn elapsed_ms(t0: Instant) -> u128 {
    t0.elapsed().as_millis()
}

/// A call that timed out leaves its slot queued: its late answer is consumed there, and
/// the next call on the same connection gets its own answer.
#[test]
fn per_call_timeout_and_late_answer_never_reaches_another_caller() {
    let d = start(opts());
    let c = client(&d);
    assert_status(
        &call(&c, &write("late", "w1", "k1", json!(1))),
        Status::CommittedAcked,
    );
    d.control().delay(300).unwrap();
    let t0 = Instant::now();
    let o = c.call(
        &write("late", "w2", "k2", json!(2)),
        Some(Duration::from_millis(100)),
        &Cancel::new(),
    );
    assert_status(&o, Status::TimeoutUnknown);
    assert!(
        matches!(o.transport, Some(TransportError::Timeout { .. })),
        "{o:?}"
    );
    let ms = elapsed_ms(t0);
    assert!((90..280).contains(&ms), "returned after {ms} ms");
    d.control().delay(0).unwrap();
    // The late write answer arrives first on this connection and must be dropped.
    let quick = t0.elapsed() < Duration::from_millis(900);
    let o = call(&c, &latest_for("late", "k1"));
    assert_status(&o, Status::Ok);
    assert_eq!(o.classified.answer.value()["fact"]["id"], "w1", "{o:?}");
    assert!(o.classified.answer.value().get("seq_id").is_none());
    // Unless the lane then sat idle for a second with only the abandoned request in
    // flight (a loaded machine), which makes the next call start afresh.
    let stats = c.stats();
    if quick {
        assert_eq!(
            stats.connections_opened, 1,
            "a per-call timeout does not drop the lane: {stats:?}"
        );
    }
    // The timed-out write did run (the daemon only delayed its answer).
    let o = call(&c, &write("late", "w2", "k2", json!(2)));
    assert_status(&o, Status::IdempotentReplay);
}

/// A stalled daemon: calls return at their deadline, the lane is torn down (its oldest
/// answer is overdue) and rebuilt by the next call.
#[test]
fn stall_returns_within_deadline_and_lane_is_rebuilt() {
    let d = start(opts());
    let c = Client::new(Config {
        request_timeout: Duration::from_millis(300),
        ..config(&d)
    });
    assert_status(&call(&c, &ping()), Status::Ok);
    d.control().stall(false).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let o = call(&c, &ping());
                (o, t0.elapsed())
            })
        })
        .collect();
    for h in handles {
        let (o, took) = h.join().unwrap();
        assert_status(&o, Status::TimeoutUnknown);
        assert!(took < Duration::from_millis(600), "{took:?}");
    }
    let stats = c.stats();
    assert!(!stats.lanes[0].connected, "{stats:?}");
    assert!(
        stats.lanes[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("timed out"),
        "{stats:?}"
    );
    d.control().unstall().unwrap();
    assert_status(&call(&c, &ping()), Status::Ok);
    let stats = c.stats();
    assert_eq!(stats.lanes[0].generation, 2);
    assert_eq!(stats.lanes[0].reconnects, 1);
}

/// The daemon's only worker is held by another connection: ours is accepted and never
/// read. Calls end at their deadline instead of hanging.
#[test]
fn slot_starvation_never_hangs_past_the_deadline() {
    let d = start(opts().pool_size(1));
    let mut hog = d.connect().unwrap();
    hog.call(&json!({"op": "ping"})).unwrap();
    let c = Client::new(Config {
        request_timeout: Duration::from_millis(300),
        ..config(&d)
    });
    for _ in 0..3 {
        let t0 = Instant::now();
        let o = call(&c, &ping());
        assert_status(&o, Status::TimeoutUnknown);
        assert!(
            t0.elapsed() < Duration::from_millis(800),
            "{:?}",
            t0.elapsed()
        );
    }
    drop(hog);
    assert!(
        wait_until(Duration::from_secs(3), || call(&c, &ping()).classified.ok),
        "service resumes once the worker is free"
    );
}

/// The daemon cuts idle connections silently; no call may fail because of it. Both
/// paths: reconnect before reuse past `idle_reconnect`, and the peer-close probe of a
/// lane that sat idle.
#[test]
fn idle_past_the_daemon_cut_never_fails_a_call() {
    let d = start(opts().idle_timeout(Duration::from_millis(300)));
    let proactive = Client::new(Config {
        idle_reconnect: Duration::from_millis(200),
        ..config(&d)
    });
    let probing = Client::new(Config {
        idle_reconnect: Duration::from_secs(20),
        ..config(&d)
    });
    assert_status(&call(&proactive, &ping()), Status::Ok);
    assert_status(&call(&probing, &ping()), Status::Ok);
    std::thread::sleep(Duration::from_millis(600));
    for i in 0..5 {
        assert_status(
            &call(&proactive, &write("idle", &format!("a{i}"), "k", json!(i))),
            Status::CommittedAcked,
        );
    }
    std::thread::sleep(Duration::from_millis(1300));
    for i in 0..5 {
        assert_status(
            &call(&probing, &write("idle", &format!("b{i}"), "k", json!(i))),
            Status::CommittedAcked,
        );
    }
    // At least the one after the sleep (a loaded machine may pause longer between calls).
    assert!(proactive.stats().lanes[0].reconnects >= 1);
    assert!(probing.stats().lanes[0].reconnects >= 1);
}

/// Refused connects answer `unavailable` fast (and back off without touching a socket);
/// service comes back by itself once the daemon accepts again.
#[test]
fn refused_connections_are_unavailable_fast_then_recover() {
    let d = start(opts());
    let ctl = d.control();
    ctl.refuse_connections(true).unwrap();
    let c = client(&d);
    for _ in 0..20 {
        let t0 = Instant::now();
        let o = call(&c, &ping());
        assert_status(&o, Status::Unavailable);
        assert!(
            matches!(o.transport, Some(TransportError::Connect { .. })),
            "{o:?}"
        );
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
        assert!(o
            .classified
            .error
            .as_deref()
            .unwrap()
            .contains(&format!("127.0.0.1:{}", d.port())));
    }
    assert_eq!(c.stats().connections_opened, 0);
    ctl.refuse_connections(false).unwrap();
    assert!(wait_until(Duration::from_secs(2), || call(&c, &ping())
        .classified
        .ok));
    assert_eq!(c.stats().connections_opened, 1);
}

/// Broken answers: the call gets `timeout_unknown` with the reason, the lane is
/// dropped, and the next call works on a fresh connection.
#[test]
fn broken_answers_are_timeout_unknown_and_the_next_call_works() {
    let d = start(opts());
    let c = client(&d);
    let cases = [
        (AnswerFault::BadCrc, "BadCrc"),
        (AnswerFault::Garbage, "TooLarge"),
        (AnswerFault::CloseMidFrame, "Eof"),
        (AnswerFault::Close, "Eof"),
    ];
    for (i, (fault, expected)) in cases.into_iter().enumerate() {
        assert_status(&call(&c, &ping()), Status::Ok);
        d.control().answer_fault(fault, 0, 1, true).unwrap();
        let t0 = Instant::now();
        let o = call(&c, &write("broken", &format!("x{i}"), "k", json!(i)));
        assert_status(&o, Status::TimeoutUnknown);
        assert_eq!(
            o.transport.as_ref().map(TransportError::name),
            Some(expected),
            "{fault:?}: {o:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(1));
        let o = call(&c, &write("broken", &format!("x{i}"), "k", json!(i)));
        assert_status(&o, Status::IdempotentReplay);
    }
    // Garbage that is a valid frame but not JSON: the frame is intact, the lane stays.
    let before = c.stats().connections_opened;
    d.control()
        .set(json!({"answer_fault": {"kind": "garbage", "hex": "000000036e6f740805fd75"}}))
        .unwrap();
    let o = call(&c, &ping());
    assert_status(&o, Status::TimeoutUnknown);
    assert_eq!(
        o.transport.as_ref().map(TransportError::name),
        Some("Malformed"),
        "{o:?}"
    );
    assert_status(&call(&c, &ping()), Status::Ok);
    assert_eq!(c.stats().connections_opened, before);
}

/// Callers beyond `max_depth` wait without writing: deadline-bounded (`unavailable`,
/// nothing sent) and cancellable.
#[test]
fn callers_beyond_max_depth_wait_unsent() {
    let d = start(opts());
    let c = Client::new(Config {
        max_depth: 2,
        request_timeout: Duration::from_millis(400),
        ..config(&d)
    });
    assert_status(&call(&c, &ping()), Status::Ok);
    let received = d.control().status().unwrap().requests_received;
    d.control().stall(false).unwrap();
    let written: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || call(&c, &ping()))
        })
        .collect();
    assert!(wait_until(Duration::from_secs(2), || c.stats().lanes[0]
        .in_flight
        == 2));
    // The pipeline is full until the two above time out (400 ms): these wait unsent.
    let parked: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let o = c.call(&ping(), Some(Duration::from_millis(150)), &Cancel::new());
                (o, t0.elapsed())
            })
        })
        .collect();
    for h in parked {
        let (o, took) = h.join().unwrap();
        assert_status(&o, Status::Unavailable);
        let queued = matches!(
            o.transport,
            Some(TransportError::Timeout {
                phase: tbackend_client::TimeoutPhase::Queue,
                ..
            })
        );
        assert!(queued, "{o:?}");
        assert!(took < Duration::from_millis(350), "{took:?}");
    }
    for h in written {
        assert_status(&h.join().unwrap(), Status::TimeoutUnknown);
    }
    let status = d.control().status().unwrap();
    assert_eq!(status.requests_received, received + 2);
    d.control().unstall().unwrap();
    assert!(wait_until(Duration::from_secs(3), || call(&c, &ping())
        .classified
        .ok));
}

/// Requests bigger than the socket buffers go out through the lane's pending output
/// while other threads keep calling; an answer over `max_answer_bytes` is refused by
/// its header and drops the lane, and the next call works.
#[test]
fn large_requests_flow_and_oversized_answers_are_refused() {
    let d = start(opts());
    let c = Client::new(Config {
        max_answer_bytes: 1 << 20,
        request_timeout: Duration::from_secs(10),
        ..config(&d)
    });
    let big = "x".repeat(6 << 20);
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let (c, big) = (c.clone(), big.clone());
            std::thread::spawn(move || {
                call(
                    &c,
                    &write("big", &format!("big{i}"), &format!("kb{i}"), json!(big)),
                )
            })
        })
        .collect();
    let pinger = {
        let c = c.clone();
        std::thread::spawn(move || (0..50).all(|_| call(&c, &ping()).classified.ok))
    };
    for w in writers {
        assert_status(&w.join().unwrap(), Status::CommittedAcked);
    }
    assert!(pinger.join().unwrap());
    let o = call(&c, &latest_for("big", "kb0"));
    assert_status(&o, Status::TimeoutUnknown);
    assert!(
        matches!(o.transport, Some(TransportError::TooLarge { cap, .. }) if cap == 1 << 20),
        "{o:?}"
    );
    assert_status(&call(&c, &latest_for("big", "missing")), Status::Ok);
}

/// A daemon that does not complete the TCP handshake (its accept queue is full): the
/// connect timeout gives `unavailable`, and a cancel ends a connect in progress at once.
#[test]
fn connect_timeout_and_cancel_while_connecting() {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: re-listens our own socket with a zero backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 0) };
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    let cfg = |connect_ms| Config {
        connect_timeout: Duration::from_millis(connect_ms),
        breaker_threshold: 0,
        ..Config::new("127.0.0.1", addr.port())
    };
    let c = Client::new(cfg(200));
    let t0 = Instant::now();
    let o = call(&c, &ping());
    assert_status(&o, Status::Unavailable);
    assert!(
        matches!(
            o.transport,
            Some(TransportError::Timeout {
                phase: tbackend_client::TimeoutPhase::Connect,
                ..
            })
        ),
        "{o:?}"
    );
    let ms = elapsed_ms(t0);
    assert!((150..1000).contains(&ms), "{ms} ms");

    let c = Client::new(cfg(5000));
    let (cancel, canceller) = cancel_after(Duration::from_millis(100));
    let t0 = Instant::now();
    let o = c.call(&ping(), None, &cancel);
    canceller.join().unwrap();
    assert_status(&o, Status::Unavailable);
    assert!(
        matches!(o.transport, Some(TransportError::Cancelled { .. })),
        "{o:?}"
    );
    assert!(elapsed_ms(t0) < 1000, "{} ms", elapsed_ms(t0));
    drop(fillers);
}

/// "No limit" spelled `Duration::MAX` must not overflow any deadline arithmetic.
#[test]
fn huge_timeouts_do_not_overflow() {
    let d = start(opts());
    let c = Client::new(Config {
        request_timeout: Duration::MAX,
        connect_timeout: Duration::MAX,
        breaker_cooldown: Duration::MAX,
        reconnect_backoff: (Duration::MAX, Duration::MAX),
        ..config(&d)
    });
    assert_status(
        &c.call(&ping(), Some(Duration::MAX), &Cancel::new()),
        Status::Ok,
    );
    let policy = tbackend_client::RetryPolicy {
        attempts: 2,
        base_backoff: Duration::ZERO,
        max_backoff: Duration::MAX,
        deadline: Some(Duration::MAX),
        attempt_timeout: Some(Duration::MAX),
    };
    let (o, _) = c.call_with_retries(&ping(), &policy, &Cancel::new());
    assert_status(&o, Status::Ok);
    assert!(c
        .call_batch(&[ping(), ping()], Some(Duration::MAX), &Cancel::new())
        .iter()
        .all(|o| o.classified.ok));
}
