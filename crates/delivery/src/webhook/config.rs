//! Settings of the webhook destination.

use std::time::Duration;

use runtime::SecretSource;

use crate::limit::LimitSettings;

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    /// Sent verbatim as `Authorization` (e.g. `Bearer …`, `Basic …`), as mParticle's own
    /// webhook output does.
    pub authorization: Option<SecretSource>,
    pub limit: LimitSettings,
    pub request_timeout: Duration,
}

impl WebhookSettings {
    pub fn new(url: impl Into<String>) -> Self {
        WebhookSettings {
            url: url.into(),
            authorization: None,
            limit: LimitSettings::default(),
            request_timeout: crate::http::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}
