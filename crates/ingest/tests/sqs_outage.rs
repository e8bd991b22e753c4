//! With SQS out of reach (the network to it cut by a proxy), ingest answers 503, takes the
//! same request once SQS is back, and no request that got 202 is missing from the queue.

mod common;

use std::collections::HashSet;

use common::*;
use runtime::AnyStore;
use runtime::queue::{SqsQueue, SqsSettings, sqs_stage_queue};
use runtime::store::LocalStore;

async fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(
        &runtime::testing::aws_config_for(endpoint, std::time::Duration::from_secs(3)).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_out_of_reach_gives_503_and_nothing_acknowledged_is_lost() {
    let moto = runtime::testing::moto_endpoint();
    let moto_addr = moto.trim_start_matches("http://").parse().unwrap();
    let direct = sqs_client(&moto).await;
    let name = runtime::testing::unique("ingest");
    direct
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap();
    direct
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap();

    let proxy = FaultProxy::start(moto_addr).await;
    let through_proxy = sqs_client(&format!("http://{}", proxy.addr)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::Local(LocalStore::new(dir.path()));
    let wrap = |q| sqs_stage_queue(q, &store);
    let queue = wrap(
        SqsQueue::connect(through_proxy.clone(), SqsSettings::new(&name))
            .await
            .unwrap(),
    );
    let dead_letter = wrap(
        SqsQueue::connect(through_proxy, SqsSettings::new(format!("{name}-dlq")))
            .await
            .unwrap(),
    );
    let server = start_with(settings(), queue, dead_letter, dir).await;

    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        assert_eq!(
            post("/v2/events", &server, batch_json(&id)).await.status(),
            202
        );
        acknowledged.push(id);
    }

    proxy.down().await;
    let during = post(
        "/v2/bulkevents",
        &server,
        format!("[{},{}]", batch_json("during-1"), batch_json("during-2")),
    )
    .await;
    assert_eq!(during.status(), 503);
    assert!(during.headers().contains_key("retry-after"));
    assert_eq!(
        error_body(during).await["errors"][0]["code"],
        "SERVICE_UNAVAILABLE"
    );
    assert_eq!(
        reqwest::get(server.url("/readyz")).await.unwrap().status(),
        200,
        "readiness is the pod's own: SQS trouble shows per request, not by emptying the Service"
    );

    proxy.up();
    // The sender's retry of the same request.
    let retry = post(
        "/v2/bulkevents",
        &server,
        format!("[{},{}]", batch_json("during-1"), batch_json("during-2")),
    )
    .await;
    assert_eq!(retry.status(), 202);
    acknowledged.extend(["during-1".to_owned(), "during-2".to_owned()]);
    assert_eq!(
        reqwest::get(server.url("/readyz")).await.unwrap().status(),
        200
    );

    // Read the queue directly, not through the proxy.
    let queue = wrap(
        SqsQueue::connect(direct, SqsSettings::new(&name))
            .await
            .unwrap(),
    );
    let queued: HashSet<String> = decode(&drain(&queue).await)
        .into_iter()
        .map(|b| b.source_request_id.unwrap())
        .collect();
    for id in &acknowledged {
        assert!(queued.contains(id), "{id} got 202 but is not in SQS");
    }
    server.stop().await;
}
