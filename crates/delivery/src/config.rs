//! A destination as configured: the keys every destination has (id, retry queue and window,
//! timeouts) and its kind's own, each kind's struct in its folder (`<kind>/config.rs`). Adding
//! a kind is its folder and one variant of [`DestinationKind`].

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use runtime::config::{Problems, read_component, read_kind};
use serde::Deserialize;

use crate::destination::{DEFAULT_ATTEMPT_TIMEOUT, DestinationSettings};
use crate::driver::Driver;
use crate::file::{FileConfig, FileDriver};
use crate::limit::Peers;
use crate::mparticle::{MparticleConfig, MparticleDriver};
use crate::s3::{S3Config, S3Driver};
use crate::webhook::{WebhookConfig, WebhookDriver};

/// One `[[destinations]]` entry.
#[derive(Debug, Clone)]
pub struct DestinationConfig {
    pub id: String,
    pub kind: DestinationKind,
    /// An SQS URL or name (embedded: a name); default `retry-<id>`.
    pub retry_queue: Option<String>,
    /// Past this since the first attempt a batch is dead-lettered (default 4 hours).
    pub retry_window_secs: Option<u64>,
    pub probe_interval_ms: Option<u64>,
    pub attempt_timeout_ms: Option<u64>,
    /// Keys neither the common part nor the kind knows (dotted paths), for whoever reads the
    /// whole file to report with the rest of its problems.
    pub unknown_keys: Vec<String>,
}

/// What each kind of destination is configured with.
#[derive(Debug, Clone)]
pub enum DestinationKind {
    Mparticle(MparticleConfig),
    Webhook(WebhookConfig),
    S3(S3Config),
    File(FileConfig),
}

impl DestinationKind {
    pub const NAMES: [&str; 4] = ["mparticle", "webhook", "s3", "file"];

