//! Transform throughput: a pre-filled embedded queue of ingest messages (protobuf batches of 10
//! events, ~1.2 KB per event) through the rules and the gRPC hop into a no-op delivery peer,
//! acknowledging as it goes; beside it the decode step alone, so the hop's cost shows.
//! Run: `cargo bench -p mpconnect-transform --bench transform`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mpconnect_transform::testing::{Discard, serve_discard};
use mpconnect_transform::{Connection, DeliveryClient, Rules, Transform, TransformSettings};
use prost::Message as _;
use runtime::queue::{EmbeddedSync, embedded_stage_queue, local_data};
use runtime::{Message, Queue, ReceiveOptions};

const BATCHES: usize = 20_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = local_data(dir.path(), EmbeddedSync::Normal).unwrap();
    let queue = embedded_stage_queue(&db, "ingest", &store);

    // Ingest's messages: one protobuf batch each.
    let mut bodies = Vec::new();
    for seed in 0..(BATCHES / 10) as u64 {
        for batch in
            schema::decode_batches(&schema::testing::bulk_request(seed + 1, false)).unwrap()
        {
            bodies.push(batch.encode_to_vec());
        }
    }
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    let events = BATCHES * 10;
    for chunk in bodies.chunks(10) {
        let messages = chunk
            .iter()
            .map(|b| {
                Message::new(b.clone())
                    .with_attribute(runtime::envelope::attr::SOURCE, "web")
                    .with_attribute(
                        runtime::envelope::attr::TRACEPARENT,
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    )
            })
            .collect();
        queue.send(messages).await.unwrap();
    }

    // The decode step alone, one core.
    let started = Instant::now();
    for body in &bodies {
        std::hint::black_box(schema::v1::Batch::decode(body.as_slice()).unwrap());
    }
    let decode = events as f64 / started.elapsed().as_secs_f64();

    let discard = Discard::default();
    let addr = serve_discard(discard.clone()).await;
    let resolve: mpconnect_transform::Resolve =
        Arc::new(move || Box::pin(async move { Ok(vec![addr]) }));
    let client =
        DeliveryClient::balanced(resolve, Duration::from_secs(10), Duration::from_secs(10));
    let settings = TransformSettings {
        connections: vec![Connection {
            id: "c".into(),
            source: "web".into(),
            destinations: vec!["d".into()],
            rules: Rules::default(),
        }],
        pollers: 4,
        receive: ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_millis(100),
            visibility: Duration::from_secs(60),
        },
        ..TransformSettings::default()
    };
    let transform = Transform::new(settings, queue.clone(), None, client).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t = transform.clone();
    let started = Instant::now();
    let running = tokio::spawn(async move {
        t.run(async move {
            let _ = stopped.await;
        })
        .await
    });
    while discard.batches.load(Ordering::Relaxed) < BATCHES as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    running.await.unwrap();
    let acked = transform.stats().acked.load(Ordering::Relaxed);

    println!(
        "transform: {BATCHES} batches of 10 events ({:.0} bytes/event as protobuf), embedded queue -> rules -> gRPC -> no-op delivery",
        bytes as f64 / events as f64
    );
    println!(
        "  through the hop     {:>9.0} events/s {:>7.1} MB/s  ({acked} messages acknowledged)",
        events as f64 / elapsed,
        bytes as f64 / elapsed / 1e6
    );
    println!("  decode step alone   {decode:>9.0} events/s  (protobuf, one core)");
    dedupe_window();
}

/// The dedupe window, each tier filled to its default cap (the inserts through every slice's
/// seal), then looked up for fresh keys (the common case) ten at a time as a batch's events
/// are: mostly cache misses.
fn dedupe_window() {
    use mpconnect_transform::dedupe::{DedupeSettings, DedupeWindow, Key, Tier};
    let settings = DedupeSettings::default();
    let window = DedupeWindow::new(settings.clone());
    let keys = |n: usize, tag: &str| -> Vec<Key> {
        (0..n).map(|i| Key::of(&[&i.to_string(), tag])).collect()
    };
    for (tier, cap) in [
        (Tier::Batch, settings.max_batch_keys),
        (Tier::Event, settings.max_event_keys),
    ] {
        // Filling the tier runs through its slices: each one's keys inserted, then sealed.
        let held = keys(cap, "held");
        let started = Instant::now();
        for chunk in held.chunks(200) {
            window.insert_all(tier, chunk);
        }
        let insert = started.elapsed().as_nanos() as f64 / held.len() as f64;
        let fresh = keys(500_000, "fresh");
        let started = Instant::now();
        let found: usize = fresh
            .chunks(10)
            .map(|chunk| {
                window
                    .contains_each(tier, chunk)
                    .iter()
                    .filter(|&&b| b)
                    .count()
            })
            .sum();
        let per_key = started.elapsed().as_nanos() as f64 / fresh.len() as f64;
        println!(
            "  dedupe look-up      {per_key:>9.0} ns a fresh key, {tier:?} tier full ({cap} keys; {found} found)"
        );
        println!("  dedupe insert       {insert:>9.0} ns a key, {tier:?} tier filled to its cap");
    }
}
