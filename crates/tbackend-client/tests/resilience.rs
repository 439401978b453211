//! The breaker, cancellation, and a daemon killed and restarted under load.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tbackend_client::{
    BreakerState, CallStep, Cancel, Client, Config, Outcome, RetryPolicy, Status, TransportError,
};

/// Opens after the threshold; while open it answers without touching a socket, fast;
/// after the cooldown exactly one of 8 concurrent callers probes; the probe's success
/// closes it.
#[test]
fn breaker_opens_refuses_fast_and_admits_exactly_one_probe() {
    let d = start(opts());
    let ctl = d.control();
    let c = Client::new(Config {
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_millis(400),
        ..config(&d)
    });
    ctl.refuse_connections(true).unwrap();
    for _ in 0..3 {
        assert_status(&call(&c, &ping()), Status::Unavailable);
    }
    assert_eq!(c.stats().breaker.state, BreakerState::Open);
    ctl.refuse_connections(false).unwrap();
    let accepted = ctl.status().unwrap().connections_accepted;
    let n = 10_000;
    let t0 = Instant::now();
    for _ in 0..n {
        let o = call(&c, &ping());
        assert_eq!(o.classified.status, Status::CircuitOpen);
        assert_eq!(o.lane, None);
    }
    let per_call = t0.elapsed() / n;
    let o = call(&c, &ping());
    assert_eq!(
        o.classified.error.as_deref(),
        Some(format!("TBackend circuit breaker open for 127.0.0.1:{}", d.port()).as_str())
    );
    assert!(matches!(
        o.transport,
        Some(TransportError::CircuitOpen { .. })
    ));
    // Release builds take well under 1 µs; a debug build is slower but far from a socket.
    assert!(
        per_call < Duration::from_micros(20),
        "{per_call:?} per open-breaker call"
    );
    assert_eq!(
        ctl.status().unwrap().connections_accepted,
        accepted,
        "no socket touched"
    );
    assert_eq!(c.stats().connections_opened, 0);

    std::thread::sleep(Duration::from_millis(450));
    // The probe is slowed so the other seven arrive while it is in flight.
    ctl.delay(300).unwrap();
    let barrier = Arc::new(Barrier::new(8));
    let statuses: Vec<Status> = (0..8)
        .map(|_| {
            let (c, barrier) = (c.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                call(&c, &ping()).classified.status
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == Status::Ok).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == Status::CircuitOpen)
            .count(),
        7,
        "{statuses:?}"
    );
    ctl.delay(0).unwrap();
    assert_eq!(c.stats().breaker.state, BreakerState::Closed);
    assert_status(&call(&c, &ping()), Status::Ok);
    assert_eq!(c.stats().breaker.opens, 1);
}

/// A cancel handle and when (µs since the test's epoch) it was fired.
type Timed = Arc<(Cancel, AtomicU64)>;

