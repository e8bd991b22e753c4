//! The queue contract every stage moves data through, with SQS semantics, and its backends.
//!
//! At-least-once: a received message comes back after its visibility timeout unless it is
//! acknowledged; after `max_receives` receives it moves to the dead-letter queue instead. Both
//! backends honour the same contract; `tests/queue_contract.rs` runs one suite against both.

mod attributes;
mod body_log;
mod claim_check;
mod embedded;
mod heartbeat;
mod sqs;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub use attributes::Attributes;
pub use claim_check::{ClaimChecked, DEFAULT_CLAIM_CHECK_THRESHOLD, plain_size};
pub use embedded::{EmbeddedDb, EmbeddedQueue, EmbeddedSync};
pub use heartbeat::Heartbeat;
pub use sqs::{Keeping, SqsQueue, SqsSettings};

use crate::envelope::attr;
use crate::store::StoreError;

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub body: Bytes,
    /// The body's second part, sent after `body` as one body (empty for most messages). Kept
    /// apart, a large part reaches the embedded queue's segment write as it is: ingest's
    /// pass-through JSON, a view of the request, is not first copied in after its ids. The
    /// backends that need one buffer join the parts ([`Message::join_body`]).
    pub body_rest: Bytes,
    pub attributes: Attributes,
    /// Held back this long before the first receive (SQS caps it at 15 minutes).
    pub delay: Duration,
}

impl Message {
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message {
            body: body.into(),
            ..Default::default()
        }
    }

    /// A body in two parts, `head` then `rest`.
    pub fn in_two_parts(head: impl Into<Bytes>, rest: Bytes) -> Self {
        Message {
            body: head.into(),
            body_rest: rest,
            ..Default::default()
        }
    }

    /// The whole body's length, both parts.
    pub fn body_len(&self) -> usize {
        self.body.len() + self.body_rest.len()
    }

    /// Makes the body one buffer (`body`), copying only when it is in two parts.
    pub fn join_body(&mut self) {
        if self.body_rest.is_empty() {
            return;
        }
        let mut joined = Vec::with_capacity(self.body_len());
        joined.extend_from_slice(&self.body);
        joined.extend_from_slice(&self.body_rest);
        self.body = Bytes::from(joined);
        self.body_rest = Bytes::new();
    }

    pub fn with_attribute(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.attributes.insert(key, value);
        self
    }
}

/// Proof of one receive of one message: what `ack`, `nack` and `extend` take.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

/// A received message, invisible to other consumers until its visibility timeout.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub receipt: Receipt,
    pub body: Bytes,
    pub attributes: Attributes,
    /// How many times it has been received, this time included (1 on the first).
    pub receive_count: u32,
    /// When it was first sent, for queue-wait time.
    pub sent_at_ms: i64,
}

impl Received {
    /// Why the message holds no data, when its claim-checked body could not be found: such a
    /// message must never be read as an (empty) batch.
    pub fn missing_body(&self) -> Option<String> {
        self.attributes
            .get(attr::CLAIM_CHECK)
            .map(|key| format!("its claim-checked body {key} is missing"))
    }
}

/// Most messages one receive of the embedded queue hands out (SQS's cap is 10): a larger round
/// fills a larger mParticle request.
pub const EMBEDDED_MAX_RECEIVE: usize = 100;

/// How to receive.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveOptions {
    /// At most this many: SQS hands out 1 to 10 at a time, the embedded queue up to
    /// [`EMBEDDED_MAX_RECEIVE`].
    pub max_messages: usize,
    /// Long polling: wait up to this long for a first message (SQS caps it at 20 s).
    pub wait: Duration,
    /// How long the messages stay invisible to others unless acknowledged or extended.
    pub visibility: Duration,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_secs(1),
            visibility: Duration::from_secs(30),
        }
    }
}

/// Approximate size, for metrics and scaling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Ready to be received.
    pub visible: u64,
    /// Received and neither acknowledged nor timed out.
    pub in_flight: u64,
    /// Sent or nacked with a delay that has not passed.
    pub delayed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue cannot be reached or did not take the request; retrying may succeed.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (too large, too many attributes); retrying will not help.
    #[error("message rejected: {0}")]
    Rejected(String),
    /// The receipt no longer holds the message: it timed out and may be with another consumer.
    #[error("the message is no longer in flight with this receipt")]
    NotInFlight,
    #[error("claim check: {0}")]
    Store(#[from] StoreError),
    #[error("queue configuration: {0}")]
    Config(String),
}

