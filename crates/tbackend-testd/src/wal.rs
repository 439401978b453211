//! The per-store append-only log and the group committer.
//!
//! Record format (ours; the real daemon uses MessagePack, which nothing outside it
//! reads): `len: u32 LE` · `crc32(payload): u32 LE` · `payload` (the fact's canonical
//! JSON, every field included). A record is written with one `write(2)`, which is what
//! an `accepted` ack promises: the bytes reached the OS, so a process crash (SIGKILL)
//! loses nothing acknowledged. A power loss may tear the last record; replay keeps the
//! longest valid prefix and truncates the rest.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tbackend_core::fact::json::canonical_json;
use tbackend_core::protocol::frame::crc32;

use crate::fact::Fact;
use crate::faults::Faults;

/// File-name suffix of a store log. A store name longer than 255 minus this suffix
/// cannot be a file name: the open fails with ENAMETOOLONG and, like the real daemon,
/// the store then silently lives in memory only (docs/protocol.md §6).
pub const SUFFIX: &str = ".wal";
const RECORD_HEADER: usize = 8;
/// A group commit syncs at the latest when this many durable writes wait.
const GROUP_MAX: usize = 256;

/// Counters of `__durability_stats`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncStats {
    /// Highest seq whose record was handed to the OS.
    pub write_seq: u64,
    /// Highest seq known to be on stable storage.
    pub synced_seq: u64,
    /// Successful fdatasync calls.
    pub sync_count: u64,
}

/// One store's log file.
#[derive(Debug)]
pub struct Wal {
    file: File,
    path: PathBuf,
    stats: Mutex<SyncStats>,
    /// `__durability_fault` armed for this store.
    armed: AtomicBool,
}

/// What replaying a log found.
#[derive(Debug, Default)]
pub struct Replay {
    pub facts: Vec<Fact>,
    /// Bytes cut from a torn or corrupt tail.
    pub truncated_bytes: u64,
}

impl Wal {
    /// Opens (creating it empty) the log of `store` under `dir`, replaying what it
    /// holds. `Ok(None)` when the name is too long for a file name.
    pub fn open(dir: &Path, store: &str) -> io::Result<Option<(Arc<Wal>, Replay)>> {
        let path = dir.join(format!("{store}{SUFFIX}"));
        let mut file = match OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => return Ok(None),
            Err(e) => return Err(e),
        };
        let replay = replay(&mut file, &path)?;
        let write_seq = replay.facts.last().map_or(0, |f| f.seq_id);
        if write_seq > 0 {
            // After a crash the replayed records may still sit in the page cache only;
            // one sync here lets `synced_seq` start at what was found.
            file.sync_data()?;
        }
        let wal = Wal {
            file,
            path,
            stats: Mutex::new(SyncStats {
                write_seq,
                synced_seq: write_seq,
                sync_count: 0,
            }),
            armed: AtomicBool::new(false),
        };
        Ok(Some((Arc::new(wal), replay)))
    }

    /// Appends one record with a single `write(2)`.
    pub fn append(&self, fact: &Fact) -> io::Result<()> {
        let payload = canonical_json(&fact.to_json());
        let mut rec = Vec::with_capacity(RECORD_HEADER + payload.len());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32(&payload).to_le_bytes());
        rec.extend_from_slice(&payload);
        (&self.file).write_all(&rec)?;
        let mut stats = self.stats.lock().unwrap();
        stats.write_seq = stats.write_seq.max(fact.seq_id);
        Ok(())
    }

    pub fn stats(&self) -> SyncStats {
        *self.stats.lock().unwrap()
    }

    pub fn set_armed(&self, armed: bool) {
        self.armed.store(armed, Ordering::SeqCst);
    }

    /// Bytes in the log file.
    pub fn disk_bytes(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One fdatasync covering every record written before it started.
    fn sync(&self, faults: &Faults) -> Result<(), String> {
        if self.armed.load(Ordering::SeqCst) || faults.fail_durable_sync() {
            return Err("injected fdatasync fault".into());
        }
        let target = self.stats.lock().unwrap().write_seq;
        self.file.sync_data().map_err(|e| e.to_string())?;
        let mut stats = self.stats.lock().unwrap();
        stats.synced_seq = stats.synced_seq.max(target);
        stats.sync_count += 1;
        Ok(())
    }
}

