//! `mpconnect backfill s3://bucket/prefix`: queue the objects that are already there
//! (mParticle's folder and date-folder layouts are just prefixes), resumable: each finished
//! key is appended to a state file, and a rerun skips what it lists.

use std::collections::HashSet;
use std::path::Path;

use runtime::ObjectStore;
use runtime::store::S3Store;
use tokio::io::AsyncWriteExt;

use super::{ObjectRef, ObjectSummary, S3Source, S3SourceError, is_verification_file};

/// Where a backfill stands, after each object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillProgress {
    pub objects_total: u64,
    pub objects_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillSummary {
    /// Objects read this run.
    pub objects: u64,
    /// Objects skipped: finished by an earlier run, or mParticle's verification files.
    pub skipped: u64,
    pub lines: u64,
    pub batches: u64,
    pub events: u64,
    pub bad_lines: u64,
}

/// Reads every object under `prefix` through `source`, in key order.
pub async fn backfill(
    source: &S3Source,
    bucket: &str,
    prefix: &str,
    state_file: Option<&Path>,
    mut progress: impl FnMut(BackfillProgress),
) -> Result<BackfillSummary, S3SourceError> {
    let done: HashSet<String> = match state_file {
        Some(path) => match tokio::fs::read_to_string(path).await {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(e.into()),
        },
        None => HashSet::new(),
    };
    let mut state = match state_file {
        Some(path) => Some(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await?,
        ),
        None => None,
    };

    let store = S3Store::new(source.inner.s3.clone(), bucket);
    let listed = store.list(prefix).await?;
    let mut summary = BackfillSummary::default();
    let mut todo = Vec::new();
    for object in listed {
        if done.contains(&object.key) || is_verification_file(&object.key) {
            summary.skipped += 1;
        } else {
            todo.push(object);
        }
    }
    let mut at = BackfillProgress {
        objects_total: todo.len() as u64,
        bytes_total: todo.iter().map(|o| o.size).sum(),
        ..BackfillProgress::default()
    };
    progress(at);
    for object in todo {
        let object_ref = ObjectRef {
            bucket: bucket.to_owned(),
            key: object.key.clone(),
            etag: object.etag.clone(),
            size: Some(object.size),
        };
        let ObjectSummary {
            lines,
            batches,
            events,
            bad_lines,
        } = source.read_object(&object_ref).await?;
        summary.objects += 1;
        summary.lines += lines;
        summary.batches += batches;
        summary.events += events;
        summary.bad_lines += bad_lines;
        if let Some(file) = &mut state {
            // Recorded only once every line of the object is queued.
            file.write_all(format!("{}\n", object.key).as_bytes())
                .await?;
            file.sync_data().await?;
        }
        at.objects_done += 1;
        at.bytes_done += object.size;
        progress(at);
    }
    Ok(summary)
}
