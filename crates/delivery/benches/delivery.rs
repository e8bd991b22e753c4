//! Delivery throughput: `DeliverRequest`s of 100 batches (10 events of ~1.2 KB each) through
//! the real gRPC service and the mParticle driver into a fast local fake of the Events API
//! (limits checked, nothing kept), with no rate limit; then the packing efficiency, on these
//! batches and on oversized ones that must be split. Beside it, the floor: `serde_json::Value`
//! parse + serialise of the same bytes, one core.
//! Run: `cargo bench -p mpconnect-delivery --bench delivery`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mpconnect_delivery::mparticle::{MparticleDriver, MparticleSettings, PackLimits, pack};
use mpconnect_delivery::testing::FakeMparticle;
use mpconnect_delivery::{DeadLetters, Delivery, Destination, DestinationSettings};
use runtime::queue::{EmbeddedSync, embedded_stage_queue, local_data};
use runtime::{Secret, SecretSource};
use schema::v1::delivery_service_client::DeliveryServiceClient;
use schema::v1::{Batch, DeliverRequest, RoutedBatch};

const CALLS: usize = 200;
const PER_CALL: usize = 100;
const IN_FLIGHT: usize = 4;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bodies: Vec<Vec<u8>> = (0..20)
        .map(|s| schema::testing::bulk_request(s, false))
        .collect();
    let batches: Vec<Batch> = bodies
        .iter()
        .flat_map(|b| schema::decode_batches(b).unwrap())
        .collect();
    let events_per_batch = batches[0].events.len();

    // The floor: serde_json::Value parse + serialise of the same bytes, one core.
    let started = Instant::now();
    let mut floor_events = 0;
    for _ in 0..5 {
        for body in &bodies {
            let value: serde_json::Value = serde_json::from_slice(body).unwrap();
            std::hint::black_box(serde_json::to_vec(&value).unwrap());
            floor_events += value.as_array().unwrap().len() * events_per_batch;
        }
    }
    let floor = floor_events as f64 / started.elapsed().as_secs_f64();

    let fake = FakeMparticle::start("k", "s").await;
    fake.set(|b| b.count_only = true);
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = local_data(dir.path(), EmbeddedSync::Normal).unwrap();
    let mut settings = MparticleSettings::new(
        fake.base_url(),
        SecretSource::Value(Secret::new("k")),
        SecretSource::Value(Secret::new("s")),
    );
    settings.limit.rate = None;
    let driver = Arc::new(MparticleDriver::new("mp", settings).unwrap());
    let destination = Destination::new(
        DestinationSettings::new("mp"),
        driver,
        embedded_stage_queue(&db, "retry-mp", &store),
        DeadLetters::new(store.clone(), "dead-letters/"),
    );
    let delivery = Delivery::new(vec![destination]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(delivery.serve(listener, std::future::pending()));
    let client = DeliveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let requests: Vec<Vec<RoutedBatch>> = (0..CALLS)
        .map(|c| {
            (0..PER_CALL)
                .map(|i| RoutedBatch {
                    key: format!("{c}-{i}"),
                    batch: Some(batches[(c * PER_CALL + i) % batches.len()].clone()),
                    source: "bench".into(),
                    connection: "bench".into(),
                    ..Default::default()
                })
                .collect()
        })
        .collect();
    let total_batches = CALLS * PER_CALL;
    let started = Instant::now();
    let mut work = requests.into_iter();
    let mut running = Vec::new();
    for _ in 0..IN_FLIGHT {
        let mut client = client.clone();
        let mine: Vec<_> = work.by_ref().take(CALLS / IN_FLIGHT).collect();
        running.push(tokio::spawn(async move {
            for batches in mine {
                client
                    .deliver(DeliverRequest {
                        destination: "mp".into(),
                        batches,
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for r in running {
        r.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = fake.state.accepted_batches.load(Ordering::Relaxed) as usize;
    let bytes = fake.state.accepted_bytes.load(Ordering::Relaxed) as f64;
    assert_eq!(accepted, total_batches, "every batch delivered");
    let requests = fake.requests();

    println!(
        "delivery: {total_batches} batches of {events_per_batch} events, gRPC -> mParticle driver -> local fake (limits checked), {IN_FLIGHT} calls in flight"
    );
    println!(
        "  delivered           {:>9.0} batches/s {:>9.0} events/s {:>7.1} MB/s out  ({} requests)",
        total_batches as f64 / elapsed,
        (total_batches * events_per_batch) as f64 / elapsed,
        bytes / elapsed / 1e6,
        requests.len()
    );
    println!(
        "  floor (serde_json)  {:>29.0} events/s  (Value parse + serialise, one core)",
        floor
    );

    let limits = PackLimits::default();
    let fill = |reqs: &[mpconnect_delivery::mparticle::Request<usize>]| {
        let n = reqs.len().max(1) as f64;
        let bytes: usize = reqs.iter().map(|r| r.body.len()).sum();
        let parts: usize = reqs.iter().map(|r| r.parts.len()).sum();
        (
            bytes as f64 / n / limits.max_request_bytes as f64 * 100.0,
            parts as f64 / n,
        )
    };
    let mut sent_fill = 0.0;
    for r in &requests {
        sent_fill += r.bytes as f64 / limits.max_request_bytes as f64 * 100.0;
    }
    println!(
        "  request fill        {:>8.1}% of 256 KB on average, {:.1} batches a request",
        sent_fill / requests.len().max(1) as f64,
        requests.iter().map(|r| r.batches).sum::<usize>() as f64 / requests.len().max(1) as f64
    );
    // Oversized batches (300 events, ~360 KB): split into parts that fill the 128 KB budget.
    let big: Vec<Batch> = (0..20)
        .map(|i| {
            let mut b = batches[i].clone();
            b.events = batches
                .iter()
                .skip(i)
                .take(30)
                .flat_map(|b| b.events.clone())
                .collect();
            b.source_request_id = Some(format!("big-{i}"));
            b
        })
        .collect();
    let started = Instant::now();
    let (split, _) = pack(big.iter().enumerate(), limits);
    let pack_time = started.elapsed();
    let parts: Vec<usize> = split
        .iter()
        .flat_map(|r| schema::decode_batches(&r.body.to_vec()).unwrap())
        .map(|b| schema::encode_batch(&b, schema::Dialect::Inbound).len())
        .collect();
    let (request_fill, per_request) = fill(&split);
    println!(
        "  oversized batches   {:>8.1}% of 128 KB per part on average ({} parts of 20 batches), requests {:.1}% of 256 KB with {:.1} parts; packed in {:?}",
        parts.iter().sum::<usize>() as f64 / parts.len() as f64 / limits.max_batch_bytes as f64
            * 100.0,
        parts.len(),
        request_fill,
        per_request,
        pack_time
    );
}
