//! Spans for one batch's trip through the stages, exported over OTLP/gRPC when an endpoint is
//! configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the config file).
//!
//! Every stage opens its spans with [`pipeline_span!`](crate::pipeline_span), straight on the
//! OpenTelemetry SDK: when tracing is off it is a `None` and nothing else happens, and the W3C
//! context passes through unchanged ([`PipelineSpan::context`] is `None`, so callers carry the
//! incoming one on). Not through `tracing` and a bridge layer: at full speed that cost a third
//! of what tracing costs (a registry slot, field visitors, the context looked up by downcast),
//! for spans that have no use in logs.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfig, BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};

use super::TraceContext;
use super::export::OtlpExporter;

/// Opens a pipeline span:
/// `pipeline_span!("name", Server, parent: Option<&TraceContext>, "key" = value, ...)`, or
/// `linked: (traceparent, tracestate) pairs` for a span that serves many batches (a child of
/// the first one's trace, linked to the others'). Values are built only when the span is
/// recorded: nothing is evaluated when tracing is off or the trace is not sampled.
#[macro_export]
macro_rules! pipeline_span {
    ($name:expr, $kind:ident, parent: $parent:expr $(, $key:literal = $value:expr)* $(,)?) => {
        $crate::telemetry::PipelineSpan::start(
            $name,
            $crate::telemetry::SpanKind::$kind,
            $parent,
            || [$($crate::telemetry::KeyValue::new($key, $value)),*],
        )
    };
    ($name:expr, $kind:ident, linked: $parents:expr $(, $key:literal = $value:expr)* $(,)?) => {
        $crate::telemetry::PipelineSpan::start_linked(
            $name,
            $crate::telemetry::SpanKind::$kind,
            $parents,
            || [$($crate::telemetry::KeyValue::new($key, $value)),*],
        )
    };
}

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

/// The installed exporter; [`Tracing::shutdown`] sends what is buffered, within a bound.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the OTLP exporter that pipeline spans go to, or `None` when no endpoint is
    /// configured or `OTEL_SDK_DISABLED=true`. Must run inside the Tokio runtime.
    ///
    /// Spans go through a bounded batch queue to a background exporter: a collector that is
    /// down or slow costs dropped spans, never a stalled pipeline.
    pub fn install(settings: &TracingSettings) -> Result<Option<Tracing>, TracingError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let Some(endpoint) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .or_else(|| settings.endpoint.clone())
        else {
            return Ok(None);
        };
        let exporter = OtlpExporter::new(endpoint.trim(), env)?;
        // The SDK reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the stage's name
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
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch_config(env))
                    .build(),
            )
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("mpconnect");
        let _ = TRACER.set(tracer);
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(Some(Tracing { provider }))
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

