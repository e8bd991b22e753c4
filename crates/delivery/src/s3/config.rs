//! Settings of the S3 export destination.

use std::time::Duration;

use runtime::AnyStore;
use runtime::config::Problems;
use runtime::store::S3Store;

use crate::config::{BuildContext, BuildError};

#[derive(Debug, Clone)]
pub struct S3ExportSettings {
    /// The `<App>` part of file names.
    pub app_name: String,
    /// A folder (key prefix) in the bucket, without the trailing `/`.
    pub folder: Option<String>,
    /// `YYYY-MM-DD/` folders by upload time.
    pub date_folders: bool,
    /// gzip each file (`.txt.gz`).
    pub gzip: bool,
    /// Write a file once this many bytes wait...
    pub max_bytes: usize,
    /// ...or once the oldest waits this long. Callers wait for their file, so keep it short.
    pub max_age: Duration,
}

impl Default for S3ExportSettings {
    fn default() -> Self {
        S3ExportSettings {
            app_name: "mpconnect".into(),
            folder: None,
            date_folders: false,
            gzip: false,
            max_bytes: 16 * 1024 * 1024,
            max_age: Duration::from_secs(1),
        }
    }
}

/// An `s3` destination as configured.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct S3Config {
    pub bucket: Option<String>,
    pub folder: Option<String>,
    pub date_folders: Option<bool>,
    pub gzip: Option<bool>,
    pub app_name: Option<String>,
    pub max_file_bytes: Option<u64>,
    pub max_file_age_ms: Option<u64>,
}

impl S3Config {
    pub fn problems(&self, at: &str, problems: &mut Problems) {
        if self.bucket.is_none() {
            problems.push(
                format_args!("{at}.bucket"),
                "required for an s3 destination",
            );
        }
    }

    pub fn settings(&self) -> S3ExportSettings {
        let defaults = S3ExportSettings::default();
        S3ExportSettings {
            app_name: self.app_name.clone().unwrap_or(defaults.app_name),
            folder: self.folder.clone(),
            date_folders: self.date_folders.unwrap_or(defaults.date_folders),
            gzip: self.gzip.unwrap_or(defaults.gzip),
            max_bytes: self
                .max_file_bytes
                .map_or(defaults.max_bytes, |b| b as usize),
            max_age: self
                .max_file_age_ms
                .map_or(defaults.max_age, Duration::from_millis),
        }
    }

    /// The writer's store: the bucket, through the process's S3 client.
    pub fn store(&self, context: &BuildContext) -> Result<AnyStore, BuildError> {
        let bucket = self.bucket.clone().ok_or(BuildError::Missing("bucket"))?;
        let client = context.s3.clone().ok_or(BuildError::NoAws)?;
        Ok(AnyStore::S3(S3Store::new(client, bucket)))
    }
}
