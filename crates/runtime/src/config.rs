//! What every configurable component shares: secrets as written in the configuration, a
//! collector of problems (each with its path in the file), and reading a component's table by
//! its kind with unknown keys reported rather than refused, so `validate` lists them all at
//! once.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::secret::{Secret, SecretSource};

/// A secret: inline, `{ env = "VAR" }`, `{ file = "path" }`, or `{ file = "path", generate =
/// true }` (created with a fresh random value if missing: the embedded default's credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretConfig {
    /// `Debug` of a [`Secret`] prints `[redacted]`: a configuration printed whole shows none.
    Value(Secret),
    Env(String),
    File {
        path: PathBuf,
        generate: bool,
    },
}

impl<'de> Deserialize<'de> for SecretConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            env: Option<String>,
            file: Option<PathBuf>,
            #[serde(default)]
            generate: bool,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Value(String),
            Table(Table),
        }
        match Either::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a secret is a string, { env = \"VAR\" }, or { file = \"path\" }",
            )
        })? {
            Either::Value(v) => Ok(SecretConfig::Value(Secret::new(v))),
            Either::Table(Table {
                env: Some(env),
                file: None,
                generate: false,
            }) => Ok(SecretConfig::Env(env)),
            Either::Table(Table {
                env: None,
                file: Some(path),
                generate,
            }) => Ok(SecretConfig::File { path, generate }),
            Either::Table(_) => Err(serde::de::Error::custom(
                "a secret takes exactly one of env or file",
            )),
        }
    }
}

impl SecretConfig {
    /// The source to read it from; relative files are under the data directory.
    pub fn source(&self, data_dir: &Path) -> SecretSource {
        match self {
            SecretConfig::Value(v) => SecretSource::Value(v.clone()),
            SecretConfig::Env(name) => SecretSource::Env(name.clone()),
            SecretConfig::File { path, .. } => SecretSource::File(data_dir.join(path)),
        }
    }

    /// The environment variable it is read from, if any.
    pub fn env_var(&self) -> Option<&str> {
        match self {
            SecretConfig::Env(name) => Some(name),
            _ => None,
        }
    }

    /// Whether it is created at start when missing (and so may be printed: it is local).
    pub fn is_generated(&self) -> bool {
        matches!(self, SecretConfig::File { generate: true, .. })
    }

    /// Creates a generated secret's file if it is missing.
    pub fn ensure(&self, data_dir: &Path, length: usize) -> std::io::Result<()> {
        let SecretConfig::File {
            path,
            generate: true,
        } = self
        else {
            return Ok(());
        };
        let path = data_dir.join(path);
        if path.exists() {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::io::Write::write_all(&mut options.open(&path)?, random_token(length).as_bytes())
    }
}

/// A random token of `length` characters from [A-Za-z0-9].
pub fn random_token(length: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..length)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Collects a configuration's problems, each as `path: why`, and knows what checking needs:
/// the data directory (for secret files) and whether this process reads the secrets of the
/// component being checked (a stage's pods hold only their own).
pub struct Problems<'a> {
    data_dir: &'a Path,
    pub reads_secrets: bool,
    found: Vec<String>,
}

impl<'a> Problems<'a> {
    pub fn new(data_dir: &'a Path) -> Self {
        Problems {
            data_dir,
            reads_secrets: true,
            found: Vec::new(),
        }
    }

    pub fn push(&mut self, at: impl Display, why: impl Display) {
        self.found.push(format!("{at}: {why}"));
    }

    /// A required secret: present, and readable if this process reads it.
    pub fn required_secret(&mut self, at: impl Display, secret: &Option<SecretConfig>) {
        match secret {
            None => self.push(at, "required"),
            Some(secret) => self.secret(at, secret),
        }
    }

    /// A secret that this process reads must be readable now (a generated one is created at
    /// start: nothing to read yet).
    pub fn secret(&mut self, at: impl Display, secret: &SecretConfig) {
        if !self.reads_secrets || secret.is_generated() {
            return;
        }
        if let Err(e) = secret.source(self.data_dir).load() {
            self.push(at, e);
        }
    }

