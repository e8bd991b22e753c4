//! Settings of the file destination.

use std::path::{Path, PathBuf};
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

/// A `file` destination as configured.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct FileConfig {
    /// The directory, relative to the data directory (`events`).
    pub path: Option<PathBuf>,
    pub app_name: Option<String>,
    pub max_file_bytes: Option<u64>,
    pub max_file_age_ms: Option<u64>,
}

impl FileConfig {
    /// Where the files land.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.path.as_deref().unwrap_or(Path::new("events")))
    }

    pub fn settings(&self, data_dir: &Path) -> FileSettings {
        let mut settings = FileSettings::new(self.dir(data_dir));
        if let Some(app) = &self.app_name {
            settings.app_name = app.clone();
        }
        if let Some(max) = self.max_file_bytes {
            settings.max_bytes = max;
        }
        if let Some(ms) = self.max_file_age_ms {
            settings.max_age = Duration::from_millis(ms);
        }
        settings
    }
}
