//! Long-lived loops (queue pollers, retry workers, S3 readers) run one round at a time through
//! [`guarded`]: a panic in a round is logged and counted, and the loop goes on, instead of the
//! task ending silently and the stage doing nothing while its health checks still answer ok.
//! What the round held is not acknowledged, so it comes back (at-least-once); a message that
//! panics every time is dead-lettered by its receive count.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;

/// Runs one round of the loop `task`; `None` when it panicked (logged, and counted in
/// `mpconnect_panics_total{task}`).
pub async fn guarded<T>(task: &'static str, round: impl Future<Output = T>) -> Option<T> {
    match AssertUnwindSafe(round).catch_unwind().await {
        Ok(value) => Some(value),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            tracing::error!(task, panic = %what, "a round panicked; the loop goes on, and what it held comes back");
            metrics::counter!("mpconnect_panics_total", "task" => task).increment(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_round_is_contained_and_the_next_runs() {
        assert_eq!(guarded("test", async { 7 }).await, Some(7));
        let panicked: Option<()> = guarded("test", async {
            panic!("a poison message");
        })
        .await;
        assert_eq!(panicked, None);
        assert_eq!(guarded("test", async { 8 }).await, Some(8));
    }
}
