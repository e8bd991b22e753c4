//! The writer task: gathers lines from concurrent calls into one file, writes it when it is
//! big or old enough (or flushed), and answers every caller whose lines it holds.

use std::io::Write;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use runtime::{AnyStore, ObjectStore};
use tokio::sync::{mpsc, oneshot};

use super::config::S3ExportSettings;
use crate::layout;
use crate::writer::PendingLines;

pub(super) enum Command {
    Write(PendingLines),
    Flush(oneshot::Sender<()>),
}

pub(super) async fn roll(
    store: AnyStore,
    settings: S3ExportSettings,
    mut received: mpsc::UnboundedReceiver<Command>,
) {
    let mut buffer: Vec<u8> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    let mut oldest: Option<Instant> = None;
    loop {
        let due = oldest.map(|t| t + settings.max_age);
        let command = match due {
            Some(due) => tokio::select! {
                c = received.recv() => c,
                _ = tokio::time::sleep_until(due.into()) => {
                    write_file(&store, &settings, &mut buffer, &mut waiting).await;
                    oldest = None;
                    continue;
                }
            },
            None => received.recv().await,
        };
        match command {
            Some(Command::Write(pending)) => {
                buffer.extend_from_slice(&pending.lines);
                waiting.push(pending.done);
                oldest.get_or_insert_with(Instant::now);
                if buffer.len() >= settings.max_bytes {
                    write_file(&store, &settings, &mut buffer, &mut waiting).await;
                    oldest = None;
                }
            }
            Some(Command::Flush(done)) => {
                write_file(&store, &settings, &mut buffer, &mut waiting).await;
                oldest = None;
                let _ = done.send(());
            }
            None => {
                write_file(&store, &settings, &mut buffer, &mut waiting).await;
                return;
            }
        }
    }
}

async fn write_file(
    store: &AnyStore,
    settings: &S3ExportSettings,
    buffer: &mut Vec<u8>,
    waiting: &mut Vec<oneshot::Sender<Result<(), String>>>,
) {
    if waiting.is_empty() {
        return;
    }
    let now = SystemTime::now();
    let mut key = String::new();
    if let Some(folder) = settings.folder.as_deref().filter(|f| !f.is_empty()) {
        key.push_str(folder.trim_end_matches('/'));
        key.push('/');
    }
    if settings.date_folders {
        key.push_str(&layout::date_folder(now));
        key.push('/');
    }
    key.push_str(&layout::file_name(&settings.app_name, now));
    let lines = std::mem::take(buffer);
    let body = if settings.gzip {
        key.push_str(".gz");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        match encoder.write_all(&lines).and_then(|()| encoder.finish()) {
            Ok(body) => body,
            Err(e) => {
                answer_all(waiting, Err(format!("cannot compress: {e}")));
                return;
            }
        }
    } else {
        lines
    };
    let result = store
        .put(&key, Bytes::from(body))
        .await
        .map_err(|e| format!("cannot write {key}: {e}"));
    if result.is_ok() {
        tracing::debug!(key, batches = waiting.len(), "export file written");
    }
    answer_all(waiting, result);
}

fn answer_all(waiting: &mut Vec<oneshot::Sender<Result<(), String>>>, result: Result<(), String>) {
    for done in waiting.drain(..) {
        let _ = done.send(result.clone());
    }
}
