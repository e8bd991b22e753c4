//! One configured destination: its driver, its retry queue and the rules that keep its data
//! safe. A batch is answered only once it is delivered, parked in the retry queue, or
//! dead-lettered. A destination in trouble parks new batches at once, so it never holds up
//! the others; its retry worker keeps trying.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use runtime::telemetry::{self, TraceContext};
use runtime::{Queue, QueueError, Receipt, ReceiveOptions, StageQueue};
use schema::v1::{BatchOutcome, Outcome, RoutedBatch};

use crate::dlq::{DeadLetter, DeadLetters, DlqError};
use crate::driver::{Answer, Driver};
use crate::retry::{self, RetryPolicy};

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

/// What operators see of a destination's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationState {
    Healthy,
    /// A temporary failure: new batches are parked until then.
    BackingOff {
        for_ms: u64,
        because: String,
    },
    /// Our credentials were refused: nothing is sent until a probe succeeds.
    Suspended {
        because: String,
    },
}

struct Health {
    suspended: Option<String>,
    backing_off_until: Option<(Instant, String)>,
}

pub struct Destination {
    settings: DestinationSettings,
    driver: Arc<dyn Driver>,
    retry_queue: StageQueue,
    dead_letters: DeadLetters,
    health: Mutex<Health>,
}

/// Batches sorted by what to do with them after an attempt.
#[derive(Default)]
struct Settled {
    delivered: Vec<usize>,
    /// Index, when to try again (`None`: past the window), the answer.
    retry: Vec<(usize, Option<Duration>, Answer)>,
    dead: Vec<(usize, Answer)>,
}

/// How often the retry queue's depth is read (an SQS call per destination).
const DEPTH_REFRESH: Duration = Duration::from_secs(15);

/// Whether batches are on their first attempt or come from the retry queue.
#[derive(Clone, Copy)]
enum Round {
    First,
    Retry,
}

/// Ends each batch's span with where it went and the destination's status.
fn record_outcomes(spans: &[tracing::Span], settled: &Settled) {
    if spans.is_empty() {
        return;
    }
    let end = |i: usize, outcome: &str, answer: &Answer| {
        spans[i].record("outcome", outcome);
        if let Some(status) = answer.status() {
            spans[i].record("status", i64::from(status));
        }
    };
    for &i in &settled.delivered {
        end(i, "delivered", &Answer::Delivered);
    }
    for (i, delay, answer) in &settled.retry {
        end(*i, if delay.is_some() { "parked" } else { "dead" }, answer);
    }
    for (i, answer) in &settled.dead {
        end(*i, "dead", answer);
    }
}

impl Settled {
    /// Refused for good, and past the retry window.
    fn dead_lettered(&self) -> Vec<(usize, &Answer)> {
        let expired = self
            .retry
            .iter()
            .filter(|(_, delay, _)| delay.is_none())
            .map(|(i, _, a)| (*i, a));
        self.dead
            .iter()
            .map(|(i, a)| (*i, a))
            .chain(expired)
            .collect()
    }
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

    pub fn state(&self) -> DestinationState {
        let Ok(health) = self.health.lock() else {
            return DestinationState::Healthy;
        };
        if let Some(because) = &health.suspended {
            return DestinationState::Suspended {
                because: because.clone(),
            };
        }
        match &health.backing_off_until {
            Some((until, because)) if *until > Instant::now() => DestinationState::BackingOff {
                for_ms: (*until - Instant::now()).as_millis() as u64,
                because: because.clone(),
            },
            _ => DestinationState::Healthy,
        }
    }

    /// Delivers batches routed by the transform: one outcome per batch, each durable.
    pub async fn deliver(
        &self,
        mut batches: Vec<RoutedBatch>,
    ) -> Result<Vec<BatchOutcome>, DeliverError> {
        let now_ms = runtime::now_ms();
        let spans = self.batch_spans(&mut batches, |_| 1);
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
        record_outcomes(&spans, &settled);
        Ok(outcomes)
    }

