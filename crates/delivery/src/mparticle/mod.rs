//! The mParticle Events API destination.

pub mod request_builder;

pub use request_builder::{Limits, PackError, Part, Request, pack};
