//! A counting stand-in for mParticle's Events API: `POST /v2/bulkevents` (and `/historical`)
//! with HTTP Basic, answered 202 as mParticle does. It parses every body, checks mParticle's
//! request limits (≤ 100 batches, ≤ 256 KB), counts batches and events, and counts a
//! `source_request_id` seen before as a duplicate. Anything malformed is answered 400 and
//! counted, so a broken encoder shows in the figures.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub duplicate_batches: AtomicU64,
    pub duplicate_events: AtomicU64,
    pub malformed: AtomicU64,
    pub over_limits: AtomicU64,
    pub unauthorized: AtomicU64,
    /// Nanoseconds since `started` of the last delivered request.
    pub last_ns: AtomicU64,
}

pub struct Receiver {
    pub counts: Counts,
    pub started: Instant,
    authorization: String,
    seen: Mutex<HashSet<Box<str>>>,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow, default)]
    source_request_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    events: Vec<IgnoredAny>,
}

impl Receiver {
    pub fn new(started: Instant, authorization: String) -> Arc<Self> {
        Arc::new(Receiver {
            counts: Counts::default(),
            started,
            authorization,
            seen: Mutex::default(),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v2/bulkevents", post(receive))
            .route("/v2/bulkevents/historical", post(receive))
            .with_state(self.clone())
    }

    pub fn delivered_events(&self) -> u64 {
        self.counts.events.load(Ordering::Relaxed)
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let counts = &receiver.counts;
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(receiver.authorization.as_str())
    {
        counts.unauthorized.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
        );
    }
    let batches: Vec<Batch> = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(_) => {
            counts.malformed.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::BAD_REQUEST,
                r#"{"errors":[{"code":"BAD_REQUEST"}]}"#,
            );
        }
    };
    if batches.len() > schema::limits::MAX_BATCHES_PER_REQUEST
        || body.len() > schema::limits::MAX_REQUEST_BYTES
    {
        counts.over_limits.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            r#"{"errors":[{"code":"TOO_LARGE"}]}"#,
        );
    }
    let mut events = 0u64;
    let (mut dup_batches, mut dup_events) = (0u64, 0u64);
    {
        let mut seen = receiver.seen.lock().unwrap_or_else(|p| p.into_inner());
        for batch in &batches {
            events += batch.events.len() as u64;
            if let Some(id) = &batch.source_request_id
                && !seen.insert(id.as_ref().into())
            {
                dup_batches += 1;
                dup_events += batch.events.len() as u64;
            }
        }
    }
    let now = receiver.started.elapsed().as_nanos() as u64;
    counts.last_ns.fetch_max(now, Ordering::Relaxed);
    counts.requests.fetch_add(1, Ordering::Relaxed);
    counts
        .batches
        .fetch_add(batches.len() as u64, Ordering::Relaxed);
    counts.events.fetch_add(events, Ordering::Relaxed);
    counts
        .duplicate_batches
        .fetch_add(dup_batches, Ordering::Relaxed);
    counts
        .duplicate_events
        .fetch_add(dup_events, Ordering::Relaxed);
    (StatusCode::ACCEPTED, "")
}
