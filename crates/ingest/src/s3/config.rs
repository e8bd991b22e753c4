//! An `s3` source as configured.

use runtime::config::Problems;

use super::S3SourceSettings;

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct S3SourceConfig {
    /// The SQS queue receiving the bucket's `ObjectCreated` notifications.
    pub notification_queue: Option<String>,
    /// Objects read at once.
    pub concurrency: Option<usize>,
}

impl S3SourceConfig {
    pub fn problems(&self, at: &str, problems: &mut Problems) {
        if self.notification_queue.is_none() {
            problems.push(
                format_args!("{at}.notification_queue"),
                "required for an s3 source",
            );
        }
    }

    pub fn settings(&self, id: &str) -> S3SourceSettings {
        let defaults = S3SourceSettings::default();
        S3SourceSettings {
            source_id: id.to_owned(),
            concurrency: self.concurrency.unwrap_or(defaults.concurrency).max(1),
            ..defaults
        }
    }
}
