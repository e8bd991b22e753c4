//! The mParticle Events API destination: `POST /v2/bulkevents` (and `/historical`), packed to
//! mParticle's limits, HTTP Basic with the workspace's key and secret, adaptive concurrency
//! and a rate limit that honours `Retry-After` and `X-mp-rate-limit-percentage-used`.

pub mod config;
pub mod request_builder;
pub mod service;

pub use config::{MparticleConfig, MparticleSettings, Pod};
pub use request_builder::{Limits, PackError, Part, Request, pack};
pub use service::MparticleDriver;
