//! What the HTTP drivers share: the client, and how an HTTP answer becomes an [`Answer`] and a
//! signal to the limiter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

use crate::driver::{Answer, retry_after, short};
use crate::limit::{Limiter, Permit, Refused, Signal};

/// mParticle's share of its rate limit used, on 2xx answers.
const PERCENT_USED: &str = "x-mp-rate-limit-percentage-used";

pub fn client(timeout: Duration, max_idle: usize) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(max_idle)
        .tcp_nodelay(true)
        .user_agent(concat!("mpconnect/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Waits for the limiter until `deadline`; a pause (`Retry-After`) answers at once instead,
/// so the batch parks.
pub async fn permit(
    limiter: &Arc<Limiter>,
    batches: usize,
    deadline: Instant,
    who: &str,
) -> Result<Permit, Answer> {
    limiter
        .acquire(batches, deadline)
        .await
        .map_err(|refused| match refused {
            Refused::Paused { remaining } => Answer::Retry {
                detail: format!("{who} asked us to wait (Retry-After)"),
                status: Some(429),
                after: Some(remaining),
            },
            Refused::Late => Answer::retry(format!("no room to send to {who} within the attempt")),
        })
}

/// Sends `request` and sorts the answer: 2xx delivered; 401/403 our credentials; 429 slow
/// down and honour `Retry-After`; 408 and 5xx, timeouts and connection errors temporary; any
/// other status a refusal of the data.
pub async fn send(
    request: reqwest::RequestBuilder,
    permit: Permit,
    limiter: &Limiter,
    destination: &str,
    who: &str,
) -> Answer {
    let started = Instant::now();
    let (answer, label) = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes().await.unwrap_or_default();
            let detail = format!("{who} answered {status}: {}", short(&body));
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
            (Answer::retry(format!("{why}: {e}")), why.to_owned())
        }
    };
    drop(permit);
    metrics::counter!("mpconnect_delivery_requests_total", "destination" => destination.to_owned(), "status" => label)
        .increment(1);
    metrics::histogram!("mpconnect_delivery_request_seconds", "destination" => destination.to_owned())
        .record(started.elapsed().as_secs_f64());
    answer
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

/// A credential header, or why it could not be read (the destination is then suspended).
pub type Credential = std::sync::RwLock<Result<Option<reqwest::header::HeaderValue>, String>>;

/// The current credential header; `Err` is answered as `Unauthorized` (suspends).
pub fn current(credential: &Credential) -> Result<Option<reqwest::header::HeaderValue>, Answer> {
    match &*credential.read().expect("credential lock") {
        Ok(value) => Ok(value.clone()),
        Err(why) => Err(Answer::Unauthorized {
            detail: format!("credentials unavailable: {why}"),
            status: 0,
        }),
    }
}

/// Replaces the credential, saying loudly when it cannot be read.
pub fn store(
    credential: &Credential,
    loaded: Result<Option<reqwest::header::HeaderValue>, String>,
    destination: &str,
) {
    if let Err(why) = &loaded {
        tracing::error!(destination, %why, "cannot read the destination's credentials");
    }
    if let Ok(mut slot) = credential.write() {
        *slot = loaded;
    }
}

/// A header value that is never printed.
pub fn sensitive(value: &str) -> Result<reqwest::header::HeaderValue, String> {
    let mut value = reqwest::header::HeaderValue::from_str(value)
        .map_err(|_| "not a valid header value".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}
