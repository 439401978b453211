//! The segment format, pure: encoding, decoding and what a segment's records add up to.
//!
//! A segment is `MAGIC` followed by records, each `len: u32 LE` · `crc32(payload): u32 LE`
//! · payload. A payload is one of:
//! - a fact (kind 3: seq, when it was first spooled, durability, store, key, id, fact
//!   JSON; kind 1, the same without the time, is still read);
//! - an acknowledgement: the seqs that were delivered (kind 2) or given up and kept as
//!   dead letters (kind 4).
//!
//! Reading stops at the first record that is incomplete or fails its CRC: a crash
//! mid-write leaves at most a torn last record.

use std::collections::BTreeMap;

use tbackend_core::protocol::frame::crc32;
use tbackend_core::protocol::request::RawJson;

use super::Entry;

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"TBSPOOL1";
/// Largest record accepted when reading; a larger length field means a torn or foreign
/// tail (requests are capped at 16 MiB; the payload adds a few names).
const MAX_RECORD: usize = 64 << 20;

const KIND_FACT_UNTIMED: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_FACT: u8 = 3;
const KIND_DEAD: u8 = 4;

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A fact.
    Fact {
        /// Its segment-local sequence number.
        seq: u64,
        /// When it was first spooled (adoption keeps it), in µs since the Unix epoch;
        /// `None` in a record of the untimed kind.
        at: Option<u64>,
        /// The fact.
        entry: Entry,
    },
    /// These seqs were delivered (the daemon stored them, or had them already).
    Ack(Vec<u64>),
    /// These seqs were given up and written to the dead-letter file.
    Dead(Vec<u64>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_seqs(out: &mut Vec<u8>, kind: u8, seqs: &[u64]) {
    out.push(kind);
    out.extend_from_slice(&(seqs.len() as u32).to_le_bytes());
    for s in seqs {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// Appends the framed record to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Fact { seq, at, entry } => encode_fact(*seq, *at, entry, out),
        Record::Ack(seqs) => framed(out, |out| put_seqs(out, KIND_ACK, seqs)),
        Record::Dead(seqs) => framed(out, |out| put_seqs(out, KIND_DEAD, seqs)),
    }
}

/// Appends a framed fact record to `out` (without building a [`Record`] around `e`).
pub fn encode_fact(seq: u64, at: Option<u64>, e: &Entry, out: &mut Vec<u8>) {
    framed(out, |out| {
        out.push(if at.is_some() { KIND_FACT } else { KIND_FACT_UNTIMED });
        out.extend_from_slice(&seq.to_le_bytes());
        if let Some(at) = at {
            out.extend_from_slice(&at.to_le_bytes());
        }
        match &e.durability {
            Some(d) => {
                out.push(1);
                put_str(out, d);
            }
            None => out.push(0),
        }
        put_str(out, &e.store);
        put_str(out, &e.key);
        put_str(out, &e.id);
        out.extend_from_slice(&e.fact);
    });
}

/// Writes the payload `put` appends behind its length and CRC.
fn framed(out: &mut Vec<u8>, put: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    put(out);
    let len = (out.len() - start - 8) as u32;
    let crc = crc32(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the fields of one payload front to back.
struct Scanner<'a> {
    buf: &'a [u8],
}

impl<'a> Scanner<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn seqs(&mut self) -> Option<Vec<u64>> {
        let n = self.u32()? as usize;
        let seqs = (0..n).map(|_| self.u64()).collect::<Option<Vec<_>>>()?;
        self.buf.is_empty().then_some(seqs)
    }
}

