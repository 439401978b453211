//! The append-only file spool behind [`Writer`](crate::writer::Writer): facts survive a
//! daemon outage, a process crash (`kill -9`) and a restart.
//!
//! `spool_path` is a directory shared by every process of an app (Puma workers, Sidekiq
//! processes). Each writer appends to a segment of its own and holds an exclusive
//! `flock` on it for as long as it lives, so a segment nobody holds belongs to a process
//! that died: the next writer to start **adopts** it — copies its unacknowledged facts
//! into its own segment, then deletes it.
//!
//! A segment is a sequence of CRC-framed records ([`record`]): facts, and the
//! acknowledgements of facts that reached a terminal result. A crash mid-write leaves at
//! most a torn last record, and nothing is ever appended after it (a writer never reopens
//! a segment for appending; adopting copies). A fact whose ack was not written yet is
//! delivered again after a crash; the daemon answers `idempotent_replay`, so replays are
//! harmless, and nothing acknowledged is ever sent twice by the same spool.
//!
//! [`status`] reads a spool directory without becoming a writer (`rake
//! tbackend:spool:status`).
//!
//! Segments roll over past `segment_bytes`; a segment that is not the active one and has
//! no fact left pending is deleted: that is the compaction.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tbackend_core::protocol::request::RawJson;

pub mod record;
mod status;

pub use record::{
    decode_segment, encode, pending_facts, Decoded, Record, Settled, Waiting, MAGIC,
};
pub use status::{status, SegmentStatus, SpoolStatus};

/// File name prefix of a segment (`seg-<pid>-<nanos>-<n>.spool`).
pub const SEGMENT_PREFIX: &str = "seg-";
/// File name suffix of a segment.
pub const SEGMENT_SUFFIX: &str = ".spool";
/// File name suffix of a segment being created (locked, then renamed).
const SEGMENT_TMP_SUFFIX: &str = ".tmp";
/// The dead-letter file beside the segments: one JSON object per line.
pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";
/// A dead-letter file `<file>` is guarded by `<file><LOCK_SUFFIX>`, held (`flock`) by
/// every writer of it: Ruby's replay rewrites the file by renaming a new one over it,
/// so an append must not land in the old one meanwhile.
pub const LOCK_SUFFIX: &str = ".lock";

/// Whether `name` is a segment's file name.
pub fn is_segment(name: &str) -> bool {
    name.starts_with(SEGMENT_PREFIX) && name.ends_with(SEGMENT_SUFFIX)
}

/// When the spool calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before `enqueue` returns: survives a power loss, costs a disk flush per fact.
    Always,
    /// By the writer's syncer thread, once a fact spooled since the last sync has waited
    /// half of `fsync_interval` undelivered: a process crash loses nothing (the page
    /// cache has it), a power loss at most the last interval's undelivered facts.
    Batch,
    /// Left to the OS: a process crash loses nothing, a power loss what was not written back.
    Never,
}

impl Fsync {
    /// `"always"`, `"batch"` or `"never"`.
    pub fn parse(s: &str) -> Option<Fsync> {
        match s {
            "always" => Some(Fsync::Always),
            "batch" => Some(Fsync::Batch),
            "never" => Some(Fsync::Never),
            _ => None,
        }
    }
}

/// One fact as the writer queues and the spool stores it. The token is never part of
/// it: the request body is built at send time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The fact's store (for logs and the per-key order).
    pub store: String,
    /// The fact's key: facts with the same store and key are written in enqueue order.
    pub key: String,
    /// The fact id (for logs).
    pub id: String,
    /// `"accepted"` / `"durable"`, or `None` for the daemon's default.
    pub durability: Option<String>,
    /// The fact as JSON, exactly as it is sent.
    pub fact: RawJson,
}

/// `flock(2)` with `op`; `false` when `LOCK_NB` found it held elsewhere.
fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    // SAFETY: flock on an fd this File owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

static SEGMENT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One segment file this process writes to.
#[derive(Debug)]
pub struct Segment {
    /// Where it lives.
    pub path: PathBuf,
    /// The open file, flock'ed; shared with the syncer for `fdatasync` outside locks.
    pub file: Arc<File>,
    /// Bytes written.
    pub len: u64,
    /// Facts written and not yet acknowledged.
    pub pending: usize,
}

