//! mpconnect's canonical event schema and the mParticle JSON codec. Pure: no I/O.
//!
//! - [`v1`]: the protobuf types generated from `proto/mpconnect/v1/event.proto`.
//! - [`decode_batch`] / [`decode_batches`]: mParticle JSON of either dialect into [`v1::Batch`],
//!   lenient where mParticle and its SDKs are, strict where mParticle answers 400.
//! - [`encode_batch`] / [`encode_batches`]: a batch back into the [`Dialect`] asked for.
//! - [`limits`]: mParticle's documented limits and the truncation it applies to S2S data.

pub mod json;
pub mod limits;
mod validate;

pub use validate::{ValidationError, validate, validate_historical};

/// The generated protobuf types of `mpconnect.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/mpconnect.v1.rs"));
}

use serde::de::DeserializeSeed;

/// The two JSON shapes mParticle uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// What the Events API takes: int64s as numbers, `user_identities` as an object.
    Inbound,
    /// What mParticle's Webhook, S3 and other outputs write: int64s as strings,
    /// `user_identities` as an array of `{identity_type, identity, ...}`.
    Outbound,
}

/// Why a body could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not shaped like a batch at all.
    #[error("Malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON that mParticle would answer with 400; every problem found, in document order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
}

/// Reads one batch object without validating it (both dialects; unknown fields kept).
pub fn parse_batch(json: &[u8]) -> Result<v1::Batch, serde_json::Error> {
    let mut d = serde_json::Deserializer::from_slice(json);
    let batch = json::BatchSeed(None).deserialize(&mut d)?;
    d.end()?;
    Ok(batch)
}

/// As [`parse_batch`], and whether the batch is as sent: `false` when reading it changed a
/// value's form (an int64 as a string, `customerid`), so its encoding, not its bytes, is what
/// it means to the Events API.
pub fn parse_batch_as_sent(json: &[u8]) -> Result<(v1::Batch, bool), serde_json::Error> {
    let (batch, normalised) = json::noting_normalisation(|| parse_batch(json));
    Ok((batch?, !normalised))
}

/// One batch of a body read in one pass ([`read_batches`]).
#[derive(Debug)]
pub struct ReadBatch<'a> {
    /// The batch's own text within the body.
    pub json: &'a [u8],
    pub batch: v1::Batch,
    /// As in [`parse_batch_as_sent`].
    pub as_sent: bool,
}

/// Reads a body that is one batch object or an array of them in one pass, without validating,
/// finding each batch's text as it goes (splitting first, then reading each part, scans the
/// bytes twice). `None` when some part does not read as a batch: the caller then splits the
/// body to answer each batch for itself.
pub fn read_batches(json: &[u8]) -> Option<Vec<ReadBatch<'_>>> {
    read_batches_with(json, false, true)
}

/// As [`read_batches`], for a body from the Events API whose batches will travel as sent
/// ([`encode_pass_through`]): only what validation, the ids and the pass-through check read is
/// built; every other member is checked as the full read checks it (the same bodies are taken
/// and refused, the same changed forms noted) and left out, since the sender's bytes travel on.
/// A batch that cannot pass through as sent (a value's form changed, members the Events API
/// does not take) is read again in full, so every batch with `as_sent` false is complete, and
/// [`encode_pass_through`] takes every one with `as_sent` true.
pub fn skim_batches(json: &[u8]) -> Option<Vec<ReadBatch<'_>>> {
    skim_batches_with(json, true)
}

/// [`skim_batches`], with the quick reader (`json::scan`) or with `serde_json` alone.
fn skim_batches_with(json: &[u8], quick: bool) -> Option<Vec<ReadBatch<'_>>> {
    let mut batches = read_batches_with(json, true, quick)?;
    for read in &mut batches {
        if !read.as_sent || has_outbound_only_fields(&read.batch) {
            let (batch, as_sent) = parse_batch_as_sent(read.json).ok()?;
            read.batch = batch;
            read.as_sent = as_sent;
        }
    }
    Some(batches)
}