    pub fn name(&self) -> &'static str {
        match self {
            DestinationKind::Mparticle(_) => "mparticle",
            DestinationKind::Webhook(_) => "webhook",
            DestinationKind::S3(_) => "s3",
            DestinationKind::File(_) => "file",
        }
    }

    /// `value` read as the kind named `kind`, and the keys that kind does not know.
    fn read(kind: &str, value: serde_json::Value) -> Result<(Self, BTreeSet<String>), String> {
        match kind {
            "mparticle" => read_kind(value, DestinationKind::Mparticle),
            "webhook" => read_kind(value, DestinationKind::Webhook),
            "s3" => read_kind(value, DestinationKind::S3),
            "file" => read_kind(value, DestinationKind::File),
            other => Err(format!(
                "kind {other:?} is not one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

impl<'de> Deserialize<'de> for DestinationConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Common {
            id: String,
            kind: String,
            retry_queue: Option<String>,
            retry_window_secs: Option<u64>,
            probe_interval_ms: Option<u64>,
            attempt_timeout_ms: Option<u64>,
        }
        let value = serde_json::Value::deserialize(d)?;
        let (common, kind, unknown_keys) = read_component(value, |common: &Common, value| {
            DestinationKind::read(&common.kind, value)
                .map_err(|why| format!("destination {:?}: {why}", common.id))
        })
        .map_err(serde::de::Error::custom)?;
        Ok(DestinationConfig {
            id: common.id,
            kind,
            retry_queue: common.retry_queue,
            retry_window_secs: common.retry_window_secs,
            probe_interval_ms: common.probe_interval_ms,
            attempt_timeout_ms: common.attempt_timeout_ms,
            unknown_keys,
        })
    }
}

/// What building a destination's driver needs from the process.
pub struct BuildContext<'a> {
    /// Secret files and file destinations are relative to it.
    pub data_dir: &'a Path,
    /// The delivery processes sharing the rate limits.
    pub peers: Peers,
    /// The process's S3 client, when AWS is configured.
    pub s3: Option<aws_sdk_s3::Client>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{0} is not valid")]
    Invalid(&'static str),
    #[error("AWS is not configured")]
    NoAws,
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("cannot create the directory: {0}")]
    Io(#[from] std::io::Error),
}

impl DestinationConfig {
    /// The retry queue's name or URL.
    pub fn retry_queue_name(&self) -> String {
        self.retry_queue
            .clone()
            .unwrap_or_else(|| format!("retry-{}", self.id))
    }

    pub fn settings(&self) -> DestinationSettings {
        let mut settings = DestinationSettings::new(&self.id);
        if let Some(secs) = self.retry_window_secs {
            settings.retry.window = Duration::from_secs(secs);
        }
        if let Some(ms) = self.probe_interval_ms {
            settings.retry.probe_interval = Duration::from_millis(ms);
        }
        settings.attempt_timeout = self.attempt_timeout();
        settings
    }

    /// One attempt's timeout (all the requests for one call).
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout_ms
            .map_or(DEFAULT_ATTEMPT_TIMEOUT, Duration::from_millis)
    }

    /// One request's timeout (the HTTP kinds'; the default for the others).
    pub fn request_timeout(&self) -> Duration {
        match &self.kind {
            DestinationKind::Mparticle(c) => c.request_timeout_ms,
            DestinationKind::Webhook(c) => c.request_timeout_ms,
            DestinationKind::S3(_) | DestinationKind::File(_) => None,
        }
        .map_or(crate::http::DEFAULT_REQUEST_TIMEOUT, Duration::from_millis)
    }

    /// The longest one attempt may take: a request may start as late as the attempt's end,
    /// and then take its own timeout.
    pub fn longest_attempt(&self) -> Duration {
        self.attempt_timeout() + self.request_timeout()
    }

    /// Whether building it needs AWS clients.
    pub fn needs_aws(&self) -> bool {
        matches!(self.kind, DestinationKind::S3(_))
    }

    /// The environment variables its secrets are read from.
    pub fn secret_env_vars(&self) -> Vec<&str> {
        let secrets = match &self.kind {
            DestinationKind::Mparticle(c) => vec![&c.api_key, &c.api_secret],
            DestinationKind::Webhook(c) => vec![&c.authorization],
            DestinationKind::S3(_) | DestinationKind::File(_) => vec![],
        };
        secrets
            .into_iter()
            .flatten()
            .filter_map(|s| s.env_var())
            .collect()
    }

    /// Its problems, each with its path under `at` (e.g. `destinations[0]`).
    pub fn problems(&self, at: &str, problems: &mut Problems) {
        if let Some(why) = runtime::envelope::route_id_problem(&self.id) {
            problems.push(
                format_args!("{at}.id"),
                format_args!("{:?} {why}: ids travel in routes", self.id),
            );
        }
        match &self.kind {
            DestinationKind::Mparticle(c) => c.problems(at, problems),
            DestinationKind::Webhook(c) => c.problems(at, problems),
            DestinationKind::S3(c) => c.problems(at, problems),
            DestinationKind::File(_) => {}
        }
    }

    /// The driver that delivers to it.
    pub fn driver(&self, context: &BuildContext) -> Result<Arc<dyn Driver>, BuildError> {
        Ok(match &self.kind {
            DestinationKind::Mparticle(c) => {
                Arc::new(MparticleDriver::new(&self.id, c.settings(context)?)?)
            }
            DestinationKind::Webhook(c) => {
                Arc::new(WebhookDriver::new(&self.id, c.settings(context)?)?)
            }
            DestinationKind::S3(c) => Arc::new(S3Driver::new(c.store(context)?, c.settings())),
            DestinationKind::File(c) => Arc::new(FileDriver::new(c.settings(context.data_dir))?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: serde_json::Value) -> Result<DestinationConfig, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn a_destination_reads_as_its_kind_and_names_keys_no_part_knows() {
        let d = read(serde_json::json!({
            "id": "hook", "kind": "webhook", "url": "http://x", "retry_window_secs": 60,
            "bucket": "only-for-s3", "typo": 1
        }))
        .unwrap();
        assert!(
            matches!(&d.kind, DestinationKind::Webhook(w) if w.url.as_deref() == Some("http://x"))
        );
        assert_eq!(d.settings().retry.window, Duration::from_secs(60));
        assert_eq!(d.unknown_keys, ["bucket", "typo"]);
        assert_eq!(d.retry_queue_name(), "retry-hook");
        let unknown = read(serde_json::json!({"id": "x", "kind": "ftp"})).unwrap_err();
        assert!(
            unknown
                .to_string()
                .contains("kind \"ftp\" is not one of mparticle, webhook, s3, file"),
            "{unknown}"
        );
    }

    #[test]
    fn an_attempt_is_bounded_by_its_timeouts() {
        let d = read(serde_json::json!({
            "id": "mp", "kind": "mparticle", "pod": "us1", "api_key": "k", "api_secret": "s",
            "attempt_timeout_ms": 20000, "request_timeout_ms": 5000
        }))
        .unwrap();
        assert_eq!(d.longest_attempt(), Duration::from_secs(25));
        let mut problems = Problems::new(Path::new("."));
        d.problems("destinations[0]", &mut problems);
        assert!(problems.into_vec().is_empty());
    }
}
