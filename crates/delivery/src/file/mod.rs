//! The file destination: NDJSON (outbound dialect, one batch a line) on local disk, rolled by
//! size and age. A batch is delivered once it is written and synced; concurrent calls share
//! one write and one sync (group commit).

pub mod config;
mod driver;
mod writer;

pub use config::{FileConfig, FileSettings};
pub use driver::FileDriver;
