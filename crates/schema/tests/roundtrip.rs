//! Lossless round trips of real mParticle JSON through the canonical schema.

mod common;

use common::{assert_json_eq, fixture, read, reference};
use mpconnect_schema::v1::{Environment, event, value};
use mpconnect_schema::{
    Dialect, decode_batch, decode_batches, encode_batch, encode_batches, json::EVENT_TYPES,
};
use prost::Message;

#[test]
fn official_sample_round_trips_in_the_inbound_dialect() {
    let input = read(reference("mparticle.inbound.eventsapi.sample.json"));
    let batch = decode_batch(&input).expect("the official sample is valid");
    assert_eq!(batch.events.len(), 14);
    assert_eq!(batch.environment(), Environment::Development);
    assert_eq!(batch.mpid, Some(-7636538281262557000));
    let identities = &batch.user_identities.as_ref().unwrap().values;
    assert_eq!(identities[0].identity_type.as_deref(), Some("customer_id"));
    assert_eq!(identities[0].identity.as_deref(), Some("123456"));
    assert_json_eq(&input, &encode_batch(&batch, Dialect::Inbound));
}

#[test]
fn official_sample_survives_protobuf_bytes() {
    let input = read(reference("mparticle.inbound.eventsapi.sample.json"));
    let batch = decode_batch(&input).unwrap();
    let wire = batch.encode_to_vec();
    let back = mpconnect_schema::v1::Batch::decode(wire.as_slice()).unwrap();
    assert_eq!(batch, back);
    assert_json_eq(&input, &encode_batch(&back, Dialect::Inbound));
}

#[test]
fn outbound_batch_with_every_event_type_round_trips() {
    let input = read(fixture("outbound_all_types.json"));
    let batch = decode_batch(&input).expect("fixture is valid");
    let kinds: std::collections::BTreeSet<_> = batch
        .events
        .iter()
        .map(|e| mpconnect_schema::json::event_type_name(e.kind.as_ref().unwrap()))
        .collect();
    assert_eq!(
        kinds.len(),
        EVENT_TYPES.len(),
        "fixture covers every event type"
    );
    assert_eq!(
        batch.batch_id,
        Some(-8602161397754364000),
        "int64 read from a string"
    );
    assert_json_eq(&input, &encode_batch(&batch, Dialect::Outbound));
}

#[test]
fn dialects_convert_both_ways() {
    let outbound = read(fixture("outbound_all_types.json"));
    let batch = decode_batch(&outbound).unwrap();
    let inbound = encode_batch(&batch, Dialect::Inbound);
    let as_value: serde_json::Value = serde_json::from_slice(&inbound).unwrap();
    assert_eq!(as_value["mpid"], serde_json::json!(-7636538281262557000i64));
    assert_eq!(as_value["user_identities"]["customer_id"], "h.jekyll.md");
    assert_eq!(as_value["user_identities"]["email"], "h.jekyll@example.com");
    assert_eq!(as_value["events"][0]["data"]["event_id"], 1234);
    // And back: the same canonical batch, except what the inbound object form cannot hold
    // (identity timestamps and flags).
    let again = decode_batch(&inbound).unwrap();
    let mut expected = batch.clone();
    for identity in &mut expected.user_identities.as_mut().unwrap().values {
        identity.timestamp_unixtime_ms = None;
        identity.created_this_batch = None;
    }
    assert_eq!(again, expected);
}

#[test]
fn misfit_values_are_kept_verbatim() {
    let input = br#"{"environment":"production","mpid":1.5,"ip":42,
        "device_info":{"screen_height":"tall","brand":null},
        "events":[{"data":{"event_name":7,"custom_event_type":"other","event_id":"x1"},
                   "event_type":"custom_event"}]}"#;
    let batch = decode_batch(input).expect("misfits are not errors");
    assert_eq!(batch.extra["mpid"], "1.5");
    assert_eq!(batch.extra["ip"], "42");
    let device = batch.device_info.as_ref().unwrap();
    assert_eq!(device.extra["screen_height"], "\"tall\"");
    assert_eq!(device.extra["brand"], "null");
    let event = &batch.events[0];
    assert_eq!(event.data_extra["event_name"], "7");
    assert_eq!(event.data_extra["event_id"], "\"x1\"");
    assert_json_eq(input, &encode_batch(&batch, Dialect::Inbound));
}

