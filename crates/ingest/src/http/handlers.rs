//! The request pipeline: who → back-pressure → body within limits → split into batches →
//! validate each → queue → 202.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prost::Message as _;
use runtime::envelope::{self, IngestEnvelope, content_type};
use runtime::telemetry::TraceContext;
use runtime::{Message, Queue, now_ms};
use serde_json::value::RawValue;

use super::error::ApiError;
use super::{Ingest, auth, body};

/// Which door a request came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    Events,
    Bulk,
    Historical,
    Webhook,
}

impl Door {
    fn name(self) -> &'static str {
        match self {
            Door::Events => "events",
            Door::Bulk => "bulkevents",
            Door::Historical => "historical",
            Door::Webhook => "webhook",
        }
    }

    /// mParticle's Events API (its inbound dialect): a batch from it that reads as sent
    /// travels as the sender's bytes. The read and the encoding must agree on this, since a
    /// skimmed batch lacks its attribute maps and must never be encoded whole.
    fn passes_through(self) -> bool {
        matches!(self, Door::Events | Door::Bulk | Door::Historical)
    }
}

pub async fn events(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response {
    handle(&ingest, Door::Events, None, headers, body).await
}

pub async fn bulk(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response {
    handle(&ingest, Door::Bulk, None, headers, body).await
}

pub async fn historical(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response {
    handle(&ingest, Door::Historical, None, headers, body).await
}

pub async fn webhook(
    State(ingest): State<Ingest>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&ingest, Door::Webhook, Some(&source), headers, body).await
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready unless this process is stopping. It never asks the queue: a few seconds of SQS
/// trouble would mark every pod unready at once and empty the Service; that shows per
/// request instead (503 with `Retry-After`), and in metrics.
pub async fn readyz(State(ingest): State<Ingest>) -> Response {
    if ingest.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

pub async fn metrics() -> Response {
    runtime::telemetry::metrics_answer().into_response()
}

async fn handle(
    ingest: &Ingest,
    door: Door,
    webhook_source: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut source = "unknown".to_owned();
    let result = accept(ingest, door, webhook_source, &headers, body, &mut source).await;
    let response = match result {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(source, endpoint = door.name(), status = %e.status, "request refused");
            } else {
                tracing::info!(source, endpoint = door.name(), status = %e.status, errors = ?e.messages, "request refused");
            }
            e.into_response()
        }
    };
    metrics::counter!(
        "mpconnect_ingest_requests_total",
        "source" => source,
        "endpoint" => door.name(),
        "status" => response.status().as_str().to_owned()
    )
    .increment(1);
    metrics::histogram!("mpconnect_ingest_request_duration_seconds", "endpoint" => door.name())
        .record(started.elapsed().as_secs_f64());
    response
}

async fn accept(
    ingest: &Ingest,
    door: Door,
    webhook_source: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    source_label: &mut String,
) -> Result<(), ApiError> {
    let settings = &ingest.inner.settings;
    let source = match webhook_source {
        Some(id) => {
            let source = settings.sources.iter().find(|s| s.id == id);
            auth::webhook(headers, source)?;
            source.ok_or_else(ApiError::forbidden)?
        }
        None => auth::events_api(headers, &settings.sources)?,
    };
    source_label.clone_from(&source.id);

    // Before reading the body: past the bound, wait a little for the backlog to fall, then
    // tell the sender to come back later.
    if let Some(max) = settings.max_backlog
        && !ingest.backlog_below(max).await
    {
        return Err(ApiError::too_many_requests(ingest.retry_after()));
    }

    let bytes = body::read(headers, body, settings.max_request_bytes).await?;
    // A place among the requests being decoded, taken once the body is in: a slow sender
    // holds none while it uploads.
    let Some(_admitted) = ingest.admit().await else {
        return Err(ApiError::too_many_requests(ingest.retry_after()));
    };
    let batches = read_batches(&bytes, door)?;
    if batches.len() > settings.max_batches {
        return Err(ApiError::bad_request(format!(
            "A request may contain at most {} batches; this one has {}.",
            settings.max_batches,
            batches.len()
        )));
    }
    for (i, (json, _)) in batches.iter().enumerate() {
        if json.len() > settings.max_batch_bytes {
            return Err(ApiError::too_large(format!(
                "Batch {i} is {} bytes; a batch may be at most {} bytes.",
                json.len(),
                settings.max_batch_bytes
            )));
        }
    }

    let now = now_ms();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // The caller's trace carries every batch; without one, each batch starts its own.
    let caller = TraceContext::continue_from(
        header(envelope::header::TRACEPARENT),
        header(envelope::header::TRACESTATE),
    );
    let is_array =
        door != Door::Events && bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');

    let mut accepted = Vec::with_capacity(batches.len());
    // One span per batch: each batch is a trace of its own (or a child of the caller's).
    let mut spans = Vec::with_capacity(batches.len());
    let mut refused = Vec::new();
    let mut events = 0usize;
    for (i, (json, read)) in batches.into_iter().enumerate() {
        match read.and_then(|read| check(read, door, now)) {
            Ok((batch, as_sent)) => {
                events += batch.events.len();
                let span = runtime::pipeline_span!(
                    "ingest",
                    Server,
                    parent: caller.as_ref(),
                    "mpconnect.stage" = "ingest",
                    "source" = source.id.clone(),
                    "endpoint" = door.name(),
                    "events" = batch.events.len() as i64,
                    "bytes" = json.len() as i64,
                );
                let trace = span
                    .context()
                    .map(|mut own| {
                        // The caller's vendor state travels on; only the parent id is ours.
                        own.tracestate = caller.as_ref().and_then(|c| c.tracestate.clone());
                        own
                    })
                    .or_else(|| caller.clone())
                    .unwrap_or_else(TraceContext::start);
                spans.push(span);
                // From the Events API (mParticle's inbound dialect), the batch travels as the
                // sender's validated bytes beside the ids routing needs, so the mParticle
                // destination sends it on without decoding or encoding it again; the bytes go
                // to the queue after the ids as a view of the request, not copied in.
                // (`skim_batches` read in full every batch that does not pass through, so no
                // skimmed batch is encoded whole.)
                let head = (door.passes_through() && as_sent)
                    .then(|| schema::pass_through_head(&batch, json.len()))
                    .flatten();
                let message = match head {
                    Some(head) => {
                        let mut message = queue_message(head, &source.id, door, now, &trace);
                        message.body_rest = view_of(&bytes, json);
                        message
                    }
                    None => queue_message(batch.encode_to_vec(), &source.id, door, now, &trace),
                };
                accepted.push(message);
            }
            Err(errors) => {
                let at = |e: String| if is_array { format!("[{i}] {e}") } else { e };
                refused.push((i, json, errors.into_iter().map(at).collect::<Vec<_>>()));
            }
        }
    }
    if accepted.is_empty() && !refused.is_empty() {
        metrics::counter!("mpconnect_ingest_batches_total", "source" => source.id.clone(), "outcome" => "invalid")
            .increment(refused.len() as u64);
        return Err(ApiError::invalid(
            refused.into_iter().flat_map(|(_, _, e)| e).collect(),
        ));
    }

    // 202 only once every accepted batch is in the queue.
    let count = accepted.len();
    if let Err(e) = ingest.inner.queue.send(accepted).await {
        tracing::error!(source = source.id, error = %e, "the ingest queue did not take a request");
        for span in &mut spans {
            span.record("outcome", "refused: queue unavailable");
        }
        return Err(ApiError::unavailable(ingest.retry_after()));
    }
    ingest.queued(count);
    for span in &mut spans {
        span.record("outcome", "queued");
    }
    drop(spans);
    metrics::counter!("mpconnect_ingest_batches_total", "source" => source.id.clone(), "outcome" => "queued")
        .increment(count as u64);
    metrics::counter!("mpconnect_ingest_events_total", "source" => source.id.clone())
        .increment(events as u64);
    metrics::counter!("mpconnect_ingest_bytes_total", "source" => source.id.clone())
        .increment(bytes.len() as u64);

    // mParticle answers a bulk request with some bad batches 202 and drops them; we keep them
    // in the dead-letter queue, where `mpconnect dlq` shows why.
    if !refused.is_empty() {
        let trace = caller.unwrap_or_else(TraceContext::start);
        dead_letter(ingest, &source.id, door, now, &trace, refused).await?;
    }
    Ok(())
}

/// A batch's text in the request, and what reading it gave (the batch and whether it reads as
/// sent) or why it does not read.
type ReadPart<'a> = (&'a [u8], Result<(schema::v1::Batch, bool), Vec<String>>);

/// The request's batches: one object for `/events`, an array for the bulk endpoints, either
/// for the webhook. Read in one pass; when some batch does not read, the body is split first so
/// that each batch is answered for itself.
fn read_batches(bytes: &[u8], door: Door) -> Result<Vec<ReadPart<'_>>, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    match (door, first) {
        (Door::Events, Some(b'[')) => {
            return Err(ApiError::bad_request(
                "POST /v2/events takes one batch object; send arrays of batches to /v2/bulkevents.",
            ));
        }
        (Door::Bulk | Door::Historical, Some(b'{')) => {
            return Err(ApiError::bad_request(
                "The bulk endpoints take an array of batch objects; send one batch to /v2/events.",
            ));
        }
        _ => {}
    }
    // The Events API's batches travel as sent, so their attribute maps are only checked.
    let read = if door.passes_through() {
        schema::skim_batches(bytes)
    } else {
        schema::read_batches(bytes)
    };
    if let Some(read) = read {
        return Ok(read
            .into_iter()
            .map(|r| (r.json, Ok((r.batch, r.as_sent))))
            .collect());
    }
    let malformed = |e: serde_json::Error| ApiError::bad_request(format!("Malformed JSON: {e}"));
    let parts = match first {
        Some(b'[') => serde_json::from_slice::<Vec<&RawValue>>(bytes).map_err(malformed)?,
        _ => vec![serde_json::from_slice::<&RawValue>(bytes).map_err(malformed)?],
    };
    Ok(parts
        .into_iter()
        .map(|raw| {
            let json = raw.get().as_bytes();
            (json, super::read_batch(json))
        })
        .collect())
}

