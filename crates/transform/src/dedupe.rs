//! Drops repeats inside a window sized by time, which survives a restart, so a redelivered
//! message (a crash, a stale receipt, a sender's retry) does not reach a destination twice.
//!
//! Two tiers, each remembered for the same `window` of time:
//! - **batch keys** (the queue message, the sender's `source_request_id`, the S3 batch id): a
//!   few per batch, so even at full speed the tier covers far more than the visibility timeout a
//!   redelivery waits out (at 2M keys: ~110 s at 9,000 batches/s, the benchmark's full speed);
//! - **event keys** (`source_message_id`): one per event, ten times as many, so the tier holds
//!   fewer of them and at full speed covers less time; it catches single events re-sent in a
//!   new batch, which is rarer.
//!
//! Each tier is a run of slices: the newest takes new keys in a hash set; when it is sealed its
//! keys are merged into one sorted run of every sealed slice's keys (17 bytes a key, with an
//! index of where each run of leading bits starts). A fresh key, the common case, is then
//! looked for once, not once per slice: per slice, at about nine slices, it cost a tenth of the
//! pipeline's CPU at full speed, a few cache misses each. A slice goes whole when its newest key
//! is past the window, or when the tier holds more than its cap (oldest first: memory stays
//! bounded, and the window's real reach is published as
//! `mpconnect_transform_dedupe_window_seconds`).
//!
//! With a directory, every key is also appended to its slice's file before the message it marks
//! is acknowledged, and the files still inside the window are read back at start: a `kill -9`
//! forgets nothing that was written (the page cache holds it; a power loss may lose the last
//! writes, which then costs duplicates, never data). A slice's file goes with the slice.
//!
//! Per process: with several transform replicas a repeat that lands on another one gets
//! through, and delivery stays at-least-once.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// A repeat's identity: 128 bits of XXH3 over the key's parts. Fixed-size keys keep the window
/// small and cheap to look up; at 128 bits two different keys meeting inside one window is not
/// a practical concern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key([u64; 2]);

/// A key is already a uniform hash: it hashes as its own bits, not through SipHash again.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0] ^ self.0[1]);
    }
}

/// Passes a [`Key`]'s bits through (anything else is folded in, FNV-style).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A set of keys, hashed as themselves.
pub type KeySet = HashSet<Key, BuildHasherDefault<KeyHasher>>;

/// Every sealed slice's keys in one sorted run, each tagged with (the low byte of) its slice's
/// number, with where each run of the top `bits` bits starts: a lookup reads the index and a
/// few neighbouring keys once, instead of once per slice. A key is in the run once, under the
/// newest slice that holds it; keys of dropped slices stay until the next merge, and a lookup
/// skips them by their tag.
#[derive(Default)]
struct SortedKeys {
    keys: Vec<Key>,
    tags: Vec<u8>,
    /// `starts[p]`: the first key whose top bits are `p` or more; one entry past the last.
    starts: Vec<u32>,
    bits: u32,
}

impl SortedKeys {
    /// Leaves out the keys `keep` refuses and merges `added` in under `tag` (a key in both
    /// keeps the new tag: that slice outlives the older one). In place, from the back: a new
    /// run for every merge cost the kernel a fresh, zeroed page for every 4 KB of it, and held
    /// two runs at once.
    fn merge(&mut self, mut added: Vec<Key>, tag: u8, keep: impl Fn(u8) -> bool) {
        added.sort_unstable();
        added.dedup();
        let mut live = 0;
        for at in 0..self.keys.len() {
            let (key, key_tag) = (self.keys[at], self.tags[at]);
            if keep(key_tag) {
                self.keys[live] = key;
                self.tags[live] = key_tag;
                live += 1;
            }
        }
        let total = live + added.len();
        self.keys.resize(total, Key([0, 0]));
        self.tags.resize(total, 0);
        // `old` old keys and `new` added keys are still to place; the run is written down
        // from `out`.
        let (mut old, mut new, mut out) = (live, added.len(), total);
        while new > 0 {
            let key = added[new - 1];
            match old.checked_sub(1).map(|o| self.keys[o].cmp(&key)) {
                Some(std::cmp::Ordering::Greater) => {
                    out -= 1;
                    self.keys[out] = self.keys[old - 1];
                    self.tags[out] = self.tags[old - 1];
                    old -= 1;
                }
                Some(std::cmp::Ordering::Equal) => old -= 1,
                _ => {
                    out -= 1;
                    self.keys[out] = key;
                    self.tags[out] = tag;
                    new -= 1;
                }
            }
        }
        // Old keys left below `old` are in place; a key found in both left a gap between
        // them and what was written.
        if out > old {
            self.keys.copy_within(out..total, old);
            self.tags.copy_within(out..total, old);
            let len = total - (out - old);
            self.keys.truncate(len);
            self.tags.truncate(len);
        }
        self.index();
    }

