//! The HTTP source: mParticle's Events API and Webhook output, answered as mParticle answers.
//!
//! Every accepted batch becomes one queue message (protobuf `mpconnect.v1.Batch`), carrying the
//! source, receive time and trace context as attributes. `202` comes only after every batch of
//! the request is in the queue.

mod auth;
mod body;
mod config;
mod error;
mod handlers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use runtime::{Queue, StageQueue};

pub use config::{DEFAULT_MAX_BACKLOG, HttpSource, HttpSourceConfig, IngestSettings};
pub use error::ApiError;

/// Decodes and validates one batch (either dialect), as mParticle would. Errors are
/// messages for the sender.
pub(crate) fn check_batch(json: &[u8]) -> Result<schema::v1::Batch, Vec<String>> {
    let (batch, _) = read_batch(json)?;
    schema::validate(&batch).map_err(messages)?;
    Ok(batch)
}

/// Decodes one batch, and whether its bytes mean what its encoding does (see
/// `schema::parse_batch_as_sent`).
pub(crate) fn read_batch(json: &[u8]) -> Result<(schema::v1::Batch, bool), Vec<String>> {
    schema::parse_batch_as_sent(json).map_err(|e| vec![format!("Malformed batch: {e}")])
}

pub(crate) fn messages(errors: Vec<schema::ValidationError>) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

/// The running HTTP source; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
}

struct Inner {
    settings: IngestSettings,
    queue: StageQueue,
    /// Where refused batches of a bulk request go (the rest of the request is accepted, as
    /// mParticle does), so that bad input never costs the good data beside it and stays
    /// inspectable.
    dead_letter: Option<StageQueue>,
    /// The queue's backlog, refreshed in the background (asking SQS per request would cost
    /// a round trip per request).
    backlog: AtomicU64,
    /// Batches queued since the backlog was last read: added to it, so a burst between two
    /// reads is seen at once.
    queued_since_read: AtomicU64,
    /// Held while the backlog is read (one read at a time), with when it was last read or
    /// tried.
    backlog_read: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    /// Wakes the requests waiting past the bound after each read of the backlog.
    backlog_was_read: tokio::sync::Notify,
    /// Permits for requests past the gate (`IngestSettings::max_in_flight`).
    in_flight: tokio::sync::Semaphore,
    /// Set when shutdown begins: readiness fails so the endpoints drop this pod.
    draining: std::sync::atomic::AtomicBool,
}

impl Ingest {
    pub fn new(
        settings: IngestSettings,
        queue: StageQueue,
        dead_letter: Option<StageQueue>,
    ) -> Self {
        // The recorder must exist before the first request counts anything.
        runtime::telemetry::metrics();
        Ingest {
            inner: Arc::new(Inner {
                queue,
                dead_letter,
                backlog: AtomicU64::new(0),
                queued_since_read: AtomicU64::new(0),
                backlog_read: tokio::sync::Mutex::new(None),
                backlog_was_read: tokio::sync::Notify::new(),
                in_flight: tokio::sync::Semaphore::new(settings.max_in_flight.max(1)),
                draining: Default::default(),
                settings,
            }),
        }
    }

