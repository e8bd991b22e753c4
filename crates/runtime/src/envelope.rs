//! The envelope every stage agrees on: the queue attribute names, the content types of queue
//! bodies, and the name of the one RPC between the stages. Each is written here once; ingest,
//! transform, delivery and the tests read them from here.

/// Queue message attributes (SQS allows at most 10 per message; the SQS queue packs more).
pub mod attr {
    /// W3C trace context of the batch.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
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
