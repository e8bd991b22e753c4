//! The S3 export driver: hands each call's lines to the writer task and answers with it.

use runtime::AnyStore;
use schema::v1::RoutedBatch;
use tokio::sync::{mpsc, oneshot};

use super::config::S3ExportSettings;
use super::writer::{Command, roll};
use crate::driver::{Answer, BoxFuture, Driver};
use crate::writer::write_through;

pub struct S3Driver {
    commands: mpsc::UnboundedSender<Command>,
}

impl S3Driver {
    /// Writes into `store` (an S3 bucket, or a local directory in tests and the embedded mode).
    pub fn new(store: AnyStore, settings: S3ExportSettings) -> Self {
        let (commands, received) = mpsc::unbounded_channel();
        tokio::spawn(roll(store, settings, received));
        S3Driver { commands }
    }
}

impl Driver for S3Driver {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn send<'a>(
        &'a self,
        batches: &'a [RoutedBatch],
        _deadline: std::time::Instant,
    ) -> BoxFuture<'a, Vec<Answer>> {
        Box::pin(write_through(batches, "S3 writer", |pending| {
            self.commands.send(Command::Write(pending)).is_ok()
        }))
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (done, flushed) = oneshot::channel();
            if self.commands.send(Command::Flush(done)).is_ok() {
                let _ = flushed.await;
            }
        })
    }
}
