//! A source as configured: its id and its kind's own keys, each kind's struct in its folder.
//! Adding a kind is its folder and one variant of [`SourceKind`].

use runtime::SecretConfig;
use runtime::config::{Problems, read_component, read_kind};
use serde::Deserialize;

use crate::http::HttpSourceConfig;
use crate::s3::S3SourceConfig;

/// One `[[sources]]` entry.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Carried with every batch (routing, metrics, traces).
    pub id: String,
    pub kind: SourceKind,
    /// Keys neither the common part nor the kind knows, for whoever reads the whole file to
    /// report with the rest of its problems.
    pub unknown_keys: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum SourceKind {
    /// The Events API and the webhook.
    Http(HttpSourceConfig),
    /// mParticle's S3 output, through the bucket's notifications.
    S3(S3SourceConfig),
}

impl SourceKind {
    pub const NAMES: [&str; 2] = ["http", "s3"];

    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Http(_) => "http",
            SourceKind::S3(_) => "s3",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceBuildError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error(transparent)]
    Secret(#[from] runtime::secret::SecretError),
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Common {
            id: String,
            kind: String,
        }
        let value = serde_json::Value::deserialize(d)?;
        let (common, kind, unknown_keys) =
            read_component(value, |common: &Common, value| match common.kind.as_str() {
                "http" => read_kind(value, SourceKind::Http),
                "s3" => read_kind(value, SourceKind::S3),
                other => Err(format!(
                    "source {:?}: kind {other:?} is not one of {}",
                    common.id,
                    SourceKind::NAMES.join(", ")
                )),
            })
            .map_err(serde::de::Error::custom)?;
        Ok(SourceConfig {
            id: common.id,
            kind,
            unknown_keys,
        })
    }
}

impl SourceConfig {
    /// Its secrets, as configured.
    pub fn secrets(&self) -> Vec<&SecretConfig> {
        match &self.kind {
            SourceKind::Http(c) => [&c.api_key, &c.api_secret].into_iter().flatten().collect(),
            SourceKind::S3(_) => Vec::new(),
        }
    }

    /// Its problems, each with its path under `at` (e.g. `sources[0]`).
    pub fn problems(&self, at: &str, problems: &mut Problems) {
        if self.id.is_empty() {
            problems.push(format_args!("{at}.id"), "empty");
        }
        match &self.kind {
            SourceKind::Http(c) => c.problems(at, problems),
            SourceKind::S3(c) => c.problems(at, problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_reads_as_its_kind_and_names_keys_no_part_knows() {
        let s: SourceConfig = serde_json::from_value(serde_json::json!({
            "id": "bucket", "kind": "s3", "notification_queue": "q", "api_key": "k"
        }))
        .unwrap();
        assert!(
            matches!(&s.kind, SourceKind::S3(c) if c.notification_queue.as_deref() == Some("q"))
        );
        assert_eq!(s.unknown_keys, ["api_key"]);
        assert_eq!(s.kind.name(), "s3");
        let wrong = serde_json::from_value::<SourceConfig>(serde_json::json!({
            "id": "x", "kind": "kafka"
        }))
        .unwrap_err();
        assert!(
            wrong.to_string().contains("is not one of http, s3"),
            "{wrong}"
        );
    }
}
