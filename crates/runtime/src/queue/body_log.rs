//! The embedded queue's bodies: appended to segment files beside the database, read back by
//! their place. A body is written once, by one `write`, where in SQLite it went to the WAL, was
//! copied into the database by the checkpoint, spread over overflow pages, and read back
//! through them: about a third of `mpconnect all`'s CPU under load.
//!
//! A segment is never appended to after a restart, and is freed once no message refers to
//! it; one that only a few long-parked messages still hold is compacted (they move to the
//! active segment) so the disk holds about what the queues hold. Only the group commit (the
//! caller holding the embedded queue's writer) uses it, in the same transaction as the rows that point into it: a row is committed only after
//! its body is written (and, with `sync = full`, synced).
//!
//! A freed segment is kept as a spare (a few at most) and written over when the active one
//! rolls: a new file costs the filesystem a page and a block for every 4 KB written and the
//! unlink gives them back, about a twentieth of `mpconnect all`'s CPU under load, where
//! writing over cached pages costs the copy alone. A spare's old bytes past what was written
//! again are never read: every read is at a place a committed row names. With `sync = normal`
//! a power loss can keep a committed row whose body never reached the disk (the database's own
//! commits are not synced either); in a reused file that place then holds an older body, where
//! a new file would hold nothing. With `sync = full` bodies are synced before their rows, and
//! the rename that brings a spare back is synced before anything is written into it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::QueueError;

/// A segment is rolled past this size.
pub(super) const SEGMENT_BYTES: u64 = 32 << 20;

/// Freed segments kept to be written over. A segment of 32 MB rolls several times a second at
/// full load and the collector frees a second's worth at once; an idle queue keeps none.
const MAX_SPARES: usize = 4;

/// One message's bytes for [`BodyLog::append_all`]: its body, in up to two parts written one
/// after the other, and its attributes.
pub(super) struct Record<'a> {
    pub body: [&'a [u8]; 2],
    pub attributes: &'a [u8],
}

impl Record<'_> {
    fn body_len(&self) -> usize {
        self.body[0].len() + self.body[1].len()
    }

    fn len(&self) -> usize {
        self.body_len() + self.attributes.len()
    }
}

/// A body and its attributes (JSON), one after the other in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Place {
    pub segment: i64,
    pub offset: u64,
    pub body_len: u64,
    pub attributes_len: u64,
}

pub(super) struct BodyLog {
    dir: PathBuf,
    active: File,
    active_id: i64,
    active_len: u64,
    /// The active file's length: a reused one is longer than what was written into it yet.
    active_file_len: u64,
    /// Bytes on disk: every segment's and spare's length.
    total: u64,
    /// Past this many bytes on disk, appends are refused (the queue is full).
    cap: Option<u64>,
    readers: HashMap<i64, File>,
    /// What was written into each segment opened in this run: a reused file is longer than
    /// what it holds.
    written: HashMap<i64, u64>,
    /// Freed segments (renamed to [`spare_path`]): their ids and sizes.
    spares: Vec<(i64, u64)>,
    segment_bytes: u64,
    full_sync: bool,
    unsynced: bool,
}

pub(super) fn full() -> QueueError {
    QueueError::Unavailable("embedded queue: full (its size cap or the disk)".into())
}

fn io_error(what: &str, e: std::io::Error) -> QueueError {
    if e.raw_os_error() == Some(28) {
        return full();
    }
    QueueError::Unavailable(format!("embedded queue: {what}: {e}"))
}

fn segment_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id:012}.seg"))
}

fn spare_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id:012}.spare"))
}

