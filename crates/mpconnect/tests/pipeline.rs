//! The stages together, wired as the binary wires them (`mpconnect::stages` from a
//! configuration): ingest → queue → transform → gRPC → a delivery peer, over both queue
//! backends (the embedded queue, and SQS and S3 on moto).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpconnect::config::{SecretsOf, parse};
use mpconnect::stages::{self, Shared};
use runtime::Queue;
use transform::DeliveryClient;
use transform::testing::Peer;

/// A configuration with one HTTP source, connected to a destination `mparticle` (played by a
/// delivery peer), over the queues that `queues` (a TOML fragment) names.
async fn shared(data_dir: &std::path::Path, queues: &str) -> Shared {
    let text = format!(
        r#"
        data_dir = {data_dir:?}
        {queues}
        [[sources]]
        id = "web"
        kind = "http"
        api_key = "k"
        api_secret = "s"
        [[destinations]]
        id = "mparticle"
        kind = "file"
        [[connections]]
        id = "web-to-mp"
        source = "web"
        destinations = ["mparticle"]
        [transform]
        pollers = 2
        "#,
        data_dir = data_dir.display().to_string()
    );
    let (config, mut problems) = parse(&text, []).unwrap();
    problems.extend(config.problems_for(SecretsOf::ALL));
    assert!(problems.is_empty(), "{problems:#?}");
    Shared::new(config).await.unwrap()
}

fn batch_json(request_id: &str, events: &str) -> String {
    format!(
        r#"{{"environment":"development","source_request_id":"{request_id}","events":[{events}]}}"#
    )
}

fn custom(name: &str, message_id: &str) -> String {
    format!(
        r#"{{"event_type":"custom_event","data":{{"event_name":"{name}","custom_event_type":"other","source_message_id":"{message_id}"}}}}"#
    )
}

async fn end_to_end(shared: &Shared) {
    let peer = Peer::start().await;
    let addrs = Arc::new(Mutex::new(vec![peer.addr]));
    let resolve: transform::Resolve = Arc::new(move || {
        let found = addrs.lock().unwrap().clone();
        Box::pin(async move { Ok(found) })
    });
    let client =
        DeliveryClient::balanced(resolve, Duration::from_millis(200), Duration::from_secs(5));
    let transform = stages::transform(shared, client).await.unwrap();
    let (stop_transform, transform_stopped) = tokio::sync::oneshot::channel::<()>();
    let t = transform.clone();
    let running = tokio::spawn(async move {
        t.run(async move {
            let _ = transform_stopped.await;
        })
        .await
    });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let ingest = stages::ingest(shared).await.unwrap().http;
    let (stop_ingest, ingest_stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        ingest
            .serve(listener, async move {
                let _ = ingest_stopped.await;
            })
            .await
    });

    let http = reqwest::Client::new();
    let mut expected = Vec::new();
    for r in 0..5 {
        let batches: Vec<String> = (0..10)
            .map(|b| {
                let id = format!("req-{r}-{b}");
                expected.push(id.clone());
                batch_json(
                    &id,
                    &[
                        custom("Play", &format!("{id}-e1")),
                        custom("Pause", &format!("{id}-e2")),
                    ]
                    .join(","),
                )
            })
            .collect();
        let response = http
            .post(format!("{base}/v2/bulkevents"))
            .basic_auth("k", Some("s"))
            .header("content-type", "application/json")
            .body(format!("[{}]", batches.join(",")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    peer.recorder
        .wait_for("mparticle", expected.len(), Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = peer.recorder.request_ids("mparticle");
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "every batch once");
    let events: usize = peer
        .recorder
        .batches("mparticle")
        .iter()
        .map(|b| b.events.len())
        .sum();
    assert_eq!(events, 100, "every event");
    let received = peer.recorder.received.lock().unwrap().clone();
    assert!(received.iter().all(|(_, b)| b.source == "web"
        && b.connection == "web-to-mp"
        && b.traceparent.starts_with("00-")));

    let _ = stop_transform.send(());
    running.await.unwrap();
    let _ = stop_ingest.send(());
    serving.await.unwrap().unwrap();
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_over_the_embedded_queue() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path(), "").await;
    end_to_end(&shared).await;
    let (queue, _) = shared.ingest_queues().await.unwrap();
    let depth = queue.depth().await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 0),
        "every message acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_over_sqs() {
    let (sqs, s3) = runtime::testing::moto_clients().await;
    let name = runtime::testing::unique("ingest");
    for queue in [name.clone(), format!("{name}-dlq")] {
        sqs.create_queue().queue_name(queue).send().await.unwrap();
    }
    let bucket = runtime::testing::unique("claims");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let queues = format!(
        r#"
        [queues]
        backend = "sqs"
        ingest = "{name}"
        ingest_dead_letter = "{name}-dlq"
        [store]
        backend = "s3"
        bucket = "{bucket}"
        [aws]
        region = "us-east-1"
        endpoint_url = "{}"
        "#,
        runtime::testing::moto_endpoint()
    );
    let shared = shared(dir.path(), &queues).await;
    end_to_end(&shared).await;
    let (queue, _) = shared.ingest_queues().await.unwrap();
    let depth = queue.depth().await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 0),
        "every message acknowledged"
    );
}
