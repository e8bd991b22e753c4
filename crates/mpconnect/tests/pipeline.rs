//! The stages together: ingest → queue → transform → gRPC → a delivery peer, over both queue
//! backends (the embedded queue, and SQS on moto).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use runtime::queue::{
    EmbeddedSync, SqsQueue, SqsSettings, embedded_stage_queue, local_data, sqs_stage_queue,
};
use runtime::store::LocalStore;
use runtime::{AnyStore, Queue, ReceiveOptions, StageQueue};
use transform::testing::Peer;
use transform::{Connection, DeliveryClient, Rules, Transform, TransformSettings};

fn settings() -> TransformSettings {
    TransformSettings {
        connections: vec![Connection {
            id: "web-to-mp".into(),
            source: "web".into(),
            destinations: vec!["mparticle".into()],
            rules: Rules::default(),
        }],
        receive: ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_millis(200),
            visibility: Duration::from_secs(10),
        },
        retry_min: Duration::from_millis(200),
        retry_max: Duration::from_secs(1),
        ..TransformSettings::default()
    }
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

async fn end_to_end(queue: StageQueue, dead_letter: StageQueue) {
    let peer = Peer::start().await;
    let addrs = Arc::new(Mutex::new(vec![peer.addr]));
    let resolve: transform::Resolve = Arc::new(move || {
        let found = addrs.lock().unwrap().clone();
        Box::pin(async move { Ok(found) })
    });
    let client =
        DeliveryClient::balanced(resolve, Duration::from_millis(200), Duration::from_secs(5));
    let transform =
        Transform::new(settings(), queue.clone(), Some(dead_letter.clone()), client).unwrap();
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
    let ingest_settings = ingest::IngestSettings {
        sources: vec![ingest::HttpSource {
            id: "web".into(),
            api_key: runtime::Secret::new("k"),
            api_secret: runtime::Secret::new("s"),
        }],
        ..Default::default()
    };
    let ingest = ingest::Ingest::new(ingest_settings, queue, Some(dead_letter));
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
    let (db, store) = local_data(dir.path(), EmbeddedSync::Normal).unwrap();
    let queue = embedded_stage_queue(&db, "ingest", &store);
    let dead_letter = embedded_stage_queue(&db, "ingest-dlq", &store);
    end_to_end(queue.clone(), dead_letter).await;
    let depth = queue.depth().await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 0),
        "every message acknowledged"
    );
}

async fn sqs_queues() -> (StageQueue, StageQueue, tempfile::TempDir) {
    let (sqs, _) = runtime::testing::moto_clients().await;
    let name = runtime::testing::unique("ingest");
    sqs.create_queue().queue_name(&name).send().await.unwrap();
    sqs.create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::Local(LocalStore::new(dir.path()));
    let queue = SqsQueue::connect(sqs.clone(), SqsSettings::new(&name))
        .await
        .unwrap();
    let dlq = SqsQueue::connect(sqs, SqsSettings::new(format!("{name}-dlq")))
        .await
        .unwrap();
    (
        sqs_stage_queue(queue, &store),
        sqs_stage_queue(dlq, &store),
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_over_sqs() {
    let (queue, dlq, _dir) = sqs_queues().await;
    end_to_end(queue.clone(), dlq).await;
    let depth = queue.depth().await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 0),
        "every message acknowledged"
    );
}
