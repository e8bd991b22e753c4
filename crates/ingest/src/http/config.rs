//! Settings of the HTTP source.

use std::path::Path;
use std::time::Duration;

use runtime::Secret;
use runtime::config::{Problems, SecretConfig};
use schema::limits;

use crate::config::SourceBuildError;

/// One source: who may send, and under what name their data travels.
#[derive(Debug, Clone)]
pub struct HttpSource {
    /// The source id carried with every batch (routing, metrics, traces).
    pub id: String,
    /// The API key: the username of HTTP Basic, and the webhook's `Authorization` value.
    pub api_key: Secret,
    /// The API secret: the password of HTTP Basic.
    pub api_secret: Secret,
}

/// The default bound on the ingest queue's backlog: 10,000 batches is a few seconds of work
/// at full speed and about 100 MB of the embedded queue's disk for ~1 KB events, so a stalled
/// pipeline pushes back long before a disk fills.
pub const DEFAULT_MAX_BACKLOG: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub sources: Vec<HttpSource>,
    /// Largest request body, after decompression (mParticle: 256 KB).
    pub max_request_bytes: usize,
    /// Largest single batch (mParticle: 128 KB).
    pub max_batch_bytes: usize,
    /// Most batches in one bulk request (mParticle: 100).
    pub max_batches: usize,
    /// Past this backlog on the ingest queue (messages, one a batch), answer 429 so senders
    /// slow down; `None` for no bound (the queue and its disk may then grow until they fill).
    pub max_backlog: Option<u64>,
    /// The `Retry-After` of 429 and 503 answers.
    pub retry_after: Duration,
    /// Past `max_backlog`, how long a request waits for the backlog to fall before it is
    /// answered 429: a short wait keeps a busy pipeline fed at its own pace, where an
    /// immediate 429 would idle every sender for `retry_after`.
    pub backlog_wait: Duration,
    /// How often the backlog is read.
    pub backlog_refresh: Duration,
    /// Past `max_backlog`, while requests wait, the backlog is read again this often (one
    /// read at a time): the queue's depth query, at most this often and only while full.
    pub backlog_recheck: Duration,
    /// Requests decoded and queued at once; more wait (up to `backlog_wait`, then 429). One
    /// holds its decoded batches (about 1 MB for a full bulk request), so this bounds most of
    /// ingest's memory whatever the number of connections; a few per core keep the cores busy.
    /// A place is taken once the body (at most `max_request_bytes`) is in, so a slow sender
    /// holds none while it uploads.
    pub max_in_flight: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            sources: Vec::new(),
            max_request_bytes: limits::MAX_REQUEST_BYTES,
            max_batch_bytes: limits::MAX_BATCH_BYTES,
            max_batches: limits::MAX_BATCHES_PER_REQUEST,
            max_backlog: Some(DEFAULT_MAX_BACKLOG),
            retry_after: Duration::from_secs(2),
            backlog_wait: Duration::from_secs(1),
            backlog_refresh: Duration::from_millis(500),
            backlog_recheck: Duration::from_millis(20),
            max_in_flight: 16,
        }
    }
}

/// An `http` source as configured.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct HttpSourceConfig {
    /// What senders use: HTTP Basic (and the webhook's `Authorization`).
    pub api_key: Option<SecretConfig>,
    pub api_secret: Option<SecretConfig>,
}

impl HttpSourceConfig {
    pub fn problems(&self, at: &str, problems: &mut Problems) {
        problems.required_secret(format_args!("{at}.api_key"), &self.api_key);
        problems.required_secret(format_args!("{at}.api_secret"), &self.api_secret);
    }

    /// The source with its credentials read.
    pub fn build(&self, id: &str, data_dir: &Path) -> Result<HttpSource, SourceBuildError> {
        let read = |value: &Option<SecretConfig>, name| -> Result<Secret, SourceBuildError> {
            let secret = value.as_ref().ok_or(SourceBuildError::Missing(name))?;
            Ok(secret.source(data_dir).load()?)
        };
        Ok(HttpSource {
            id: id.to_owned(),
            api_key: read(&self.api_key, "api_key")?,
            api_secret: read(&self.api_secret, "api_secret")?,
        })
    }
}
