//! The embedded queue: durable on local disk, for `mpconnect all` on one box.
//!
//! Built on SQLite (rusqlite with the bundled library) rather than a hand-made file format:
//! - each send, receive and ack is one ACID transaction, and in WAL mode a committed
//!   transaction is in the log file before `COMMIT` returns, so it survives a `kill -9`;
//! - one writer at a time is exactly what one process owning its data directory needs;
//! - it is the most tested embedded store there is, and an operator can open the file with
//!   `sqlite3` to look at a stuck message, which a key-value store such as redb cannot offer.
//!
//! Many queues (ingest, retry queues, dead-letter queues) share one database file.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

use super::{Depth, Message, Queue, QueueError, Receipt, ReceiveOptions, Received};
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
    /// To the writer thread, which owns the connection.
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
    /// Woken on every send or nack, so long-polling receivers need not spin.
    changed: Notify,
}

/// Work for the writer thread: runs inside the open transaction and returns what to do once
/// the transaction's fate is known.
type Job = Box<dyn FnOnce(&Connection) -> Finish + Send>;
type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Copies the WAL into the database every so often, without blocking the writer (PASSIVE),
/// until the database is dropped.
fn checkpointer(conn: Connection, alive: std::sync::Weak<Inner>) {
    while alive.strong_count() > 0 {
        std::thread::sleep(Duration::from_millis(250));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "embedded queue: checkpoint failed");
        }
    }
}

/// Most jobs one transaction takes; more wait for the next.
const GROUP_COMMIT_MAX: usize = 64;

/// The writer thread: group commit. It takes every job waiting, runs each in a savepoint of
/// one transaction, commits once, and only then answers each. Concurrent senders, receivers
/// and ackers share a commit instead of queueing for one each; nobody hears "done" before the
/// data is committed.
fn writer(conn: Connection, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = run_cached(&conn, "BEGIN IMMEDIATE") {
            // Dropping the jobs unrun tells each caller it failed.
            tracing::error!(error = %e, jobs = batch.len(), "embedded queue: cannot begin a transaction");
            continue;
        }
        let finishers: Vec<Finish> = batch.into_iter().map(|job| job(&conn)).collect();
        let committed = run_cached(&conn, "COMMIT").map_err(|e| e.to_string());
        if committed.is_err() {
            let _ = run_cached(&conn, "ROLLBACK");
        }
        for finish in finishers {
            finish(committed.clone());
        }
    }
}

/// The state a receive changes (visibility, receive count) sits apart from the bodies, so a
/// receive rewrites a few small rows instead of every 1 KB body: bodies are written once, on
/// send, and deleted once, on ack.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS messages (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        queue         TEXT    NOT NULL,
        sent_at       INTEGER NOT NULL,
        visible_at    INTEGER NOT NULL,
        receive_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, id);
    CREATE TABLE IF NOT EXISTS bodies (
        id         INTEGER PRIMARY KEY,
        body       BLOB NOT NULL,
        attributes TEXT NOT NULL
    );
";

fn db_error(e: rusqlite::Error) -> QueueError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return QueueError::Unavailable("embedded queue: full (its size cap or the disk)".into());
    }
    QueueError::Unavailable(format!("embedded queue: {e}"))
}

impl EmbeddedDb {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, sync: EmbeddedSync) -> Result<Self, QueueError> {
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
        // Every statement the writer runs stays prepared (the default cache of 16 is smaller
        // than the set, and a miss re-parses the SQL).
        conn.set_prepared_statement_cache_capacity(64);
        let checkpoints = Connection::open(path).map_err(db_error)?;
        checkpoints
            .execute_batch("PRAGMA busy_timeout = 5000")
            .map_err(db_error)?;
        let (jobs, queued) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("embedded-queue".into())
            .spawn(move || writer(conn, queued))
            .map_err(|e| QueueError::Config(format!("cannot start the queue writer: {e}")))?;
        let inner = Arc::new(Inner {
            jobs: Mutex::new(jobs),
            changed: Notify::new(),
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
        self.run(move |conn| {
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
            redrive: Some((max_receives.max(1), dead_letter.into())),
        }
    }

    /// Runs `work` on the writer thread, in a savepoint of the next group commit, and answers
    /// once that commit is done.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = in_savepoint(conn, work);
            Box::new(move |committed| {
                let _ = answer.send(match committed {
                    Ok(()) => result,
                    Err(e) => Err(QueueError::Unavailable(format!(
                        "embedded queue commit: {e}"
                    ))),
                });
            })
        });
        let sent = self
            .inner
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .send(job);
        if sent.is_err() {
            return Err(QueueError::Unavailable(
                "the embedded queue writer has stopped".into(),
            ));
        }
        answered
            .await
            .map_err(|_| QueueError::Unavailable("the embedded queue writer has stopped".into()))?
    }
}

