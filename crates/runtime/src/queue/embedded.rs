//! The embedded queue: durable on local disk, for `mpconnect all` on one box.
//!
//! Built on SQLite (rusqlite with the bundled library) rather than a hand-made file format:
//! - each send, receive and ack is one ACID transaction, and in WAL mode a committed
//!   transaction is in the log file before `COMMIT` returns, so it survives a `kill -9`;
//! - one writer at a time is exactly what one process owning its data directory needs;
//! - it is the most tested embedded store there is, and an operator can open the file with
//!   `sqlite3` to look at a stuck message, which a key-value store such as redb cannot offer.
//!
//! Many queues (ingest, retry queues, dead-letter queues) share one database file. The rows
//! hold each message's state and the place of its body; the bodies themselves are appended to
//! segment files beside the database ([`body_log`](super::body_log)), written once and read
//! once, never copied through the WAL and the checkpoint.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

use super::body_log::{self, BodyLog, Place, Record};
use super::{Attributes, Depth, Message, Queue, QueueError, Receipt, ReceiveOptions, Received};
use crate::now_ms;

/// How hard a commit presses the data to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EmbeddedSync {
    /// Survives a crash or `kill -9` of the process (the default). A power loss may lose the
    /// last moments: the OS has the data, the disk may not yet.
    #[default]
    Normal,
    /// Also survives a power loss: every commit waits for the disk (far slower).
    Full,
}

/// One SQLite file holding any number of queues.
#[derive(Clone)]
pub struct EmbeddedDb {
    inner: Arc<Inner>,
}

struct Inner {
    /// Jobs waiting for the next group commit.
    pending: Mutex<Vec<Job>>,
    /// The connection and the segments, held by whichever caller is running a group commit.
    writer: tokio::sync::Mutex<Leader>,
    /// Each queue's wake-up for its long-polling receivers, so they need not spin.
    arrivals: Mutex<std::collections::HashMap<Arc<str>, Arc<Notify>>>,
}

impl Inner {
    /// The wake-up of the queue `name`, shared by every handle on it.
    fn arrivals_of(&self, name: &str) -> Arc<Notify> {
        let mut all = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(name.into()).or_default().clone()
    }
}

/// The jobs waiting in `pending`, at most [`GROUP_COMMIT_MAX`] of them, oldest first.
fn take_pending(pending: &Mutex<Vec<Job>>) -> Vec<Job> {
    let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
    let take = pending.len().min(GROUP_COMMIT_MAX);
    pending.drain(..take).collect()
}

impl Drop for Inner {
    /// What is still waiting (callers that gave up: an ack, a nack) runs before the database
    /// closes, as it would have had they stayed.
    fn drop(&mut self) {
        let leader = self.writer.get_mut();
        while !self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            leader.lead(&self.pending);
        }
    }
}

/// What the group commit owns: the connection and the bodies' segments.
struct Writer {
    conn: Connection,
    log: BodyLog,
}

/// Work for a group commit: runs inside the open transaction and returns what to do once the
/// transaction's fate is known.
type Job = Box<dyn FnOnce(&mut Writer) -> Finish + Send>;
type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;

/// How often the checkpointer copies the WAL into the database, and looks for housekeeping
/// that no caller came to do.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies the WAL into the database every so often, without blocking the writer (PASSIVE),
/// until the database is dropped. While no caller comes, it also runs the jobs left waiting
/// (a caller that gave up before its turn) and the segments' collection when it is due.
fn checkpointer(conn: Connection, alive: std::sync::Weak<Inner>) {
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        let Some(inner) = alive.upgrade() else { return };
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "embedded queue: checkpoint failed");
        }
        // `try_lock`: a caller holding the writer does both itself.
        if let Ok(mut leader) = inner.writer.try_lock() {
            leader.lead(&inner.pending);
        }
    }
}

/// Most jobs one transaction takes; more wait for the next.
const GROUP_COMMIT_MAX: usize = 64;

/// How often segments that no message needs are removed (and nearly empty ones compacted).
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// How soon after the active segment rolls the segments freed since are kept as spares. At
/// full load a segment rolls several times a second; collected once a second, most freed
/// segments found the spares full and were deleted, and most rolls started a new file (page
/// cache and blocks allocated for every 4 KB, then given back by the unlink: ~5% of the CPU).
const COLLECT_AFTER_ROLL: Duration = Duration::from_millis(50);

/// The group commit, run by whichever caller holds the writer (no thread of its own: handing
/// every job to a writer thread and its answer back cost two thread wake-ups a job, ~5% of
/// the CPU under load, and the scheduler's switches besides). The leader takes every job
/// waiting, runs each in a savepoint of one transaction, commits once, and only then answers
/// each. Concurrent senders, receivers and ackers share a commit instead of queueing for one
/// each: the jobs that arrive while one commit runs make up the next. Nobody hears "done"
/// before the data is committed.
struct Leader {
    w: Writer,
    /// The last collection pass of either kind, and the last periodic one: the passes after
    /// rolls must not put the periodic one off.
    collected: Instant,
    collected_thoroughly: Instant,
    /// The active segment at the last pass: a new active id means the log rolled since.
    active_collected: i64,
}

impl Leader {
    fn new(w: Writer) -> Self {
        let now = Instant::now();
        Leader {
            active_collected: w.log.active().0,
            w,
            collected: now,
            collected_thoroughly: now,
        }
    }

    /// Collection if due, then the jobs waiting, in one transaction.
    fn lead(&mut self, pending: &Mutex<Vec<Job>>) {
        self.collect_if_due();
        let batch = take_pending(pending);
        if batch.is_empty() {
            return;
        }
        let w = &mut self.w;
        // A transaction left open (a job that panicked) would fail every `BEGIN` after it.
        if !w.conn.is_autocommit() {
            let _ = run_cached(&w.conn, "ROLLBACK");
        }
        if let Err(e) = run_cached(&w.conn, "BEGIN IMMEDIATE") {
            // Dropping the jobs unrun tells each caller it failed.
            tracing::error!(error = %e, jobs = batch.len(), "embedded queue: cannot begin a transaction");
            return;
        }
        // A job that panics must not take the leader's caller (another task) down with it,
        // nor leave the transaction open: the whole group is rolled back and each of its
        // callers told it failed (their answers dropped unsent).
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batch.into_iter().map(|job| job(w)).collect::<Vec<Finish>>()
        }));
        let Ok(finishers) = ran else {
            tracing::error!("embedded queue: a job panicked; its group commit is rolled back");
            let _ = run_cached(&w.conn, "ROLLBACK");
            return;
        };
        let committed = commit(w);
        if committed.is_err() {
            let _ = run_cached(&w.conn, "ROLLBACK");
        }
        for finish in finishers {
            finish(committed.clone());
        }
    }

    fn collect_if_due(&mut self) {
        let thorough = self.collected_thoroughly.elapsed() >= COLLECT_EVERY;
        let rolled = self.w.log.active().0 != self.active_collected;
        if !(thorough || (rolled && self.collected.elapsed() >= COLLECT_AFTER_ROLL)) {
            return;
        }
        // Between the periodic passes only what is wholly free is taken: compacting a
        // segment or closing a drained queue's files waits for the periodic pass, so a
        // segment half acknowledged at full speed is not copied out for being caught
        // mid-way.
        if let Err(e) = collect(&mut self.w, thorough) {
            tracing::warn!(error = %e, "embedded queue: cannot collect segments");
        }
        self.collected = Instant::now();
        if thorough {
            self.collected_thoroughly = self.collected;
        }
        self.active_collected = self.w.log.active().0;
    }
}

/// Commits what the jobs did, the bodies they appended made durable first.
fn commit(w: &mut Writer) -> Result<(), String> {
    w.log.sync_before_commit().map_err(|e| e.to_string())?;
    run_cached(&w.conn, "COMMIT").map_err(|e| e.to_string())
}

