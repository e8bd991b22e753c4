//! Metrics (Prometheus text on each stage's `/metrics`) and W3C trace context, which travels
//! with every batch: HTTP headers in, queue attributes, gRPC metadata, headers out.

mod export;
mod otlp_proto;
mod process;
mod trace;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use process::resident_bytes;
pub use trace::{
    KeyValue, PipelineSpan, SpanKind, Tracing, TracingError, TracingSettings, enabled, queue_wait,
};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Seconds: from a fast local hop to a destination timing out.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the process-wide Prometheus recorder once, and returns its handle.
pub fn metrics() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        // Buckets, so latencies are histograms a dashboard can aggregate across pods (the
        // exporter's default is a per-process summary).
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        spawn_upkeep(handle.clone(), UPKEEP_EVERY);
        // Another recorder installed first (a test harness): keep rendering ours, empty.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// How often recorded latencies are folded into their histograms' buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds the recorder's histogram samples into their buckets every `every`. The recorder
/// keeps each latency recorded (16 bytes and more) until that is done, and without this only a
/// scrape of `/metrics` did it: a process nobody scraped grew for as long as it ran (~0.1 MB a
/// second at the benchmark's load, peak RSS 152 MB after 150 s).
pub fn spawn_upkeep(handle: PrometheusHandle, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; latencies are kept until /metrics is scraped");
    }
}

/// The `Content-Type` of [`render_metrics`]: Prometheus's text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A `/metrics` answer as headers and body, a pair every stage's HTTP server can answer with.
pub fn metrics_answer() -> ([(&'static str, &'static str); 1], String) {
    ([("content-type", METRICS_CONTENT_TYPE)], render_metrics())
}

/// The `/metrics` body: the stage's own families, then the process's CPU and memory.
pub fn render_metrics() -> String {
    let mut body = metrics().render();
    process::render(&mut body);
    body
}

/// A W3C trace context (`traceparent`, and `tracestate` when there is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Accepts a `traceparent` of version 00 with non-zero ids; anything else starts a new trace.
    pub fn continue_or_start(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        Self::continue_from(traceparent, tracestate).unwrap_or_else(Self::start)
    }

    /// The caller's trace, if it sent a valid `traceparent` of version 00 with non-zero ids.
    pub fn continue_from(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = traceparent.filter(|t| is_valid_traceparent(t))?;
        Some(TraceContext {
            traceparent: traceparent.to_ascii_lowercase(),
            tracestate: usable_tracestate(tracestate).map(str::to_owned),
        })
    }

    /// A new sampled trace.
    pub fn start() -> Self {
        let trace: u128 = rand::random::<u128>().max(1);
        let span: u64 = rand::random::<u64>().max(1);
        TraceContext {
            traceparent: new_traceparent(trace, span),
            tracestate: None,
        }
    }

    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }
}

/// `00-{trace:032x}-{span:016x}-01`, written digit by digit: every batch starts a trace, and
/// `format!`'s machinery cost several times the writing (0.7% of `mpconnect all`'s CPU).
fn new_traceparent(trace: u128, span: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    for (id, digits) in [(trace, 32), (u128::from(span), 16)] {
        for shift in (0..digits).rev() {
            out.push(char::from(HEX[((id >> (shift * 4)) & 0xf) as usize]));
        }
        out.push('-');
    }
    out.push_str("01");
    out
}

/// A `tracestate` worth carrying on: not empty, and within W3C's 512 characters (a longer one
/// is dropped whole rather than cut mid-entry).
fn usable_tracestate(tracestate: Option<&str>) -> Option<&str> {
    tracestate.filter(|s| !s.is_empty() && s.len() <= 512)
}

fn is_valid_traceparent(t: &str) -> bool {
    trace::parse_traceparent(t).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_traceparent_is_what_format_writes() {
        for (trace, span) in [
            (1u128, 1u64),
            (u128::MAX, u64::MAX),
            (0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331),
            (rand::random::<u128>(), rand::random::<u64>()),
        ] {
            assert_eq!(
                new_traceparent(trace, span),
                format!("00-{trace:032x}-{span:016x}-01")
            );
        }
        assert!(is_valid_traceparent(&TraceContext::start().traceparent));
    }

    #[test]
    fn continues_valid_and_replaces_invalid_parents() {
        let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let t = TraceContext::continue_or_start(Some(valid), Some("vendor=1"));
        assert_eq!(t.traceparent, valid);
        assert_eq!(t.tracestate.as_deref(), Some("vendor=1"));
        assert_eq!(t.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-xyz-b7ad6b7169203331-01",
        ] {
            let t = TraceContext::continue_or_start(Some(bad), None);
            assert_ne!(t.traceparent, bad);
            assert!(is_valid_traceparent(&t.traceparent));
        }
    }
}
