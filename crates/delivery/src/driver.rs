//! What every destination driver provides, and the answers it gives per batch.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use schema::v1::RoutedBatch;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A destination's answer for one batch, already sorted by what delivery must do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Delivered,
    /// Temporary (429, 5xx, timeout, connection error): try again later, not before `after`
    /// when the destination said so.
    Retry {
        detail: String,
        status: Option<u16>,
        after: Option<Duration>,
    },
    /// Refused for good (400): dead-letter it with the destination's answer.
    Reject {
        detail: String,
        status: Option<u16>,
    },
    /// Our credentials were refused (401/403): our misconfiguration, never the data's fault.
    /// The destination is suspended and its data kept.
    Unauthorized {
        detail: String,
        status: u16,
    },
}

impl Answer {
    pub fn retry(detail: impl Into<String>) -> Self {
        Answer::Retry {
            detail: detail.into(),
            status: None,
            after: None,
        }
    }

    /// Refused by us, before any destination saw it (no status).
    pub fn reject(detail: impl Into<String>) -> Self {
        Answer::Reject {
            detail: detail.into(),
            status: None,
        }
    }

    /// How bad: when a batch went out in parts, the worst part's answer is the batch's.
    fn severity(&self) -> u8 {
        match self {
            Answer::Delivered => 0,
            Answer::Retry { .. } => 1,
            Answer::Reject { .. } => 2,
            Answer::Unauthorized { .. } => 3,
        }
    }

    /// Keeps the worse of two answers.
    pub fn worst(self, other: Answer) -> Answer {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Delivered => None,
            Answer::Retry { status, .. } | Answer::Reject { status, .. } => *status,
            Answer::Unauthorized { status, .. } => Some(*status),
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Answer::Delivered => "",
            Answer::Retry { detail, .. }
            | Answer::Reject { detail, .. }
            | Answer::Unauthorized { detail, .. } => detail,
        }
    }
}

/// One destination kind (mParticle, S3, webhook, file). Object-safe, so configuration can pick.
pub trait Driver: Send + Sync + 'static {
    /// The kind, for logs and metrics ("mparticle", "s3", ...).
    fn kind(&self) -> &'static str;

    /// Sends the batches; returns one answer per batch, in order. Never panics on bad input:
    /// a batch it cannot send is answered `Reject` with why. No request starts after
    /// `deadline` (those batches are answered `Retry`), so every answer given is true.
    fn send<'a>(
        &'a self,
        batches: &'a [RoutedBatch],
        deadline: Instant,
    ) -> BoxFuture<'a, Vec<Answer>>;

    /// Reads credentials again (e.g. a rotated secret file) before a suspended destination is
    /// probed.
    fn reload_credentials(&self) {}

    /// Whether it sends pass-through batches (`Batch.inbound_json`) as they are. Those that do
    /// not get every batch in full.
    fn takes_pass_through(&self) -> bool {
        false
    }

    /// Writes out anything buffered (at shutdown).
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Cuts a destination's answer body to a size that fits logs and dead letters.
pub fn short(body: &[u8]) -> String {
    const MAX: usize = 2048;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    text.into_owned()
}

/// The longest `Retry-After` honoured. A destination asking for more is read as asking for
/// this: a larger value would park a destination for years (or overflow the clock), while the
/// retry window (4 h by default) decides when parked data is given up on.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// `Retry-After` as delay-seconds (the form mParticle documents), at most [`MAX_RETRY_AFTER`];
/// HTTP dates are ignored.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(value: &str) -> Option<Duration> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, value.parse().unwrap());
        retry_after(&headers)
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_bounded() {
        assert_eq!(answered("7"), Some(Duration::from_secs(7)));
        assert_eq!(answered("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(answered("86400"), Some(MAX_RETRY_AFTER), "a day is capped");
        // Added to `Instant::now()` unbounded, this would overflow and panic.
        let huge = answered(&u64::MAX.to_string()).unwrap();
        assert_eq!(huge, MAX_RETRY_AFTER);
        assert!(std::time::Instant::now().checked_add(huge).is_some());
    }
}
