//! Spans to an OTLP/gRPC collector.
//!
//! Not `opentelemetry-otlp`'s exporter: for its retries it deep-copies every batch before
//! converting the copy, and at full speed that copy alone was 2.4% of mpconnect's CPU. This one
//! writes each batch's protobuf straight from the SDK's spans ([`super::otlp_proto`]) and
//! sends those bytes as they are. It reads the standard settings the other did:
//! `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` and `_TIMEOUT`; `_COMPRESSION` other than `none` is
//! refused (this build sends uncompressed, as before).

use std::fmt;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::TracingError;
use super::otlp_proto::{EncodedResource, export_request};

/// OTLP/gRPC's one trace method.
const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// How long an export may take unless `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` says otherwise: a
/// collector that is down costs dropped spans, never a stalled exporter.
const TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct OtlpExporter {
    channel: Channel,
    headers: MetadataMap,
    resource: EncodedResource,
}

impl fmt::Debug for OtlpExporter {
    // Headers often carry a collector's credentials: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExporter").finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// Connects on first use, so a collector that is not up yet costs failed exports, not a
    /// failed start. Must run inside the Tokio runtime (the connection lives there).
    pub(super) fn new(
        endpoint: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TracingError> {
        let signal_or_all = |name: &str| {
            env(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
                .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{name}")))
        };
        if let Some(compression) = signal_or_all("COMPRESSION")
            && !compression.trim().eq_ignore_ascii_case("none")
        {
            return Err(TracingError::Exporter(format!(
                "OTLP compression {compression:?} is not built in; unset it or set it to none"
            )));
        }
        let timeout = signal_or_all("TIMEOUT")
            .and_then(|ms| ms.trim().parse().ok())
            .map_or(TIMEOUT, Duration::from_millis);
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| TracingError::Exporter(format!("the OTLP endpoint {endpoint:?}: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        Ok(OtlpExporter {
            channel,
            headers: signal_or_all("HEADERS")
                .map(|headers| metadata(&headers))
                .unwrap_or_default(),
            resource: EncodedResource::default(),
        })
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut request = tonic::Request::new(Bytes::from(export_request(batch, &self.resource)));
        *request.metadata_mut() = self.headers.clone();
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| {
            OTelSdkError::InternalFailure(format!("cannot reach the collector: {e}"))
        })?;
        match grpc
            .unary(request, PathAndQuery::from_static(EXPORT), Encoded)
            .await
        {
            Ok(_) => Ok(()),
            Err(status) => Err(OTelSdkError::InternalFailure(format!(
                "the collector answered {:?}: {}",
                status.code(),
                status.message()
            ))),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

/// A gRPC codec for a request already written as protobuf. The answer
/// (`ExportTraceServiceResponse`) is not read: its only content, a partial success, was
/// never acted on.
#[derive(Debug, Clone, Copy)]
struct Encoded;

impl Codec for Encoded {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Self::Encoder {
        Encoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        Encoded
    }
}

impl Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Encoded {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// `key=value,key=value` (values percent-encoded), as `OTEL_EXPORTER_OTLP_HEADERS` has them.
/// An entry that is not a valid header is left out, as the SDK's exporter did.
fn metadata(headers: &str) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for entry in headers.split(',') {
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        let value = percent_decoded(value.trim());
        let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.trim().to_ascii_lowercase().as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) else {
            continue;
        };
        if !value.is_empty() {
            metadata.insert(key, value);
        }
    }
    metadata
}

/// `%XX` sequences decoded; text that is not a valid sequence or not UTF-8 stays as it was.
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).unwrap_or_else(|_| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_headers_as_the_otel_variable_writes_them() {
        let headers = metadata(
            " Authorization=Basic%20dXNlcjpwYXNz , x-tenant=a%2Cb,empty=,novalue, bad key=1,x-second=2",
        );
        assert_eq!(headers.len(), 3, "{headers:?}");
        assert_eq!(headers.get("authorization").unwrap(), "Basic dXNlcjpwYXNz");
        assert_eq!(headers.get("x-tenant").unwrap(), "a,b");
        assert_eq!(headers.get("x-second").unwrap(), "2");
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(percent_decoded("%zz%41"), "%zzA");
        assert_eq!(percent_decoded("%ff"), "%ff", "not UTF-8: kept as written");
    }

    #[tokio::test]
    async fn refuses_compression_it_cannot_do() {
        let env = |set: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                set.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let gzip = OtlpExporter::new(
            "http://127.0.0.1:4317",
            env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]),
        );
        assert!(matches!(gzip, Err(TracingError::Exporter(e)) if e.contains("gzip")));
        for set in [
            &[][..],
            &[("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none")][..],
            &[("OTEL_EXPORTER_OTLP_TIMEOUT", "250")][..],
        ] {
            assert!(OtlpExporter::new("http://127.0.0.1:4317", env(set)).is_ok());
        }
        assert!(OtlpExporter::new("not a url", env(&[])).is_err());
    }
}
