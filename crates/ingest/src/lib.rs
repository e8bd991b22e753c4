//! mpconnect's source adapters. [`http`]: mParticle's Events API shape (`/v2/events`,
//! `/v2/bulkevents`, `/v2/bulkevents/historical`) and its Webhook output (`/webhook/{source}`).

pub mod http;

pub use http::{HttpSource, Ingest, IngestSettings};