    /// A problem already written as `path: why`.
    pub fn line(&mut self, problem: impl Into<String>) {
        self.found.push(problem.into());
    }

    pub fn extend(&mut self, more: impl IntoIterator<Item = String>) {
        self.found.extend(more);
    }

    pub fn into_vec(self) -> Vec<String> {
        self.found
    }
}

/// Reads `value` as `T`, returning with it the dotted paths of the keys `T` does not know.
/// A component read in parts (its common keys, then its kind's) reports as unknown only the
/// keys that no part knows: see [`unknown_to_all`].
pub fn read_reporting_unknown<T: DeserializeOwned>(
    value: serde_json::Value,
) -> Result<(T, BTreeSet<String>), serde_json::Error> {
    let mut unknown = BTreeSet::new();
    let read = serde_ignored::deserialize(value, |path| {
        unknown.insert(path.to_string());
    })?;
    Ok((read, unknown))
}

/// Reads a component (a `[[sources]]` or `[[destinations]]` entry) in two parts: its common
/// keys as `C`, then its kind's, by `read_kind` (given the common part, to pick the kind).
/// Returns both parts and the keys that neither knows.
pub fn read_component<C: DeserializeOwned, K>(
    value: serde_json::Value,
    read_kind: impl FnOnce(&C, serde_json::Value) -> Result<(K, BTreeSet<String>), String>,
) -> Result<(C, K, Vec<String>), String> {
    let (common, unknown_common) =
        read_reporting_unknown::<C>(value.clone()).map_err(|e| e.to_string())?;
    let (kind, unknown_kind) = read_kind(&common, value)?;
    let unknown = unknown_to_all(&[&unknown_common, &unknown_kind]);
    Ok((common, kind, unknown))
}

/// One kind's part of a component: `value` read as `T`, wrapped as the kind's variant.
pub fn read_kind<T: DeserializeOwned, K>(
    value: serde_json::Value,
    variant: fn(T) -> K,
) -> Result<(K, BTreeSet<String>), String> {
    read_reporting_unknown(value)
        .map(|(config, unknown)| (variant(config), unknown))
        .map_err(|e| e.to_string())
}

/// The keys unknown to every part of a component.
fn unknown_to_all(parts: &[&BTreeSet<String>]) -> Vec<String> {
    let Some((first, rest)) = parts.split_first() else {
        return Vec::new();
    };
    first
        .iter()
        .filter(|key| rest.iter().all(|other| other.contains(*key)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inline_secret_is_not_printed_with_its_configuration() {
        let secret: SecretConfig = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(format!("{secret:?}"), "Value([redacted])");
        let table: SecretConfig = serde_json::from_str(r#"{"env": "A"}"#).unwrap();
        assert_eq!(table.env_var(), Some("A"));
        assert!(serde_json::from_str::<SecretConfig>(r#"{"env": "A", "file": "b"}"#).is_err());
    }

    #[test]
    fn keys_unknown_to_every_part_are_reported() {
        #[derive(Deserialize)]
        struct Common {
            #[allow(dead_code)]
            id: String,
        }
        #[derive(Deserialize)]
        struct Kind {
            #[allow(dead_code)]
            url: String,
        }
        let value = serde_json::json!({"id": "a", "url": "u", "typo": 1});
        let (_, common): (Common, _) = read_reporting_unknown(value.clone()).unwrap();
        let (_, kind): (Kind, _) = read_reporting_unknown(value).unwrap();
        assert_eq!(unknown_to_all(&[&common, &kind]), ["typo"]);
        let (_, _, unknown): (Common, Kind, _) = read_component(
            serde_json::json!({"id": "a", "url": "u", "typo": 1}),
            |_, v| read_kind(v, |k: Kind| k),
        )
        .unwrap();
        assert_eq!(unknown, ["typo"]);
    }
}