#[test]
fn python_sdk_body_is_accepted_and_normalised() {
    // As captured from mParticle's Python SDK 0.16.1 (NOTES.md §5): `customerid`, `"data": {}`.
    let input = br#"{"events":[{"data":{},"event_type":"session_start"},
      {"data":{"timestamp_unixtime_ms":1700000000000,"custom_attributes":{"k":"v"},
               "custom_event_type":"navigation","event_name":"Hello World"},"event_type":"custom_event"},
      {"data":{"screen_name":"Home"},"event_type":"screen_view"},
      {"data":{"product_action":{"action":"purchase","total_amount":10.5,
               "products":[{"id":"s1","name":"p","price":1.5,"quantity":2}]}},"event_type":"commerce_event"}],
     "source_request_id":"req-1","environment":"development",
     "user_attributes":{"$firstname":"A","list":["x","y"]},
     "user_identities":{"customerid":"cust1","email":"a@b.c"},
     "consent_state":{"ccpa":{"data_sale_opt_out":{"document":"doc","consented":true,
       "timestamp_unixtime_ms":1700000000000,"location":"loc","hardware_id":"hw"}}},
     "context":{"data_plan":{"plan_id":"plan","plan_version":2}}}"#;
    let batch = decode_batch(input).unwrap();
    let ids = &batch.user_identities.as_ref().unwrap().values;
    assert_eq!(ids[0].identity_type.as_deref(), Some("customer_id"));
    let Some(event::Kind::CustomEvent(custom)) = &batch.events[1].kind else {
        panic!()
    };
    assert_eq!(custom.event_name.as_deref(), Some("Hello World"));
    let attrs = batch.events[1].custom_attributes.as_ref().unwrap();
    assert_eq!(
        attrs.values["k"].kind,
        Some(value::Kind::StringValue("v".into()))
    );
    let out = encode_batch(&batch, Dialect::Inbound);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["user_identities"]["customer_id"], "cust1");
    assert!(v["user_identities"].get("customerid").is_none());
}

#[test]
fn bulk_bodies_decode_as_arrays_and_encode_back() {
    let one = read(reference("mparticle.inbound.eventsapi.sample.json"));
    let mut bulk = b"[".to_vec();
    bulk.extend_from_slice(&one);
    bulk.push(b',');
    bulk.extend_from_slice(&one);
    bulk.push(b']');
    let batches = decode_batches(&bulk).unwrap();
    assert_eq!(batches.len(), 2);
    assert_json_eq(&bulk, &encode_batches(&batches, Dialect::Inbound));
    // A single object is one batch (the webhook sends objects; bulk sends arrays).
    assert_eq!(decode_batches(&one).unwrap().len(), 1);
}

/// `data` before `event_type` (as the Python SDK and mParticle's sample write it) reads to the
/// same batch as the other order, every event type's own fields typed as they are there.
#[test]
fn data_before_event_type_reads_as_the_other_order() {
    let input: serde_json::Value =
        serde_json::from_slice(&read(fixture("outbound_all_types.json"))).unwrap();
    let events = input["events"].as_array().unwrap();
    let with_order = |data_first: bool| {
        let texts: Vec<String> = events
            .iter()
            .map(|e| {
                let data = serde_json::to_string(&e["data"]).unwrap();
                let kind = serde_json::to_string(&e["event_type"]).unwrap();
                if data_first {
                    format!(r#"{{"data":{data},"event_type":{kind}}}"#)
                } else {
                    format!(r#"{{"event_type":{kind},"data":{data}}}"#)
                }
            })
            .collect();
        let body = format!(
            r#"{{"environment":"production","events":[{}]}}"#,
            texts.join(",")
        );
        decode_batch(body.as_bytes()).expect("valid")
    };
    let (type_first, data_first) = (with_order(false), with_order(true));
    // Equal batches: a type's fields left raw in one order would differ from the typed ones.
    assert_eq!(data_first, type_first);
    assert_eq!(data_first.events.len(), events.len());
}
