//! The file driver: hands each call's lines to the writer thread and answers with it.

use std::sync::mpsc;

use schema::v1::RoutedBatch;

use super::config::FileSettings;
use super::writer::write_loop;
use crate::driver::{Answer, BoxFuture, Driver};
use crate::writer::{PendingLines, write_through};

pub struct FileDriver {
    writes: mpsc::Sender<PendingLines>,
}

impl FileDriver {
    pub fn new(settings: FileSettings) -> std::io::Result<Self> {
        std::fs::create_dir_all(&settings.dir)?;
        let (writes, pending) = mpsc::channel::<PendingLines>();
        std::thread::Builder::new()
            .name("file-destination".into())
            .spawn(move || write_loop(settings, pending))?;
        Ok(FileDriver { writes })
    }
}

impl Driver for FileDriver {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn send<'a>(
        &'a self,
        batches: &'a [RoutedBatch],
        _deadline: std::time::Instant,
    ) -> BoxFuture<'a, Vec<Answer>> {
        Box::pin(write_through(batches, "file writer", |pending| {
            self.writes.send(pending).is_ok()
        }))
    }
}
