//! The `DeliveryService` gRPC server, the retry workers, and the stage's admin endpoints.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use runtime::telemetry::{self, TraceContext};
use schema::v1::delivery_service_server::{DeliveryService, DeliveryServiceServer};
use schema::v1::{DeliverRequest, DeliverResponse};
use tonic::{Request, Response, Status};

use crate::destination::{DeliverError, Destination, DestinationState};

/// Largest `DeliverRequest` accepted: 100 batches of up to a few MB each (S3-sourced batches
/// can be large before delivery splits them).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The delivery stage: every configured destination, behind one gRPC service.
#[derive(Clone)]
pub struct Delivery {
    destinations: Arc<HashMap<String, Arc<Destination>>>,
}

impl Delivery {
    pub fn new(destinations: Vec<Arc<Destination>>) -> Self {
        runtime::telemetry::metrics();
        Delivery {
            destinations: Arc::new(
                destinations
                    .into_iter()
                    .map(|d| (d.id().to_owned(), d))
                    .collect(),
            ),
        }
    }

    pub fn destination(&self, id: &str) -> Option<&Arc<Destination>> {
        self.destinations.get(id)
    }

    pub fn service(&self) -> DeliveryServiceServer<Delivery> {
        DeliveryServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Serves gRPC on `listener` and works every retry queue until `shutdown`; then stops
    /// taking calls, lets the calls in hand finish, stops the retry workers and flushes the
    /// drivers.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let (stop_workers, workers_stop) = tokio::sync::watch::channel(false);
        let workers: Vec<_> = self
            .destinations
            .values()
            .map(|d| tokio::spawn(d.clone().run_retries(workers_stop.clone())))
            .collect();
        let served = tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await;
        let _ = stop_workers.send(true);
        for worker in workers {
            let _ = worker.await;
        }
        for destination in self.destinations.values() {
            destination.flush().await;
        }
        served
    }

    /// Each destination's state, for readiness and `mpconnect` status output.
    pub fn states(&self) -> Vec<(String, DestinationState)> {
        let mut states: Vec<_> = self
            .destinations
            .values()
            .map(|d| (d.id().to_owned(), d.state()))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }

    /// `/healthz`, `/readyz` and `/metrics`. Readiness lists every destination's state; it
    /// fails only when every destination is suspended (no pod could deliver anything), so one
    /// destination with wrong credentials does not take the others out of service.
    pub fn admin_router(&self) -> Router {
        let delivery = self.clone();
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || {
                    let delivery = delivery.clone();
                    async move { delivery.readiness() }
                }),
            )
            .route("/metrics", get(|| async { telemetry::metrics_answer() }))
    }

    fn readiness(&self) -> axum::response::Response {
        let states = self.states();
        let suspended = states
            .iter()
            .filter(|(_, s)| matches!(s, DestinationState::Suspended { .. }))
            .count();
        let body: serde_json::Map<String, serde_json::Value> = states
            .iter()
            .map(|(id, state)| {
                let text = match state {
                    DestinationState::Healthy => "healthy".to_owned(),
                    DestinationState::BackingOff { for_ms, because } => {
                        format!("backing off for {for_ms} ms: {because}")
                    }
                    DestinationState::Suspended { because } => format!("suspended: {because}"),
                };
                (id.clone(), serde_json::Value::String(text))
            })
            .collect();
        let ready = states.is_empty() || suspended < states.len();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (
            status,
            [("content-type", "application/json")],
            serde_json::json!({ "ready": ready, "destinations": body }).to_string(),
        )
            .into_response()
    }
}

#[tonic::async_trait]
impl DeliveryService for Delivery {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let header = |name: &str| request.metadata().get(name).and_then(|v| v.to_str().ok());
        let caller = TraceContext::continue_from(
            header(runtime::envelope::header::TRACEPARENT),
            header(runtime::envelope::header::TRACESTATE),
        );
        let request = request.into_inner();
        let _span = runtime::pipeline_span!(
            runtime::envelope::DELIVER_RPC,
            Server,
            parent: caller.as_ref(),
            "mpconnect.stage" = "delivery",
            "rpc.system" = "grpc",
            "destination" = request.destination.clone(),
            "batches" = request.batches.len() as i64,
        );
        self.deliver_traced(request).await
    }
}

impl Delivery {
    async fn deliver_traced(
        &self,
        request: DeliverRequest,
    ) -> Result<Response<DeliverResponse>, Status> {
        let Some(destination) = self.destinations.get(&request.destination) else {
            return Err(Status::not_found(format!(
                "no destination {:?} is configured",
                request.destination
            )));
        };
        if request.batches.iter().any(|b| b.batch.is_none()) {
            return Err(Status::invalid_argument("a routed batch without its batch"));
        }
        match destination.deliver(request.batches).await {
            Ok(outcomes) => Ok(Response::new(DeliverResponse { outcomes })),
            Err(e @ (DeliverError::Park(_) | DeliverError::DeadLetter(_))) => {
                tracing::warn!(destination = destination.id(), error = %e, "cannot keep batches safe; the caller will retry");
                Err(Status::unavailable(e.to_string()))
            }
        }
    }
}
