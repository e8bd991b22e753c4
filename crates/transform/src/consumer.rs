//! The ingest-queue consumer and the rule that keeps data safe here: a message is deleted only
//! when every destination it routes to has answered for it (delivered, parked in delivery's
//! retry queue, or dead-lettered). If some destinations answered and others did not, a copy
//! routed to the others alone is queued and the original deleted, so a healthy destination
//! never gets the batch twice because a sick one made it come back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runtime::envelope::{self, IngestEnvelope, RouteKey};
use runtime::queue::Heartbeat;
use runtime::telemetry::{self, PipelineSpan, TraceContext};
use runtime::{Message, Queue, QueueError, ReceiveOptions, Received, StageQueue};
use schema::v1::{Batch, Outcome, RoutedBatch};

use crate::client::{DeliveryClient, DeliveryError};
use crate::dedupe::{DedupeSettings, DedupeWindow, Key, KeySet, Tier};
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
                // A round's batches reach the mParticle destination as one call: 20 Events API
                // batches of a typical ~12 KB fill most of a 256 KB request, where 10 (SQS's cap,
                // which it applies) sent twice as many half-full requests.
                max_messages: 20,
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
    /// Each connection's event counters on `/metrics`, registered once: looked up by name on
    /// every batch they cost about 1% of `mpconnect all`'s CPU.
    events_total: HashMap<String, [metrics::Counter; 4]>,
}

/// What became of a batch's events in the transform; its number is its place in
/// [`Events::ALL`] and in each connection's counters.
#[derive(Clone, Copy)]
enum Events {
    In = 0,
    Out = 1,
    Filtered = 2,
    Deduplicated = 3,
}

impl Events {
    const ALL: [Events; 4] = [
        Events::In,
        Events::Out,
        Events::Filtered,
        Events::Deduplicated,
    ];

    fn label(self) -> &'static str {
        match self {
            Events::In => "in",
            Events::Out => "out",
            Events::Filtered => "filtered",
            Events::Deduplicated => "deduplicated",
        }
    }
}

fn events_counter(connection: &str, what: Events) -> metrics::Counter {
    metrics::counter!("mpconnect_transform_events_total", "connection" => connection.to_owned(), "outcome" => what.label())
}

impl TransformStats {
    /// Stats with the connections' counters registered (the recorder must be installed).
    fn for_connections(connections: &[Connection]) -> Self {
        let events_total = connections
            .iter()
            .map(|c| {
                (
                    c.id.clone(),
                    Events::ALL.map(|what| events_counter(&c.id, what)),
                )
            })
            .collect();
        TransformStats {
            events_total,
            ..TransformStats::default()
        }
    }

