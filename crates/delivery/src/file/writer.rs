//! The writer thread: takes every waiting write, appends them, syncs once, answers all
//! (group commit), rolling files by size and age.

use std::fs::File;
use std::io::Write;
use std::sync::mpsc;
use std::time::{Instant, SystemTime};

use super::config::FileSettings;
use crate::layout;
use crate::writer::PendingLines;

struct Current {
    file: File,
    bytes: u64,
    opened: Instant,
}

pub(super) fn write_loop(settings: FileSettings, pending: mpsc::Receiver<PendingLines>) {
    let mut current: Option<Current> = None;
    while let Ok(first) = pending.recv() {
        let mut group = vec![first];
        group.extend(pending.try_iter());
        let result = write_group(&settings, &mut current, &group);
        if result.is_err() {
            // Start afresh next time rather than append after a failed write.
            current = None;
        }
        for write in group {
            let _ = write.done.send(result.clone());
        }
    }
}

fn write_group(
    settings: &FileSettings,
    current: &mut Option<Current>,
    group: &[PendingLines],
) -> Result<(), String> {
    for write in group {
        // Roll between writes, so a large group still makes files of the configured size.
        let full = current.as_ref().is_some_and(|c| {
            c.bytes >= settings.max_bytes || c.opened.elapsed() >= settings.max_age
        });
        if full && let Some(done) = current.take() {
            done.file
                .sync_data()
                .map_err(|e| format!("cannot sync: {e}"))?;
        }
        let c = match current {
            Some(c) => c,
            None => current.insert(open(settings)?),
        };
        c.file
            .write_all(&write.lines)
            .map_err(|e| format!("cannot write: {e}"))?;
        c.bytes += write.lines.len() as u64;
    }
    match current {
        Some(c) => c.file.sync_data().map_err(|e| format!("cannot sync: {e}")),
        None => Ok(()),
    }
}

fn open(settings: &FileSettings) -> Result<Current, String> {
    let path = settings
        .dir
        .join(layout::file_name(&settings.app_name, SystemTime::now()));
    let file = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(Current {
        file,
        bytes: 0,
        opened: Instant::now(),
    })
}
