//! The SQS backend, on `aws-sdk-sqs`.
//!
//! Batch calls everywhere (10 entries, and a byte budget per call); entries that fail inside a
//! batch are retried on their own. Dead-lettering is done here, on receive, so it behaves the
//! same with or without a `RedrivePolicy` on the queue (moto and some LocalStack setups lack
//! one); with a policy, SQS simply gets there first.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use bytes::Bytes;

use super::{Attributes, Depth, Message, Queue, QueueError, Receipt, ReceiveOptions, Received};

/// SQS's own limits.
const MAX_ENTRIES_PER_CALL: usize = 10;
const MAX_DELAY: Duration = Duration::from_secs(900);
const MAX_WAIT: Duration = Duration::from_secs(20);
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// Entries failing inside a batch call are retried this many times.
const ENTRY_ATTEMPTS: u32 = 5;
/// Marks a body sent base64-encoded because SQS only carries text.
const BODY_ENCODING: &str = "mp-body-encoding";
/// SQS takes at most this many message attributes.
const MAX_SQS_ATTRIBUTES: usize = 10;
/// A message with more attributes than SQS takes carries them all in this one, as a JSON
/// object, read back on receipt: a message never fails to be sent (or dead-lettered) for
/// the attributes the stages added along the way.
const PACKED_ATTRIBUTES: &str = "mp-attributes";

/// Where the queue is and how big its messages may be.
#[derive(Debug, Clone)]
pub struct SqsSettings {
    /// Queue name or URL.
    pub queue: String,
    /// Largest message (body and attributes), and largest batch call. SQS takes 1 MiB today;
    /// LocalStack and older setups 256 KiB, the default.
    pub max_message_bytes: usize,
    /// Dead-letter after this many receives, into this queue (name or URL).
    pub dead_letter: Option<(u32, String)>,
}

impl SqsSettings {
    pub fn new(queue: impl Into<String>) -> Self {
        SqsSettings {
            queue: queue.into(),
            max_message_bytes: 256 * 1024,
            dead_letter: None,
        }
    }
}

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: Arc<str>,
    max_message_bytes: usize,
    dead_letter: Option<(u32, Arc<str>)>,
}

fn classify<E, R>(operation: &str, e: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(service) = &e {
        let code = service.err().code().unwrap_or_default();
        if code.contains("MessageNotInflight") || code.contains("ReceiptHandleIsInvalid") {
            return QueueError::NotInFlight;
        }
        if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") {
            return QueueError::Config(format!("{operation}: {}", DisplayErrorContext(&e)));
        }
        if code.contains("InvalidParameter")
            || code.contains("TooLong")
            || code.contains("InvalidMessageContents")
            || code.contains("InvalidAttribute")
        {
            return QueueError::Rejected(format!("{operation}: {}", DisplayErrorContext(&e)));
        }
    }
    QueueError::Unavailable(format!("{operation}: {}", DisplayErrorContext(&e)))
}

/// Whether SQS carries these bytes as they are: valid UTF-8 of the characters it allows.
fn is_sqs_text(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|s| {
        s.chars().all(|c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..))
    })
}

fn seconds_up(d: Duration) -> i32 {
    i32::try_from(d.as_millis().div_ceil(1000)).unwrap_or(i32::MAX)
}

async fn resolve_url(client: &Client, queue: &str) -> Result<String, QueueError> {
    if queue.starts_with("http://") || queue.starts_with("https://") {
        return Ok(queue.to_owned());
    }
    let out = client
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await
        .map_err(|e| classify("GetQueueUrl", e))?;
    out.queue_url
        .ok_or_else(|| QueueError::Config(format!("SQS returned no URL for queue {queue}")))
}

/// What SQS itself does with a queue's messages: how long it keeps them, and after how many
/// receives its RedrivePolicy moves one to a dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keeping {
    pub retention: Duration,
    pub max_receive_count: Option<u32>,
}