/// Removes the segments no message points into, and moves the few messages still in a
/// mostly-acknowledged segment (a batch parked for hours in a retry queue) to the active one,
/// so one old message does not keep a whole segment on disk. Not `thorough`: only the wholly
/// free segments.
fn collect(w: &mut Writer, thorough: bool) -> Result<(), QueueError> {
    let mut live: std::collections::HashMap<i64, u64> = std::collections::HashMap::new();
    {
        let mut rows = w
            .conn
            .prepare_cached(
                "SELECT segment, SUM((body_len + attributes_len) * (parts - done) / parts)
                 FROM entries GROUP BY segment",
            )
            .map_err(db_error)?;
        let found = rows
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db_error)?;
        for row in found {
            let (segment, bytes) = row.map_err(db_error)?;
            live.insert(segment, bytes as u64);
        }
    }
    // A drained queue's active segment is closed, so its bytes go too (under a size cap the
    // queue must be able to empty its disk, not only its rows), and so do the spares.
    let (active, written) = w.log.active();
    let drained = thorough && written && !live.contains_key(&active);
    if drained {
        w.log.close_active()?;
    }
    // Live quarters below which a segment is compacted: one normally, three near the cap.
    let sparse_below = if w.log.near_cap() { 3 } else { 1 };
    let mut unused = Vec::new();
    let mut sparse = Vec::new();
    for (segment, size) in w.log.closed_segments()? {
        match live.get(&segment) {
            None => unused.push(segment),
            Some(&bytes) if thorough && bytes * 4 < size * sparse_below => sparse.push(segment),
            Some(_) => {}
        }
    }
    if !sparse.is_empty() {
        run_cached(&w.conn, "BEGIN IMMEDIATE").map_err(db_error)?;
        let moved = sparse
            .iter()
            .try_for_each(|&segment| move_out_of(w, segment))
            .and_then(|()| commit(w).map_err(QueueError::Unavailable));
        match moved {
            Ok(()) => unused.extend(sparse),
            Err(e) => {
                let _ = run_cached(&w.conn, "ROLLBACK");
                return Err(e);
            }
        }
    }
    for segment in unused {
        w.log.remove(segment);
    }
    if drained {
        w.log.drop_spares();
    }
    Ok(())
}

/// Moves every message in `segment` to the active segment.
fn move_out_of(w: &mut Writer, segment: i64) -> Result<(), QueueError> {
    let places: Vec<(i64, Place)> = {
        let mut rows = w
            .conn
            .prepare_cached(
                "SELECT id, segment, offset, body_len, attributes_len FROM entries
                 WHERE segment = ?1",
            )
            .map_err(db_error)?;
        rows.query_map(params![segment], |r| Ok((r.get(0)?, place_at(r, 1)?)))
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)?
    };
    for (id, place) in places {
        let (body, attributes) = w.log.read(place)?;
        let to = w.log.append(&body, &attributes, false)?;
        w.conn
            .prepare_cached("UPDATE entries SET segment = ?1, offset = ?2 WHERE id = ?3")
            .and_then(|mut s| s.execute(params![to.segment, to.offset as i64, id]))
            .map_err(db_error)?;
    }
    Ok(())
}

/// A row per send of up to [`PACK_MAX`] messages: their state (visibility, receive count,
/// which of them are done) and where their bodies are. Rows are small, so a receive rewrites
/// little; bodies are written once, on send, and their segment goes when every message in it
/// is acknowledged. A row of one message (`parts = 1`) holds its body and attributes as they
/// are; a row of several holds them packed ([`pack_header`]), so a send, a claim and an ack
/// of a bulk request's batches touch one row, not ten.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS entries (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        queue          TEXT    NOT NULL,
        sent_at        INTEGER NOT NULL,
        visible_at     INTEGER NOT NULL,
        receive_count  INTEGER NOT NULL DEFAULT 0,
        segment        INTEGER NOT NULL,
        offset         INTEGER NOT NULL,
        body_len       INTEGER NOT NULL,
        attributes_len INTEGER NOT NULL,
        parts          INTEGER NOT NULL DEFAULT 1,
        acked          INTEGER NOT NULL DEFAULT 0,
        done           INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS entries_ready ON entries (queue, visible_at, id);
";

/// Most messages one row holds: a receive hands out at most ten (as SQS), and a row is
/// claimed whole.
const PACK_MAX: usize = 10;

/// The columns a row gained when rows began to hold several messages: a database from before
/// gets them (each of its rows holds one message).
fn add_pack_columns(conn: &Connection) -> Result<(), QueueError> {
    let has_parts: bool = conn
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM pragma_table_info('entries') WHERE name = 'parts')",
            [],
            |r| r.get(0),
        )
        .map_err(db_error)?;
    if !has_parts {
        conn.execute_batch(
            "ALTER TABLE entries ADD COLUMN parts INTEGER NOT NULL DEFAULT 1;
             ALTER TABLE entries ADD COLUMN acked INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE entries ADD COLUMN done INTEGER NOT NULL DEFAULT 0;",
        )
        .map_err(db_error)?;
    }
    Ok(())
}

/// Keeps each prepared statement's plan whatever values are bound to it. Without this, SQLite
/// (3.4x) marks a statement whose `LIMIT` is a bound parameter as expired whenever that
/// parameter is bound, and parses and plans it again on the next step: every receive's claim
/// was compiled afresh (~4% of `mpconnect all`'s CPU under load). The plans do not depend on
/// the values (no `ANALYZE` statistics are kept), so nothing is lost.
fn hold_query_plans(conn: &Connection) -> Result<(), QueueError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(db_error)?;
    Ok(())
}

/// A packed row's record starts with each message's body and attribute lengths (u32, little
/// endian); the bodies and attributes follow in order.
fn pack_header(messages: &[Message], attributes: &[Vec<u8>]) -> Vec<u8> {
    let mut header = Vec::with_capacity(messages.len() * 8);
    for (m, a) in messages.iter().zip(attributes) {
        header.extend_from_slice(&(m.body_len() as u32).to_le_bytes());
        header.extend_from_slice(&(a.len() as u32).to_le_bytes());
    }
    header
}

/// What a record's attributes start with since they are kept in binary: JSON, as earlier
/// versions wrote them (and as a database from then still holds them), starts with `{`.
const BINARY_ATTRIBUTES: u8 = 0;

/// A message's attributes as its record keeps them: [`BINARY_ATTRIBUTES`], then each key and
/// each value as its length (u32, little endian) and its bytes. Written and read back for
/// every message, JSON with a map built from it cost ~2% of the pipeline's CPU at full speed.
fn encode_attributes(attributes: &Attributes) -> Vec<u8> {
    // `Attributes` keeps this form in memory: the record is its buffer after the marker.
    let encoded = attributes.encoded();
    let mut out = Vec::with_capacity(1 + encoded.len());
    out.push(BINARY_ATTRIBUTES);
    out.extend_from_slice(encoded);
    out
}

/// A record's attributes, binary ([`encode_attributes`]) or JSON (earlier versions); `None`
/// if they do not read as either.
fn decode_attributes(bytes: &[u8]) -> Option<Attributes> {
    let Some((&BINARY_ATTRIBUTES, rest)) = bytes.split_first() else {
        return match bytes {
            [] => Some(Attributes::new()),
            json => serde_json::from_slice(json).ok(),
        };
    };
    // In key order as this version writes them; read entry by entry otherwise.
    Attributes::from_entries(rest)
}

/// A received message's attributes: a record whose attributes do not read (damaged on disk)
/// still gives its body, without them, as before they were kept in binary.
fn received_attributes(bytes: &[u8]) -> Attributes {
    decode_attributes(bytes).unwrap_or_default()
}

/// The messages of a packed record: each one's body (sharing the record's buffer) and
/// attributes' bytes, or `None` if the record does not hold `parts` messages.
fn unpack(record: Bytes, parts: usize) -> Option<Vec<(Bytes, Bytes)>> {
    let header_len = parts.checked_mul(8)?;
    let header = record.get(..header_len)?;
    let mut at = header_len;
    let mut out = Vec::with_capacity(parts);
    for lens in header.chunks_exact(8) {
        let body_len = u32::from_le_bytes(lens[..4].try_into().ok()?) as usize;
        let attributes_len = u32::from_le_bytes(lens[4..].try_into().ok()?) as usize;
        let body_end = at.checked_add(body_len)?;
        let end = body_end.checked_add(attributes_len)?;
        if end > record.len() {
            return None;
        }
        out.push((record.slice(at..body_end), record.slice(body_end..end)));
        at = end;
    }
    Some(out)
}

/// Every part of a row of `parts` messages.
fn all_parts(parts: i64) -> i64 {
    (1i64 << parts) - 1
}

/// A message as an earlier version kept it: id, queue, sent at, visible at, receive count,
/// body, attributes.
type OldRow = (i64, String, i64, i64, i64, Vec<u8>, String);