/// Spans queued for export, and the most in one export, unless `OTEL_BSP_MAX_QUEUE_SIZE` and
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` say otherwise. The processor exports one batch at a time,
/// so a round trip bounds its rate: with the SDK's 2,048 and 512, at full speed (~100,000 spans
/// a second) it exported half the spans and dropped the rest, leaving traces in pieces. Four
/// times both, every batch's trace arrived whole; the queue holds at most ~8 MB.
const SPAN_QUEUE: usize = 8_192;
const SPANS_PER_EXPORT: usize = 2_048;

fn batch_config(env: impl Fn(&str) -> Option<String>) -> BatchConfig {
    let mut config = BatchConfigBuilder::default();
    if env("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        config = config.with_max_queue_size(SPAN_QUEUE);
    }
    if env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
        config = config.with_max_export_batch_size(SPANS_PER_EXPORT);
    }
    config.build()
}

/// Whether spans are being exported.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// A strict W3C `traceparent` of version 00: its ids (non-zero) and flags.
pub(super) fn parse_traceparent(traceparent: &str) -> Option<(TraceId, SpanId, u8)> {
    let bytes = traceparent.as_bytes();
    let hex = |range: std::ops::Range<usize>| {
        bytes[range.clone()]
            .iter()
            .all(u8::is_ascii_hexdigit)
            .then(|| &traceparent[range])
    };
    if bytes.len() != 55 || !bytes.starts_with(b"00-") || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let trace_id = u128::from_str_radix(hex(3..35)?, 16).ok()?;
    let span_id = u64::from_str_radix(hex(36..52)?, 16).ok()?;
    let flags = u8::from_str_radix(hex(53..55)?, 16).ok()?;
    (trace_id != 0 && span_id != 0).then(|| {
        (
            TraceId::from_bytes(trace_id.to_be_bytes()),
            SpanId::from_bytes(span_id.to_be_bytes()),
            flags,
        )
    })
}

/// The OTel span context a W3C trace context names, as a remote parent.
fn remote(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let (trace_id, span_id, flags) = parse_traceparent(traceparent)?;
    let state = super::usable_tracestate(tracestate)
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        state,
    ))
}

/// One pipeline span: exported when it is dropped. Holds nothing when tracing is off; holds
/// only its context (so its trace carries on, unsampled) when its trace is not sampled.
#[derive(Debug)]
pub struct PipelineSpan(Option<opentelemetry_sdk::trace::Span>);

impl PipelineSpan {
    /// No span: its callers carry the incoming context on.
    pub fn none() -> Self {
        Self(None)
    }

    /// Starts span `name` as a child of `parent`, or a new trace without one. `attributes`
    /// runs only if the span is recorded.
    pub fn start<A>(
        name: &'static str,
        kind: SpanKind,
        parent: Option<&TraceContext>,
        attributes: impl FnOnce() -> A,
    ) -> Self
    where
        A: IntoIterator<Item = KeyValue>,
    {
        let parent = parent.map(|p| {
            let state = p.tracestate.as_deref().unwrap_or_default();
            (p.traceparent.as_str(), state)
        });
        Self::start_linked(name, kind, parent, attributes)
    }

    /// Starts span `name`, which serves many batches at once (a call, a request): a child of
    /// the first batch's trace, linked to the others'. Each item is a batch's `traceparent`
    /// and `tracestate` (empty when none); nothing is parsed when tracing is off. Without a
    /// valid one, it starts a new trace.
    pub fn start_linked<'a, A>(
        name: &'static str,
        kind: SpanKind,
        parents: impl IntoIterator<Item = (&'a str, &'a str)>,
        attributes: impl FnOnce() -> A,
    ) -> Self
    where
        A: IntoIterator<Item = KeyValue>,
    {
        let Some(tracer) = TRACER.get() else {
            return Self(None);
        };
        let mut parents = parents
            .into_iter()
            .filter_map(|(parent, state)| remote(parent, Some(state)));
        let context = match parents.next() {
            Some(parent) => Context::new().with_remote_span_context(parent),
            None => Context::new(),
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(tracer, &context);
        let mut span = Self(Some(span));
        if let Some(recorded) = span.recorded() {
            recorded.set_attributes(attributes());
            for other in parents {
                recorded.add_link(other, Vec::new());
            }
        }
        span
    }

    /// The SDK span, if it is being recorded (sampled, not ended).
    fn recorded(&mut self) -> Option<&mut opentelemetry_sdk::trace::Span> {
        self.0.as_mut().filter(|span| span.is_recording())
    }

    /// Sets attribute `key` (known only once the work is done: an outcome, a status).
    pub fn record(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(span) = self.recorded() {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// The W3C context naming this span, for the next hop; `None` when tracing is off.
    pub fn context(&self) -> Option<TraceContext> {
        let context = self.0.as_ref()?.span_context();
        if !context.is_valid() {
            return None;
        }
        let state = context.trace_state().header();
        Some(TraceContext {
            traceparent: traceparent_of(context),
            tracestate: (!state.is_empty()).then_some(state),
        })
    }
}

/// `00-{trace id}-{span id}-{flags}`, in lower-case hex.
fn traceparent_of(context: &SpanContext) -> String {
    fn push_hex(out: &mut String, bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for byte in bytes {
            out.push(DIGITS[usize::from(byte >> 4)] as char);
            out.push(DIGITS[usize::from(byte & 0xf)] as char);
        }
    }
    let mut traceparent = String::with_capacity(55);
    traceparent.push_str("00-");
    push_hex(&mut traceparent, &context.trace_id().to_bytes());
    traceparent.push('-');
    push_hex(&mut traceparent, &context.span_id().to_bytes());
    traceparent.push('-');
    push_hex(&mut traceparent, &[context.trace_flags().to_u8()]);
    traceparent
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
    let (Some(tracer), Some(parent)) = (
        TRACER.get(),
        remote(&parent.traceparent, parent.tracestate.as_deref()),
    ) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn reads_only_strict_version_00_traceparents() {
        let (trace_id, span_id, flags) = parse_traceparent(VALID).expect("valid");
        assert_eq!(trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span_id.to_string(), "b7ad6b7169203331");
        assert_eq!(flags, 1);
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            // from_str_radix alone would take a sign, or fewer digits.
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-+7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-+1",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            "00-xyz7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-é",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} was read");
        }
    }

    #[test]
    fn writes_the_traceparent_it_reads() {
        let (trace_id, span_id, flags) = parse_traceparent(VALID).expect("valid");
        for flags in [flags, 0] {
            let context = SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::new(flags),
                false,
                TraceState::default(),
            );
            let written = traceparent_of(&context);
            assert_eq!(written, format!("{}-0{flags}", &VALID[..52]));
            assert_eq!(
                parse_traceparent(&written),
                Some((trace_id, span_id, flags))
            );
        }
    }

    #[test]
    fn a_remote_parent_keeps_its_vendor_state_and_sampling() {
        let parent = remote(VALID, Some("vendor=1,other=2")).expect("valid");
        assert!(parent.is_remote() && parent.is_sampled());
        assert_eq!(parent.trace_state().header(), "vendor=1,other=2");
        let unsampled = VALID.replace("-01", "-00");
        assert!(!remote(&unsampled, Some("")).expect("valid").is_sampled());
        // A state over W3C's 512 characters is dropped, as `TraceContext` drops it, whether
        // the span is given the raw pair or a `TraceContext`.
        let long = (0..30)
            .map(|i| format!("k{i:02}={}", "v".repeat(16)))
            .collect::<Vec<_>>()
            .join(",");
        assert!(long.len() > 512 && long.parse::<TraceState>().is_ok());
        assert_eq!(
            remote(VALID, Some(&long))
                .expect("valid")
                .trace_state()
                .header(),
            ""
        );
        let through = TraceContext::continue_from(Some(VALID), Some(&long)).expect("valid");
        assert_eq!(through.tracestate, None);
    }

    #[test]
    fn no_span_when_tracing_is_off() {
        // No exporter is installed in unit tests: nothing is built, and callers carry the
        // incoming context on.
        let parent = TraceContext::continue_from(Some(VALID), None);
        let mut built = false;
        let mut span = PipelineSpan::start("test", SpanKind::Internal, parent.as_ref(), || {
            built = true;
            [KeyValue::new("key", "value")]
        });
        span.record("outcome", "done");
        assert!(!built, "attributes built with tracing off");
        assert_eq!(span.context(), None);
        assert_eq!(PipelineSpan::none().context(), None);
    }
}
