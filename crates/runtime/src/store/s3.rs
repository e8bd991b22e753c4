//! S3 as the object store, on `aws-sdk-s3` (path-style addressing for LocalStack and moto).

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{ObjectInfo, ObjectReader, ObjectStore, StoreError};

#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

fn classify<E, R>(key: &str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(service) = &e
        && matches!(service.err().code(), Some("NoSuchKey" | "NotFound"))
    {
        return StoreError::NotFound(key.to_owned());
    }
    StoreError::Unavailable(format!("{key}: {}", DisplayErrorContext(&e)))
}

impl S3Store {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3Store {
            client,
            bucket: bucket.into(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(Box::pin(out.body.into_async_read()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(prefix, e))?;
            for object in page.contents.unwrap_or_default() {
                let Some(key) = object.key else { continue };
                found.push(ObjectInfo {
                    key,
                    size: object.size.unwrap_or(0).max(0) as u64,
                    etag: object.e_tag.map(|t| t.trim_matches('"').to_owned()),
                });
            }
        }
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
    }
}
