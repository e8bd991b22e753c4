//! Builds each stage from the configuration, and runs them: one per process, or all in one.

use std::time::Duration;

use anyhow::Context;
use delivery::limit::Peers;
use delivery::{BuildContext, DeadLetters, Delivery, Destination};
use ingest::s3::S3Source;
use ingest::{Ingest, IngestSettings, SourceKind};
use runtime::aws::{AwsSettings, s3_client, sdk_config, sqs_client};
use runtime::queue::{
    EmbeddedDb, EmbeddedSync, SqsQueue, SqsSettings, embedded_stage_queue, local_data,
    sqs_stage_queue,
};
use runtime::store::S3Store;
use runtime::{AnyQueue, AnyStore, StageQueue};
use transform::{DeliveryClient, Transform, TransformSettings};

use crate::config::Config;

/// What the stages of one process share: the config, AWS clients, the embedded database and
/// the object store.
pub struct Shared {
    pub config: Config,
    aws: Option<aws_config::SdkConfig>,
    db: Option<EmbeddedDb>,
    pub store: AnyStore,
    /// The delivery processes sharing the destinations' rate limits.
    pub peers: Peers,
}

impl Shared {
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        for source in &config.sources {
            for secret in source.secrets() {
                secret
                    .ensure(&config.data_dir, 32)
                    .context("creating a generated credential")?;
            }
        }
        let needs_aws = config.queues.backend == "sqs"
            || config.store.backend.as_deref() == Some("s3")
            || (config.sources.iter()).any(|s| matches!(s.kind, SourceKind::S3(_)))
            || config.destinations.iter().any(|d| d.needs_aws());
        let aws = if needs_aws {
            Some(sdk_config(&aws_settings(&config)).await)
        } else {
            None
        };
        let (db, local_store) = if config.queues.backend == "embedded" {
            let sync = match config.queues.sync.as_str() {
                "full" => EmbeddedSync::Full,
                _ => EmbeddedSync::Normal,
            };
            let (db, store) = local_data(&config.data_dir, sync)?;
            if config.queues.max_disk_bytes > 0 {
                db.set_max_size(Some(config.queues.max_disk_bytes))
                    .await
                    .context("capping the queue database's size")?;
            }
            (Some(db), store)
        } else {
            let store = AnyStore::Local(runtime::store::LocalStore::new(
                config.data_dir.join("objects"),
            ));
            (None, store)
        };
        let store = match (config.store.backend.as_deref(), &aws, &config.store.bucket) {
            (Some("s3"), Some(aws), Some(bucket)) => AnyStore::S3(S3Store::new(
                s3_client(aws, &aws_settings(&config)),
                bucket.clone(),
            )),
            _ => local_store,
        };
        Ok(Shared {
            config,
            aws,
            db,
            store,
            peers: Peers::default(),
        })
    }

    fn aws(&self) -> anyhow::Result<&aws_config::SdkConfig> {
        self.aws.as_ref().context("AWS is not configured")
    }

    pub fn s3(&self) -> anyhow::Result<aws_sdk_s3::Client> {
        Ok(s3_client(self.aws()?, &aws_settings(&self.config)))
    }

    /// A stage queue by name (embedded) or SQS URL/name, with an optional dead-letter queue.
    /// An SQS queue whose own settings would strand data in its role is refused.
    pub async fn queue(
        &self,
        name: &str,
        dead_letter: Option<&str>,
        role: QueueRole,
    ) -> anyhow::Result<StageQueue> {
        match &self.db {
            Some(db) => Ok(embedded_stage_queue(db, name, &self.store)),
            None => {
                let mut settings = SqsSettings::new(name);
                settings.max_message_bytes = self.config.queues.max_message_bytes;
                settings.dead_letter =
                    dead_letter.map(|d| (self.config.queues.max_receives, d.to_owned()));
                let queue = SqsQueue::connect(sqs_client(self.aws()?), settings)
                    .await
                    .with_context(|| format!("connecting to the SQS queue {name}"))?;
                let keeping = queue
                    .keeping()
                    .await
                    .with_context(|| format!("reading the SQS queue {name}'s settings"))?;
                unsafe_keeping(name, keeping, role, self.config.queues.max_receives)
                    .map_or(Ok(()), |why| Err(anyhow::anyhow!(why)))?;
                Ok(sqs_stage_queue(queue, &self.store))
            }
        }
    }

    pub async fn ingest_queues(&self) -> anyhow::Result<(StageQueue, StageQueue)> {
        let q = &self.config.queues;
        let dead_letter = self
            .queue(&q.ingest_dead_letter, None, QueueRole::DeadLetter)
            .await?;
        let queue = self
            .queue(&q.ingest, Some(&q.ingest_dead_letter), QueueRole::Ingest)
            .await?;
        Ok((queue, dead_letter))
    }

    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(self.store.clone(), delivery::dlq::DEAD_LETTER_PREFIX)
    }
}

