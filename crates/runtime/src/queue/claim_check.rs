//! Claim checks: a body too large for a queue message goes to the object store, and the
//! message carries its key. Receivers get the body back without knowing; the object is deleted
//! when the message is acknowledged while its receipt still held it.
//!
//! An ack with a stale receipt (its visibility ran out; another consumer may have the message)
//! deletes nothing on either backend, and SQS answers it as it answers a good one. So the
//! object goes only with an ack that completed before the receipt's visibility could have run
//! out, counted from before the receive (or heartbeat) was asked for; any other leaves it, for
//! the next receive, and an orphan for the bucket's lifecycle rule (`claims/`, 15 days in
//! `deploy/aws/mpconnect.yaml`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Depth, Message, Queue, QueueError, Receipt, ReceiveOptions, Received};
use crate::envelope::attr;
use crate::store::{ObjectStore, StoreError};

/// 240 KiB: room under SQS's historical 256 KiB (still LocalStack's) for the attributes.
pub const DEFAULT_CLAIM_CHECK_THRESHOLD: usize = 240 * 1024;

/// Separates the object key from the inner receipt in a claim-checked receipt; neither SQS
/// receipts nor our keys contain it.
const SEPARATOR: char = '\u{1f}';

/// A queue whose large bodies travel through an object store.
#[derive(Clone)]
pub struct ClaimChecked<Q, S> {
    inner: Q,
    store: S,
    threshold: usize,
    prefix: String,
    size_of: fn(&Message) -> usize,
    /// Inner receipts of claim-checked messages in hand, and until when each surely holds its
    /// message.
    holds_until: Arc<Mutex<HashMap<String, Instant>>>,
}

impl<Q: Queue, S: ObjectStore> ClaimChecked<Q, S> {
    /// Bodies whose wire size (`size_of`, the backend's measure) exceeds `threshold` go to
    /// `store` under `prefix`.
    pub fn new(
        inner: Q,
        store: S,
        threshold: usize,
        prefix: impl Into<String>,
        size_of: fn(&Message) -> usize,
    ) -> Self {
        ClaimChecked {
            inner,
            store,
            threshold,
            prefix: prefix.into(),
            size_of,
            holds_until: Arc::default(),
        }
    }

    fn hold(&self, inner: &str, until: Instant) {
        if let Ok(mut held) = self.holds_until.lock() {
            // Receipts never acked nor nacked (their consumer gave up) are forgotten.
            let now = Instant::now();
            if held.len() > 1024 {
                held.retain(|_, until| *until > now);
            }
            held.insert(inner.to_owned(), until);
        }
    }

    fn release(&self, inner: &str) -> Option<Instant> {
        self.holds_until.lock().ok()?.remove(inner)
    }

    pub fn inner(&self) -> &Q {
        &self.inner
    }
}

/// The body and attribute bytes of a message, the measure for backends that carry bytes as
/// they are.
pub fn plain_size(message: &Message) -> usize {
    message.body_len()
        + message
            .attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

impl<Q: Queue, S: ObjectStore> Queue for ClaimChecked<Q, S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send(&self, mut messages: Vec<Message>) -> Result<(), QueueError> {
        // Joined once here for a backend that takes one body (SQS), before it is sized.
        if !self.inner.takes_bodies_in_parts() {
            messages.iter_mut().for_each(Message::join_body);
        }
        for m in &mut messages {
            if (self.size_of)(m) <= self.threshold {
                continue;
            }
            let key = format!("{}{}", self.prefix, uuid::Uuid::new_v4());
            m.join_body();
            let body = std::mem::take(&mut m.body);
            // Stored before the message is sent: no message ever points at a missing object.
            self.store.put(&key, body).await?;
            m.attributes.insert(attr::CLAIM_CHECK, key);
        }
        self.inner.send(messages).await
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Received>, QueueError> {
        // The visibility starts after this: the receipts hold at least until then.
        let holds_until = Instant::now() + options.visibility;
        let mut messages = self.inner.receive(options).await?;
        for m in &mut messages {
            let Some(key) = m.attributes.get(attr::CLAIM_CHECK).map(str::to_owned) else {
                continue;
            };
            match self.store.get_bytes(&key).await {
                Ok(body) => {
                    m.body = body;
                    m.attributes.remove(attr::CLAIM_CHECK);
                    self.hold(&m.receipt.0, holds_until);
                    m.receipt = Receipt(format!("{key}{SEPARATOR}{}", m.receipt.0));
                }
                // The pointer stays, the body stays empty (`Received::missing_body`): the
                // consumer sees a message it cannot use and dead-letters it, rather than the
                // queue stalling on it.
                Err(StoreError::NotFound(_)) => {
                    tracing::error!(
                        queue = self.inner.name(),
                        key,
                        "claim-checked body is missing"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(messages)
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        let mut inner = Vec::with_capacity(receipts.len());
        let mut keys = Vec::new();
        for r in receipts {
            match r.0.split_once(SEPARATOR) {
                Some((key, receipt)) => {
                    keys.push((key, receipt));
                    inner.push(Receipt(receipt.to_owned()));
                }
                None => inner.push(r.clone()),
            }
        }
        self.inner.ack(&inner).await?;
        let acked_at = Instant::now();
        // After the message is gone: an object left by a crash here is garbage, never a loss.
        for (key, receipt) in keys {
            match self.release(receipt) {
                Some(until) if acked_at < until => {
                    if let Err(e) = self.store.delete(key).await {
                        tracing::warn!(key, error = %e, "could not delete a claim-checked body");
                    }
                }
                // The receipt may have been stale: the message may still be queued, and its
                // next receive needs the body.
                _ => tracing::info!(
                    queue = self.inner.name(),
                    key,
                    "claim-checked body kept: its ack came after the receipt's visibility"
                ),
            }
        }
        Ok(())
    }

    async fn nack(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        let inner = inner_receipt(receipt);
        self.release(&inner.0);
        self.inner.nack(&inner, delay).await
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), QueueError> {
        let holds_until = Instant::now() + visibility;
        let inner = inner_receipt(receipt);
        self.inner.extend(&inner, visibility).await?;
        if receipt.0.contains(SEPARATOR) {
            self.hold(&inner.0, holds_until);
        }
        Ok(())
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        self.inner.depth().await
    }

    fn takes_bodies_in_parts(&self) -> bool {
        self.inner.takes_bodies_in_parts()
    }
}

fn inner_receipt(receipt: &Receipt) -> Receipt {
    match receipt.0.split_once(SEPARATOR) {
        Some((_, inner)) => Receipt(inner.to_owned()),
        None => receipt.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn inner_receipts_are_recovered() {
        let r = Receipt(format!("claims/x{SEPARATOR}AQEB+abc=="));
        assert_eq!(inner_receipt(&r).0, "AQEB+abc==");
        assert_eq!(inner_receipt(&Receipt("12.1".into())).0, "12.1");
        let m = Message::new(Bytes::from_static(b"12345")).with_attribute("ab", "c");
        assert_eq!(plain_size(&m), 8);
    }
}
