//! Spans for one batch's trip through the stages, exported over OTLP/gRPC when an endpoint is
//! configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the config file).
//!
//! Every stage opens its spans with [`pipeline_span!`](crate::pipeline_span) on one target, so
//! they cost next to nothing when tracing is off: no layer enables that target, and the W3C
//! context then passes through unchanged ([`context_of`] falls back to the incoming one).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TraceContext;

/// The `tracing` target of every pipeline span: the OTLP layer takes it, the log layer skips it.
pub const SPAN_TARGET: &str = "mpconnect::trace";

/// Opens a pipeline span: `pipeline_span!("name", field = value, ...)`. Disabled (free) when
/// no OTLP exporter is installed.
#[macro_export]
macro_rules! pipeline_span {
    ($name:expr $(, $($fields:tt)*)?) => {
        $crate::telemetry::tracing::info_span!(target: "mpconnect::trace", $name $(, $($fields)*)?)
    };
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// Where and as whom spans are exported.
#[derive(Debug, Clone, Default)]
pub struct TracingSettings {
    /// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
    pub service_name: String,
    /// The OTLP/gRPC endpoint from the config file; `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) wins.
    pub endpoint: Option<String>,
}

/// The `tracing` layer that turns pipeline spans into OTel spans.
pub type SpanLayer<S> = tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>;

/// The installed exporter; [`Tracing::shutdown`] sends what is buffered, within a bound.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the OTLP exporter and the layer that feeds it, or `None` when no endpoint is
    /// configured or `OTEL_SDK_DISABLED=true`. Must run inside the Tokio runtime.
    ///
    /// Spans go through a bounded batch queue to a background exporter: a collector that is
    /// down or slow costs dropped spans, never a stalled pipeline.
    pub fn install<S>(
        settings: &TracingSettings,
    ) -> Result<Option<(Tracing, SpanLayer<S>)>, TracingError>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let from_env = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some();
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        match (&settings.endpoint, from_env) {
            (_, true) => {}
            (Some(endpoint), false) => builder = builder.with_endpoint(endpoint.clone()),
            (None, false) => return Ok(None),
        }
        let exporter = builder
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| TracingError::Exporter(e.to_string()))?;
        // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the stage's name
        // applies only when neither names the service.
        let named_by_env = env("OTEL_SERVICE_NAME").is_some()
            || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| {
                attributes
                    .split(',')
                    .any(|pair| pair.trim_start().starts_with("service.name="))
            });
        let mut resource = Resource::builder();
        if !named_by_env {
            resource = resource.with_service_name(settings.service_name.clone());
        }
        let resource = resource.build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("mpconnect");
        let _ = TRACER.set(tracer.clone());
        opentelemetry::global::set_tracer_provider(provider.clone());
        ENABLED.store(true, Ordering::Relaxed);
        // No busy/idle timings: they cost a clock read and an extension update on every poll
        // of every instrumented future (1-2% of the samples traced under load), for attributes
        // no view uses.
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_level(false)
            .with_location(false)
            .with_target(false);
        Ok(Some((Tracing { provider }, layer)))
    }

    /// Exports what is buffered, waiting at most `within` (an absent collector must not hold
    /// up a shutdown).
    pub fn shutdown(self, within: Duration) {
        let provider = self.provider;
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = provider.shutdown_with_timeout(within);
            let _ = done.send(());
        });
        let _ = finished.recv_timeout(within + Duration::from_millis(200));
    }
}

/// Whether spans are being exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The OTel span context a W3C trace context names, as a remote parent.
fn remote(trace: &TraceContext) -> Option<SpanContext> {
    let mut parts = trace.traceparent.split('-');
    let (_version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = trace
        .tracestate
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let context = SpanContext::new(trace_id, span_id, TraceFlags::new(flags & 1), true, state);
    context.is_valid().then_some(context)
}

/// Makes `span` a child of `parent` (the caller's or the previous stage's span). A no-op when
/// tracing is off.
pub fn continue_from(span: &tracing::Span, parent: Option<&TraceContext>) {
    if !enabled() || span.is_disabled() {
        return;
    }
    if let Some(context) = parent.and_then(remote) {
        let _ = span.set_parent(Context::new().with_remote_span_context(context));
    }
}

/// Makes `span`, which serves many batches at once (a call, a request), a child of the first
/// batch's trace and links it to the others'. Each item is a batch's `traceparent` and
/// `tracestate` (empty when none). A no-op when tracing is off: nothing is parsed.
pub fn continue_from_many<'a>(
    span: &tracing::Span,
    batches: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    if !enabled() || span.is_disabled() {
        return;
    }
    let mut traces = batches
        .into_iter()
        .filter_map(|(parent, state)| TraceContext::continue_from(Some(parent), Some(state)));
    continue_from(span, traces.next().as_ref());
    for other in traces.filter_map(|t| remote(&t)) {
        span.add_link(other);
    }
}

/// The W3C context naming `span`, for the next hop; `None` when tracing is off.
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    if !enabled() || span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_ref = context.span();
    let span_context = span_ref.span_context();
    if !span_context.is_valid() {
        return None;
    }
    let state = span_context.trace_state().header();
    Some(TraceContext {
        traceparent: format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        ),
        tracestate: (!state.is_empty()).then_some(state),
    })
}

/// Records the time a message spent in a queue, from its send to its receive, as a child of
/// the span that sent it.
pub fn queue_wait(
    parent: &TraceContext,
    stage: &'static str,
    queue: &'static str,
    sent_at_ms: i64,
    message_id: &str,
    receive_count: u32,
) {
    if !enabled() {
        return;
    }
    let (Some(tracer), Some(parent)) = (TRACER.get(), remote(parent)) else {
        return;
    };
    let received = SystemTime::now();
    let sent = SystemTime::UNIX_EPOCH + Duration::from_millis(sent_at_ms.max(0) as u64);
    let parent = Context::new().with_remote_span_context(parent);
    let mut span = tracer
        .span_builder("queue wait")
        .with_kind(SpanKind::Consumer)
        .with_start_time(sent.min(received))
        .with_attributes([
            KeyValue::new("mpconnect.stage", stage),
            KeyValue::new("messaging.destination.name", queue),
            KeyValue::new("messaging.message.id", message_id.to_owned()),
            KeyValue::new("receive_count", i64::from(receive_count)),
        ])
        .start_with_context(tracer, &parent);
    opentelemetry::trace::Span::end_with_timestamp(&mut span, received);
}
