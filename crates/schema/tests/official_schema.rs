//! What the codec writes in the inbound dialect validates against mParticle's official JSON
//! Schema (reference/mparticle/), with the bulk schema's absolute `$ref` served locally.

mod common;

use common::generate::{Mode, batch};
use common::{fixture, read, reference};
use mpconnect_schema::{Dialect, decode_batch, encode_batch, encode_batches};
use proptest::prelude::*;
use serde_json::Value;

const SINGLE_ID: &str = "https://docs.mparticle.com/schema/mparticle.inbound.eventsapi.schema.json";

fn load(file: &str) -> Value {
    serde_json::from_slice(&read(reference(file))).unwrap()
}

/// The bulk schema, its `$ref` to the single-batch schema resolved to the local copy (no
/// network here, and none needed).
fn bulk_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: std::sync::LazyLock<jsonschema::Validator> = std::sync::LazyLock::new(build);
    &VALIDATOR
}

fn build() -> jsonschema::Validator {
    let single = load("mparticle.inbound.eventsapi.schema.json");
    jsonschema::options()
        .with_resource(
            SINGLE_ID,
            jsonschema::Resource::from_contents(single).expect("a draft-07 schema"),
        )
        .build(&load("mparticle.inbound.eventsapi.bulk.schema.json"))
        .expect("the official schemas compile")
}

fn errors(validator: &jsonschema::Validator, json: &[u8]) -> Vec<String> {
    let instance: Value = serde_json::from_slice(json).unwrap();
    validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn the_validator_rejects_what_the_schema_forbids() {
    // Proves the validator is live (and the $ref resolved), so the passes below mean something.
    let v = bulk_validator();
    assert!(
        !errors(v, br#"[{"events":[]}]"#).is_empty(),
        "environment is required"
    );
    assert!(
        !errors(
            v,
            br#"[{"environment":"production","events":[{"event_type":"nope","data":{}}]}]"#
        )
        .is_empty()
    );
    assert!(errors(v, br#"[{"environment":"production","events":[]}]"#).is_empty());
}

#[test]
fn official_sample_reencoded_validates() {
    let v = bulk_validator();
    let batch = decode_batch(&read(reference("mparticle.inbound.eventsapi.sample.json"))).unwrap();
    let bulk = encode_batches(&[batch], Dialect::Inbound);
    assert_eq!(errors(v, &bulk), Vec::<String>::new());
}

#[test]
fn outbound_fixture_converted_to_inbound_validates_after_stripping_non_schema_fields() {
    let v = bulk_validator();
    let mut batch = decode_batch(&read(fixture("outbound_all_types.json"))).unwrap();
    // What the official (2021) schema does not know: outbound-only members, newer fields
    // (ccpa, pre_attribution/push_reaction events) and the fixture's deliberate unknowns.
    mpconnect_schema::strip_for_events_api(&mut batch);
    batch.extra.clear();
    batch.schema_version = None;
    batch.partner_identities = None;
    batch.integration_attributes = None;
    batch.context.as_mut().unwrap().location = None;
    // The 2021 schema has `gdpr` as one consent, not the documented object of purposes.
    batch.consent_state = None;
    batch.device_info.as_mut().unwrap().extra.clear();
    batch.events.retain(|e| {
        !matches!(
            e.kind,
            Some(
                mpconnect_schema::v1::event::Kind::PreAttribution(_)
                    | mpconnect_schema::v1::event::Kind::PushReaction(_)
            )
        )
    });
    for e in &mut batch.events {
        e.extra.clear();
        e.event_system_notification_info = None;
        if let Some(dcs) = &mut e.device_current_state {
            dcs.extra.clear();
        }
        if let Some(loc) = &mut e.location {
            loc.city_name = None;
        }
        if let Some(attrs) = &mut e.custom_attributes {
            attrs.values.retain(|_, v| {
                !matches!(
                    v.kind,
                    Some(mpconnect_schema::v1::value::Kind::ListValue(_))
                )
            });
        }
    }
    let bulk = encode_batches(&[batch], Dialect::Inbound);
    assert_eq!(errors(v, &bulk), Vec::<String>::new());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn generated_batches_validate(b in batch(Mode::Official, Dialect::Inbound)) {
        let v = bulk_validator();
        let json = encode_batch(&b, Dialect::Inbound);
        let mut bulk = b"[".to_vec();
        bulk.extend_from_slice(&json);
        bulk.push(b']');
        let found = errors(v, &bulk);
        prop_assert!(found.is_empty(), "{:?}\n{}", found, String::from_utf8_lossy(&json));
    }
}