/// Moves what a database written by an earlier version holds (bodies in the `bodies` table)
/// into the segments, keeping every message's id, state and order, in one transaction.
fn migrate(w: &mut Writer) -> Result<(), QueueError> {
    let old: bool = w
        .conn
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bodies')",
            [],
            |r| r.get(0),
        )
        .map_err(db_error)?;
    if !old {
        return Ok(());
    }
    run_cached(&w.conn, "BEGIN IMMEDIATE").map_err(db_error)?;
    let moved = (|| {
        let rows: Vec<OldRow> = {
            let mut select = w
                .conn
                .prepare(
                    "SELECT m.id, m.queue, m.sent_at, m.visible_at, m.receive_count, b.body,
                            b.attributes
                     FROM messages m JOIN bodies b ON b.id = m.id ORDER BY m.id",
                )
                .map_err(db_error)?;
            select
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })
                .map_err(db_error)?
                .collect::<Result<_, _>>()
                .map_err(db_error)?
        };
        let count = rows.len();
        for (id, queue, sent_at, visible_at, receive_count, body, attributes) in rows {
            let place = w.log.append(&body, attributes.as_bytes(), false)?;
            insert_entry(
                &w.conn,
                Some(id),
                &queue,
                sent_at,
                visible_at,
                receive_count,
                place,
                Parts::ONE,
            )?;
        }
        w.conn
            .execute_batch("DROP TABLE bodies; DROP TABLE messages;")
            .map_err(db_error)?;
        w.log.force_sync()?;
        run_cached(&w.conn, "COMMIT").map_err(db_error)?;
        tracing::info!(
            messages = count,
            "embedded queue: bodies moved to segment files"
        );
        Ok(())
    })();
    if moved.is_err() {
        let _ = run_cached(&w.conn, "ROLLBACK");
    }
    moved
}

/// A body's place from a row's `segment, offset, body_len, attributes_len`, from column `at`.
fn place_at(r: &rusqlite::Row, at: usize) -> rusqlite::Result<Place> {
    Ok(Place {
        segment: r.get(at)?,
        offset: r.get::<_, i64>(at + 1)? as u64,
        body_len: r.get::<_, i64>(at + 2)? as u64,
        attributes_len: r.get::<_, i64>(at + 3)? as u64,
    })
}

/// A row's messages: how many, and which of them are done (a bit each).
#[derive(Debug, Clone, Copy)]
struct Parts {
    parts: i64,
    acked: i64,
}

impl Parts {
    const ONE: Parts = Parts { parts: 1, acked: 0 };

    fn done(self) -> i64 {
        i64::from(self.acked.count_ones())
    }

    /// The parts not yet done, in order.
    fn left(self) -> impl Iterator<Item = i64> {
        (0..self.parts).filter(move |p| self.acked & (1 << p) == 0)
    }
}

#[allow(clippy::too_many_arguments)]
fn insert_entry(
    conn: &Connection,
    id: Option<i64>,
    queue: &str,
    sent_at: i64,
    visible_at: i64,
    receive_count: i64,
    place: Place,
    parts: Parts,
) -> Result<i64, QueueError> {
    conn.prepare_cached(
        "INSERT INTO entries (id, queue, sent_at, visible_at, receive_count, segment, offset,
                              body_len, attributes_len, parts, acked, done)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            queue,
            sent_at,
            visible_at,
            receive_count,
            place.segment,
            place.offset as i64,
            place.body_len as i64,
            place.attributes_len as i64,
            parts.parts,
            parts.acked,
            parts.done()
        ])
    })
    .map_err(db_error)?;
    Ok(conn.last_insert_rowid())
}

/// Where the segments of the database at `path` are kept.
fn segments_dir(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".segments");
    path.with_file_name(name)
}

fn db_error(e: rusqlite::Error) -> QueueError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return body_log::full();
    }
    QueueError::Unavailable(format!("embedded queue: {e}"))
}

impl EmbeddedDb {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, sync: EmbeddedSync) -> Result<Self, QueueError> {
        Self::open_with_segments(path, sync, body_log::SEGMENT_BYTES)
    }

    fn open_with_segments(
        path: &Path,
        sync: EmbeddedSync,
        segment_bytes: u64,
    ) -> Result<Self, QueueError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| QueueError::Config(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(db_error)?;
        let synchronous = match sync {
            EmbeddedSync::Normal => "NORMAL",
            EmbeddedSync::Full => "FULL",
        };
        // The writer never checkpoints: copying the WAL into the database (and its fsyncs)
        // happens on a thread of its own, so no request waits behind it.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
             PRAGMA busy_timeout = 5000; PRAGMA temp_store = MEMORY; \
             PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864; {SCHEMA}"
        ))
        .map_err(db_error)?;
        add_pack_columns(&conn)?;
        hold_query_plans(&conn)?;
        // Every statement the writer runs stays prepared (the default cache of 16 is smaller
        // than the set, and a miss re-parses the SQL).
        conn.set_prepared_statement_cache_capacity(64);
        let checkpoints = Connection::open(path).map_err(db_error)?;
        checkpoints
            .execute_batch("PRAGMA busy_timeout = 5000")
            .map_err(db_error)?;
        let log = BodyLog::open(
            &segments_dir(path),
            sync == EmbeddedSync::Full,
            segment_bytes,
        )?;
        let mut w = Writer { conn, log };
        migrate(&mut w)?;
        let inner = Arc::new(Inner {
            pending: Mutex::default(),
            writer: tokio::sync::Mutex::new(Leader::new(w)),
            arrivals: Mutex::default(),
        });
        let alive = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("embedded-queue-checkpoint".into())
            .spawn(move || checkpointer(checkpoints, alive))
            .map_err(|e| QueueError::Config(format!("cannot start the checkpointer: {e}")))?;
        Ok(EmbeddedDb { inner })
    }

    /// Caps the database's size on disk (`None`: no cap). Past it, sends fail as unavailable
    /// (the sender answers 503 and retries later) instead of filling the disk; receives and
    /// acks still work, and free space as they go.
    pub async fn set_max_size(&self, bytes: Option<u64>) -> Result<(), QueueError> {
        self.run(move |w| {
            w.log.set_cap(bytes);
            let conn = &w.conn;
            let page_size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(db_error)?;
            let pages = bytes.map_or(i64::from(u32::MAX - 1), |b| (b as i64 / page_size).max(16));
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                .map_err(db_error)
        })
        .await
    }

    /// A queue in this database, with no dead-letter queue.
    pub fn queue(&self, name: &str) -> EmbeddedQueue {
        EmbeddedQueue {
            db: self.clone(),
            name: name.into(),
            arrivals: self.inner.arrivals_of(name),
            redrive: None,
        }
    }

    /// A queue whose messages move to `dead_letter` (a queue in this database) on the receive
    /// after their `max_receives`-th.
    pub fn queue_with_dead_letter(
        &self,
        name: &str,
        max_receives: u32,
        dead_letter: &str,
    ) -> EmbeddedQueue {
        EmbeddedQueue {
            db: self.clone(),
            name: name.into(),
            arrivals: self.inner.arrivals_of(name),
            redrive: Some((max_receives.max(1), dead_letter.into())),
        }
    }

    /// Runs `work` in a savepoint of the next group commit, and answers once that commit is
    /// done: led by this caller if no one else has taken its job by the time the writer is
    /// free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Writer) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let stopped = || QueueError::Unavailable("embedded queue: a commit failed midway".into());
        let (answer, mut answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |w| {
            let result = in_savepoint(w, work);
            Box::new(move |committed| {
                let _ = answer.send(match committed {
                    Ok(()) => result,
                    Err(e) => Err(QueueError::Unavailable(format!(
                        "embedded queue commit: {e}"
                    ))),
                });
            })
        });
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(job);
        loop {
            tokio::select! {
                // The answer first: a leader takes and answers (or drops) jobs while it holds
                // the writer, so by the time this caller gets it, a job the leader before
                // ran is answered, and this caller need not lead.
                biased;
                result = &mut answered => return result.map_err(|_| stopped())?,
                mut leader = self.inner.writer.lock() => {
                    // Synchronous: no await while the writer is held, so a caller that gives
                    // up cannot leave a transaction half done.
                    leader.lead(&self.inner.pending);
                }
            }
        }
    }
}

/// Runs a statement from the connection's cache: the writer runs the same few control
/// statements for every job, and parsing them each time cost more than running them.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs one job so that its failure undoes only its own changes.
fn in_savepoint<T>(
    w: &mut Writer,
    work: impl FnOnce(&mut Writer) -> Result<T, QueueError>,
) -> Result<T, QueueError> {
    run_cached(&w.conn, "SAVEPOINT job").map_err(db_error)?;
    let result = work(w);
    if result.is_err() {
        run_cached(&w.conn, "ROLLBACK TO job").map_err(db_error)?;
    }
    run_cached(&w.conn, "RELEASE job").map_err(db_error)?;
    result
}