    /// Rebuilds where each run of leading bits starts (in the index's own room).
    fn index(&mut self) {
        // About four keys a run: the index costs a quarter of the keys' 16 bytes at most.
        let bits = (self.keys.len() / 4).max(1).ilog2().min(24);
        self.starts.clear();
        self.starts.reserve((1 << bits) + 1);
        let mut at = 0;
        for prefix in 0..(1u64 << bits) {
            while at < self.keys.len() && Self::prefix(&self.keys[at], bits) < prefix {
                at += 1;
            }
            self.starts.push(at as u32);
        }
        self.starts.push(self.keys.len() as u32);
        self.bits = bits;
    }

    fn prefix(key: &Key, bits: u32) -> u64 {
        if bits == 0 {
            0
        } else {
            key.0[0] >> (64 - bits)
        }
    }

    /// The tag `key` is held under, if it is in the run.
    #[cfg(test)]
    fn tag_of(&self, key: &Key) -> Option<u8> {
        self.tag_in(self.run_of(key), key)
    }

    /// Where the keys that share `key`'s leading bits are (empty when the index has none).
    fn run_of(&self, key: &Key) -> Range<usize> {
        let p = Self::prefix(key, self.bits) as usize;
        match (self.starts.get(p), self.starts.get(p + 1)) {
            (Some(&from), Some(&to)) => from as usize..to as usize,
            _ => 0..0,
        }
    }

    /// The tag `key` is held under, looked for in `run` ([`SortedKeys::run_of`]).
    fn tag_in(&self, run: Range<usize>, key: &Key) -> Option<u8> {
        let from = run.start;
        let at = self.keys.get(run)?.binary_search(key).ok()?;
        self.tags.get(from + at).copied()
    }
}

impl Key {
    /// The key of `parts`, each ended by a separator so that ("ab", "c") ≠ ("a", "bc").
    pub fn of(parts: &[&str]) -> Key {
        // Hashed in one call over the parts laid end to end: the same digest as feeding them
        // to a streaming hasher (so keys already on disk still match), without its 256-byte
        // buffer copied through for every short part.
        // Laid out on the stack; a key over 256 bytes (rare: ids are short) on the heap.
        let len: usize = parts.iter().map(|p| p.len() + 1).sum();
        let (mut on_stack, mut on_heap) = ([0u8; 256], Vec::new());
        let joined: &mut [u8] = match on_stack.get_mut(..len) {
            Some(room) => room,
            None => {
                on_heap.resize(len, 0);
                &mut on_heap
            }
        };
        let mut at = 0;
        for part in parts {
            joined[at..at + part.len()].copy_from_slice(part.as_bytes());
            joined[at + part.len()] = 0x1f;
            at += part.len() + 1;
        }
        let h = xxhash_rust::xxh3::xxh3_128(joined);
        Key([h as u64, (h >> 64) as u64])
    }

    fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.0[0].to_le_bytes());
        out[8..].copy_from_slice(&self.0[1].to_le_bytes());
        out
    }

    fn from_bytes(bytes: &[u8; 16]) -> Key {
        let half = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        Key([half(&bytes[..8]), half(&bytes[8..])])
    }
}