fn read_batches_with(json: &[u8], skim: bool, quick: bool) -> Option<Vec<ReadBatch<'_>>> {
    // Checked as UTF-8 once, the body is read as text: no string in it is checked again on
    // its own (thousands of short checks cost more than one long one). A body that is not
    // UTF-8 is read as bytes, which finds and reports the bad string.
    let text = std::str::from_utf8(json).ok();
    // One value from `at`: the batch, and where its text ends.
    let read_at = |at: usize| {
        let (batch, normalised, len) = match text {
            // The quick reader first; where it stops, serde_json reads the batch and decides.
            Some(text) => {
                let rest = text.get(at..)?;
                match quick.then(|| read_quickly(rest, json, skim)).flatten() {
                    Some(read) => read,
                    None => read_one(serde_json::Deserializer::from_str(rest), json, skim)?,
                }
            }
            None => read_one(
                serde_json::Deserializer::from_slice(json.get(at..)?),
                json,
                skim,
            )?,
        };
        let end = at + len;
        Some((
            ReadBatch {
                json: json.get(at..end)?,
                batch,
                as_sent: !normalised,
            },
            end,
        ))
    };
    let skip_space = |mut at: usize| {
        while json
            .get(at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            at += 1;
        }
        at
    };
    let mut at = skip_space(0);
    let mut batches = Vec::new();
    match json.get(at) {
        Some(b'{') => {
            let (batch, end) = read_at(at)?;
            batches.push(batch);
            at = end;
        }
        Some(b'[') => {
            at = skip_space(at + 1);
            if json.get(at) == Some(&b']') {
                at += 1;
            } else {
                loop {
                    if json.get(at) != Some(&b'{') {
                        return None;
                    }
                    let (batch, end) = read_at(at)?;
                    if batches.is_empty() {
                        // Room for as many batches as the first one's size suggests (a
                        // bulk request's are alike), up to mParticle's cap: growing one at a
                        // time moved the batches read so far four times for ten.
                        let guess = json.len() / (end - at).max(1) + 1;
                        batches.reserve(guess.min(limits::MAX_BATCHES_PER_REQUEST + 1));
                    }
                    batches.push(batch);
                    at = skip_space(end);
                    match json.get(at) {
                        Some(b',') => at = skip_space(at + 1),
                        Some(b']') => {
                            at += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
        }
        _ => return None,
    }
    (skip_space(at) == json.len()).then_some(batches)
}

/// Reads one batch from `d`, whose input is `body` from some offset on: the batch, whether
/// reading it changed a value's form, and the length of its text. Events' types are looked
/// ahead for in `body`; a wrong guess fails the read (the caller reads again without).
fn read_one<'de, R: serde_json::de::Read<'de>>(
    mut d: serde_json::Deserializer<R>,
    body: &[u8],
    skim: bool,
) -> Option<(v1::Batch, bool, usize)> {
    let (batch, normalised) = read_batch(&mut d, body, skim)?;
    // A stream started here begins where the batch ended.
    let len = d.into_iter::<serde::de::IgnoredAny>().byte_offset();
    Some((batch, normalised, len))
}

/// [`read_one`] with [`json::scan`]'s reader: `None` where it stops.
fn read_quickly(text: &str, body: &[u8], skim: bool) -> Option<(v1::Batch, bool, usize)> {
    let mut scanner = json::scan::Scanner::new(text);
    let (batch, normalised) = read_batch(&mut scanner, body, skim)?;
    Some((batch, normalised, scanner.offset()))
}

/// The batch `d` reads (skimmed or in full), and whether reading it changed a value's form.
fn read_batch<'de, D: serde::Deserializer<'de>>(
    d: D,
    body: &[u8],
    skim: bool,
) -> Option<(v1::Batch, bool)> {
    let (read, normalised) = json::noting_normalisation(|| {
        let read = || json::BatchSeed(Some(body)).deserialize(d);
        if skim { json::skimming(read) } else { read() }
    });
    Some((read.ok()?, normalised))
}

/// Room for this many events is made before a batch's events are read from JSON, whose length
/// is not known in advance: typical batches fit, and none is copied to grow.
pub(crate) const EVENTS_GUESS: usize = 16;

/// Reads a batch's protobuf with room for its events made first (counted from the top-level
/// fields): an `Event` is ~1.5 KB, and growing the list a doubling at a time copied ~22 KB for
/// a batch of ten.
/// Read from the message's shared buffer, a pass-through batch's JSON is not copied.
/// Each event is read into its place in the list: prost's own loop builds an event apart and
/// moves it in (544 bytes an event). The loop is `Message::merge`'s, field by field.
pub fn decode_batch_proto(bytes: &prost::bytes::Bytes) -> Result<v1::Batch, prost::DecodeError> {
    use prost::Message;
    use prost::bytes::Buf;
    use prost::encoding::{DecodeContext, decode_key, message};
    let mut batch = v1::Batch::default();
    batch.events.reserve_exact(count_events(bytes));
    let mut buf = bytes.clone();
    let context = DecodeContext::default();
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag != EVENTS_FIELD {
            batch.merge_field(tag, wire_type, &mut buf, context.clone())?;
            continue;
        }
        batch.events.push(v1::Event::default());
        if let Some(event) = batch.events.last_mut() {
            message::merge(wire_type, event, &mut buf, context.clone()).map_err(|mut e| {
                e.push("Batch", "events");
                e
            })?;
        }
    }
    Ok(batch)
}

/// `Batch.events`' field number in `event.proto`.
const EVENTS_FIELD: u32 = 1;

/// How many `events` fields the top level of a batch's protobuf holds (a guess on damaged
/// input: it stops where the bytes stop making sense, and `merge` reports why).
fn count_events(mut buf: &[u8]) -> usize {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut events = 0;
    while !buf.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut buf) else {
            break;
        };
        let skip = match wire_type {
            WireType::Varint => decode_varint(&mut buf).map(|_| 0).ok(),
            WireType::SixtyFourBit => Some(8),
            WireType::ThirtyTwoBit => Some(4),
            WireType::LengthDelimited => decode_varint(&mut buf).ok().map(|len| len as usize),
            WireType::StartGroup | WireType::EndGroup => None,
        };
        let Some(rest) = skip.and_then(|skip| buf.get(skip..)) else {
            break;
        };
        if tag == EVENTS_FIELD && wire_type == WireType::LengthDelimited {
            events += 1;
        }
        buf = rest;
    }
    events
}

