//! The mParticle JSON codec: both dialects to and from the canonical `Batch`, in one pass
//! over the bytes, with no intermediate JSON tree.

mod batch;
mod messages;
pub mod read;
pub(crate) mod scan;
pub mod write;

pub(crate) use batch::{BatchSeed, BatchesSeed, write_batch};
pub use batch::{
    EVENT_TYPES, environment_from_name, environment_name, event_type_name, kind_field_names,
    kind_for,
};
pub use read::Fields;

thread_local! {
    /// Set while reading when a value's form was changed (an int64 given as a string of
    /// digits, the Python SDK's `customerid`): the batch then means what its encoding says,
    /// not byte for byte what was sent.
    static NORMALISED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

thread_local! {
    /// Set while reading a batch that travels on as the sender's bytes (ingest's
    /// pass-through): only what validation, routing and the pass-through check read is kept.
    static SKIMMING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `read` keeping only the members [`read::kept_when_skimming`] names (and `event_type`,
/// `environment`, `user_identities`); every other member is checked as the full read checks it
/// (refused where that refuses, noting a changed form where that does) and left out. Most of a
/// typical event's bytes and allocations are members nothing reads again.
pub(crate) fn skimming<T>(read: impl FnOnce() -> T) -> T {
    /// Ends the skim however `read` ends (a panic too), so no later full read on this thread
    /// is skimmed.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SKIMMING.with(|s| s.set(false));
        }
    }
    SKIMMING.with(|s| s.set(true));
    let _reset = Reset;
    read()
}

pub(crate) fn skims() -> bool {
    SKIMMING.with(|s| s.get())
}

pub(crate) fn note_normalised() {
    NORMALISED.with(|n| n.set(true));
}

/// Runs `read` and tells whether it changed any value's form.
pub(crate) fn noting_normalisation<T>(read: impl FnOnce() -> T) -> (T, bool) {
    NORMALISED.with(|n| n.set(false));
    let out = read();
    (out, NORMALISED.with(|n| n.get()))
}