fn decode_payload(payload: &[u8]) -> Option<Record> {
    let mut s = Scanner { buf: payload };
    match s.u8()? {
        kind @ (KIND_FACT | KIND_FACT_UNTIMED) => {
            let seq = s.u64()?;
            let at = match kind {
                KIND_FACT => Some(s.u64()?),
                _ => None,
            };
            let durability = match s.u8()? {
                0 => None,
                _ => Some(s.string()?),
            };
            let store = s.string()?;
            let key = s.string()?;
            let id = s.string()?;
            Some(Record::Fact {
                seq,
                at,
                entry: Entry {
                    store,
                    key,
                    id,
                    durability,
                    // Bytes from a file: checked again whenever they are sent.
                    fact: RawJson::unchecked(s.buf.to_vec()),
                },
            })
        }
        KIND_ACK => s.seqs().map(Record::Ack),
        KIND_DEAD => s.seqs().map(Record::Dead),
        _ => None,
    }
}

/// What [`decode_segment`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Every whole record, in file order.
    pub records: Vec<Record>,
    /// Bytes of the valid prefix (magic included).
    pub valid_len: usize,
    /// Whether bytes after the valid prefix were ignored (a torn or corrupt tail).
    pub torn: bool,
}

/// Reads a whole segment. Never fails: a foreign file yields nothing, a torn or
/// corrupt record ends the segment there.
pub fn decode_segment(bytes: &[u8]) -> Decoded {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Decoded {
            torn: !bytes.is_empty(),
            ..Decoded::default()
        };
    }
    let mut pos = MAGIC.len();
    let mut records = Vec::new();
    while bytes.len() - pos >= 8 {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap());
        if len > MAX_RECORD || bytes.len() - pos - 8 < len {
            break;
        }
        let payload = &bytes[pos + 8..pos + 8 + len];
        if crc32(payload) != crc {
            break;
        }
        match decode_payload(payload) {
            Some(r) => records.push(r),
            None => break,
        }
        pos += 8 + len;
    }
    Decoded {
        records,
        valid_len: pos,
        torn: pos < bytes.len(),
    }
}

/// A fact still waiting in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// When it was first spooled, µs since the Unix epoch (`None`: not recorded).
    pub at: Option<u64>,
    /// The fact.
    pub entry: Entry,
}

/// What a segment's records add up to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The facts never acknowledged, in the order they were written.
    pub pending: Vec<Waiting>,
    /// Facts acknowledged as delivered.
    pub delivered: usize,
    /// Facts acknowledged as given up (dead letters).
    pub dead: usize,
}

impl Settled {
    /// Tallies `records` (one segment's, in file order).
    pub fn of(records: Vec<Record>) -> Settled {
        let mut facts: BTreeMap<u64, Waiting> = BTreeMap::new();
        let mut settled = Settled::default();
        let mut acks = Vec::new();
        for r in records {
            match r {
                Record::Fact { seq, at, entry } => {
                    facts.insert(seq, Waiting { at, entry });
                }
                Record::Ack(seqs) => acks.extend(seqs.into_iter().map(|s| (s, false))),
                Record::Dead(seqs) => acks.extend(seqs.into_iter().map(|s| (s, true))),
            }
        }
        // An ack counts once, and only for a fact of this segment.
        for (seq, dead) in acks {
            if facts.remove(&seq).is_some() {
                *if dead {
                    &mut settled.dead
                } else {
                    &mut settled.delivered
                } += 1;
            }
        }
        settled.pending = facts.into_values().collect();
        settled
    }

    /// When the oldest pending fact with a known time was first spooled.
    pub fn oldest_pending_at(&self) -> Option<u64> {
        self.pending.iter().filter_map(|w| w.at).min()
    }
}

