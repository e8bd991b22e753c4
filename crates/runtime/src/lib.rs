//! What every mpconnect stage shares: the [`queue`] contract and its backends (SQS, and an
//! embedded SQLite queue for `mpconnect all`), the [`store`] (S3 or a local directory), claim
//! checks for bodies too large for a queue message, and the AWS client settings.

pub mod aws;
pub mod queue;
pub mod store;

pub use queue::{
    AnyQueue, Attributes, ClaimChecked, Depth, Message, Queue, QueueError, Receipt, ReceiveOptions,
    Received,
};
pub use store::{AnyStore, ObjectInfo, ObjectStore, StoreError};

/// Milliseconds since the Unix epoch, the unit queue timestamps are kept in.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
