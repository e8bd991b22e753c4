//! Posts each batch and sorts the answers.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use schema::v1::RoutedBatch;

use super::config::WebhookSettings;
use crate::driver::{Answer, BoxFuture, Driver};
use crate::http::{self, Credential};
use crate::limit::Limiter;

pub struct WebhookDriver {
    destination: String,
    settings: WebhookSettings,
    client: reqwest::Client,
    authorization: Credential,
    limiter: Arc<Limiter>,
}

impl WebhookDriver {
    pub fn new(destination: &str, settings: WebhookSettings) -> Result<Self, reqwest::Error> {
        let driver = WebhookDriver {
            destination: destination.to_owned(),
            client: http::client(settings.request_timeout, settings.limit.max_concurrency)?,
            limiter: Limiter::new(destination, settings.limit.clone()),
            settings,
            authorization: Credential::new(Ok(None)),
        };
        driver.reload_credentials();
        Ok(driver)
    }

    async fn post(&self, batch: &RoutedBatch, deadline: Instant) -> Answer {
        let Some(inner) = &batch.batch else {
            return Answer::Reject {
                detail: "no batch".into(),
                status: None,
            };
        };
        let body = schema::encode_batch(inner, schema::Dialect::Outbound);
        let permit = match http::permit(&self.limiter, 1, deadline, "the webhook").await {
            Ok(permit) => permit,
            Err(answer) => return answer,
        };
        let authorization = match http::current(&self.authorization) {
            Ok(value) => value,
            Err(answer) => return answer,
        };
        let mut request = self
            .client
            .post(&self.settings.url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        if !batch.traceparent.is_empty() {
            request = request.header("traceparent", batch.traceparent.as_str());
        }
        http::send(
            request,
            permit,
            &self.limiter,
            &self.destination,
            "the webhook",
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
        http::store(&self.authorization, loaded, &self.destination);
    }
}
