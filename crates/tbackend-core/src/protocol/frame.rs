//! The TBackend frame: `len: u32 BE` · `body` · `crc32(body): u32 BE` (PROTOCOL.md §1).
//!
//! Pure byte handling, no I/O, so every path is covered by unit and property tests.
//! The daemon enforces no size limit and allocates whatever a length header says, so
//! both directions are capped here, before anything is allocated.

use thiserror::Error;

/// Bytes of the length header.
pub const HEADER_LEN: usize = 4;
/// Bytes of the CRC trailer.
pub const TRAILER_LEN: usize = 4;
/// Default cap on a request body we send (16 MiB).
pub const DEFAULT_MAX_REQUEST: usize = 16 * 1024 * 1024;
/// Default cap on an answer body we accept (64 MiB, as the old connector).
pub const DEFAULT_MAX_ANSWER: usize = 64 * 1024 * 1024;

/// The CRC-32 (IEEE, zlib) of a frame body.
pub fn crc32(body: &[u8]) -> u32 {
    crc32fast::hash(body)
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The body is larger than the cap of this direction. Nothing was allocated.
    #[error("frame body of {len} bytes exceeds the {cap}-byte cap")]
    TooLarge { len: usize, cap: usize },
    /// The CRC trailer does not match the body: the connection is broken.
    #[error("frame CRC mismatch: header says {expected:#010x}, body hashes to {actual:#010x}")]
    BadCrc { expected: u32, actual: u32 },
}

/// Appends one frame holding `body` to `out`.
pub fn encode_into(body: &[u8], cap: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    if body.len() > cap || body.len() > u32::MAX as usize {
        return Err(FrameError::TooLarge {
            len: body.len(),
            cap,
        });
    }
    out.reserve(HEADER_LEN + body.len() + TRAILER_LEN);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32(body).to_be_bytes());
    Ok(())
}

/// One frame holding `body`.
pub fn encode(body: &[u8], cap: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(body, cap, &mut out)?;
    Ok(out)
}

/// Incremental decoder: feed it bytes in any split, take whole frame bodies out.
///
/// After an error the stream is unusable (the daemon closes the connection on a bad
/// CRC; a client must too), and every later call returns the same error.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    cap: usize,
    failed: Option<FrameError>,
}

impl Decoder {
    pub fn new(cap: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            cap,
            failed: None,
        }
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame body, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let pending = &self.buf[self.start..];
        let Some(len) = body_len(pending) else {
            return Ok(None);
        };
        if len > self.cap {
            return Err(self.fail(FrameError::TooLarge { len, cap: self.cap }));
        }
        let total = HEADER_LEN + len + TRAILER_LEN;
        if pending.len() < total {
            return Ok(None);
        }
        let body = &pending[HEADER_LEN..HEADER_LEN + len];
        let expected = u32::from_be_bytes(pending[HEADER_LEN + len..total].try_into().unwrap());
        let actual = crc32(body);
        if expected != actual {
            return Err(self.fail(FrameError::BadCrc { expected, actual }));
        }
        let body = body.to_vec();
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(body))
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = Some(err.clone());
        err
    }
}

/// The body length announced by a header at the start of `bytes`, if it is complete.
pub fn body_len(bytes: &[u8]) -> Option<usize> {
    let header: [u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(header) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn ping_frame_matches_the_protocol_example() {
        let frame = encode(br#"{"op":"ping"}"#, DEFAULT_MAX_REQUEST).unwrap();
        assert_eq!(hex(&frame), "0000000d7b226f70223a2270696e67227df369e448");
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut stream = encode(b"{}", 100).unwrap();
        stream.extend(encode(b"[1]", 100).unwrap());
        let mut d = Decoder::new(100);
        let mut out = Vec::new();
        for b in stream {
            d.feed(&[b]);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, vec![b"{}".to_vec(), b"[1]".to_vec()]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn caps_before_allocating() {
        let mut d = Decoder::new(10);
        d.feed(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                cap: 10
            })
        );
        assert!(d.next_frame().is_err(), "a failed decoder stays failed");
        assert!(matches!(
            encode(&[0; 11], 10),
            Err(FrameError::TooLarge { .. })
        ));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