impl BodyLog {
    /// Opens the segments in `dir` and starts a new active one after them.
    pub fn open(dir: &Path, full_sync: bool, segment_bytes: u64) -> Result<Self, QueueError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("creating the segments", e))?;
        // Spares left by an earlier run hold nothing; they are not worth a listing's care.
        for (id, _) in list(dir, "spare")? {
            let _ = std::fs::remove_file(spare_path(dir, id));
        }
        let mut last = 0;
        let mut total = 0;
        for (id, size) in list(dir, "seg")? {
            last = last.max(id);
            total += size;
        }
        let active_id = last + 1;
        let active = create(dir, active_id)?;
        Ok(BodyLog {
            dir: dir.to_owned(),
            active,
            active_id,
            active_len: 0,
            active_file_len: 0,
            total,
            cap: None,
            readers: HashMap::new(),
            written: HashMap::from([(active_id, 0)]),
            spares: Vec::new(),
            segment_bytes,
            full_sync,
            unsynced: false,
        })
    }

    /// Caps the bytes on disk (`None`: no cap). Segments are then at most an eighth of the
    /// cap, so what acknowledgements free is given back while the queue is near it: space in
    /// the active segment is only reclaimed once it is closed.
    pub fn set_cap(&mut self, cap: Option<u64>) {
        self.cap = cap;
        if let Some(cap) = cap {
            self.segment_bytes = self.segment_bytes.min((cap / 8).max(64 * 1024));
        }
    }

    /// The active segment's id, and whether anything was written to it.
    pub fn active(&self) -> (i64, bool) {
        (self.active_id, self.active_len > 0)
    }

    /// Closes the active segment (a new, empty one takes the next append), so that it can be
    /// collected: the queue drained, and gives its disk back, spares too.
    pub fn close_active(&mut self) -> Result<(), QueueError> {
        self.drop_spares();
        self.roll()
    }

    /// Appends a body and its attributes; `capped`: refused past the cap (sends are; moving
    /// bodies out of an old segment is not, since it frees more than it takes).
    pub fn append(
        &mut self,
        body: &[u8],
        attributes: &[u8],
        capped: bool,
    ) -> Result<Place, QueueError> {
        let record = Record {
            body: [body, &[]],
            attributes,
        };
        let places = self.append_all(&[record], capped)?;
        places.into_iter().next().ok_or_else(full)
    }

    /// Appends several bodies with their attributes in one write (a send's messages).
    pub fn append_all(
        &mut self,
        records: &[Record<'_>],
        capped: bool,
    ) -> Result<Vec<Place>, QueueError> {
        let len: u64 = records.iter().map(|r| r.len() as u64).sum();
        if self.active_len >= self.segment_bytes {
            self.roll()?;
        }
        let growth = (self.active_len + len).saturating_sub(self.active_file_len);
        if let Some(cap) = self.cap {
            // Spares go before anything is refused.
            while self.total + growth > cap && self.drop_spare() {}
            if capped && self.total + growth > cap {
                return Err(full());
            }
        }
        let mut places = Vec::with_capacity(records.len());
        // The parts are handed to the kernel as they are (one `writev`), not first copied
        // into one buffer.
        let mut parts = Vec::with_capacity(records.len() * 3);
        let mut offset = self.active_len;
        for record in records {
            places.push(Place {
                segment: self.active_id,
                offset,
                body_len: record.body_len() as u64,
                attributes_len: record.attributes.len() as u64,
            });
            offset += record.len() as u64;
            parts.extend(
                record
                    .body
                    .iter()
                    .chain([&record.attributes])
                    .filter(|part| !part.is_empty())
                    .map(|part| IoSlice::new(part)),
            );
        }
        if let Err(e) = write_all_vectored(&mut self.active, &mut parts) {
            // A partial write leaves the segment's end unknown: the next append starts a new
            // one.
            self.active_len = self.segment_bytes;
            self.total += growth;
            return Err(io_error("writing a body", e));
        }
        self.active_len += len;
        self.active_file_len += growth;
        self.total += growth;
        self.written.insert(self.active_id, self.active_len);
        self.unsynced = true;
        Ok(places)
    }

    /// The body and the attributes' bytes at `place`.
    pub fn read(&mut self, place: Place) -> Result<(Vec<u8>, Vec<u8>), QueueError> {
        let file = match self.readers.entry(place.segment) {
            std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let path = segment_path(&self.dir, place.segment);
                v.insert(File::open(&path).map_err(|e| io_error("opening a segment", e))?)
            }
        };
        let len = place.body_len + place.attributes_len;
        // Read into the buffer's spare room, which is not zeroed first as a positional read's
        // buffer must be (a row's record is ~120 KB); the position moved is this reader's own.
        let mut record = Vec::with_capacity(len as usize);
        file.seek(SeekFrom::Start(place.offset))
            .and_then(|_| (&*file).take(len).read_to_end(&mut record))
            .map_err(|e| io_error("reading a body", e))?;
        if record.len() as u64 != len {
            return Err(io_error(
                "reading a body",
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            ));
        }
        let attributes = record.split_off(place.body_len as usize);
        Ok((record, attributes))
    }

    /// With `sync = full`, makes what was appended durable before the rows that point at it
    /// are committed.
    pub fn sync_before_commit(&mut self) -> Result<(), QueueError> {
        if self.full_sync && self.unsynced {
            self.active
                .sync_data()
                .map_err(|e| io_error("syncing a segment", e))?;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Makes what was appended durable now, whatever the sync setting (a migration's copy).
    pub fn force_sync(&mut self) -> Result<(), QueueError> {
        self.active
            .sync_data()
            .map_err(|e| io_error("syncing a segment", e))?;
        self.unsynced = false;
        Ok(())
    }

    fn roll(&mut self) -> Result<(), QueueError> {
        self.sync_before_commit()?;
        let next = self.active_id + 1;
        (self.active, self.active_file_len) = match self.reuse_spare(next) {
            Some(reused) => reused,
            None => (create(&self.dir, next)?, 0),
        };
        self.active_id = next;
        self.active_len = 0;
        self.written.insert(next, 0);
        Ok(())
    }

    /// A spare renamed to segment `id`, opened to be written from its start (not truncated:
    /// its pages and blocks are what is reused).
    fn reuse_spare(&mut self, id: i64) -> Option<(File, u64)> {
        let (spare_id, size) = self.spares.pop()?;
        let spare = spare_path(&self.dir, spare_id);
        let path = segment_path(&self.dir, id);
        let reused = std::fs::rename(&spare, &path).and_then(|()| {
            if self.full_sync {
                // A file written over in place changes no metadata, so syncing its data need
                // not commit the rename: the directory is synced itself.
                File::open(&self.dir)?.sync_all()?;
            }
            File::options().write(true).open(&path)
        });
        match reused {
            Ok(file) => Some((file, size)),
            Err(e) => {
                tracing::warn!(error = %e, "embedded queue: cannot reuse a segment");
                let _ = std::fs::remove_file(&spare);
                let _ = std::fs::remove_file(&path);
                self.total = self.total.saturating_sub(size);
                None
            }
        }
    }

    /// Deletes one spare; false if there was none.
    fn drop_spare(&mut self) -> bool {
        let Some((spare_id, size)) = self.spares.pop() else {
            return false;
        };
        if let Err(e) = std::fs::remove_file(spare_path(&self.dir, spare_id)) {
            tracing::warn!(error = %e, "embedded queue: cannot remove a spare segment");
        }
        self.total = self.total.saturating_sub(size);
        true
    }

    /// Deletes every spare (the queue went idle: its disk is given back).
    pub fn drop_spares(&mut self) {
        while self.drop_spare() {}
    }

    /// Whether more than half the size cap is on disk: then a segment is compacted while most
    /// of it is still live, since the few parked messages that pin mostly-acknowledged
    /// segments would otherwise keep the queue refusing sends long after it drained.
    pub fn near_cap(&self) -> bool {
        self.cap
            .is_some_and(|cap| self.total.saturating_mul(2) > cap)
    }

    /// The segments on disk but the active one, with what they hold (a file written over
    /// holds less than its length).
    pub fn closed_segments(&self) -> Result<Vec<(i64, u64)>, QueueError> {
        Ok(list(&self.dir, "seg")?
            .into_iter()
            .filter(|(id, _)| *id != self.active_id)
            .map(|(id, size)| (id, self.written.get(&id).copied().unwrap_or(size)))
            .collect())
    }

    /// Frees a segment no committed row points into: kept as a spare to be written over, or
    /// deleted.
    pub fn remove(&mut self, segment: i64) {
        self.readers.remove(&segment);
        let path = segment_path(&self.dir, segment);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.written.remove(&segment);
        if self.spares.len() < MAX_SPARES {
            match std::fs::rename(&path, spare_path(&self.dir, segment)) {
                Ok(()) => {
                    self.spares.push((segment, size));
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, segment, "embedded queue: cannot keep a spare segment")
                }
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => self.total = self.total.saturating_sub(size),
            Err(e) => {
                tracing::warn!(error = %e, segment, "embedded queue: cannot remove a segment")
            }
        }
    }
}

fn create(dir: &Path, id: i64) -> Result<File, QueueError> {
    File::options()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, id))
        .map_err(|e| io_error("creating a segment", e))
}