    /// Counts `n` events of `connection`, in these stats and on `/metrics` alike.
    fn count_events(&self, connection: &str, what: Events, n: usize) {
        let total = match what {
            Events::In => &self.events_in,
            Events::Out => &self.events_out,
            Events::Filtered => &self.events_filtered,
            Events::Deduplicated => &self.events_deduplicated,
        };
        total.fetch_add(n as u64, Ordering::Relaxed);
        match self.events_total.get(connection) {
            Some(counters) => counters[what as usize].increment(n as u64),
            None => events_counter(connection, what).increment(n as u64),
        }
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
    in_flight: Mutex<KeySet>,
    /// When each poller last came round (ms since the epoch; 0: not started, MAX: stopped).
    turns: Vec<AtomicI64>,
    stats: TransformStats,
    /// Source id → indexes of its connections.
    by_source: HashMap<String, Vec<usize>>,
}

/// One connection/destination pair a message owes: the connection by its place in the
/// settings, the destination by id.
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

/// One message of a round, from reading (plan) through delivery's answers (call) to its
/// deletion or re-queued copy (settle).
struct InRound {
    message: Received,
    envelope: IngestEnvelope,
    /// The message's span, and the context its routed batches carry on (`None` when tracing
    /// is off: they carry the envelope's).
    span: PipelineSpan,
    trace: Option<TraceContext>,
    /// Taken by the plan.
    batch: Batch,
    routes: Vec<RouteState>,
}

struct RouteState {
    route: Route,
    answer: Option<Answer>,
    /// What marks this route delivered, remembered once it is answered.
    keys: RouteKeys,
}

/// A routed batch's place in the round: its message and route.
#[derive(Clone, Copy)]
struct Slot {
    message: usize,
    route: usize,
}

/// One call to delivery: a destination's batches, the `n`th keyed `n` and from `slots[n]`.
struct Call {
    destination: String,
    slots: Vec<Slot>,
    batches: Vec<RoutedBatch>,
}

/// What one route of a message comes to before the call.
enum Planned {
    /// Nothing to send: a repeat, filtered out, or waiting for a copy in flight.
    Settled(Answer),
    Send(Box<RoutedBatch>, RouteKeys),
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
            if let Some(why) = envelope::route_id_problem(&c.id) {
                problems.push(format!("{at}: the id {why}"));
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
        let stats = TransformStats::for_connections(&settings.connections);
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
                stats,
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

    /// One round: read and plan every message, call each destination once, settle.
    async fn process(&self, messages: Vec<Received>) {
        let inner = &self.inner;
        self.count_received(&messages);
        let receipts = messages.iter().map(|m| m.receipt.clone()).collect();
        let visibility = inner.settings.receive.visibility;
        let heartbeat = Heartbeat::start(&inner.queue, receipts, visibility, "ingest message");
        let mut round = self.read(messages).await;
        let mut reserved = Reservation {
            in_flight: &inner.in_flight,
            keys: Vec::new(),
        };
        let calls = self.plan(&mut round, &mut reserved);
        self.call(&mut round, calls).await;
        drop(heartbeat);
        // What the destinations took is remembered (and written) first, before any settling:
        // a crash sends again only what was answered in the moment before it.
        self.remember(&mut round);
        // Remembered: a copy waiting on these keys now finds them in the window.
        drop(reserved);
        self.settle(round).await;
    }

    fn count_received(&self, messages: &[Received]) {
        self.inner
            .stats
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
    }

    /// Decodes and routes each message; what cannot be is dead-lettered.
    async fn read(&self, messages: Vec<Received>) -> Vec<InRound> {
        let mut round = Vec::with_capacity(messages.len());
        for message in messages {
            let envelope = IngestEnvelope::from_attributes(&message.attributes);
            let (mut span, trace) = message_span(&message, envelope.as_ref().ok());
            let read = envelope
                .map_err(|e| e.to_string())
                .and_then(|envelope| Ok((self.route(&message, &envelope)?, envelope)));
            match read {
                Ok(((batch, routes), envelope)) => {
                    span.record("events_in", batch.events.len() as i64);
                    let routes = routes
                        .into_iter()
                        .map(|route| RouteState {
                            route,
                            answer: None,
                            keys: RouteKeys::default(),
                        })
                        .collect();
                    round.push(InRound {
                        message,
                        envelope,
                        span,
                        trace,
                        batch,
                        routes,
                    });
                }
                Err(reason) => {
                    span.record("outcome", "dead_lettered");
                    metrics::counter!("mpconnect_transform_messages_total", "outcome" => "dead_lettered")
                        .increment(1);
                    self.dead_letter(message, &reason).await
                }
            }
        }
        round
    }

    /// Applies each connection's rules once per message, drops repeats per destination, and
    /// groups what is left into one call per destination.
    fn plan(&self, round: &mut [InRound], reserved: &mut Reservation) -> Vec<Call> {
        let connections = &self.inner.settings.connections;
        let mut calls: BTreeMap<String, Call> = BTreeMap::new();
        // Keys already routed in this round: a repeat inside one round is a repeat too. Sized
        // for every key the round can route (grown a doubling at a time, the set was rehashed
        // about seven times a round).
        let keys_in_round = round
            .iter()
            .map(|item| (item.batch.events.len() + MAX_BATCH_KEYS) * item.routes.len())
            .sum();
        let mut in_round = KeySet::with_capacity_and_hasher(keys_in_round, Default::default());
        let round_len = round.len();
        for (m, item) in round.iter_mut().enumerate() {
            let had_events = !item.batch.events.is_empty();
            // Summed over every route, for the message's span.
            let mut events_out = 0usize;
            // The batch is copied only when a second connection or destination needs its own.
            let mut used: Vec<usize> = item.routes.iter().map(|r| r.route.connection).collect();
            used.sort_unstable();
            used.dedup();
            for (c, &connection_index) in used.iter().enumerate() {
                let connection = &connections[connection_index];
                let mut applied_batch = if c + 1 == used.len() {
                    std::mem::take(&mut item.batch)
                } else {
                    item.batch.clone()
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
                let stats = &self.inner.stats;
                stats.count_events(&connection.id, Events::In, applied.events_in);
                stats.count_events(&connection.id, Events::Filtered, applied.events_filtered);
                let mine: Vec<usize> = (0..item.routes.len())
                    .filter(|&r| item.routes[r].route.connection == connection_index)
                    .collect();
                for (i, &r) in mine.iter().enumerate() {
                    let out = if i + 1 == mine.len() {
                        std::mem::take(&mut applied_batch)
                    } else {
                        applied_batch.clone()
                    };
                    let destination = &item.routes[r].route.destination;
                    let planned = self.plan_route(
                        item,
                        connection,
                        destination,
                        out,
                        had_events,
                        &mut in_round,
                        reserved,
                    );
                    match planned {
                        Planned::Settled(answer) => item.routes[r].answer = Some(answer),
                        Planned::Send(mut batch, keys) => {
                            let events = batch.batch.as_ref().map_or(0, |b| b.events.len());
                            events_out += events;
                            let destination = &item.routes[r].route.destination;
                            // Room for the whole round: most rounds make one call.
                            let call = calls.entry(destination.clone()).or_insert_with(|| Call {
                                destination: destination.clone(),
                                slots: Vec::with_capacity(round_len),
                                batches: Vec::with_capacity(round_len),
                            });
                            batch.key = call.batches.len().to_string();
                            call.slots.push(Slot {
                                message: m,
                                route: r,
                            });
                            call.batches.push(*batch);
                            item.routes[r].keys = keys;
                        }
                    }
                }
            }
            item.span.record("destinations", item.routes.len() as i64);
            item.span.record("events_out", events_out as i64);
        }
        calls.into_values().collect()
    }

    /// One route of a message: a repeat (batch or events), a copy of a batch in flight, or a
    /// batch to send with the keys that will mark it delivered.
    #[allow(clippy::too_many_arguments)]
    fn plan_route(
        &self,
        item: &InRound,
        connection: &Connection,
        destination: &str,
        mut out: Batch,
        had_events: bool,
        in_round: &mut KeySet,
        reserved: &mut Reservation,
    ) -> Planned {
        let inner = &self.inner;
        let counted = |what: Events, n: usize| inner.stats.count_events(&connection.id, what, n);
        // Seen in this round or in the window; a batch's keys are looked up together.
        let seen = |tier: Tier, keys: &[Key], in_round: &KeySet| {
            let in_window = inner.dedupe.contains_each(tier, keys);
            keys.iter()
                .zip(in_window)
                .map(|(key, in_window)| in_window || in_round.contains(key))
                .collect::<Vec<bool>>()
        };
        let (message, envelope) = (&item.message, &item.envelope);
        let keys = dedupe_keys(message, envelope, &out, &connection.id, destination);
        if seen(Tier::Batch, &keys, in_round).contains(&true) {
            counted(Events::Deduplicated, out.events.len());
            return Planned::Settled(Answer::Answered);
        }
        if !reserved.take(&keys) {
            return Planned::Settled(Answer::Failed(
                "a copy of this batch is being delivered; it waits for that outcome".into(),
            ));
        }
        // Each event's key is made once, here, and a kept event's remembered once answered.
        let mut event_keys: Vec<Key> = Vec::with_capacity(out.events.len());
        event_keys.extend(
            out.events
                .iter()
                .filter_map(|e| e.source_message_id.as_deref())
                .map(|id| event_key(&connection.id, destination, &envelope.source, id)),
        );
        // Retain visits each element once, in order: the flags line up with the events that
        // have ids, and with their keys.
        let repeated = seen(Tier::Event, &event_keys, in_round);
        let before = out.events.len();
        let mut flags = repeated.iter();
        out.events
            .retain(|e| e.source_message_id.is_none() || flags.next() == Some(&false));
        let mut flags = repeated.iter();
        event_keys.retain(|_| flags.next() == Some(&false));
        counted(Events::Deduplicated, before - out.events.len());
        // Some events repeated: a pass-through batch is read in full and sent without them (a
        // failure to read it would send them again, never lose).
        if out.events.len() != before
            && let Err(e) = schema::materialize(&mut out)
        {
            tracing::error!(error = %e, "a pass-through batch does not decode; sent whole");
        }
        // Everything filtered or repeated: nothing owed to this destination. (A batch that
        // came with no events still goes: it may carry user attribute changes.)
        if out.events.is_empty() && had_events {
            return Planned::Settled(Answer::Answered);
        }
        counted(Events::Out, out.events.len());
        in_round.extend(keys.iter().chain(&event_keys).copied());
        let trace = item.trace.as_ref();
        let routed = RoutedBatch {
            key: String::new(),
            batch: Some(out),
            source: envelope.source.clone(),
            connection: connection.id.clone(),
            historical: envelope.historical,
            traceparent: trace
                .map(|t| t.traceparent.clone())
                .or_else(|| envelope.traceparent.clone())
                .unwrap_or_default(),
            tracestate: trace
                .and_then(|t| t.tracestate.clone())
                .or_else(|| envelope.tracestate.clone())
                .unwrap_or_default(),
        };
        Planned::Send(
            Box::new(routed),
            RouteKeys {
                batch: keys,
                events: event_keys,
            },
        )
    }

    /// One call per destination, all at once (a slow destination does not hold the others);
    /// each answer lands on its route.
    async fn call(&self, round: &mut [InRound], calls: Vec<Call>) {
        let calls = calls.into_iter().map(|call| {
            let client = self.inner.client.clone();
            async move {
                let Call {
                    destination,
                    slots,
                    batches,
                } = call;
                let started = std::time::Instant::now();
                let result = client.deliver(&destination, batches).await;
                metrics::histogram!("mpconnect_transform_deliver_duration_seconds", "destination" => destination.clone())
                    .record(started.elapsed().as_secs_f64());
                (destination, slots, result)
            }
        });
        for (destination, slots, result) in join_all(calls).await {
            let outcomes: HashMap<&str, (i32, &str)> = match &result {
                Ok(outcomes) => outcomes
                    .iter()
                    .map(|o| (o.key.as_str(), (o.outcome, o.detail.as_str())))
                    .collect(),
                Err(e) => {
                    tracing::warn!(destination, error = %e, batches = slots.len(), "delivery did not answer");
                    HashMap::new()
                }
            };
            for (n, slot) in slots.into_iter().enumerate() {
                let answer = match (&result, outcomes.get(n.to_string().as_str())) {
                    (Err(DeliveryError::Permanent(e)), _) => Answer::Refused(e.clone()),
                    (Err(DeliveryError::Temporary(e)), _) => Answer::Failed(e.clone()),
                    (Ok(_), Some((o, detail))) => match Outcome::try_from(*o) {
                        Ok(Outcome::Delivered | Outcome::Parked) => Answer::Answered,
                        Ok(Outcome::DeadLettered) => Answer::DeadLettered,
                        _ => Answer::Failed(format!("no usable outcome: {detail}")),
                    },
                    (Ok(_), None) => Answer::Failed("delivery's answer left this batch out".into()),
                };
                round[slot.message].routes[slot.route].answer = Some(answer);
            }
        }
    }

    /// Writes the keys of every answered route into the dedupe window.
    fn remember(&self, round: &mut [InRound]) {
        let mut answered = RouteKeys::default();
        for state in round.iter_mut().flat_map(|item| &mut item.routes) {
            if matches!(state.answer, Some(Answer::Answered)) {
                answered.extend(std::mem::take(&mut state.keys));
            }
        }
        self.inner.dedupe.insert_all(Tier::Batch, &answered.batch);
        self.inner.dedupe.insert_all(Tier::Event, &answered.events);
    }

    /// Settles each message: deleted when every route was answered (the done ones in one
    /// call), dead-lettered for its refused routes, re-queued owing the rest.
    async fn settle(&self, round: Vec<InRound>) {
        let mut done = Vec::with_capacity(round.len());
        for mut item in round {
            let mut failed = Vec::new();
            let mut refused = Vec::new();
            let mut refused_routes = Vec::new();
            for RouteState { route, answer, .. } in &item.routes {
                let destination = &route.destination;
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
                    .copy_to_dead_letter(&item.message, &refused.join("; "))
                    .await
            {
                tracing::error!(
                    message_id = item.message.message_id,
                    "cannot dead-letter a refused batch; it stays in the queue"
                );
                failed.extend(refused_routes);
            }
            let outcome = if failed.is_empty() {
                done.push(item.message.receipt.clone());
                if refused.is_empty() {
                    "answered"
                } else {
                    "dead_lettered"
                }
            } else {
                // A fresh copy, not a nack: every receive counts toward the queue's
                // dead-lettering, and good data must wait out an outage of delivery however
                // long it lasts, never be dead-lettered for it. The copy carries the attempts.
                self.requeue_for(&item.message, &item.envelope, &failed)
                    .await;
                if failed.len() < item.routes.len() {
                    "requeued"
                } else {
                    "retried"
                }
            };
            item.span.record("outcome", outcome);
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
    fn route(
        &self,
        message: &Received,
        envelope: &IngestEnvelope,
    ) -> Result<(Batch, Vec<Route>), String> {
        let inner = &self.inner;
        if let Some(why) = message.missing_body() {
            return Err(why);
        }
        let batch = if envelope.is_json() {
            schema::parse_batch(&message.body).map_err(|e| format!("not a batch: {e}"))?
        } else {
            schema::decode_batch_proto(&message.body)
                .map_err(|e| format!("not a protobuf batch: {e}"))?
        };
        let connections = &inner.settings.connections;
        let routes: Vec<Route> = match &envelope.owed {
            Some(owed) => owed
                .iter()
                .map(|owed| {
                    let connection = connections
                        .iter()
                        .position(|c| c.id == owed.connection)
                        .ok_or_else(|| {
                            format!(
                                "the route names connection {:?}, which is not configured",
                                owed.connection
                            )
                        })?;
                    Ok(Route {
                        connection,
                        destination: owed.destination.clone(),
                    })
                })
                .collect::<Result<_, String>>()?,
            None => inner
                .by_source
                .get(&envelope.source)
                .into_iter()
                .flatten()
                .flat_map(|&i| {
                    connections[i].destinations.iter().map(move |d| Route {
                        connection: i,
                        destination: d.clone(),
                    })
                })
                .collect(),
        };
        if routes.is_empty() {
            return Err(format!("no connection takes source {:?}", envelope.source));
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

    /// Gives the message back, after a back-off by the attempts made on it so far.
    async fn nack(&self, message: &Received, attempts_before: u32) {
        let delay = self.backoff(attempts_before.saturating_add(message.receive_count));
        self.inner.stats.nacked.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.inner.queue.nack(&message.receipt, delay).await {
            tracing::warn!(error = %e, "cannot give a message back; it returns after its visibility timeout");
        }
    }

    /// Equal jitter over an exponential step (half the step, plus up to the other half at
    /// random): spreads retries of a burst, never retrying at once.
    fn backoff(&self, attempts: u32) -> Duration {
        let s = &self.inner.settings;
        let step = s
            .retry_min
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(s.retry_max);
        step.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }

    /// A copy owing only `failed`, then the original goes.
    async fn requeue_for(&self, message: &Received, envelope: &IngestEnvelope, failed: &[Route]) {
        let connections = &self.inner.settings.connections;
        let copy_envelope = IngestEnvelope {
            owed: Some(
                failed
                    .iter()
                    .map(|r| RouteKey {
                        connection: connections[r.connection].id.clone(),
                        destination: r.destination.clone(),
                    })
                    .collect(),
            ),
            attempts: envelope.attempts.saturating_add(message.receive_count),
            ..envelope.clone()
        };
        // Over the original's attributes: one a newer version added is kept, not dropped.
        let mut attributes = message.attributes.clone();
        attributes.extend(copy_envelope.to_attributes());
        let copy = Message {
            body: message.body.clone(),
            attributes,
            delay: self.backoff(copy_envelope.attempts),
            ..Message::default()
        };
        match self.inner.queue.send(vec![copy]).await {
            Ok(()) => {
                self.inner.stats.requeued.fetch_add(1, Ordering::Relaxed);
                self.ack(message).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot queue a retry copy; the whole message comes back");
                self.nack(message, envelope.attempts).await;
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
            // Its envelope may be what is wrong with it: back off by its receives alone.
            self.nack(&message, 0).await;
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
        let copy = Message {
            body: message.body.clone(),
            attributes: message.attributes.clone(),
            ..Message::default()
        };
        let copied = dlq.send(vec![envelope::rejected(copy, reason)]).await;
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
fn message_span(
    message: &Received,
    envelope: Option<&IngestEnvelope>,
) -> (PipelineSpan, Option<TraceContext>) {
    if !telemetry::enabled() {
        return (PipelineSpan::none(), None);
    }
    let parent = envelope.and_then(|e| {
        TraceContext::continue_from(e.traceparent.as_deref(), e.tracestate.as_deref())
    });
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
        Consumer,
        parent: parent.as_ref(),
        "mpconnect.stage" = "transform",
        "source" = envelope.map(|e| e.source.clone()).unwrap_or_default(),
        "message_id" = message.message_id.clone(),
        "receive_count" = i64::from(message.receive_count),
    );
    let trace = span.context();
    (span, trace)
}

/// The most keys [`dedupe_keys`] gives a batch.
const MAX_BATCH_KEYS: usize = 3;

/// Keys that mark a batch as already given to `destination` by `connection` (two connections
/// to one destination each deliver their own): the S3 source's batch id, the sender's
/// `source_request_id`, and the queue message itself (a redelivery). Events have their own,
/// from `source_message_id` ([`event_key`]).
fn dedupe_keys(
    message: &Received,
    envelope: &IngestEnvelope,
    batch: &Batch,
    connection: &str,
    destination: &str,
) -> Vec<Key> {
    let mut keys = Vec::with_capacity(MAX_BATCH_KEYS);
    keys.push(Key::of(&[
        connection,
        destination,
        "m",
        &message.message_id,
    ]));
    if let Some(id) = &envelope.batch_id {
        keys.push(Key::of(&[connection, destination, "b", id]));
    }
    if let Some(id) = &batch.source_request_id {
        keys.push(Key::of(&[
            connection,
            destination,
            "r",
            &envelope.source,
            id,
        ]));
    }
    keys
}

fn event_key(connection: &str, destination: &str, source: &str, id: &str) -> Key {
    Key::of(&[connection, destination, "e", source, id])
}

/// A round's claim on the batch keys it delivers, given back when dropped (a panicking round
/// too, so no key stays claimed).
struct Reservation<'a> {
    in_flight: &'a Mutex<KeySet>,
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
