//! The three stages as three processes, as Kubernetes runs them: SQS queues and an S3 store on
//! moto, and a fake mParticle Events API as the destination.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{SOURCE_KEY, SOURCE_SECRET, Stack, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_transform_and_delivery_as_three_processes_deliver_every_event() {
    let stack = Stack::start(&[]).await;
    let fake = &stack.fake;
    let client = reqwest::Client::new();
    let url = format!("{}/v2/bulkevents", stack.ingest_url);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = BTreeSet::new();
    let mut i = 0;
    while i < 20 {
        let body: Vec<serde_json::Value> = (0..5)
            .map(|j| {
                serde_json::json!({
                    "environment": "production",
                    "source_request_id": format!("p-{i}-{j}"),
                    "user_identities": {"customerid": format!("c-{j}")},
                    "events": [
                        {"event_type": "custom_event", "data": {"event_name": "one", "custom_event_type": "other"}},
                        {"event_type": "screen_view", "data": {"screen_name": "Home"}}
                    ]
                })
            })
            .collect();
        match client
            .post(&url)
            .basic_auth(SOURCE_KEY, Some(SOURCE_SECRET))
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status() == 202 => {
                sent.extend((0..5).map(|j| format!("p-{i}-{j}")));
                i += 1;
            }
            // Still starting.
            _ => {
                assert!(Instant::now() < deadline, "ingest never accepted");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eventually(Duration::from_secs(60), async || {
        let arrived: BTreeSet<String> = fake.request_ids().into_iter().collect();
        if arrived == sent {
            Ok(())
        } else {
            Err(format!(
                "{} of {} batches arrived",
                arrived.len(),
                sent.len()
            ))
        }
    })
    .await;
    // At least once: a retried hand-off may repeat a batch (mParticle drops it by its
    // source_request_id); every batch that arrived is whole.
    for batch in fake.accepted() {
        assert_eq!(batch["events"].as_array().map(Vec::len), Some(2));
    }
    let duplicates = fake.request_ids().len() - sent.len();
    eprintln!(
        "{} batches sent, all arrived, {duplicates} repeated",
        sent.len()
    );
    assert_eq!(fake.violations(), Vec::<String>::new());
}

/// mParticle enforces its rate limit per key, however many clients share the key: two delivery
/// processes, each counting the other through `delivery.peers`, send at most their share, so
/// a destination held at its limit answers no 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_delivery_processes_share_one_rate_limit_without_429s() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use common::{DESTINATION_KEY, DESTINATION_SECRET, Running, free_port};
    use delivery::testing::FakeMparticle;
    use schema::v1::RoutedBatch;

    // Each process sends requests of up to 100 batches: the key's one-second bucket must hold one
    // from each at once.
    const RATE: f64 = 400.0;
    const PER_CALL: usize = 25;
    const LOAD: Duration = Duration::from_secs(8);
    const WARM_UP: Duration = Duration::from_secs(1);
    let fake = FakeMparticle::start(DESTINATION_KEY, DESTINATION_SECRET).await;
    fake.set(|b| {
        b.rate_limit = Some(RATE);
        b.skip_schema = true;
    });
    let grpc = [free_port(), free_port()];
    let peers = format!("127.0.0.1:{},127.0.0.1:{}", grpc[0], grpc[1]);
    let dir = tempfile::tempdir().unwrap();
    let mut processes = Vec::new();
    let mut admins = Vec::new();
    for (i, port) in grpc.iter().enumerate() {
        let data = dir.path().join(format!("delivery-{i}"));
        let admin = free_port();
        admins.push(format!("http://127.0.0.1:{admin}/readyz"));
        let config = format!(
            r#"
            data_dir = "{data}"
            [listen]
            delivery = "127.0.0.1:{port}"
            delivery_admin = "127.0.0.1:{admin}"
            [delivery]
            peers = "{peers}"
            [[destinations]]
            id = "mp"
            kind = "mparticle"
            base_url = "{fake}"
            api_key = "{DESTINATION_KEY}"
            api_secret = "{DESTINATION_SECRET}"
            rate_limit = {RATE}
            "#,
            data = data.display(),
            fake = fake.base_url(),
        );
        let path = dir.path().join(format!("delivery-{i}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join(format!("delivery-{i}.log"))).unwrap();
        processes.push(Running(
            std::process::Command::new(env!("CARGO_BIN_EXE_mpconnect"))
                .args(["delivery", "--config", path.to_str().unwrap()])
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
    }
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), async || {
        for url in &admins {
            if !matches!(http.get(url).send().await, Ok(r) if r.status().is_success()) {
                return Err(format!("{url} never answered"));
            }
        }
        Ok(())
    })
    .await;

    // As the transform calls delivery: balanced over both processes.
    let addresses: Vec<std::net::SocketAddr> = grpc
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let client = transform::DeliveryClient::balanced(
        Arc::new(move || {
            let addresses = addresses.clone();
            Box::pin(async move { Ok(addresses) })
        }),
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    let offered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut senders = Vec::new();
    for task in 0..8 {
        let (client, offered) = (client.clone(), offered.clone());
        senders.push(tokio::spawn(async move {
            let template = schema::decode_batches(&schema::testing::bulk_request(task, false))
                .unwrap()
                .remove(0);
            let mut n = 0;
            while started.elapsed() < LOAD {
                let batches: Vec<RoutedBatch> = (0..PER_CALL)
                    .map(|i| {
                        let mut batch = template.clone();
                        batch.source_request_id = Some(format!("rate-{task}-{n}-{i}"));
                        RoutedBatch {
                            key: i.to_string(),
                            batch: Some(batch),
                            source: "web".into(),
                            connection: "web-to-mp".into(),
                            ..Default::default()
                        }
                    })
                    .collect();
                n += 1;
                if client.deliver("mp", batches).await.is_ok() {
                    offered.fetch_add(PER_CALL, Ordering::Relaxed);
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let requests = fake.requests();
    let after_warm_up: Vec<_> = requests
        .iter()
        .filter(|r| r.at.duration_since(started) > WARM_UP)
        .collect();
    let throttled = after_warm_up.iter().filter(|r| r.status == 429).count();
    let accepted: usize = requests
        .iter()
        .filter(|r| r.status == 202)
        .map(|r| r.batches)
        .sum();
    let offered = offered.load(Ordering::Relaxed);
    eprintln!(
        "{offered} batches offered in {LOAD:?}, {accepted} accepted at a limit of {RATE}/s, \
         {throttled} answered 429 after warm-up"
    );
    // The senders were held back by the limit (calls wait for their turn), so the destination
    // ran at its limit the whole time: the share is neither exceeded nor left unused.
    let limit_over_the_run = RATE * LOAD.as_secs_f64();
    assert!(
        accepted as f64 > 0.75 * limit_over_the_run,
        "sharing must not starve the destination: {accepted} batches in {LOAD:?}"
    );
    assert_eq!(
        throttled, 0,
        "no 429 once both processes counted each other"
    );
    assert_eq!(fake.violations(), Vec::<String>::new());
    drop(processes);
}

/// SQS settings that would strand data are refused at start, with what to change: a retry
/// queue with a RedrivePolicy would dead-letter a parked batch after a few retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_refuses_a_retry_queue_that_sqs_would_dead_letter_from() {
    let (sqs, s3) = runtime::testing::moto_clients().await;
    let dlq = sqs
        .create_queue()
        .queue_name(runtime::testing::unique("retry-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let retry = sqs
        .create_queue()
        .queue_name(runtime::testing::unique("retry"))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"5"}}"#),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let bucket = runtime::testing::unique("claims");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
        data_dir = "{data}"
        [listen]
        delivery = "127.0.0.1:{grpc}"
        delivery_admin = "127.0.0.1:{admin}"
        [queues]
        backend = "sqs"
        [store]
        backend = "s3"
        bucket = "{bucket}"
        [aws]
        region = "us-east-1"
        endpoint_url = "{moto}"
        [[destinations]]
        id = "archive"
        kind = "file"
        retry_queue = "{retry}"
        "#,
        data = dir.path().display(),
        grpc = common::free_port(),
        admin = common::free_port(),
        moto = runtime::testing::moto_endpoint(),
    );
    let path = dir.path().join("mpconnect.toml");
    std::fs::write(&path, config).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mpconnect"))
            .args(["delivery", "--config", path.to_str().unwrap()])
            .env("MPCONNECT_LOG_FORMAT", "text")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
    });
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("delivery started on a queue that would strand data")
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("has a RedrivePolicy (maxReceiveCount 5)"),
        "{stderr}"
    );
}
