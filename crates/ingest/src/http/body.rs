//! Reading a request body within the limits: the content type, the compressed size, and the
//! decompressed size (a gzip bomb is stopped at the limit, never inflated whole).

use std::io::Read;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use super::error::ApiError;

fn too_large(limit: usize) -> ApiError {
    ApiError::too_large(format!(
        "The request body exceeds {limit} bytes (after decompression); send fewer batches per request."
    ))
}

/// `application/json` (any parameters) or no content type at all; anything else is 415.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(format!(
            "Content-Type must be application/json, not {media:?}."
        )))
    }
}

pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    check_content_type(headers)?;
    let encoding = headers
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let raw = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large(limit)
            } else {
                ApiError::bad_request(format!("The request body could not be read: {e}"))
            }
        })?
        .to_bytes();
    match encoding.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => inflate(&raw, limit),
        other => Err(ApiError::unsupported_media_type(format!(
            "Content-Encoding {other:?} is not supported; use gzip or none."
        ))),
    }
}

/// Inflates at most `limit + 1` bytes: one byte past the limit proves it is too large.
fn inflate(compressed: &[u8], limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    flate2::read::MultiGzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad_request(format!("The gzip body does not decompress: {e}")))?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(Bytes::from(out))
}
