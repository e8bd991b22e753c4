//! The retry worker: parked batches go out again when their time comes, a suspended
//! destination is probed, and the retry queue's depth is published.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use runtime::{Queue, Receipt, ReceiveOptions};

use super::settlement::record_outcomes;
use super::{DeliverError, Destination, DestinationState, Round};
use crate::retry;

/// How often the retry queue's depth is read (an SQS call per destination).
const DEPTH_REFRESH: Duration = Duration::from_secs(15);

impl Destination {
    /// Works the retry queue until `shutdown`: parked batches go out again when their time
    /// comes; a suspended destination is probed with one batch per probe interval.
    pub async fn run_retries(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        let workers = (0..self.settings.retry_workers.max(1)).map(|_| {
            let me = self.clone();
            let mut shutdown = shutdown.clone();
            async move {
                loop {
                    if *shutdown.borrow() {
                        break;
                    }
                    if let DestinationState::BackingOff { for_ms, .. } = me.state() {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(for_ms)) => {}
                            _ = shutdown.changed() => break,
                        }
                    }
                    tokio::select! {
                        result = runtime::guard::guarded("delivery retry worker", me.retry_round()) => match result {
                            // Panicked: logged and counted; the parked batches come back.
                            None | Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(destination = me.id(), error = %e, "retry round failed");
                                tokio::select! {
                                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                    _ = shutdown.changed() => break,
                                }
                            }
                        },
                        _ = shutdown.changed() => break,
                    }
                    // A suspended destination is probed once per interval, busy queue or not.
                    if matches!(me.state(), DestinationState::Suspended { .. }) {
                        tokio::select! {
                            _ = tokio::time::sleep(me.settings.retry.probe_interval) => {}
                            _ = shutdown.changed() => break,
                        }
                    }
                }
            }
        });
        futures_util::future::join(join_all(workers), self.watch_depth(shutdown)).await;
    }

    /// Publishes the retry queue's depth (parked batches waiting out their backoff are
    /// `delayed`) until `shutdown`.
    async fn watch_depth(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let queue = format!("retry-{}", self.id());
        loop {
            match self.retry_queue.depth().await {
                Ok(depth) => {
                    for (state, n) in [
                        ("visible", depth.visible),
                        ("in_flight", depth.in_flight),
                        ("delayed", depth.delayed),
                    ] {
                        metrics::gauge!("mpconnect_queue_depth", "queue" => queue.clone(), "state" => state)
                            .set(n as f64);
                    }
                }
                Err(e) => {
                    tracing::debug!(destination = self.id(), error = %e, "cannot read the retry queue's depth")
                }
            }
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(DEPTH_REFRESH) => {}
                _ = shutdown.changed() => break,
            }
        }
    }

    /// One round of the retry queue; returns how many parked batches it handled.
    pub async fn retry_round(&self) -> Result<usize, DeliverError> {
        let suspended = matches!(self.state(), DestinationState::Suspended { .. });
        let want = if suspended {
            1
        } else {
            self.settings.retry_batch.max(1)
        };
        let visibility = self.settings.attempt_timeout * 2 + Duration::from_secs(30);
        let mut received = Vec::new();
        while received.len() < want {
            let first = received.is_empty();
            let got = self
                .retry_queue
                .receive(ReceiveOptions {
                    max_messages: (want - received.len()).min(10),
                    wait: if first {
                        Duration::from_secs(1)
                    } else {
                        Duration::ZERO
                    },
                    visibility,
                })
                .await?;
            let done = got.is_empty();
            received.extend(got);
            if done {
                break;
            }
        }
        if received.is_empty() {
            return Ok(0);
        }
        if suspended {
            self.driver.reload_credentials();
        }
        // Side by side, so the batches go to the driver as they are, uncopied.
        let mut receipts = Vec::with_capacity(received.len());
        let mut histories = Vec::with_capacity(received.len());
        let mut batches = Vec::with_capacity(received.len());
        let mut unreadable = Vec::new();
        for message in &received {
            match retry::parked_from(message) {
                Ok(p) => {
                    receipts.push(message.receipt.clone());
                    histories.push((p.attempts, p.first_attempt_ms));
                    batches.push(p.batch);
                }
                Err(e) => {
                    tracing::error!(destination = self.id(), message_id = %message.message_id, error = %e, "unreadable parked batch dropped");
                    unreadable.push(message.receipt.clone());
                }
            }
        }
        let mut spans = self.batch_spans(&mut batches, |i| histories[i].0 + 1);
        let answers = self.attempt(&batches).await;
        metrics::counter!("mpconnect_delivery_retries_total", "destination" => self.id().to_owned())
            .increment(batches.len() as u64);
        let history = |i: usize| histories[i];
        let settled = self.settle(&answers, history);
        let mut done: Vec<Receipt> = unreadable;
        done.extend(settled.delivered.iter().map(|&i| receipts[i].clone()));
        let dead = settled.dead_lettered();
        self.dead_letter(&dead, &batches, history).await?;
        done.extend(dead.iter().map(|(i, _)| receipts[*i].clone()));
        for (i, delay, _) in &settled.retry {
            if let Some(delay) = delay
                && let Err(e) = self.retry_queue.nack(&receipts[*i], *delay).await
            {
                // It comes back after its visibility timeout instead.
                tracing::warn!(destination = self.id(), error = %e, "cannot reschedule a parked batch");
            }
        }
        if !done.is_empty() {
            self.retry_queue.ack(&done).await?;
        }
        self.count(&settled, &batches, Round::Retry);
        record_outcomes(&mut spans, &settled);
        Ok(received.len())
    }
}