/// The operations every backend provides. Futures are `Send`, so stages can spawn them.
pub trait Queue: Send + Sync {
    /// The queue's name (or URL), for logs and metrics.
    fn name(&self) -> &str;
    /// Sends every message, or fails; on failure some may have been sent (at-least-once).
    fn send(&self, messages: Vec<Message>) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Receives up to `max_messages`, waiting up to `wait` for the first.
    fn receive(
        &self,
        options: ReceiveOptions,
    ) -> impl Future<Output = Result<Vec<Received>, QueueError>> + Send;
    /// Deletes the messages: done with them.
    fn ack(&self, receipts: &[Receipt]) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Gives a message back, to be received again after `delay`.
    fn nack(
        &self,
        receipt: &Receipt,
        delay: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Keeps a message invisible for `visibility` from now (a heartbeat for slow work).
    fn extend(
        &self,
        receipt: &Receipt,
        visibility: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Approximate depth.
    fn depth(&self) -> impl Future<Output = Result<Depth, QueueError>> + Send;
    /// Whether `send` writes a body in two parts ([`Message::body_rest`]) as it is; a wrapper
    /// joins the parts once, before anything else, for a backend that does not.
    fn takes_bodies_in_parts(&self) -> bool {
        false
    }
}

/// Either backend, chosen by configuration at start-up.
#[derive(Clone)]
pub enum AnyQueue {
    Sqs(SqsQueue),
    Embedded(EmbeddedQueue),
}

macro_rules! delegate {
    ($self:ident, $q:ident => $e:expr) => {
        match $self {
            AnyQueue::Sqs($q) => $e,
            AnyQueue::Embedded($q) => $e,
        }
    };
}

impl Queue for AnyQueue {
    fn name(&self) -> &str {
        delegate!(self, q => q.name())
    }
    async fn send(&self, messages: Vec<Message>) -> Result<(), QueueError> {
        delegate!(self, q => q.send(messages).await)
    }
    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Received>, QueueError> {
        delegate!(self, q => q.receive(options).await)
    }
    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        delegate!(self, q => q.ack(receipts).await)
    }
    async fn nack(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        delegate!(self, q => q.nack(receipt, delay).await)
    }
    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), QueueError> {
        delegate!(self, q => q.extend(receipt, visibility).await)
    }
    async fn depth(&self) -> Result<Depth, QueueError> {
        delegate!(self, q => q.depth().await)
    }
    fn takes_bodies_in_parts(&self) -> bool {
        delegate!(self, q => q.takes_bodies_in_parts())
    }
}

/// The embedded queue `name` in `db`, with large bodies claim-checked into `store`.
pub fn embedded_stage_queue(
    db: &EmbeddedDb,
    name: &str,
    store: &crate::AnyStore,
) -> crate::StageQueue {
    ClaimChecked::new(
        AnyQueue::Embedded(db.queue(name)),
        store.clone(),
        DEFAULT_CLAIM_CHECK_THRESHOLD,
        "claims/",
        plain_size,
    )
}

/// An SQS queue, with large bodies claim-checked into `store` (sized as SQS counts them).
pub fn sqs_stage_queue(queue: SqsQueue, store: &crate::AnyStore) -> crate::StageQueue {
    ClaimChecked::new(
        AnyQueue::Sqs(queue),
        store.clone(),
        DEFAULT_CLAIM_CHECK_THRESHOLD,
        "claims/",
        SqsQueue::wire_size,
    )
}

/// A local data directory: the embedded queue database (`queue.db`) and the object store
/// (`objects/`), as `mpconnect all` keeps them.
pub fn local_data(
    dir: &std::path::Path,
    sync: EmbeddedSync,
) -> Result<(EmbeddedDb, crate::AnyStore), QueueError> {
    let db = EmbeddedDb::open(&dir.join("queue.db"), sync)?;
    let store = crate::AnyStore::Local(crate::store::LocalStore::new(dir.join("objects")));
    Ok((db, store))
}
