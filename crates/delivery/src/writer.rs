//! What the file-writing drivers (file, S3) share: a writer task that takes lines from
//! concurrent calls, makes them durable together, and answers every caller.

use schema::v1::RoutedBatch;

use crate::driver::Answer;

/// Lines handed to a writer task, and where it answers once they are durable.
pub struct PendingLines {
    pub lines: Vec<u8>,
    pub done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// For the drivers that write files: the batches as NDJSON lines in the outbound dialect,
/// handed to the `writer` task by `submit` (false when the task is gone), each batch answered
/// with what the writer said (a routed batch without its batch is refused).
pub async fn write_through(
    batches: &[RoutedBatch],
    writer: &str,
    submit: impl FnOnce(PendingLines) -> bool,
) -> Vec<Answer> {
    let lines = crate::layout::ndjson(batches.iter().filter_map(|b| b.batch.as_ref()));
    let (done, answer) = tokio::sync::oneshot::channel();
    let answer = if !submit(PendingLines { lines, done }) {
        Answer::retry(format!("the {writer} stopped"))
    } else {
        match answer.await {
            Ok(Ok(())) => Answer::Delivered,
            Ok(Err(why)) => Answer::retry(why),
            Err(_) => Answer::retry(format!("the {writer} stopped")),
        }
    };
    batches
        .iter()
        .map(|b| match b.batch {
            Some(_) => answer.clone(),
            None => Answer::reject("no batch"),
        })
        .collect()
}