impl Segment {
    /// Creates a fresh segment in `dir`: written and locked under a temporary name,
    /// then renamed, so an adopting process never sees it unlocked.
    fn create(dir: &Path) -> io::Result<Segment> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = SEGMENT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let stem = format!("{SEGMENT_PREFIX}{}-{nanos}-{n}", std::process::id());
        let tmp = dir.join(format!("{stem}{SEGMENT_TMP_SUFFIX}"));
        let path = dir.join(format!("{stem}{SEGMENT_SUFFIX}"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_CLOEXEC)
            .mode(0o600)
            .open(&tmp)?;
        flock(&file, libc::LOCK_EX)?;
        file.write_all(MAGIC)?;
        fs::rename(&tmp, &path)?;
        Ok(Segment {
            path,
            file: Arc::new(file),
            len: MAGIC.len() as u64,
            pending: 0,
        })
    }

    /// Appends `bytes` (whole records). A failed or short write is cut back off, so a
    /// later record never follows garbage.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        match (&*self.file).write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                // O_APPEND is not used (one writer per segment): move back explicitly.
                let _ = std::io::Seek::seek(&mut &*self.file, std::io::SeekFrom::Start(self.len));
                Err(e)
            }
        }
    }
}

/// Where a fact lives in the spool: its segment's id and its seq there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// Segment id within this spool.
    pub segment: u64,
    /// Seq within the segment.
    pub seq: u64,
}

/// The raw fds of a spool's open segments, readable without any lock: a forked child
/// must close them even when the writer's mutex was held at fork time by a thread that
/// does not exist in the child. Holds up to 64 (a spool has one or two segments unless
/// a large backlog spans more; an fd beyond that stays open in a child until it exits).
#[derive(Debug)]
pub struct FdRegistry {
    slots: [AtomicI32; 64],
}

impl FdRegistry {
    fn new() -> FdRegistry {
        FdRegistry {
            slots: std::array::from_fn(|_| AtomicI32::new(-1)),
        }
    }

