//! Keeping received messages invisible while slow work on them goes on.

use std::time::Duration;

use super::{Queue, Receipt};

/// Extends the messages' visibility every third of `visibility` until dropped, so a consumer
/// that dies takes its heartbeat with it and the messages come back.
pub struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    /// `what` names the messages in the log line of a failed extension.
    pub fn start<Q: Queue + Clone + 'static>(
        queue: &Q,
        receipts: Vec<Receipt>,
        visibility: Duration,
        what: &'static str,
    ) -> Heartbeat {
        let queue = queue.clone();
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep(visibility / 3).await;
                for receipt in &receipts {
                    if let Err(e) = queue.extend(receipt, visibility).await {
                        tracing::warn!(error = %e, what, "cannot extend a message's visibility");
                    }
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}
