//! What the HTTP drivers share: the client, the limiter and the credential behind one
//! [`Poster`], and how an HTTP answer becomes an [`Answer`] and a signal to the limiter.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};

use crate::driver::{Answer, retry_after, short};
use crate::limit::{LimitSettings, Limiter, Permit, Refused, Signal};
use runtime::telemetry::PipelineSpan;

/// How long one HTTP request gets unless configured (mParticle and webhooks alike).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP destination's configured `max_concurrency` and `request_timeout_ms`, over its
/// defaults.
pub fn apply_config(
    max_concurrency: Option<usize>,
    request_timeout_ms: Option<u64>,
    limit: &mut crate::limit::LimitSettings,
    request_timeout: &mut Duration,
) {
    if let Some(max) = max_concurrency {
        limit.max_concurrency = max.max(1);
    }
    if let Some(ms) = request_timeout_ms {
        *request_timeout = Duration::from_millis(ms);
    }
}

/// The least time a request is given to be answered within an attempt (see `post_traced`).
const ANSWER_ROOM: Duration = Duration::from_secs(1);

/// mParticle's share of its rate limit used, on 2xx answers.
const PERCENT_USED: &str = "x-mp-rate-limit-percentage-used";

/// A credential header, or why it could not be read (the destination is then suspended).
type Credential = RwLock<Result<Option<HeaderValue>, String>>;

/// One HTTP destination's sending side: the client, its limiter and its credential. Posts
/// JSON and sorts the answer.
pub struct Poster {
    destination: String,
    /// Who answers, in details ("mParticle", "the webhook").
    who: &'static str,
    client: reqwest::Client,
    /// Each request's own bound; an attempt's deadline may cut it shorter.
    timeout: Duration,
    limiter: Arc<Limiter>,
    authorization: Credential,
}

impl Poster {
    pub fn new(
        destination: &str,
        who: &'static str,
        timeout: Duration,
        limit: LimitSettings,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(limit.max_concurrency)
            .tcp_nodelay(true)
            // A redirect is an answer, not a delivery: following it would turn the POST into a
            // GET of whatever page it names and record that page's 200 as delivered.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mpconnect/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Poster {
            destination: destination.to_owned(),
            who,
            client,
            timeout,
            limiter: Limiter::new(destination, limit),
            authorization: RwLock::new(Err("not loaded".into())),
        })
    }

    /// Replaces the `Authorization` header (none when `Ok(None)`), saying loudly when the
    /// credentials cannot be read: sending is then answered `Unauthorized`, which suspends.
    pub fn set_authorization(&self, loaded: Result<Option<HeaderValue>, String>) {
        if let Err(why) = &loaded {
            tracing::error!(destination = %self.destination, %why, "cannot read the destination's credentials");
        }
        if let Ok(mut slot) = self.authorization.write() {
            *slot = loaded;
        }
    }

    /// POSTs a JSON `body` holding one batch per entry of `traces` (each batch's W3C
    /// `traceparent`), once the limiter allows it and no later than `deadline` (else `Retry`,
    /// never sent late); a pause (`Retry-After`) answers at once, so the batches park.
    ///
    /// The call is a span in the first batch's trace, linked to the others'; the destination
    /// gets its context in `traceparent`.
    pub async fn post_json(
        &self,
        url: &str,
        body: JsonBody,
        traces: &[&str],
        deadline: Instant,
    ) -> Answer {
        let mut span = runtime::pipeline_span!(
            "destination call",
            Client,
            linked: traces.iter().map(|t| (*t, "")),
            "mpconnect.stage" = "delivery",
            "destination" = self.destination.clone(),
            "batches" = traces.len() as i64,
            "bytes" = body.len() as i64,
        );
        let traceparent = span
            .context()
            .map(|t| t.traceparent)
            .or_else(|| traces.first().map(|t| (*t).to_owned()))
            .unwrap_or_default();
        let answer = self
            .post_traced(url, body, traces.len(), &traceparent, deadline, &mut span)
            .await;
        span.record(
            "outcome",
            match &answer {
                Answer::Delivered => "delivered",
                Answer::Retry { .. } => "retry",
                Answer::Reject { .. } => "rejected",
                Answer::Unauthorized { .. } => "unauthorized",
            },
        );
        answer
    }

    async fn post_traced(
        &self,
        url: &str,
        body: JsonBody,
        batches: usize,
        traceparent: &str,
        deadline: Instant,
        span: &mut PipelineSpan,
    ) -> Answer {
        let who = self.who;
        // A request needs room to be answered: one sent just before the deadline would be cut
        // while the destination may still take it, and its batches would go again. So it
        // starts by the attempt's midpoint or a second before its end, whichever is later.
        let room = (deadline.saturating_duration_since(Instant::now()) / 2).min(ANSWER_ROOM);
        // A place taken too late is refused like none (waiting for it until the deadline, as
        // before, keeps a sick destination's calls from coming round faster).
        let permit = match self.limiter.acquire(batches, deadline).await {
            Ok(permit) if deadline.saturating_duration_since(Instant::now()) >= room => permit,
            Err(Refused::Paused { remaining }) => {
                return Answer::Retry {
                    detail: format!("{who} asked us to wait (Retry-After)"),
                    status: Some(429),
                    after: Some(remaining),
                };
            }
            Ok(_) | Err(Refused::Late) => {
                return Answer::retry(format!("no room to send to {who} within the attempt"));
            }
        };
        let authorization = match &*self.authorization.read().expect("credential lock") {
            Ok(value) => value.clone(),
            Err(why) => {
                return Answer::Unauthorized {
                    detail: format!("credentials unavailable: {why}"),
                    status: 0,
                };
            }
        };
        // Every request ends by the attempt's deadline: an attempt cut off as a whole would
        // lose the answers of its requests that did succeed, and send those batches again.
        let left = deadline.saturating_duration_since(Instant::now());
        let mut request = self
            .client
            .post(url)
            .timeout(self.timeout.min(left))
            .header(CONTENT_TYPE, "application/json")
            .body(body.into_reqwest());
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        if !traceparent.is_empty() {
            request = request.header(runtime::envelope::header::TRACEPARENT, traceparent);
        }
        self.send(request, permit, span).await
    }

    /// Sends and sorts the answer: 2xx delivered; 401/403 our credentials; 429 slow down and
    /// honour `Retry-After`; 408 and 5xx, timeouts and connection errors temporary; a redirect
    /// temporary too (the destination is misconfigured, not the data wrong: parked, and
    /// dead-lettered with the answer only past the retry window); any other status a refusal
    /// of the data.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        permit: Permit,
        span: &mut PipelineSpan,
    ) -> Answer {
        let limiter = &self.limiter;
        let started = Instant::now();
        let (answer, label) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                span.record("status", i64::from(status));
                let headers = response.headers().clone();
                let body = response.bytes().await.unwrap_or_default();
                let detail = format!("{} answered {status}: {}", self.who, short(&body));
                (
                    classify(status, &headers, detail, limiter),
                    status.to_string(),
                )
            }
            Err(e) => {
                limiter.record(Signal::Overloaded);
                let why = if e.is_timeout() {
                    "timeout"
                } else {
                    "connection"
                };
                // Never the URL: a webhook's often carries its token, and this detail goes to
                // logs, dead letters and readiness answers.
                (
                    Answer::retry(format!("{why}: {}", e.without_url())),
                    why.to_owned(),
                )
            }
        };
        drop(permit);
        metrics::counter!("mpconnect_delivery_requests_total", "destination" => self.destination.clone(), "status" => label)
            .increment(1);
        metrics::histogram!("mpconnect_delivery_request_seconds", "destination" => self.destination.clone())
            .record(started.elapsed().as_secs_f64());
        answer
    }
}