/// Reads a body that is one batch object or an array of them, without validating.
pub fn parse_batches(json: &[u8]) -> Result<Vec<v1::Batch>, serde_json::Error> {
    let mut d = serde_json::Deserializer::from_slice(json);
    let batches = json::BatchesSeed.deserialize(&mut d)?;
    d.end()?;
    Ok(batches)
}

/// Reads and validates one batch object.
pub fn decode_batch(json: &[u8]) -> Result<v1::Batch, DecodeError> {
    let batch = parse_batch(json)?;
    validate(&batch).map_err(DecodeError::Invalid)?;
    Ok(batch)
}

/// Reads and validates a batch object or an array of them. Error paths start with the batch's
/// index (`[3].events[0].data.event_name`) when the body is an array.
pub fn decode_batches(json: &[u8]) -> Result<Vec<v1::Batch>, DecodeError> {
    let is_array = json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let batches = parse_batches(json)?;
    let mut errors = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        if let Err(found) = validate(batch) {
            errors.extend(found.into_iter().map(|mut e| {
                if is_array {
                    e.path = format!("[{i}].{}", e.path);
                }
                e
            }));
        }
    }
    if errors.is_empty() {
        Ok(batches)
    } else {
        Err(DecodeError::Invalid(errors))
    }
}

/// Writes one batch as a JSON object of the given dialect.
pub fn encode_batch(batch: &v1::Batch, dialect: Dialect) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    encode_batch_into(batch, dialect, &mut out);
    out
}

/// Appends one batch as a JSON object to `out` (for NDJSON files and request bodies).
pub fn encode_batch_into(batch: &v1::Batch, dialect: Dialect, out: &mut Vec<u8>) {
    json::write_batch(batch, &mut json::write::Writer::new(out), dialect);
}

/// Writes batches as a JSON array (the body of `/v2/bulkevents`).
pub fn encode_batches(batches: &[v1::Batch], dialect: Dialect) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024 * batches.len().max(1));
    let mut w = json::write::Writer::new(&mut out);
    w.begin_array();
    for batch in batches {
        json::write_batch(batch, &mut w, dialect);
    }
    w.end_array();
    out
}

/// Clears what only mParticle's outputs write (`message_type`, `message_id`, `unique_id`,
/// `system_notifications`, and per event `message_id`, `message_type`), before a batch that
/// came from a Webhook or S3 output is sent to the Events API.
pub fn strip_for_events_api(batch: &mut v1::Batch) {
    batch.message_type = None;
    batch.message_id = None;
    batch.unique_id = None;
    batch.system_notifications = None;
    for event in &mut batch.events {
        event.message_id = None;
        event.message_type = None;
    }
}

