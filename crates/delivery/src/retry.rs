//! Retry semantics: exponential backoff with full jitter, the destination's `Retry-After` as a
//! floor, and a window past which a batch is dead-lettered. Parked batches travel through the
//! destination's retry queue as `RoutedBatch` protobuf with their history in attributes.

use std::time::Duration;

use prost::Message as _;
use runtime::envelope::ParkedEnvelope;
use runtime::{Message, Received};
use schema::v1::RoutedBatch;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The first retry waits up to this long; each further one up to twice as long.
    pub base: Duration,
    /// No single wait is longer. It bounds how long a parked batch still waits once the
    /// destination is back; it does not bound the load on a destination that is down, which
    /// the destination's own pause does (each retry worker waits out the last failure's
    /// `Retry-After`, or `base`, before its next round of at most `retry_batch` batches).
    pub cap: Duration,
    /// Past this since the first attempt, a batch is dead-lettered.
    pub window: Duration,
    /// How often a suspended destination (credentials refused) is tried again.
    pub probe_interval: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            // Five minutes left batches parked a minute or two after a 30 s outage had
            // ended (the full-disk fault scenario: 80–126 s to recover).
            cap: Duration::from_secs(30),
            window: Duration::from_secs(4 * 3600),
            probe_interval: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: full jitter over the exponential ceiling, never
    /// shorter than what the destination asked for.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let jittered = ceiling.mul_f64(rand::random::<f64>());
        jittered.max(retry_after.unwrap_or_default())
    }

    /// Whether a batch first tried at `first_attempt_ms` may still be tried at `next_at_ms`.
    pub fn within_window(&self, first_attempt_ms: i64, next_at_ms: i64) -> bool {
        next_at_ms.saturating_sub(first_attempt_ms) <= self.window.as_millis() as i64
    }
}

/// A parked batch: what the retry queue carries.
pub fn parked_message(
    destination: &str,
    batch: &RoutedBatch,
    first_attempt_ms: i64,
    attempts: u32,
    delay: Duration,
) -> Message {
    let envelope = ParkedEnvelope {
        destination: destination.to_owned(),
        first_attempt_at_ms: Some(first_attempt_ms),
        attempts,
        traceparent: Some(batch.traceparent.clone()),
    };
    let mut message = envelope.to_message(batch.encode_to_vec());
    message.delay = delay;
    message
}

/// A parked batch as received again, with its history.
#[derive(Debug)]
pub struct Parked {
    pub batch: RoutedBatch,
    pub first_attempt_ms: i64,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

/// The parked batch a retry-queue message holds; an error for one that holds none (a missing
/// claim-checked body is never read as an empty batch).
pub fn parked_from(received: &Received) -> Result<Parked, String> {
    if let Some(why) = received.missing_body() {
        return Err(why);
    }
    let batch = RoutedBatch::decode(received.body.as_ref()).map_err(|e| e.to_string())?;
    if batch.batch.is_none() {
        return Err("it holds no batch".into());
    }
    let envelope = ParkedEnvelope::from_attributes(&received.attributes);
    Ok(Parked {
        batch,
        first_attempt_ms: envelope.first_attempt_at_ms.unwrap_or(received.sent_at_ms),
        attempts: envelope.attempts.saturating_add(received.receive_count),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(body: Vec<u8>) -> Received {
        Received {
            message_id: "m".into(),
            receipt: runtime::Receipt("r".into()),
            body: body.into(),
            attributes: Default::default(),
            receive_count: 1,
            sent_at_ms: 0,
        }
    }

    #[test]
    fn a_parked_message_without_a_batch_is_never_read_as_one() {
        let whole = RoutedBatch {
            key: "k".into(),
            batch: Some(schema::v1::Batch::default()),
            ..Default::default()
        };
        assert!(parked_from(&received(whole.encode_to_vec())).is_ok());
        // An empty body decodes as a RoutedBatch without a batch.
        assert!(parked_from(&received(Vec::new())).is_err());
        let mut gone = received(Vec::new());
        gone.attributes
            .insert(runtime::envelope::attr::CLAIM_CHECK, "claims/gone");
        let why = parked_from(&gone).err().unwrap();
        assert!(why.contains("claims/gone is missing"), "{why}");
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_honours_retry_after() {
        let policy = RetryPolicy::default();
        for attempt in 1..12 {
            let ceiling = Duration::from_secs(1 << (attempt - 1)).min(policy.cap);
            let delays: Vec<Duration> = (0..200).map(|_| policy.delay(attempt, None)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling));
            // Full jitter spreads over the whole range, not just near the ceiling.
            assert!(delays.iter().any(|d| *d < ceiling / 4));
            assert!(delays.iter().any(|d| *d > ceiling / 2));
        }
        for _ in 0..100 {
            assert!(policy.delay(1, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        }
        assert!(policy.delay(u32::MAX, None) <= policy.cap);
        // Past the ceiling, a parked batch waits no longer however long the outage was, and a
        // longer Retry-After is still honoured.
        assert!(policy.cap <= Duration::from_secs(30));
        assert!(policy.delay(40, Some(Duration::from_secs(120))) >= Duration::from_secs(120));
    }

    #[test]
    fn the_window_is_measured_from_the_first_attempt() {
        let policy = RetryPolicy {
            window: Duration::from_secs(10),
            ..Default::default()
        };
        assert!(policy.within_window(1_000, 11_000));
        assert!(!policy.within_window(1_000, 11_001));
    }
}
