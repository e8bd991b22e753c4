//! Settings of the webhook destination.

use std::time::Duration;

use runtime::SecretSource;
use runtime::config::{Problems, SecretConfig};

use crate::config::{BuildContext, BuildError};
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

/// A `webhook` destination as configured.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: Option<String>,
    /// Sent verbatim as `Authorization`.
    pub authorization: Option<SecretConfig>,
    pub max_concurrency: Option<usize>,
    pub request_timeout_ms: Option<u64>,
}

impl WebhookConfig {
    pub fn problems(&self, at: &str, problems: &mut Problems) {
        if self.url.is_none() {
            problems.push(format_args!("{at}.url"), "required for a webhook");
        }
        if let Some(authorization) = &self.authorization {
            problems.secret(format_args!("{at}.authorization"), authorization);
        }
    }

    pub fn settings(&self, context: &BuildContext) -> Result<WebhookSettings, BuildError> {
        let mut settings =
            WebhookSettings::new(self.url.clone().ok_or(BuildError::Missing("url"))?);
        settings.authorization = self
            .authorization
            .as_ref()
            .map(|a| a.source(context.data_dir));
        settings.limit.peers = context.peers.clone();
        crate::http::apply_config(
            self.max_concurrency,
            self.request_timeout_ms,
            &mut settings.limit,
            &mut settings.request_timeout,
        );
        Ok(settings)
    }
}