    fn add(&self, fd: i32) {
        for slot in &self.slots {
            if slot
                .compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Called before the fd is closed, so the registry never names a closed fd.
    fn remove(&self, fd: i32) {
        for slot in &self.slots {
            if slot
                .compare_exchange(fd, -1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return;
            }
        }
    }

    /// In a forked child: close(2) every registered fd (the parent keeps its lock,
    /// which belongs to the open file it still holds) and forget them.
    pub fn close_inherited(&self) {
        for slot in &self.slots {
            let fd = slot.swap(-1, Ordering::SeqCst);
            if fd >= 0 {
                crate::sys::close_inherited(fd);
            }
        }
    }
}

/// The segments of one writer and how to reach them.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    segment_bytes: u64,
    /// Segment id → segment; the active one is the highest id.
    segments: BTreeMap<u64, Segment>,
    next_segment: u64,
    next_seq: u64,
    /// With `Fsync::Batch`: when each fact appended to the active segment since its last
    /// sync was appended, `None` once delivered, for the segment's last seqs (up to
    /// `next_seq`); delivered ones leave the front, so the front is the oldest fact a
    /// sync would still protect. A delivered fact needs none: a power loss that takes
    /// its record, or its ack, at worst replays it, and the daemon answers a replay
    /// idempotently. So the writer's syncer syncs once a fact has waited undelivered for
    /// half the sync interval, and a trickle delivered within it costs no `fdatasync` at
    /// all. A dead-lettered fact stays until the next sync.
    unsynced: VecDeque<Option<Instant>>,
    /// Otherwise: set by an append since the last sync.
    dirty: bool,
    /// Unless `Never`, a segment is synced before the next starts (the flusher only
    /// syncs the active one).
    fsync: Fsync,
    /// Segments adopted from dead processes at open.
    pub adopted_segments: usize,
    /// Segments adopted and not yet reported: path and facts taken over.
    adoptions: Vec<(PathBuf, usize)>,
    fds: Arc<FdRegistry>,
}

impl Drop for Spool {
    fn drop(&mut self) {
        for seg in self.segments.values() {
            self.fds.remove(seg.file.as_raw_fd());
        }
    }
}

impl Spool {
    /// Opens `dir` (created if missing) with a fresh segment of this process, adopts
    /// every segment no live process holds, and returns their unacknowledged facts
    /// (already copied into the new segment) with their locations, oldest first.
    /// Unless `fsync` is `Never`, a segment is synced before the next one starts.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        fsync: Fsync,
    ) -> io::Result<(Spool, Vec<(Location, Entry)>)> {
        fs::create_dir_all(dir)?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(4096),
            segments: BTreeMap::new(),
            next_segment: 0,
            next_seq: 0,
            unsynced: VecDeque::new(),
            dirty: false,
            fsync,
            adopted_segments: 0,
            adoptions: Vec::new(),
            fds: Arc::new(FdRegistry::new()),
        };
        spool.roll()?;
        let adopted = spool.adopt_orphans()?;
        Ok((spool, adopted))
    }

    /// Adopts every segment in the directory that no live process holds (its writer
    /// died, or shut down with facts left): copies their unacknowledged facts into this
    /// spool, syncs, deletes them. Returns the copies, oldest segment first.
    pub fn adopt_orphans(&mut self) -> io::Result<Vec<(Location, Entry)>> {
        let mut adopted = Vec::new();
        let mut orphans: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                is_segment(name)
                    || (name.starts_with(SEGMENT_PREFIX)
                        && name.ends_with(SEGMENT_TMP_SUFFIX)
                        && stale(p))
            })
            .filter(|p| !self.segments.values().any(|s| &s.path == p))
            .collect();
        // Oldest first (the name holds the creation time), so a key's facts from
        // several dead segments keep their order as far as it is known.
        orphans.sort_by_key(|p| segment_sort_key(p));
        for path in orphans {
            if let Some(waiting) = adopt(&path)? {
                self.adopted_segments += 1;
                self.adoptions.push((path.clone(), waiting.len()));
                for Waiting { at, entry } in waiting {
                    // The copy keeps its first spooling time: its age is the fact's.
                    let loc = self.append(&entry, at)?;
                    adopted.push((loc, entry));
                }
                // Copied and synced before the orphan goes away: a crash in between
                // replays them twice, which the daemon answers as replays.
                self.sync()?;
                let _ = fs::remove_file(&path);
            }
        }
        Ok(adopted)
    }

    /// The segments adopted since the last call, with their facts taken over (the
    /// writer reports them as events).
    pub fn take_adoptions(&mut self) -> Vec<(PathBuf, usize)> {
        std::mem::take(&mut self.adoptions)
    }

    fn roll(&mut self) -> io::Result<()> {
        if self.fsync != Fsync::Never {
            self.sync()?;
        }
        let seg = Segment::create(&self.dir)?;
        self.fds.add(seg.file.as_raw_fd());
        self.segments.insert(self.next_segment, seg);
        self.next_segment += 1;
        self.next_seq = 0;
        self.delete_drained();
        Ok(())
    }

    fn active_id(&self) -> u64 {
        *self
            .segments
            .keys()
            .next_back()
            .expect("a spool always has a segment")
    }

    /// Appends one fact to the active segment (rolling over first when it is full),
    /// stamped with the time now.
    pub fn append_fact(&mut self, entry: &Entry) -> io::Result<Location> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.append(entry, Some(now))
    }

    fn append(&mut self, entry: &Entry, at: Option<u64>) -> io::Result<Location> {
        if self.segments[&self.active_id()].len >= self.segment_bytes {
            self.roll()?;
        }
        let id = self.active_id();
        let seq = self.next_seq;
        let mut buf = Vec::with_capacity(entry.fact.len() + 64);
        record::encode_fact(seq, at, entry, &mut buf);
        let seg = self.segments.get_mut(&id).expect("active segment");
        seg.append(&buf)?;
        seg.pending += 1;
        self.next_seq += 1;
        if self.fsync == Fsync::Batch {
            self.unsynced.push_back(Some(Instant::now()));
        } else {
            self.dirty = true;
        }
        Ok(Location { segment: id, seq })
    }

    /// Records that these facts were delivered: one ack record per segment. Segments
    /// left with nothing pending (other than the active one) are deleted.
    pub fn ack(&mut self, locations: &[Location]) -> io::Result<()> {
        let active = self.active_id();
        let first = self.next_seq - self.unsynced.len() as u64;
        for l in locations.iter().filter(|l| l.segment == active) {
            let slot = l.seq.checked_sub(first);
            if let Some(at) = slot.and_then(|i| self.unsynced.get_mut(i as usize)) {
                *at = None;
            }
        }
        while self.unsynced.front() == Some(&None) {
            self.unsynced.pop_front();
        }
        self.settle(locations, Record::Ack)
    }

    /// Records that these facts were given up (and written to the dead-letter file),
    /// as [`Spool::ack`] does for delivered ones.
    pub fn ack_dead(&mut self, locations: &[Location]) -> io::Result<()> {
        self.settle(locations, Record::Dead)
    }

    fn settle(&mut self, locations: &[Location], kind: fn(Vec<u64>) -> Record) -> io::Result<()> {
        let mut by_segment: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for l in locations {
            by_segment.entry(l.segment).or_default().push(l.seq);
        }
        let mut result = Ok(());
        for (id, seqs) in by_segment {
            let Some(seg) = self.segments.get_mut(&id) else {
                continue;
            };
            seg.pending = seg.pending.saturating_sub(seqs.len());
            let mut buf = Vec::with_capacity(16 + seqs.len() * 8);
            encode(&kind(seqs), &mut buf);
            if let Err(e) = seg.append(&buf) {
                result = Err(e);
            }
        }
        self.delete_drained();
        result
    }

    /// Deletes every segment but the active one that has no pending fact.
    fn delete_drained(&mut self) {
        let active = self.active_id();
        let drained: Vec<u64> = self
            .segments
            .iter()
            .filter(|(id, s)| **id != active && s.pending == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in drained {
            if let Some(seg) = self.segments.remove(&id) {
                // Unlink while still holding the lock: no other process can adopt it.
                let _ = fs::remove_file(&seg.path);
                self.fds.remove(seg.file.as_raw_fd());
            }
        }
    }

    /// The active segment's file, for an `fdatasync` outside any lock; what was
    /// appended so far counts as synced from now on. `None` when there is nothing for a
    /// sync to protect: under `Batch`, every fact appended since the last call has been
    /// delivered; otherwise nothing was written.
    pub fn take_dirty(&mut self) -> Option<Arc<File>> {
        let due = !self.unsynced.is_empty() || std::mem::take(&mut self.dirty);
        self.unsynced.clear();
        if !due {
            return None;
        }
        Some(self.segments[&self.active_id()].file.clone())
    }

    /// Ends this spool: syncs, then deletes every segment with nothing pending (its lock
    /// is still held while it is unlinked, so nobody can be adopting it). Segments with
    /// pending facts stay for the next writer. The locks go with the files.
    pub fn close(mut self) -> io::Result<()> {
        let synced = self.sync();
        for seg in self.segments.values().filter(|s| s.pending == 0) {
            let _ = fs::remove_file(&seg.path);
        }
        synced
    }

    /// When the oldest fact appended since the last [`Spool::take_dirty`] and not yet
    /// delivered was appended (`None`: none is, or the fsync policy is not `Batch`).
    pub fn oldest_unsynced(&self) -> Option<Instant> {
        self.unsynced.front().copied().flatten()
    }

    /// The file of segment `id`, for an `fdatasync` outside any lock.
    pub fn file_of(&self, id: u64) -> Option<Arc<File>> {
        self.segments.get(&id).map(|s| s.file.clone())
    }

    /// `fdatasync` of the active segment, now.
    pub fn sync(&mut self) -> io::Result<()> {
        match self.take_dirty() {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Facts written and not yet acknowledged, over all segments.
    pub fn pending(&self) -> usize {
        self.segments.values().map(|s| s.pending).sum()
    }

    /// Bytes over all segments.
    pub fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    /// The segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.values().map(|s| s.path.clone()).collect()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one line to the dead-letter file beside the segments (one `write(2)`
    /// with `O_APPEND`), holding its lock ([`LOCK_SUFFIX`]) so that `rake
    /// tbackend:dead_letters:replay`, which rewrites the file under the same lock, never
    /// loses it. The lock is held for one open and one write.
    pub fn dead_letter(&self, line: &[u8]) -> io::Result<()> {
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_CLOEXEC)
            .mode(0o600)
            .open(self.dir.join(format!("{DEAD_LETTER_FILE}{LOCK_SUFFIX}")))?;
        while let Err(e) = flock(&lock, libc::LOCK_EX) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_CLOEXEC)
            .mode(0o600)
            .open(self.dir.join(DEAD_LETTER_FILE))?;
        file.write_all(line)
    }

    /// The fds of the open segments, for a forked child ([`FdRegistry::close_inherited`]).
    pub fn fd_registry(&self) -> Arc<FdRegistry> {
        self.fds.clone()
    }
}