/// A queue in an [`EmbeddedDb`].
#[derive(Clone)]
pub struct EmbeddedQueue {
    db: EmbeddedDb,
    name: Arc<str>,
    /// Woken once per send or nack, and by a receiver that may have left messages
    /// behind: one waiting receiver at a time, not all of them for every send (a third of
    /// the receives came back empty when every send woke every poller of every queue).
    arrivals: Arc<Notify>,
    redrive: Option<(u32, Arc<str>)>,
}

impl EmbeddedQueue {
    /// The dead-letter queue, if this queue has one.
    pub fn dead_letter(&self) -> Option<EmbeddedQueue> {
        self.redrive.as_ref().map(|(_, dlq)| self.db.queue(dlq))
    }
}

/// A receipt names the row and the receive it came from, so a stale one cannot touch a
/// message that has since been received again, and in a packed row the message's place.
fn receipt(id: i64, receive_count: i64, part: Option<i64>) -> Receipt {
    match part {
        None => Receipt(format!("{id}.{receive_count}")),
        Some(part) => Receipt(format!("{id}.{receive_count}.{part}")),
    }
}

/// A receipt's row, receive count and (in a packed row) part.
fn parse_receipt(receipt: &Receipt) -> Result<(i64, i64, Option<i64>), QueueError> {
    let mut fields = receipt.0.split('.');
    let parsed = (|| {
        let id = fields.next()?.parse().ok()?;
        let count = fields.next()?.parse().ok()?;
        let part = match fields.next() {
            None => None,
            Some(p) => Some(
                p.parse()
                    .ok()
                    .filter(|p| (0..PACK_MAX as i64).contains(p))?,
            ),
        };
        fields.next().is_none().then_some((id, count, part))
    })();
    parsed.ok_or_else(|| {
        QueueError::Rejected(format!("not an embedded queue receipt: {}", receipt.0))
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A claimed row: id, sent at, receive count, body's place, and its parts.
type Claimed = (i64, i64, i64, Place, Parts);

/// How many rows the next claim takes so that their messages fit in `room`. A first row with
/// more messages left than that is split: the messages past `room` move to a row of their own
/// (the same body, the other parts marked done), still visible.
fn rows_that_fit(
    w: &mut Writer,
    queue: &str,
    now: i64,
    room: usize,
) -> Result<(usize, bool), QueueError> {
    let candidates: Vec<(i64, Parts)> = w
        .conn
        .prepare_cached(
            "SELECT id, parts, acked FROM entries WHERE queue = ?1 AND visible_at <= ?2
             ORDER BY visible_at, id LIMIT ?3",
        )
        .and_then(|mut s| {
            s.query_map(params![queue, now, room as i64], |r| {
                Ok((
                    r.get(0)?,
                    Parts {
                        parts: r.get(1)?,
                        acked: r.get(2)?,
                    },
                ))
            })?
            .collect()
        })
        .map_err(db_error)?;
    let mut rows = 0;
    let mut left = room as i64;
    let found = candidates.len();
    for (id, parts) in candidates {
        let held = parts.parts - parts.done();
        if held <= left {
            rows += 1;
            left -= held;
            continue;
        }
        if rows == 0 {
            let moved = parts
                .left()
                .skip(left as usize)
                .fold(0, |m, p| m | (1 << p));
            split_off(w, id, moved, None)?;
            rows = 1;
        }
        break;
    }
    Ok((rows, rows < found))
}

/// Moves the parts in `moved` out of row `id` into a new row of their own (visible at
/// `visible_at`, or when the row is), with the row's body, send time and receive count.
fn split_off(
    w: &mut Writer,
    id: i64,
    moved: i64,
    visible_at: Option<i64>,
) -> Result<(), QueueError> {
    w.conn
        .prepare_cached(
            "INSERT INTO entries (queue, sent_at, visible_at, receive_count, segment, offset,
                                  body_len, attributes_len, parts, acked, done)
             SELECT queue, sent_at, COALESCE(?2, visible_at), receive_count, segment, offset,
                    body_len, attributes_len, parts, ((1 << parts) - 1) & ~?3, parts - ?4
             FROM entries WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                visible_at,
                moved,
                i64::from(moved.count_ones())
            ])
        })
        .map_err(db_error)?;
    mark_done(w, id, moved)
}

/// The parts of row `id` and when it becomes visible, if its receive count is still `count`
/// (the receipt is of its latest receive).
fn received_row(w: &Writer, id: i64, count: i64) -> Result<Option<(Parts, i64)>, QueueError> {
    w.conn
        .prepare_cached(
            "SELECT parts, acked, visible_at FROM entries WHERE id = ?1 AND receive_count = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![id, count], |r| {
                let parts = Parts {
                    parts: r.get(0)?,
                    acked: r.get(1)?,
                };
                Ok((parts, r.get(2)?))
            })
            .optional()
        })
        .map_err(db_error)
}

/// Marks the parts in `parts` of row `id` done.
fn mark_done(w: &mut Writer, id: i64, parts: i64) -> Result<(), QueueError> {
    w.conn
        .prepare_cached("UPDATE entries SET acked = acked | ?2, done = done + ?3 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id, parts, i64::from(parts.count_ones())]))
        .map_err(db_error)?;
    Ok(())
}

/// One receive, in one transaction: take up to `max` visible messages, oldest first, and make
/// them invisible; those received too often already go to the dead-letter queue instead.
/// Returns what came of it.
fn receive_now(
    w: &mut Writer,
    queue: &str,
    redrive: Option<&(u32, Arc<str>)>,
    max: usize,
    visibility_ms: i64,
) -> Result<Receive, QueueError> {
    let now = now_ms();
    let mut out = Vec::with_capacity(max);
    let mut dead_lettered = false;
    let mut more = false;
    while out.len() < max {
        let (rows, left_some) = rows_that_fit(w, queue, now, max - out.len())?;
        more = left_some;
        if rows == 0 {
            break;
        }
        // Select and claim in one statement.
        let mut claimed: Vec<Claimed> = {
            let mut claim = w
                .conn
                .prepare_cached(
                    "UPDATE entries SET visible_at = ?1, receive_count = receive_count + 1
                     WHERE id IN (SELECT id FROM entries WHERE queue = ?2 AND visible_at <= ?3
                                  ORDER BY visible_at, id LIMIT ?4)
                     RETURNING id, sent_at, receive_count, segment, offset, body_len,
                               attributes_len, parts, acked",
                )
                .map_err(db_error)?;
            claim
                .query_map(params![now + visibility_ms, queue, now, rows as i64], |r| {
                    let parts = Parts {
                        parts: r.get(7)?,
                        acked: r.get(8)?,
                    };
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, place_at(r, 3)?, parts))
                })
                .map_err(db_error)?
                .collect::<Result<_, _>>()
                .map_err(db_error)?
        };
        if claimed.is_empty() {
            break;
        }
        claimed.sort_unstable_by_key(|row| row.0);
        let mut moved_any = false;
        for (id, sent_at, count, place, parts) in claimed {
            if let Some((max_receives, dead_letter)) = redrive
                && count > i64::from(*max_receives)
            {
                w.conn.prepare_cached(
                    "UPDATE entries SET queue = ?1, visible_at = 0, receive_count = 0 WHERE id = ?2",
                )
                .and_then(|mut s| s.execute(params![&**dead_letter, id]))
                .map_err(db_error)?;
                moved_any = true;
                dead_lettered = true;
                continue;
            }
            let (body, attributes) = w.log.read(place)?;
            if parts.parts == 1 {
                out.push(Taken {
                    id,
                    part: None,
                    count,
                    sent_at,
                    body: Bytes::from(body),
                    attributes: Bytes::from(attributes),
                });
                continue;
            }
            let messages = usize::try_from(parts.parts)
                .ok()
                .and_then(|n| unpack(Bytes::from(body), n))
                .ok_or_else(|| {
                    QueueError::Unavailable(format!(
                        "embedded queue: the bodies of row {id} are not {} messages",
                        parts.parts
                    ))
                })?;
            for part in parts.left() {
                let (body, attributes) = messages[part as usize].clone();
                out.push(Taken {
                    id,
                    part: Some(part),
                    count,
                    sent_at,
                    body,
                    attributes,
                });
            }
        }
        // Only dead-lettering leaves room to fill; otherwise that was all there was.
        if !moved_any {
            break;
        }
    }
    let next_visible = if out.is_empty() {
        w.conn
            .prepare_cached("SELECT MIN(visible_at) FROM entries WHERE queue = ?1")
            .and_then(|mut s| s.query_row(params![queue], |r| r.get::<_, Option<i64>>(0)))
            .map_err(db_error)?
    } else {
        None
    };
    Ok(Receive {
        messages: out,
        more,
        next_visible,
        dead_lettered,
    })
}

