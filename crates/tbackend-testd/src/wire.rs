//! A minimal blocking client of the TBackend framing, for tests, the harness and the
//! load generator. It is deliberately naive (no pooling, no retries): tests use it to
//! poke the daemon exactly as they mean to.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use tbackend_core::protocol::frame::{encode, Decoder, FrameError};

/// Answers up to 4 GiB are accepted: the conformance test reads a 50 MiB one.
const CAP: usize = u32::MAX as usize;

/// One connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    decoder: Decoder,
    buf: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            stream,
            decoder: Decoder::new(CAP),
            buf: vec![0; 64 * 1024],
        })
    }

    /// Read timeout of [`Conn::recv`] (default 30 s).
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one frame holding `body`.
    pub fn send_body(&mut self, body: &[u8]) -> io::Result<()> {
        let frame = encode(body, CAP).map_err(io::Error::other)?;
        self.stream.write_all(&frame)
    }

    /// Sends `request` as compact JSON.
    pub fn send(&mut self, request: &Value) -> io::Result<()> {
        self.send_body(&serde_json::to_vec(request)?)
    }

    /// The next answer body. EOF before a whole frame is `UnexpectedEof`; a bad CRC
    /// is `InvalidData`; a read timeout is `WouldBlock`/`TimedOut`.
    pub fn recv_body(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(body)) => return Ok(body),
                Ok(None) => {}
                Err(e @ FrameError::BadCrc { .. }) => {
                    return Err(io::Error::new(ErrorKind::InvalidData, e))
                }
                Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, e)),
            }
            let n = self.stream.read(&mut self.buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed ({} bytes of a frame buffered)",
                        self.decoder.buffered()
                    ),
                ));
            }
            self.decoder.feed(&self.buf[..n]);
        }
    }

    /// The next answer, parsed.
    pub fn recv(&mut self) -> io::Result<Value> {
        let body = self.recv_body()?;
        serde_json::from_slice(&body).map_err(|e| io::Error::new(ErrorKind::InvalidData, e))
    }

    /// Sends `request` and waits for its answer.
    pub fn call(&mut self, request: &Value) -> io::Result<Value> {
        self.send(request)?;
        self.recv()
    }

    /// Waits up to `timeout` for the server to close the connection: `Ok(bytes)` with
    /// whatever arrived before EOF (or a reset), `Err` if it stayed open.
    pub fn wait_closed(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        self.stream.set_read_timeout(Some(timeout))?;
        let mut got = Vec::new();
        loop {
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&self.buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(got),
                Err(e) => return Err(e),
            }
        }
    }
}
