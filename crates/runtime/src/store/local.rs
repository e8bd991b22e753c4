//! A local directory as an object store: keys are relative paths under the root.

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{ObjectInfo, ObjectReader, ObjectStore, StoreError};

#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

fn io_error(key: &str, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StoreError::NotFound(key.to_owned())
    } else {
        StoreError::Unavailable(format!("{key}: {e}"))
    }
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    /// The file for a key; a key that would leave the root is refused.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let relative = Path::new(key);
        let plain = !key.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(StoreError::InvalidKey(key.to_owned()));
        }
        Ok(self.root.join(relative))
    }
}

impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io_error(key, e))?;
        }
        // Written aside and renamed: a reader sees the whole object or none of it.
        let partial = path.with_extension(format!("partial-{}", uuid::Uuid::new_v4()));
        let written = async {
            let mut file = tokio::fs::File::create(&partial).await?;
            file.write_all(&body).await?;
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&partial, &path).await?;
            // The rename is durable only once the directory is: without this, a power loss
            // could lose an object whose put had returned.
            if let Some(dir) = path.parent() {
                tokio::fs::File::open(dir).await?.sync_all().await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = written {
            // Nothing half-written is left to fill the disk.
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(io_error(key, e));
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StoreError> {
        let file = tokio::fs::File::open(self.path(key)?)
            .await
            .map_err(|e| io_error(key, e))?;
        Ok(Box::pin(file))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut found = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(prefix, e)),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| io_error(prefix, e))?
            {
                let path = entry.path();
                let meta = match entry.metadata().await {
                    Ok(meta) => meta,
                    // Gone since the directory was read: a write's temporary file renamed into
                    // place, or an object deleted. The listing goes on without it.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error(prefix, e)),
                };
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let Ok(relative) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                if key.starts_with(prefix) && !key.contains(".partial-") {
                    let modified = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_nanos())
                        .unwrap_or(0);
                    found.push(ObjectInfo {
                        key,
                        size: meta.len(),
                        etag: Some(format!("{}-{modified}", meta.len())),
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(key, e)),
            _ => Ok(()),
        }
    }
}
