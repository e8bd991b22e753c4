//! The ingest-queue consumer and the rule that keeps data safe here: a message is deleted only
//! when every destination it routes to has answered for it (delivered, parked in delivery's
//! retry queue, or dead-lettered). If some destinations answered and others did not, a copy
//! routed to the others alone is queued and the original deleted, so a healthy destination
//! never gets the batch twice because a sick one made it come back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use runtime::envelope::{attr, content_type};
use runtime::telemetry::{self, TraceContext};
use runtime::{Message, Queue, QueueError, ReceiveOptions, Received, StageQueue};
use schema::v1::{Batch, Outcome, RoutedBatch};

use crate::client::{DeliveryClient, DeliveryError};
use crate::dedupe::{DedupeSettings, DedupeWindow, Key, Tier};
use crate::rules::Rules;

/// Joins one source to one or more destinations, through rules: a `[[connections]]` entry.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Connection {
    pub id: String,
    pub source: String,
    pub destinations: Vec<String>,
    #[serde(default)]
    pub rules: Rules,
}

#[derive(Debug, Clone)]
pub struct TransformSettings {
    pub connections: Vec<Connection>,
    /// Concurrent receive loops on the ingest queue.
    pub pollers: usize,
    pub receive: ReceiveOptions,
    pub dedupe: DedupeSettings,
    /// Backoff of a message that found delivery unavailable: doubles per receive, with jitter.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// A poller that has not come round for this long is stuck ([`Transform::stalled`]): a
    /// round is bounded by delivery's deadline and the queue's timeouts, far below it.
    pub stalled_after: Duration,
}

impl Default for TransformSettings {
    fn default() -> Self {
        TransformSettings {
            connections: Vec::new(),
            pollers: 2,
            receive: ReceiveOptions {
                max_messages: 10,
                wait: Duration::from_secs(5),
                visibility: Duration::from_secs(60),
            },
            dedupe: DedupeSettings::default(),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            stalled_after: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default)]
pub struct TransformStats {
    pub messages: AtomicU64,
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub requeued: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub events_in: AtomicU64,
    pub events_out: AtomicU64,
    pub events_filtered: AtomicU64,
    pub events_deduplicated: AtomicU64,
}

/// What became of a batch's events in the transform.
#[derive(Clone, Copy)]
enum Events {
    In,
    Out,
    Filtered,
    Deduplicated,
}

impl TransformStats {
    /// Counts `n` events of `connection`, in these stats and on `/metrics` alike.
    fn count_events(&self, connection: &str, what: Events, n: usize) {
        let (total, outcome) = match what {
            Events::In => (&self.events_in, "in"),
            Events::Out => (&self.events_out, "out"),
            Events::Filtered => (&self.events_filtered, "filtered"),
            Events::Deduplicated => (&self.events_deduplicated, "deduplicated"),
        };
        total.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("mpconnect_transform_events_total", "connection" => connection.to_owned(), "outcome" => outcome)
            .increment(n as u64);
    }
}

#[derive(Clone)]
pub struct Transform {
    inner: Arc<Inner>,
}

struct Inner {
    settings: TransformSettings,
    queue: StageQueue,
    dead_letter: Option<StageQueue>,
    client: DeliveryClient,
    dedupe: DedupeWindow,
    /// Batch keys other rounds are delivering now: a copy of one of them (a sender's re-send
    /// queued beside the first) waits for that outcome instead of going out beside it.
    in_flight: Mutex<HashSet<Key>>,
    /// When each poller last came round (ms since the epoch; 0: not started, MAX: stopped).
    turns: Vec<AtomicI64>,
    stats: TransformStats,
    /// Source id → indexes of its connections.
    by_source: HashMap<String, Vec<usize>>,
}

/// One connection/destination pair a message owes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    connection: usize,
    destination: String,
}

/// What became of one route of one message.
enum Answer {
    /// Delivered or parked (durable elsewhere), or a repeat of one that was: remembered, so a
    /// repeat is not sent again.
    Answered,
    /// Dead-lettered by delivery: durable there, but not remembered, so a corrected re-send
    /// is not dropped as a repeat of what the destination never took.
    DeadLettered,
    /// Refused for good: the message goes to the dead-letter queue for this route.
    Refused(String),
    /// Not answered: try again later.
    Failed(String),
}