/// Whether the batch carries members of mParticle's outbound dialect that its Events API does
/// not take (they come from mParticle's own outputs): [`strip_for_events_api`] removes them.
pub fn has_outbound_only_fields(batch: &v1::Batch) -> bool {
    batch.message_type.is_some()
        || batch.message_id.is_some()
        || batch.unique_id.is_some()
        || batch.system_notifications.is_some()
        || batch
            .events
            .iter()
            .any(|e| e.message_id.is_some() || e.message_type.is_some())
}

/// The pass-through form of a validated inbound-dialect batch (see `Batch.inbound_json`):
/// `json` as it came, with only the ids routing needs beside it. Only for a batch read as sent
/// ([`parse_batch_as_sent`]); `None` when it has members the Events API does not take, which
/// must be stripped on the way out.
pub fn pass_through(batch: &v1::Batch, json: &[u8]) -> Option<v1::Batch> {
    Some(v1::Batch {
        inbound_json: prost::bytes::Bytes::copy_from_slice(json),
        ..ids_of(batch)?
    })
}

/// [`pass_through`] as protobuf bytes, with `json` copied once, straight into them. The ids
/// are written as prost writes [`pass_through`]'s batch (a test compares the bytes), without
/// building it: an `Event` and a cloned id per event cost more than the writing.
pub fn encode_pass_through(batch: &v1::Batch, json: &[u8]) -> Option<Vec<u8>> {
    let mut out = write_pass_through_head(batch, json.len(), json.len())?;
    out.extend_from_slice(json);
    Some(out)
}

/// [`encode_pass_through`]'s bytes up to the JSON, which comes last: with the JSON after them
/// (a queue message's second part, `runtime::Message::body_rest`) they are the same bytes, and
/// the JSON is not copied to be sent.
pub fn pass_through_head(batch: &v1::Batch, json_len: usize) -> Option<Vec<u8>> {
    write_pass_through_head(batch, json_len, 0)
}

/// The pass-through bytes before a JSON of `json_len` bytes, with room for `room` more.
fn write_pass_through_head(batch: &v1::Batch, json_len: usize, room: usize) -> Option<Vec<u8>> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, string};
    if has_outbound_only_fields(batch) {
        return None;
    }
    let event_len = |e: &v1::Event| {
        e.source_message_id
            .as_ref()
            .map_or(0, |id| string::encoded_len(SOURCE_MESSAGE_ID_FIELD, id))
    };
    let ids_len: usize = batch
        .events
        .iter()
        .map(|e| {
            let len = event_len(e);
            1 + encoded_len_varint(len as u64) + len
        })
        .sum::<usize>()
        + batch
            .source_request_id
            .as_ref()
            .map_or(0, |id| string::encoded_len(SOURCE_REQUEST_ID_FIELD, id));
    let mut out = Vec::with_capacity(ids_len + 8 + room);
    for event in &batch.events {
        encode_key(EVENTS_FIELD, WireType::LengthDelimited, &mut out);
        encode_varint(event_len(event) as u64, &mut out);
        if let Some(id) = &event.source_message_id {
            string::encode(SOURCE_MESSAGE_ID_FIELD, id, &mut out);
        }
    }
    if let Some(id) = &batch.source_request_id {
        string::encode(SOURCE_REQUEST_ID_FIELD, id, &mut out);
    }
    encode_key(INBOUND_JSON_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(json_len as u64, &mut out);
    Some(out)
}

/// Field numbers in `event.proto`: `Batch.source_request_id`, `Batch.inbound_json`,
/// `Event.source_message_id` (`Batch.events` is [`EVENTS_FIELD`]).
const SOURCE_REQUEST_ID_FIELD: u32 = 2;
const INBOUND_JSON_FIELD: u32 = 200;
const SOURCE_MESSAGE_ID_FIELD: u32 = 3;

/// The ids routing needs, alone: the pass-through form without its JSON.
fn ids_of(batch: &v1::Batch) -> Option<v1::Batch> {
    if has_outbound_only_fields(batch) {
        return None;
    }
    Some(v1::Batch {
        source_request_id: batch.source_request_id.clone(),
        events: batch
            .events
            .iter()
            .map(|e| v1::Event {
                source_message_id: e.source_message_id.clone(),
                ..v1::Event::default()
            })
            .collect(),
        ..v1::Batch::default()
    })
}