fn classify(status: u16, headers: &HeaderMap, detail: String, limiter: &Limiter) -> Answer {
    match status {
        200..=299 => {
            let percent_used = headers
                .get(PERCENT_USED)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u8>().ok());
            limiter.record(Signal::Success { percent_used });
            Answer::Delivered
        }
        401 | 403 => Answer::Unauthorized { detail, status },
        429 => {
            limiter.record(Signal::TooManyRequests);
            let after = retry_after(headers);
            if let Some(after) = after {
                limiter.pause_until(Instant::now() + after);
            }
            Answer::Retry {
                detail,
                status: Some(status),
                after,
            }
        }
        300..=399 => Answer::Retry {
            detail,
            status: Some(status),
            after: None,
        },
        408 | 500..=599 => {
            limiter.record(Signal::Overloaded);
            Answer::Retry {
                detail,
                status: Some(status),
                after: retry_after(headers),
            }
        }
        _ => Answer::Reject {
            detail,
            status: Some(status),
        },
    }
}

/// A header value that is never printed.
pub fn sensitive(value: &str) -> Result<HeaderValue, String> {
    let mut value =
        HeaderValue::from_str(value).map_err(|_| "not a valid header value".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

/// A request body made of pieces sent one after another: a packed Events API request is its
/// batches' JSON between `[`, `,` and `]`, and a pass-through batch's JSON is a view of the
/// queue message it came in. Sent in pieces (hyper writes them with `writev`), a 256 KB body
/// is not copied together first: that copy was ~2.5% of `mpconnect all`'s CPU.
#[derive(Debug, Clone, Default)]
pub struct JsonBody {
    pieces: Vec<bytes::Bytes>,
    len: usize,
}

impl JsonBody {
    pub fn with_capacity(pieces: usize) -> Self {
        JsonBody {
            pieces: Vec::with_capacity(pieces),
            len: 0,
        }
    }

    pub fn push(&mut self, piece: impl Into<bytes::Bytes>) {
        let piece = piece.into();
        self.len += piece.len();
        self.pieces.push(piece);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole body in one buffer (for tests and benches; requests go in pieces).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len);
        for piece in &self.pieces {
            all.extend_from_slice(piece);
        }
        all
    }

    fn into_reqwest(mut self) -> reqwest::Body {
        match self.pieces.len() {
            0 => reqwest::Body::from(bytes::Bytes::new()),
            1 => reqwest::Body::from(self.pieces.swap_remove(0)),
            _ => reqwest::Body::wrap(Pieces {
                pieces: self.pieces.into(),
                left: self.len as u64,
            }),
        }
    }
}

impl From<Vec<u8>> for JsonBody {
    fn from(all: Vec<u8>) -> Self {
        let mut body = JsonBody::with_capacity(1);
        body.push(all);
        body
    }
}

/// [`JsonBody`]'s pieces as an HTTP body of known length (so it goes with `Content-Length`).
struct Pieces {
    pieces: std::collections::VecDeque<bytes::Bytes>,
    left: u64,
}

impl http_body::Body for Pieces {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let next = self.pieces.pop_front();
        if let Some(piece) = &next {
            self.left -= piece.len() as u64;
        }
        std::task::Poll::Ready(next.map(|piece| Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}