#[derive(Debug, Clone)]
pub struct DedupeSettings {
    /// How long a key is remembered.
    pub window: Duration,
    /// Most batch keys held (about 18 bytes each with the sorted run's index; a merge holds
    /// the old run and the new one for a moment).
    pub max_batch_keys: usize,
    /// Most event keys held.
    pub max_event_keys: usize,
    /// Where the window is kept across restarts; `None`: in memory only.
    pub dir: Option<PathBuf>,
}

impl Default for DedupeSettings {
    fn default() -> Self {
        DedupeSettings {
            window: Duration::from_secs(600),
            max_batch_keys: 2_000_000,
            max_event_keys: 500_000,
            dir: None,
        }
    }
}

/// Which tier a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Batch,
    Event,
}

impl Tier {
    fn label(self) -> &'static str {
        match self {
            Tier::Batch => "batch",
            Tier::Event => "event",
        }
    }
}

/// Slices per window: a key is remembered for the window, and at most an eighth longer.
const SLICES: u64 = 8;
/// A journal record: the time it was written (ms since the epoch) and the key.
const RECORD: usize = 24;

pub struct DedupeWindow {
    batches: Mutex<Slices>,
    events: Mutex<Slices>,
}

impl DedupeWindow {
    /// The window, with what its directory still holds inside the window read back. A
    /// directory that cannot be used is logged and the window runs in memory: repeats after a
    /// restart then get through, but nothing is held up.
    pub fn new(settings: DedupeSettings) -> Self {
        let now = runtime::now_ms().max(0) as u64;
        let window_ms = (settings.window.as_millis() as u64).max(SLICES);
        let open = |tier: Tier, cap: usize| {
            let dir = settings.dir.as_ref().map(|d| d.join(tier.label()));
            let slices = Slices::open(tier, cap.max(SLICES as usize), window_ms, dir, now);
            Mutex::new(slices)
        };
        DedupeWindow {
            batches: open(Tier::Batch, settings.max_batch_keys),
            events: open(Tier::Event, settings.max_event_keys),
        }
    }

    fn tier(&self, tier: Tier) -> std::sync::MutexGuard<'_, Slices> {
        match tier {
            Tier::Batch => &self.batches,
            Tier::Event => &self.events,
        }
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the tier holds each of `keys`, looked up together under one lock (a batch's
    /// events): each lookup's cache misses overlap the others', where one lookup at a time,
    /// each between a lock and an unlock, waited for every miss in turn.
    pub fn contains_each(&self, tier: Tier, keys: &[Key]) -> Vec<bool> {
        if keys.is_empty() {
            return Vec::new();
        }
        self.tier(tier).contains_each(keys)
    }

    /// Remembers `keys` (and, with a directory, writes them) before the caller acknowledges
    /// what they mark.
    pub fn insert_all<'a>(&self, tier: Tier, keys: impl IntoIterator<Item = &'a Key>) {
        let now = runtime::now_ms().max(0) as u64;
        self.tier(tier).insert_all(keys, now);
    }
}

/// One slice of a tier: its keys are in the open set while it is the newest, then in the
/// tier's sorted run.
struct Slice {
    open: KeySet,
    len: usize,
    oldest_ms: u64,
    newest_ms: u64,
    seq: u64,
}

impl Slice {
    fn new(seq: u64, now: u64) -> Self {
        Slice {
            open: KeySet::default(),
            len: 0,
            oldest_ms: now,
            newest_ms: now,
            seq,
        }
    }

    /// The low byte of its number: what its keys are tagged with in the sorted run.
    fn tag(&self) -> u8 {
        self.seq as u8
    }
}

/// Most slices a tier holds. Tags are a byte: the live slices' numbers, consecutive, must span
/// fewer than 256 (a tier holds about nine: the window's eight and the newest).
const MAX_SLICES: usize = 128;

