//! The three stages as three processes, as Kubernetes runs them: SQS queues and an S3 store on
//! moto, and a fake mParticle Events API as the destination.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use delivery::testing::FakeMparticle;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_transform_and_delivery_as_three_processes_deliver_every_event() {
    let moto = runtime::testing::moto_endpoint();
    let (sqs, s3) = runtime::testing::moto_clients().await;
    let mut urls = Vec::new();
    for name in ["ingest", "ingest-dlq", "retry-mp"] {
        let name = runtime::testing::unique(name);
        urls.push(
            sqs.create_queue()
                .queue_name(name)
                .send()
                .await
                .unwrap()
                .queue_url
                .unwrap(),
        );
    }
    let bucket = runtime::testing::unique("claims");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let fake = FakeMparticle::start("mp-key", "mp-secret").await;

    let dir = tempfile::tempdir().unwrap();
    let (ingest_port, delivery_port) = (free_port(), free_port());
    let config = format!(
        r#"
        data_dir = "{data}"
        [listen]
        ingest = "127.0.0.1:{ingest_port}"
        delivery = "127.0.0.1:{delivery_port}"
        transform_admin = "127.0.0.1:{transform_admin}"
        delivery_admin = "127.0.0.1:{delivery_admin}"
        [queues]
        backend = "sqs"
        ingest = "{ingest}"
        ingest_dead_letter = "{dlq}"
        [store]
        backend = "s3"
        bucket = "{bucket}"
        [aws]
        region = "us-east-1"
        endpoint_url = "{moto}"
        [transform]
        delivery_endpoint = "127.0.0.1:{delivery_port}"
        [[sources]]
        id = "web"
        kind = "http"
        api_key = "web-key"
        api_secret = {{ env = "WEB_SECRET" }}
        [[destinations]]
        id = "mp"
        kind = "mparticle"
        base_url = "{fake}"
        api_key = {{ env = "MP_KEY" }}
        api_secret = {{ file = "{secret_file}" }}
        retry_queue = "{retry}"
        [[connections]]
        id = "web-to-mp"
        source = "web"
        destinations = ["mp"]
        "#,
        data = dir.path().display(),
        transform_admin = free_port(),
        delivery_admin = free_port(),
        ingest = urls[0],
        dlq = urls[1],
        retry = urls[2],
        fake = fake.base_url(),
        secret_file = dir.path().join("mp-secret").display(),
    );
    std::fs::write(dir.path().join("mp-secret"), "mp-secret\n").unwrap();
    let config_path = dir.path().join("mpconnect.toml");
    std::fs::write(&config_path, config).unwrap();
    let start = |target: &str| {
        Running(
            Command::new(env!("CARGO_BIN_EXE_mpconnect"))
                .args([target, "--config", config_path.to_str().unwrap()])
                .env("WEB_SECRET", "web-secret")
                .env("MP_KEY", "mp-key")
                .env("MPCONNECT_LOG_FORMAT", "json")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _processes = [start("delivery"), start("transform"), start("ingest")];

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{ingest_port}/v2/bulkevents");
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
            .basic_auth("web-key", Some("web-secret"))
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let arrived: BTreeSet<String> = fake.request_ids().into_iter().collect();
        if arrived == sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} batches arrived",
            arrived.len(),
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