impl SqsQueue {
    /// The queue's retention and RedrivePolicy, as SQS reports them: the stages refuse to
    /// start on settings that would strand data (see `mpconnect`'s start-up checks).
    pub async fn keeping(&self) -> Result<Keeping, QueueError> {
        let attrs = self
            .attributes([
                QueueAttributeName::MessageRetentionPeriod,
                QueueAttributeName::RedrivePolicy,
            ])
            .await?;
        let retention = attrs
            .get(&QueueAttributeName::MessageRetentionPeriod)
            .and_then(|v| v.parse::<u64>().ok())
            // SQS's default: four days.
            .unwrap_or(345_600);
        let max_receive_count = match attrs.get(&QueueAttributeName::RedrivePolicy) {
            None => None,
            Some(policy) if policy.trim().is_empty() => None,
            Some(policy) => {
                let policy: serde_json::Value = serde_json::from_str(policy).map_err(|e| {
                    QueueError::Config(format!("{}: RedrivePolicy is not JSON: {e}", self.url))
                })?;
                // SQS writes it as a number or as a string.
                let count = &policy["maxReceiveCount"];
                let count = count
                    .as_u64()
                    .or_else(|| count.as_str().and_then(|s| s.parse().ok()));
                Some(count.map_or(u32::MAX, |c| u32::try_from(c).unwrap_or(u32::MAX)))
            }
        };
        Ok(Keeping {
            retention: Duration::from_secs(retention),
            max_receive_count,
        })
    }

