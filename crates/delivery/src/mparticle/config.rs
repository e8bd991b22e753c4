//! Settings of the mParticle Events API destination.

use std::time::Duration;

use runtime::SecretSource;
use runtime::config::{Problems, SecretConfig};

use super::request_builder::PackLimits;
use crate::config::{BuildContext, BuildError};
use crate::limit::LimitSettings;

/// mParticle's data pods, each with its own Events API host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pod {
    Us1,
    Us2,
    Eu1,
    Au1,
}

impl Pod {
    pub fn parse(name: &str) -> Option<Pod> {
        match name.to_ascii_lowercase().as_str() {
            "us1" => Some(Pod::Us1),
            "us2" => Some(Pod::Us2),
            "eu1" => Some(Pod::Eu1),
            "au1" => Some(Pod::Au1),
            _ => None,
        }
    }

    /// The Events API base URL (NOTES §1).
    pub fn base_url(self) -> &'static str {
        match self {
            Pod::Us1 => "https://s2s.us1.mparticle.com/v2",
            Pod::Us2 => "https://s2s.us2.mparticle.com/v2",
            Pod::Eu1 => "https://s2s.eu1.mparticle.com/v2",
            Pod::Au1 => "https://s2s.au1.mparticle.com/v2",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MparticleSettings {
    /// Up to and including `/v2`, e.g. a pod's `base_url()`, or a test server's.
    pub base_url: String,
    /// The workspace's server-to-server key and secret (HTTP Basic).
    pub api_key: SecretSource,
    pub api_secret: SecretSource,
    /// mParticle's size limits, which requests are packed within.
    pub packing: PackLimits,
    /// Concurrency and rate; the rate starts at mParticle's default of 270 batches/s.
    pub limit: LimitSettings,
    /// One request gets at most this long.
    pub request_timeout: Duration,
}

impl MparticleSettings {
    pub fn new(
        base_url: impl Into<String>,
        api_key: SecretSource,
        api_secret: SecretSource,
    ) -> Self {
        MparticleSettings {
            base_url: base_url.into(),
            api_key,
            api_secret,
            packing: PackLimits::default(),
            limit: LimitSettings {
                rate: Some(270.0),
                // A tenth of the default: slow, but never starved by a burst of 429s.
                min_rate: 27.0,
                ..LimitSettings::default()
            },
            request_timeout: crate::http::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// An `mparticle` destination as configured.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MparticleConfig {
    /// `us1`, `us2`, `eu1`, `au1`; or `base_url` instead.
    pub pod: Option<String>,
    /// The Events API up to `/v2` (a proxy, a test server).
    pub base_url: Option<String>,
    pub api_key: Option<SecretConfig>,
    pub api_secret: Option<SecretConfig>,
    /// Batches per second (mParticle's default is 270); 0 for none.
    pub rate_limit: Option<f64>,
    /// Requests in flight at most, and how long one may take.
    pub max_concurrency: Option<usize>,
    pub request_timeout_ms: Option<u64>,
}

impl MparticleConfig {
    pub fn problems(&self, at: &str, problems: &mut Problems) {
        match (&self.pod, &self.base_url) {
            (Some(pod), None) => {
                if Pod::parse(pod).is_none() {
                    problems.push(
                        format_args!("{at}.pod"),
                        format_args!("{pod:?} is not one of us1, us2, eu1, au1"),
                    );
                }
            }
            (None, Some(_)) => {}
            _ => problems.push(at, "give exactly one of pod or base_url"),
        }
        problems.required_secret(format_args!("{at}.api_key"), &self.api_key);
        problems.required_secret(format_args!("{at}.api_secret"), &self.api_secret);
    }

    pub fn settings(&self, context: &BuildContext) -> Result<MparticleSettings, BuildError> {
        let base = match (&self.pod, &self.base_url) {
            (Some(pod), _) => Pod::parse(pod)
                .ok_or(BuildError::Invalid("pod"))?
                .base_url()
                .to_owned(),
            (None, Some(url)) => url.clone(),
            (None, None) => return Err(BuildError::Missing("pod or base_url")),
        };
        let secret = |value: &Option<SecretConfig>, name| {
            value
                .as_ref()
                .map(|s| s.source(context.data_dir))
                .ok_or(BuildError::Missing(name))
        };
        let mut settings = MparticleSettings::new(
            base,
            secret(&self.api_key, "api_key")?,
            secret(&self.api_secret, "api_secret")?,
        );
        if let Some(rate) = self.rate_limit {
            settings.limit.rate = (rate > 0.0).then_some(rate);
        }
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
