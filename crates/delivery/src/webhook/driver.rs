//! Posts each batch and sorts the answers.

use std::time::Instant;

use futures_util::future::join_all;
use schema::v1::RoutedBatch;

use super::config::WebhookSettings;
use crate::driver::{Answer, BoxFuture, Driver};
use crate::http::{self, Poster};

pub struct WebhookDriver {
    settings: WebhookSettings,
    poster: Poster,
}

impl WebhookDriver {
    pub fn new(destination: &str, settings: WebhookSettings) -> Result<Self, reqwest::Error> {
        let driver = WebhookDriver {
            poster: Poster::new(
                destination,
                "the webhook",
                settings.request_timeout,
                settings.limit.clone(),
            )?,
            settings,
        };
        driver.reload_credentials();
        Ok(driver)
    }

    async fn post(&self, batch: &RoutedBatch, deadline: Instant) -> Answer {
        let Some(inner) = &batch.batch else {
            return Answer::reject("no batch");
        };
        let body = schema::encode_batch(inner, schema::Dialect::Outbound);
        self.poster
            .post_json(
                &self.settings.url,
                body.into(),
                &[&batch.traceparent],
                deadline,
            )
            .await
    }
}

impl Driver for WebhookDriver {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(
        &'a self,
        batches: &'a [RoutedBatch],
        deadline: Instant,
    ) -> BoxFuture<'a, Vec<Answer>> {
        Box::pin(join_all(batches.iter().map(|b| self.post(b, deadline))))
    }

    fn reload_credentials(&self) {
        let loaded = match &self.settings.authorization {
            None => Ok(None),
            Some(source) => source
                .load()
                .map_err(|e| e.to_string())
                .and_then(|secret| http::sensitive(secret.expose()).map(Some)),
        };
        self.poster.set_authorization(loaded);
    }
}
