//! The S3 source: mParticle's Amazon S3 output, read through the bucket's `s3:ObjectCreated:*`
//! notifications on SQS.
//!
//! Each object is newline-delimited JSON, one outbound-dialect batch a line, optionally gzip
//! (detected by its magic bytes: mParticle does not document the extension). Every good line
//! becomes one message on the ingest queue; a bad line goes to the dead-letter queue with its
//! key, line number and error, and costs its neighbours nothing. The notification is deleted
//! only once every line of its object is queued; meanwhile a heartbeat keeps it invisible, so a
//! slow object is not handed to a second consumer. Redelivery is harmless: each batch carries a
//! stable id from bucket, key, ETag and line, by which the transform drops the repeat.

mod backfill;
mod config;
pub mod notification;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client as S3Client;
use prost::Message as _;
use runtime::envelope::{self, IngestEnvelope, S3Origin, content_type};
use runtime::queue::Heartbeat;
use runtime::store::S3Store;
use runtime::telemetry::TraceContext;
use runtime::{
    AnyQueue, Message, ObjectStore, Queue, QueueError, ReceiveOptions, Received, StageQueue,
    StoreError, now_ms,
};
use sha2::Digest;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

pub use backfill::{BackfillProgress, BackfillSummary, backfill};
pub use config::S3SourceConfig;
pub use notification::{Notification, ObjectRef, is_verification_file};

#[derive(Debug, Clone)]
pub struct S3SourceSettings {
    /// The source id carried with every batch.
    pub source_id: String,
    /// Objects read at once.
    pub concurrency: usize,
    /// How long a notification stays invisible; the heartbeat renews it every third of it.
    pub visibility: Duration,
    /// A longer line is a bad line (a runaway file must not exhaust memory).
    pub max_line_bytes: usize,
    /// Caps the pace (lines per second, over all objects), so a backfill does not swamp the
    /// pipeline. `None`: as fast as the queue takes them.
    pub max_lines_per_second: Option<u32>,
}

impl Default for S3SourceSettings {
    fn default() -> Self {
        S3SourceSettings {
            source_id: "mparticle-s3".into(),
            concurrency: 4,
            visibility: Duration::from_secs(60),
            max_line_bytes: 8 * 1024 * 1024,
            max_lines_per_second: None,
        }
    }
}

