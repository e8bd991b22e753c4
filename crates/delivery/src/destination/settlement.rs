//! After an attempt: which batches were delivered, which wait in the retry queue (and how
//! long), which are dead letters; and the dead letters kept.

use std::time::Duration;

use futures_util::future::join_all;
use runtime::telemetry::PipelineSpan;
use schema::v1::RoutedBatch;

use super::Destination;
use crate::dlq::{DeadLetter, DlqError};
use crate::driver::Answer;

/// Batches sorted by what to do with them after an attempt.
#[derive(Default)]
pub(super) struct Settled {
    pub(super) delivered: Vec<usize>,
    /// Index, when to try again (`None`: past the window), the answer.
    pub(super) retry: Vec<(usize, Option<Duration>, Answer)>,
    pub(super) dead: Vec<(usize, Answer)>,
}

/// Ends each batch's span with where it went and the destination's status.
pub(super) fn record_outcomes(spans: &mut [PipelineSpan], settled: &Settled) {
    if spans.is_empty() {
        return;
    }
    let mut end = |i: usize, outcome: &'static str, answer: &Answer| {
        spans[i].record("outcome", outcome);
        if let Some(status) = answer.status() {
            spans[i].record("status", i64::from(status));
        }
    };
    for &i in &settled.delivered {
        end(i, "delivered", &Answer::Delivered);
    }
    for (i, delay, answer) in &settled.retry {
        end(*i, if delay.is_some() { "parked" } else { "dead" }, answer);
    }
    for (i, answer) in &settled.dead {
        end(*i, "dead", answer);
    }
}

impl Settled {
    /// Refused for good, and past the retry window.
    pub(super) fn dead_lettered(&self) -> Vec<(usize, &Answer)> {
        let expired = self
            .retry
            .iter()
            .filter(|(_, delay, _)| delay.is_none())
            .map(|(i, _, a)| (*i, a));
        self.dead
            .iter()
            .map(|(i, a)| (*i, a))
            .chain(expired)
            .collect()
    }
}

impl Destination {
    /// Sorts answers; `history(i)` gives batch i's attempts so far and its first attempt time.
    pub(super) fn settle(
        &self,
        answers: &[Answer],
        history: impl Fn(usize) -> (u32, i64),
    ) -> Settled {
        let policy = &self.settings.retry;
        let now_ms = runtime::now_ms();
        let mut settled = Settled::default();
        for (i, answer) in answers.iter().enumerate() {
            match answer {
                Answer::Delivered => settled.delivered.push(i),
                Answer::Reject { .. } => settled.dead.push((i, answer.clone())),
                // Our misconfiguration never costs the customer's data: no window here.
                Answer::Unauthorized { .. } => {
                    settled
                        .retry
                        .push((i, Some(policy.probe_interval), answer.clone()))
                }
                Answer::Retry { after, .. } => {
                    let (attempts, first_ms) = history(i);
                    let delay = policy.delay(attempts, *after);
                    let next_ms = now_ms + delay.as_millis() as i64;
                    let keep = policy.within_window(first_ms, next_ms);
                    settled
                        .retry
                        .push((i, keep.then_some(delay), answer.clone()));
                }
            }
        }
        settled
    }

    /// Keeps the `dead` batches as dead letters, with their history and last answer.
    pub(super) async fn dead_letter(
        &self,
        dead: &[(usize, &Answer)],
        batches: &[RoutedBatch],
        history: impl Fn(usize) -> (u32, i64),
    ) -> Result<(), DlqError> {
        let letters: Vec<DeadLetter> = dead
            .iter()
            .map(|&(i, answer)| {
                let (attempts, first_attempt_ms) = history(i);
                DeadLetter::new(
                    self.id(),
                    batches[i].clone(),
                    attempts,
                    first_attempt_ms,
                    answer.status(),
                    answer.detail(),
                )
            })
            .collect();
        for result in join_all(letters.iter().map(|l| self.dead_letters.put(l))).await {
            result?;
        }
        for letter in &letters {
            tracing::warn!(
                destination = self.id(),
                dead_letter = %letter.id,
                status = letter.status,
                attempts = letter.attempts,
                "batch dead-lettered"
            );
        }
        Ok(())
    }
}
