//! The delivery client: gRPC over a channel balanced across every delivery pod.
//!
//! A plain ClusterIP Service pins each HTTP/2 connection to one pod. So delivery has a
//! headless Service, and this client resolves its name itself, every few seconds, keeps a
//! connection to each address, and spreads calls over them (power of two choices), following
//! pods as they come and go.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use schema::v1::delivery_service_client::DeliveryServiceClient;
use schema::v1::delivery_service_server::DeliveryService;
use schema::v1::{BatchOutcome, DeliverRequest, RoutedBatch};
use tonic::Code;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::transport::channel::Change;

#[derive(Debug, thiserror::Error)]
#[error("the delivery endpoint {0:?} is not host:port")]
pub struct EndpointError(String);

/// Finds delivery's addresses now.
pub type Resolve = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// How long the transform waits for delivery's answer to one call: longer than any
/// destination's attempt may take (configuration checks that), so an answer is never given up
/// on while it may still come.
pub const DELIVER_DEADLINE: Duration = Duration::from_secs(60);

/// Resolves `host:port` through the system's resolver (a headless Service's DNS name gives
/// one address per ready pod).
pub fn dns(host: &str, port: u16) -> Resolve {
    let target = format!("{host}:{port}");
    Arc::new(move || {
        let target = target.clone();
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    })
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Retrying later may succeed (delivery down, overloaded, too slow).
    #[error("delivery unavailable: {0}")]
    Temporary(String),
    /// Retrying will not help (an unknown destination, a refused request).
    #[error("delivery refused: {0}")]
    Permanent(String),
}

#[derive(Clone)]
pub struct DeliveryClient {
    transport: Transport,
    deadline: Duration,
}

#[derive(Clone)]
enum Transport {
    /// Delivery in other processes: gRPC, balanced over every pod.
    Grpc(DeliveryServiceClient<Channel>),
    /// Delivery in this process (`mpconnect all`): the same service, called directly, so the
    /// batches are neither encoded nor decoded on the way.
    InProcess(Arc<dyn DeliveryService>),
}

impl DeliveryClient {
    /// A client balanced over what `resolve` finds, re-resolved every `every`. Must be made
    /// inside a Tokio runtime; the resolving task ends when the last clone is dropped.
    /// A balanced client for delivery at `endpoint` (`host:port`, `[v6]:port`), resolved
    /// again every `every`.
    pub fn for_endpoint(
        endpoint: &str,
        every: Duration,
        deadline: Duration,
    ) -> Result<Self, EndpointError> {
        let (host, port) = endpoint
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or_else(|| EndpointError(endpoint.to_owned()))?;
        Ok(Self::balanced(dns(host, port), every, deadline))
    }

    pub fn balanced(resolve: Resolve, every: Duration, deadline: Duration) -> Self {
        let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
        tokio::spawn(async move {
            let mut current: HashSet<SocketAddr> = HashSet::new();
            loop {
                match resolve().await {
                    Ok(found) => {
                        let found: HashSet<SocketAddr> = found.into_iter().collect();
                        for gone in current.difference(&found) {
                            if changes.send(Change::Remove(*gone)).await.is_err() {
                                return;
                            }
                        }
                        for new in found.difference(&current) {
                            let Ok(endpoint) = Endpoint::from_shared(format!("http://{new}"))
                            else {
                                continue;
                            };
                            let endpoint = endpoint
                                .connect_timeout(Duration::from_secs(2))
                                .tcp_nodelay(true)
                                .http2_keep_alive_interval(Duration::from_secs(20));
                            if changes.send(Change::Insert(*new, endpoint)).await.is_err() {
                                return;
                            }
                        }
                        if found != current {
                            tracing::info!(endpoints = found.len(), "delivery endpoints changed");
                        }
                        current = found;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot resolve delivery; keeping the endpoints known")
                    }
                }
                tokio::time::sleep(every).await;
                if changes.is_closed() {
                    return;
                }
            }
        });
        DeliveryClient {
            transport: Transport::Grpc(DeliveryServiceClient::new(channel)),
            deadline,
        }
    }

    /// A client of the `DeliveryService` implementation in this process: the same calls,
    /// deadlines and answers as over gRPC, without the encoding and the loopback hop.
    pub fn in_process(service: Arc<dyn DeliveryService>, deadline: Duration) -> Self {
        DeliveryClient {
            transport: Transport::InProcess(service),
            deadline,
        }
    }

    /// Sends one destination's batches; returns one outcome per batch key.
    pub async fn deliver(
        &self,
        destination: &str,
        batches: Vec<RoutedBatch>,
    ) -> Result<Vec<BatchOutcome>, DeliveryError> {
        // The call carries many batches, each in its own trace (in its `traceparent` field):
        // the call is a span in the first one's, linked to the others', and its context rides
        // in the call's metadata.
        let span = runtime::pipeline_span!(
            runtime::envelope::DELIVER_RPC,
            Client,
            linked: batches
                .iter()
                .map(|b| (b.traceparent.as_str(), b.tracestate.as_str())),
            "mpconnect.stage" = "transform",
            "rpc.system" = "grpc",
            "destination" = destination.to_owned(),
            "batches" = batches.len() as i64,
        );
        let mut request = tonic::Request::new(DeliverRequest {
            destination: destination.to_owned(),
            batches,
        });
        request.set_timeout(self.deadline);
        if let Some(context) = span.context() {
            let metadata = request.metadata_mut();
            if let Ok(value) = context.traceparent.parse() {
                metadata.insert(runtime::envelope::header::TRACEPARENT, value);
            }
            if let Some(Ok(value)) = context.tracestate.map(|s| s.parse()) {
                metadata.insert(runtime::envelope::header::TRACESTATE, value);
            }
        }
        let call = async {
            match &self.transport {
                Transport::Grpc(client) => client.clone().deliver(request).await,
                Transport::InProcess(service) => service.deliver(request).await,
            }
        };
        match tokio::time::timeout(self.deadline, call).await {
            Ok(Ok(response)) => Ok(response.into_inner().outcomes),
            Ok(Err(status)) => Err(match status.code() {
                Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::PermissionDenied
                | Code::Unimplemented => {
                    DeliveryError::Permanent(format!("{}: {}", status.code(), status.message()))
                }
                _ => DeliveryError::Temporary(format!("{}: {}", status.code(), status.message())),
            }),
            Err(_) => Err(DeliveryError::Temporary(format!(
                "no answer within {:?}",
                self.deadline
            ))),
        }
    }
}
