//! A counting stand-in for mParticle's Events API: `POST /v2/bulkevents` (and `/historical`)
//! with HTTP Basic, answered 202 as mParticle does. It parses every body, checks mParticle's
//! request limits (≤ 100 batches, ≤ 256 KB), counts batches and events, and counts a
//! `source_request_id` seen before as a duplicate. Anything malformed is answered 400 and
//! counted, so a broken encoder shows in the figures. For the fault suite it can also answer
//! like an mParticle that is unwell (see [`Fault`]), and it knows when each batch first came.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Requests answered with a fault (nothing of them counted as received).
    pub faulted: AtomicU64,
    /// Nanoseconds since `started` of the last delivered request.
    pub last_ns: AtomicU64,
}

/// How the receiver misbehaves, on every other request (all of them when down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 503 to everything.
    Down,
    /// 429, with `Retry-After: 1` or without.
    Throttled {
        retry_after: bool,
    },
    /// 500, 502 and 503 in turn.
    ServerErrors,
    /// No answer for this long, then a 503 (the client has given up by then).
    Hang(Duration),
}

/// What came of one `source_request_id`: how many times, and when first (ns since `started`).
#[derive(Debug, Clone, Copy)]
pub struct Arrivals {
    pub times: u32,
    pub first_ns: u64,
    pub last_ns: u64,
}

pub struct Receiver {
    pub counts: Counts,
    pub started: Instant,
    authorization: String,
    seen: Mutex<HashMap<Box<str>, Arrivals>>,
    fault: Mutex<Fault>,
    turn: AtomicU64,
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
            fault: Mutex::new(Fault::None),
            turn: AtomicU64::new(0),
        })
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// The arrivals of each batch id, as they stand.
    pub fn arrivals(&self) -> HashMap<Box<str>, Arrivals> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
) -> (StatusCode, HeaderMap, &'static str) {
    let counts = &receiver.counts;
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(receiver.authorization.as_str())
    {
        counts.unauthorized.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            HeaderMap::new(),
            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
        );
    }
    let fault = *receiver.fault.lock().unwrap_or_else(|p| p.into_inner());
    if fault != Fault::None {
        let turn = receiver.turn.fetch_add(1, Ordering::Relaxed);
        if fault == Fault::Down || turn % 2 == 0 {
            counts.faulted.fetch_add(1, Ordering::Relaxed);
            return fault_answer(fault, turn).await;
        }
    }
    let batches: Vec<Batch> = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(_) => {
            counts.malformed.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::BAD_REQUEST,
                HeaderMap::new(),
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
            HeaderMap::new(),
            r#"{"errors":[{"code":"TOO_LARGE"}]}"#,
        );
    }
    let mut events = 0u64;
    let (mut dup_batches, mut dup_events) = (0u64, 0u64);
    let now = receiver.started.elapsed().as_nanos() as u64;
    {
        let mut seen = receiver.seen.lock().unwrap_or_else(|p| p.into_inner());
        for batch in &batches {
            events += batch.events.len() as u64;
            let Some(id) = &batch.source_request_id else {
                continue;
            };
            let arrivals = seen.entry(id.as_ref().into()).or_insert(Arrivals {
                times: 0,
                first_ns: now,
                last_ns: now,
            });
            arrivals.times += 1;
            arrivals.last_ns = now;
            if arrivals.times > 1 {
                dup_batches += 1;
                dup_events += batch.events.len() as u64;
            }
        }
    }
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
    (StatusCode::ACCEPTED, HeaderMap::new(), "")
}

/// mParticle's answers when it is unwell.
async fn fault_answer(fault: Fault, turn: u64) -> (StatusCode, HeaderMap, &'static str) {
    let mut headers = HeaderMap::new();
    let status = match fault {
        Fault::None => StatusCode::ACCEPTED,
        Fault::Down => StatusCode::SERVICE_UNAVAILABLE,
        Fault::Throttled { retry_after } => {
            if retry_after {
                headers.insert("retry-after", axum::http::HeaderValue::from_static("1"));
            }
            StatusCode::TOO_MANY_REQUESTS
        }
        Fault::ServerErrors => [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ][(turn / 2 % 3) as usize],
        Fault::Hang(how_long) => {
            tokio::time::sleep(how_long).await;
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    (status, headers, r#"{"errors":[{"code":"UNAVAILABLE"}]}"#)
}
