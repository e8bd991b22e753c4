//! Property tests: generated batches of every event type survive both directions, in both
//! dialects, and the inbound encoding stays inside mParticle's official JSON Schema.

mod common;

use common::generate::{Mode, batch};
use mpconnect_schema::{Dialect, encode_batch, parse_batch};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn proto_json_proto_inbound(b in batch(Mode::Lenient, Dialect::Inbound)) {
        let json = encode_batch(&b, Dialect::Inbound);
        let back = parse_batch(&json).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&json))))?;
        prop_assert_eq!(back, b);
    }

    #[test]
    fn proto_json_proto_outbound(b in batch(Mode::Lenient, Dialect::Outbound)) {
        let json = encode_batch(&b, Dialect::Outbound);
        let back = parse_batch(&json).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&json))))?;
        prop_assert_eq!(back, b);
    }

    /// JSON → proto → JSON over generated JSON text (the encoding of a generated batch, with its
    /// members re-ordered and re-spaced by serde_json so that the input is not our own bytes).
    #[test]
    fn json_proto_json(b in batch(Mode::Lenient, Dialect::Outbound), dialect in prop_oneof![Just(Dialect::Inbound), Just(Dialect::Outbound)]) {
        let ours = encode_batch(&b, dialect);
        let value: serde_json::Value = serde_json::from_slice(&ours).unwrap();
        let theirs = serde_json::to_vec_pretty(&value).unwrap();
        let again = encode_batch(&parse_batch(&theirs).unwrap(), dialect);
        common::assert_json_eq(&theirs, &again);
    }
}