    /// The queue's attributes `names`, as SQS reports them.
    async fn attributes(
        &self,
        names: impl IntoIterator<Item = QueueAttributeName>,
    ) -> Result<std::collections::HashMap<QueueAttributeName, String>, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&*self.url)
            .set_attribute_names(Some(names.into_iter().collect()))
            .send()
            .await
            .map_err(|e| classify("GetQueueAttributes", e))?;
        Ok(out.attributes.unwrap_or_default())
    }

    /// Resolves the queue (and dead-letter queue) URLs.
    pub async fn connect(client: Client, settings: SqsSettings) -> Result<Self, QueueError> {
        let url = resolve_url(&client, &settings.queue).await?;
        let dead_letter = match &settings.dead_letter {
            Some((max, dlq)) => Some(((*max).max(1), resolve_url(&client, dlq).await?.into())),
            None => None,
        };
        Ok(SqsQueue {
            client,
            url: url.into(),
            max_message_bytes: settings.max_message_bytes,
            dead_letter,
        })
    }

    /// The dead-letter queue, if this queue has one.
    pub fn dead_letter(&self) -> Option<SqsQueue> {
        self.dead_letter.as_ref().map(|(_, url)| SqsQueue {
            client: self.client.clone(),
            url: url.clone(),
            max_message_bytes: self.max_message_bytes,
            dead_letter: None,
        })
    }

    /// The size SQS counts for a message as we would send it: body (base64 if it is not SQS
    /// text) plus attribute names, types and values.
    pub fn wire_size(message: &Message) -> usize {
        // Whether the body is SQS text depends on both parts together (a character may
        // straddle them). The stages' claim check joins the parts before it sizes them.
        let joined;
        let body: &[u8] = if message.body_rest.is_empty() {
            &message.body
        } else {
            joined = [&message.body[..], &message.body_rest[..]].concat();
            &joined
        };
        let body = if is_sqs_text(body) {
            body.len()
        } else {
            body.len().div_ceil(3) * 4
        };
        let attributes: usize = message
            .attributes
            .iter()
            .map(|(k, v)| k.len() + v.len() + "String".len())
            .sum();
        body + attributes
    }

    fn entry(
        &self,
        id: usize,
        message: &Message,
    ) -> Result<SendMessageBatchRequestEntry, QueueError> {
        let mut attributes = message.attributes.clone();
        let body = if is_sqs_text(&message.body) {
            // Checked just above.
            String::from_utf8_lossy(&message.body).into_owned()
        } else {
            attributes.insert(BODY_ENCODING, "base64");
            base64_encode(&message.body)
        };
        if attributes.len() > MAX_SQS_ATTRIBUTES {
            let encoding = attributes.remove(BODY_ENCODING);
            let packed = serde_json::to_string(&attributes)
                .map_err(|e| QueueError::Rejected(format!("packing attributes: {e}")))?;
            attributes.clear();
            attributes.insert(PACKED_ATTRIBUTES, packed);
            if let Some(encoding) = encoding {
                attributes.insert(BODY_ENCODING, encoding);
            }
        }
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id.to_string())
            .message_body(body)
            .delay_seconds(seconds_up(message.delay.min(MAX_DELAY)));
        for (k, v) in attributes {
            entry = entry.message_attributes(
                k,
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .map_err(|e| QueueError::Rejected(e.to_string()))?,
            );
        }
        entry
            .build()
            .map_err(|e| QueueError::Rejected(e.to_string()))
    }

    /// Sends entries in calls of at most 10 entries and `max_message_bytes`, retrying the
    /// entries a call reports as failed.
    async fn send_to(&self, url: &str, messages: &[Message]) -> Result<(), QueueError> {
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        for attempt in 0..ENTRY_ATTEMPTS {
            let mut failed = Vec::new();
            let mut start = 0;
            while start < pending.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < pending.len() && end - start < MAX_ENTRIES_PER_CALL {
                    let size = Self::wire_size(&messages[pending[end]]);
                    if size > self.max_message_bytes {
                        return Err(QueueError::Rejected(format!(
                            "message of {size} bytes exceeds the queue's {} (use a claim check)",
                            self.max_message_bytes
                        )));
                    }
                    if end > start && bytes + size > self.max_message_bytes {
                        break;
                    }
                    bytes += size;
                    end += 1;
                }
                let entries = pending[start..end]
                    .iter()
                    .map(|&i| self.entry(i, &messages[i]))
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| classify("SendMessageBatch", e))?;
                for f in out.failed {
                    if f.sender_fault {
                        return Err(QueueError::Rejected(format!(
                            "SendMessageBatch: {} {}",
                            f.code,
                            f.message.unwrap_or_default()
                        )));
                    }
                    if let Ok(i) = f.id.parse::<usize>() {
                        failed.push(i);
                    }
                }
                start = end;
            }
            if failed.is_empty() {
                return Ok(());
            }
            tracing::warn!(queue = %self.url, failed = failed.len(), attempt, "SQS send: retrying failed entries");
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            pending = failed;
        }
        Err(QueueError::Unavailable(format!(
            "SendMessageBatch: {} entries still failing after {ENTRY_ATTEMPTS} attempts",
            pending.len()
        )))
    }

    async fn delete(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        for chunk in receipts.chunks(MAX_ENTRIES_PER_CALL) {
            let mut pending: Vec<(usize, &Receipt)> = chunk.iter().enumerate().collect();
            for attempt in 0..ENTRY_ATTEMPTS {
                let entries = pending
                    .iter()
                    .map(|(i, r)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(&r.0)
                            .build()
                            .map_err(|e| QueueError::Rejected(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .delete_message_batch()
                    .queue_url(&*self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| classify("DeleteMessageBatch", e))?;
                let retry: Vec<usize> = out
                    .failed
                    .iter()
                    // A receipt no longer valid: the message is another consumer's now.
                    .filter(|f| !f.sender_fault && !f.code.contains("ReceiptHandleIsInvalid"))
                    .filter_map(|f| f.id.parse().ok())
                    .collect();
                if retry.is_empty() {
                    break;
                }
                if attempt + 1 == ENTRY_ATTEMPTS {
                    return Err(QueueError::Unavailable(format!(
                        "DeleteMessageBatch: {} entries still failing",
                        retry.len()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                pending.retain(|(i, _)| retry.contains(i));
            }
        }
        Ok(())
    }

    async fn change_visibility(&self, receipt: &Receipt, d: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&*self.url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(seconds_up(d.min(MAX_VISIBILITY)))
            .send()
            .await
            .map_err(|e| classify("ChangeMessageVisibility", e))?;
        Ok(())
    }
}

impl Queue for SqsQueue {
    fn name(&self) -> &str {
        &self.url
    }

    async fn send(&self, mut messages: Vec<Message>) -> Result<(), QueueError> {
        // SQS takes one body: a message in two parts is joined here, once.
        messages.iter_mut().for_each(Message::join_body);
        let url = self.url.clone();
        self.send_to(&url, &messages).await
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Received>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&*self.url)
            .max_number_of_messages(options.max_messages.clamp(1, 10) as i32)
            .wait_time_seconds(seconds_up(options.wait.min(MAX_WAIT)))
            .visibility_timeout(seconds_up(options.visibility.min(MAX_VISIBILITY)))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        let mut received = Vec::new();
        let mut exhausted = Vec::new();
        for m in out.messages.unwrap_or_default() {
            let system = m.attributes.unwrap_or_default();
            let receive_count: u32 = system
                .get(&MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let sent_at_ms = system
                .get(&MessageSystemAttributeName::SentTimestamp)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut attributes: Attributes = m
                .message_attributes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.string_value?)))
                .collect();
            // Only mpconnect packs; anything else that named an attribute so keeps it as it is.
            if let Some(Ok(unpacked)) = attributes
                .get(PACKED_ATTRIBUTES)
                .map(serde_json::from_str::<Attributes>)
            {
                attributes.remove(PACKED_ATTRIBUTES);
                attributes.extend(unpacked);
            }
            let body = m.body.unwrap_or_default();
            let body = if attributes.remove(BODY_ENCODING).as_deref() == Some("base64") {
                Bytes::from(base64_decode(&body).ok_or_else(|| {
                    QueueError::Rejected("a base64 message body does not decode".into())
                })?)
            } else {
                Bytes::from(body)
            };
            let message = Received {
                message_id: m.message_id.unwrap_or_default(),
                receipt: Receipt(m.receipt_handle.unwrap_or_default()),
                body,
                attributes,
                receive_count,
                sent_at_ms,
            };
            match &self.dead_letter {
                Some((max, _)) if receive_count > *max => exhausted.push(message),
                _ => received.push(message),
            }
        }
        if let (false, Some((_, dlq))) = (exhausted.is_empty(), &self.dead_letter) {
            let moved: Vec<Message> = exhausted
                .iter()
                .map(|m| Message {
                    body: m.body.clone(),
                    attributes: m.attributes.clone(),
                    ..Message::default()
                })
                .collect();
            // Into the DLQ first, then out of here: a crash between leaves a duplicate, not a loss.
            self.send_to(dlq, &moved).await?;
            let receipts: Vec<Receipt> = exhausted.into_iter().map(|m| m.receipt).collect();
            self.delete(&receipts).await?;
            tracing::warn!(queue = %self.url, count = receipts.len(), "moved to the dead-letter queue");
        }
        Ok(received)
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        self.delete(receipts).await
    }

    async fn nack(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        self.change_visibility(receipt, delay).await
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), QueueError> {
        self.change_visibility(receipt, visibility).await
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        let attrs = self
            .attributes([
                QueueAttributeName::ApproximateNumberOfMessages,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            ])
            .await?;
        let get = |name: QueueAttributeName| {
            attrs
                .get(&name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(Depth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_size_counts_base64_for_binary_bodies() {
        let text = Message::new(&b"{\"a\":1}"[..]).with_attribute("k", "v");
        assert_eq!(SqsQueue::wire_size(&text), 7 + 1 + 1 + 6);
        let binary = Message::new(vec![0u8; 300]);
        assert_eq!(SqsQueue::wire_size(&binary), 400);
    }

    #[test]
    fn what_sqs_carries_as_text() {
        assert!(is_sqs_text(br#"{"events":[]}"#));
        assert!(is_sqs_text("tab\tand é 🎉".as_bytes()));
        assert!(!is_sqs_text(&[0x08, 0x01, 0xff]));
        assert!(!is_sqs_text(b"nul\0"));
    }
}
