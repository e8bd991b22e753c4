//! Helpers for tests across the workspace (not for production use).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// The moto server `scripts/test` started. Not skippable: without it the tests against SQS
/// and S3 would silently test nothing.
pub fn moto_endpoint() -> String {
    std::env::var("MPCONNECT_TEST_MOTO").expect(
        "MPCONNECT_TEST_MOTO is not set: run the suite with scripts/test, which installs and \
         starts moto (or start `moto_server` yourself and point this variable at it)",
    )
}

/// AWS configuration for `endpoint` (moto, or a proxy in front of it), with test credentials.
pub async fn aws_config_for(
    endpoint: &str,
    attempt_timeout: std::time::Duration,
) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_secs(1))
                .operation_attempt_timeout(attempt_timeout)
                .build(),
        )
        .load()
        .await
}

/// SQS and path-style S3 clients on moto.
pub async fn moto_clients() -> (aws_sdk_sqs::Client, aws_sdk_s3::Client) {
    let config = aws_config_for(&moto_endpoint(), std::time::Duration::from_secs(30)).await;
    let s3 = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(true)
        .build();
    (
        aws_sdk_sqs::Client::new(&config),
        aws_sdk_s3::Client::from_conf(s3),
    )
}

/// A fresh bucket whose `s3:ObjectCreated:*` notifications go to a fresh SQS queue, as a user
/// sets up mParticle's S3 output; returns the bucket and the queue's URL.
pub async fn notifying_bucket(
    sqs: &aws_sdk_sqs::Client,
    s3: &aws_sdk_s3::Client,
) -> (String, String) {
    use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
    use aws_sdk_sqs::types::QueueAttributeName;

    let bucket = unique("mp-output");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let queue_url = sqs
        .create_queue()
        .queue_name(unique("notifications"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    s3.put_bucket_notification_configuration()
        .bucket(&bucket)
        .notification_configuration(
            NotificationConfiguration::builder()
                .queue_configurations(
                    QueueConfiguration::builder()
                        .queue_arn(arn)
                        .events(Event::from("s3:ObjectCreated:*"))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    (bucket, queue_url)
}

/// Everything in `queue` now, acknowledged: receives until a receive that waited `wait` comes
/// back empty.
pub async fn drain(queue: &impl crate::Queue, wait: std::time::Duration) -> Vec<crate::Received> {
    let mut all = Vec::new();
    loop {
        let got = queue
            .receive(crate::ReceiveOptions {
                max_messages: 10,
                wait,
                visibility: std::time::Duration::from_secs(60),
            })
            .await
            .expect("receive");
        if got.is_empty() {
            return all;
        }
        let receipts: Vec<_> = got.iter().map(|m| m.receipt.clone()).collect();
        queue.ack(&receipts).await.expect("ack");
        all.extend(got);
    }
}

/// A fresh name, so tests sharing one moto server never meet.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A TCP proxy that can be switched off, cutting every connection through it: the network
/// between ingest and its queue, failing for real.
pub struct FaultProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (flag, conns) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound); // refused: closed at once
                    continue;
                }
                conns.lock().await.push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        FaultProxy {
            addr,
            up,
            connections,
        }
    }

    pub async fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.connections.lock().await.drain(..) {
            c.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
