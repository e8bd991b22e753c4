//! Who is sending. Missing credentials → 401; present but wrong → 403. Keys and secrets are
//! compared in constant time, against every source, so timing tells nothing.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine;

use super::config::HttpSource;
use super::error::ApiError;

fn authorization(headers: &HeaderMap) -> Result<&[u8], ApiError> {
    match headers.get(AUTHORIZATION) {
        Some(v) if !v.as_bytes().trim_ascii().is_empty() => Ok(v.as_bytes().trim_ascii()),
        _ => Err(ApiError::unauthorized()),
    }
}

/// `key:secret` from `Basic <base64>`.
fn basic_credentials(value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (scheme, encoded) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// The Events API: HTTP Basic with a source's key and secret.
pub fn events_api<'a>(
    headers: &HeaderMap,
    sources: &'a [HttpSource],
) -> Result<&'a HttpSource, ApiError> {
    let (key, secret) =
        basic_credentials(authorization(headers)?).ok_or_else(ApiError::forbidden)?;
    let mut found = None;
    // Every source is checked, match or not: no early exit for timing to reveal.
    for source in sources {
        let matches = source.api_key.matches(&key) & source.api_secret.matches(&secret);
        if matches && found.is_none() {
            found = Some(source);
        }
    }
    found.ok_or_else(ApiError::forbidden)
}

/// mParticle's Webhook output sends verbatim the `Authorization` value the customer pasted:
/// `Bearer <key>`, `Basic base64(key:secret)`, or the bare key.
pub fn webhook(headers: &HeaderMap, source: Option<&HttpSource>) -> Result<(), ApiError> {
    let value = authorization(headers)?;
    let Some(source) = source else {
        return Err(ApiError::forbidden());
    };
    let bearer = value
        .split_at_checked(7)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|(_, token)| token.trim_ascii());
    let ok = match (bearer, basic_credentials(value)) {
        (Some(token), _) => source.api_key.matches(token),
        (None, Some((key, secret))) => {
            source.api_key.matches(&key) & source.api_secret.matches(&secret)
        }
        (None, None) => source.api_key.matches(value),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}