fn replay(file: &mut File, path: &Path) -> io::Result<Replay> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut out = Replay::default();
    let mut at = 0usize;
    while at < bytes.len() {
        match record_at(&bytes[at..]) {
            Some((fact, used)) => {
                out.facts.push(fact);
                at += used;
            }
            None => break,
        }
    }
    if at < bytes.len() {
        // A torn tail (SIGKILL or power loss mid-write) or a corrupt record: keep the
        // valid prefix, so the next append starts on a record boundary.
        out.truncated_bytes = (bytes.len() - at) as u64;
        eprintln!(
            "tbackend-testd: {}: truncating {} bytes of torn or corrupt log tail",
            path.display(),
            out.truncated_bytes
        );
        file.set_len(at as u64)?;
    }
    Ok(out)
}

fn record_at(bytes: &[u8]) -> Option<(Fact, usize)> {
    let header = bytes.get(..RECORD_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let payload = bytes.get(RECORD_HEADER..RECORD_HEADER.checked_add(len)?)?;
    if crc32(payload) != crc {
        return None;
    }
    let value = serde_json::from_slice(payload).ok()?;
    let fact = Fact::from_record(value).ok()?;
    Some((fact, RECORD_HEADER + len))
}

struct SyncRequest {
    wal: Arc<Wal>,
    done: SyncSender<Result<(), String>>,
}

/// The group committer: one thread gathers durable writes for `commit_interval` (or
/// until 256 wait) and answers them all with one fdatasync per store file, which is
/// why a lone durable writer pays at least the interval (docs/protocol.md §7).
pub struct Committer {
    tx: Mutex<Sender<SyncRequest>>,
}

impl Committer {
    pub fn start(interval: Duration, faults: Arc<Faults>) -> Committer {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || commit_loop(rx, interval, faults))
            .expect("spawning the group-commit thread");
        Committer { tx: Mutex::new(tx) }
    }

    /// Blocks until `seq` of `wal` is on stable storage, or the sync failed.
    pub fn wait_durable(&self, wal: &Arc<Wal>, seq: u64) -> Result<(), String> {
        if wal.stats().synced_seq >= seq {
            return Ok(());
        }
        let (done, rx) = mpsc::sync_channel(1);
        let req = SyncRequest {
            wal: Arc::clone(wal),
            done,
        };
        if self.tx.lock().unwrap().send(req).is_err() {
            return Err("group committer stopped".into());
        }
        rx.recv()
            .unwrap_or_else(|_| Err("group committer stopped".into()))
    }
}

fn commit_loop(rx: Receiver<SyncRequest>, interval: Duration, faults: Arc<Faults>) {
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + interval;
        let mut batch = vec![first];
        while batch.len() < GROUP_MAX {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(req) => batch.push(req),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut by_wal: HashMap<*const Wal, Vec<SyncRequest>> = HashMap::new();
        for req in batch {
            by_wal.entry(Arc::as_ptr(&req.wal)).or_default().push(req);
        }
        for (_, reqs) in by_wal {
            let result = reqs[0].wal.sync(&faults);
            for req in reqs {
                let _ = req.done.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fact::FactData;
    use serde_json::json;

    fn fact(seq: u64) -> Fact {
        let data: FactData = serde_json::from_value(json!({"id":format!("i{seq}"),"store":"s","key":"k","value":{"n":seq},"transaction_time":1.5,"schema_version":1})).unwrap();
        Fact::from_data(data, seq, "h".into())
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tbtestd-wal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn torn_tail_is_truncated_and_appends_continue() {
        let dir = tempdir("torn");
        {
            let (wal, replay) = Wal::open(&dir, "s").unwrap().unwrap();
            assert!(replay.facts.is_empty());
            wal.append(&fact(1)).unwrap();
            wal.append(&fact(2)).unwrap();
        }
        let path = dir.join("s.wal");
        let full = std::fs::metadata(&path).unwrap().len();
        // Tear the second record.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 3).unwrap();
        {
            let (wal, replay) = Wal::open(&dir, "s").unwrap().unwrap();
            assert_eq!(replay.facts, vec![fact(1)]);
            assert!(replay.truncated_bytes > 0);
            wal.append(&fact(2)).unwrap();
        }
        let (_, replay) = Wal::open(&dir, "s").unwrap().unwrap();
        assert_eq!(replay.facts, vec![fact(1), fact(2)]);
        assert_eq!(replay.truncated_bytes, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overlong_store_name_gets_no_log() {
        let dir = tempdir("long");
        assert!(Wal::open(&dir, &"L".repeat(300)).unwrap().is_none());
        assert!(Wal::open(&dir, &"L".repeat(251)).unwrap().is_some());
        assert!(Wal::open(&dir, &"L".repeat(252)).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