struct Slices {
    tier: Tier,
    /// Oldest first; the last one takes new keys.
    slices: VecDeque<Slice>,
    /// The sealed slices' keys.
    sealed: SortedKeys,
    total: usize,
    cap: usize,
    window_ms: u64,
    journal: Option<Journal>,
    /// When the cap last cut the window short (ms), so the warning is not repeated every slice.
    warned_ms: u64,
}

struct Journal {
    dir: PathBuf,
    /// The newest slice's file, opened for appending.
    file: Option<std::fs::File>,
}

impl Journal {
    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.keys"))
    }
}

impl Slices {
    fn open(tier: Tier, cap: usize, window_ms: u64, dir: Option<PathBuf>, now: u64) -> Self {
        let mut slices = Slices {
            tier,
            slices: VecDeque::new(),
            sealed: SortedKeys::default(),
            total: 0,
            cap,
            window_ms,
            journal: None,
            warned_ms: 0,
        };
        if let Some(dir) = dir {
            match read_journal(&dir, now.saturating_sub(window_ms)) {
                Ok(found) => {
                    for (slice, keys) in found {
                        slices.total += slice.len;
                        slices.slices.push_back(slice);
                        slices.seal_keys(keys);
                    }
                    slices.journal = Some(Journal { dir, file: None });
                }
                Err(e) => tracing::warn!(
                    dir = %dir.display(), error = %e,
                    "cannot read the dedupe window's directory; the window is kept in memory only"
                ),
            }
        }
        if slices.total > 0 {
            tracing::info!(
                tier = tier.label(),
                keys = slices.total,
                "dedupe window read back from disk"
            );
        }
        slices.start_slice(now);
        slices.expire(now);
        slices
    }

    fn slice_keys(&self) -> usize {
        (self.cap / SLICES as usize).max(1)
    }

    /// Whether the tier holds `key`: in the open slice, or in `run` (the sealed run's part
    /// for it, [`SortedKeys::run_of`]) under a live slice's tag.
    fn holds(&self, key: &Key, run: Range<usize>) -> bool {
        self.slices.back().is_some_and(|s| s.open.contains(key))
            || self
                .sealed
                .tag_in(run, key)
                .is_some_and(|tag| self.is_live(tag))
    }

    /// One key at a time: the tests' reference for [`Slices::contains_each`].
    #[cfg(test)]
    fn contains(&self, key: &Key) -> bool {
        self.holds(key, self.sealed.run_of(key))
    }

    fn contains_each(&self, keys: &[Key]) -> Vec<bool> {
        // Each pass's reads do not wait on another key's: first where each key's run starts,
        // then each run's first keys (read once for all, so that their cache misses overlap
        // instead of coming one search at a time), then the searches and the open set.
        let runs: Vec<Range<usize>> = keys.iter().map(|k| self.sealed.run_of(k)).collect();
        let firsts = runs.iter().fold(0u64, |acc, run| {
            acc ^ self.sealed.keys.get(run.start).map_or(0, |k| k.0[0])
        });
        std::hint::black_box(firsts);
        keys.iter()
            .zip(runs)
            .map(|(key, run)| self.holds(key, run))
            .collect()
    }

    /// Whether `tag` is a live slice's: their numbers are consecutive from the oldest.
    fn is_live(&self, tag: u8) -> bool {
        let (Some(oldest), Some(newest)) = (self.slices.front(), self.slices.back()) else {
            return false;
        };
        let span = newest.seq.saturating_sub(oldest.seq);
        u64::from(tag.wrapping_sub(oldest.tag())) <= span
    }

    /// Merges a sealed slice's keys (the newest live slice's but one) into the sorted run,
    /// leaving out the keys of slices dropped since the last merge.
    fn seal_keys(&mut self, keys: Vec<Key>) {
        let Some(tag) = self.slices.back().map(Slice::tag) else {
            return;
        };
        let mut sealed = std::mem::take(&mut self.sealed);
        sealed.merge(keys, tag, |t| self.is_live(t));
        self.sealed = sealed;
    }

