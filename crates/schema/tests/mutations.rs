//! A deterministic, CI-sized cousin of the fuzz target: thousands of corruptions of real
//! batches must neither panic the decoder nor break its round trip.

mod common;

use common::{fixture, read, reference};
use mpconnect_schema::testing::check_round_trip;

struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"0",
    b"-1",
    b"1e400",
    b"\"x\"",
    b"\\u0000",
    b"18446744073709551616",
    b"\"event_type\":\"custom_event\",",
    b"\"data\":{},",
    b"\"environment\":\"production\",",
    b"\"mpid\":\"12\",",
    b"true",
    b"\\ud800",
    b"\xff",
];

fn mutate(rng: &mut Lcg, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(out.len());
        match rng.below(4) {
            0 => out[at] = TOKENS[rng.below(TOKENS.len())][0],
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            2 => {
                let end = (at + rng.below(40)).min(out.len());
                out.drain(at..end);
            }
            _ => {
                // Repeat a slice: duplicate keys, doubled members.
                let end = (at + rng.below(200)).min(out.len());
                let slice = out[at..end].to_vec();
                out.splice(end..end, slice);
            }
        }
    }
    out
}

#[test]
fn corrupted_batches_never_panic_and_still_round_trip() {
    let seeds = [
        read(reference("mparticle.inbound.eventsapi.sample.json")),
        read(fixture("outbound_all_types.json")),
    ];
    let mut rng = Lcg(7);
    let mut accepted = 0;
    for i in 0..4000 {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        if mpconnect_schema::parse_batches(&input).is_ok() {
            accepted += 1;
        }
        check_round_trip(&input);
    }
    // The mutations must exercise the accepting path too, not only syntax errors.
    assert!(accepted > 400, "only {accepted} of 4000 mutations parsed");
}

#[test]
fn repeated_keys_resolve_to_the_last_one() {
    for input in [
        r#"{"environment":"production","environment":"nope"}"#,
        r#"{"environment":"nope","environment":"production"}"#,
        r#"{"mpid":null,"mpid":"5","device_info":{"brand":1,"brand":"x"}}"#,
        r#"{"events":[{"event_type":"custom_event","event_type":"bogus","data":{"event_name":1,"event_name":"n"}}]}"#,
    ] {
        check_round_trip(input.as_bytes());
    }
    let batch = mpconnect_schema::parse_batch(
        br#"{"mpid":null,"mpid":"5","environment":"nope","environment":"production"}"#,
    )
    .unwrap();
    assert_eq!(batch.mpid, Some(5));
    assert!(batch.extra.is_empty(), "{:?}", batch.extra);
    assert!(batch.has_valid_environment());
}

/// An event whose `data` comes before its `event_type` has its type looked ahead for in the
/// body; wherever the text found is not the event's own type, the one-pass read must still
/// agree with reading each batch alone (`check_round_trip` checks it), and the shapes real
/// senders write (the official sample, the benchmark's bodies) read in one pass.
#[test]
fn an_event_type_looked_ahead_for_is_checked_against_the_one_read() {
    let tricky = [
        // An attribute named event_type inside data, before the event's own.
        r#"[{"events":[{"data":{"custom_attributes":{"event_type":"screen_view"},"event_name":"a","custom_event_type":"other"},"event_type":"custom_event"}]}]"#,
        // No event_type in the first event; the next event's is the first one found.
        r#"[{"events":[{"data":{"event_name":"a"}},{"data":{"screen_name":"s"},"event_type":"screen_view"}]}]"#,
        // data twice.
        r#"[{"events":[{"data":{"event_name":"a","custom_event_type":"other"},"event_type":"custom_event","data":{"event_name":"b"}}]}]"#,
        // event_type twice, the second another type.
        r#"[{"events":[{"data":{"event_name":"a","screen_name":"s"},"event_type":"custom_event","event_type":"screen_view"}]}]"#,
        // The type escaped, unknown, or not a string.
        r#"[{"events":[{"data":{"event_name":"a"},"event_type":"custom\u005fevent"}]}]"#,
        r#"[{"events":[{"data":{"event_name":"a"},"event_type":"custom_event_2"}]}]"#,
        r#"[{"events":[{"data":{"event_name":"a"},"event_type":7}]}]"#,
        // A field of the guessed type that the real type does not have.
        r#"[{"events":[{"data":{"screen_name":"s","custom_attributes":{"x":"\"event_type\":\"screen_view\""}},"event_type":"custom_event"}]}]"#,
    ];
    for body in tricky {
        check_round_trip(body.as_bytes());
    }
    let first = mpconnect_schema::parse_batches(tricky[0].as_bytes()).unwrap();
    let event = &first[0].events[0];
    assert_eq!(
        event
            .kind
            .as_ref()
            .map(mpconnect_schema::json::event_type_name),
        Some("custom_event")
    );

    let sample = read(reference("mparticle.inbound.eventsapi.sample.json"));
    for body in [
        sample,
        mpconnect_schema::testing::bulk_request(1, false),
        mpconnect_schema::testing::bulk_request(2, true),
    ] {
        assert!(
            mpconnect_schema::read_batches(&body).is_some(),
            "a well-formed body reads in one pass"
        );
        check_round_trip(&body);
    }
}
