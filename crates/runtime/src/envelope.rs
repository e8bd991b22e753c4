//! The envelope every stage agrees on: the queue attribute names, the content types of queue
//! bodies, and the name of the one RPC between the stages. Each is written here once; ingest,
//! transform, delivery and the tests read them from here.

/// W3C trace context as HTTP headers (Events API requests in, delivery's requests out) and
/// gRPC metadata (the Deliver call).
pub mod header {
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
}

/// Queue message attributes (SQS allows at most 10 per message; the SQS queue packs more).
pub mod attr {
    /// W3C trace context of the batch, named as the headers are.
    pub const TRACEPARENT: &str = super::header::TRACEPARENT;
    pub const TRACESTATE: &str = super::header::TRACESTATE;
    /// The source the data came from (ingest).
    pub const SOURCE: &str = "mp-source";
    /// The body's format: one of [`super::content_type`].
    pub const CONTENT_TYPE: &str = "content-type";
    /// Set by `queue::ClaimChecked`: the object store key holding the real body.
    pub const CLAIM_CHECK: &str = "mp-claim-check";
    /// Milliseconds since the epoch when ingest accepted the batch.
    pub const RECEIVED_AT: &str = "mp-received-at";
    /// `true` for batches from `/bulkevents/historical`: delivery must use that endpoint too.
    pub const HISTORICAL: &str = "mp-historical";
    /// Which door the batch came in by: `events`, `bulkevents`, `historical`, `webhook`.
    pub const ENDPOINT: &str = "mp-endpoint";
    /// On dead letters: why the batch was refused.
    pub const REJECTED_BECAUSE: &str = "mp-rejected-because";
    /// Set by the S3 source: `s3://bucket/key` of the object a batch came from, its line (from
    /// 1), and the batch's id, stable across redeliveries (bucket, key, ETag and line, hashed).
    pub const S3_OBJECT: &str = "mp-s3-object";
    pub const S3_LINE: &str = "mp-s3-line";
    pub const BATCH_ID: &str = "mp-batch-id";
    /// On the transform's retry copy of an ingest message: the `connection/destination` pairs
    /// still owed, comma-separated.
    pub const ROUTE: &str = "mp-route";
    /// Attempts made before this copy: on an ingest message re-queued by the transform, and on
    /// a batch parked in a destination's retry queue.
    pub const ATTEMPTS: &str = "mp-attempts";
    /// On a parked batch: when delivery first tried it (ms since the epoch; the retry window
    /// runs from here) and for which destination.
    pub const FIRST_ATTEMPT_AT: &str = "mp-first-attempt-at";
    pub const DESTINATION: &str = "mp-destination";
}

/// What a queue body holds.
pub mod content_type {
    /// An `mpconnect.v1.Batch` in protobuf: what ingest and the S3 source queue.
    pub const BATCH: &str = "application/x-protobuf; type=mpconnect.v1.Batch";
    /// An `mpconnect.v1.RoutedBatch` in protobuf: a batch parked in a retry queue.
    pub const ROUTED_BATCH: &str = "application/x-protobuf; type=mpconnect.v1.RoutedBatch";
    /// A batch as mParticle JSON (either dialect).
    pub const JSON: &str = "application/json";

    /// Whether a body of this content type is JSON (else protobuf; parameters such as a
    /// charset are allowed).
    pub fn is_json(content_type: &str) -> bool {
        content_type.starts_with(JSON)
    }
}

/// The transform's call to delivery (the gRPC method path), also the span name of the call on
/// both sides (OpenTelemetry's RPC convention).
pub const DELIVER_RPC: &str = "mpconnect.v1.DeliveryService/Deliver";

/// The ids of a connection and one of its destinations: a route a message owes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub connection: String,
    pub destination: String,
}

/// Why an id cannot name a connection or a destination, if it cannot: routes travel as
/// `connection/destination` pairs, comma-separated (a format older transforms read too).
pub fn route_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("is empty")
    } else if id.contains(['/', ',']) {
        Some("contains '/' or ','")
    } else {
        None
    }
}

/// A numeric attribute; one that does not parse reads as absent.
fn number<T: std::str::FromStr>(a: &crate::Attributes, key: &str) -> Option<T> {
    a.get(key).and_then(|v| v.parse().ok())
}

fn encode_routes(routes: &[RouteKey]) -> String {
    routes
        .iter()
        .map(|r| format!("{}/{}", r.connection, r.destination))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_routes(text: &str) -> Result<Vec<RouteKey>, EnvelopeError> {
    text.split(',')
        .map(|pair| {
            let (connection, destination) = pair
                .split_once('/')
                .ok_or_else(|| EnvelopeError::Route(pair.to_owned()))?;
            Ok(RouteKey {
                connection: connection.to_owned(),
                destination: destination.to_owned(),
            })
        })
        .collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("a malformed route {0:?}")]
    Route(String),
}