    fn insert_all<'a>(&mut self, keys: impl IntoIterator<Item = &'a Key>, now: u64) {
        self.expire(now);
        let mut record = Vec::new();
        for &key in keys {
            if self
                .slices
                .back()
                .is_some_and(|s| s.len >= self.slice_keys())
            {
                self.write(&record);
                record.clear();
                self.start_slice(now);
                self.expire(now);
            }
            let Some(newest) = self.slices.back_mut() else {
                continue;
            };
            if newest.len == 0 {
                newest.oldest_ms = now;
            }
            if newest.open.insert(key) {
                newest.len += 1;
                newest.newest_ms = now;
                self.total += 1;
                if self.journal.is_some() {
                    record.extend_from_slice(&now.to_le_bytes());
                    record.extend_from_slice(&key.to_bytes());
                }
            }
        }
        self.write(&record);
        self.publish(now);
    }

    /// Appends to the newest slice's file: one write per call, before the caller acks.
    fn write(&mut self, record: &[u8]) {
        if record.is_empty() {
            return;
        }
        let Some(journal) = &mut self.journal else {
            return;
        };
        let Some(file) = &mut journal.file else {
            return;
        };
        if let Err(e) = file.write_all(record) {
            tracing::warn!(error = %e, tier = self.tier.label(), "cannot write the dedupe window; a restart may repeat these batches");
            metrics::counter!("mpconnect_transform_dedupe_write_errors_total").increment(1);
        }
    }

    /// Seals the newest slice and starts another (with its file), numbered after it.
    fn start_slice(&mut self, now: u64) {
        let seq = self.slices.back().map_or(0, |s| s.seq + 1);
        let mut next = Slice::new(seq, now);
        if let Some(newest) = self.slices.back_mut() {
            let keys: Vec<Key> = newest.open.drain().collect();
            // The emptied set keeps its room for the next slice: grown from nothing again, each
            // slice rehashed ~17 times and took fresh (kernel-zeroed) pages for it.
            next.open = std::mem::take(&mut newest.open);
            self.seal_keys(keys);
        }
        self.slices.push_back(next);
        if let Some(journal) = &mut self.journal {
            let path = journal.path(seq);
            journal.file = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(file) => Some(file),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open a dedupe window file; this slice is kept in memory only");
                    None
                }
            };
        }
    }

    /// Drops slices past the window, the oldest while over the cap, and starts a new slice
    /// when the newest has been open an eighth of the window.
    fn expire(&mut self, now: u64) {
        let slice_ms = self.window_ms / SLICES;
        if self
            .slices
            .back()
            .is_some_and(|s| s.len > 0 && now.saturating_sub(s.oldest_ms) >= slice_ms)
        {
            self.start_slice(now);
        }
        while self.slices.len() > 1 {
            let Some(oldest) = self.slices.front() else {
                break;
            };
            let past_window = now.saturating_sub(oldest.newest_ms) >= self.window_ms;
            let over_cap = self.total > self.cap || self.slices.len() > MAX_SLICES;
            if !past_window && !over_cap {
                break;
            }
            if over_cap && !past_window && now.saturating_sub(self.warned_ms) >= 60_000 {
                self.warned_ms = now;
                tracing::warn!(
                    tier = self.tier.label(),
                    keys = self.cap,
                    reach_secs = now.saturating_sub(oldest.newest_ms) / 1000,
                    window_secs = self.window_ms / 1000,
                    "the dedupe window is full before its time: it covers less than its window; raise its key cap (memory) or shorten the window"
                );
            }
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        let Some(oldest) = self.slices.pop_front() else {
            return;
        };
        self.total -= oldest.len;
        if let Some(journal) = &self.journal {
            let path = journal.path(oldest.seq);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an expired dedupe window file");
            }
        }
    }

    fn reach(&self, now: u64) -> u64 {
        self.slices
            .iter()
            .find(|s| s.len > 0)
            .map_or(0, |s| now.saturating_sub(s.oldest_ms))
    }

    fn publish(&self, now: u64) {
        let tier = self.tier.label();
        metrics::gauge!("mpconnect_transform_dedupe_keys", "tier" => tier).set(self.total as f64);
        metrics::gauge!("mpconnect_transform_dedupe_window_seconds", "tier" => tier)
            .set(self.reach(now) as f64 / 1000.0);
    }
}

