//! The TBackend frame: `len: u32 BE` · `body` · `crc32(body): u32 BE` (docs/protocol.md §1).
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

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The body is larger than the cap of this direction. Nothing was allocated.
    #[error("frame body of {len} bytes exceeds the {cap}-byte cap")]
    TooLarge {
        /// The body length the header announced (or the body we were asked to send).
        len: usize,
        /// The cap in force.
        cap: usize,
    },
    /// The CRC trailer does not match the body: the connection is broken.
    #[error("frame CRC mismatch: header says {expected:#010x}, body hashes to {actual:#010x}")]
    BadCrc {
        /// The CRC the trailer carried.
        expected: u32,
        /// The CRC of the body bytes received.
        actual: u32,
    },
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
/// Memory stays bounded by what the caller feeds, never by what a header claims:
/// `feed` walks the frame headers as they arrive and, at the first one above the cap,
/// stops buffering (it keeps that header only, so `next_frame` reports
/// [`FrameError::TooLarge`] after returning the good frames before it). A peer that
/// announces 4 GiB therefore costs us four bytes.
///
/// After an error the stream is unusable (the daemon closes the connection on a bad
/// CRC; a client must too): the buffer is released, later input is ignored, and every
/// later call returns the same error.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Index in `buf` of the first byte not yet returned as a frame.
    start: usize,
    /// Index in `buf` (possibly past its end) of the next header `feed` has not checked.
    scan: usize,
    cap: usize,
    /// Set once `feed` met a header above the cap: nothing after it is worth keeping.
    refusing: bool,
    failed: Option<FrameError>,
}