/// Whether the batch is in its pass-through form (only ids beside the sender's JSON).
pub fn is_pass_through(batch: &v1::Batch) -> bool {
    !batch.inbound_json.is_empty()
}

/// Turns a pass-through batch into the full batch its JSON holds, keeping only the events the
/// pass-through form still lists (by position: events dropped from it are dropped here too,
/// matched by `source_message_id`). A full batch is left as it is.
pub fn materialize(batch: &mut v1::Batch) -> Result<(), DecodeError> {
    if batch.inbound_json.is_empty() {
        return Ok(());
    }
    let mut full = decode_batch(&batch.inbound_json)?;
    let kept = &batch.events;
    if kept.len() != full.events.len() {
        // Only events with ids are ever dropped; keep those still listed, in order.
        let mut listed = kept
            .iter()
            .map(|e| e.source_message_id.as_deref())
            .peekable();
        full.events.retain(|e| {
            if listed.peek() == Some(&e.source_message_id.as_deref()) {
                listed.next();
                true
            } else {
                false
            }
        });
    }
    *batch = full;
    Ok(())
}

/// Checks and data shared by the fuzz target, the tests and the benchmarks: feature `testing`.
#[cfg(feature = "testing")]
pub mod testing {
    use super::*;
    use serde_json::json;

    /// Batches per benchmark request, and events per batch (the speed bar's shape).
    pub const BATCHES: usize = 10;
    pub const EVENTS: usize = 10;

    /// A "now" for the historical endpoint's check that makes the sample's and the
    /// benchmark's timestamps (late 2023) old enough, and some of the fuzzer's too new.
    const HISTORICAL_NOW_MS: i64 = 1_700_300_000_000;