/// The slices a directory holds, oldest first, with their keys, without keys written before
/// `since` (ms). A file's torn last record (a crash mid-write) is left out; empty and expired
/// files are removed.
fn read_journal(dir: &Path, since: u64) -> std::io::Result<Vec<(Slice, Vec<Key>)>> {
    std::fs::create_dir_all(dir)?;
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".keys"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            files.push((seq, path));
        }
    }
    files.sort_unstable();
    let mut slices = Vec::new();
    for (seq, path) in files {
        let bytes = std::fs::read(&path)?;
        let mut slice = Slice::new(seq, 0);
        slice.oldest_ms = u64::MAX;
        let mut keys = Vec::with_capacity(bytes.len() / RECORD);
        for record in bytes.chunks_exact(RECORD) {
            let (at, key) = record.split_at(8);
            let at = u64::from_le_bytes(at.try_into().unwrap_or([0; 8]));
            let Ok(key) = <&[u8; 16]>::try_from(key) else {
                continue;
            };
            if at < since {
                continue;
            }
            keys.push(Key::from_bytes(key));
            slice.oldest_ms = slice.oldest_ms.min(at);
            slice.newest_ms = slice.newest_ms.max(at);
        }
        if keys.is_empty() {
            std::fs::remove_file(&path)?;
            continue;
        }
        slice.len = keys.len();
        slices.push((slice, keys));
    }
    Ok(slices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sorted_run_finds_exactly_its_keys_at_every_size() {
        for n in [0usize, 1, 3, 4, 5, 17, 1000, 70_000] {
            let keys: Vec<Key> = (0..n).map(|i| Key::of(&["in", &i.to_string()])).collect();
            let mut with_repeats = keys.clone();
            with_repeats.extend(keys.iter().take(10).copied());
            let mut sorted = SortedKeys::default();
            sorted.merge(with_repeats, 7, |_| true);
            assert_eq!(sorted.keys.len(), n, "repeats kept once");
            assert!(
                keys.iter().all(|k| sorted.tag_of(k) == Some(7)),
                "{n}: a key is missing"
            );
            let others =
                (0..1000).filter(|i| sorted.tag_of(&Key::of(&["out", &i.to_string()])).is_some());
            assert_eq!(others.count(), 0, "{n}: a key never added is found");
        }
        // Keys at the edges of the index: all bits clear and all bits set.
        let mut edges = SortedKeys::default();
        edges.merge(vec![Key([0, 0]), Key([u64::MAX, u64::MAX])], 0, |_| true);
        assert!(edges.tag_of(&Key([0, 0])).is_some());
        assert!(edges.tag_of(&Key([u64::MAX, u64::MAX])).is_some());
        assert!(edges.tag_of(&Key([u64::MAX, 0])).is_none());
    }

    #[test]
    fn a_merge_keeps_the_newest_tag_and_leaves_out_dropped_slices() {
        let old = keys(0..100);
        let mut run = SortedKeys::default();
        run.merge(old.clone(), 1, |_| true);
        run.merge(keys(50..150), 2, |_| true);
        assert_eq!(run.keys.len(), 150, "a key in both is held once");
        assert_eq!(run.tag_of(&old[10]), Some(1));
        assert_eq!(run.tag_of(&old[60]), Some(2), "the newer slice's tag wins");
        run.merge(keys(150..160), 3, |tag| tag != 1);
        assert_eq!(run.tag_of(&old[10]), None, "slice 1 was dropped");
        assert_eq!(run.tag_of(&old[60]), Some(2));
        assert_eq!(run.keys.len(), 110);
    }

    /// Merged in place, round after round, the run holds what a plain map of key to newest
    /// tag holds: sorted, each key once, under its newest slice, the dropped slices' left out.
    #[test]
    fn merges_in_place_agree_with_a_map_of_keys_to_their_newest_tag() {
        let mut run = SortedKeys::default();
        let mut model = std::collections::BTreeMap::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..60u64 {
            let tag = round as u8;
            // Some keys new, some from earlier rounds (a key seen again), some repeated
            // within the round.
            let added: Vec<Key> = (0..(next() % 300))
                .map(|_| Key::of(&["k", &(next() % 4_000).to_string()]))
                .collect();
            // Slices live for four rounds.
            let keep = |t: u8| tag.wrapping_sub(t) < 4;
            model.retain(|_, t: &mut u8| keep(*t));
            for key in &added {
                model.insert(*key, tag);
            }
            run.merge(added, tag, keep);
            let expected: Vec<(Key, u8)> = model.iter().map(|(k, t)| (*k, *t)).collect();
            let held: Vec<(Key, u8)> = run.keys.iter().copied().zip(run.tags.clone()).collect();
            assert_eq!(held, expected, "round {round}");
            assert!(expected.iter().all(|(k, t)| run.tag_of(k) == Some(*t)));
        }
    }

    /// Looked up together, keys get the answers they get one by one: in the open slice, in
    /// the sealed run, in a slice dropped over the cap, never seen.
    #[test]
    fn keys_looked_up_together_are_answered_as_one_by_one() {
        let mut s = Slices::open(Tier::Event, 16, 3_600_000, None, 1_000);
        let all = keys(0..40);
        for chunk in all[..30].chunks(3) {
            s.insert_all(chunk, 1_000);
        }
        let one_by_one: Vec<bool> = all.iter().map(|k| s.contains(k)).collect();
        assert!(
            one_by_one[29] && !one_by_one[0] && !one_by_one[35],
            "{one_by_one:?}"
        );
        assert_eq!(s.contains_each(&all), one_by_one);
        let mixed: Vec<Key> = all.iter().rev().step_by(3).copied().collect();
        let expected: Vec<bool> = mixed.iter().map(|k| s.contains(k)).collect();
        assert_eq!(s.contains_each(&mixed), expected);
        let window = DedupeWindow::new(DedupeSettings::default());
        window.insert_all(Tier::Event, &all[..5]);
        assert_eq!(
            window.contains_each(Tier::Event, &all[3..7]),
            [true, true, false, false]
        );
        assert!(
            window
                .contains_each(Tier::Batch, &all[3..7])
                .iter()
                .all(|&b| !b)
        );
        assert!(window.contains_each(Tier::Event, &[]).is_empty());
    }

    #[test]
    fn a_key_seen_again_outlives_its_first_slice() {
        // Slices of 2 keys; the first key comes back in a later slice, then the first slice
        // goes over the cap: the key is still remembered, by its later slice.
        let mut s = Slices::open(Tier::Batch, 16, 3_600_000, None, 1_000);
        let all = keys(0..22);
        for chunk in all[..16].chunks(2) {
            s.insert_all(chunk, 1_000);
        }
        s.insert_all(&all[..1], 1_000);
        for chunk in all[16..].chunks(2) {
            s.insert_all(chunk, 1_000);
        }
        assert!(!s.contains(&all[1]), "over the cap, the first slice goes");
        assert!(s.contains(&all[0]), "seen again: held by the later slice");
        assert!(s.slices.len() <= 10, "{} slices", s.slices.len());
    }

    fn keys(range: std::ops::Range<u32>) -> Vec<Key> {
        range.map(|i| Key::of(&[&i.to_string()])).collect()
    }

    #[test]
    fn remembers_within_the_cap_and_drops_the_oldest_past_it() {
        let mut s = Slices::open(Tier::Batch, 16, 3_600_000, None, 1_000);
        let all = keys(0..40);
        // Slices of 2 keys: the first ones go once more than 16 are held.
        for chunk in all.chunks(2) {
            s.insert_all(chunk, 1_000);
        }
        assert!(s.total <= 16 + 2, "held {}", s.total);
        assert!(!s.contains(&all[0]), "over the cap, the oldest go");
        assert!(all[30..].iter().all(|k| s.contains(k)));
    }

    #[test]
    fn forgets_what_is_past_the_window() {
        let mut s = Slices::open(Tier::Event, 1_000, 8_000, None, 0);
        let all = keys(0..4);
        s.insert_all(&all[..2], 1_000);
        s.insert_all(&all[2..], 5_000);
        s.expire(8_500);
        assert!(all.iter().all(|k| s.contains(k)), "still inside the window");
        s.expire(9_500);
        assert!(!s.contains(&all[0]), "the first slice is past the window");
        assert!(s.contains(&all[3]));
        s.expire(14_000);
        assert!(!s.contains(&all[3]));
        assert_eq!(s.total, 0);
    }

    #[test]
    fn survives_a_restart_and_leaves_out_what_expired_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let all = keys(0..10);
        {
            let mut s = Slices::open(Tier::Batch, 1_000, 60_000, Some(dir.path().into()), 1_000);
            s.insert_all(&all[..5], 1_000);
            s.expire(9_000); // a new slice for the next keys
            s.insert_all(&all[5..], 9_000);
            // Dropped without any shutdown: what was written is what a kill -9 leaves.
        }
        let s = Slices::open(Tier::Batch, 1_000, 60_000, Some(dir.path().into()), 20_000);
        assert!(all.iter().all(|k| s.contains(k)), "every key read back");
        assert!(!s.contains(&Key::of(&["never"])));
        let later = Slices::open(Tier::Batch, 1_000, 60_000, Some(dir.path().into()), 62_000);
        assert!(
            !later.contains(&all[0]),
            "written at 1 s: past the window at 62 s"
        );
        assert!(later.contains(&all[9]));
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(
            files <= 3,
            "the expired slice's file is gone ({files} files)"
        );
    }

    #[test]
    fn a_torn_last_record_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let all = keys(0..3);
        {
            let mut s = Slices::open(Tier::Batch, 1_000, 60_000, Some(dir.path().into()), 0);
            s.insert_all(&all, 1_000);
        }
        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::metadata(p).unwrap().len() > 0)
            .unwrap();
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let s = Slices::open(Tier::Batch, 1_000, 60_000, Some(dir.path().into()), 2_000);
        assert_eq!(s.total, 2);
    }

    #[test]
    fn dropped_slices_take_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Slices::open(Tier::Batch, 16, 3_600_000, Some(dir.path().into()), 0);
        for chunk in keys(0..200).chunks(2) {
            s.insert_all(chunk, 1_000);
        }
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 10, "{files} files for at most 9 slices");
    }

    #[test]
    fn parts_are_kept_apart() {
        assert_ne!(Key::of(&["ab", "c"]), Key::of(&["a", "bc"]));
        assert_eq!(Key::of(&["a", "b"]), Key::of(&["a", "b"]));
    }

    /// Keys written by earlier versions (a streaming hasher fed part by part) must still be
    /// found after an upgrade: the one-call hash gives the same bits, short and long.
    #[test]
    fn keys_are_the_streamed_digest_of_their_parts() {
        let streamed = |parts: &[&str]| {
            let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
            for part in parts {
                hasher.update(part.as_bytes());
                hasher.update(&[0x1f]);
            }
            let h = hasher.digest128();
            Key([h as u64, (h >> 64) as u64])
        };
        let long = "x".repeat(300);
        let just_fits = "y".repeat(255);
        for parts in [
            vec![],
            vec![""],
            vec![
                "conn",
                "dest",
                "e",
                "ios",
                "7b6e2f0c-3f0e-4c3a-9d7e-0d1c2b3a4f5e",
            ],
            vec![just_fits.as_str()],
            vec![just_fits.as_str(), ""],
            vec!["conn", long.as_str()],
        ] {
            assert_eq!(Key::of(&parts), streamed(&parts), "{parts:?}");
        }
    }
}
