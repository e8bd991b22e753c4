//! Codec throughput on realistic mParticle bulk requests (10 batches x 10 events, ~1.1 KB per
//! event), printed beside the floor measured in the same run: `serde_json::Value` parse and
//! serialise of the same bytes. Run: `cargo bench -p mpconnect-schema --bench codec`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mpconnect_schema::testing::{BATCHES, EVENTS, bulk_request};
use mpconnect_schema::{Dialect, decode_batches, encode_batches};

const MEASURE: Duration = Duration::from_secs(2);

/// Runs `f` over the requests for about `MEASURE`, and returns requests per second.
fn measure(requests: &[Vec<u8>], mut f: impl FnMut(&[u8])) -> f64 {
    for r in requests.iter().take(4) {
        f(r); // warm-up
    }
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < MEASURE {
        for r in requests {
            f(r);
        }
        done += requests.len() as u64;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// Runs `a` and `b` over the requests in alternating slices for about twice `MEASURE`, so the
/// machine's drifting pace weighs on both alike; returns each one's requests per second.
fn measure_pair(
    requests: &[Vec<u8>],
    mut a: impl FnMut(&[u8]),
    mut b: impl FnMut(&[u8]),
) -> (f64, f64) {
    let (mut took, mut done) = ([Duration::ZERO; 2], [0u64; 2]);
    let start = Instant::now();
    let mut turn = 0;
    while start.elapsed() < MEASURE * 2 {
        let slice = Instant::now();
        for r in requests {
            if turn % 2 == 0 { a(r) } else { b(r) }
        }
        took[turn % 2] += slice.elapsed();
        done[turn % 2] += requests.len() as u64;
        turn += 1;
    }
    let rate = |i: usize| done[i] as f64 / took[i].as_secs_f64().max(f64::MIN_POSITIVE);
    (rate(0), rate(1))
}

fn main() {
    for (label, outbound, dialect) in [
        ("inbound (Events API)", false, Dialect::Inbound),
        ("outbound (Webhook / S3)", true, Dialect::Outbound),
    ] {
        let requests: Vec<Vec<u8>> = (0..16).map(|i| bulk_request(i + 1, outbound)).collect();
        let bytes: usize = requests.iter().map(Vec::len).sum();
        let per_request = bytes as f64 / requests.len() as f64;
        let events_per_request = (BATCHES * EVENTS) as f64;
        println!(
            "\n{label}: {} batches x {} events, {:.0} bytes/request, {:.0} bytes/event",
            BATCHES,
            EVENTS,
            per_request,
            per_request / events_per_request
        );

        let floor = measure(&requests, |r| {
            let v: serde_json::Value = serde_json::from_slice(r).unwrap();
            black_box(serde_json::to_vec(&v).unwrap());
        });
        let decode = measure(&requests, |r| {
            black_box(decode_batches(r).unwrap());
        });
        // What ingest does with an Events API body: one pass, attribute maps skimmed; beside
        // it, in turns, the same read by serde_json alone (without the quick reader).
        let (skim, skim_by_serde_json) = measure_pair(
            &requests,
            |r| {
                black_box(mpconnect_schema::skim_batches(r).unwrap());
            },
            |r| {
                black_box(mpconnect_schema::testing::skim_batches_by_serde_json(r).unwrap());
            },
        );
        let decoded: Vec<_> = requests
            .iter()
            .map(|r| decode_batches(r).unwrap())
            .collect();
        let mut i = 0;
        let encode = measure(&requests, |_| {
            black_box(encode_batches(&decoded[i % decoded.len()], dialect));
            i += 1;
        });
        let both = measure(&requests, |r| {
            let batches = decode_batches(r).unwrap();
            black_box(encode_batches(&batches, dialect));
        });

        let row = |name: &str, rps: f64| {
            println!(
                "  {name:<34} {:>9.1} MB/s {:>10.0} events/s   cost {:>4.2}x floor",
                rps * per_request / 1e6,
                rps * events_per_request,
                floor / rps
            );
        };
        row("floor: serde_json::Value parse+ser", floor);
        row("mpconnect decode (validated)", decode);
        row("ingest's read (skim_batches)", skim);
        row("  the same by serde_json alone", skim_by_serde_json);
        row("mpconnect encode", encode);
        row("mpconnect decode+encode", both);
        println!(
            "  decode+encode costs {:.2}x the floor (goal <= 1.5x): {}",
            floor / both,
            if floor / both <= 1.5 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}