/// What one receive took, and what it saw.
struct Receive {
    messages: Vec<Taken>,
    /// Visible messages were left that did not fit: another receiver may take them.
    more: bool,
    /// When there were none: when the next one becomes visible.
    next_visible: Option<i64>,
    /// Some were moved to the dead-letter queue.
    dead_lettered: bool,
}

/// A message a receive claimed, as the group commit read it (on whichever caller's thread led
/// it). The receiver makes its [`Received`] (ids, receipt, attributes decoded): what it
/// allocates is then its own to free (a free from another thread costs the allocator more),
/// and the group commit every queue shares, which holds the writer, does less.
struct Taken {
    id: i64,
    /// Its part of a packed row, if it is in one.
    part: Option<i64>,
    count: i64,
    sent_at: i64,
    body: Bytes,
    attributes: Bytes,
}

impl Taken {
    fn into_received(self) -> Received {
        Received {
            message_id: match self.part {
                None => self.id.to_string(),
                Some(part) => format!("{}.{part}", self.id),
            },
            receipt: receipt(self.id, self.count, self.part),
            body: self.body,
            attributes: received_attributes(&self.attributes),
            receive_count: u32::try_from(self.count).unwrap_or(u32::MAX),
            sent_at_ms: self.sent_at,
        }
    }
}

impl Queue for EmbeddedQueue {
    fn name(&self) -> &str {
        &self.name
    }

    /// A body's parts go to the segment in one `writev`, not joined first.
    fn takes_bodies_in_parts(&self) -> bool {
        true
    }

