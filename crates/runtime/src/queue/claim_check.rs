//! Claim checks: a body too large for a queue message goes to the object store, and the
//! message carries its key. Receivers get the body back without knowing; the object is deleted
//! when the message is acknowledged.

use std::time::Duration;

use super::{Depth, Message, Queue, QueueError, Receipt, ReceiveOptions, Received, attr};
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
        }
    }

    pub fn inner(&self) -> &Q {
        &self.inner
    }
}

/// The body and attribute bytes of a message, the measure for backends that carry bytes as
/// they are.
pub fn plain_size(message: &Message) -> usize {
    message.body.len()
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
        for m in &mut messages {
            if (self.size_of)(m) <= self.threshold {
                continue;
            }
            let key = format!("{}{}", self.prefix, uuid::Uuid::new_v4());
            let body = std::mem::take(&mut m.body);
            // Stored before the message is sent: no message ever points at a missing object.
            self.store.put(&key, body).await?;
            m.attributes.insert(attr::CLAIM_CHECK.to_owned(), key);
        }
        self.inner.send(messages).await
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Received>, QueueError> {
        let mut messages = self.inner.receive(options).await?;
        for m in &mut messages {
            let Some(key) = m.attributes.get(attr::CLAIM_CHECK).cloned() else {
                continue;
            };
            match self.store.get_bytes(&key).await {
                Ok(body) => {
                    m.body = body;
                    m.attributes.remove(attr::CLAIM_CHECK);
                    m.receipt = Receipt(format!("{key}{SEPARATOR}{}", m.receipt.0));
                }
                // The pointer stays, the body stays empty: the consumer sees a message it
                // cannot use and dead-letters it, rather than the queue stalling on it.
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
                    keys.push(key);
                    inner.push(Receipt(receipt.to_owned()));
                }
                None => inner.push(r.clone()),
            }
        }
        self.inner.ack(&inner).await?;
        // After the message is gone: an object left by a crash here is garbage, never a loss.
        for key in keys {
            if let Err(e) = self.store.delete(key).await {
                tracing::warn!(key, error = %e, "could not delete a claim-checked body");
            }
        }
        Ok(())
    }

    async fn nack(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        self.inner.nack(&inner_receipt(receipt), delay).await
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), QueueError> {
        self.inner.extend(&inner_receipt(receipt), visibility).await
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        self.inner.depth().await
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