/// Every file in `dir` named `<id>.<extension>`: its id and size.
fn list(dir: &Path, extension: &str) -> Result<Vec<(i64, u64)>, QueueError> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("listing the segments", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(extension)?.strip_suffix('.'))
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        if let Ok(meta) = entry.metadata() {
            found.push((id, meta.len()));
        }
    }
    Ok(found)
}

/// Writes every part, in order, as `Write::write_all` writes one (`write_all_vectored` is not
/// stable): a short write goes on from where it stopped.
fn write_all_vectored(file: &mut File, mut parts: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !parts.is_empty() {
        match file.write_vectored(parts) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    /// Bytes in the directory's files: what `total` must count.
    fn on_disk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    fn record(n: u64) -> (Vec<u8>, Vec<u8>) {
        // Now and then one large enough to make its segment twice as long as the rest.
        let len = if n.is_multiple_of(37) {
            12_000
        } else {
            200 + (n * 7919) % 2800
        };
        let body = (0..len).map(|i| (n as u8) ^ (i as u8)).collect();
        (body, format!("{{\"n\":\"{n}\"}}").into_bytes())
    }

    /// A record cut short on disk (a segment truncated under it) is an error, not a shorter
    /// body; the records before the cut still read.
    #[test]
    fn a_record_cut_short_does_not_read_as_a_shorter_body() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BodyLog::open(dir.path(), false, 1 << 20).unwrap();
        let (first, second) = (record(1), record(2));
        let kept = log.append(&first.0, &first.1, true).unwrap();
        let cut = log.append(&second.0, &second.1, true).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), cut.segment))
            .unwrap()
            .set_len(cut.offset + cut.body_len - 1)
            .unwrap();
        assert_eq!(log.read(kept).unwrap(), first);
        assert!(log.read(cut).is_err());
    }

    /// Segments freed and written over in any order: every body reads back as written, the
    /// disk accounting matches the files, and what a closed segment holds is what was written
    /// into it, not its (reused) file's length.
    #[test]
    fn reused_segments_read_back_only_what_was_written_into_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BodyLog::open(dir.path(), false, 8192).unwrap();
        let mut live: BTreeMap<i64, Vec<(Place, u64)>> = BTreeMap::new();
        let mut inodes = std::collections::HashSet::new();
        let mut reused = 0;
        for n in 0..600u64 {
            let (body, attributes) = record(n);
            let place = log.append(&body, &attributes, true).unwrap();
            let path = segment_path(dir.path(), place.segment);
            if place.offset == 0 && !inodes.insert(std::fs::metadata(&path).unwrap().ino()) {
                reused += 1;
            }
            live.entry(place.segment).or_default().push((place, n));
            // Every few records, the oldest closed segment is acknowledged and freed.
            if n % 5 == 4 {
                let (active, _) = log.active();
                if let Some(&oldest) = live.keys().next().filter(|&&s| s != active) {
                    for (place, n) in live.remove(&oldest).unwrap() {
                        assert_eq!(log.read(place).unwrap(), record(n), "before it went");
                    }
                    log.remove(oldest);
                }
            }
            assert_eq!(log.total, on_disk(dir.path()), "after record {n}");
        }
        assert!(reused > 10, "spares were written over {reused} times");
        for (place, n) in live.values().flatten() {
            assert_eq!(log.read(*place).unwrap(), record(*n));
        }
        for (segment, held) in log.closed_segments().unwrap() {
            let written: u64 = live[&segment]
                .iter()
                .map(|(p, _)| p.body_len + p.attributes_len)
                .sum();
            assert_eq!(held, written, "segment {segment}");
        }
    }

    /// Spares are on the disk, so they count against a size cap, and they are deleted before
    /// a send is refused for it; a drained queue keeps none.
    #[test]
    fn spares_give_way_to_the_cap_and_go_when_the_queue_drains() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BodyLog::open(dir.path(), false, SEGMENT_BYTES).unwrap();
        let cap = 1 << 20;
        log.set_cap(Some(cap));
        // Past an eighth of the cap a segment rolls: one of these a segment.
        let body = vec![7u8; 130 * 1024];
        let segments: Vec<i64> = (0..5)
            .map(|_| log.append(&body, b"{}", true).unwrap().segment)
            .collect();
        for &segment in &segments[..4] {
            log.remove(segment);
        }
        assert_eq!(log.spares.len(), MAX_SPARES);
        assert_eq!(log.total, on_disk(dir.path()));
        // 130 KB live; a 600 KB send fits the cap once a spare is deleted.
        log.append(&vec![8u8; 600 * 1024], b"{}", true).unwrap();
        assert!(log.spares.len() < MAX_SPARES - 1, "a spare went");
        assert_eq!(log.total, on_disk(dir.path()));
        assert!(log.total <= cap, "{} bytes on disk", log.total);
        let refused = (0..20).find(|_| log.append(&body, b"{}", true).is_err());
        assert!(refused.is_some(), "the cap holds");
        assert!(log.spares.is_empty(), "refused with spares left");
        assert!(on_disk(dir.path()) <= cap);

        for (segment, _) in log.closed_segments().unwrap() {
            log.remove(segment);
        }
        log.close_active().unwrap();
        for (segment, _) in log.closed_segments().unwrap() {
            log.remove(segment);
        }
        log.drop_spares();
        assert_eq!(on_disk(dir.path()), 0, "an empty active segment only");
        assert_eq!(log.total, 0);
    }

    /// A restart starts a new segment after the old ones and deletes the spares left behind.
    #[test]
    fn a_restart_leaves_no_spares_and_counts_the_segments_it_finds() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, body) = {
            let mut log = BodyLog::open(dir.path(), true, 4096).unwrap();
            let first = log.append(&[1; 5000], b"a", true).unwrap();
            let kept = log.append(&[2; 5000], b"b", true).unwrap();
            log.append(&[3; 10], b"c", true).unwrap();
            log.remove(first.segment);
            assert_eq!(log.spares.len(), 1);
            (kept, (vec![2; 5000], b"b".to_vec()))
        };
        let mut log = BodyLog::open(dir.path(), true, 4096).unwrap();
        assert!(log.spares.is_empty());
        assert!(list(dir.path(), "spare").unwrap().is_empty());
        assert_eq!(log.total, on_disk(dir.path()));
        assert_eq!(log.read(kept).unwrap(), body);
        assert!(log.active().0 > kept.segment + 1);
    }
}
