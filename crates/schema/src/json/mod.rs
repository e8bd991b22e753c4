//! The mParticle JSON codec: both dialects to and from the canonical `Batch`, in one pass
//! over the bytes, with no intermediate JSON tree.

mod batch;
mod messages;
pub mod read;
pub mod write;

pub(crate) use batch::{BatchSeed, BatchesSeed, write_batch};
pub use batch::{
    EVENT_TYPES, environment_from_name, environment_name, event_type_name, kind_field_names,
    kind_for,
};
pub use read::Fields;
