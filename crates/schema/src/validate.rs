//! The checks mParticle answers with 400, with messages in the style of its own
//! (`Required event field "event_type" is missing or empty.`).

use std::fmt;

use crate::json::read::Extra;
use crate::json::{EVENT_TYPES, environment_name};
use crate::v1::{Batch, Environment, Event, event};

/// One problem in a batch: where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Where in the batch, e.g. `events[2].data.event_name`.
    pub path: String,
    /// What is wrong, phrased as mParticle phrases it.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at {})", self.message, self.path)
    }
}

impl std::error::Error for ValidationError {}

/// Checks a batch as mParticle's Events API does; returns every problem found.
pub fn validate(batch: &Batch) -> Result<(), Vec<ValidationError>> {
    let mut errors = Vec::new();
    if environment_name(batch.environment()).is_none() {
        let message = match batch.extra.get("environment").map(|raw| raw.as_str()) {
            None | Some("null") | Some("\"\"") => {
                "Required batch field \"environment\" is missing or empty.".to_owned()
            }
            Some(raw) => format!(
                "Batch field \"environment\" must be \"production\" or \"development\", got {raw}."
            ),
        };
        errors.push(ValidationError {
            path: "environment".to_owned(),
            message,
        });
    }
    for (i, event) in batch.events.iter().enumerate() {
        validate_event(event, i, &mut errors);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn validate_event(event: &Event, index: usize, errors: &mut Vec<ValidationError>) {
    let Some(kind) = &event.kind else {
        let message = match event.extra.get("event_type").map(|raw| raw.as_str()) {
            None | Some("null") | Some("\"\"") => {
                "Required event field \"event_type\" is missing or empty.".to_owned()
            }
            Some(raw) => format!(
                "Event field \"event_type\" has an unknown value {raw}; expected one of: {}.",
                EVENT_TYPES.join(", ")
            ),
        };
        errors.push(ValidationError {
            path: format!("events[{index}].event_type"),
            message,
        });
        return;
    };
    let mut require = |field: &str, present: bool| {
        if !present {
            errors.push(ValidationError {
                path: format!("events[{index}].data.{field}"),
                message: format!("Required event field \"{field}\" is missing or empty."),
            });
        }
    };
    let extra = &event.data_extra;
    match kind {
        event::Kind::CustomEvent(e) => {
            require("event_name", has_text(&e.event_name, extra, "event_name"));
            require(
                "custom_event_type",
                has_text(&e.custom_event_type, extra, "custom_event_type"),
            );
        }
        event::Kind::CommerceEvent(e) => {
            if let Some(action) = &e.product_action {
                require(
                    "product_action.action",
                    has_text(&action.action, &action.extra, "action"),
                );
            }
            if let Some(action) = &e.promotion_action {
                require(
                    "promotion_action.action",
                    has_text(&action.action, &action.extra, "action"),
                );
            }
        }
        event::Kind::PushRegistration(e) => {
            require(
                "register",
                e.register.is_some() || has_raw(extra, "register"),
            );
            require(
                "registration_token",
                has_text(&e.registration_token, extra, "registration_token"),
            );
        }
        event::Kind::ApplicationStateTransition(e) => require(
            "application_transition_type",
            has_text(
                &e.application_transition_type,
                extra,
                "application_transition_type",
            ),
        ),
        event::Kind::PushMessage(e) => require(
            "push_message_type",
            has_text(&e.push_message_type, extra, "push_message_type"),
        ),
        event::Kind::Breadcrumb(e) => require("label", has_text(&e.label, extra, "label")),
        _ => {}
    }
}

/// A non-empty string, or a non-null value of another JSON type kept in `extra` (mParticle's
/// schema takes any scalar where it says string).
fn has_text(field: &Option<String>, extra: &Extra, key: &str) -> bool {
    match field {
        Some(text) => !text.is_empty(),
        None => has_raw(extra, key),
    }
}

fn has_raw(extra: &Extra, key: &str) -> bool {
    extra
        .get(key)
        .is_some_and(|raw| raw != "null" && raw != "\"\"")
}

/// How old data must be for `/v2/bulkevents/historical`.
pub const HISTORICAL_MIN_AGE_MS: i64 = 72 * 60 * 60 * 1000;

/// The extra rules of `/v2/bulkevents/historical`: the batch has events, every event has
/// `timestamp_unixtime_ms`, and none is newer than 72 hours before `now_ms`.
pub fn validate_historical(batch: &Batch, now_ms: i64) -> Result<(), Vec<ValidationError>> {
    let mut errors = Vec::new();
    if batch.events.is_empty() {
        errors.push(ValidationError {
            path: "events".to_owned(),
            message: "Historical batches must contain at least one event.".to_owned(),
        });
    }
    for (i, event) in batch.events.iter().enumerate() {
        let path = format!("events[{i}].data.timestamp_unixtime_ms");
        match event.timestamp_unixtime_ms {
            None => errors.push(ValidationError {
                path,
                message: "Required event field \"timestamp_unixtime_ms\" is missing or empty \
                          (historical data must be timestamped)."
                    .to_owned(),
            }),
            Some(ts) if ts > now_ms - HISTORICAL_MIN_AGE_MS => errors.push(ValidationError {
                path,
                message: format!(
                    "Event timestamp {ts} is less than 72 hours old; send recent data to \
                     /v2/bulkevents instead."
                ),
            }),
            Some(_) => {}
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

impl Batch {
    /// Whether the environment is set to a value mParticle accepts.
    pub fn has_valid_environment(&self) -> bool {
        self.environment() != Environment::Unspecified
    }
}
