//! A destination's health as its answers tell it: backing off after a temporary failure,
//! suspended while our credentials are refused.

use std::time::Instant;

use super::Destination;
use crate::driver::Answer;

/// What operators see of a destination's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationState {
    Healthy,
    /// A temporary failure: new batches are parked until then.
    BackingOff {
        for_ms: u64,
        because: String,
    },
    /// Our credentials were refused: nothing is sent until a probe succeeds.
    Suspended {
        because: String,
    },
}

pub(super) struct Health {
    pub(super) suspended: Option<String>,
    pub(super) backing_off_until: Option<(Instant, String)>,
}

impl Destination {
    pub fn state(&self) -> DestinationState {
        let Ok(health) = self.health.lock() else {
            return DestinationState::Healthy;
        };
        if let Some(because) = &health.suspended {
            return DestinationState::Suspended {
                because: because.clone(),
            };
        }
        match &health.backing_off_until {
            Some((until, because)) if *until > Instant::now() => DestinationState::BackingOff {
                for_ms: (*until - Instant::now()).as_millis() as u64,
                because: because.clone(),
            },
            _ => DestinationState::Healthy,
        }
    }

    /// What the answers say about the destination's health.
    pub(super) fn learn(&self, answers: &[Answer]) {
        let Ok(mut health) = self.health.lock() else {
            return;
        };
        let was_suspended = health.suspended.is_some();
        let unauthorized = answers
            .iter()
            .find(|a| matches!(a, Answer::Unauthorized { .. }));
        let retry = answers.iter().find_map(|a| match a {
            Answer::Retry { after, detail, .. } => Some((*after, detail.clone())),
            _ => None,
        });
        let any_success = answers
            .iter()
            .any(|a| matches!(a, Answer::Delivered | Answer::Reject { .. }));
        if let Some(answer) = unauthorized {
            if !was_suspended {
                tracing::error!(
                    destination = self.id(),
                    kind = self.driver.kind(),
                    status = answer.status(),
                    "the destination refused our credentials: sending to it is suspended and its \
                     batches are kept in its retry queue; fix the credentials (they are re-read \
                     from their file before each probe)"
                );
            }
            health.suspended = Some(format!(
                "credentials refused ({})",
                answer.status().unwrap_or_default()
            ));
        } else if any_success || retry.is_some() {
            if was_suspended {
                tracing::warn!(
                    destination = self.id(),
                    "credentials accepted again: sending resumes"
                );
            }
            health.suspended = None;
        }
        match retry {
            Some((after, detail)) => {
                let pause = after
                    .unwrap_or(self.settings.retry.base)
                    .max(self.settings.retry.base);
                health.backing_off_until = Some((Instant::now() + pause, detail));
            }
            None if any_success => health.backing_off_until = None,
            None => {}
        }
        drop(health);
        self.publish_state();
    }

    pub(super) fn publish_state(&self) {
        let state = self.state();
        metrics::gauge!("mpconnect_delivery_suspended", "destination" => self.id().to_owned())
            .set(matches!(state, DestinationState::Suspended { .. }) as u8 as f64);
    }
}
