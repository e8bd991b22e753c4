//! mpconnect's source adapters. [`http`]: mParticle's Events API shape (`/v2/events`,
//! `/v2/bulkevents`, `/v2/bulkevents/historical`) and its Webhook output (`/webhook/{source}`);
//! [`s3`]: its Amazon S3 output, through the bucket's notifications on SQS.

pub mod config;
pub mod http;
pub mod s3;

pub use config::{SourceBuildError, SourceConfig, SourceKind};
pub use http::{DEFAULT_MAX_BACKLOG, HttpSource, Ingest, IngestSettings};