    /// The routes: the Events API with and without `/v2` (the Python SDK posts to the bare
    /// paths when its host lacks `/v2`), the webhook, and health and metrics.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v2/events", post(handlers::events))
            .route("/events", post(handlers::events))
            .route("/v2/bulkevents", post(handlers::bulk))
            .route("/bulkevents", post(handlers::bulk))
            .route("/v2/bulkevents/historical", post(handlers::historical))
            .route("/bulkevents/historical", post(handlers::historical))
            .route("/webhook/{source}", post(handlers::webhook))
            .route("/healthz", get(handlers::healthz))
            .route("/readyz", get(handlers::readyz))
            .route("/metrics", get(handlers::metrics))
            .with_state(self.clone())
    }

    /// Keeps the backlog figure fresh for back-pressure and the depth gauge. Runs until the
    /// returned task is aborted.
    pub fn spawn_backlog_monitor(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let mut last_read = this.inner.backlog_read.lock().await;
                this.read_backlog(&mut last_read).await;
                drop(last_read);
                tokio::time::sleep(this.inner.settings.backlog_refresh).await;
            }
        })
    }

    /// Reads the queue's depth into the backlog figure, with `backlog_read` held.
    async fn read_backlog(&self, last_read: &mut Option<tokio::time::Instant>) {
        // What is queued while the depth is read may or may not be in it: it stays counted
        // (a moment's overcount) rather than be forgotten.
        let queued_before = self.inner.queued_since_read.load(Ordering::Relaxed);
        let depth = self.inner.queue.depth().await;
        // A failed read counts too: the waiting requests would otherwise try it (and log its
        // failure) one after another, back to back, while the queue is unreachable.
        *last_read = Some(tokio::time::Instant::now());
        match depth {
            Ok(depth) => {
                let backlog = depth.visible + depth.delayed;
                self.inner.backlog.store(backlog, Ordering::Relaxed);
                self.inner
                    .queued_since_read
                    .fetch_sub(queued_before, Ordering::Relaxed);
                self.inner.backlog_was_read.notify_waiters();
                metrics::gauge!("mpconnect_queue_depth", "queue" => "ingest", "state" => "visible")
                    .set(depth.visible as f64);
                metrics::gauge!("mpconnect_queue_depth", "queue" => "ingest", "state" => "in_flight")
                    .set(depth.in_flight as f64);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the ingest queue's depth"),
        }
    }

    /// Reads the backlog now if no read is under way and the last (or the last try) is older
    /// than `backlog_recheck`.
    async fn recheck_backlog(&self) {
        let Ok(mut last_read) = self.inner.backlog_read.try_lock() else {
            return;
        };
        if last_read.is_some_and(|at| at.elapsed() < self.inner.settings.backlog_recheck) {
            return;
        }
        self.read_backlog(&mut last_read).await;
    }

    /// Serves until `shutdown` resolves, then stops taking connections and finishes the
    /// requests in flight.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let monitor = self.spawn_backlog_monitor();
        let this = self.clone();
        let served = axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                shutdown.await;
                this.inner.draining.store(true, Ordering::Relaxed);
            })
            .await;
        monitor.abort();
        served
    }

    /// Whether shutdown has begun.
    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    fn backlog(&self) -> u64 {
        self.inner.backlog.load(Ordering::Relaxed)
            + self.inner.queued_since_read.load(Ordering::Relaxed)
    }

    /// Whether the backlog is at most `max`, now or within the backlog wait.
    async fn backlog_below(&self, max: u64) -> bool {
        let deadline = tokio::time::Instant::now() + self.inner.settings.backlog_wait;
        loop {
            if self.backlog() <= max {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Between reads the figure only grows (every batch queued is added, none taken
            // away), so past the bound it is read again while requests wait on it: waiting
            // for the periodic read held them up to `backlog_refresh`, and capped the
            // pipeline at `max_backlog` batches per `backlog_refresh` (10,000 per 500 ms by
            // default; 2,000 a second with a bound of 1,000). One waiter reads; the others
            // wake when it has (registered first, so that read is not missed).
            let was_read = self.inner.backlog_was_read.notified();
            tokio::pin!(was_read);
            was_read.as_mut().enable();
            self.recheck_backlog().await;
            if self.backlog() <= max {
                return true;
            }
            let recheck = self.inner.settings.backlog_recheck;
            let _ = tokio::time::timeout(recheck, was_read).await;
        }
    }

    /// A place among the requests being decoded and queued, within the backlog wait; `None`
    /// past it (the sender is told to come back).
    async fn admit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(
            self.inner.settings.backlog_wait,
            self.inner.in_flight.acquire(),
        )
        .await
        .ok()?
        .ok()
    }

    fn queued(&self, batches: usize) {
        self.inner
            .queued_since_read
            .fetch_add(batches as u64, Ordering::Relaxed);
    }

    /// How long a sender should wait after a 429 or 503.
    fn retry_after(&self) -> Duration {
        self.inner.settings.retry_after
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn at_most_max_in_flight_requests_are_in_hand() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) =
            runtime::queue::local_data(dir.path(), runtime::queue::EmbeddedSync::Normal).unwrap();
        let queue = runtime::queue::embedded_stage_queue(&db, "ingest", &store);
        let settings = IngestSettings {
            max_in_flight: 1,
            backlog_wait: Duration::from_millis(200),
            ..IngestSettings::default()
        };
        let ingest = Ingest::new(settings, queue, None);
        let first = ingest.admit().await.expect("a place");
        let started = Instant::now();
        assert!(ingest.admit().await.is_none(), "no second place");
        assert!(started.elapsed() >= Duration::from_millis(200), "it waited");
        drop(first);
        assert!(ingest.admit().await.is_some(), "a place again");
    }
}
