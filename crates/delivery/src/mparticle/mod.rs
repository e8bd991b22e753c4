//! The mParticle Events API destination: `POST /v2/bulkevents` (and `/historical`), packed to
//! mParticle's limits, HTTP Basic with the workspace's key and secret, adaptive concurrency
//! and a rate limit that honours `Retry-After` and `X-mp-rate-limit-percentage-used`.

pub mod config;
pub mod driver;
pub mod request_builder;

pub use config::{MparticleConfig, MparticleSettings, Pod};
pub use driver::MparticleDriver;
pub use request_builder::{PackError, PackLimits, Part, Request, pack};
