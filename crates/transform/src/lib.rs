//! The transform stage: consumes the ingest queue, applies each connection's rules, routes
//! batches to their destinations over gRPC (`DeliveryService`), and decides when an ingest
//! message may be deleted: only once every destination it routes to has answered for it.

pub mod client;
mod consumer;
pub mod dedupe;
pub mod rules;
/// A recording delivery peer for tests across the workspace: feature `testing`.
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{DELIVER_DEADLINE, DeliveryClient, DeliveryError, Resolve};
pub use consumer::{Connection, Transform, TransformSettings, TransformStats};
pub use dedupe::{DedupeSettings, DedupeWindow, Key as DedupeKey};
pub use rules::Rules;
