//! Packs batches into `POST /v2/bulkevents` bodies within mParticle's limits, measured on the
//! encoded bytes: at most 100 batches and 256 KB a request, at most 128 KB a batch. A batch
//! over 128 KB is split by its events into parts that each keep the batch's user (identities,
//! attributes, device, consent) and carry its `source_request_id` suffixed per part, since
//! mParticle deduplicates on that id.

use bytes::Bytes;
use schema::v1::Batch;
use schema::{Dialect, limits};

use crate::http::JsonBody;

/// What one request may hold (mParticle's limits, NOTES §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    pub max_batches: usize,
    pub max_request_bytes: usize,
    pub max_batch_bytes: usize,
}

impl Default for PackLimits {
    fn default() -> Self {
        PackLimits {
            max_batches: limits::MAX_BATCHES_PER_REQUEST,
            max_request_bytes: limits::MAX_REQUEST_BYTES,
            max_batch_bytes: limits::MAX_BATCH_BYTES,
        }
    }
}

/// Where one batch of a request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<K> {
    /// The caller's key of the original batch.
    pub key: K,
    /// This part's index, and how many parts the original batch became (1 when not split).
    pub index: usize,
    pub of: usize,
}

/// One request body and the batches in it.
#[derive(Debug, Clone)]
pub struct Request<K> {
    pub body: JsonBody,
    pub parts: Vec<Part<K>>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    /// One event alone, with its batch's user data, is over the batch limit: no split helps.
    #[error(
        "an event of batch {batch} is {bytes} bytes with its user data; a batch may be at most {limit} bytes"
    )]
    EventTooLarge {
        batch: usize,
        bytes: usize,
        limit: usize,
    },
    /// A pass-through batch whose JSON does not decode (never, for what ingest validated).
    #[error("the batch's JSON cannot be read: {0}")]
    Unreadable(String),
}

/// A batch (or a part of one) ready to go, as its JSON.
type Encoded<K> = (Part<K>, Bytes);

/// Packs `batches` into requests, in order. Each batch is prepared for the Events API (the
/// outbound-only fields of mParticle's outputs removed) and encoded in the inbound dialect.
/// A batch that cannot be made to fit is reported by its position, and the others still pack.
pub fn pack<'a, K: Clone>(
    batches: impl IntoIterator<Item = (K, &'a Batch)>,
    limits: PackLimits,
) -> (Vec<Request<K>>, Vec<(K, PackError)>) {
    // Pass-through batches go as they are: their bytes are a view of the queue message's, and
    // the request is sent in pieces, so they are never copied on the way.
    let mut encoded: Vec<Encoded<K>> = Vec::new();
    let mut refused = Vec::new();
    for (position, (key, batch)) in batches.into_iter().enumerate() {
        // A pass-through batch goes out as the sender's bytes, when they fit.
        if schema::is_pass_through(batch) && batch.inbound_json.len() <= limits.max_batch_bytes {
            encoded.push((
                Part {
                    key,
                    index: 0,
                    of: 1,
                },
                batch.inbound_json.clone(),
            ));
            continue;
        }
        // Copy only the batches that carry outbound-only fields (those from mParticle's
        // outputs), or that must be read from their JSON to be split.
        let copied;
        let batch = if schema::has_outbound_only_fields(batch) || schema::is_pass_through(batch) {
            let mut copy = batch.clone();
            if let Err(e) = schema::materialize(&mut copy) {
                refused.push((key, PackError::Unreadable(e.to_string())));
                continue;
            }
            schema::strip_for_events_api(&mut copy);
            copied = copy;
            &copied
        } else {
            batch
        };
        let bytes = schema::encode_batch(batch, Dialect::Inbound);
        if bytes.len() <= limits.max_batch_bytes {
            encoded.push((
                Part {
                    key,
                    index: 0,
                    of: 1,
                },
                Bytes::from(bytes),
            ));
            continue;
        }
        match split(batch.clone(), position, limits.max_batch_bytes) {
            Ok(parts) => {
                let of = parts.len();
                encoded.extend(parts.into_iter().enumerate().map(|(index, bytes)| {
                    (
                        Part {
                            key: key.clone(),
                            index,
                            of,
                        },
                        Bytes::from(bytes),
                    )
                }));
            }
            Err(e) => refused.push((key, e)),
        }
    }

    // Which parts go together, by size alone ("[" + batches joined by ","; the "]" to come;
    // one more batch adds "," and itself), then each body is laid out as its pieces.
    let mut groups: Vec<(usize, Vec<Encoded<K>>)> = Vec::new();
    for (part, bytes) in encoded {
        match groups.last_mut() {
            Some((size, group))
                if group.len() < limits.max_batches
                    && *size + bytes.len() + 2 <= limits.max_request_bytes =>
            {
                *size += 1 + bytes.len();
                group.push((part, bytes));
            }
            _ => groups.push((1 + bytes.len(), vec![(part, bytes)])),
        }
    }
    let requests = groups
        .into_iter()
        .map(|(_, group)| {
            let mut body = JsonBody::with_capacity(2 * group.len() + 1);
            let mut parts = Vec::with_capacity(group.len());
            for (part, bytes) in group {
                body.push(Bytes::from_static(if parts.is_empty() {
                    b"["
                } else {
                    b","
                }));
                body.push(bytes);
                parts.push(part);
            }
            body.push(Bytes::from_static(b"]"));
            Request { body, parts }
        })
        .collect();
    (requests, refused)
}

