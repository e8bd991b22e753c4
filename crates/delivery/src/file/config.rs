//! Settings of the file destination.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct FileSettings {
    pub dir: PathBuf,
    /// The `<App>` part of file names.
    pub app_name: String,
    /// Start a new file past this size...
    pub max_bytes: u64,
    /// ...or this age.
    pub max_age: Duration,
}

impl FileSettings {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileSettings {
            dir: dir.into(),
            app_name: "mpconnect".into(),
            max_bytes: 128 * 1024 * 1024,
            max_age: Duration::from_secs(3600),
        }
    }
}
