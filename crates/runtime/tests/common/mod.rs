//! Test backends: moto (started by `scripts/test`) for SQS and S3, temp dirs for the embedded
//! queue and the local store.
#![allow(dead_code)]

use mpconnect_runtime::aws::{AwsSettings, s3_client, sqs_client};
use mpconnect_runtime::queue::DEFAULT_CLAIM_CHECK_THRESHOLD;
use mpconnect_runtime::queue::{EmbeddedDb, EmbeddedSync, SqsQueue, SqsSettings, plain_size};
use mpconnect_runtime::store::{LocalStore, S3Store};
use mpconnect_runtime::{AnyQueue, AnyStore, ClaimChecked};

pub use mpconnect_runtime::testing::{moto_endpoint, unique};

pub async fn aws() -> (aws_config::SdkConfig, AwsSettings) {
    let settings = AwsSettings {
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto_endpoint()),
        force_path_style: true,
    };
    let config = mpconnect_runtime::testing::aws_config_for(
        &moto_endpoint(),
        std::time::Duration::from_secs(30),
    )
    .await;
    (config, settings)
}

pub type TestQueue = ClaimChecked<AnyQueue, AnyStore>;

/// A queue, its dead-letter queue and the claim-check store, on one backend.
pub struct Fixture {
    pub queue: TestQueue,
    pub dead_letter: TestQueue,
    pub store: AnyStore,
    pub max_receives: u32,
    _dir: Option<tempfile::TempDir>,
}

pub const MAX_RECEIVES: u32 = 2;

pub async fn embedded() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(&dir.path().join("queue.db"), EmbeddedSync::Normal).unwrap();
    let store = AnyStore::Local(LocalStore::new(dir.path().join("objects")));
    let queue = db.queue_with_dead_letter("ingest", MAX_RECEIVES, "ingest-dlq");
    let dead_letter = queue.dead_letter().unwrap();
    let wrap = |q| {
        ClaimChecked::new(
            AnyQueue::Embedded(q),
            store.clone(),
            DEFAULT_CLAIM_CHECK_THRESHOLD,
            "claims/",
            plain_size,
        )
    };
    Fixture {
        queue: wrap(queue),
        dead_letter: wrap(dead_letter),
        store: store.clone(),
        max_receives: MAX_RECEIVES,
        _dir: Some(dir),
    }
}

pub async fn sqs() -> Fixture {
    let (config, settings) = aws().await;
    let sqs = sqs_client(&config);
    let name = unique("q");
    let dlq_name = format!("{name}-dlq");
    for n in [&name, &dlq_name] {
        sqs.create_queue()
            .queue_name(n)
            .send()
            .await
            .expect("moto creates queues");
    }
    let s3 = s3_client(&config, &settings);
    let bucket = unique("claims");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("moto creates buckets");
    let store = AnyStore::S3(S3Store::new(s3, bucket));
    let mut queue_settings = SqsSettings::new(&name);
    queue_settings.dead_letter = Some((MAX_RECEIVES, dlq_name));
    let queue = SqsQueue::connect(sqs, queue_settings).await.unwrap();
    let dead_letter = queue.dead_letter().unwrap();
    let wrap = |q| {
        ClaimChecked::new(
            AnyQueue::Sqs(q),
            store.clone(),
            DEFAULT_CLAIM_CHECK_THRESHOLD,
            "claims/",
            SqsQueue::wire_size,
        )
    };
    Fixture {
        queue: wrap(queue),
        dead_letter: wrap(dead_letter),
        store: store.clone(),
        max_receives: MAX_RECEIVES,
        _dir: None,
    }
}