/// What reading one object did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ObjectSummary {
    pub lines: u64,
    pub batches: u64,
    pub events: u64,
    pub bad_lines: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum S3SourceError {
    #[error("reading the object: {0}")]
    Store(#[from] StoreError),
    #[error("reading the object: {0}")]
    Read(#[from] std::io::Error),
    #[error("queueing: {0}")]
    Queue(#[from] QueueError),
}

/// Counters for operators and tests.
#[derive(Debug, Default)]
pub struct S3SourceStats {
    pub notifications: AtomicU64,
    pub objects: AtomicU64,
    pub batches: AtomicU64,
    pub bad_lines: AtomicU64,
}

#[derive(Clone)]
pub struct S3Source {
    inner: Arc<SourceInner>,
}

struct SourceInner {
    settings: S3SourceSettings,
    s3: S3Client,
    /// None for a source that only backfills.
    notifications: Option<AnyQueue>,
    queue: StageQueue,
    dead_letter: Option<StageQueue>,
    pace: Option<tokio::sync::Mutex<Instant>>,
    stats: S3SourceStats,
}

impl S3Source {
    pub fn new(
        settings: S3SourceSettings,
        s3: S3Client,
        notifications: AnyQueue,
        queue: StageQueue,
        dead_letter: Option<StageQueue>,
    ) -> Self {
        Self::build(settings, s3, Some(notifications), queue, dead_letter)
    }

    /// A source that reads objects it is given ([`backfill`]), without a notification queue.
    pub fn for_backfill(
        settings: S3SourceSettings,
        s3: S3Client,
        queue: StageQueue,
        dead_letter: Option<StageQueue>,
    ) -> Self {
        Self::build(settings, s3, None, queue, dead_letter)
    }

    fn build(
        settings: S3SourceSettings,
        s3: S3Client,
        notifications: Option<AnyQueue>,
        queue: StageQueue,
        dead_letter: Option<StageQueue>,
    ) -> Self {
        runtime::telemetry::metrics();
        let pace = settings
            .max_lines_per_second
            .map(|_| tokio::sync::Mutex::new(Instant::now()));
        S3Source {
            inner: Arc::new(SourceInner {
                settings,
                s3,
                notifications,
                queue,
                dead_letter,
                pace,
                stats: S3SourceStats::default(),
            }),
        }
    }

    pub fn stats(&self) -> &S3SourceStats {
        &self.inner.stats
    }

    /// Consumes notifications until `shutdown` resolves, then finishes the objects in hand.
    /// A source made [`for_backfill`](Self::for_backfill) has none and returns at once.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        let Some(notifications) = &self.inner.notifications else {
            tracing::error!("this S3 source has no notification queue to consume");
            return;
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.inner.settings.concurrency.max(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let free = permits.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tasks.join_next() => continue,
                }
            }
            let options = ReceiveOptions {
                max_messages: free.min(10),
                wait: Duration::from_secs(1),
                visibility: self.inner.settings.visibility,
            };
            let received = tokio::select! {
                _ = &mut shutdown => break,
                r = notifications.receive(options) => r,
            };
            let messages = match received {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot receive S3 notifications; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for message in messages {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let this = self.clone();
                tasks.spawn(async move {
                    runtime::guard::guarded("s3 source", this.handle(message)).await;
                    drop(permit);
                });
            }
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One notification: read its objects, then delete it; on failure let it come back.
    async fn handle(&self, message: Received) {
        let Some(notifications) = &self.inner.notifications else {
            return;
        };
        let stats = &self.inner.stats;
        stats.notifications.fetch_add(1, Ordering::Relaxed);
        let objects = match notification::parse(&message.body) {
            Ok(Notification::Test) => Vec::new(),
            Ok(Notification::Objects(objects)) => objects,
            Err(e) => {
                // Not ours to understand: keep it for a person, do not let it circle.
                tracing::error!(error = %e, "an unreadable S3 notification goes to the dead-letter queue");
                if let Some(dlq) = &self.inner.dead_letter {
                    let kept = IngestEnvelope::new(&self.inner.settings.source_id, "")
                        .to_message(message.body.clone());
                    let kept = envelope::rejected(kept, &e.to_string());
                    if dlq.send(vec![kept]).await.is_err() {
                        return self.retry_later(&message).await;
                    }
                }
                let _ = notifications.ack(&[message.receipt]).await;
                return;
            }
        };

        let heartbeat = self.inner.notifications.as_ref().map(|queue| {
            Heartbeat::start(
                queue,
                vec![message.receipt.clone()],
                self.inner.settings.visibility,
                "S3 notification",
            )
        });
        for object in objects {
            if is_verification_file(&object.key) {
                tracing::debug!(
                    key = object.key,
                    "skipping mParticle's bucket verification file"
                );
                continue;
            }
            match self.read_object(&object).await {
                Ok(summary) => {
                    stats.objects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        bucket = object.bucket,
                        key = object.key,
                        ?summary,
                        "object read"
                    );
                }
                Err(S3SourceError::Store(StoreError::NotFound(_))) => {
                    tracing::warn!(
                        bucket = object.bucket,
                        key = object.key,
                        "object gone before it was read"
                    );
                }
                Err(e) => {
                    tracing::warn!(bucket = object.bucket, key = object.key, error = %e, "object not read; it will come back");
                    drop(heartbeat);
                    return self.retry_later(&message).await;
                }
            }
        }
        drop(heartbeat);
        if let Err(e) = notifications.ack(&[message.receipt]).await {
            tracing::warn!(error = %e, "cannot delete an S3 notification; its object may be read again");
        }
    }

    async fn retry_later(&self, message: &Received) {
        let delay = Duration::from_secs(10 * u64::from(message.receive_count.min(30)));
        if let Some(notifications) = &self.inner.notifications {
            let _ = notifications.nack(&message.receipt, delay).await;
        }
    }

    /// Reads one object line by line into the ingest queue (and bad lines into the DLQ).
    pub async fn read_object(&self, object: &ObjectRef) -> Result<ObjectSummary, S3SourceError> {
        let store = S3Store::new(self.inner.s3.clone(), object.bucket.clone());
        let reader = BufReader::with_capacity(256 * 1024, store.get(&object.key).await?);
        let mut lines = decompressed(reader).await?;
        let settings = &self.inner.settings;
        let location = format!("s3://{}/{}", object.bucket, object.key);
        // One trace per object; each batch (line) is a span in it.
        let mut object_span = runtime::pipeline_span!(
            "s3 object",
            Consumer,
            parent: None,
            "mpconnect.stage" = "ingest",
            "source" = settings.source_id.clone(),
            "object" = location.clone(),
        );
        let trace = object_span.context().unwrap_or_else(TraceContext::start);
        let etag = object.etag.clone().unwrap_or_default();
        let now = now_ms();

        let mut summary = ObjectSummary::default();
        let mut queued = Vec::with_capacity(10);
        let mut dead = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let (read, complete) =
                read_line(&mut lines, &mut line, settings.max_line_bytes).await?;
            if read == 0 {
                break;
            }
            summary.lines += 1;
            let number = summary.lines;
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            self.pace().await;
            let checked = if complete {
                crate::http::check_batch(text)
            } else {
                Err(vec![format!(
                    "the line exceeds {} bytes",
                    settings.max_line_bytes
                )])
            };
            let batch_span = runtime::pipeline_span!(
                "ingest",
                Internal,
                parent: Some(&trace),
                "mpconnect.stage" = "ingest",
                "source" = settings.source_id.clone(),
                "line" = number as i64,
                "bytes" = text.len() as i64,
                "outcome" = if checked.is_ok() {
                    "queued"
                } else {
                    "dead_lettered"
                },
            );
            let traceparent = batch_span
                .context()
                .map(|t| t.traceparent)
                .unwrap_or_else(|| child_span(&trace));
            let envelope_for = |content_type: &str| IngestEnvelope {
                traceparent: Some(traceparent.clone()),
                received_at_ms: Some(now),
                endpoint: Some("s3".into()),
                s3_origin: Some(S3Origin {
                    object: location.clone(),
                    line: number,
                }),
                ..IngestEnvelope::new(&settings.source_id, content_type)
            };
            match checked {
                Ok(batch) => {
                    summary.batches += 1;
                    summary.events += batch.events.len() as u64;
                    let envelope = IngestEnvelope {
                        batch_id: Some(batch_id(&object.bucket, &object.key, &etag, number)),
                        ..envelope_for(content_type::BATCH)
                    };
                    queued.push(envelope.to_message(batch.encode_to_vec()));
                }
                Err(errors) => {
                    summary.bad_lines += 1;
                    let because = errors.join("; ");
                    tracing::warn!(
                        object = location,
                        line = number,
                        because,
                        "bad line to the dead-letter queue"
                    );
                    let mut kept = text.to_vec();
                    kept.truncate(settings.max_line_bytes);
                    dead.push(envelope::rejected(
                        envelope_for(content_type::JSON).to_message(kept),
                        &because,
                    ));
                }
            }
            if queued.len() >= 10 {
                self.inner.queue.send(std::mem::take(&mut queued)).await?;
            }
            if dead.len() >= 10 {
                self.dead_letter(std::mem::take(&mut dead)).await?;
            }
        }
        if !queued.is_empty() {
            self.inner.queue.send(queued).await?;
        }
        if !dead.is_empty() {
            self.dead_letter(dead).await?;
        }
        let stats = &self.inner.stats;
        stats.batches.fetch_add(summary.batches, Ordering::Relaxed);
        stats
            .bad_lines
            .fetch_add(summary.bad_lines, Ordering::Relaxed);
        let source = settings.source_id.clone();
        metrics::counter!("mpconnect_ingest_batches_total", "source" => source.clone(), "outcome" => "queued").increment(summary.batches);
        metrics::counter!("mpconnect_ingest_batches_total", "source" => source.clone(), "outcome" => "dead_lettered").increment(summary.bad_lines);
        metrics::counter!("mpconnect_ingest_events_total", "source" => source)
            .increment(summary.events);
        object_span.record("lines", summary.lines as i64);
        object_span.record("batches", summary.batches as i64);
        object_span.record("bad_lines", summary.bad_lines as i64);
        Ok(summary)
    }

    async fn dead_letter(&self, messages: Vec<Message>) -> Result<(), QueueError> {
        match &self.inner.dead_letter {
            Some(dlq) => dlq.send(messages).await,
            None => {
                tracing::warn!(
                    count = messages.len(),
                    "bad lines dropped: no dead-letter queue is configured"
                );
                Ok(())
            }
        }
    }

    /// Waits for this line's turn under `max_lines_per_second`.
    async fn pace(&self) {
        let (Some(pace), Some(rate)) = (&self.inner.pace, self.inner.settings.max_lines_per_second)
        else {
            return;
        };
        let at = {
            let mut next = pace.lock().await;
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// gzip by its magic bytes, whatever the object's name says.
async fn decompressed<R: AsyncBufRead + Unpin + Send + 'static>(
    mut reader: R,
) -> std::io::Result<Box<dyn AsyncBufRead + Unpin + Send>> {
    let head = reader.fill_buf().await?;
    if head.starts_with(&[0x1f, 0x8b]) {
        let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(reader);
        decoder.multiple_members(true);
        Ok(Box::new(BufReader::with_capacity(256 * 1024, decoder)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Reads through the next newline, keeping at most `max` bytes of it. Returns the bytes read
/// (0 at the end) and whether the whole line was kept.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool)> {
    let mut read = 0;
    let mut complete = true;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((read, complete));
        }
        let (chunk, done) = match memchr(b'\n', buf) {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let room = max.saturating_sub(line.len());
        if chunk.len() > room {
            complete = false;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        read += used;
        reader.consume(used);
        if done {
            return Ok((read, complete));
        }
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// One trace per object, one span id per batch.
fn child_span(trace: &TraceContext) -> String {
    format!(
        "00-{}-{:016x}-01",
        trace.trace_id(),
        rand::random::<u64>().max(1)
    )
}

/// Stable across redeliveries of the same object version.
pub fn batch_id(bucket: &str, key: &str, etag: &str, line: u64) -> String {
    let mut hash = sha2::Sha256::new();
    for part in [bucket, key, etag, &line.to_string()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