    /// A span per batch in its own trace; each batch then carries its span's context, so the
    /// destination call (and a later retry) is its child.
    fn batch_spans(
        &self,
        batches: &mut [RoutedBatch],
        attempt: impl Fn(usize) -> u32,
    ) -> Vec<tracing::Span> {
        if !telemetry::enabled() {
            return Vec::new();
        }
        batches
            .iter_mut()
            .enumerate()
            .map(|(i, batch)| {
                let span = runtime::pipeline_span!(
                    "deliver",
                    otel.kind = "server",
                    mpconnect.stage = "delivery",
                    destination = self.id(),
                    connection = batch.connection.as_str(),
                    source = batch.source.as_str(),
                    events = batch.batch.as_ref().map_or(0, |b| b.events.len() as i64),
                    retry_attempt = i64::from(attempt(i)),
                    outcome = tracing::field::Empty,
                    status = tracing::field::Empty,
                );
                let parent = TraceContext::continue_from(
                    Some(batch.traceparent.as_str()),
                    Some(batch.tracestate.as_str()),
                );
                telemetry::continue_from(&span, parent.as_ref());
                if let Some(own) = telemetry::context_of(&span) {
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

    /// What the answers say about the destination's health.
    fn learn(&self, answers: &[Answer]) {
        let Ok(mut health) = self.health.lock() else {
            return;
        };
        let was_suspended = health.suspended.is_some();
        let unauthorized = answers
            .iter()
            .find(|a| matches!(a, Answer::Unauthorized { .. }));
        let retry = answers.iter().find_map(|a| match a {
            Answer::Retry { after, detail, .. } => Some((*after, detail.clone())),
            _ => None,
        });
        let any_success = answers
            .iter()
            .any(|a| matches!(a, Answer::Delivered | Answer::Reject { .. }));
        if let Some(answer) = unauthorized {
            if !was_suspended {
                tracing::error!(
                    destination = self.id(),
                    kind = self.driver.kind(),
                    status = answer.status(),
                    "the destination refused our credentials: sending to it is suspended and its \
                     batches are kept in its retry queue; fix the credentials (they are re-read \
                     from their file before each probe)"
                );
            }
            health.suspended = Some(format!(
                "credentials refused ({})",
                answer.status().unwrap_or_default()
            ));
        } else if any_success || retry.is_some() {
            if was_suspended {
                tracing::warn!(
                    destination = self.id(),
                    "credentials accepted again: sending resumes"
                );
            }
            health.suspended = None;
        }
        match retry {
            Some((after, detail)) => {
                let pause = after
                    .unwrap_or(self.settings.retry.base)
                    .max(self.settings.retry.base);
                health.backing_off_until = Some((Instant::now() + pause, detail));
            }
            None if any_success => health.backing_off_until = None,
            None => {}
        }
        drop(health);
        self.publish_state();
    }

    /// Sorts answers; `history(i)` gives batch i's attempts so far and its first attempt time.
    fn settle(&self, answers: &[Answer], history: impl Fn(usize) -> (u32, i64)) -> Settled {
        let policy = &self.settings.retry;
        let now_ms = runtime::now_ms();
        let mut settled = Settled::default();
        for (i, answer) in answers.iter().enumerate() {
            match answer {
                Answer::Delivered => settled.delivered.push(i),
                Answer::Reject { .. } => settled.dead.push((i, answer.clone())),
                // Our misconfiguration never costs the customer's data: no window here.
                Answer::Unauthorized { .. } => {
                    settled
                        .retry
                        .push((i, Some(policy.probe_interval), answer.clone()))
                }
                Answer::Retry { after, .. } => {
                    let (attempts, first_ms) = history(i);
                    let delay = policy.delay(attempts, *after);
                    let next_ms = now_ms + delay.as_millis() as i64;
                    let keep = policy.within_window(first_ms, next_ms);
                    settled
                        .retry
                        .push((i, keep.then_some(delay), answer.clone()));
                }
            }
        }
        settled
    }

    /// Keeps the `dead` batches as dead letters, with their history and last answer.
    async fn dead_letter(
        &self,
        dead: &[(usize, &Answer)],
        batches: &[RoutedBatch],
        history: impl Fn(usize) -> (u32, i64),
    ) -> Result<(), DlqError> {
        let letters: Vec<DeadLetter> = dead
            .iter()
            .map(|&(i, answer)| {
                let (attempts, first_attempt_ms) = history(i);
                DeadLetter::new(
                    self.id(),
                    batches[i].clone(),
                    attempts,
                    first_attempt_ms,
                    answer.status(),
                    answer.detail(),
                )
            })
            .collect();
        for result in join_all(letters.iter().map(|l| self.dead_letters.put(l))).await {
            result?;
        }
        for letter in &letters {
            tracing::warn!(
                destination = self.id(),
                dead_letter = %letter.id,
                status = letter.status,
                attempts = letter.attempts,
                "batch dead-lettered"
            );
        }
        Ok(())
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

    fn publish_state(&self) {
        let state = self.state();
        metrics::gauge!("mpconnect_delivery_suspended", "destination" => self.id().to_owned())
            .set(matches!(state, DestinationState::Suspended { .. }) as u8 as f64);
    }

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
        let spans = self.batch_spans(&mut batches, |i| histories[i].0 + 1);
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
        record_outcomes(&spans, &settled);
        Ok(received.len())
    }

    /// Writes out what the driver buffers.
    pub async fn flush(&self) {
        self.driver.flush().await;
    }
}
