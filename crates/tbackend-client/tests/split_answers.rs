//! Answers that arrive in pieces, as the daemon sends them (length, body, CRC), with
//! gaps longer than the reader's uncancellable `recv` (lane/conn.rs, `REST_WAIT`): the
//! reader still assembles them, and a cancel or a deadline still ends a wait for the rest
//! of an answer that never comes. A hand-made daemon, so the gaps are exact.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tbackend_client::{Cancel, Client, Config, Request, Status, TransportError};
use tbackend_core::protocol::frame::{encode, Decoder};

mod common;
use common::cancel_after;

const PONG: &[u8] = br#"{"ok":true,"pong":true}"#;

/// Serves one connection: for each request, `answer` gets the stream and the frame of
/// the pong to send however it likes.
fn daemon(
    answer: impl Fn(&mut TcpStream, &[u8]) + Send + 'static,
) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut decoder = Decoder::new(1 << 20);
        let mut buf = [0u8; 4096];
        let frame = encode(PONG, 1 << 20).unwrap();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => decoder.feed(&buf[..n]),
            }
            while let Ok(Some(_)) = decoder.next_frame() {
                answer(&mut s, &frame);
            }
        }
    });
    (port, t)
}

fn client(port: u16, timeout: Duration) -> Client {
    Client::new(Config {
        request_timeout: timeout,
        connect_timeout: Duration::from_secs(1),
        breaker_threshold: 0,
        ..Config::new("127.0.0.1", port)
    })
}

#[test]
fn an_answer_in_three_late_pieces_is_read_whole() {
    let gap = Duration::from_millis(30);
    let (port, t) = daemon(move |s, frame| {
        let body_end = frame.len() - 4;
        for piece in [&frame[..4], &frame[4..body_end], &frame[body_end..]] {
            std::thread::sleep(gap);
            s.write_all(piece).unwrap();
        }
    });
    let c = client(port, Duration::from_secs(5));
    for _ in 0..3 {
        let t0 = Instant::now();
        let o = c.call(&Request::ping(None), None, &Cancel::new());
        assert_eq!(o.classified.status, Status::Ok, "{o:?}");
        assert!(t0.elapsed() >= gap * 3, "{:?}", t0.elapsed());
    }
    c.shutdown();
    t.join().unwrap();
}

#[test]
fn a_cancel_ends_a_wait_for_the_rest_of_an_answer() {
    let (port, t) = daemon(|s, frame| {
        s.write_all(&frame[..6]).unwrap();
        // The rest never comes: the client gives up and closes.
        let mut rest = [0u8; 64];
        while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
    });
    let c = client(port, Duration::from_secs(30));
    let (cancel, canceller) = cancel_after(Duration::from_millis(100));
    let t0 = Instant::now();
    let o = c.call(&Request::ping(None), None, &cancel);
    canceller.join().unwrap();
    assert_eq!(o.classified.status, Status::TimeoutUnknown, "{o:?}");
    assert!(
        matches!(o.transport, Some(TransportError::Cancelled { .. })),
        "{o:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    c.shutdown();
    t.join().unwrap();
}

#[test]
fn a_deadline_ends_a_wait_for_the_rest_of_an_answer() {
    let (port, t) = daemon(|s, frame| {
        s.write_all(&frame[..4]).unwrap();
        let mut rest = [0u8; 64];
        while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
    });
    let c = client(port, Duration::from_millis(200));
    let t0 = Instant::now();
    let o = c.call(&Request::ping(None), None, &Cancel::new());
    assert_eq!(o.classified.status, Status::TimeoutUnknown, "{o:?}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(2),
        "{took:?}"
    );
    c.shutdown();
    t.join().unwrap();
}
