//! Settings of the S3 export destination.

use std::time::Duration;

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