/// What a queue is for, which decides the SQS settings that are safe for it.
#[derive(Debug, Clone, Copy)]
pub enum QueueRole {
    /// Received until mpconnect dead-letters it itself after `queues.max_receives`.
    Ingest,
    DeadLetter,
    /// A destination's parked batches, retried by receiving them again for `window`.
    Retry {
        window: Duration,
    },
}

/// Why a queue's own settings would strand data in `role`, if they would.
pub fn unsafe_keeping(
    name: &str,
    keeping: runtime::queue::Keeping,
    role: QueueRole,
    max_receives: u32,
) -> Option<String> {
    match (role, keeping.max_receive_count) {
        (QueueRole::Retry { .. }, Some(count)) => Some(format!(
            "the retry queue {name} has a RedrivePolicy (maxReceiveCount {count}): every retry \
             of a parked batch is a receive, so SQS would move it to its dead-letter queue after \
             {count} retries, long before the retry window. Remove the RedrivePolicy: delivery \
             dead-letters a batch itself, with the reason, when its window closes"
        )),
        (QueueRole::Retry { window }, None) if keeping.retention < window => Some(format!(
            "the retry queue {name} keeps messages {} s, less than the retry window ({} s): \
             parked batches would expire unsent",
            keeping.retention.as_secs(),
            window.as_secs()
        )),
        (QueueRole::Ingest, Some(count)) if count <= max_receives => Some(format!(
            "the ingest queue {name}'s RedrivePolicy moves a message after {count} receives, \
             before mpconnect's own dead-lettering (queues.max_receives = {max_receives}), \
             which records why: make maxReceiveCount larger than {max_receives}"
        )),
        _ => None,
    }
}

pub fn aws_settings(config: &Config) -> AwsSettings {
    AwsSettings {
        region: config.aws.region.clone(),
        endpoint_url: config.aws.endpoint_url.clone(),
        force_path_style: config.aws.endpoint_url.is_some(),
    }
}

/// The ingest stage: the HTTP sources behind one router, and one reader per S3 source.
pub struct IngestStage {
    pub http: Ingest,
    pub s3: Vec<S3Source>,
}

pub async fn ingest(shared: &Shared) -> anyhow::Result<IngestStage> {
    let (queue, dead_letter) = shared.ingest_queues().await?;
    let mut settings = IngestSettings {
        max_backlog: Some(shared.config.queues.max_backlog).filter(|&max| max > 0),
        ..IngestSettings::default()
    };
    let mut s3 = Vec::new();
    for source in &shared.config.sources {
        let at = || format!("source {}", source.id);
        match &source.kind {
            SourceKind::Http(http) => settings.sources.push(
                http.build(&source.id, &shared.config.data_dir)
                    .with_context(at)?,
            ),
            SourceKind::S3(config) => {
                let notifications = (config.notification_queue.as_deref())
                    .with_context(|| format!("{}: notification_queue is required", at()))?;
                let sqs =
                    SqsQueue::connect(sqs_client(shared.aws()?), SqsSettings::new(notifications))
                        .await
                        .with_context(at)?;
                s3.push(S3Source::new(
                    config.settings(&source.id),
                    shared.s3()?,
                    AnyQueue::Sqs(sqs),
                    queue.clone(),
                    Some(dead_letter.clone()),
                ));
            }
        }
    }
    Ok(IngestStage {
        http: Ingest::new(settings, queue, Some(dead_letter)),
        s3,
    })
}

pub async fn transform(shared: &Shared, client: DeliveryClient) -> anyhow::Result<Transform> {
    let (queue, dead_letter) = shared.ingest_queues().await?;
    let dedupe = &shared.config.transform.dedupe;
    let settings = TransformSettings {
        connections: shared.config.connections.clone(),
        pollers: shared.config.transform.pollers.max(1),
        dedupe: transform::DedupeSettings {
            window: Duration::from_secs(dedupe.window_secs),
            max_batch_keys: dedupe.max_batch_keys,
            max_event_keys: dedupe.max_event_keys,
            dir: (!dedupe.dir.as_os_str().is_empty())
                .then(|| shared.config.data_dir.join(&dedupe.dir)),
        },
        ..TransformSettings::default()
    };
    Transform::new(settings, queue, Some(dead_letter), client)
        .map_err(|problems| anyhow::anyhow!("the transform's settings: {}", problems.join("; ")))
}

