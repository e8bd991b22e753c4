//! Embedded queue throughput: send + receive + ack of 1 KB messages in batches of 10, one
//! producer and two consumers, as ingest and transform use it. Goal: >= 20,000 messages/s.
//! Run: `cargo bench -p mpconnect-runtime --bench queue`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mpconnect_runtime::queue::{EmbeddedDb, EmbeddedSync};
use mpconnect_runtime::{Message, Queue, ReceiveOptions};

const TOTAL: usize = 200_000;
const BATCH: usize = 10;

async fn run(sync: EmbeddedSync) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(&dir.path().join("bench.db"), sync).unwrap();
    let queue = db.queue("bench");
    let body = vec![b'x'; 1024];
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();

    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            for _ in 0..TOTAL / BATCH {
                let batch = (0..BATCH)
                    .map(|_| {
                        Message::new(body.clone()).with_attribute(
                            "traceparent",
                            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                        )
                    })
                    .collect();
                queue.send(batch).await.unwrap();
            }
        })
    };
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let queue = queue.clone();
        let done = done.clone();
        consumers.push(tokio::spawn(async move {
            let options = ReceiveOptions {
                max_messages: BATCH,
                wait: Duration::from_millis(200),
                visibility: Duration::from_secs(30),
            };
            while done.load(Ordering::Relaxed) < TOTAL {
                let got = queue.receive(options).await.unwrap();
                if got.is_empty() {
                    continue;
                }
                let receipts: Vec<_> = got.iter().map(|m| m.receipt.clone()).collect();
                queue.ack(&receipts).await.unwrap();
                done.fetch_add(got.len(), Ordering::Relaxed);
            }
        }));
    }
    producer.await.unwrap();
    for c in consumers {
        c.await.unwrap();
    }
    TOTAL as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "embedded queue, {TOTAL} messages of 1 KB, batches of {BATCH}, 1 producer + 2 consumers"
    );
    let normal = run(EmbeddedSync::Normal).await;
    println!(
        "  sync = normal (survives kill -9): {normal:>9.0} messages/s send+receive+ack (goal >= 20,000: {})",
        if normal >= 20_000.0 { "met" } else { "NOT met" }
    );
    let full = run(EmbeddedSync::Full).await;
    println!("  sync = full (survives power loss): {full:>9.0} messages/s");
}
