//! The embedded queue's bodies: appended to segment files beside the database, read back by
//! their place. A body is written once, by one `write`, where in SQLite it went to the WAL, was
//! copied into the database by the checkpoint, spread over overflow pages, and read back
//! through them: about a third of `mpconnect all`'s CPU under load.
//!
//! A segment is never appended to after a restart, and is removed once no message refers to
//! it; one that only a few long-parked messages still hold is compacted (they move to the
//! active segment) so the disk holds about what the queues hold. Only the writer thread uses
//! it, in the same transaction as the rows that point into it: a row is committed only after
//! its body is written (and, with `sync = full`, synced).

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::QueueError;

/// A segment is rolled past this size.
pub(super) const SEGMENT_BYTES: u64 = 32 << 20;

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
    /// Bytes in every segment on disk.
    total: u64,
    /// Past this many bytes on disk, appends are refused (the queue is full).
    cap: Option<u64>,
    readers: HashMap<i64, File>,
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

impl BodyLog {
    /// Opens the segments in `dir` and starts a new active one after them.
    pub fn open(dir: &Path, full_sync: bool, segment_bytes: u64) -> Result<Self, QueueError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("creating the segments", e))?;
        let mut last = 0;
        let mut total = 0;
        for (id, size) in list(dir)? {
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
            total,
            cap: None,
            readers: HashMap::new(),
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

    /// Closes the active segment (a new one takes the next append), so that it can be
    /// collected.
    pub fn close_active(&mut self) -> Result<(), QueueError> {
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
        let places = self.append_all(&[(body, attributes)], capped)?;
        places.into_iter().next().ok_or_else(full)
    }

    /// Appends several bodies with their attributes in one write (a send's messages).
    pub fn append_all(
        &mut self,
        records: &[(&[u8], &[u8])],
        capped: bool,
    ) -> Result<Vec<Place>, QueueError> {
        let len: u64 = records
            .iter()
            .map(|(body, attributes)| (body.len() + attributes.len()) as u64)
            .sum();
        if capped && self.cap.is_some_and(|cap| self.total + len > cap) {
            return Err(full());
        }
        if self.active_len >= self.segment_bytes {
            self.roll()?;
        }
        let mut places = Vec::with_capacity(records.len());
        // The parts are handed to the kernel as they are (one `writev`), not first copied
        // into one buffer.
        let mut parts = Vec::with_capacity(records.len() * 2);
        let mut offset = self.active_len;
        for (body, attributes) in records {
            places.push(Place {
                segment: self.active_id,
                offset,
                body_len: body.len() as u64,
                attributes_len: attributes.len() as u64,
            });
            offset += (body.len() + attributes.len()) as u64;
            parts.push(IoSlice::new(body));
            parts.push(IoSlice::new(attributes));
        }
        if let Err(e) = write_all_vectored(&mut self.active, &mut parts) {
            // A partial write leaves the segment's end unknown: the next append starts a new
            // one.
            self.active_len = self.segment_bytes;
            self.total += len;
            return Err(io_error("writing a body", e));
        }
        self.active_len += len;
        self.total += len;
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
        let mut record = vec![0; (place.body_len + place.attributes_len) as usize];
        file.read_exact_at(&mut record, place.offset)
            .map_err(|e| io_error("reading a body", e))?;
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
        self.active = create(&self.dir, next)?;
        self.active_id = next;
        self.active_len = 0;
        Ok(())
    }

    /// Whether more than half the size cap is on disk: then a segment is compacted while most
    /// of it is still live, since the few parked messages that pin mostly-acknowledged
    /// segments would otherwise keep the queue refusing sends long after it drained.
    pub fn near_cap(&self) -> bool {
        self.cap
            .is_some_and(|cap| self.total.saturating_mul(2) > cap)
    }

    /// The segments on disk but the active one, with their sizes.
    pub fn closed_segments(&self) -> Result<Vec<(i64, u64)>, QueueError> {
        Ok(list(&self.dir)?
            .into_iter()
            .filter(|(id, _)| *id != self.active_id)
            .collect())
    }

    /// Deletes a segment no committed row points into.
    pub fn remove(&mut self, segment: i64) {
        self.readers.remove(&segment);
        let path = segment_path(&self.dir, segment);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
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

/// Every segment in `dir`: its id and size.
fn list(dir: &Path) -> Result<Vec<(i64, u64)>, QueueError> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("listing the segments", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
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
