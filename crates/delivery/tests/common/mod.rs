//! A running delivery stage (embedded retry queues, a local dead-letter store) behind its real
//! gRPC service, and batches to send it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpconnect_delivery::mparticle::{MparticleDriver, MparticleSettings};
use mpconnect_delivery::{DeadLetters, Delivery, Destination, DestinationSettings, Driver};
use runtime::queue::{EmbeddedDb, EmbeddedSync, embedded_stage_queue};
use runtime::{AnyStore, SecretSource};
use schema::v1::delivery_service_client::DeliveryServiceClient;
use schema::v1::{Batch, BatchOutcome, DeliverRequest, Event, Outcome, RoutedBatch};
use tonic::transport::Channel;

pub const KEY: &str = "test-key";
pub const SECRET: &str = "test-secret";

pub struct Stage {
    pub addr: SocketAddr,
    pub delivery: Delivery,
    pub dead_letters: DeadLetters,
    pub db: EmbeddedDb,
    pub store: AnyStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

impl Stage {
    /// Starts delivery with `destinations`, each given its own embedded retry queue.
    pub async fn start(destinations: Vec<(DestinationSettings, Arc<dyn Driver>)>) -> Stage {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = runtime::queue::local_data(dir.path(), EmbeddedSync::Normal).unwrap();
        let dead_letters = DeadLetters::new(store.clone(), "dead-letters/");
        let destinations = destinations
            .into_iter()
            .map(|(settings, driver)| {
                let queue = embedded_stage_queue(&db, &format!("retry-{}", settings.id), &store);
                Destination::new(settings, driver, queue, dead_letters.clone())
            })
            .collect();
        let delivery = Delivery::new(destinations);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = delivery.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Stage {
            addr,
            delivery,
            dead_letters,
            db,
            store,
            stop: Some(stop),
            task: Some(task),
            dir,
        }
    }

    pub async fn client(&self) -> DeliveryServiceClient<Channel> {
        DeliveryServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn deliver(&self, destination: &str, batches: Vec<RoutedBatch>) -> Vec<BatchOutcome> {
        self.client()
            .await
            .deliver(DeliverRequest {
                destination: destination.into(),
                batches,
            })
            .await
            .unwrap()
            .into_inner()
            .outcomes
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// Settings with short waits, for tests.
pub fn quick(id: &str) -> DestinationSettings {
    let mut settings = DestinationSettings::new(id);
    settings.retry.base = Duration::from_millis(100);
    settings.retry.cap = Duration::from_secs(1);
    settings.retry.probe_interval = Duration::from_millis(200);
    settings.attempt_timeout = Duration::from_secs(10);
    settings
}

pub fn mparticle(id: &str, base_url: &str, secret: SecretSource) -> Arc<dyn Driver> {
    let mut settings = MparticleSettings::new(
        base_url,
        SecretSource::Value(runtime::Secret::new(KEY)),
        secret,
    );
    settings.request_timeout = Duration::from_secs(5);
    Arc::new(MparticleDriver::new(id, settings).unwrap())
}

pub fn secret() -> SecretSource {
    SecretSource::Value(runtime::Secret::new(SECRET))
}

/// Batches of the speed bar's shape (10 custom events of about 1.2 KB), made once.
fn pool() -> &'static [Batch] {
    static POOL: std::sync::OnceLock<Vec<Batch>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        (0..8)
            .flat_map(|s| schema::decode_batches(&schema::testing::bulk_request(s, false)).unwrap())
            .collect()
    })
}

/// Realistic custom events of about 1.2 KB, as many as asked.
pub fn events(count: usize, seed: u64) -> Vec<Event> {
    let all = pool().iter().flat_map(|b| b.events.iter());
    all.cycle()
        .skip(seed as usize % 80)
        .take(count)
        .cloned()
        .collect()
}

/// A batch of one user with `events` events and the given `source_request_id`.
pub fn batch(events_in: usize, request_id: &str, seed: u64) -> Batch {
    let mut batch = pool()[seed as usize % pool().len()].clone();
    batch.events = events(events_in, seed);
    batch.source_request_id = Some(request_id.into());
    batch
}

pub fn routed(batch: Batch) -> RoutedBatch {
    RoutedBatch {
        key: batch.source_request_id.clone().unwrap_or_default(),
        batch: Some(batch),
        source: "test-source".into(),
        connection: "test-connection".into(),
        ..Default::default()
    }
}

pub fn count(outcomes: &[BatchOutcome], outcome: Outcome) -> usize {
    outcomes
        .iter()
        .filter(|o| o.outcome == outcome as i32)
        .count()
}

pub async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The id a part of a split batch carries: `<id>-part-<n>`, else the id itself.
pub fn original_id(id: &str) -> &str {
    match id.rfind("-part-") {
        Some(i) => &id[..i],
        None => id,
    }
}
