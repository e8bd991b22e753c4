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
