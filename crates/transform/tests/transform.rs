//! The transform stage against real queues and a real gRPC peer.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mpconnect_transform::{Rules, Transform, TransformSettings};
use runtime::queue::{SqsQueue, SqsSettings, sqs_stage_queue};
use runtime::store::LocalStore;
use runtime::{AnyStore, Queue, ReceiveOptions, StageQueue};
use schema::v1::Environment;

// ---------------------------------------------------------------------------------------------
// Rules, one kind each.

/// Runs `messages` through one connection with `rules` and returns what the destination got.
async fn through(rules: Rules, batches: &[String]) -> Vec<schema::v1::Batch> {
    through_queued_by(message, rules, batches).await
}

/// As [`through`], with each batch queued by `queued` (decoded, or in its pass-through form).
async fn through_queued_by(
    queued: fn(&str, &str) -> runtime::Message,
    rules: Rules,
    batches: &[String],
) -> Vec<schema::v1::Batch> {
    let q = embedded();
    let peer = Peer::start().await;
    let transform = Transform::new(
        settings(vec![connection("c", "web", &["dest"], rules)]),
        q.queue.clone(),
        Some(q.dead_letter.clone()),
        client(vec![peer.addr]),
    )
    .unwrap();
    q.queue
        .send(batches.iter().map(|b| queued("web", b)).collect())
        .await
        .unwrap();
    while transform.poll_once().await.unwrap() > 0 {}
    let got = peer.recorder.batches("dest");
    peer.stop().await;
    got
}

fn mixed(id: &str) -> String {
    batch_json(
        id,
        &[
            custom("Play", &format!("{id}-1")),
            custom("Pause", &format!("{id}-2")),
            r#"{"event_type":"screen_view","data":{"screen_name":"Home"}}"#.into(),
        ]
        .join(","),
    )
}

