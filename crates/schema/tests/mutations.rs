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
