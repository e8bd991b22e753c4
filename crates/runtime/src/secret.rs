//! Secrets: never printed, compared in constant time, read from env or files by config.

use std::fmt;

use subtle::ConstantTimeEq;

/// A credential. `Debug` and `Display` print `[redacted]`, so a secret that reaches a log line
/// by accident shows nothing.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that must send it (an `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time equality: how long it takes says nothing of how much matched.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret comes from: given as it is, an environment variable, or a file (trailing
/// newlines dropped). A file is read again on each `load`, so a rotated secret is picked up
/// without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Value(Secret),
    Env(String),
    File(std::path::PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read secret file {path}: {error}")]
    File {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("the secret from {0} is empty")]
    Empty(String),
}

impl SecretSource {
    pub fn load(&self) -> Result<Secret, SecretError> {
        let (value, from) = match self {
            SecretSource::Value(s) => return Ok(s.clone()),
            SecretSource::Env(name) => (
                std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))?,
                format!("${name}"),
            ),
            SecretSource::File(path) => (
                std::fs::read_to_string(path).map_err(|error| SecretError::File {
                    path: path.clone(),
                    error,
                })?,
                path.display().to_string(),
            ),
        };
        let value = value.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(SecretError::Empty(from));
        }
        Ok(Secret::new(value))
    }
}

/// Equality whose time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed_and_compared_exactly() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert!(s.matches(b"hunter2"));
        assert!(!s.matches(b"hunter3"));
        assert!(!s.matches(b"hunter"));
        assert!(!s.matches(b""));
    }

    #[test]
    fn sources_read_files_again_and_name_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "first\n").unwrap();
        let source = SecretSource::File(path.clone());
        assert_eq!(source.load().unwrap().expose(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(source.load().unwrap().expose(), "second");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(source.load(), Err(SecretError::Empty(_))));
        let missing = SecretSource::Env("MPCONNECT_TEST_SURELY_UNSET_VAR".into());
        assert_eq!(
            missing.load().unwrap_err().to_string(),
            "environment variable MPCONNECT_TEST_SURELY_UNSET_VAR is not set"
        );
    }
}