/// How often delivery counts its peers, and the transform re-resolves delivery's addresses.
/// `scripts/check-manifests.py` reads this: delivery's `preStop` must outlast it plus the DNS
/// TTL, so no transform still calls a pod that has begun to stop.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// The transform's client for delivery at `host:port`, re-resolved every [`RESOLVE_EVERY`].
pub fn delivery_client(endpoint: &str) -> anyhow::Result<DeliveryClient> {
    Ok(DeliveryClient::for_endpoint(
        endpoint,
        RESOLVE_EVERY,
        transform::DELIVER_DEADLINE,
    )?)
}

pub async fn delivery(shared: &Shared) -> anyhow::Result<Delivery> {
    let context = BuildContext {
        data_dir: &shared.config.data_dir,
        peers: shared.peers.clone(),
        s3: shared.s3().ok(),
    };
    let mut destinations = Vec::new();
    for d in &shared.config.destinations {
        let settings = d.settings();
        let driver = (d.driver(&context)).with_context(|| format!("destination {}", d.id))?;
        let role = QueueRole::Retry {
            window: settings.retry.window,
        };
        let queue = shared
            .queue(&d.retry_queue_name(), None, role)
            .await
            .with_context(|| format!("destination {}", d.id))?;
        destinations.push(Destination::new(
            settings,
            driver,
            queue,
            shared.dead_letters(),
        ));
    }
    Ok(Delivery::new(destinations))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::queue::Keeping;

    fn keeping(retention_secs: u64, max_receive_count: Option<u32>) -> Keeping {
        Keeping {
            retention: Duration::from_secs(retention_secs),
            max_receive_count,
        }
    }

    /// `queues.max_disk_bytes` caps the embedded database: sends fail (ingest answers 503)
    /// instead of the disk filling up.
    #[tokio::test]
    async fn the_embedded_queue_keeps_within_its_disk_cap() {
        async fn queued_before_full(cap: u64) -> usize {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                "data_dir = {:?}\n[queues]\nmax_disk_bytes = {cap}\nsync = \"full\"",
                dir.path().display().to_string()
            );
            let (config, problems) = crate::config::parse(&text, []).unwrap();
            assert!(problems.is_empty(), "{problems:?}");
            let shared = Shared::new(config).await.unwrap();
            let (queue, _) = shared.ingest_queues().await.unwrap();
            let mut sent = 0;
            while sent < 200 {
                let batch = vec![runtime::Message::new(vec![b'x'; 8 * 1024])];
                if runtime::Queue::send(&queue, batch).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        }
        assert_eq!(
            queued_before_full(0).await,
            200,
            "no cap: all 1.6 MB queued"
        );
        assert!(
            queued_before_full(256 * 1024).await < 40,
            "capped near 256 KiB"
        );
    }

    #[test]
    fn queue_settings_that_strand_data_are_named() {
        let retry = QueueRole::Retry {
            window: Duration::from_secs(4 * 3600),
        };
        let four_days = 345_600;
        assert_eq!(
            unsafe_keeping("r", keeping(four_days, None), retry, 10),
            None
        );
        assert!(unsafe_keeping("r", keeping(four_days, Some(1000)), retry, 10).is_some());
        let short = unsafe_keeping("r", keeping(3600, None), retry, 10).unwrap();
        assert!(short.contains("less than the retry window"), "{short}");
        let ingest = QueueRole::Ingest;
        assert!(unsafe_keeping("i", keeping(four_days, Some(5)), ingest, 10).is_some());
        assert!(unsafe_keeping("i", keeping(four_days, Some(10)), ingest, 10).is_some());
        assert_eq!(
            unsafe_keeping("i", keeping(four_days, Some(20)), ingest, 10),
            None
        );
        assert_eq!(
            unsafe_keeping("i", keeping(four_days, None), ingest, 10),
            None
        );
        let dlq = QueueRole::DeadLetter;
        assert_eq!(
            unsafe_keeping("d", keeping(four_days, Some(1)), dlq, 10),
            None
        );
    }
}