impl Decoder {
    /// A decoder that accepts bodies of at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            scan: 0,
            cap,
            refusing: false,
            failed: None,
        }
    }

    /// Bytes received but not yet returned as a frame (0 once the decoder has failed).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes still to come for the frame in progress, once its header has arrived (0:
    /// no frame in progress, its header incomplete, or the decoder refusing or failed).
    pub fn missing(&self) -> usize {
        if self.failed.is_some() || self.refusing {
            return 0;
        }
        self.scan.saturating_sub(self.buf.len())
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() || self.refusing {
            return;
        }
        // Compacting here, not after every frame, moves each byte at most once: only
        // the tail of the previous chunk that followed the last frame taken out.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
        let total = self.buf.len() + bytes.len();
        while self.scan.saturating_add(HEADER_LEN) <= total {
            let mut header = [0u8; HEADER_LEN];
            for (i, byte) in header.iter_mut().enumerate() {
                let at = self.scan + i;
                *byte = match self.buf.get(at) {
                    Some(b) => *b,
                    None => bytes[at - self.buf.len()],
                };
            }
            let len = u32::from_be_bytes(header) as usize;
            if len > self.cap {
                let keep = (self.scan + HEADER_LEN).saturating_sub(self.buf.len());
                self.buf.extend_from_slice(&bytes[..keep]);
                self.refusing = true;
                return;
            }
            self.scan = self
                .scan
                .saturating_add(HEADER_LEN + len)
                .saturating_add(TRAILER_LEN);
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
        let mut trailer = [0u8; TRAILER_LEN];
        trailer.copy_from_slice(&pending[HEADER_LEN + len..total]);
        let expected = u32::from_be_bytes(trailer);
        let actual = crc32(body);
        if expected != actual {
            return Err(self.fail(FrameError::BadCrc { expected, actual }));
        }
        let body = body.to_vec();
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.scan -= self.start;
            self.start = 0;
        }
        Ok(Some(body))
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = Some(err.clone());
        self.buf = Vec::new();
        self.start = 0;
        self.scan = 0;
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
    use proptest::prelude::*;

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
    fn missing_counts_the_rest_of_a_frame_once_its_header_is_in() {
        let frame = encode(b"[1,2]", 100).unwrap();
        let mut d = Decoder::new(100);
        assert_eq!(d.missing(), 0, "nothing in progress");
        d.feed(&frame[..2]);
        assert_eq!(d.missing(), 0, "header incomplete");
        d.feed(&frame[2..4]);
        assert_eq!(d.missing(), frame.len() - 4);
        d.feed(&frame[4..frame.len() - 1]);
        assert_eq!(d.missing(), 1);
        // A whole frame and the header of the next: only the next one's rest.
        d.feed(&frame[frame.len() - 1..]);
        d.feed(&frame[..4]);
        assert_eq!(d.next_frame().unwrap().as_deref(), Some(&b"[1,2]"[..]));
        assert_eq!(d.missing(), frame.len() - 4);
        d.feed(&frame[4..]);
        assert_eq!(d.next_frame().unwrap().as_deref(), Some(&b"[1,2]"[..]));
        assert_eq!(d.missing(), 0);
        d.feed(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.missing(), 0, "refusing an oversized frame");
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

    #[test]
    fn oversized_header_keeps_only_the_header_and_earlier_frames() {
        let mut stream = encode(b"ok", 10).unwrap();
        stream.extend_from_slice(&11u32.to_be_bytes());
        stream.extend_from_slice(&[b'x'; 1000]);
        let mut d = Decoder::new(10);
        d.feed(&stream);
        assert_eq!(
            d.buffered(),
            10 + HEADER_LEN,
            "the body behind it was not buffered"
        );
        d.feed(&[b'y'; 1000]);
        assert_eq!(d.buffered(), 10 + HEADER_LEN, "input after it is ignored");
        assert_eq!(d.next_frame(), Ok(Some(b"ok".to_vec())));
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 11, cap: 10 })
        );
        assert_eq!(d.buffered(), 0, "a failed decoder releases its buffer");
    }

    #[test]
    fn oversized_header_split_across_feeds_is_caught() {
        let mut d = Decoder::new(10);
        d.feed(&[0, 0]);
        d.feed(&[1, 0, b'x', b'y']);
        assert_eq!(d.buffered(), HEADER_LEN);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 256, cap: 10 })
        );
    }

    #[test]
    fn bad_crc_poisons_the_stream() {
        let mut stream = encode(b"{}", 10).unwrap();
        let last = stream.len() - 1;
        stream[last] ^= 1;
        stream.extend(encode(b"{}", 10).unwrap());
        let mut d = Decoder::new(10);
        d.feed(&stream);
        assert!(matches!(d.next_frame(), Err(FrameError::BadCrc { .. })));
        d.feed(&encode(b"{}", 10).unwrap());
        assert!(matches!(d.next_frame(), Err(FrameError::BadCrc { .. })));
    }

    #[test]
    fn body_at_exactly_the_cap_passes() {
        let body = [b'a'; 10];
        let mut d = Decoder::new(10);
        d.feed(&encode(&body, 10).unwrap());
        assert_eq!(d.next_frame(), Ok(Some(body.to_vec())));
    }

    /// Feeds `stream` cut at `cuts`, draining after every feed, and checks the memory
    /// bound on the way. Returns the frames and the error that ended the stream, if any.
    fn decode_in_chunks(
        stream: &[u8],
        cuts: &[usize],
        cap: usize,
    ) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        bounds.push(0);
        bounds.push(stream.len());
        bounds.sort_unstable();
        let mut d = Decoder::new(cap);
        let mut frames = Vec::new();
        let mut largest_chunk = 0;
        for pair in bounds.windows(2) {
            let chunk = &stream[pair[0]..pair[1]];
            largest_chunk = largest_chunk.max(chunk.len());
            d.feed(chunk);
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => {
                        assert!(f.len() <= cap);
                        frames.push(f);
                    }
                    Ok(None) => break,
                    Err(e) => return (frames, Some(e)),
                }
            }
            // Drained, so what is left is one incomplete frame at most.
            assert!(d.buffered() < HEADER_LEN + cap + TRAILER_LEN);
            assert!(
                d.buf.capacity() <= 2 * (HEADER_LEN + cap + TRAILER_LEN + largest_chunk),
                "buffer capacity {} for cap {cap} and chunks of {largest_chunk}",
                d.buf.capacity()
            );
        }
        (frames, None)
    }

    proptest! {
        #[test]
        fn round_trips_under_any_split(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut stream = Vec::new();
            for b in &bodies {
                encode_into(b, 300, &mut stream).unwrap();
            }
            let (frames, err) = decode_in_chunks(&stream, &cuts, 300);
            prop_assert_eq!(err, None);
            prop_assert_eq!(frames, bodies);
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_outgrow_the_cap(
            stream in prop::collection::vec(any::<u8>(), 0..2000),
            cuts in prop::collection::vec(any::<usize>(), 0..20),
            cap in 0usize..600,
        ) {
            decode_in_chunks(&stream, &cuts, cap);
        }

        #[test]
        fn arbitrary_small_headers_never_panic(
            headers in prop::collection::vec((0u32..64, prop::collection::vec(any::<u8>(), 0..80)), 0..10),
            cuts in prop::collection::vec(any::<usize>(), 0..20),
            cap in 0usize..64,
        ) {
            // Random bytes rarely form plausible headers; these do, so bodies, CRC
            // failures and cap hits are all reached.
            let mut stream = Vec::new();
            for (len, tail) in headers {
                stream.extend_from_slice(&len.to_be_bytes());
                stream.extend_from_slice(&tail);
            }
            let (_, err) = decode_in_chunks(&stream, &cuts, cap);
            if let Some(FrameError::TooLarge { len, cap: c }) = err {
                prop_assert!(len > c);
            }
        }

        #[test]
        fn a_header_above_the_cap_buffers_nothing_behind_it(
            cap in 0usize..1000,
            excess in 1usize..100_000,
            tail in 0usize..5000,
        ) {
            let mut stream = ((cap + excess) as u32).to_be_bytes().to_vec();
            stream.resize(HEADER_LEN + tail, 0);
            let mut d = Decoder::new(cap);
            d.feed(&stream);
            prop_assert_eq!(d.buffered(), HEADER_LEN);
            prop_assert_eq!(d.next_frame(), Err(FrameError::TooLarge { len: cap + excess, cap }));
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
