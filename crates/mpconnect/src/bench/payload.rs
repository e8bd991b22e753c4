//! Bulk request bodies like real traffic: batches in the official sample's shape (its device,
//! application and user blocks, its event types), `events_per_batch` events each, with a
//! fresh `source_request_id` per batch and `source_message_id` per event on every request, so
//! no dedupe shortcut applies. Built once as a template with fixed-width id slots that each
//! request overwrites in place: making a body costs the load generator one copy.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

/// mParticle's official sample batch (Apache-2.0), the shape of every generated batch.
const SAMPLE: &str =
    include_str!("../../../../reference/mparticle/mparticle.inbound.eventsapi.sample.json");

/// Marks an id slot in the template; replaced by 24 hex digits, unique per run.
const SLOT: &str = "@@@@@@@@@@@@@@@@@@@@@@@@";

pub struct Payload {
    template: Vec<u8>,
    slots: Vec<usize>,
    run: u32,
    next: AtomicU64,
    pub events: usize,
}

impl Payload {
    /// `batches` batches of `events_per_batch` events, padded toward `event_bytes` per event.
    pub fn new(
        batches: usize,
        events_per_batch: usize,
        event_bytes: usize,
    ) -> anyhow::Result<Self> {
        let sample: Value = serde_json::from_str(SAMPLE)?;
        let shapes: Vec<Value> = sample["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            // Every event type of the sample but crash reports, whose stack traces dwarf the rest.
            .filter(|e| e["event_type"] != "crash_report")
            .collect();
        anyhow::ensure!(!shapes.is_empty(), "the sample has no events");
        let mut header = sample.clone();
        let header_obj = header
            .as_object_mut()
            .ok_or_else(|| anyhow::anyhow!("sample"))?;
        // Outbound-only members go: senders of the Events API do not send them.
        for outbound in ["batch_id", "mpid", "events"] {
            header_obj.remove(outbound);
        }
        header_obj.insert("source_request_id".into(), json!(SLOT));
        header_obj.insert("environment".into(), json!("production"));

        let mut list = Vec::with_capacity(batches);
        let mut n = 0usize;
        for _ in 0..batches {
            let mut batch = header_obj.clone();
            let mut events = Vec::with_capacity(events_per_batch);
            for _ in 0..events_per_batch {
                let mut event = shapes[n % shapes.len()].clone();
                n += 1;
                if let Some(data) = event.get_mut("data").and_then(Value::as_object_mut) {
                    // Senders leave out what they have no value for.
                    data.retain(|_, v| !v.is_null());
                    data.insert("source_message_id".into(), json!(SLOT));
                    data.insert("custom_attributes".into(), Value::Object(Map::new()));
                }
                events.push(event);
            }
            batch.insert("events".into(), Value::Array(events));
            list.push(Value::Object(batch));
        }
        // Pad each event's custom attributes until the body averages `event_bytes` an event.
        let target = batches * events_per_batch * event_bytes;
        let mut i = 0usize;
        while serde_json::to_vec(&list)?.len() < target && i < 100_000 {
            let (b, e) = ((i / events_per_batch) % batches, i % events_per_batch);
            if let Some(attrs) = list[b]["events"][e]["data"]["custom_attributes"].as_object_mut() {
                let k = attrs.len();
                attrs.insert(
                    format!("attribute_{k}"),
                    json!(format!("value {k} of a typical length")),
                );
            }
            i += 1;
        }
        let template = serde_json::to_vec(&list)?;
        let slots = find_all(&template, SLOT.as_bytes());
        Ok(Payload {
            template,
            slots,
            run: rand::random(),
            next: AtomicU64::new(0),
            events: batches * events_per_batch,
        })
    }

    /// One body with fresh ids.
    pub fn body(&self) -> Vec<u8> {
        let mut body = self.template.clone();
        let first = self
            .next
            .fetch_add(self.slots.len() as u64, Ordering::Relaxed);
        for (i, &at) in self.slots.iter().enumerate() {
            let id = format!("{:08x}{:016x}", self.run, first + i as u64);
            body[at..at + SLOT.len()].copy_from_slice(id.as_bytes());
        }
        body
    }

    pub fn len(&self) -> usize {
        self.template.len()
    }
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_batches_with_fresh_ids() {
        let payload = Payload::new(10, 10, 1100).unwrap();
        let (a, b) = (payload.body(), payload.body());
        for body in [&a, &b] {
            let batches = schema::decode_batches(body).expect("valid batches");
            assert_eq!(batches.len(), 10);
            assert!(batches.iter().all(|b| b.events.len() == 10));
        }
        let ids = |body: &[u8]| -> Vec<String> {
            schema::decode_batches(body)
                .unwrap()
                .into_iter()
                .filter_map(|b| b.source_request_id)
                .collect()
        };
        let (ia, ib) = (ids(&a), ids(&b));
        assert_eq!(ia.len(), 10);
        assert!(
            ia.iter().all(|id| !ib.contains(id)),
            "ids repeat across requests"
        );
        let per_event = payload.len() / payload.events;
        assert!(
            (1000..1300).contains(&per_event),
            "{per_event} bytes an event"
        );
    }
}