fn names(batches: &[schema::v1::Batch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| &b.events)
        .map(|e| {
            let kind = e.kind.as_ref().unwrap();
            mpconnect_transform::rules::event_name(kind)
                .unwrap_or(schema::json::event_type_name(kind))
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn rule_filter_by_event_type() {
    let got = through(
        Rules {
            allow_event_types: vec!["screen_view".into()],
            ..Rules::default()
        },
        &[mixed("a")],
    )
    .await;
    assert_eq!(names(&got), ["Home"]);
    let got = through(
        Rules {
            deny_event_types: vec!["screen_view".into()],
            ..Rules::default()
        },
        &[mixed("a")],
    )
    .await;
    assert_eq!(names(&got), ["Play", "Pause"]);
}

#[tokio::test]
async fn rule_filter_by_event_name() {
    let got = through(
        Rules {
            allow_event_names: vec!["Play".into()],
            ..Rules::default()
        },
        &[mixed("a")],
    )
    .await;
    assert_eq!(
        names(&got),
        ["Play"],
        "the screen view's name is Home, not allowed"
    );
    let got = through(
        Rules {
            deny_event_names: vec!["Pause".into()],
            ..Rules::default()
        },
        &[mixed("a")],
    )
    .await;
    assert_eq!(names(&got), ["Play", "Home"]);
    // Nothing left: nothing sent.
    let got = through(
        Rules {
            allow_event_names: vec!["Stop".into()],
            ..Rules::default()
        },
        &[mixed("a")],
    )
    .await;
    assert!(got.is_empty());
}

#[tokio::test]
async fn rule_rename_and_drop_custom_attributes() {
    let rules = Rules {
        rename_attributes: [("old".to_owned(), "new".to_owned())].into(),
        drop_attributes: vec!["drop".into()],
        ..Rules::default()
    };
    let got = through(rules, &[mixed("a")]).await;
    let keys: Vec<_> = got[0].events[0]
        .custom_attributes
        .as_ref()
        .unwrap()
        .values
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, ["keep", "new"]);
}

#[tokio::test]
async fn rule_rename_and_drop_user_attributes() {
    let json = r#"{"environment":"development","user_attributes":{"$firstname":"Ada","ssn":"x","tier":"gold"},"events":[]}"#;
    let rules = Rules {
        rename_user_attributes: [("tier".to_owned(), "level".to_owned())].into(),
        drop_user_attributes: vec!["ssn".into()],
        ..Rules::default()
    };
    let got = through(rules, &[json.to_owned()]).await;
    let keys: Vec<_> = got[0]
        .user_attributes
        .as_ref()
        .unwrap()
        .values
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        ["$firstname", "level"],
        "a batch without events still goes: it carries user attributes"
    );
}

#[tokio::test]
async fn rule_hash_user_identities() {
    let json = r#"{"environment":"development","user_identities":{"email":" Ada@Example.com","customer_id":"c-1"},"events":[]}"#;
    let got = through(
        Rules {
            hash_identities: true,
            ..Rules::default()
        },
        &[json.to_owned()],
    )
    .await;
    let ids: BTreeMap<_, _> = got[0]
        .user_identities
        .as_ref()
        .unwrap()
        .values
        .iter()
        .map(|i| {
            (
                i.identity_type.clone().unwrap(),
                i.identity.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids["email"],
        mpconnect_transform::rules::hash_value("email", "ada@example.com")
    );
    assert_eq!(
        ids["customer_id"],
        mpconnect_transform::rules::hash_value("customer_id", "c-1")
    );
    assert_eq!(ids["email"].len(), 64);
}

#[tokio::test]
async fn rule_set_environment() {
    let got = through(
        Rules {
            set_environment: Some(Environment::Production),
            ..Rules::default()
        },
        &[mixed("a")],
    )
    .await;
    assert_eq!(got[0].environment(), Environment::Production);
}

#[tokio::test]
async fn rule_drop_repeats_by_source_message_id() {
    // The same events again in another batch (a sender's retry): dropped.
    let first = mixed("a");
    let again = batch_json(
        "b",
        &[custom("Play", "a-1"), custom("New", "b-9")].join(","),
    );
    let got = through(Rules::default(), &[first, again]).await;
    assert_eq!(names(&got), ["Play", "Pause", "Home", "New"]);
}

/// Two connections from one source to one destination each deliver their own copy (each
/// with its own rules): the second is not a repeat of the first.
#[tokio::test]
async fn two_connections_to_one_destination_each_deliver() {
    let q = embedded();
    let peer = Peer::start().await;
    let transform = Transform::new(
        settings(vec![
            connection("everything", "web", &["dest"], Rules::default()),
            connection("also", "web", &["dest"], Rules::default()),
        ]),
        q.queue.clone(),
        Some(q.dead_letter.clone()),
        client(vec![peer.addr]),
    )
    .unwrap();
    q.queue
        .send(vec![message("web", &mixed("twice"))])
        .await
        .unwrap();
    while transform.poll_once().await.unwrap() > 0 {}
    let batches = peer.recorder.batches("dest");
    assert_eq!(batches.len(), 2, "one per connection");
    assert!(
        batches.iter().all(|b| b.events.len() == 3),
        "every event in each"
    );
    peer.stop().await;
}

/// A batch the destination refused (dead-lettered) was never taken: the sender's corrected
/// re-send, with the same ids, inside the window, is delivered, not dropped as a repeat.
#[tokio::test]
async fn a_corrected_resend_of_a_dead_lettered_batch_is_delivered() {
    let q = embedded();
    let peer = Peer::start().await;
    let transform = Transform::new(
        settings(vec![connection("c", "web", &["dest"], Rules::default())]),
        q.queue.clone(),
        Some(q.dead_letter.clone()),
        client(vec![peer.addr]),
    )
    .unwrap();
    peer.recorder
        .dead_lettering
        .lock()
        .unwrap()
        .insert("dest".into());
    q.queue
        .send(vec![message("web", &mixed("fixed-later"))])
        .await
        .unwrap();
    while transform.poll_once().await.unwrap() > 0 {}
    assert!(peer.recorder.request_ids("dest").is_empty());
    peer.recorder.dead_lettering.lock().unwrap().clear();
    q.queue
        .send(vec![message("web", &mixed("fixed-later"))])
        .await
        .unwrap();
    while transform.poll_once().await.unwrap() > 0 {}
    assert_eq!(peer.recorder.request_ids("dest"), ["fixed-later"]);
    let events = &peer.recorder.batches("dest")[0].events;
    assert_eq!(events.len(), 3, "its events are not repeats either");
    peer.stop().await;
}

/// As [`through`], with each batch queued in its pass-through form, as ingest does.
async fn through_as_sent(rules: Rules, batches: &[String]) -> Vec<schema::v1::Batch> {
    through_queued_by(pass_through_message, rules, batches).await
}

#[tokio::test]
async fn a_pass_through_batch_nothing_changes_reaches_delivery_as_sent() {
    let sent = mixed("a");
    let got = through_as_sent(Rules::default(), std::slice::from_ref(&sent)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].inbound_json, sent.as_bytes(), "the sender's bytes");
    assert_eq!(got[0].events.len(), 3);
    let mut full = got[0].clone();
    schema::materialize(&mut full).unwrap();
    assert_eq!(names(&[full]), ["Play", "Pause", "Home"]);
}

/// By default a round takes two ingest requests' worth of batches (rows of ten on the embedded
/// queue) and hands them to delivery in one call: one mParticle request of 20 typical batches,
/// where rounds of ten (SQS's cap) made twice as many half-full ones.
#[tokio::test]
async fn a_round_hands_delivery_twenty_batches_in_one_call() {
    let q = embedded();
    let peer = Peer::start().await;
    let mut s = settings(vec![connection("c", "web", &["dest"], Rules::default())]);
    s.receive.max_messages = TransformSettings::default().receive.max_messages;
    let transform = Transform::new(
        s,
        q.queue.clone(),
        Some(q.dead_letter.clone()),
        client(vec![peer.addr]),
    )
    .unwrap();
    for request in 0..3 {
        let batches = (0..10)
            .map(|i| pass_through_message("web", &mixed(&format!("r{request}-{i}"))))
            .collect();
        q.queue.send(batches).await.unwrap();
    }
    assert_eq!(transform.poll_once().await.unwrap(), 20);
    assert_eq!(
        peer.recorder
            .calls
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let ids = peer.recorder.request_ids("dest");
    let expected: Vec<String> = (0..2)
        .flat_map(|r| (0..10).map(move |i| format!("r{r}-{i}")))
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(transform.poll_once().await.unwrap(), 10);
    peer.stop().await;
}

#[tokio::test]
async fn a_pass_through_batch_with_repeats_goes_in_full_without_them() {
    let again = batch_json(
        "b",
        &[custom("Play", "a-1"), custom("New", "b-9")].join(","),
    );
    let got = through_as_sent(Rules::default(), &[mixed("a"), again]).await;
    assert_eq!(got.len(), 2);
    assert!(schema::is_pass_through(&got[0]));
    assert!(
        !schema::is_pass_through(&got[1]),
        "its bytes hold the repeat: it is read and sent in full"
    );
    assert_eq!(names(&got[1..]), ["New"]);
}

#[tokio::test]
async fn rules_apply_to_a_pass_through_batch() {
    let rules = Rules {
        deny_event_names: vec!["Pause".into()],
        set_environment: Some(Environment::Production),
        ..Rules::default()
    };
    let got = through_as_sent(rules, &[mixed("a")]).await;
    assert_eq!(got.len(), 1);
    assert!(!schema::is_pass_through(&got[0]));
    assert_eq!(names(&got), ["Play", "Home"]);
    assert_eq!(got[0].environment(), Environment::Production);
}

#[tokio::test]
async fn invalid_rules_are_refused_at_start_with_every_problem() {
    let q = embedded();
    let bad = vec![
        connection(
            "c",
            "web",
            &[],
            Rules {
                allow_event_types: vec!["clicks".into()],
                ..Rules::default()
            },
        ),
        connection("c", "web", &["d"], Rules::default()),
    ];
    let problems = Transform::new(settings(bad), q.queue.clone(), None, client(vec![]))
        .err()
        .unwrap();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("connections[0] (c): no destinations"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("\"clicks\" is not an mParticle event type"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p == "connections[1] (c): the id is used twice")
    );
}

// ---------------------------------------------------------------------------------------------
// Failures.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_down_for_a_while_loses_nothing() {
    // The queue dead-letters a message received more than twice, as SQS with a RedrivePolicy
    // and mpconnect's own `queues.max_receives` do: an outage must not count toward it.
    let q = embedded_dead_lettering_after(2);
    // Reserve an address, then leave it closed: delivery is down.
    let reserved = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let transform = Transform::new(
        settings(vec![connection("c", "web", &["dest"], Rules::default())]),
        q.queue.clone(),
        Some(q.dead_letter.clone()),
        client(vec![addr]),
    )
    .unwrap();
    let running = run(transform.clone());
    q.queue
        .send(
            (0..20)
                .map(|i| message("web", &mixed(&format!("r{i}"))))
                .collect(),
        )
        .await
        .unwrap();
    // Long enough for several rounds of retries (the test settings back off 200 ms to 1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    // A retry sends its fresh copy before it acknowledges the original, so a read between
    // the two counts that message twice: the queue holds exactly the 20 once a round is over.
    let held = || async {
        let depth = q.queue.depth().await.unwrap();
        depth.visible + depth.in_flight + depth.delayed
    };
    let mut total = held().await;
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while total != 20 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
        total = held().await;
    }
    assert_eq!(total, 20, "all still in the queue, each once");
    assert_eq!(
        q.dead_letter.depth().await.unwrap().visible,
        0,
        "nothing dead-lettered during the outage"
    );
    assert!(
        transform
            .stats()
            .requeued
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 40,
        "each retried by a fresh copy, several times"
    );

    let peer = Peer::start_at(addr, Recorder::default()).await;
    peer.recorder
        .wait_for("dest", 20, Duration::from_secs(30))
        .await;
    let mut ids = peer.recorder.request_ids("dest");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    assert_eq!(
        q.dead_letter.depth().await.unwrap().visible,
        0,
        "good data dead-lettered for an outage of delivery"
    );
    running.stop().await;
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_with_one_destination_failing() {
    let q = embedded();
    let peer = Peer::start().await;
    peer.recorder.fail("sick", true);
    let transform = Transform::new(
        settings(vec![connection(
            "c",
            "web",
            &["healthy", "sick"],
            Rules::default(),
        )]),
        q.queue.clone(),
        Some(q.dead_letter.clone()),
        client(vec![peer.addr]),
    )
    .unwrap();
    let running = run(transform.clone());
    q.queue
        .send(
            (0..15)
                .map(|i| message("web", &mixed(&format!("r{i}"))))
                .collect(),
        )
        .await
        .unwrap();
    peer.recorder
        .wait_for("healthy", 15, Duration::from_secs(20))
        .await;
    // The sick one is retried several times meanwhile; the healthy one must not see repeats.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        peer.recorder.request_ids("healthy").len(),
        15,
        "the healthy destination got each batch exactly once"
    );
    assert!(peer.recorder.request_ids("sick").is_empty());
    assert!(
        transform
            .stats()
            .requeued
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    peer.recorder.fail("sick", false);
    peer.recorder
        .wait_for("sick", 15, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sick = peer.recorder.request_ids("sick");
    sick.sort();
    sick.dedup();
    assert_eq!(
        sick.len(),
        15,
        "the failing destination got every batch after it recovered"
    );
    assert_eq!(
        peer.recorder.request_ids("healthy").len(),
        15,
        "still exactly once"
    );
    running.stop().await;
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_does_not_reach_the_destination_twice() {
    // SQS behind a proxy; the network to it is cut right after delivery answers, so the
    // transform's ack cannot go through and the message comes back.
    let endpoint = runtime::testing::moto_endpoint();
    let proxy = Arc::new(
        runtime::testing::FaultProxy::start(
            endpoint.trim_start_matches("http://").parse().unwrap(),
        )
        .await,
    );
    let config =
        runtime::testing::aws_config_for(&format!("http://{}", proxy.addr), Duration::from_secs(2))
            .await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let name = runtime::testing::unique("redeliver");
    sqs.create_queue().queue_name(&name).send().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::Local(LocalStore::new(dir.path()));
    let queue: StageQueue = sqs_stage_queue(
        SqsQueue::connect(sqs, SqsSettings::new(&name))
            .await
            .unwrap(),
        &store,
    );

    let peer = Peer::start().await;
    let (cut, cut_rx) = std::sync::mpsc::channel::<()>();
    let (was_cut, was_cut_rx) = std::sync::mpsc::channel::<()>();
    let was_cut_rx = std::sync::Mutex::new(was_cut_rx);
    // Delivery answers only once the network is down, so the ack surely finds it cut (a
    // loaded machine could otherwise ack before the cut lands).
    *peer.recorder.on_call.lock().unwrap() = Some(Box::new(move || {
        let _ = cut.send(());
        let _ = was_cut_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10));
    }));
    let mut s = settings(vec![connection("c", "web", &["dest"], Rules::default())]);
    s.receive = ReceiveOptions {
        max_messages: 10,
        wait: Duration::from_secs(1),
        visibility: Duration::from_secs(2),
    };
    let transform = Transform::new(s, queue.clone(), None, client(vec![peer.addr])).unwrap();
    // No source_request_id and no source_message_id: only the queue message's own id can tell.
    queue
        .send(vec![message(
            "web",
            r#"{"environment":"development","events":[{"event_type":"session_start","data":{}}]}"#,
        )])
        .await
        .unwrap();

    let running = run(transform.clone());
    let proxy_for_cut = proxy.clone();
    let cutter = tokio::spawn(async move {
        tokio::task::spawn_blocking(move || cut_rx.recv())
            .await
            .unwrap()
            .unwrap();
        proxy_for_cut.down().await;
        let _ = was_cut.send(());
    });
    cutter.await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await; // the ack fails; the visibility runs out
    proxy.up();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while transform
        .stats()
        .messages
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the message never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        peer.recorder.received.lock().unwrap().len(),
        1,
        "delivered once, though received twice"
    );
    assert!(
        transform
            .stats()
            .events_deduplicated
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    let depth = queue.depth().await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 0),
        "and acknowledged the second time"
    );
    running.stop().await;
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_nothing_can_be_done_with_go_to_the_dead_letter_queue() {
    let q = embedded();
    let peer = Peer::start().await;
    let transform = Transform::new(
        settings(vec![connection("c", "web", &["unknown"], Rules::default())]),
        q.queue.clone(),
        Some(q.dead_letter.clone()),
        client(vec![peer.addr]),
    )
    .unwrap();
    q.queue
        .send(vec![
            message("web", &mixed("to-unknown")),
            message("nobody", &mixed("unrouted")),
            runtime::Message::new(&b"\xff\xff not protobuf"[..])
                .with_attribute(runtime::envelope::attr::SOURCE, "web"),
            // A claim-checked body that is gone: no data, never an empty batch.
            runtime::Message::new(Vec::new())
                .with_attribute(runtime::envelope::attr::SOURCE, "web")
                .with_attribute(runtime::envelope::attr::CLAIM_CHECK, "claims/gone"),
        ])
        .await
        .unwrap();
    while transform.poll_once().await.unwrap() > 0 {}
    let dead = q
        .dead_letter
        .receive(ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_millis(500),
            visibility: Duration::from_secs(30),
        })
        .await
        .unwrap();
    let mut reasons: Vec<_> = dead
        .iter()
        .map(|m| m.attributes["mp-rejected-because"].to_owned())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert_eq!(
        reasons[0], "its claim-checked body claims/gone is missing",
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("no connection takes source \"nobody\""),
        "{reasons:?}"
    );
    assert!(
        reasons[2].starts_with("not a protobuf batch"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].starts_with("unknown: ") && reasons[3].ends_with("no such destination"),
        "{reasons:?}"
    );
    let depth = q.queue.depth().await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight, depth.delayed),
        (0, 0, 0),
        "none left circling"
    );
    peer.stop().await;
}

