//! A fake mParticle Events API for tests and benchmarks, enforcing the real contract: HTTP
//! Basic, at most 100 batches and 256 KB a request, at most 128 KB a batch, every batch valid
//! against mParticle's official JSON Schema (`reference/mparticle/`). It can be told to answer
//! 429 (with or without `Retry-After`), 503, 400 for chosen batches, 403, or to hang, to
//! enforce a rate limit in batches per second for its key as mParticle does (429 past it, the
//! share used on every 2xx), and it records every request and every breach of the contract.
//! Not for production use.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::Value;
use serde_json::value::RawValue;

const MAX_REQUEST_BYTES: usize = 256 * 1024;
const MAX_BATCH_BYTES: usize = 128 * 1024;
const MAX_BATCHES: usize = 100;
/// Requests already on the wire when a 429 left are not the client's fault; on a loaded
/// two-core CI machine a request sent just before the 429 arrived can take this long to land.
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(250);

/// How the fake answers; change it while it runs.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Every `n`-th request is answered 429, with `Retry-After: secs` when given.
    pub throttle_every: Option<(u64, Option<u64>)>,
    /// Every request is answered with this status (e.g. 503).
    pub status: Option<u16>,
    /// Never answer.
    pub hang: bool,
    /// Never answer a request holding a batch whose `source_request_id` starts with this.
    pub hang_request_ids_starting: Option<String>,
    /// A request holding a batch whose `source_request_id` starts with this is answered 400.
    pub reject_request_ids_starting: Option<String>,
    /// `X-mp-rate-limit-percentage-used` on 202 answers.
    pub percent_used: Option<u8>,
    /// Skip the JSON Schema check (fast, for benchmarks).
    pub skip_schema: bool,
    /// Check the limits only, count accepted batches and keep nothing (benchmarks).
    pub count_only: bool,
    /// The key's rate limit in batches per second, over every client that uses the key: a
    /// bucket of one second's batches, refilled continuously; a request needing more batches
    /// than the bucket holds is answered 429 (`X-mp-rate-limit-exceeded: app`, no
    /// `Retry-After`), and every 2xx says how full the bucket is
    /// (`X-mp-rate-limit-percentage-used`), unless `percent_used` is given.
    pub rate_limit: Option<f64>,
}

/// Tokens (batches) left in the rate limit's bucket, as of `at`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub at: Instant,
    pub path: String,
    pub status: u16,
    pub batches: usize,
    pub bytes: usize,
    /// The W3C `traceparent` the request came with.
    pub traceparent: Option<String>,
}

pub struct FakeState {
    /// The `Authorization` header that the key and secret make.
    expected_authorization: String,
    pub behaviour: Mutex<Behaviour>,
    pub requests: Mutex<Vec<LoggedRequest>>,
    /// Accepted batches, as received.
    pub accepted: Mutex<Vec<Value>>,
    /// Every breach of mParticle's contract by the client.
    pub violations: Mutex<Vec<String>>,
    /// The `Retry-After` intervals given: no request may arrive inside one.
    throttled: Mutex<Vec<(Instant, Duration)>>,
    validator: jsonschema::Validator,
    count: Mutex<u64>,
    bucket: Mutex<Option<Bucket>>,
    /// Batches accepted, and their bytes (with `count_only` too).
    pub accepted_batches: std::sync::atomic::AtomicU64,
    pub accepted_bytes: std::sync::atomic::AtomicU64,
    /// Requests held unanswered (`hang`) so far.
    pub hung: std::sync::atomic::AtomicUsize,
}

pub struct FakeMparticle {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeMparticle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// mParticle's official single-batch JSON Schema, from the repository's `reference/`.
fn validator() -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../reference/mparticle/mparticle.inbound.eventsapi.schema.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(&path).expect("the official schema"))
        .expect("the official schema is JSON");
    jsonschema::validator_for(&schema).expect("the official schema compiles")
}

