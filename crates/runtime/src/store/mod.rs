//! The object store: S3, or a local directory for the embedded mode, behind one trait.

mod local;
mod s3;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

pub use local::LocalStore;
pub use s3::S3Store;

/// A streaming object body.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// S3's ETag (quotes removed); for a local file, its size and modification time.
    pub etag: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no object {0}")]
    NotFound(String),
    /// Cannot reach the store, or it failed; retrying may succeed.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    /// A key that cannot name an object (e.g. `..` in a local path).
    #[error("invalid object key {0}")]
    InvalidKey(String),
}

pub trait ObjectStore: Send + Sync {
    fn put(&self, key: &str, body: Bytes) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The object's bytes as a stream (large objects are never held whole).
    fn get(&self, key: &str) -> impl Future<Output = Result<ObjectReader, StoreError>> + Send;
    /// Every object whose key starts with `prefix`, in key order.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<ObjectInfo>, StoreError>> + Send;
    /// Deletes an object; deleting one that does not exist succeeds, as in S3.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The whole object in memory (for small objects such as claim-checked bodies).
    fn get_bytes(&self, key: &str) -> impl Future<Output = Result<Bytes, StoreError>> + Send {
        async move {
            let mut reader = self.get(key).await?;
            let mut body = Vec::new();
            reader
                .read_to_end(&mut body)
                .await
                .map_err(|e| StoreError::Unavailable(format!("reading {key}: {e}")))?;
            Ok(Bytes::from(body))
        }
    }
}

/// Either store, chosen by configuration.
#[derive(Clone)]
pub enum AnyStore {
    S3(S3Store),
    Local(LocalStore),
}

impl ObjectStore for AnyStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        match self {
            AnyStore::S3(s) => s.put(key, body).await,
            AnyStore::Local(s) => s.put(key, body).await,
        }
    }
    async fn get(&self, key: &str) -> Result<ObjectReader, StoreError> {
        match self {
            AnyStore::S3(s) => s.get(key).await,
            AnyStore::Local(s) => s.get(key).await,
        }
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        match self {
            AnyStore::S3(s) => s.list(prefix).await,
            AnyStore::Local(s) => s.list(prefix).await,
        }
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            AnyStore::S3(s) => s.delete(key).await,
            AnyStore::Local(s) => s.delete(key).await,
        }
    }
}