/// Where in mParticle's S3 output a batch came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Origin {
    /// `s3://bucket/key`.
    pub object: String,
    /// The line, from 1.
    pub line: u64,
}

/// One batch on the ingest queue, as its attributes say: what ingest and the S3 source write,
/// and the transform reads (and writes again on the copy it re-queues, owing fewer routes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestEnvelope {
    /// The source the data came from.
    pub source: String,
    /// The body's format: one of [`content_type`]; empty when not given.
    pub content_type: String,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// When ingest accepted the batch (ms since the epoch).
    pub received_at_ms: Option<i64>,
    /// Which door it came in by: `events`, `bulkevents`, `historical`, `webhook`, `s3`.
    pub endpoint: Option<String>,
    /// From `/bulkevents/historical`: delivery must use that endpoint too.
    pub historical: bool,
    pub s3_origin: Option<S3Origin>,
    /// The S3 source's stable id of the batch (bucket, key, ETag and line, hashed).
    pub batch_id: Option<String>,
    /// On the transform's re-queued copy: the routes still owed (`None`: every route of the
    /// source's connections).
    pub owed: Option<Vec<RouteKey>>,
    /// Attempts made before this copy (on a re-queued copy).
    pub attempts: u32,
}

impl IngestEnvelope {
    /// The envelope of a batch from `source` whose body is `content_type`.
    pub fn new(source: impl Into<String>, content_type: &str) -> Self {
        IngestEnvelope {
            source: source.into(),
            content_type: content_type.to_owned(),
            ..IngestEnvelope::default()
        }
    }

    /// Whether the body is mParticle JSON (else an `mpconnect.v1.Batch` in protobuf).
    pub fn is_json(&self) -> bool {
        content_type::is_json(&self.content_type)
    }

    /// The queue message carrying `body` in this envelope.
    pub fn to_message(&self, body: impl Into<bytes::Bytes>) -> crate::Message {
        let mut message = crate::Message::new(body);
        message.attributes = self.to_attributes();
        message
    }

    pub fn to_attributes(&self) -> crate::Attributes {
        // Room for the usual six without growing: ~150 bytes of texts and 8 an entry.
        let mut a = crate::Attributes::with_capacity(256);
        let mut put = |key: &str, value: Option<&str>| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                a.insert(key, value);
            }
        };
        put(attr::SOURCE, Some(&self.source));
        put(attr::CONTENT_TYPE, Some(&self.content_type));
        put(attr::TRACEPARENT, self.traceparent.as_deref());
        put(attr::TRACESTATE, self.tracestate.as_deref());
        put(
            attr::RECEIVED_AT,
            self.received_at_ms.map(|t| t.to_string()).as_deref(),
        );
        put(attr::ENDPOINT, self.endpoint.as_deref());
        put(attr::HISTORICAL, self.historical.then_some("true"));
        if let Some(origin) = &self.s3_origin {
            put(attr::S3_OBJECT, Some(&origin.object));
            put(attr::S3_LINE, Some(&origin.line.to_string()));
        }
        put(attr::BATCH_ID, self.batch_id.as_deref());
        put(
            attr::ROUTE,
            self.owed.as_deref().map(encode_routes).as_deref(),
        );
        put(
            attr::ATTEMPTS,
            (self.attempts > 0)
                .then(|| self.attempts.to_string())
                .as_deref(),
        );
        a
    }

    /// The envelope its attributes describe. Missing attributes read as absent; a route that
    /// does not parse is an error (the copy owes something, and it cannot say what).
    pub fn from_attributes(a: &crate::Attributes) -> Result<Self, EnvelopeError> {
        // One pass over the entries (the map is a run of them, not a tree: a lookup per
        // field walked it a dozen times).
        let mut envelope = IngestEnvelope::default();
        let (mut s3_object, mut s3_line) = (None, None);
        let text = |v: &str| Some(v.to_owned());
        for (key, value) in a.iter() {
            match key {
                attr::SOURCE => envelope.source = value.to_owned(),
                attr::CONTENT_TYPE => envelope.content_type = value.to_owned(),
                attr::TRACEPARENT => envelope.traceparent = text(value),
                attr::TRACESTATE => envelope.tracestate = text(value),
                attr::RECEIVED_AT => envelope.received_at_ms = value.parse().ok(),
                attr::ENDPOINT => envelope.endpoint = text(value),
                attr::HISTORICAL => envelope.historical = value == "true",
                attr::S3_OBJECT => s3_object = text(value),
                attr::S3_LINE => s3_line = value.parse().ok(),
                attr::BATCH_ID => envelope.batch_id = text(value),
                attr::ROUTE => envelope.owed = Some(decode_routes(value)?),
                attr::ATTEMPTS => envelope.attempts = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        envelope.s3_origin = s3_object.map(|object| S3Origin {
            object,
            line: s3_line.unwrap_or(0),
        });
        Ok(envelope)
    }
}

/// Marks a message for a dead-letter queue with why it is there (at most 1,000 characters).
pub fn rejected(mut message: crate::Message, because: &str) -> crate::Message {
    let mut because = because.to_owned();
    if let Some((cut, _)) = because.char_indices().nth(1000) {
        because.truncate(cut);
    }
    message.attributes.insert(attr::REJECTED_BECAUSE, because);
    message
}

/// Why a dead-lettered message was refused, and its attributes as they were before.
pub fn rejection(mut attributes: crate::Attributes) -> (Option<String>, crate::Attributes) {
    let because = attributes.remove(attr::REJECTED_BECAUSE);
    (because, attributes)
}

/// A batch parked in a destination's retry queue, as its attributes say: what delivery writes
/// when it parks a batch and reads when it tries it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParkedEnvelope {
    pub destination: String,
    /// When delivery first tried it (ms since the epoch): the retry window runs from here.
    pub first_attempt_at_ms: Option<i64>,
    /// Attempts made before this copy.
    pub attempts: u32,
    pub traceparent: Option<String>,
}

