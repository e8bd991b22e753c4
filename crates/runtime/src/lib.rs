//! What every mpconnect stage shares: the [`queue`] contract and its backends (SQS, and an
//! embedded SQLite queue for `mpconnect all`), the [`store`] (S3 or a local directory), claim
//! checks for bodies too large for a queue message, and the AWS client settings.

pub mod aws;
pub mod config;
pub mod envelope;
pub mod guard;
pub mod queue;
pub mod secret;
pub mod store;
pub mod telemetry;
/// Helpers for tests across the workspace (moto, a fault proxy): feature `testing`, never in
/// release builds.
#[cfg(feature = "testing")]
pub mod testing;

pub use config::SecretConfig;
pub use queue::{
    AnyQueue, Attributes, ClaimChecked, Depth, Message, Queue, QueueError, Receipt, ReceiveOptions,
    Received,
};
pub use secret::{Secret, SecretSource};
pub use store::{AnyStore, ObjectInfo, ObjectStore, StoreError};

/// The queue every stage uses: either backend, with claim checks for large bodies.
pub type StageQueue = ClaimChecked<AnyQueue, AnyStore>;

/// Milliseconds since the Unix epoch, the unit queue timestamps are kept in.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