/// Splits an oversized batch by its events: greedy, in order, each part as full as it can be.
fn split(batch: Batch, position: usize, limit: usize) -> Result<Vec<Vec<u8>>, PackError> {
    let mut shell = batch;
    let events = std::mem::take(&mut shell.events);
    let request_id = shell.source_request_id.clone();
    let with = |events: &[schema::v1::Event], index: usize| {
        let mut part = shell.clone();
        part.events = events.to_vec();
        if let Some(id) = &request_id {
            part.source_request_id = Some(format!("{id}-part-{}", index + 1));
        }
        schema::encode_batch(&part, Dialect::Inbound)
    };
    // Each event's encoded size, measured once: a batch with it, less the empty batch.
    let empty = with(&[], 0).len();
    let sizes: Vec<usize> = (0..events.len())
        .map(|i| with(&events[i..=i], 0).len() - empty)
        .collect();
    let mut parts = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let base = with(&[], parts.len()).len();
        if base + sizes[start] > limit {
            return Err(PackError::EventTooLarge {
                batch: position,
                bytes: base + sizes[start],
                limit,
            });
        }
        let mut end = start + 1;
        let mut total = base + sizes[start];
        while end < events.len() && total + 1 + sizes[end] <= limit {
            total += 1 + sizes[end];
            end += 1;
        }
        // The sum is exact for this encoder; the real bytes confirm it.
        let mut bytes = with(&events[start..end], parts.len());
        while bytes.len() > limit && end > start + 1 {
            end -= 1;
            bytes = with(&events[start..end], parts.len());
        }
        parts.push(bytes);
        start = end;
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(seeds: std::ops::Range<u64>) -> Vec<Batch> {
        seeds
            .flat_map(|s| schema::decode_batches(&schema::testing::bulk_request(s, false)).unwrap())
            .collect()
    }

    /// A batch of `events` events of about 1.2 KB each.
    fn big(events: usize, request_id: &str) -> Batch {
        let mut all = batches(0..(events as u64).div_ceil(100));
        let mut batch = all.remove(0);
        batch.events = all
            .into_iter()
            .flat_map(|b| b.events)
            .take(events.saturating_sub(10))
            .chain(batch.events)
            .collect();
        batch.source_request_id = Some(request_id.into());
        batch
    }

    #[test]
    fn a_pass_through_batch_goes_out_as_the_senders_bytes() {
        let sent = br#"{"environment":"production",  "source_request_id":"r-1",
            "events":[{"event_type":"custom_event","data":{"event_name":"a","custom_event_type":"other"}}]}"#;
        let (full, as_sent) = schema::parse_batch_as_sent(sent).unwrap();
        assert!(as_sent);
        let through = schema::pass_through(&full, sent).unwrap();
        let (requests, refused) = pack([(0usize, &through), (1, &full)], PackLimits::default());
        assert!(refused.is_empty());
        assert_eq!(requests.len(), 1);
        let body = &requests[0].body.to_vec();
        let expected = [
            b"[".as_slice(),
            sent,
            b",",
            &schema::encode_batch(&full, Dialect::Inbound),
            b"]",
        ]
        .concat();
        assert_eq!(
            body, &expected,
            "the pass-through batch verbatim, the other encoded"
        );
        let parsed: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(parsed[0], parsed[1], "both say the same");
    }

    #[test]
    fn a_pass_through_batch_over_the_batch_limit_is_read_and_split() {
        let full = big(300, "big");
        let json = schema::encode_batch(&full, Dialect::Inbound);
        let through = schema::pass_through(&full, &json).unwrap();
        let limits = PackLimits::default();
        let (requests, refused) = pack([(0usize, &through)], limits);
        assert!(refused.is_empty());
        check(&requests, limits);
        let parts: usize = requests.iter().map(|r| r.parts.len()).sum();
        assert!(parts > 1, "split into {parts} parts");
    }

    fn check(requests: &[Request<usize>], limits: PackLimits) {
        for r in requests {
            assert!(
                r.body.len() <= limits.max_request_bytes,
                "request of {} bytes",
                r.body.len()
            );
            assert!(r.parts.len() <= limits.max_batches);
            let parsed: Vec<serde_json::Value> =
                serde_json::from_slice(&r.body.to_vec()).expect("a JSON array");
            assert_eq!(parsed.len(), r.parts.len());
            for b in parsed {
                assert!(b.to_string().len() <= limits.max_batch_bytes);
            }
        }
    }

    #[test]
    fn small_batches_fill_requests_up_to_the_byte_limit() {
        let input: Vec<(usize, Batch)> = batches(1..31).into_iter().enumerate().collect();
        let count = input.len();
        let (requests, refused) = pack(input.iter().map(|(k, b)| (*k, b)), PackLimits::default());
        assert!(refused.is_empty());
        check(&requests, PackLimits::default());
        assert_eq!(requests.iter().map(|r| r.parts.len()).sum::<usize>(), count);
        // ~12 KB batches: about 21 to a 256 KB request, and every request but the last full.
        for r in &requests[..requests.len() - 1] {
            assert!(
                r.body.len() > limits::MAX_REQUEST_BYTES - 13 * 1024,
                "{} bytes left unused",
                limits::MAX_REQUEST_BYTES - r.body.len()
            );
        }
        let keys: Vec<usize> = requests
            .iter()
            .flat_map(|r| r.parts.iter().map(|p| p.key))
            .collect();
        assert_eq!(keys, (0..count).collect::<Vec<_>>(), "order kept");
    }

    #[test]
    fn at_most_100_batches_a_request() {
        let tiny: Vec<(usize, Batch)> = (0..250)
            .map(|i| {
                (
                    i,
                    schema::decode_batch(br#"{"environment":"production","events":[]}"#).unwrap(),
                )
            })
            .collect();
        let (requests, _) = pack(tiny.iter().map(|(k, b)| (*k, b)), PackLimits::default());
        assert_eq!(
            requests.iter().map(|r| r.parts.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
    }

    #[test]
    fn an_oversized_batch_is_split_by_events_keeping_its_user() {
        let original = big(400, "req-7");
        let original_events = original.events.len();
        assert!(
            schema::encode_batch(&original, Dialect::Inbound).len() > 3 * limits::MAX_BATCH_BYTES
        );
        let (requests, refused) = pack([(7usize, &original)], PackLimits::default());
        assert!(refused.is_empty());
        check(&requests, PackLimits::default());
        let parts: Vec<Batch> = requests
            .iter()
            .flat_map(|r| schema::decode_batches(&r.body.to_vec()).unwrap())
            .collect();
        let n = parts.len();
        assert!(n >= 4, "{n} parts");
        assert_eq!(
            parts.iter().map(|p| p.events.len()).sum::<usize>(),
            original_events,
            "every event once"
        );
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(
                part.source_request_id.as_deref(),
                Some(format!("req-7-part-{}", i + 1).as_str())
            );
            assert_eq!(
                part.user_identities, original.user_identities,
                "the same user in every part"
            );
            assert_eq!(part.user_attributes, original.user_attributes);
            assert_eq!(part.mpid, original.mpid);
        }
        let meta: Vec<(usize, usize)> = requests
            .iter()
            .flat_map(|r| r.parts.iter().map(|p| (p.index, p.of)))
            .collect();
        assert_eq!(meta, (0..n).map(|i| (i, n)).collect::<Vec<_>>());
        // Greedy: every part but the last is full to within one event (~1.2 KB).
        let sizes: Vec<usize> = parts
            .iter()
            .map(|p| schema::encode_batch(p, Dialect::Inbound).len())
            .collect();
        for size in &sizes[..n - 1] {
            assert!(
                *size > limits::MAX_BATCH_BYTES - 2048,
                "a part of only {size} bytes: {sizes:?}"
            );
        }
    }

    #[test]
    fn an_event_too_large_for_any_batch_is_refused_alone() {
        let mut huge = big(12, "req-h");
        let text = "x".repeat(140 * 1024);
        huge.events[0]
            .custom_attributes
            .as_mut()
            .unwrap()
            .values
            .insert(
                "blob".into(),
                schema::v1::Value {
                    kind: Some(schema::v1::value::Kind::StringValue(text)),
                },
            );
        let fine = batches(1..2);
        let mut input = vec![(0usize, fine[0].clone()), (1, huge)];
        input.push((2, fine[1].clone()));
        let (requests, refused) = pack(input.iter().map(|(k, b)| (*k, b)), PackLimits::default());
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, 1);
        assert!(matches!(
            refused[0].1,
            PackError::EventTooLarge { batch: 1, .. }
        ));
        let keys: Vec<usize> = requests
            .iter()
            .flat_map(|r| r.parts.iter().map(|p| p.key))
            .collect();
        assert_eq!(keys, [0, 2], "the others still go");
    }

    #[test]
    fn outbound_only_fields_are_not_sent_to_the_events_api() {
        let mut b = batches(1..2).remove(0);
        b.message_type = Some("events".into());
        b.unique_id = Some("u".into());
        b.events[0].message_id = Some("m".into());
        let (requests, _) = pack([(0usize, &b)], PackLimits::default());
        let body = String::from_utf8(requests[0].body.to_vec()).unwrap();
        assert!(
            !body.contains("\"message_type\"")
                && !body.contains("\"unique_id\"")
                && !body.contains("\"message_id\"")
        );
    }
}