    async fn send(&self, messages: Vec<Message>) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Ok(());
        }
        let queue = self.name.clone();
        // Encoded here, before the job: the writer every queue shares is held less.
        let attributes: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| encode_attributes(&m.attributes))
            .collect();
        self.db
            .run(move |w| {
                let now = now_ms();
                // A row per run of up to PACK_MAX messages sent with the same delay.
                let mut rows: Vec<std::ops::Range<usize>> = Vec::new();
                for (i, m) in messages.iter().enumerate() {
                    match rows.last_mut() {
                        Some(row)
                            if row.len() < PACK_MAX && messages[row.start].delay == m.delay =>
                        {
                            row.end = i + 1
                        }
                        _ => rows.push(i..i + 1),
                    }
                }
                // A packed row's record starts with its header; a row of one has none.
                let headers: Vec<Option<Vec<u8>>> = rows
                    .iter()
                    .map(|row| {
                        (row.len() > 1)
                            .then(|| pack_header(&messages[row.clone()], &attributes[row.clone()]))
                    })
                    .collect();
                let mut records: Vec<Record> = Vec::with_capacity(messages.len() + rows.len());
                for (row, header) in rows.iter().zip(&headers) {
                    if let Some(header) = header {
                        records.push(Record {
                            body: [header, &[]],
                            attributes: &[],
                        });
                    }
                    for i in row.clone() {
                        records.push(Record {
                            body: [&messages[i].body, &messages[i].body_rest],
                            attributes: &attributes[i],
                        });
                    }
                }
                let places = w.log.append_all(&records, true)?;
                let mut places = places.into_iter();
                for row in rows {
                    let visible_at = now + millis(messages[row.start].delay);
                    let n = row.len();
                    let spans = places.by_ref().take(if n > 1 { n + 1 } else { 1 });
                    let place = spans
                        .reduce(|first, next| Place {
                            body_len: next.offset + next.body_len + next.attributes_len
                                - first.offset,
                            attributes_len: 0,
                            ..first
                        })
                        .ok_or_else(|| {
                            QueueError::Unavailable("embedded queue: a send lost its place".into())
                        })?;
                    let parts = Parts {
                        parts: n as i64,
                        acked: 0,
                    };
                    insert_entry(&w.conn, None, &queue, now, visible_at, 0, place, parts)?;
                }
                // Handed back to be freed by the sender's thread, which allocated them.
                Ok((messages, attributes))
            })
            .await?;
        self.arrivals.notify_one();
        Ok(())
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Received>, QueueError> {
        let max = options.max_messages.clamp(1, super::EMBEDDED_MAX_RECEIVE);
        let visibility_ms = millis(options.visibility);
        let deadline = Instant::now() + options.wait;
        loop {
            // Registered before looking, so a send in between is not missed.
            let arrived = self.arrivals.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();

            let queue = self.name.clone();
            let redrive = self.redrive.clone();
            let Receive {
                messages,
                more,
                next_visible,
                dead_lettered,
            } = self
                .db
                .run(move |w| receive_now(w, &queue, redrive.as_ref(), max, visibility_ms))
                .await?;
            if dead_lettered && let Some((_, dead_letter)) = &self.redrive {
                self.db.inner.arrivals_of(dead_letter).notify_one();
            }
            if !messages.is_empty() {
                // A full receive, or one that left rows that did not fit, may have left more:
                // the next waiting receiver looks.
                if more || messages.len() == max {
                    self.arrivals.notify_one();
                }
                return Ok(messages.into_iter().map(Taken::into_received).collect());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut wake = deadline;
            if let Some(at) = next_visible {
                let in_ms = (at - now_ms()).max(1) as u64;
                wake = wake.min(now + Duration::from_millis(in_ms));
            }
            tokio::select! {
                _ = &mut arrived => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        let keys = receipts
            .iter()
            .map(parse_receipt)
            .collect::<Result<Vec<_>, _>>()?;
        self.db
            .run(move |w| {
                // A receipt from an earlier receive changes nothing: the message is with
                // another consumer now, who will ack it. Its body goes with its segment.
                let mut packed: std::collections::BTreeMap<(i64, i64), i64> = Default::default();
                for (id, count, part) in keys {
                    match part {
                        None => {
                            w.conn
                                .prepare_cached(
                                    "DELETE FROM entries WHERE id = ?1 AND receive_count = ?2",
                                )
                                .and_then(|mut s| s.execute(params![id, count]))
                                .map_err(db_error)?;
                        }
                        Some(part) => *packed.entry((id, count)).or_default() |= 1 << part,
                    }
                }
                for ((id, count), acked) in packed {
                    let Some((row, _)) = received_row(w, id, count)? else {
                        continue;
                    };
                    let all = all_parts(row.parts);
                    if (row.acked | acked) & all == all {
                        // The row's last message takes the row with it.
                        w.conn
                            .prepare_cached("DELETE FROM entries WHERE id = ?1")
                            .and_then(|mut s| s.execute(params![id]))
                            .map_err(db_error)?;
                    } else {
                        mark_done(w, id, acked & all & !row.acked)?;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn nack(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        self.set_visible_at(receipt, delay, true).await?;
        // Even with a delay: a waiting receiver may be asleep until a later time than this.
        self.arrivals.notify_one();
        Ok(())
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), QueueError> {
        self.set_visible_at(receipt, visibility, false).await
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        let queue = self.name.clone();
        self.db
            .run(move |w| {
                let now = now_ms();
                w.conn
                    .query_row(
                        "SELECT COALESCE(SUM((visible_at <= ?2) * (parts - done)), 0),
                            COALESCE(SUM((visible_at > ?2 AND receive_count > 0) * (parts - done)), 0),
                            COALESCE(SUM((visible_at > ?2 AND receive_count = 0) * (parts - done)), 0)
                     FROM entries WHERE queue = ?1",
                        params![&*queue, now],
                        |r| {
                            Ok(Depth {
                                visible: r.get::<_, i64>(0)? as u64,
                                in_flight: r.get::<_, i64>(1)? as u64,
                                delayed: r.get::<_, i64>(2)? as u64,
                            })
                        },
                    )
                    .map_err(db_error)
            })
            .await
    }
}

impl EmbeddedQueue {
    /// Moves a message's visibility to `from_now` later, if this receipt still holds it. A
    /// message handed back (`alone`) from a row whose other messages are still held moves to a
    /// row of its own; an extension moves the row's with it (they came in the same receive).
    async fn set_visible_at(
        &self,
        receipt: &Receipt,
        from_now: Duration,
        alone: bool,
    ) -> Result<(), QueueError> {
        let (id, count, part) = parse_receipt(receipt)?;
        let changed = self
            .db
            .run(move |w| {
                let now = now_ms();
                let visible_at = now + millis(from_now);
                if let Some(part) = part {
                    let Some((row, _)) =
                        received_row(w, id, count)?.filter(|&(_, until)| until > now)
                    else {
                        return Ok(0);
                    };
                    let bit = 1 << part;
                    if part >= row.parts || row.acked & bit != 0 {
                        return Ok(0);
                    }
                    if alone && row.parts - row.done() > 1 {
                        split_off(w, id, bit, Some(visible_at))?;
                        return Ok(1);
                    }
                }
                w.conn
                    .prepare_cached(
                        "UPDATE entries SET visible_at = ?1
                     WHERE id = ?2 AND receive_count = ?3 AND visible_at > ?4",
                    )
                    .and_then(|mut s| s.execute(params![visible_at, id, count, now]))
                    .map_err(db_error)
            })
            .await?;
        if changed == 0 {
            Err(QueueError::NotInFlight)
        } else {
            Ok(())
        }
    }

    /// The oldest message's send time, for the "age of oldest message" metric.
    pub async fn oldest_sent_at_ms(&self) -> Result<Option<i64>, QueueError> {
        let queue = self.name.clone();
        self.db
            .run(move |w| {
                w.conn
                    .query_row(
                        "SELECT MIN(sent_at) FROM entries WHERE queue = ?1",
                        params![&*queue],
                        |r| r.get(0),
                    )
                    .optional()
                    .map(Option::flatten)
                    .map_err(db_error)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(max: usize) -> ReceiveOptions {
        ReceiveOptions {
            max_messages: max,
            wait: Duration::from_millis(200),
            visibility: Duration::from_secs(30),
        }
    }

    fn segments(path: &Path) -> usize {
        std::fs::read_dir(segments_dir(path)).unwrap().count()
    }

    /// A database in a fresh directory (kept while the first is held) whose segments roll
    /// every 4 KB.
    fn small_segments() -> (tempfile::TempDir, PathBuf, EmbeddedDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let db = EmbeddedDb::open_with_segments(&path, EmbeddedSync::Normal, 4096).unwrap();
        (dir, path, db)
    }

    /// Sends a segment's worth (the send rolls), takes it and acknowledges it, and gives the
    /// writer time to collect after the roll.
    async fn roll_once(queue: &EmbeddedQueue, body: String) {
        queue.send(vec![Message::new(body)]).await.unwrap();
        let got = queue.receive(options(10)).await.unwrap();
        assert_eq!(got.len(), 1);
        let receipts: Vec<Receipt> = got.iter().map(|m| m.receipt.clone()).collect();
        queue.ack(&receipts).await.unwrap();
        tokio::time::sleep(COLLECT_AFTER_ROLL + Duration::from_millis(10)).await;
    }

    /// Attributes come back as they were sent, alone in a row and packed with others, in the
    /// binary form on disk; a record from before (JSON) still reads; damage reads as nothing.
    #[tokio::test]
    async fn attributes_come_back_as_sent_and_old_json_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("q.db"), EmbeddedSync::Normal).unwrap();
        let q = db.queue("a");
        let shapes: Vec<Attributes> = vec![
            Attributes::new(),
            Attributes::from([("k", "")]),
            Attributes::from([
                ("traceparent", "00-ab-cd-01"),
                ("é", "{\"json\": [1]}"),
                ("", "0"),
            ]),
            (0..10)
                .map(|i| (format!("key{i}"), "v".repeat(i * 100)))
                .collect(),
        ];
        let message = |attributes: &Attributes| Message {
            body: Bytes::from_static(b"body"),
            attributes: attributes.clone(),
            ..Message::default()
        };
        // One send of all of them (one packed row), then each alone (a row each).
        q.send(shapes.iter().map(message).collect()).await.unwrap();
        for shape in &shapes {
            q.send(vec![message(shape)]).await.unwrap();
        }
        let got: Vec<Attributes> = receive_all(&q)
            .await
            .into_iter()
            .map(|m| m.attributes)
            .collect();
        let want: Vec<Attributes> = shapes.iter().chain(&shapes).cloned().collect();
        assert_eq!(got, want);

        for shape in &shapes {
            let binary = encode_attributes(shape);
            assert_eq!(binary[0], BINARY_ATTRIBUTES);
            assert_eq!(decode_attributes(&binary).as_ref(), Some(shape));
            let json = serde_json::to_vec(shape).unwrap();
            assert_eq!(decode_attributes(&json).as_ref(), Some(shape));
            // Cut short anywhere inside a key or a value: not read as something else.
            for cut in 1..binary.len() {
                if let Some(read) = decode_attributes(&binary[..cut]) {
                    assert!(read.len() < shape.len(), "{cut} of {} bytes", binary.len());
                }
            }
        }
        assert_eq!(decode_attributes(b""), Some(Attributes::new()));
        assert_eq!(decode_attributes(b"{not json"), None);
        assert_eq!(decode_attributes(&[0, 1, 0, 0, 0, 0xff, 0, 0, 0, 0]), None);
        // Binary with its keys out of order (not what this version writes) still reads.
        let mut unordered = vec![BINARY_ATTRIBUTES];
        for text in ["b", "2", "a", "1"] {
            unordered.extend_from_slice(&(text.len() as u32).to_le_bytes());
            unordered.extend_from_slice(text.as_bytes());
        }
        assert_eq!(
            decode_attributes(&unordered),
            Some(Attributes::from([("a", "1"), ("b", "2")]))
        );
    }

    async fn receive_all(queue: &EmbeddedQueue) -> Vec<Received> {
        let mut got = Vec::new();
        loop {
            let more = queue.receive(options(10)).await.unwrap();
            if more.is_empty() {
                return got;
            }
            got.extend(more);
        }
    }

    /// Many callers at once, on two workers: each hears its own answer, none is lost or
    /// answered twice, and they share commits (whoever holds the writer runs what the others
    /// left waiting).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_at_once_share_commits_and_each_hears_its_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("q.db"), EmbeddedSync::Normal).unwrap();
        let queue = db.queue("q");
        let senders: Vec<_> = (0..200)
            .map(|i| {
                let queue = queue.clone();
                tokio::spawn(async move {
                    queue
                        .send(vec![Message::new(format!("m{i}"))])
                        .await
                        .unwrap();
                })
            })
            .collect();
        for sender in senders {
            sender.await.unwrap();
        }
        let mut bodies: Vec<String> = receive_all(&queue)
            .await
            .into_iter()
            .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
            .collect();
        bodies.sort();
        let mut sent: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
        sent.sort();
        assert_eq!(bodies, sent);
    }

    /// A job that panics fails its own caller and its group (rolled back together), not the
    /// caller that happened to run it, and the queue goes on working.
    #[tokio::test]
    async fn a_job_that_panics_fails_its_group_and_the_queue_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("q.db"), EmbeddedSync::Normal).unwrap();
        let queue = db.queue("q");
        let outcome = db
            .run(|_| -> Result<(), QueueError> { panic!("a job's bug") })
            .await;
        assert!(
            matches!(outcome, Err(QueueError::Unavailable(_))),
            "{outcome:?}"
        );
        queue.send(vec![Message::new("after")]).await.unwrap();
        let got = receive_all(&queue).await;
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].body[..], b"after");
    }

    /// A send whose caller gives up while another holds the writer: polled until its job is
    /// queued, then dropped.
    async fn give_up_on_a_send(db: &EmbeddedDb, queue: &EmbeddedQueue, body: &str) {
        let held = db.inner.writer.lock().await;
        let send = queue.send(vec![Message::new(body.to_owned())]);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), send)
                .await
                .is_err()
        );
        drop(held);
    }

    /// A caller that gives up before its turn leaves its job waiting: the checkpointer's pass
    /// runs it with no other caller coming.
    #[tokio::test]
    async fn a_job_left_by_a_caller_that_gave_up_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("q.db"), EmbeddedSync::Normal).unwrap();
        let queue = db.queue("q");
        give_up_on_a_send(&db, &queue, "left").await;
        // Watched through a connection of its own: any call on the queue would run the job
        // itself.
        let watcher = Connection::open(dir.path().join("q.db")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let rows = || -> i64 {
            watcher
                .query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))
                .unwrap()
        };
        while rows() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(rows(), 1, "the left job did not run");
        let got = receive_all(&queue).await;
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].body[..], b"left");
    }

    /// ... and runs, at the latest, when the database closes.
    #[tokio::test]
    async fn a_job_left_by_a_caller_that_gave_up_runs_before_the_database_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        {
            let db = EmbeddedDb::open(&path, EmbeddedSync::Normal).unwrap();
            give_up_on_a_send(&db, &db.queue("q"), "left at close").await;
        }
        let db = EmbeddedDb::open(&path, EmbeddedSync::Normal).unwrap();
        let got = receive_all(&db.queue("q")).await;
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].body[..], b"left at close");
    }

    /// Receivers already waiting when a send arrives all get to work when the send is more
    /// than one receive can take (each send wakes one receiver, and a full receive the next),
    /// and a message moved to a dead-letter queue wakes that queue's receiver; none of them
    /// waits out its long poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_receivers_wake_for_what_arrives_in_their_queue() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("q.db"), EmbeddedSync::Normal).unwrap();
        let queue = db.queue_with_dead_letter("q", 1, "q-dlq");
        let long_poll = |max| ReceiveOptions {
            max_messages: max,
            wait: Duration::from_secs(30),
            visibility: Duration::from_secs(30),
        };
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.receive(long_poll(10)).await.unwrap() })
            })
            .collect();
        let dead_letters = {
            let dlq = queue.dead_letter().unwrap();
            tokio::spawn(async move { dlq.receive(long_poll(10)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        let messages = (0..25).map(|i| Message::new(format!("{i}"))).collect();
        queue.send(messages).await.unwrap();
        let mut got = Vec::new();
        for receiver in waiting {
            got.extend(receiver.await.unwrap());
        }
        assert_eq!(got.len(), 25);
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "a receiver waited out its poll: {:?}",
            sent.elapsed()
        );

        // Back once, then past its one receive: the next receive moves it to the dead letters.
        queue.nack(&got[0].receipt, Duration::ZERO).await.unwrap();
        let moved = Instant::now();
        let again = queue.receive(options(1)).await.unwrap();
        assert!(again.is_empty(), "received past its limit: {again:?}");
        let dead = dead_letters.await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, got[0].body);
        assert!(moved.elapsed() < Duration::from_secs(10));
    }

    /// A message handed back with a short delay reaches a receiver that went to sleep
    /// expecting it only when its (longer) visibility timeout ran out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nack_with_a_delay_wakes_a_receiver_for_that_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("q.db"), EmbeddedSync::Normal).unwrap();
        let queue = db.queue("q");
        queue.send(vec![Message::new("x")]).await.unwrap();
        let long = ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_secs(20),
            visibility: Duration::from_secs(20),
        };
        let first = queue.receive(long).await.unwrap();
        assert_eq!(first.len(), 1);
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.receive(long).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let handed_back = Instant::now();
        queue
            .nack(&first[0].receipt, Duration::from_millis(200))
            .await
            .unwrap();
        let again = waiting.await.unwrap();
        assert_eq!(again.len(), 1);
        assert!(
            handed_back.elapsed() < Duration::from_secs(10),
            "the receiver slept until its poll ended: {:?}",
            handed_back.elapsed()
        );
    }

    /// Acknowledged messages take their segments with them; a segment that only a few
    /// unacknowledged messages still hold is compacted into the active one, bodies intact.
    #[tokio::test]
    async fn segments_go_once_their_messages_are_acknowledged() {
        let (_dir, path, db) = small_segments();
        let queue = db.queue("q");
        let body = |i: usize| format!("{i:04}").repeat(256);
        for chunk in (0..100).collect::<Vec<_>>().chunks(10) {
            let messages = chunk
                .iter()
                .map(|&i| Message::new(body(i)).with_attribute("n", i.to_string()))
                .collect();
            queue.send(messages).await.unwrap();
        }
        assert!(
            segments(&path) >= 10,
            "a send of ten 1 KiB bodies fills a 4 KiB segment"
        );
        let got = receive_all(&queue).await;
        assert_eq!(got.len(), 100);
        let kept = got
            .iter()
            .find(|m| &m.attributes["n"] == "0")
            .unwrap()
            .clone();
        let done: Vec<Receipt> = got
            .iter()
            .filter(|m| m.message_id != kept.message_id)
            .map(|m| m.receipt.clone())
            .collect();
        queue.ack(&done).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while segments(&path) > 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(segments(&path) <= 2, "{} segments left", segments(&path));
        queue.nack(&kept.receipt, Duration::ZERO).await.unwrap();
        let again = receive_all(&queue).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].body, Bytes::from(body(0)), "moved whole");
        assert_eq!(again[0].message_id, kept.message_id);
    }

    /// A queue that rolls its segment many times a second writes its bodies over the segments
    /// it freed, not into new files: a file's inode stays the same when it is reused. (Freed
    /// segments were collected once a second, so all but a few were deleted and every roll
    /// made a new file.)
    #[tokio::test]
    async fn segments_freed_between_rolls_are_written_over_not_made_anew() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, path, db) = small_segments();
        let queue = db.queue("q");
        let mut inodes = std::collections::HashSet::new();
        let rounds = 30;
        for i in 0..rounds {
            roll_once(&queue, format!("{i:04}").repeat(1024)).await;
            for entry in std::fs::read_dir(segments_dir(&path)).unwrap() {
                inodes.insert(entry.unwrap().metadata().unwrap().ino());
            }
        }
        assert!(
            inodes.len() <= 8,
            "{} files made for {rounds} segments",
            inodes.len()
        );
    }

    /// The passes after rolls do not put off the periodic one: a segment that one held message
    /// still pins is compacted while the queue keeps rolling.
    #[tokio::test]
    async fn a_rolling_queue_still_compacts_what_a_held_message_pins() {
        let (_dir, path, db) = small_segments();
        let queue = db.queue("q");
        // Ten small messages fill the first segment; all but one are acknowledged.
        queue
            .send(
                (0..10)
                    .map(|i| Message::new(format!("{i}").repeat(400)))
                    .collect(),
            )
            .await
            .unwrap();
        let first = queue.receive(options(10)).await.unwrap();
        assert_eq!(first.len(), 10);
        let done: Vec<Receipt> = first[1..].iter().map(|m| m.receipt.clone()).collect();
        queue.ack(&done).await.unwrap();
        let pinned = segments_dir(&path).join(format!("{:012}.seg", 1));
        assert!(pinned.exists());
        let until = Instant::now() + Duration::from_secs(5);
        while pinned.exists() && Instant::now() < until {
            roll_once(&queue, "r".repeat(4096)).await;
        }
        assert!(!pinned.exists(), "the pinned segment was never compacted");
        // The held message moved with its body.
        queue.nack(&first[0].receipt, Duration::ZERO).await.unwrap();
        let again = receive_all(&queue).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].body, first[0].body);
    }

    /// Bodies and attributes read back after a restart, and a database from before the
    /// segments is moved over with its ids, states and bodies.
    #[tokio::test]
    async fn a_restart_and_an_older_database_keep_every_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL,
                     sent_at INTEGER NOT NULL, visible_at INTEGER NOT NULL,
                     receive_count INTEGER NOT NULL DEFAULT 0);
                 CREATE TABLE bodies (id INTEGER PRIMARY KEY, body BLOB NOT NULL,
                     attributes TEXT NOT NULL);
                 INSERT INTO messages VALUES (7, 'q', 1, 0, 2);
                 INSERT INTO bodies VALUES (7, x'6f6c64', '{\"a\":\"1\"}');",
            )
            .unwrap();
        }
        {
            let db = EmbeddedDb::open(&path, EmbeddedSync::Normal).unwrap();
            db.queue("q")
                .send(vec![Message::new("new").with_attribute("b", "2")])
                .await
                .unwrap();
        }
        let db = EmbeddedDb::open(&path, EmbeddedSync::Full).unwrap();
        let got = receive_all(&db.queue("q")).await;
        let found: Vec<(String, Bytes, u32)> = got
            .iter()
            .map(|m| (m.message_id.clone(), m.body.clone(), m.receive_count))
            .collect();
        assert_eq!(found[0], ("7".into(), Bytes::from("old"), 3), "{found:?}");
        assert_eq!(&got[0].attributes["a"], "1");
        assert_eq!(found[1].1, Bytes::from("new"));
        assert_eq!(&got[1].attributes["b"], "2");
        assert!(
            found[1].0.parse::<i64>().unwrap() > 7,
            "ids are never reused"
        );
    }

    /// The claim, whose `LIMIT` is bound anew on every receive, is compiled once, not on
    /// every step.
    #[test]
    fn a_bound_limit_does_not_recompile_the_claim() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("q.db")).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        add_pack_columns(&conn).unwrap();
        hold_query_plans(&conn).unwrap();
        let mut claim = conn
            .prepare(
                "UPDATE entries SET visible_at = ?1 WHERE id IN (SELECT id FROM entries
                 WHERE queue = ?2 AND visible_at <= ?3 ORDER BY visible_at, id LIMIT ?4)",
            )
            .unwrap();
        for limit in 1..=5 {
            claim.execute(params![1, "q", 0, limit]).unwrap();
        }
        assert_eq!(
            claim.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "recompiled"
        );
    }

    fn rows(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))
            .unwrap()
    }

    fn numbered(n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| Message::new(format!("body {i}")).with_attribute("n", i.to_string()))
            .collect()
    }

    fn numbers(got: &[Received]) -> Vec<usize> {
        got.iter()
            .map(|m| m.attributes["n"].parse().unwrap())
            .collect()
    }

    /// A send of 25 messages is three rows, yet each message is acknowledged, handed back and
    /// timed out on its own, and the depth counts messages, not rows.
    #[tokio::test]
    async fn a_send_of_many_is_packed_yet_each_message_stands_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let db = EmbeddedDb::open(&path, EmbeddedSync::Normal).unwrap();
        let queue = db.queue("q");
        queue.send(numbered(25)).await.unwrap();
        assert_eq!(rows(&path), 3, "ten, ten and five to a row");

        let short = ReceiveOptions {
            visibility: Duration::from_secs(1),
            ..options(10)
        };
        let first = queue.receive(short).await.unwrap();
        assert_eq!(numbers(&first), (0..10).collect::<Vec<_>>());
        for (m, i) in first.iter().zip(0..) {
            assert_eq!(m.body, Bytes::from(format!("body {i}")));
        }
        let ids: std::collections::HashSet<_> = first.iter().map(|m| &m.message_id).collect();
        assert_eq!(ids.len(), 10, "each message its own id");

        let done: Vec<Receipt> = first[..5].iter().map(|m| m.receipt.clone()).collect();
        queue.ack(&done).await.unwrap();
        let depth = queue.depth().await.unwrap();
        assert_eq!((depth.visible, depth.in_flight), (15, 5));

        // Handed back alone: it comes back, the other four stay with their receiver.
        queue.nack(&first[5].receipt, Duration::ZERO).await.unwrap();
        let rest = receive_all(&queue).await;
        let mut got = numbers(&rest);
        got.sort_unstable();
        assert_eq!(got, [5].into_iter().chain(10..25).collect::<Vec<_>>());
        assert!(
            rest.iter()
                .all(|m| m.receive_count == 1 || &m.attributes["n"] == "5")
        );
        let receipts: Vec<Receipt> = rest.iter().map(|m| m.receipt.clone()).collect();
        queue.ack(&receipts).await.unwrap();
        // An ack with a receipt already used changes nothing.
        queue.ack(&done).await.unwrap();

        // The four never acknowledged come back once their visibility runs out.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let again = receive_all(&queue).await;
        assert_eq!(numbers(&again), vec![6, 7, 8, 9]);
        assert!(again.iter().all(|m| m.receive_count == 2));
        assert!(queue.ack(&[first[6].receipt.clone()]).await.is_ok());
        let receipts: Vec<Receipt> = again.iter().map(|m| m.receipt.clone()).collect();
        queue.ack(&receipts).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), Depth::default());
        assert_eq!(rows(&path), 0, "the last ack of a row takes the row");
    }

    /// Unlike SQS (10 at most), one receive takes as many whole rows as fit in what it asks
    /// for, up to `EMBEDDED_MAX_RECEIVE`, in the order they were sent; a row that does not fit
    /// after others waits for the next receive.
    #[tokio::test]
    async fn a_receive_takes_more_than_ten_across_rows_up_to_its_cap() {
        use super::super::EMBEDDED_MAX_RECEIVE as CAP;
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("q.db"), EmbeddedSync::Normal).unwrap();
        let queue = db.queue("q");
        // Rows of ten.
        let sent = 50 + CAP + 10;
        queue.send(numbered(sent)).await.unwrap();
        let mut got = Vec::new();
        for (ask, expected) in [(30, 0..30), (25, 30..50), (usize::MAX, 50..50 + CAP)] {
            let some = queue.receive(options(ask)).await.unwrap();
            assert_eq!(
                numbers(&some),
                expected.collect::<Vec<_>>(),
                "asked for {ask}"
            );
            got.extend(some);
        }
        for m in &got {
            assert_eq!(m.body, Bytes::from(format!("body {}", &m.attributes["n"])));
        }
        let rest = receive_all(&queue).await;
        assert_eq!(numbers(&rest), (50 + CAP..sent).collect::<Vec<_>>());
        got.extend(rest);
        let receipts: Vec<Receipt> = got.iter().map(|m| m.receipt.clone()).collect();
        queue.ack(&receipts).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), Depth::default());
    }

    /// A receiver that takes fewer messages than a row holds gets them all, a few at a time,
    /// each once.
    #[tokio::test]
    async fn a_receive_smaller_than_a_row_takes_it_a_part_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("q.db"), EmbeddedSync::Normal).unwrap();
        let queue = db.queue("q");
        queue.send(numbered(10)).await.unwrap();
        let mut sizes = Vec::new();
        let mut got = Vec::new();
        loop {
            let some = queue.receive(options(3)).await.unwrap();
            if some.is_empty() {
                break;
            }
            sizes.push(some.len());
            got.extend(some);
        }
        assert_eq!(sizes, [3, 3, 3, 1]);
        let mut all = numbers(&got);
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        let receipts: Vec<Receipt> = got.iter().map(|m| m.receipt.clone()).collect();
        queue.ack(&receipts).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), Depth::default());
    }

    /// A row received too often goes to the dead letters with the messages it still holds,
    /// bodies and attributes intact; the ones acknowledged stay done.
    #[tokio::test]
    async fn a_row_past_its_receives_takes_only_what_is_left_to_the_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("q.db"), EmbeddedSync::Normal).unwrap();
        let queue = db.queue_with_dead_letter("q", 1, "q-dlq");
        queue.send(numbered(10)).await.unwrap();
        let short = ReceiveOptions {
            visibility: Duration::from_millis(300),
            ..options(10)
        };
        let got = queue.receive(short).await.unwrap();
        let done: Vec<Receipt> = got[..4].iter().map(|m| m.receipt.clone()).collect();
        queue.ack(&done).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(queue.receive(options(10)).await.unwrap().is_empty());
        let dead = receive_all(&queue.dead_letter().unwrap()).await;
        assert_eq!(numbers(&dead), (4..10).collect::<Vec<_>>());
        assert_eq!(dead[0].body, Bytes::from("body 4"));
    }

    /// A database whose rows predate packing (one message a row, no part columns) opens, keeps
    /// its messages, and takes packed sends beside them.
    #[tokio::test]
    async fn a_database_from_before_packing_keeps_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        {
            let db = EmbeddedDb::open(&path, EmbeddedSync::Normal).unwrap();
            db.queue("q")
                .send(vec![Message::new("old").with_attribute("n", "0")])
                .await
                .unwrap();
        }
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "ALTER TABLE entries DROP COLUMN parts; ALTER TABLE entries DROP COLUMN acked;
                 ALTER TABLE entries DROP COLUMN done;",
            )
            .unwrap();
        let db = EmbeddedDb::open(&path, EmbeddedSync::Normal).unwrap();
        let queue = db.queue("q");
        queue.send(numbered(3)).await.unwrap();
        let got = receive_all(&queue).await;
        assert_eq!(got[0].body, Bytes::from("old"));
        assert_eq!(numbers(&got), vec![0, 0, 1, 2]);
        let receipts: Vec<Receipt> = got.iter().map(|m| m.receipt.clone()).collect();
        queue.ack(&receipts).await.unwrap();
        assert_eq!(rows(&path), 0);
    }

    /// Under a size cap, a queue that filled and drained takes sends again: acknowledgements
    /// give the space back, the active segment's too.
    #[tokio::test]
    async fn a_full_queue_takes_sends_again_once_drained() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(&dir.path().join("q.db"), EmbeddedSync::Normal).unwrap();
        // At 64 KiB the active segment can hold the whole cap: only closing it frees it.
        db.set_max_size(Some(64 * 1024)).await.unwrap();
        let queue = db.queue("q");
        let message = || vec![Message::new(vec![b'x'; 8 * 1024])];
        let mut sent = 0;
        while queue.send(message()).await.is_ok() {
            sent += 1;
            assert!(sent < 100, "the cap holds");
        }
        let got = receive_all(&queue).await;
        assert_eq!(got.len(), sent);
        let receipts: Vec<Receipt> = got.iter().map(|m| m.receipt.clone()).collect();
        queue.ack(&receipts).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut taken = false;
        while !taken && Instant::now() < deadline {
            taken = queue.send(message()).await.is_ok();
            if !taken {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(taken, "still full after every message was acknowledged");
    }
}
