//! Ingest throughput: bulk requests of 10 batches x 10 events (~1.2 KB per event) over HTTP
//! into the embedded queue, 202 only once durable. Prints requests/s, events/s and latency
//! percentiles, beside the floor measured in the same run (`serde_json::Value` parse and
//! serialise of the same bodies on one core). The load generator shares the machine's cores.
//! Run: `cargo bench -p mpconnect-ingest --bench ingest`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mpconnect_ingest::{HttpSource, Ingest, IngestSettings};
use runtime::Secret;
use runtime::queue::{EmbeddedSync, embedded_stage_queue, local_data};
use schema::testing::{BATCHES, EVENTS, bulk_request};

const CONNECTIONS: usize = 8;
const MEASURE: Duration = Duration::from_secs(6);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = local_data(dir.path(), EmbeddedSync::Normal).unwrap();
    let settings = IngestSettings {
        sources: vec![HttpSource {
            id: "bench".into(),
            api_key: Secret::new("k"),
            api_secret: Secret::new("s"),
        }],
        ..IngestSettings::default()
    };
    let ingest = Ingest::new(
        settings,
        embedded_stage_queue(&db, "ingest", &store),
        Some(embedded_stage_queue(&db, "dlq", &store)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v2/bulkevents", listener.local_addr().unwrap());
    tokio::spawn(async move { ingest.serve(listener, std::future::pending()).await });

    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..16)
            .map(|i| bytes::Bytes::from(bulk_request(i + 1, false)))
            .collect(),
    );
    let bytes_per_request =
        bodies.iter().map(|b| b.len()).sum::<usize>() as f64 / bodies.len() as f64;

    // The floor: serde_json::Value parse + serialise of the same bodies, one core.
    let start = Instant::now();
    let mut floor_requests = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for body in bodies.iter() {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            std::hint::black_box(serde_json::to_vec(&v).unwrap());
            floor_requests += 1;
        }
    }
    let floor = floor_requests as f64 / start.elapsed().as_secs_f64();

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let deadline = Instant::now() + MEASURE;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .basic_auth("k", Some("s"))
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                latencies.push(sent.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let rps = latencies.len() as f64 / elapsed;
    let events = (BATCHES * EVENTS) as f64;
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "ingest: bulk requests of {BATCHES} batches x {EVENTS} events, {bytes_per_request:.0} bytes each, {CONNECTIONS} connections, embedded queue (sync = normal)"
    );
    println!(
        "  accepted       {rps:>8.0} requests/s {:>9.0} events/s {:>6.1} MB/s",
        rps * events,
        rps * bytes_per_request / 1e6
    );
    println!(
        "  latency        p50 {:>6.1} ms   p99 {:>6.1} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    println!(
        "  floor (1 core) {floor:>8.0} requests/s {:>9.0} events/s  serde_json::Value parse+serialise",
        floor * events
    );
}
