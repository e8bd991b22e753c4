//! SQS limits enforced on our side: moto accepts oversized messages, real SQS does not.

mod common;

use std::time::Duration;

use mpconnect_runtime::queue::{SqsQueue, SqsSettings};
use mpconnect_runtime::{Message, Queue, QueueError, ReceiveOptions};

async fn queue() -> SqsQueue {
    let (config, _) = common::aws().await;
    let client = mpconnect_runtime::aws::sqs_client(&config);
    let name = common::unique("limits");
    client
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap();
    SqsQueue::connect(client, SqsSettings::new(name))
        .await
        .unwrap()
}

#[tokio::test]
async fn oversized_messages_are_refused_before_sending() {
    let q = queue().await;
    let err = q
        .send(vec![Message::new(vec![b'x'; 300 * 1024])])
        .await
        .unwrap_err();
    assert!(
        matches!(err, QueueError::Rejected(ref m) if m.contains("claim check")),
        "{err}"
    );
    assert_eq!(q.depth().await.unwrap().visible, 0, "nothing half-sent");
}

/// SQS takes ten message attributes; the stages add theirs along the way (an S3-sourced
/// message with a route, then a dead-letter reason). More than ten travel packed in one, and
/// come back as they were sent.
#[tokio::test]
async fn more_attributes_than_sqs_takes_travel_packed() {
    let (config, _) = common::aws().await;
    let client = mpconnect_runtime::aws::sqs_client(&config);
    let name = common::unique("attributes");
    let url = client
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let q = SqsQueue::connect(client.clone(), SqsSettings::new(&name))
        .await
        .unwrap();
    let mut twelve = Message::new(vec![0u8, 255, 1]);
    for i in 0..12 {
        twelve = twelve.with_attribute(&format!("a{i}"), format!("value {i}"));
    }
    q.send(vec![twelve.clone()]).await.unwrap();
    // On the wire: within SQS's limit.
    let raw = client
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .visibility_timeout(0)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let raw = &raw.messages.unwrap()[0];
    assert!(raw.message_attributes.as_ref().unwrap().len() <= 10);
    // Through the queue: every attribute as sent, and the body.
    let got = q
        .receive(ReceiveOptions {
            max_messages: 1,
            wait: Duration::from_secs(1),
            visibility: Duration::from_secs(30),
        })
        .await
        .unwrap();
    assert_eq!(got[0].attributes, twelve.attributes);
    assert_eq!(&got[0].body[..], &[0u8, 255, 1]);
}

#[tokio::test]
async fn large_batches_are_split_by_bytes_and_binary_bodies_survive() {
    let q = queue().await;
    // Ten 100 KiB messages: one call of ten would be 1 MB; they go in calls under 256 KiB.
    let messages: Vec<Message> = (0..10u8)
        .map(|i| Message::new(vec![i; 100 * 1024]))
        .collect();
    q.send(messages).await.unwrap();
    // A body SQS cannot carry as text travels base64-encoded and comes back as bytes.
    q.send(vec![Message::new(vec![0u8, 159, 146, 150, 255])])
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        if got.len() == 11 {
            break;
        }
        got.extend(
            q.receive(ReceiveOptions {
                max_messages: 10,
                wait: Duration::from_secs(1),
                visibility: Duration::from_secs(30),
            })
            .await
            .unwrap(),
        );
    }
    assert_eq!(got.len(), 11);
    assert!(
        got.iter()
            .any(|m| m.body.as_ref() == [0u8, 159, 146, 150, 255])
    );
    assert!(
        got.iter()
            .all(|m| !m.attributes.contains_key("mp-body-encoding"))
    );
    for i in 0..10u8 {
        assert!(
            got.iter()
                .any(|m| m.body.len() == 100 * 1024 && m.body[0] == i)
        );
    }
}

#[tokio::test]
async fn a_missing_queue_is_a_configuration_error() {
    let (config, _) = common::aws().await;
    let client = mpconnect_runtime::aws::sqs_client(&config);
    let err = SqsQueue::connect(client, SqsSettings::new(common::unique("absent")))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, QueueError::Config(_)), "{err}");
}
