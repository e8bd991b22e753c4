//! The S3 export destination, in mParticle's own S3 layout: NDJSON in the outbound dialect,
//! one batch a line, `<App>_<timestamp>_<5 digits>.txt`, optional gzip, optional folder and
//! date folders. Files roll by size and age; a batch is delivered once its file is in S3.

pub mod config;
mod driver;
mod writer;

pub use config::{S3Config, S3ExportSettings};
pub use driver::S3Driver;