impl FakeMparticle {
    /// Serves on 127.0.0.1, expecting `key`:`secret`.
    pub async fn start(key: &str, secret: &str) -> FakeMparticle {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        Self::serve(listener, key, secret)
    }

    pub fn serve(listener: tokio::net::TcpListener, key: &str, secret: &str) -> FakeMparticle {
        let addr = listener.local_addr().expect("bound");
        let state = Arc::new(FakeState {
            expected_authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
            ),
            behaviour: Mutex::new(Behaviour::default()),
            requests: Mutex::default(),
            accepted: Mutex::default(),
            violations: Mutex::default(),
            throttled: Mutex::default(),
            validator: validator(),
            count: Mutex::new(0),
            bucket: Mutex::new(None),
            accepted_batches: Default::default(),
            accepted_bytes: Default::default(),
            hung: Default::default(),
        });
        let app = Router::new()
            .route("/v2/events", post(events))
            .route("/v2/bulkevents", post(bulk))
            .route("/v2/bulkevents/historical", post(bulk))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeMparticle { addr, state, task }
    }

    /// The base URL to configure: `http://…/v2`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v2", self.addr)
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.state.behaviour.lock().unwrap());
    }

    pub fn accepted(&self) -> Vec<Value> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// `source_request_id`s of accepted batches.
    pub fn request_ids(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .map(|b| {
                b["source_request_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    pub fn accepted_events(&self) -> usize {
        self.accepted()
            .iter()
            .map(|b| b["events"].as_array().map_or(0, Vec::len))
            .sum()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }

    /// Requests held unanswered (`hang`) so far.
    pub fn hung(&self) -> usize {
        self.state.hung.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.requests.lock().unwrap().clone()
    }
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}

async fn events(state: State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    // A single batch: the same checks as a bulk of one.
    let mut wrapped = Vec::with_capacity(body.len() + 2);
    wrapped.push(b'[');
    wrapped.extend_from_slice(&body);
    wrapped.push(b']');
    answer(&state, "/v2/events", &headers, &wrapped, body.len()).await
}

async fn bulk(
    state: State<Arc<FakeState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(&state, uri.path(), &headers, &body, body.len()).await
}

async fn answer(
    state: &FakeState,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    bytes: usize,
) -> Response {
    let at = Instant::now();
    let behaviour = state.behaviour.lock().unwrap().clone();
    {
        let throttled = state.throttled.lock().unwrap();
        if let Some((from, wait)) = throttled
            .iter()
            .find(|(from, wait)| at > *from + IN_FLIGHT_GRACE && at < *from + *wait)
        {
            state.violations.lock().unwrap().push(format!(
                "a request {:?} into a Retry-After of {wait:?}",
                at - *from
            ));
        }
    }
    let hangs_for_its_batches =
        behaviour
            .hang_request_ids_starting
            .as_ref()
            .is_some_and(|prefix| {
                let needle = format!("\"source_request_id\":\"{prefix}");
                body.windows(needle.len()).any(|w| w == needle.as_bytes())
            });
    if behaviour.hang || hangs_for_its_batches {
        state
            .hung
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::future::pending::<()>().await;
    }
    let (status, batches, response) = check(state, &behaviour, headers, body, bytes);
    state.requests.lock().unwrap().push(LoggedRequest {
        at,
        path: path.to_owned(),
        status,
        batches,
        bytes,
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    response
}

fn check(
    state: &FakeState,
    behaviour: &Behaviour,
    headers: &HeaderMap,
    body: &[u8],
    bytes: usize,
) -> (u16, usize, Response) {
    let violation = |what: String| state.violations.lock().unwrap().push(what);
    let Some(authorization) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return (
            401,
            0,
            error(401, "UNAUTHORIZED", "Authorization header missing"),
        );
    };
    if authorization != state.expected_authorization {
        return (403, 0, error(403, "FORBIDDEN", "invalid API key or secret"));
    }
    // Our client says how long a body is up front (a body sent in pieces too), never chunked:
    // what a server that wants the size before reading expects.
    let content_length = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if content_length != Some(bytes) {
        violation(format!(
            "a request of {bytes} bytes with content-length {content_length:?}"
        ));
    }
    if bytes > MAX_REQUEST_BYTES {
        violation(format!("a request of {bytes} bytes"));
        return (413, 0, error(413, "BAD_REQUEST", "request too large"));
    }
    let batches: Vec<&RawValue> = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            violation(format!("a body that is not an array of batches: {e}"));
            return (400, 0, error(400, "BAD_REQUEST", "malformed JSON"));
        }
    };
    let n = batches.len();
    if n > MAX_BATCHES {
        violation(format!("a request of {n} batches"));
        return (400, n, error(400, "BAD_REQUEST", "too many batches"));
    }
    let mut parsed = Vec::with_capacity(n);
    for raw in &batches {
        if raw.get().len() > MAX_BATCH_BYTES {
            violation(format!("a batch of {} bytes", raw.get().len()));
            return (400, n, error(400, "BAD_REQUEST", "batch too large"));
        }
        if behaviour.count_only {
            continue;
        }
        let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        if !behaviour.skip_schema
            && let Some(e) = state.validator.iter_errors(&value).next()
        {
            let what = format!("{e} at {}", e.instance_path);
            violation(format!("a batch invalid by the official schema: {what}"));
            return (400, n, error(400, "BAD_REQUEST", &what));
        }
        parsed.push(value);
    }
    if let Some(prefix) = &behaviour.reject_request_ids_starting
        && let Some(bad) = parsed.iter().find(|b| {
            b["source_request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with(prefix.as_str()))
        })
    {
        let message = format!(
            "Batch {} was refused.",
            bad["source_request_id"].as_str().unwrap_or_default()
        );
        return (400, n, error(400, "BAD_REQUEST", &message));
    }
    if let Some(status) = behaviour.status {
        return (status, n, error(status, "UNAVAILABLE", "told to fail"));
    }
    if let Some((every, retry_after)) = behaviour.throttle_every {
        let mut count = state.count.lock().unwrap();
        *count += 1;
        if (*count).is_multiple_of(every.max(1)) {
            let mut response = error(429, "TOO_MANY_REQUESTS", "rate limit exceeded");
            response
                .headers_mut()
                .insert("x-mp-rate-limit-exceeded", "app".parse().unwrap());
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
                state
                    .throttled
                    .lock()
                    .unwrap()
                    // The interval starts when the answer leaves, not when the throttled
                    // request arrived: checking a big body takes a while in a debug build.
                    .push((Instant::now(), Duration::from_secs(secs)));
            }
            return (429, n, response);
        }
    }
    let mut percent_used = behaviour.percent_used;
    if let Some(rate) = behaviour.rate_limit {
        let rate = rate.max(1.0);
        let now = Instant::now();
        let mut bucket = state.bucket.lock().unwrap();
        let bucket = bucket.get_or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        bucket.tokens = (bucket.tokens + (now - bucket.at).as_secs_f64() * rate).min(rate);
        bucket.at = now;
        if (n as f64) > bucket.tokens {
            let mut response = error(429, "TOO_MANY_REQUESTS", "rate limit exceeded");
            response
                .headers_mut()
                .insert("x-mp-rate-limit-exceeded", "app".parse().unwrap());
            return (429, n, response);
        }
        bucket.tokens -= n as f64;
        percent_used = percent_used.or(Some((100.0 * (1.0 - bucket.tokens / rate)).round() as u8));
    }
    use std::sync::atomic::Ordering::Relaxed;
    state.accepted_batches.fetch_add(n as u64, Relaxed);
    state.accepted_bytes.fetch_add(bytes as u64, Relaxed);
    state.accepted.lock().unwrap().extend(parsed);
    let mut response = StatusCode::ACCEPTED.into_response();
    if let Some(percent) = percent_used {
        response.headers_mut().insert(
            "x-mp-rate-limit-percentage-used",
            percent.to_string().parse().unwrap(),
        );
    }
    (202, n, response)
}