/// A refused route is acknowledged only once its copy is in the dead-letter queue: while the
/// copy cannot be made (its disk full), the message stays, and it is dead-lettered once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_never_acknowledged_before_its_dead_letter_copy_is_made() {
    let q = embedded();
    let dlq_dir = tempfile::tempdir().unwrap();
    let (dlq_db, dlq_store) =
        runtime::queue::local_data(dlq_dir.path(), runtime::queue::EmbeddedSync::Normal).unwrap();
    let dead_letter = runtime::queue::embedded_stage_queue(&dlq_db, "ingest-dlq", &dlq_store);
    dlq_db.set_max_size(Some(0)).await.unwrap();
    // Filled to the last page: no copy fits.
    while dead_letter
        .send(vec![runtime::Message::new(vec![b'x'; 512])])
        .await
        .is_ok()
    {}
    let peer = Peer::start().await;
    let transform = Transform::new(
        settings(vec![connection("c", "web", &["unknown"], Rules::default())]),
        q.queue.clone(),
        Some(dead_letter.clone()),
        client(vec![peer.addr]),
    )
    .unwrap();
    q.queue
        .send(vec![message("web", &mixed("refused-while-full"))])
        .await
        .unwrap();
    assert_eq!(transform.poll_once().await.unwrap(), 1);
    let depth = q.queue.depth().await.unwrap();
    assert_eq!(
        depth.visible + depth.in_flight + depth.delayed,
        1,
        "the refused message was acknowledged though its dead-letter copy failed"
    );

    dlq_db.set_max_size(None).await.unwrap();
    let mut copied = Vec::new();
    for _ in 0..100 {
        transform.poll_once().await.unwrap();
        copied = dead_letter
            .receive(ReceiveOptions {
                max_messages: 10,
                wait: Duration::from_millis(100),
                visibility: Duration::from_secs(30),
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.attributes.contains_key("mp-rejected-because"))
            .collect();
        if !copied.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(copied.len(), 1, "dead-lettered once the copy could be made");
    let depth = q.queue.depth().await.unwrap();
    assert_eq!(depth.visible + depth.in_flight + depth.delayed, 0);
    peer.stop().await;
}

/// A panic in a round (here delivery's service, called in-process as in `mpconnect all`) is
/// contained: the poller goes on to the next messages, and what the round held comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_round_does_not_stop_the_poller() {
    let q = embedded();
    let recorder = mpconnect_transform::testing::Recorder::default();
    let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = panicked.clone();
    *recorder.on_call.lock().unwrap() = Some(Box::new(move || {
        if !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("a bug met on the first call");
        }
    }));
    let transform = Transform::new(
        mpconnect_transform::TransformSettings {
            pollers: 1,
            ..settings(vec![connection("c", "web", &["dest"], Rules::default())])
        },
        q.queue.clone(),
        Some(q.dead_letter.clone()),
        mpconnect_transform::DeliveryClient::in_process(
            Arc::new(recorder.clone()),
            Duration::from_secs(10),
        ),
    )
    .unwrap();
    let running = run(transform);
    q.queue
        .send(vec![message("web", &mixed("first"))])
        .await
        .unwrap();
    recorder.wait_for("dest", 1, Duration::from_secs(10)).await;
    assert!(panicked.load(std::sync::atomic::Ordering::SeqCst));
    q.queue
        .send(vec![message("web", &mixed("second"))])
        .await
        .unwrap();
    // The second, and the first again once its visibility (3 s) ran out.
    recorder.wait_for("dest", 3, Duration::from_secs(20)).await;
    let ids: std::collections::BTreeSet<String> =
        recorder.request_ids("dest").into_iter().collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Balancing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_delivery_pod_and_follow_them() {
    let q = embedded();
    let recorder = Recorder::default();
    let a = Peer::start_at("127.0.0.1:0".parse().unwrap(), recorder.clone()).await;
    let b = Peer::start_at(
        "127.0.0.1:0".parse().unwrap(),
        Recorder {
            received: recorder.received.clone(),
            ..Recorder::default()
        },
    )
    .await;
    let endpoints = Arc::new(Mutex::new(vec![a.addr, b.addr]));
    let client = mpconnect_transform::DeliveryClient::balanced(
        fixed(endpoints.clone()),
        Duration::from_millis(100),
        Duration::from_secs(5),
    );
    let mut s = settings(vec![connection("c", "web", &["dest"], Rules::default())]);
    s.receive.max_messages = 1; // one call per message, so there are many calls to spread
    let transform =
        Transform::new(s, q.queue.clone(), Some(q.dead_letter.clone()), client).unwrap();
    let running = run(transform);
    q.queue
        .send(
            (0..40)
                .map(|i| message("web", &mixed(&format!("r{i}"))))
                .collect(),
        )
        .await
        .unwrap();
    recorder.wait_for("dest", 40, Duration::from_secs(30)).await;
    let (calls_a, calls_b) = (
        a.recorder.calls.load(std::sync::atomic::Ordering::Relaxed),
        b.recorder.calls.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        calls_a > 0 && calls_b > 0,
        "both pods got calls: {calls_a} and {calls_b}"
    );

    // One pod goes away (and out of DNS): nothing is lost.
    b.stop().await;
    *endpoints.lock().unwrap() = vec![a.addr];
    q.queue
        .send(
            (40..80)
                .map(|i| message("web", &mixed(&format!("r{i}"))))
                .collect(),
        )
        .await
        .unwrap();
    recorder.wait_for("dest", 80, Duration::from_secs(60)).await;
    let mut ids = recorder.request_ids("dest");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 80);
    running.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn the_dns_resolver_finds_a_name_s_addresses() {
    let resolve = mpconnect_transform::client::dns("localhost", 50051);
    let found = resolve().await.unwrap();
    assert!(
        found
            .iter()
            .any(|a| a.port() == 50051 && a.ip().is_loopback()),
        "{found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_messages_in_hand() {
    let q = embedded();
    let peer = Peer::start().await;
    // Delivery takes a while to answer; shutdown is asked for meanwhile.
    *peer.recorder.on_call.lock().unwrap() =
        Some(Box::new(|| std::thread::sleep(Duration::from_millis(800))));
    let transform = Transform::new(
        settings(vec![connection("c", "web", &["dest"], Rules::default())]),
        q.queue.clone(),
        None,
        client(vec![peer.addr]),
    )
    .unwrap();
    q.queue
        .send(vec![message("web", &mixed("slow"))])
        .await
        .unwrap();
    let running = run(transform.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while peer
        .recorder
        .calls
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await; // returns only once the round in hand is settled
    assert_eq!(
        transform
            .stats()
            .acked
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let depth = q.queue.depth().await.unwrap();
    assert_eq!((depth.visible, depth.in_flight), (0, 0));
    peer.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Repeats across a restart, copies in flight at once, stuck pollers.

fn in_process(recorder: &Recorder) -> mpconnect_transform::DeliveryClient {
    mpconnect_transform::DeliveryClient::in_process(
        Arc::new(recorder.clone()),
        Duration::from_secs(10),
    )
}

/// A sender's re-send after a crash (the same `source_request_id`, a new queue message) is not
/// delivered again by the transform that starts next: the window is read back from its
/// directory. In memory only, the second process would send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedupe_window_survives_a_restart() {
    let q = embedded();
    let window = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let start = || {
        let mut s = settings(vec![connection("c", "web", &["dest"], Rules::default())]);
        s.dedupe.dir = Some(window.path().to_owned());
        Transform::new(s, q.queue.clone(), None, in_process(&recorder)).unwrap()
    };
    let first = run(start());
    q.queue
        .send(vec![message("web", &mixed("before-the-crash"))])
        .await
        .unwrap();
    recorder.wait_for("dest", 1, Duration::from_secs(10)).await;
    first.stop().await;

    let second = start();
    let running = run(second.clone());
    q.queue
        .send(vec![message("web", &mixed("before-the-crash"))])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while second
        .stats()
        .acked
        .load(std::sync::atomic::Ordering::Relaxed)
        < 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the re-send was never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    assert_eq!(
        recorder.request_ids("dest"),
        vec!["before-the-crash".to_owned()],
        "delivered once across the restart"
    );
}

/// Two copies of one batch taken by two pollers at once (a re-send queued beside the first):
/// the second waits for the first's outcome instead of going out beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_in_flight_at_once_are_delivered_once() {
    let q = embedded();
    let recorder = Recorder::default();
    // Delivery is slow, so both copies are surely in flight together.
    *recorder.on_call.lock().unwrap() = Some(Box::new(|| {
        std::thread::sleep(Duration::from_millis(500));
    }));
    let mut s = settings(vec![connection("c", "web", &["dest"], Rules::default())]);
    s.pollers = 2;
    s.receive.max_messages = 1;
    let transform = Transform::new(s, q.queue.clone(), None, in_process(&recorder)).unwrap();
    q.queue
        .send(vec![
            message("web", &mixed("twice-queued")),
            message("web", &mixed("twice-queued")),
        ])
        .await
        .unwrap();
    let running = run(transform.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while transform
        .stats()
        .acked
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "both copies were not settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    assert_eq!(recorder.request_ids("dest").len(), 1, "delivered once");
}

/// A poller stuck in a round past `stalled_after` makes the transform unhealthy (its
/// `/healthz` answers 503), and healthy again once it comes round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_poller_makes_the_transform_unhealthy() {
    let q = embedded();
    let recorder = Recorder::default();
    *recorder.on_call.lock().unwrap() = Some(Box::new(|| {
        std::thread::sleep(Duration::from_secs(3));
    }));
    let mut s = settings(vec![connection("c", "web", &["dest"], Rules::default())]);
    s.pollers = 1;
    s.stalled_after = Duration::from_secs(1);
    let transform = Transform::new(s, q.queue.clone(), None, in_process(&recorder)).unwrap();
    let running = run(transform.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(transform.stalled(), None, "an idle poller comes round");
    q.queue
        .send(vec![message("web", &mixed("slow"))])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while transform.stalled().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "a poller stuck for 1 s was not seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while transform.stalled().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "still unhealthy after the poller came round"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(recorder.request_ids("dest").len(), 1);
    running.stop().await;
}