impl ParkedEnvelope {
    /// The queue message carrying `body` (an `mpconnect.v1.RoutedBatch`) in this envelope.
    pub fn to_message(&self, body: impl Into<bytes::Bytes>) -> crate::Message {
        let mut message = crate::Message::new(body)
            .with_attribute(attr::CONTENT_TYPE, content_type::ROUTED_BATCH)
            .with_attribute(attr::DESTINATION, self.destination.clone())
            .with_attribute(attr::ATTEMPTS, self.attempts.to_string());
        if let Some(at) = self.first_attempt_at_ms {
            message = message.with_attribute(attr::FIRST_ATTEMPT_AT, at.to_string());
        }
        if let Some(traceparent) = self.traceparent.clone().filter(|t| !t.is_empty()) {
            message = message.with_attribute(attr::TRACEPARENT, traceparent);
        }
        message
    }

    pub fn from_attributes(a: &crate::Attributes) -> Self {
        ParkedEnvelope {
            destination: a
                .get(attr::DESTINATION)
                .map(str::to_owned)
                .unwrap_or_default(),
            first_attempt_at_ms: number(a, attr::FIRST_ATTEMPT_AT),
            attempts: number(a, attr::ATTEMPTS).unwrap_or(0),
            traceparent: a.get(attr::TRACEPARENT).map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ingest_envelope_reads_back_as_written() {
        let envelope = IngestEnvelope {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("vendor=x".into()),
            received_at_ms: Some(1_700_000_000_000),
            endpoint: Some("s3".into()),
            historical: true,
            s3_origin: Some(S3Origin {
                object: "s3://b/k".into(),
                line: 7,
            }),
            batch_id: Some("id".into()),
            owed: Some(vec![
                RouteKey {
                    connection: "c".into(),
                    destination: "mp".into(),
                },
                RouteKey {
                    connection: "c".into(),
                    destination: "s3".into(),
                },
            ]),
            attempts: 3,
            ..IngestEnvelope::new("web", content_type::BATCH)
        };
        let mut message = envelope.to_message(vec![1, 2]);
        assert_eq!(&message.attributes[attr::ROUTE], "c/mp,c/s3");
        // Attributes it does not name (a claim check, a newer version's) are passed over.
        message.attributes.insert(attr::CLAIM_CHECK, "claims/x");
        message.attributes.insert("mp-from-the-future", "1");
        assert_eq!(
            IngestEnvelope::from_attributes(&message.attributes),
            Ok(envelope)
        );
        let plain = IngestEnvelope::new("web", content_type::JSON);
        assert_eq!(
            plain.to_attributes().len(),
            2,
            "absent fields write nothing"
        );
        assert!(plain.is_json());
    }

    #[test]
    fn a_route_that_does_not_parse_is_an_error() {
        let mut attributes = crate::Attributes::new();
        attributes.insert(attr::ROUTE, "c/mp,nonsense");
        assert_eq!(
            IngestEnvelope::from_attributes(&attributes),
            Err(EnvelopeError::Route("nonsense".into()))
        );
        assert_eq!(route_id_problem("a/b"), Some("contains '/' or ','"));
        assert_eq!(route_id_problem("mp"), None);
    }

    #[test]
    fn a_parked_envelope_reads_back_as_written() {
        let envelope = ParkedEnvelope {
            destination: "mp".into(),
            first_attempt_at_ms: Some(5),
            attempts: 2,
            traceparent: None,
        };
        let message = envelope.to_message(Vec::new());
        assert_eq!(
            ParkedEnvelope::from_attributes(&message.attributes),
            envelope
        );
        let long = "x".repeat(2000);
        let kept = rejected(message, &long);
        let (because, before) = rejection(kept.attributes);
        assert_eq!(because.map(|b| b.len()), Some(1000));
        assert!(!before.contains_key(attr::REJECTED_BECAUSE));
    }
}