    /// [`skim_batches`] with `serde_json` alone, not the quick reader first: the benchmark's
    /// measure of what the quick reader saves.
    pub fn skim_batches_by_serde_json(json: &[u8]) -> Option<Vec<ReadBatch<'_>>> {
        skim_batches_with(json, false)
    }

    /// A skimmed read takes exactly the bodies a full read takes, and agrees with it on each
    /// batch's text, form, validation (the historical endpoint's too) and pass-through bytes.
    pub fn check_skim_agrees(bytes: &[u8]) {
        let (full, skimmed) = (read_batches(bytes), skim_batches(bytes));
        assert_eq!(full.is_some(), skimmed.is_some(), "the same bodies read");
        // The quick reader (`json::scan`) reads what serde_json alone reads.
        let by_serde_json = skim_batches_by_serde_json(bytes);
        assert_eq!(
            skimmed.is_some(),
            by_serde_json.is_some(),
            "the same bodies skimmed"
        );
        for (quick, slow) in skimmed.iter().flatten().zip(by_serde_json.iter().flatten()) {
            assert_eq!(
                (quick.json, &quick.batch, quick.as_sent),
                (slow.json, &slow.batch, slow.as_sent)
            );
        }
        // Read in one pass (events' types looked ahead for), each batch is what it is read
        // alone, the plain way.
        for f in full.iter().flatten() {
            let alone = parse_batch_as_sent(f.json).expect("a batch read in the body reads alone");
            assert_eq!((&f.batch, f.as_sent), (&alone.0, alone.1), "read alone");
        }
        for (f, s) in full.iter().flatten().zip(skimmed.iter().flatten()) {
            assert_eq!((f.json, f.as_sent), (s.json, s.as_sent));
            assert_eq!(validate(&f.batch), validate(&s.batch));
            assert_eq!(
                validate_historical(&f.batch, HISTORICAL_NOW_MS),
                validate_historical(&s.batch, HISTORICAL_NOW_MS)
            );
            assert_eq!(f.batch.events.len(), s.batch.events.len());
            assert_eq!(
                encode_pass_through(&f.batch, f.json),
                encode_pass_through(&s.batch, s.json)
            );
        }
    }

    /// A realistic bulk request body: `BATCHES` batches of `EVENTS` custom events of about
    /// 1.2 KB, in the outbound dialect (int64s as strings, identities as an array) or inbound.
    /// A deterministic pseudo-random source, so every run measures the same bytes.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn word(&mut self, len: usize) -> String {
            (0..len)
                .map(|_| (b'a' + (self.next() % 26) as u8) as char)
                .collect()
        }
    }

    fn event(rng: &mut Lcg, i: usize, outbound: bool) -> serde_json::Value {
        let long = |v: i64| {
            if outbound {
                json!(v.to_string())
            } else {
                json!(v)
            }
        };
        let mut attrs = serde_json::Map::new();
        for a in 0..14 {
            let value = match a % 4 {
                0 => json!(rng.word(24)),
                1 => json!(rng.next() as i64),
                2 => json!((rng.next() % 10_000) as f64 / 7.0),
                _ => json!(rng.next().is_multiple_of(2)),
            };
            attrs.insert(format!("attribute_{a}_{}", rng.word(6)), value);
        }
        json!({
            "event_type": "custom_event",
            "data": {
                "event_name": format!("Screen {} {}", i, rng.word(8)),
                "custom_event_type": "navigation",
                "timestamp_unixtime_ms": long(1_700_000_000_000 + rng.next() as i64),
                "event_id": long(rng.next() as i64 * 31),
                "source_message_id": format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", rng.next(), rng.next() % 65536, rng.next() % 4096, rng.next() % 4096, rng.next()),
                "session_id": long(-(rng.next() as i64) * 1_000_003),
                "session_uuid": "8B8DFAA2-17C7-43E8-88EE-5F2DCF016D56",
                "custom_attributes": attrs,
                "custom_flags": {"Google.Category": rng.word(10)},
                "location": {"latitude": 40.7128, "longitude": -74.006, "accuracy": 12.5},
                "device_current_state": {"battery_level": 0.87, "data_connection_type": "wifi", "time_since_start_ms": long(123_456)},
                "is_goal_defined": false,
                "lifetime_value_change": 0,
            }
        })
    }

    fn batch(rng: &mut Lcg, outbound: bool) -> serde_json::Value {
        let events: Vec<_> = (0..EVENTS).map(|i| event(rng, i, outbound)).collect();
        let identities = if outbound {
            json!([{"identity_type": "customer_id", "identity": rng.word(12), "timestamp_unixtime_ms": "1700000000000"},
                   {"identity_type": "email", "identity": format!("{}@example.com", rng.word(8))}])
        } else {
            json!({"customer_id": rng.word(12), "email": format!("{}@example.com", rng.word(8))})
        };
        json!({
            "events": events,
            "source_request_id": rng.word(16),
            "environment": "production",
            "mpid": if outbound { json!((-(rng.next() as i64)).to_string()) } else { json!(-(rng.next() as i64)) },
            "ip": "100.38.5.94",
            "user_identities": identities,
            "user_attributes": {"$firstname": rng.word(7), "$city": "New York", "tier": "gold", "tags": ["a", "b", "c"]},
            "device_info": {"platform": "iOS", "os_version": "17.1", "device_model": "iPhone15,2", "ios_idfv": "0f129dcb-d5b9-450b-9003-a38a7b7e946d", "screen_height": 2556, "screen_width": 1179, "is_tablet": false},
            "application_info": {"application_name": "Travel", "application_version": "4.2.0", "package": "com.example.travel"},
        })
    }

    pub fn bulk_request(seed: u64, outbound: bool) -> Vec<u8> {
        let mut rng = Lcg(seed);
        let batches: Vec<_> = (0..BATCHES).map(|_| batch(&mut rng, outbound)).collect();
        serde_json::to_vec(&batches).unwrap()
    }

    /// The decoder's contract on any input: it never panics; whatever it reads, the outbound
    /// dialect writes back without loss; the inbound dialect writes JSON it reads again; and
    /// validation answers.
    pub fn check_round_trip(bytes: &[u8]) {
        check_skim_agrees(bytes);
        let Ok(batches) = parse_batches(bytes) else {
            return;
        };
        let outbound = encode_batches(&batches, Dialect::Outbound);
        let again = parse_batches(&outbound).expect("our outbound output parses");
        assert_eq!(again, batches, "the outbound round trip is lossless");
        let inbound = encode_batches(&batches, Dialect::Inbound);
        parse_batches(&inbound).expect("our inbound output parses");
        for batch in &batches {
            let _ = validate(batch);
            let _ = validate_historical(batch, 0);
        }
    }
}
