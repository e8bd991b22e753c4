//! The delivery stage: the `DeliveryService` gRPC server, one folder per destination driver
//! (`mparticle`, `s3`, `webhook`, `file`), a retry queue per destination, and the dead-letter
//! store.
//!
//! A batch is answered only once it is delivered, parked in its destination's retry queue, or
//! dead-lettered; the transform acknowledges its input on that answer.

pub mod config;
pub mod destination;
pub mod dlq;
pub mod driver;
pub mod file;
pub mod grpc;
mod http;
pub mod layout;
pub mod limit;
pub mod mparticle;
pub mod retry;
pub mod s3;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
pub mod webhook;
mod writer;

pub use config::{BuildContext, BuildError, DestinationConfig, DestinationKind};
pub use destination::{
    DEFAULT_ATTEMPT_TIMEOUT, Destination, DestinationSettings, DestinationState,
};
pub use dlq::{DeadLetter, DeadLetters, RedriveReport, Scan};
pub use driver::{Answer, Driver};
pub use grpc::Delivery;
pub use http::DEFAULT_REQUEST_TIMEOUT;
