//! Settings of the mParticle Events API destination.

use std::time::Duration;

use runtime::SecretSource;

use super::request_builder::Limits;
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
    pub limits: Limits,
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
            limits: Limits::default(),
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
