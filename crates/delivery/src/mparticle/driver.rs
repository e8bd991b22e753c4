//! Sends packed requests and turns mParticle's answers into per-batch [`Answer`]s.

use std::collections::BTreeSet;
use std::time::Instant;

use base64::Engine as _;
use futures_util::future::join_all;
use reqwest::header::HeaderValue;
use schema::v1::{Batch, RoutedBatch};

use super::config::MparticleSettings;
use super::request_builder::{Request, pack};
use crate::driver::{Answer, BoxFuture, Driver};
use crate::http::{self, Poster};

pub struct MparticleDriver {
    settings: MparticleSettings,
    /// Sends with `Authorization: Basic …`.
    poster: Poster,
    bulk_url: String,
    historical_url: String,
}

impl MparticleDriver {
    pub fn new(destination: &str, settings: MparticleSettings) -> Result<Self, reqwest::Error> {
        let base = settings.base_url.trim_end_matches('/');
        let driver = MparticleDriver {
            bulk_url: format!("{base}/bulkevents"),
            historical_url: format!("{base}/bulkevents/historical"),
            poster: Poster::new(
                destination,
                "mParticle",
                settings.request_timeout,
                settings.limit.clone(),
            )?,
            settings,
        };
        driver.reload_credentials();
        Ok(driver)
    }

    fn load_authorization(&self) -> Result<HeaderValue, String> {
        let key = self.settings.api_key.load().map_err(|e| e.to_string())?;
        let secret = self.settings.api_secret.load().map_err(|e| e.to_string())?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            key.expose(),
            secret.expose()
        ));
        http::sensitive(&format!("Basic {token}"))
    }

    /// Sends one request; on a 400 for several batches, halves it until the refused batches
    /// stand alone, so exactly those are dead-lettered.
    fn post_isolating<'a>(
        &'a self,
        url: &'a str,
        request: Request<usize>,
        batches: &'a [RoutedBatch],
        deadline: Instant,
    ) -> BoxFuture<'a, Vec<(usize, Answer)>> {
        Box::pin(async move {
            let traces: Vec<&str> = request
                .parts
                .iter()
                .map(|p| batches[p.key].traceparent.as_str())
                .collect();
            let answer = self
                .poster
                .post_json(url, request.body, &traces, deadline)
                .await;
            let keys: BTreeSet<usize> = request.parts.iter().map(|p| p.key).collect();
            if !matches!(answer, Answer::Reject { .. }) || keys.len() < 2 {
                return request
                    .parts
                    .iter()
                    .map(|p| (p.key, answer.clone()))
                    .collect();
            }
            let keys: Vec<usize> = keys.into_iter().collect();
            let (left, right) = keys.split_at(keys.len() / 2);
            let mut answers = Vec::new();
            for half in [left, right] {
                let (requests, refused) = pack(
                    half.iter()
                        .filter_map(|&i| batches[i].batch.as_ref().map(|b| (i, b))),
                    self.settings.packing,
                );
                answers.extend(
                    refused
                        .into_iter()
                        .map(|(i, e)| (i, Answer::reject(e.to_string()))),
                );
                for r in requests {
                    answers.extend(self.post_isolating(url, r, batches, deadline).await);
                }
            }
            answers
        })
    }
}

impl Driver for MparticleDriver {
    fn kind(&self) -> &'static str {
        "mparticle"
    }

    fn send<'a>(
        &'a self,
        batches: &'a [RoutedBatch],
        deadline: Instant,
    ) -> BoxFuture<'a, Vec<Answer>> {
        Box::pin(async move {
            let mut answers = vec![Answer::Delivered; batches.len()];
            let mut posts = Vec::new();
            for (url, wants_historical) in [(&self.bulk_url, false), (&self.historical_url, true)] {
                let group = batches.iter().enumerate().filter_map(|(i, b)| {
                    let batch: &Batch = b.batch.as_ref()?;
                    (b.historical == wants_historical).then_some((i, batch))
                });
                let (requests, refused) = pack(group, self.settings.packing);
                for (i, e) in refused {
                    answers[i] = Answer::reject(e.to_string());
                }
                posts.extend(
                    requests
                        .into_iter()
                        .map(|r| self.post_isolating(url, r, batches, deadline)),
                );
            }
            for (i, b) in batches.iter().enumerate() {
                if b.batch.is_none() {
                    answers[i] = Answer::reject("no batch");
                }
            }
            for results in join_all(posts).await {
                for (i, answer) in results {
                    let current = std::mem::replace(&mut answers[i], Answer::Delivered);
                    answers[i] = current.worst(answer);
                }
            }
            answers
        })
    }

    /// The Events API takes the sender's inbound-dialect JSON as it came.
    fn takes_pass_through(&self) -> bool {
        true
    }

    fn reload_credentials(&self) {
        self.poster
            .set_authorization(self.load_authorization().map(Some));
    }
}
