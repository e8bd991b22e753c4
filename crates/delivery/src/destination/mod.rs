//! One configured destination: its driver, its retry queue and the rules that keep its data
//! safe. A batch is answered only once it is delivered, parked in the retry queue, or
//! dead-lettered. A destination in trouble parks new batches at once, so it never holds up
//! the others; its retry worker keeps trying.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runtime::telemetry::{self, PipelineSpan};
use runtime::{Queue, QueueError, StageQueue};
use schema::v1::{BatchOutcome, Outcome, RoutedBatch};

use crate::dlq::{DeadLetters, DlqError};
use crate::driver::{Answer, Driver};
use crate::retry::{self, RetryPolicy};

mod health;
mod retry_worker;
mod settlement;

pub use health::DestinationState;
use health::Health;
use settlement::{Settled, record_outcomes};

#[derive(Debug, Clone)]
pub struct DestinationSettings {
    pub id: String,
    pub retry: RetryPolicy,
    /// One attempt (all the requests for one call) gets at most this long.
    pub attempt_timeout: Duration,
    /// Parked batches taken from the retry queue per attempt.
    pub retry_batch: usize,
    /// Concurrent retry-queue workers.
    pub retry_workers: usize,
}

/// How long one attempt gets unless configured.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

impl DestinationSettings {
    pub fn new(id: impl Into<String>) -> Self {
        DestinationSettings {
            id: id.into(),
            retry: RetryPolicy::default(),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            retry_batch: 100,
            retry_workers: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("cannot park batches in the retry queue: {0}")]
    Park(#[from] QueueError),
    #[error("cannot keep dead letters: {0}")]
    DeadLetter(#[from] DlqError),
}

pub struct Destination {
    settings: DestinationSettings,
    driver: Arc<dyn Driver>,
    retry_queue: StageQueue,
    dead_letters: DeadLetters,
    health: Mutex<Health>,
}

/// Whether batches are on their first attempt or come from the retry queue.
#[derive(Clone, Copy)]
enum Round {
    First,
    Retry,
}

impl Destination {
    pub fn new(
        settings: DestinationSettings,
        driver: Arc<dyn Driver>,
        retry_queue: StageQueue,
        dead_letters: DeadLetters,
    ) -> Arc<Self> {
        runtime::telemetry::metrics();
        let destination = Arc::new(Destination {
            settings,
            driver,
            retry_queue,
            dead_letters,
            health: Mutex::new(Health {
                suspended: None,
                backing_off_until: None,
            }),
        });
        destination.publish_state();
        // Every series exists from the start, so a dashboard's rate() sees a zero, not a gap.
        let id = destination.id().to_owned();
        for outcome in ["delivered", "parked", "dead_lettered"] {
            metrics::counter!("mpconnect_delivery_batches_total", "destination" => id.clone(), "outcome" => outcome)
                .increment(0);
        }
        metrics::counter!("mpconnect_delivery_events_total", "destination" => id.clone(), "outcome" => "delivered")
            .increment(0);
        metrics::counter!("mpconnect_delivery_retries_total", "destination" => id).increment(0);
        destination
    }

    pub fn id(&self) -> &str {
        &self.settings.id
    }

    pub fn retry_queue(&self) -> &StageQueue {
        &self.retry_queue
    }

    /// Delivers batches routed by the transform: one outcome per batch, each durable.
    pub async fn deliver(
        &self,
        mut batches: Vec<RoutedBatch>,
    ) -> Result<Vec<BatchOutcome>, DeliverError> {
        let now_ms = runtime::now_ms();
        let mut spans = self.batch_spans(&mut batches, |_| 1);
        let answers = match self.state() {
            DestinationState::Healthy => self.attempt(&batches).await,
            DestinationState::BackingOff { because, .. }
            | DestinationState::Suspended { because } => {
                // Don't wait for a sick destination: park, and let the retry worker try.
                vec![Answer::retry(format!("parked: {because}")); batches.len()]
            }
        };
        let history = |_| (1, now_ms);
        let settled = self.settle(&answers, history);
        let mut outcomes: Vec<BatchOutcome> = Vec::with_capacity(batches.len());
        let outcome = |batch: &RoutedBatch, outcome: Outcome, detail: &str| BatchOutcome {
            key: batch.key.clone(),
            outcome: outcome as i32,
            detail: detail.to_owned(),
        };
        for &i in &settled.delivered {
            outcomes.push(outcome(&batches[i], Outcome::Delivered, ""));
        }
        let parked: Vec<_> = settled
            .retry
            .iter()
            .filter_map(|(i, delay, answer)| delay.map(|d| (*i, d, answer)))
            .collect();
        if !parked.is_empty() {
            let messages = parked
                .iter()
                .map(|(i, delay, _)| {
                    retry::parked_message(self.id(), &batches[*i], now_ms, 1, *delay)
                })
                .collect();
            self.retry_queue.send(messages).await?;
            for (i, _, answer) in &parked {
                outcomes.push(outcome(&batches[*i], Outcome::Parked, answer.detail()));
            }
        }
        let dead = settled.dead_lettered();
        self.dead_letter(&dead, &batches, history).await?;
        for (i, answer) in &dead {
            outcomes.push(outcome(
                &batches[*i],
                Outcome::DeadLettered,
                answer.detail(),
            ));
        }
        self.count(&settled, &batches, Round::First);
        record_outcomes(&mut spans, &settled);
        Ok(outcomes)
    }

    /// A span per batch in its own trace; each batch then carries its span's context, so the
    /// destination call (and a later retry) is its child.
    fn batch_spans(
        &self,
        batches: &mut [RoutedBatch],
        attempt: impl Fn(usize) -> u32,
    ) -> Vec<PipelineSpan> {
        if !telemetry::enabled() {
            return Vec::new();
        }
        batches
            .iter_mut()
            .enumerate()
            .map(|(i, batch)| {
                // The batch's own context, read once by the span (not checked into a
                // `TraceContext` first and parsed again): with one, "linked" is its child.
                let span = runtime::pipeline_span!(
                    "deliver",
                    Server,
                    linked: std::iter::once((batch.traceparent.as_str(), batch.tracestate.as_str())),
                    "mpconnect.stage" = "delivery",
                    "destination" = self.id().to_owned(),
                    "connection" = batch.connection.clone(),
                    "source" = batch.source.clone(),
                    "events" = batch.batch.as_ref().map_or(0, |b| b.events.len() as i64),
                    "retry_attempt" = i64::from(attempt(i)),
                );
                if let Some(own) = span.context() {
                    batch.traceparent = own.traceparent;
                }
                span
            })
            .collect()
    }

    /// One attempt at the destination, within the attempt timeout.
    async fn attempt(&self, batches: &[RoutedBatch]) -> Vec<Answer> {
        // A driver that reads content gets pass-through batches in full; the originals (the
        // sender's exact bytes) stay what is parked or dead-lettered.
        let materialized;
        let batches = if !self.driver.takes_pass_through()
            && batches
                .iter()
                .any(|b| b.batch.as_ref().is_some_and(schema::is_pass_through))
        {
            materialized = batches
                .iter()
                .map(|b| {
                    let mut b = b.clone();
                    if let Some(batch) = &mut b.batch
                        && let Err(e) = schema::materialize(batch)
                    {
                        // Answered "no batch" (refused) by the driver; kept whole as a dead letter.
                        tracing::error!(destination = self.id(), error = %e, "a pass-through batch does not decode");
                        b.batch = None;
                    }
                    b
                })
                .collect::<Vec<_>>();
            &materialized[..]
        } else {
            batches
        };
        // Each request ends by the deadline (the HTTP drivers bound it so), so the answers of
        // those that succeeded are kept; the outer bound is only a safety net against a stuck
        // driver, and cutting an attempt there would send its delivered batches again.
        let deadline = Instant::now() + self.settings.attempt_timeout;
        let answers = match tokio::time::timeout(
            self.settings.attempt_timeout * 2,
            self.driver.send(batches, deadline),
        )
        .await
        {
            Ok(answers) if answers.len() == batches.len() => answers,
            Ok(answers) => {
                tracing::error!(
                    destination = self.id(),
                    expected = batches.len(),
                    got = answers.len(),
                    "driver answered for the wrong number of batches"
                );
                vec![
                    Answer::retry("driver answered for the wrong number of batches");
                    batches.len()
                ]
            }
            Err(_) => vec![
                Answer::retry(format!(
                    "no answer within {:?}",
                    self.settings.attempt_timeout
                ));
                batches.len()
            ],
        };
        self.learn(&answers);
        answers
    }

    /// Outcome counts: each batch counts once as delivered or dead-lettered when it gets
    /// there, and once as parked when first parked (not again on each later retry).
    fn count(&self, settled: &Settled, batches: &[RoutedBatch], round: Round) {
        let events = |indexes: &mut dyn Iterator<Item = usize>| -> u64 {
            indexes
                .map(|i| {
                    batches[i]
                        .batch
                        .as_ref()
                        .map_or(0, |b| b.events.len() as u64)
                })
                .sum()
        };
        let still_waiting = settled.retry.iter().filter(|r| r.1.is_some()).count();
        let dead = settled.dead.len() + settled.retry.len() - still_waiting;
        let parked = match round {
            Round::First => still_waiting,
            Round::Retry => 0,
        };
        let delivered_events = events(&mut settled.delivered.iter().copied());
        for (outcome, n) in [
            ("delivered", settled.delivered.len()),
            ("parked", parked),
            ("dead_lettered", dead),
        ] {
            if n > 0 {
                metrics::counter!("mpconnect_delivery_batches_total", "destination" => self.id().to_owned(), "outcome" => outcome)
                    .increment(n as u64);
            }
        }
        if delivered_events > 0 {
            metrics::counter!("mpconnect_delivery_events_total", "destination" => self.id().to_owned(), "outcome" => "delivered")
                .increment(delivered_events);
        }
    }

    /// Writes out what the driver buffers.
    pub async fn flush(&self) {
        self.driver.flush().await;
    }
}