impl Transform {
    /// Checks the connections and their rules, all problems at once.
    pub fn new(
        settings: TransformSettings,
        queue: StageQueue,
        dead_letter: Option<StageQueue>,
        client: DeliveryClient,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut by_source: HashMap<String, Vec<usize>> = HashMap::new();
        let mut ids = HashSet::new();
        for (i, c) in settings.connections.iter().enumerate() {
            let at = format!("connections[{i}] ({})", c.id);
            if !ids.insert(c.id.clone()) {
                problems.push(format!("{at}: the id is used twice"));
            }
            if c.id.contains(['/', ',']) {
                problems.push(format!("{at}: an id may not contain '/' or ','"));
            }
            if c.destinations.is_empty() {
                problems.push(format!("{at}: no destinations"));
            }
            if let Err(found) = c.rules.validate() {
                problems.extend(found.into_iter().map(|p| format!("{at}: {p}")));
            }
            by_source.entry(c.source.clone()).or_default().push(i);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        runtime::telemetry::metrics();
        let dedupe = DedupeWindow::new(settings.dedupe.clone());
        let turns = (0..settings.pollers.max(1))
            .map(|_| AtomicI64::new(0))
            .collect();
        Ok(Transform {
            inner: Arc::new(Inner {
                settings,
                queue,
                dead_letter,
                client,
                dedupe,
                in_flight: Mutex::default(),
                turns,
                stats: TransformStats::default(),
                by_source,
            }),
        })
    }

    pub fn stats(&self) -> &TransformStats {
        &self.inner.stats
    }

    /// Runs the pollers until `shutdown` resolves: then they stop receiving, finish the
    /// messages in hand, and this returns.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut pollers = tokio::task::JoinSet::new();
        for poller in 0..self.inner.turns.len() {
            let this = self.clone();
            let mut stopped = stopped.clone();
            pollers.spawn(async move {
                loop {
                    this.inner.turns[poller].store(runtime::now_ms(), Ordering::Relaxed);
                    let receive = this.inner.queue.receive(this.inner.settings.receive);
                    let received = tokio::select! {
                        _ = stopped.wait_for(|s| *s) => break,
                        r = runtime::guard::guarded("transform poller", receive) => r,
                    };
                    match received {
                        Some(Ok(messages)) if !messages.is_empty() => {
                            runtime::guard::guarded("transform poller", this.process(messages))
                                .await;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "cannot receive from the ingest queue; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                }
                // Stopped: no longer expected to turn.
                this.inner.turns[poller].store(i64::MAX, Ordering::Relaxed);
            });
        }
        shutdown.await;
        let _ = stop.send(true);
        while pollers.join_next().await.is_some() {}
    }

    /// Why the transform is unhealthy, if it is: a poller that has not come round for
    /// `stalled_after`. Pollers not started yet, or stopped, are not counted.
    pub fn stalled(&self) -> Option<String> {
        let now = runtime::now_ms();
        let stalled_after = self.inner.settings.stalled_after;
        let limit = stalled_after.as_millis() as i64;
        let stuck = self
            .inner
            .turns
            .iter()
            .filter(|t| {
                let at = t.load(Ordering::Relaxed);
                at != 0 && at != i64::MAX && now - at > limit
            })
            .count();
        (stuck > 0).then(|| {
            format!(
                "{stuck} of {} ingest-queue pollers have not come round for {} s",
                self.inner.turns.len(),
                stalled_after.as_secs()
            )
        })
    }

    /// One receive and its processing; returns how many messages it handled.
    pub async fn poll_once(&self) -> Result<usize, QueueError> {
        let messages = self
            .inner
            .queue
            .receive(self.inner.settings.receive)
            .await?;
        let n = messages.len();
        if n > 0 {
            self.process(messages).await;
        }
        Ok(n)
    }

    async fn process(&self, messages: Vec<Received>) {
        let inner = &self.inner;
        let stats = &inner.stats;
        stats
            .messages
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        metrics::counter!("mpconnect_transform_messages_total", "outcome" => "received")
            .increment(messages.len() as u64);
        let now = runtime::now_ms();
        let oldest_ms = messages
            .iter()
            .map(|m| now - m.sent_at_ms)
            .max()
            .unwrap_or(0);
        metrics::gauge!("mpconnect_queue_oldest_message_age_seconds", "queue" => "ingest")
            .set(oldest_ms.max(0) as f64 / 1000.0);
        let heartbeat =
            Heartbeat::start(&inner.queue, &messages, inner.settings.receive.visibility);

        // Decode and route each message; what cannot be is dead-lettered.
        let mut work: Vec<(Received, Batch, Vec<Route>)> = Vec::with_capacity(messages.len());
        // Each message's span, and the context its routed batches carry to delivery.
        let mut traces: Vec<(tracing::Span, Option<TraceContext>)> =
            Vec::with_capacity(messages.len());
        for message in messages {
            let (span, trace) = message_span(&message);
            match self.route(&message) {
                Ok((batch, routes)) => {
                    span.record("events_in", batch.events.len() as i64);
                    work.push((message, batch, routes));
                    traces.push((span, trace));
                }
                Err(reason) => {
                    span.record("outcome", "dead_lettered");
                    metrics::counter!("mpconnect_transform_messages_total", "outcome" => "dead_lettered")
                        .increment(1);
                    self.dead_letter(message, &reason).await
                }
            }
        }

        // Apply each connection's rules once, drop repeats per destination, group by destination.
        let mut by_destination: BTreeMap<String, Vec<RoutedBatch>> = BTreeMap::new();
        let mut answers: Vec<Vec<Option<Answer>>> = Vec::with_capacity(work.len());
        let mut remember: Vec<Vec<(String, RouteKeys)>> = Vec::with_capacity(work.len());
        // Keys already routed in this round: a repeat inside one round is a repeat too.
        let mut in_round: HashSet<Key> = HashSet::new();
        let mut reserved = Reservation {
            in_flight: &inner.in_flight,
            keys: Vec::new(),
        };
        let seen = |tier: Tier, key: &Key, in_round: &HashSet<Key>| {
            in_round.contains(key) || inner.dedupe.contains(tier, key)
        };
        for (m, (message, batch, routes)) in work.iter_mut().enumerate() {
            let mut per_route: Vec<Option<Answer>> = (0..routes.len()).map(|_| None).collect();
            let mut keys_per_route: Vec<(String, RouteKeys)> =
                vec![(String::new(), RouteKeys::default()); routes.len()];
            let had_events = !batch.events.is_empty();
            // Summed over every route, for the message's span.
            let mut events_out = 0usize;
            // The batch is copied only when a second connection or destination needs its own.
            let mut connections: Vec<usize> = routes.iter().map(|r| r.connection).collect();
            connections.sort_unstable();
            connections.dedup();
            let connection_count = connections.len();
            for (c, &connection_index) in connections.iter().enumerate() {
                let connection = &inner.settings.connections[connection_index];
                let mut applied_batch = if c + 1 == connection_count {
                    std::mem::take(batch)
                } else {
                    batch.clone()
                };
                // No rules: nothing to apply (and a pass-through batch stays one).
                let applied = if connection.rules.is_empty() {
                    crate::rules::Applied {
                        events_in: applied_batch.events.len(),
                        events_filtered: 0,
                    }
                } else {
                    connection.rules.apply(&mut applied_batch)
                };
                let counted = |what: Events, n: usize| stats.count_events(&connection.id, what, n);
                counted(Events::In, applied.events_in);
                counted(Events::Filtered, applied.events_filtered);
                let mine: Vec<usize> = (0..routes.len())
                    .filter(|&r| routes[r].connection == connection_index)
                    .collect();
                for (i, &r) in mine.iter().enumerate() {
                    let route = &routes[r];
                    let mut out = if i + 1 == mine.len() {
                        std::mem::take(&mut applied_batch)
                    } else {
                        applied_batch.clone()
                    };
                    let keys = dedupe_keys(message, &out, &connection.id, &route.destination);
                    if keys.iter().any(|k| seen(Tier::Batch, k, &in_round)) {
                        counted(Events::Deduplicated, out.events.len());
                        per_route[r] = Some(Answer::Answered);
                        keys_per_route[r] = (route.destination.clone(), RouteKeys::default());
                        continue;
                    }
                    if !reserved.take(&keys) {
                        per_route[r] = Some(Answer::Failed(
                            "a copy of this batch is being delivered; it waits for that outcome"
                                .into(),
                        ));
                        keys_per_route[r] = (route.destination.clone(), RouteKeys::default());
                        continue;
                    }
                    // Each kept event's key is made once, here, and remembered below.
                    let mut event_keys = Vec::new();
                    let before = out.events.len();
                    out.events.retain(|e| {
                        let Some(id) = &e.source_message_id else {
                            return true;
                        };
                        let key = event_key(&connection.id, &route.destination, message, id);
                        if seen(Tier::Event, &key, &in_round) {
                            return false;
                        }
                        event_keys.push(key);
                        true
                    });
                    counted(Events::Deduplicated, before - out.events.len());
                    // Some events repeated: a pass-through batch is read in full and sent
                    // without them (a failure to read it would send them again, never lose).
                    if out.events.len() != before
                        && let Err(e) = schema::materialize(&mut out)
                    {
                        tracing::error!(error = %e, "a pass-through batch does not decode; sent whole");
                    }
                    // Everything filtered or repeated: nothing owed to this destination. (A batch
                    // that came with no events still goes: it may carry user attribute changes.)
                    if out.events.is_empty() && had_events {
                        per_route[r] = Some(Answer::Answered);
                        keys_per_route[r] = (route.destination.clone(), RouteKeys::default());
                        continue;
                    }
                    counted(Events::Out, out.events.len());
                    events_out += out.events.len();
                    let trace = &traces[m].1;
                    in_round.extend(keys.iter().chain(&event_keys).copied());
                    keys_per_route[r] = (
                        route.destination.clone(),
                        RouteKeys {
                            batch: keys,
                            events: event_keys,
                        },
                    );
                    by_destination
                        .entry(route.destination.clone())
                        .or_default()
                        .push(RoutedBatch {
                            key: format!("{m}/{r}"),
                            batch: Some(out),
                            source: message
                                .attributes
                                .get(attr::SOURCE)
                                .cloned()
                                .unwrap_or_default(),
                            connection: connection.id.clone(),
                            historical: message
                                .attributes
                                .get(attr::HISTORICAL)
                                .is_some_and(|v| v == "true"),
                            traceparent: trace
                                .as_ref()
                                .map(|t| t.traceparent.clone())
                                .or_else(|| message.attributes.get(attr::TRACEPARENT).cloned())
                                .unwrap_or_default(),
                            tracestate: trace
                                .as_ref()
                                .and_then(|t| t.tracestate.clone())
                                .or_else(|| message.attributes.get(attr::TRACESTATE).cloned())
                                .unwrap_or_default(),
                        });
                }
            }
            let span = &traces[m].0;
            span.record("destinations", routes.len() as i64);
            span.record("events_out", events_out as i64);
            answers.push(per_route);
            remember.push(keys_per_route);
        }

        // One call per destination, all at once: a slow destination does not hold the others.
        let calls = by_destination.into_iter().map(|(destination, batches)| {
            let client = inner.client.clone();
            let keys: Vec<String> = batches.iter().map(|b| b.key.clone()).collect();
            async move {
                let started = std::time::Instant::now();
                let result = client.deliver(&destination, batches).await;
                metrics::histogram!("mpconnect_transform_deliver_duration_seconds", "destination" => destination.clone())
                    .record(started.elapsed().as_secs_f64());
                (destination, keys, result)
            }
        });
        for (destination, keys, result) in join_all(calls).await {
            let outcomes: HashMap<String, (i32, String)> = match &result {
                Ok(outcomes) => outcomes
                    .iter()
                    .map(|o| (o.key.clone(), (o.outcome, o.detail.clone())))
                    .collect(),
                Err(_) => HashMap::new(),
            };
            if let Err(e) = &result {
                tracing::warn!(destination, error = %e, batches = keys.len(), "delivery did not answer");
            }
            for key in keys {
                let (m, r) = key
                    .split_once('/')
                    .and_then(|(m, r)| Some((m.parse::<usize>().ok()?, r.parse::<usize>().ok()?)))
                    .unwrap_or((usize::MAX, 0));
                let Some(slot) = answers.get_mut(m).and_then(|a| a.get_mut(r)) else {
                    continue;
                };
                *slot = Some(match (&result, outcomes.get(&key)) {
                    (Err(DeliveryError::Permanent(e)), _) => Answer::Refused(e.clone()),
                    (Err(DeliveryError::Temporary(e)), _) => Answer::Failed(e.clone()),
                    (Ok(_), Some((o, detail))) => match Outcome::try_from(*o) {
                        Ok(Outcome::Delivered | Outcome::Parked) => Answer::Answered,
                        Ok(Outcome::DeadLettered) => Answer::DeadLettered,
                        _ => Answer::Failed(format!("no usable outcome: {detail}")),
                    },
                    (Ok(_), None) => Answer::Failed("delivery's answer left this batch out".into()),
                });
            }
        }
        drop(heartbeat);

        // What the destinations took is remembered (and written) first, before any settling:
        // a crash sends again only what was answered in the moment before it.
        let mut answered = RouteKeys::default();
        for (per_route, keys) in answers.iter().zip(remember.iter_mut()) {
            for (answer, (_, route_keys)) in per_route.iter().zip(keys.iter_mut()) {
                if matches!(answer, Some(Answer::Answered)) {
                    answered.extend(std::mem::take(route_keys));
                }
            }
        }
        inner.dedupe.insert_all(Tier::Batch, &answered.batch);
        inner.dedupe.insert_all(Tier::Event, &answered.events);
        // Remembered: a copy waiting on these keys now finds them in the window.
        drop(reserved);

        // Settle each message; the done ones are deleted in one call.
        let mut done = Vec::with_capacity(work.len());
        for ((((message, _, routes), per_route), keys), (span, _)) in
            work.into_iter().zip(answers).zip(remember).zip(traces)
        {
            let mut failed = Vec::new();
            let mut refused = Vec::new();
            let mut refused_routes = Vec::new();
            for ((route, answer), (destination, _)) in routes.iter().zip(per_route).zip(keys) {
                match answer {
                    Some(Answer::Answered | Answer::DeadLettered) => {}
                    Some(Answer::Refused(e)) => {
                        refused.push(format!("{destination}: {e}"));
                        refused_routes.push(route.clone());
                    }
                    Some(Answer::Failed(e)) => {
                        tracing::debug!(destination, error = %e, "route not answered; it will be retried");
                        failed.push(route.clone());
                    }
                    None => failed.push(route.clone()),
                }
            }
            // A refused route is settled only by its copy in the dead-letter queue: when the
            // copy cannot be made, the route is retried like one not answered, never acked.
            if !refused.is_empty()
                && !self
                    .copy_to_dead_letter(&message, &refused.join("; "))
                    .await
            {
                tracing::error!(
                    message_id = message.message_id,
                    "cannot dead-letter a refused batch; it stays in the queue"
                );
                failed.extend(refused_routes);
            }
            let outcome = if failed.is_empty() {
                done.push(message.receipt);
                if refused.is_empty() {
                    "answered"
                } else {
                    "dead_lettered"
                }
            } else {
                // A fresh copy, not a nack: every receive counts toward the queue's
                // dead-lettering, and good data must wait out an outage of delivery however
                // long it lasts, never be dead-lettered for it. The copy carries the attempts.
                self.requeue_for(&message, &failed).await;
                if failed.len() < routes.len() {
                    "requeued"
                } else {
                    "retried"
                }
            };
            span.record("outcome", outcome);
            metrics::counter!("mpconnect_transform_messages_total", "outcome" => outcome)
                .increment(1);
        }
        self.ack_all(&done).await;
    }

    async fn ack_all(&self, receipts: &[runtime::Receipt]) {
        if receipts.is_empty() {
            return;
        }
        match self.inner.queue.ack(receipts).await {
            Ok(()) => {
                self.inner
                    .stats
                    .acked
                    .fetch_add(receipts.len() as u64, Ordering::Relaxed);
            }
            // They come back, and the dedupe window keeps them from being delivered twice.
            Err(e) => {
                tracing::warn!(error = %e, count = receipts.len(), "cannot delete delivered messages")
            }
        }
    }

    /// The message's batch and the routes it owes.
    fn route(&self, message: &Received) -> Result<(Batch, Vec<Route>), String> {
        let inner = &self.inner;
        if let Some(why) = message.missing_body() {
            return Err(why);
        }
        let json = message
            .attributes
            .get(attr::CONTENT_TYPE)
            .is_some_and(|t| content_type::is_json(t));
        let batch = if json {
            schema::parse_batch(&message.body).map_err(|e| format!("not a batch: {e}"))?
        } else {
            Batch::decode(message.body.as_ref())
                .map_err(|e| format!("not a protobuf batch: {e}"))?
        };
        if let Some(owed) = message.attributes.get(attr::ROUTE) {
            let routes = owed
                .split(',')
                .map(|pair| {
                    let (connection, destination) = pair
                        .split_once('/')
                        .ok_or_else(|| format!("a malformed route {pair:?}"))?;
                    let index = inner
                        .settings
                        .connections
                        .iter()
                        .position(|c| c.id == connection)
                        .ok_or_else(|| {
                            format!(
                                "the route names connection {connection:?}, which is not configured"
                            )
                        })?;
                    Ok(Route {
                        connection: index,
                        destination: destination.to_owned(),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            return self.readable_for(batch, routes);
        }
        let source = message
            .attributes
            .get(attr::SOURCE)
            .map(String::as_str)
            .unwrap_or_default();
        let routes: Vec<Route> = inner
            .by_source
            .get(source)
            .into_iter()
            .flatten()
            .flat_map(|&i| {
                inner.settings.connections[i]
                    .destinations
                    .iter()
                    .map(move |d| Route {
                        connection: i,
                        destination: d.clone(),
                    })
            })
            .collect();
        if routes.is_empty() {
            return Err(format!("no connection takes source {source:?}"));
        }
        self.readable_for(batch, routes)
    }

    /// A pass-through batch is read in full when a connection's rules will change it.
    fn readable_for(
        &self,
        mut batch: Batch,
        routes: Vec<Route>,
    ) -> Result<(Batch, Vec<Route>), String> {
        let connections = &self.inner.settings.connections;
        if routes
            .iter()
            .any(|r| !connections[r.connection].rules.is_empty())
        {
            schema::materialize(&mut batch).map_err(|e| format!("not a batch: {e}"))?;
        }
        Ok((batch, routes))
    }

    async fn ack(&self, message: &Received) {
        self.ack_all(std::slice::from_ref(&message.receipt)).await;
    }

    async fn nack(&self, message: &Received) {
        let delay = self.backoff(attempts(message));
        self.inner.stats.nacked.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.inner.queue.nack(&message.receipt, delay).await {
            tracing::warn!(error = %e, "cannot give a message back; it returns after its visibility timeout");
        }
    }

    /// Full jitter over an exponential step: spreads retries of a burst.
    fn backoff(&self, attempts: u32) -> Duration {
        let s = &self.inner.settings;
        let step = s
            .retry_min
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(s.retry_max);
        step.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }

    /// A copy owing only `failed`, then the original goes.
    async fn requeue_for(&self, message: &Received, failed: &[Route]) {
        let owed = failed
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    self.inner.settings.connections[r.connection].id, r.destination
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let attempts = attempts(message);
        let mut attributes = message.attributes.clone();
        attributes.insert(attr::ROUTE.to_owned(), owed);
        attributes.insert(attr::ATTEMPTS.to_owned(), attempts.to_string());
        let copy = Message {
            body: message.body.clone(),
            attributes,
            delay: self.backoff(attempts),
        };
        match self.inner.queue.send(vec![copy]).await {
            Ok(()) => {
                self.inner.stats.requeued.fetch_add(1, Ordering::Relaxed);
                self.ack(message).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot queue a retry copy; the whole message comes back");
                self.nack(message).await;
            }
        }
    }

    /// A message nothing can be done with: kept with the reason, out of the way.
    async fn dead_letter(&self, message: Received, reason: &str) {
        tracing::error!(
            reason,
            message_id = message.message_id,
            "to the dead-letter queue"
        );
        if self.copy_to_dead_letter(&message, reason).await {
            self.ack(&message).await;
        } else {
            self.nack(&message).await;
        }
    }

    async fn copy_to_dead_letter(&self, message: &Received, reason: &str) -> bool {
        let Some(dlq) = &self.inner.dead_letter else {
            tracing::error!(
                reason,
                "no dead-letter queue is configured: the message is dropped"
            );
            return true;
        };
        let mut because = reason.to_owned();
        schema::limits::truncate_chars(&mut because, 1000);
        let mut attributes = message.attributes.clone();
        attributes.insert(attr::REJECTED_BECAUSE.to_owned(), because);
        let copied = dlq
            .send(vec![Message {
                body: message.body.clone(),
                attributes,
                delay: Duration::ZERO,
            }])
            .await;
        if let Err(e) = &copied {
            tracing::error!(error = %e, "cannot copy to the dead-letter queue");
            return false;
        }
        self.inner
            .stats
            .dead_lettered
            .fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The message's span in its batch's trace, after a span for its time in the queue; and the
/// context the routed batches carry on (`None` when tracing is off: they carry the message's).
fn message_span(message: &Received) -> (tracing::Span, Option<TraceContext>) {
    if !telemetry::enabled() {
        return (tracing::Span::none(), None);
    }
    let parent = TraceContext::continue_from(
        message
            .attributes
            .get(attr::TRACEPARENT)
            .map(String::as_str),
        message.attributes.get(attr::TRACESTATE).map(String::as_str),
    );
    if let Some(parent) = &parent {
        telemetry::queue_wait(
            parent,
            "transform",
            "ingest",
            message.sent_at_ms,
            &message.message_id,
            message.receive_count,
        );
    }
    let span = runtime::pipeline_span!(
        "transform",
        otel.kind = "consumer",
        mpconnect.stage = "transform",
        source = message
            .attributes
            .get(attr::SOURCE)
            .map(String::as_str)
            .unwrap_or_default(),
        message_id = message.message_id.as_str(),
        receive_count = i64::from(message.receive_count),
        events_in = tracing::field::Empty,
        events_out = tracing::field::Empty,
        destinations = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    telemetry::continue_from(&span, parent.as_ref());
    let trace = telemetry::context_of(&span);
    (span, trace)
}

/// Keys that mark a batch as already given to `destination` by `connection` (two connections
/// to one destination each deliver their own): the S3 source's batch id, the sender's
/// `source_request_id`, and the queue message itself (a redelivery). Events have their own,
/// from `source_message_id` ([`event_key`]).
fn dedupe_keys(message: &Received, batch: &Batch, connection: &str, destination: &str) -> Vec<Key> {
    let source = message
        .attributes
        .get(attr::SOURCE)
        .map(String::as_str)
        .unwrap_or_default();
    let mut keys = vec![Key::of(&[
        connection,
        destination,
        "m",
        &message.message_id,
    ])];
    if let Some(id) = message.attributes.get(attr::BATCH_ID) {
        keys.push(Key::of(&[connection, destination, "b", id]));
    }
    if let Some(id) = &batch.source_request_id {
        keys.push(Key::of(&[connection, destination, "r", source, id]));
    }
    keys
}

fn event_key(connection: &str, destination: &str, message: &Received, id: &str) -> Key {
    let source = message
        .attributes
        .get(attr::SOURCE)
        .map(String::as_str)
        .unwrap_or_default();
    Key::of(&[connection, destination, "e", source, id])
}

/// A round's claim on the batch keys it delivers, given back when dropped (a panicking round
/// too, so no key stays claimed).
struct Reservation<'a> {
    in_flight: &'a Mutex<HashSet<Key>>,
    keys: Vec<Key>,
}

impl Reservation<'_> {
    /// Claims `keys` unless another round holds one of them.
    fn take(&mut self, keys: &[Key]) -> bool {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if keys.iter().any(|k| in_flight.contains(k)) {
            return false;
        }
        in_flight.extend(keys.iter().copied());
        self.keys.extend_from_slice(keys);
        true
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            in_flight.remove(key);
        }
    }
}

/// What marks one route of a message as delivered: its batch's keys and its events' keys.
#[derive(Debug, Clone, Default)]
struct RouteKeys {
    batch: Vec<Key>,
    events: Vec<Key>,
}

impl RouteKeys {
    fn extend(&mut self, other: RouteKeys) {
        self.batch.extend(other.batch);
        self.events.extend(other.events);
    }
}

/// Keeps a round's messages invisible while delivery works; stops when dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(queue: &StageQueue, messages: &[Received], visibility: Duration) -> Heartbeat {
        let queue = queue.clone();
        let receipts: Vec<_> = messages.iter().map(|m| m.receipt.clone()).collect();
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep(visibility / 3).await;
                for receipt in &receipts {
                    if let Err(e) = queue.extend(receipt, visibility).await {
                        tracing::debug!(error = %e, "cannot extend a message's visibility");
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

/// Runs the futures concurrently and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..futures.len()).map(|_| None).collect();
    let mut pending: Vec<_> = futures.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => {
                outputs[*i] = Some(out);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Attempts on a message so far, this one included: those of earlier copies and this copy's
/// receives.
fn attempts(message: &Received) -> u32 {
    message
        .attributes
        .get(attr::ATTEMPTS)
        .and_then(|a| a.parse::<u32>().ok())
        .unwrap_or(0)
        .saturating_add(message.receive_count)
}