/// A `.tmp` segment is locked a moment after it is created: only one left behind long
/// ago (a crash between create and rename) is cleaned up, never one being born.
fn stale(p: &Path) -> bool {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > std::time::Duration::from_secs(60))
}

fn segment_sort_key(p: &Path) -> (u128, u64, String) {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut parts = name
        .trim_end_matches(SEGMENT_SUFFIX)
        .trim_end_matches(SEGMENT_TMP_SUFFIX)
        .split('-')
        .skip(2);
    let nanos = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let n = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (nanos, n, name.to_string())
}

/// Locks and reads a segment no live process holds; `None` if one does (or it is gone).
/// Returns its pending facts; the caller deletes it once they are safe elsewhere.
fn adopt(path: &Path) -> io::Result<Option<Vec<Waiting>>> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
        return Ok(None);
    }
    // Another adopter may have deleted it between our open and our lock.
    let same = match fs::metadata(path) {
        Ok(m) => {
            let ours = file.metadata()?;
            m.ino() == ours.ino() && m.dev() == ours.dev()
        }
        Err(_) => false,
    };
    if !same {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(Settled::of(decode_segment(&bytes).records).pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn entry(key: &str, n: u32) -> Entry {
        Entry {
            store: "s".into(),
            key: key.into(),
            id: format!("{key}-{n}"),
            durability: if n.is_multiple_of(2) {
                Some("accepted".into())
            } else {
                None
            },
            fact: RawJson::unchecked(
                format!(r#"{{"id":"{key}-{n}","store":"s","key":"{key}","value":{n}}}"#)
                    .into_bytes(),
            ),
        }
    }

    pub(super) fn tempdir(tag: &str) -> PathBuf {
        let n = SEGMENT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "tbspool-{tag}-{}-{n}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(SEGMENT_SUFFIX))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_dead_writers_segment_is_adopted_once_and_deleted() {
        let dir = tempdir("adopt");
        {
            let (mut spool, adopted) = Spool::open(&dir, 1 << 20, Fsync::Batch).unwrap();
            assert!(adopted.is_empty());
            let a = spool.append_fact(&entry("a", 0)).unwrap();
            spool.append_fact(&entry("a", 1)).unwrap();
            spool.append_fact(&entry("b", 2)).unwrap();
            spool.ack(&[a]).unwrap();
            // A crash mid-write: half a record at the end.
            let mut torn = Vec::new();
            record::encode_fact(99, None, &entry("z", 9), &mut torn);
            (&*spool.segments.values().next().unwrap().file)
                .write_all(&torn[..torn.len() / 2])
                .unwrap();
            // Held: another writer starting now adopts nothing.
            let (_other, adopted) = Spool::open(&dir, 1 << 20, Fsync::Batch).unwrap();
            assert!(adopted.is_empty());
            std::mem::forget(spool); // the process "dies": no destructor, fd closed below
        }
        // The forgotten File still holds the lock in this process: release it as the
        // kernel does for a dead process.
        for f in fs::read_dir("/proc/self/fd").unwrap() {
            let f = f.unwrap();
            if let Ok(target) = fs::read_link(f.path()) {
                if target.starts_with(&dir) {
                    let fd: i32 = f.file_name().to_str().unwrap().parse().unwrap();
                    unsafe { libc::close(fd) };
                }
            }
        }
        let (spool, adopted) = Spool::open(&dir, 1 << 20, Fsync::Batch).unwrap();
        let ids: Vec<&str> = adopted.iter().map(|(_, e)| e.id.as_str()).collect();
        assert_eq!(ids, vec!["a-1", "b-2"]);
        assert_eq!(
            spool.adopted_segments, 2,
            "the dead one and the closed `_other`"
        );
        assert_eq!(spool.pending(), 2);
        // Only our own segment is left, and it now holds the adopted facts.
        assert_eq!(segment_files(&dir), spool.segment_paths());
        let bytes = fs::read(&spool.segment_paths()[0]).unwrap();
        let pending: Vec<String> = pending_facts(decode_segment(&bytes).records)
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(pending, vec!["a-1", "b-2"]);
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drained_segments_are_deleted_on_roll_over() {
        let dir = tempdir("compact");
        let (mut spool, _) = Spool::open(&dir, 4096, Fsync::Batch).unwrap();
        let mut locs = Vec::new();
        for n in 0..200 {
            locs.push(spool.append_fact(&entry("k", n)).unwrap());
        }
        let files = segment_files(&dir);
        assert!(files.len() > 2, "rolled over: {files:?}");
        spool.ack(&locs[..150]).unwrap();
        let left = segment_files(&dir);
        assert!(left.len() < files.len(), "fully acked segments deleted");
        assert_eq!(spool.pending(), 50);
        // What is left on disk is exactly the unacked facts.
        let mut pending = Vec::new();
        for f in &left {
            pending.extend(pending_facts(decode_segment(&fs::read(f).unwrap()).records));
        }
        assert_eq!(pending.len(), 50);
        assert_eq!(pending[0].id, "k-150");
        spool.ack(&locs[150..]).unwrap();
        for n in 0..100 {
            spool.append_fact(&entry("k", 1000 + n)).unwrap();
        }
        // Every segment left holds a fact still pending: the drained ones are gone.
        let left = segment_files(&dir);
        let waiting = |f: &PathBuf| !pending_facts(decode_segment(&fs::read(f).unwrap()).records).is_empty();
        assert!(left.iter().all(waiting), "{left:?}");
        assert_eq!(left, spool.segment_paths());
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sync_is_due_only_for_facts_not_yet_delivered() {
        let dir = tempdir("unsynced");
        let (mut spool, _) = Spool::open(&dir, 1 << 20, Fsync::Batch).unwrap();
        assert!(spool.take_dirty().is_none(), "nothing appended");
        let before = Instant::now();
        let a = spool.append_fact(&entry("k", 0)).unwrap();
        let b = spool.append_fact(&entry("k", 1)).unwrap();
        let c = spool.append_fact(&entry("k", 2)).unwrap();
        let oldest = spool.oldest_unsynced().expect("a is undelivered");
        assert!(oldest >= before);
        spool.ack(&[b]).unwrap();
        assert_eq!(spool.oldest_unsynced(), Some(oldest), "a is still the oldest");
        spool.ack(&[a]).unwrap();
        let c_at = spool.oldest_unsynced().expect("c is undelivered");
        assert!(c_at >= oldest, "b left with a: c is the oldest now");
        spool.ack(&[c]).unwrap();
        assert_eq!(spool.oldest_unsynced(), None);
        assert!(spool.take_dirty().is_none(), "all delivered: nothing to protect");

        let d = spool.append_fact(&entry("k", 3)).unwrap();
        assert!(spool.take_dirty().is_some(), "d undelivered");
        let e = spool.append_fact(&entry("k", 4)).unwrap();
        spool.ack(&[d]).unwrap();
        assert!(spool.oldest_unsynced().is_some(), "d was synced before; e was not");
        spool.ack_dead(&[e]).unwrap();
        assert!(spool.take_dirty().is_some(), "a dead-lettered fact is still synced");
        assert!(spool.take_dirty().is_none());
        drop(spool);

        // Other policies sync whatever was written, as before.
        let (mut spool, _) = Spool::open(&dir, 1 << 20, Fsync::Always).unwrap();
        let f = spool.append_fact(&entry("k", 5)).unwrap();
        spool.ack(&[f]).unwrap();
        assert_eq!(spool.oldest_unsynced(), None);
        assert!(spool.take_dirty().is_some());
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dead_letters_append_lines() {
        let dir = tempdir("dead");
        let (spool, _) = Spool::open(&dir, 1 << 20, Fsync::Batch).unwrap();
        spool.dead_letter(b"{\"a\":1}\n").unwrap();
        spool.dead_letter(b"{\"a\":2}\n").unwrap();
        let text = fs::read_to_string(dir.join(DEAD_LETTER_FILE)).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dead_letter_waits_for_the_lock_a_rewrite_holds() {
        let dir = tempdir("dead-lock");
        let (spool, _) = Spool::open(&dir, 1 << 20, Fsync::Batch).unwrap();
        let held = File::create(dir.join(format!("{DEAD_LETTER_FILE}{LOCK_SUFFIX}"))).unwrap();
        assert!(flock(&held, libc::LOCK_EX).unwrap());
        std::thread::scope(|s| {
            let writer = s.spawn(|| spool.dead_letter(b"{\"a\":1}\n"));
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert!(
                !dir.join(DEAD_LETTER_FILE).exists(),
                "appended while the lock was held"
            );
            drop(held);
            writer.join().unwrap().unwrap();
        });
        let text = fs::read_to_string(dir.join(DEAD_LETTER_FILE)).unwrap();
        assert_eq!(text, "{\"a\":1}\n");
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }
}