/// The facts of a segment that were never acknowledged, in the order they were written.
pub fn pending_facts(records: Vec<Record>) -> Vec<Entry> {
    Settled::of(records)
        .pending
        .into_iter()
        .map(|w| w.entry)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::entry;

    fn fact(seq: u64, at: Option<u64>, e: Entry) -> Record {
        Record::Fact { seq, at, entry: e }
    }

    #[test]
    fn records_round_trip() {
        let records = vec![
            fact(0, Some(1_780_387_174_123_456), entry("a", 0)),
            fact(1, None, entry("b", 1)),
            Record::Ack(vec![0]),
            fact(
                u64::MAX,
                Some(0),
                Entry {
                    store: String::new(),
                    key: "ключ\u{0}".into(),
                    id: String::new(),
                    durability: Some(String::new()),
                    fact: RawJson::unchecked(Vec::new()),
                },
            ),
            Record::Ack(vec![]),
            Record::Dead(vec![1, u64::MAX]),
        ];
        let mut bytes = MAGIC.to_vec();
        for r in &records {
            encode(r, &mut bytes);
        }
        let d = decode_segment(&bytes);
        assert_eq!(d.records, records);
        assert_eq!(d.valid_len, bytes.len());
        assert!(!d.torn);
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_ignored_at_every_cut() {
        let mut bytes = MAGIC.to_vec();
        let mut ends = vec![bytes.len()];
        for n in 0..4 {
            encode_fact(n as u64, Some(n as u64), &entry("k", n), &mut bytes);
            ends.push(bytes.len());
        }
        for cut in MAGIC.len()..bytes.len() {
            let d = decode_segment(&bytes[..cut]);
            let whole = ends.iter().filter(|e| **e <= cut).count() - 1;
            assert_eq!(d.records.len(), whole, "cut at {cut}");
            assert_eq!(d.valid_len, ends[whole]);
            assert_eq!(d.torn, cut != ends[whole]);
        }
        // A flipped bit in the third record ends the segment before it.
        let mut bad = bytes.clone();
        bad[ends[2] + 10] ^= 0x40;
        let d = decode_segment(&bad);
        assert_eq!(d.records.len(), 2);
        assert!(d.torn);
        // A length field of garbage is not trusted.
        let mut huge = bytes[..ends[1]].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 12]);
        assert_eq!(decode_segment(&huge).records.len(), 1);
        // Not a segment at all.
        assert!(decode_segment(b"hello world").records.is_empty());
    }

    #[test]
    fn pending_facts_skip_acked_ones_and_keep_order() {
        let records = vec![
            fact(0, Some(10), entry("a", 0)),
            fact(1, Some(11), entry("a", 1)),
            fact(2, Some(12), entry("b", 2)),
            Record::Ack(vec![1]),
            fact(3, Some(13), entry("a", 3)),
            Record::Dead(vec![0, 3]),
        ];
        let ids: Vec<String> = pending_facts(records).into_iter().map(|e| e.id).collect();
        assert_eq!(ids, vec!["b-2"]);
    }

    #[test]
    fn a_segment_tallies_pending_delivered_and_dead_facts() {
        let records = vec![
            fact(0, Some(500), entry("a", 0)),
            fact(1, Some(100), entry("a", 1)),
            fact(2, None, entry("b", 2)),
            fact(3, Some(300), entry("b", 3)),
            fact(4, Some(400), entry("c", 4)),
            Record::Ack(vec![1, 4]),
            // Acks of seqs this segment never held, or acked twice, count nothing.
            Record::Ack(vec![1, 77]),
            Record::Dead(vec![3, 78]),
        ];
        let settled = Settled::of(records);
        let waiting: Vec<(Option<u64>, &str)> = settled
            .pending
            .iter()
            .map(|w| (w.at, w.entry.id.as_str()))
            .collect();
        assert_eq!(waiting, vec![(Some(500), "a-0"), (None, "b-2")]);
        assert_eq!((settled.delivered, settled.dead), (2, 1));
        // The oldest waiting fact with a known time; an untimed one has none to give.
        assert_eq!(settled.oldest_pending_at(), Some(500));
        assert_eq!(Settled::of(vec![fact(0, None, entry("a", 0))]).oldest_pending_at(), None);

        let all_settled = Settled::of(vec![
            fact(0, Some(1), entry("a", 0)),
            fact(1, Some(2), entry("a", 1)),
            Record::Ack(vec![0]),
            Record::Dead(vec![1]),
        ]);
        assert!(all_settled.pending.is_empty());
        assert_eq!((all_settled.delivered, all_settled.dead), (1, 1));
        assert_eq!(all_settled.oldest_pending_at(), None);
        assert_eq!(Settled::of(Vec::new()), Settled::default());
    }
}
