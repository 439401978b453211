//! What a spool directory holds, read without becoming a writer: a writer would adopt
//! the orphaned segments and start delivering them. `rake tbackend:spool:status` is its
//! Ruby face.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::record::{decode_segment, Settled};
use super::{flock, is_segment, segment_sort_key, DEAD_LETTER_FILE};

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStatus {
    /// Its file name in the spool directory.
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// Whether a live writer holds its `flock`. One nobody holds is orphaned: the next
    /// writer to start (or to look, every `adopt_interval`) adopts and delivers it.
    pub held: bool,
    /// Facts not acknowledged yet.
    pub pending: usize,
    /// Facts acknowledged as delivered.
    pub delivered: usize,
    /// Facts given up (kept in the dead-letter file).
    pub dead: usize,
    /// When the oldest pending fact was first spooled, µs since the Unix epoch.
    pub oldest_pending_at: Option<u64>,
}

/// A spool directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStatus {
    /// The segments, oldest first.
    pub segments: Vec<SegmentStatus>,
    /// Lines in the dead-letter file (every fact given up and not replayed since,
    /// including those of segments already deleted).
    pub dead_letters: usize,
}

/// Reads the spool directory `dir`. A segment deleted while this looks (drained,
/// adopted) is left out; a writer's last record may be half-written and is not counted.
pub fn status(dir: &Path) -> io::Result<SpoolStatus> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_segment))
        .collect();
    paths.sort_by_key(|p| segment_sort_key(p));
    let mut segments = Vec::with_capacity(paths.len());
    for path in paths {
        match segment(&path) {
            Ok(s) => segments.push(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(SpoolStatus {
        segments,
        dead_letters: dead_letters(&dir.join(DEAD_LETTER_FILE))?,
    })
}

fn segment(path: &Path) -> io::Result<SegmentStatus> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    // A shared lock is free unless a writer (or an adopter) holds the exclusive one;
    // taken, it goes when the file is closed below (an adopter trying that instant skips
    // the segment until its next look). Writers lock a segment before it gets its name,
    // so a live one is never seen free.
    let held = !flock(&file, libc::LOCK_SH | libc::LOCK_NB)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let settled = Settled::of(decode_segment(&bytes).records);
    Ok(SegmentStatus {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bytes: bytes.len() as u64,
        held,
        pending: settled.pending.len(),
        delivered: settled.delivered,
        dead: settled.dead,
        oldest_pending_at: settled.oldest_pending_at(),
    })
}

fn dead_letters(path: &Path) -> io::Result<usize> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for line in BufReader::new(file).split(b'\n') {
        if !line?.is_empty() {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{entry, tempdir};
    use super::super::{Fsync, Spool};
    use super::*;

    fn now_us() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
    }

    #[test]
    fn a_live_writers_segment_counts_pending_delivered_and_dead_facts() {
        let dir = tempdir("status");
        let before = now_us();
        let (mut spool, _) = Spool::open(&dir, 1 << 20, Fsync::Batch).unwrap();
        let locs: Vec<_> = (0..5)
            .map(|n| spool.append_fact(&entry("k", n)).unwrap())
            .collect();
        spool.ack(&locs[..2]).unwrap();
        spool.ack_dead(&locs[2..3]).unwrap();
        spool.dead_letter(b"{\"id\":\"k-2\"}\n").unwrap();
        let after = now_us();

        let st = status(&dir).unwrap();
        assert_eq!(st.dead_letters, 1);
        assert_eq!(st.segments.len(), 1);
        let s = &st.segments[0];
        assert_eq!(dir.join(&s.file), spool.segment_paths()[0]);
        assert!(s.held, "the writer holds it");
        assert_eq!((s.pending, s.delivered, s.dead), (2, 2, 1));
        assert_eq!(s.bytes, fs::metadata(dir.join(&s.file)).unwrap().len());
        let at = s.oldest_pending_at.expect("a pending fact has a time");
        assert!((before..=after).contains(&at), "{before} <= {at} <= {after}");

        // Everything settled: nothing pending, no age, the segment still held.
        spool.ack(&locs[3..]).unwrap();
        let s = &status(&dir).unwrap().segments[0];
        assert_eq!((s.pending, s.delivered, s.dead), (0, 4, 1));
        assert_eq!(s.oldest_pending_at, None);
        assert!(s.held);
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_orphaned_segment_is_free_and_its_facts_keep_their_time_when_adopted() {
        let dir = tempdir("status-orphan");
        let (mut spool, _) = Spool::open(&dir, 1 << 20, Fsync::Batch).unwrap();
        spool.append_fact(&entry("k", 0)).unwrap();
        spool.append_fact(&entry("k", 1)).unwrap();
        let file = spool.segment_paths()[0].clone();
        // A writer that shut down with facts left: its segment stays, unlocked.
        spool.close().unwrap();
        let st = status(&dir).unwrap();
        assert_eq!(st.segments.len(), 1);
        let orphan = st.segments[0].clone();
        assert!(!orphan.held);
        assert_eq!(orphan.pending, 2);
        assert_eq!(dir.join(&orphan.file), file);
        // The probe let go of the lock: a writer still adopts the segment.
        let (adopter, adopted) = Spool::open(&dir, 1 << 20, Fsync::Batch).unwrap();
        assert_eq!(adopted.len(), 2);
        let st = status(&dir).unwrap();
        assert_eq!(st.segments.len(), 1, "the orphan is gone");
        let copy = &st.segments[0];
        assert!(copy.held);
        assert_eq!(copy.pending, 2);
        assert_eq!(copy.oldest_pending_at, orphan.oldest_pending_at);
        drop(adopter);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_or_missing_directory() {
        let dir = tempdir("status-empty");
        assert_eq!(status(&dir).unwrap(), SpoolStatus::default());
        // Files that are not segments are no business of the status.
        fs::write(dir.join("seg-1-2-3.tmp"), b"x").unwrap();
        fs::write(dir.join("notes.spool.bak"), b"x").unwrap();
        fs::write(dir.join(DEAD_LETTER_FILE), b"{}\n\n{}\n{}").unwrap();
        let st = status(&dir).unwrap();
        assert!(st.segments.is_empty());
        assert_eq!(st.dead_letters, 3);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(status(&dir).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
