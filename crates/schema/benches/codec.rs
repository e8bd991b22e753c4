//! Codec throughput on realistic mParticle bulk requests (10 batches x 10 events, ~1.1 KB per
//! event), printed beside the floor measured in the same run: `serde_json::Value` parse and
//! serialise of the same bytes. Run: `cargo bench -p mpconnect-schema --bench codec`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mpconnect_schema::{Dialect, decode_batches, encode_batches};
use serde_json::json;

const BATCHES: usize = 10;
const EVENTS: usize = 10;
const MEASURE: Duration = Duration::from_secs(2);

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

fn bulk_request(seed: u64, outbound: bool) -> Vec<u8> {
    let mut rng = Lcg(seed);
    let batches: Vec<_> = (0..BATCHES).map(|_| batch(&mut rng, outbound)).collect();
    serde_json::to_vec(&batches).unwrap()
}

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