/// Runs a statement from the connection's cache: the writer runs the same few control
/// statements for every job, and parsing them each time cost more than running them.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs one job so that its failure undoes only its own changes.
fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, QueueError>,
) -> Result<T, QueueError> {
    run_cached(conn, "SAVEPOINT job").map_err(db_error)?;
    let result = work(conn);
    if result.is_err() {
        run_cached(conn, "ROLLBACK TO job").map_err(db_error)?;
    }
    run_cached(conn, "RELEASE job").map_err(db_error)?;
    result
}

/// A queue in an [`EmbeddedDb`].
#[derive(Clone)]
pub struct EmbeddedQueue {
    db: EmbeddedDb,
    name: Arc<str>,
    redrive: Option<(u32, Arc<str>)>,
}

impl EmbeddedQueue {
    /// The dead-letter queue, if this queue has one.
    pub fn dead_letter(&self) -> Option<EmbeddedQueue> {
        self.redrive.as_ref().map(|(_, dlq)| self.db.queue(dlq))
    }
}

/// A receipt names the row and the receive it came from, so a stale one cannot touch a
/// message that has since been received again.
fn receipt(id: i64, receive_count: i64) -> Receipt {
    Receipt(format!("{id}.{receive_count}"))
}

fn parse_receipt(receipt: &Receipt) -> Result<(i64, i64), QueueError> {
    receipt
        .0
        .split_once('.')
        .and_then(|(id, count)| Some((id.parse().ok()?, count.parse().ok()?)))
        .ok_or_else(|| {
            QueueError::Rejected(format!("not an embedded queue receipt: {}", receipt.0))
        })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One receive, in one transaction: take up to `max` visible messages, oldest first, and make
/// them invisible; those received too often already go to the dead-letter queue instead.
/// Returns the messages, whether any were dead-lettered, and, when there were none, the time
/// the next one becomes visible.
fn receive_now(
    tx: &Connection,
    queue: &str,
    redrive: Option<&(u32, Arc<str>)>,
    max: usize,
    visibility_ms: i64,
) -> Result<(Vec<Received>, Option<i64>, bool), QueueError> {
    let now = now_ms();
    let mut out = Vec::with_capacity(max);
    let mut dead_lettered = false;
    while out.len() < max {
        // Select and claim in one statement.
        let mut claimed: Vec<(i64, i64, i64)> = {
            let mut claim = tx
                .prepare_cached(
                    "UPDATE messages SET visible_at = ?1, receive_count = receive_count + 1
                     WHERE id IN (SELECT id FROM messages WHERE queue = ?2 AND visible_at <= ?3
                                  ORDER BY visible_at, id LIMIT ?4)
                     RETURNING id, sent_at, receive_count",
                )
                .map_err(db_error)?;
            claim
                .query_map(
                    params![now + visibility_ms, queue, now, (max - out.len()) as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(db_error)?
                .collect::<Result<_, _>>()
                .map_err(db_error)?
        };
        if claimed.is_empty() {
            break;
        }
        claimed.sort_unstable_by_key(|row| row.0);
        let mut moved_any = false;
        for (id, sent_at, count) in claimed {
            if let Some((max_receives, dead_letter)) = redrive
                && count > i64::from(*max_receives)
            {
                tx.prepare_cached(
                    "UPDATE messages SET queue = ?1, visible_at = 0, receive_count = 0 WHERE id = ?2",
                )
                .and_then(|mut s| s.execute(params![&**dead_letter, id]))
                .map_err(db_error)?;
                moved_any = true;
                dead_lettered = true;
                continue;
            }
            let (body, attributes): (Vec<u8>, String) = tx
                .prepare_cached("SELECT body, attributes FROM bodies WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?))))
                .map_err(db_error)?;
            out.push(Received {
                message_id: id.to_string(),
                receipt: receipt(id, count),
                body: Bytes::from(body),
                attributes: serde_json::from_str(&attributes).unwrap_or_default(),
                receive_count: u32::try_from(count).unwrap_or(u32::MAX),
                sent_at_ms: sent_at,
            });
        }
        // Only dead-lettering leaves room to fill; otherwise that was all there was.
        if !moved_any {
            break;
        }
    }
    let next_visible = if out.is_empty() {
        tx.prepare_cached("SELECT MIN(visible_at) FROM messages WHERE queue = ?1")
            .and_then(|mut s| s.query_row(params![queue], |r| r.get::<_, Option<i64>>(0)))
            .map_err(db_error)?
    } else {
        None
    };
    Ok((out, next_visible, dead_lettered))
}

impl Queue for EmbeddedQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, messages: Vec<Message>) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Ok(());
        }
        let queue = self.name.clone();
        self.db
            .run(move |tx| {
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO messages (queue, sent_at, visible_at) VALUES (?1, ?2, ?3)",
                        )
                        .map_err(db_error)?;
                    let mut insert_body = tx
                        .prepare_cached(
                            "INSERT INTO bodies (id, body, attributes) VALUES (?1, ?2, ?3)",
                        )
                        .map_err(db_error)?;
                    let now = now_ms();
                    for m in &messages {
                        let attributes = serde_json::to_string(&m.attributes)
                            .map_err(|e| QueueError::Rejected(e.to_string()))?;
                        insert
                            .execute(params![&*queue, now, now + millis(m.delay)])
                            .map_err(db_error)?;
                        let id = tx.last_insert_rowid();
                        insert_body
                            .execute(params![id, &m.body[..], attributes])
                            .map_err(db_error)?;
                    }
                }
                Ok(())
            })
            .await?;
        self.db.inner.changed.notify_waiters();
        Ok(())
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Received>, QueueError> {
        let max = options.max_messages.clamp(1, 10);
        let visibility_ms = millis(options.visibility);
        let deadline = Instant::now() + options.wait;
        loop {
            // Registered before looking, so a send in between is not missed.
            let changed = self.db.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();

            let queue = self.name.clone();
            let redrive = self.redrive.clone();
            let (messages, next_visible, dead_lettered) = self
                .db
                .run(move |conn| receive_now(conn, &queue, redrive.as_ref(), max, visibility_ms))
                .await?;
            if dead_lettered {
                self.db.inner.changed.notify_waiters();
            }
            if !messages.is_empty() {
                return Ok(messages);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(messages);
            }
            let mut wake = deadline;
            if let Some(at) = next_visible {
                let in_ms = (at - now_ms()).max(1) as u64;
                wake = wake.min(now + Duration::from_millis(in_ms));
            }
            tokio::select! {
                _ = &mut changed => {}
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
            .run(move |tx| {
                {
                    let mut delete = tx
                        .prepare_cached("DELETE FROM messages WHERE id = ?1 AND receive_count = ?2")
                        .map_err(db_error)?;
                    let mut delete_body = tx
                        .prepare_cached("DELETE FROM bodies WHERE id = ?1")
                        .map_err(db_error)?;
                    for (id, count) in keys {
                        // A receipt from an earlier receive deletes nothing: the message is
                        // with another consumer now, who will ack it.
                        if delete.execute(params![id, count]).map_err(db_error)? > 0 {
                            delete_body.execute(params![id]).map_err(db_error)?;
                        }
                    }
                }
                Ok(())
            })
            .await
    }

    async fn nack(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        self.set_visible_at(receipt, delay).await?;
        if delay.is_zero() {
            self.db.inner.changed.notify_waiters();
        }
        Ok(())
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), QueueError> {
        self.set_visible_at(receipt, visibility).await
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        let queue = self.name.clone();
        self.db
            .run(move |conn| {
                let now = now_ms();
                conn.query_row(
                    "SELECT COALESCE(SUM(visible_at <= ?2), 0),
                            COALESCE(SUM(visible_at > ?2 AND receive_count > 0), 0),
                            COALESCE(SUM(visible_at > ?2 AND receive_count = 0), 0)
                     FROM messages WHERE queue = ?1",
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
    /// Moves a message's visibility to `from_now` later, if this receipt still holds it.
    async fn set_visible_at(
        &self,
        receipt: &Receipt,
        from_now: Duration,
    ) -> Result<(), QueueError> {
        let (id, count) = parse_receipt(receipt)?;
        let changed = self
            .db
            .run(move |conn| {
                let now = now_ms();
                conn.prepare_cached(
                    "UPDATE messages SET visible_at = ?1
                     WHERE id = ?2 AND receive_count = ?3 AND visible_at > ?4",
                )
                .and_then(|mut s| s.execute(params![now + millis(from_now), id, count, now]))
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
            .run(move |conn| {
                conn.query_row(
                    "SELECT MIN(sent_at) FROM messages WHERE queue = ?1",
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
