//! An OTLP/gRPC trace receiver that counts spans and keeps nothing: where the benchmark sends
//! mpconnect's traces to measure what tracing costs.
//!
//! It stands for a collector on another machine, so it costs the machine under test as
//! little as it can: an export is read only as far as its spans, each left unparsed bytes.
//! (Decoding every span in full took a tenth of the benchmark process's CPU.)

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{NamedService, UnaryService};

#[derive(Default)]
pub struct OtlpSink {
    pub spans: AtomicU64,
}

/// `ExportTraceServiceRequest`, read to its spans and no further.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<bytes::Bytes>,
}

/// `ExportTraceServiceResponse` without a partial success: everything taken.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportResponse {}

/// The trace service on a shared sink.
#[derive(Clone)]
struct Counting(Arc<OtlpSink>);

impl NamedService for Counting {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl UnaryService<ExportRequest> for Counting {
    type Response = ExportResponse;
    type Future = std::future::Ready<Result<tonic::Response<ExportResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<ExportRequest>) -> Self::Future {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        std::future::ready(Ok(tonic::Response::new(ExportResponse {})))
    }
}

impl<B> Service<http::Request<B>> for Counting
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            if request.uri().path() != "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            {
                return Ok(tonic::Status::unimplemented("only Export").into_http());
            }
            let codec = tonic_prost::ProstCodec::<ExportResponse, ExportRequest>::default();
            Ok(tonic::server::Grpc::new(codec)
                .unary(service, request)
                .await)
        })
    }
}

/// Serves the sink on a free loopback port; returns its `http://` endpoint.
pub async fn start(sink: Arc<OtlpSink>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Counting(sink))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Ok(format!("http://{addr}"))
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::WithExportConfig as _;

    use super::*;

    /// The SDK's own OTLP exporter, against the sink: every span counted, none parsed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_what_the_otlp_exporter_sends() {
        let sink = Arc::new(OtlpSink::default());
        let endpoint = start(sink.clone()).await.expect("sink");
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .expect("exporter");
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .build();
        let tracer = provider.tracer("test");
        for i in 0..1_234 {
            tracer.in_span(format!("span {i}"), |_| {});
        }
        // The batch processor exports from its own thread and blocks until it is done.
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .expect("shutdown")
            .expect("exported");
        assert_eq!(sink.spans.load(Ordering::Relaxed), 1_234);
    }
}