/// 1,000 cancels fired at random moments into traffic from 4 threads: each cancelled
/// call returns promptly, and afterwards 1,000 calls all get their own answers.
#[test]
fn random_cancels_return_promptly_and_leave_no_answer_behind() {
    const WORKERS: usize = 4;
    const CANCELS: usize = 1000;
    let d = start(opts());
    let c = client(&d);
    // Answers take a little while, so most cancels land while a call waits.
    d.control().delay(1).unwrap();
    let current: Arc<Vec<Mutex<Option<Timed>>>> =
        Arc::new((0..WORKERS).map(|_| Mutex::new(None)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let lat_us = Arc::new(Mutex::new(Vec::new()));
    let fired = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (c, current, stop, lat_us) =
                (c.clone(), current.clone(), stop.clone(), lat_us.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let handle = Arc::new((Cancel::new(), AtomicU64::new(0)));
                    *current[w].lock().unwrap() = Some(handle.clone());
                    let req = if i % 2 == 0 {
                        write(
                            "cancel",
                            &format!("c{w}-{i}"),
                            &format!("k{w}-{i}"),
                            json!(i),
                        )
                    } else {
                        ping()
                    };
                    let o = c.call(&req, None, &handle.0);
                    let returned = epoch.elapsed().as_micros() as u64;
                    *current[w].lock().unwrap() = None;
                    if let Some(TransportError::Cancelled { .. }) = o.transport {
                        let at = handle.1.load(Ordering::SeqCst);
                        lat_us.lock().unwrap().push(returned.saturating_sub(at));
                        assert!(matches!(
                            o.classified.status,
                            Status::TimeoutUnknown | Status::Unavailable
                        ));
                    } else {
                        assert!(o.classified.ok, "{o:?}");
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let canceller = {
        let (current, fired) = (current.clone(), fired.clone());
        std::thread::spawn(move || {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64;
            let deadline = Instant::now() + Duration::from_secs(20);
            while fired.load(Ordering::Relaxed) < CANCELS && Instant::now() < deadline {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                std::thread::sleep(Duration::from_micros(rng % 1500));
                let target = current[(rng >> 20) as usize % WORKERS]
                    .lock()
                    .unwrap()
                    .clone();
                if let Some(h) = target {
                    h.1.store(epoch.elapsed().as_micros() as u64, Ordering::SeqCst);
                    h.0.cancel();
                    fired.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    canceller.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(fired.load(Ordering::Relaxed) >= CANCELS);
    let mut lat = lat_us.lock().unwrap().clone();
    lat.sort_unstable();
    assert!(
        lat.len() > 200,
        "only {} calls were cancelled mid-flight",
        lat.len()
    );
    let p99 = lat[lat.len() * 99 / 100];
    eprintln!(
        "{} cancelled mid-call; cancel → return p50 {} µs, p99 {p99} µs, max {} µs",
        lat.len(),
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );
    assert!(
        p99 < 20_000,
        "cancel → return p99 {p99} µs (max {:?})",
        lat.last()
    );
    d.control().delay(0).unwrap();

    // Every answer still belongs to its caller: 1,000 reads of distinct keys from 4
    // threads, each checked against the id written under that key.
    let written: Vec<(String, String)> = (0..250)
        .flat_map(|i| (0..WORKERS).map(move |w| (format!("v{w}-{i}"), format!("kv{w}-{i}"))))
        .collect();
    let reqs: Vec<_> = written
        .iter()
        .map(|(id, key)| write("cancel", id, key, json!(id)))
        .collect();
    assert!(c
        .call_batch(&reqs, None, &Cancel::new())
        .iter()
        .all(|o| o.classified.ok));
    let written = Arc::new(written);
    let readers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (c, written) = (c.clone(), written.clone());
            std::thread::spawn(move || {
                for (n, (id, key)) in written.iter().enumerate().filter(|(n, _)| n % WORKERS == w) {
                    let o = call(&c, &latest_for("cancel", key));
                    assert_eq!(
                        o.classified.answer.value()["fact"]["id"],
                        id.as_str(),
                        "read {n}: {o:?}"
                    );
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
}

static SIGNAL_CANCEL: Cancel = Cancel::new();

extern "C" fn on_sigusr1(_: libc::c_int) {
    SIGNAL_CANCEL.cancel();
}

/// `cancel()` from a signal handler running on the waiting thread itself (as Ruby's
/// unblocking function may): the call returns promptly.
#[test]
fn cancel_from_a_signal_handler() {
    let d = start(opts());
    let c = Client::new(Config {
        request_timeout: Duration::from_millis(300),
        ..config(&d)
    });
    assert_status(&call(&c, &ping()), Status::Ok);
    d.control().stall(false).unwrap();
    // SAFETY: installs a handler that only calls the async-signal-safe Cancel::cancel.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            let t0 = Instant::now();
            let o = c.call(&ping(), Some(Duration::from_secs(5)), &SIGNAL_CANCEL);
            (o, t0.elapsed())
        })
    };
    let thread = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let fired = Instant::now();
    // SAFETY: the thread is alive (it waits up to 5 s) and has the handler installed.
    unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
    let (o, took) = waiter.join().unwrap();
    assert!(
        fired.elapsed() < Duration::from_millis(500),
        "{:?}",
        fired.elapsed()
    );
    assert!(took < Duration::from_secs(1));
    assert_status(&o, Status::TimeoutUnknown);
    assert!(
        matches!(o.transport, Some(TransportError::Cancelled { .. })),
        "{o:?}"
    );
    d.control().unstall().unwrap();
    // This fault never answers the stalled ping, so the next answer on the connection
    // belongs to nobody alive: it goes to the abandoned slot, the lane declares its
    // oldest answer overdue and reconnects, and service resumes.
    assert!(wait_until(Duration::from_secs(3), || call(&c, &ping())
        .classified
        .ok));
}

/// A cancel only pauses a call made with `start`: its written request stays queued, and
/// `resume` gets that request's own answer (committed, not a replay: nothing was sent
/// twice) while another thread's call goes through the same lane. A paused call that is
/// dropped instead leaves its answer to be discarded, never to reach the next caller.
#[test]
fn a_paused_call_resumes_to_its_own_answer() {
    let d = start(opts());
    let c = client(&d);
    assert_status(&call(&c, &ping()), Status::Ok);
    d.control().delay(200).unwrap();
    let paused_write = |id: &str, after: Duration| {
        let (cancel, canceller) = cancel_after(after);
        let step = c.start(&write("p", id, id, json!(id)), None, &cancel);
        canceller.join().unwrap();
        match step {
            CallStep::Paused(paused) => paused,
            CallStep::Done(o) => panic!("the cancel did not pause the call: {o:#?}"),
        }
    };
    let paused = paused_write("paused-1", Duration::from_millis(50));
    let other = {
        let c = c.clone();
        std::thread::spawn(move || call(&c, &write("p", "other-1", "other-1", json!(1))))
    };
    let resumed = match paused.resume(&Cancel::new()) {
        CallStep::Done(o) => o,
        CallStep::Paused(_) => panic!("paused again without a cancel"),
    };
    let other = other.join().unwrap();
    assert_status(&resumed, Status::CommittedAcked);
    assert_status(&other, Status::CommittedAcked);

    let dropped = paused_write("paused-2", Duration::from_millis(20));
    drop(dropped);
    let next = call(&c, &write("p", "other-2", "other-2", json!(2)));
    assert_status(&next, Status::CommittedAcked);

    let id_at = |o: &Outcome| {
        let seq = seq_of(o);
        all_facts(&d, "p")
            .into_iter()
            .find(|f| f["seq_id"].as_u64() == Some(seq))
            .map(|f| f["id"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(id_at(&resumed).as_deref(), Some("paused-1"));
    assert_eq!(id_at(&other).as_deref(), Some("other-1"));
    assert_eq!(id_at(&next).as_deref(), Some("other-2"));
    assert_eq!(c.stats().lanes[0].reconnects, 0);
}

/// A cancel before the call starts: nothing is sent.
#[test]
fn cancel_before_the_call_sends_nothing() {
    let d = start(opts());
    let c = client(&d);
    let cancel = Cancel::new();
    cancel.cancel();
    let o = c.call(&ping(), None, &cancel);
    assert_status(&o, Status::Unavailable);
    assert!(matches!(
        o.transport,
        Some(TransportError::Cancelled { .. })
    ));
    assert_eq!(d.control().status().unwrap().requests_received, 0);
}

/// SIGKILL and restart under 12 writing threads: every call returns an outcome, the
/// client recovers by itself, and retrying every id ends committed or replay with no
/// duplicate fact.
#[test]
fn daemon_killed_and_restarted_mid_load() {
    const THREADS: usize = 12;
    const PER_THREAD: usize = 120;
    let mut d = start(opts().temp_data_dir());
    let c = Client::new(Config {
        request_timeout: Duration::from_millis(500),
        breaker_threshold: 5,
        breaker_cooldown: Duration::from_millis(100),
        ..config(&d)
    });
    let progress = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (c, progress) = (c.clone(), progress.clone());
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                for i in 0..PER_THREAD {
                    let o = call(
                        &c,
                        &write("crash", &format!("r{t}-{i}"), &format!("k{t}"), json!(i)),
                    );
                    statuses.push(o.classified.status);
                    progress.fetch_add(1, Ordering::Relaxed);
                    // Pace the writers so the outage falls mid-run.
                    std::thread::sleep(Duration::from_millis(3));
                }
                statuses
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || progress
        .load(Ordering::Relaxed)
        > 300));
    d.kill();
    std::thread::sleep(Duration::from_millis(300));
    d.restart().unwrap();
    let t0 = Instant::now();
    let mut failures = 0;
    for h in handles {
        let statuses = h.join().unwrap();
        assert_eq!(statuses.len(), PER_THREAD, "every call returned");
        failures += statuses
            .iter()
            .filter(|s| !matches!(s, Status::CommittedAcked))
            .count();
        for s in statuses {
            assert!(
                matches!(
                    s,
                    Status::CommittedAcked
                        | Status::Unavailable
                        | Status::TimeoutUnknown
                        | Status::CircuitOpen
                ),
                "{s:?}"
            );
        }
    }
    assert!(failures > 0, "the outage was seen");
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(
        wait_until(Duration::from_secs(3), || call(&c, &ping()).classified.ok),
        "service resumed"
    );
    let policy = RetryPolicy {
        attempts: 5,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        deadline: Some(Duration::from_secs(3)),
        attempt_timeout: None,
    };
    let reqs: Vec<_> = (0..THREADS)
        .flat_map(|t| {
            (0..PER_THREAD)
                .map(move |i| write("crash", &format!("r{t}-{i}"), &format!("k{t}"), json!(i)))
        })
        .collect();
    for r in &reqs {
        let (o, attempts) = c.call_with_retries(r, &policy, &Cancel::new());
        assert!(
            matches!(
                o.classified.status,
                Status::CommittedAcked | Status::IdempotentReplay
            ),
            "{o:?} after {attempts:?}"
        );
    }
    let facts = all_facts(&d, "crash");
    let ids: HashSet<&str> = facts.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(
        facts.len(),
        THREADS * PER_THREAD,
        "no duplicate, none missing"
    );
    assert_eq!(ids.len(), THREADS * PER_THREAD);
}

/// Retries: `unavailable` is retried (the old gem did not), attempts are recorded, and
/// the backoff sleep ends on cancel.
#[test]
fn retries_record_attempts_and_sleep_cancellably() {
    let d = start(opts());
    let ctl = d.control();
    ctl.refuse_connections(true).unwrap();
    let c = client(&d);
    let policy = RetryPolicy {
        attempts: 3,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        deadline: Some(Duration::from_secs(2)),
        attempt_timeout: None,
    };
    let (o, attempts) = c.call_with_retries(&ping(), &policy, &Cancel::new());
    assert_status(&o, Status::Unavailable);
    assert_eq!(attempts.len(), 3);
    assert!(attempts
        .iter()
        .all(|a| a.status == Status::Unavailable && a.retryable == Some(true)));

    // A long backoff, cut short by a cancel from another thread.
    let slow = RetryPolicy {
        attempts: 5,
        base_backoff: Duration::from_secs(5),
        max_backoff: Duration::from_secs(5),
        deadline: None,
        attempt_timeout: None,
    };
    let (cancel, canceller) = cancel_after(Duration::from_millis(150));
    let t0 = Instant::now();
    let mut tries = 0;
    // The first backoff may draw a short sleep (full jitter): retry until one is long.
    let (o, attempts) = loop {
        let (o, attempts) = c.call_with_retries(&ping(), &slow, &cancel);
        tries += 1;
        if cancel.is_cancelled() || tries > 50 {
            break (o, attempts);
        }
    };
    canceller.join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_status(&o, Status::Unavailable);
    assert!(!attempts.is_empty());

    ctl.refuse_connections(false).unwrap();
    let (o, attempts) = c.call_with_retries(&ping(), &policy, &Cancel::new());
    assert!(o.classified.ok || attempts.len() > 1, "{o:?}");
    // A domain error is not retried.
    let mut b = tbackend_core::protocol::request::RequestBuilder::new("latest_for", None);
    b.str("store", "s").unwrap();
    let missing_key = tbackend_client::Request::built(tbackend_client::OpKind::Read, b);
    let (o, attempts) = c.call_with_retries(&missing_key, &policy, &Cancel::new());
    assert_status(&o, Status::Error);
    assert_eq!(attempts.len(), 1);
}

/// After shutdown, calls are `unavailable` at once and say so.
#[test]
fn shutdown_refuses_later_calls() {
    let d = start(opts());
    let c = client(&d);
    assert_status(&call(&c, &ping()), Status::Ok);
    c.shutdown();
    let o = call(&c, &ping());
    assert_status(&o, Status::Unavailable);
    assert!(o.classified.error.unwrap().contains("client is shut down"));
    assert!(!c.stats().lanes[0].connected);
}

/// A cancel ends a batch promptly: written requests come back `timeout_unknown`, the
/// rest `unavailable`, all marked cancelled.
#[test]
fn cancel_ends_a_batch_promptly() {
    let d = start(opts());
    let c = Client::new(Config {
        max_depth: 8,
        ..config(&d)
    });
    assert_status(&call(&c, &ping()), Status::Ok);
    d.control().stall(false).unwrap();
    let (cancel, canceller) = cancel_after(Duration::from_millis(150));
    let reqs: Vec<_> = (0..50).map(|_| ping()).collect();
    let t0 = Instant::now();
    let out = c.call_batch(&reqs, Some(Duration::from_secs(5)), &cancel);
    canceller.join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let written = out
        .iter()
        .filter(|o| o.classified.status == Status::TimeoutUnknown)
        .count();
    let unsent = out
        .iter()
        .filter(|o| o.classified.status == Status::Unavailable)
        .count();
    assert_eq!((written, unsent), (8, 42), "the pipeline held 8");
    assert!(out
        .iter()
        .all(|o| matches!(o.transport, Some(TransportError::Cancelled { .. }))));
}

/// Shutdown ends calls in flight at once and closes the connection.
#[test]
fn shutdown_ends_calls_in_flight() {
    let d = start(opts());
    let c = client(&d);
    assert_status(&call(&c, &ping()), Status::Ok);
    d.control().stall(false).unwrap();
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                (call(&c, &ping()), t0.elapsed())
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(2), || c.stats().lanes[0]
        .in_flight
        == 3));
    c.shutdown();
    for h in waiting {
        let (o, took) = h.join().unwrap();
        assert_status(&o, Status::TimeoutUnknown);
        assert!(
            matches!(o.transport, Some(TransportError::ShutDown { .. })),
            "{o:?}"
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    assert!(wait_until(Duration::from_secs(2), || open_connections(&d) == 0));
}