/// `part`, a slice of `whole`, as a view of `whole`'s buffer (a copy if it is not a slice of it).
fn view_of(whole: &Bytes, part: &[u8]) -> Bytes {
    let start = whole.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    if at >= start && at + part.len() <= start + whole.len() {
        whole.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// Validates one batch as mParticle would; historical batches by their rules too.
fn check(
    (batch, as_sent): (schema::v1::Batch, bool),
    door: Door,
    now: i64,
) -> Result<(schema::v1::Batch, bool), Vec<String>> {
    schema::validate(&batch).map_err(super::messages)?;
    if door == Door::Historical {
        schema::validate_historical(&batch, now).map_err(super::messages)?;
    }
    Ok((batch, as_sent))
}

fn queue_message(
    body: Vec<u8>,
    source: &str,
    door: Door,
    now: i64,
    trace: &TraceContext,
) -> Message {
    envelope_of(source, content_type::BATCH, door, now, trace).to_message(body)
}

fn envelope_of(
    source: &str,
    content_type: &str,
    door: Door,
    now: i64,
    trace: &TraceContext,
) -> IngestEnvelope {
    IngestEnvelope {
        traceparent: Some(trace.traceparent.clone()),
        tracestate: trace.tracestate.clone(),
        received_at_ms: Some(now),
        endpoint: Some(door.name().to_owned()),
        historical: door == Door::Historical,
        ..IngestEnvelope::new(source, content_type)
    }
}

async fn dead_letter(
    ingest: &Ingest,
    source: &str,
    door: Door,
    now: i64,
    trace: &TraceContext,
    refused: Vec<(usize, &[u8], Vec<String>)>,
) -> Result<(), ApiError> {
    metrics::counter!("mpconnect_ingest_batches_total", "source" => source.to_owned(), "outcome" => "dead_lettered")
        .increment(refused.len() as u64);
    let Some(dlq) = &ingest.inner.dead_letter else {
        for (i, _, errors) in &refused {
            tracing::warn!(
                source,
                batch = i,
                ?errors,
                "refused batch dropped: no dead-letter queue is configured"
            );
        }
        return Ok(());
    };
    let messages = refused
        .into_iter()
        .map(|(_, raw, errors)| {
            let kept =
                envelope_of(source, content_type::JSON, door, now, trace).to_message(raw.to_vec());
            envelope::rejected(kept, &errors.join("; "))
        })
        .collect();
    dlq.send(messages).await.map_err(|e| {
        // The good batches are queued; a retry duplicates them (deduplicated downstream by
        // source_request_id) but loses nothing.
        tracing::error!(source, error = %e, "the dead-letter queue did not take refused batches");
        ApiError::unavailable(ingest.retry_after())
    })
}
