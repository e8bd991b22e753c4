//! The mParticle destination against a fake Events API that enforces mParticle's contract.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use mpconnect_delivery::DestinationState;
use mpconnect_delivery::testing::FakeMparticle;
use runtime::{Queue, SecretSource};
use schema::v1::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_of_mixed_sizes_arrive_within_every_limit() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let stage = Stage::start(vec![(
        quick("mp"),
        mparticle("mp", &fake.base_url(), secret()),
    )])
    .await;
    // 1,000 one-event batches, 300 of ten, 20 of 150 (~180 KB) and 10 of 300 (~360 KB).
    let mut shapes = Vec::new();
    shapes.extend(std::iter::repeat_n(1, 1000));
    shapes.extend(std::iter::repeat_n(10, 300));
    shapes.extend(std::iter::repeat_n(150, 20));
    shapes.extend(std::iter::repeat_n(300, 10));
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    let mut batches = Vec::new();
    for (i, events) in shapes.iter().enumerate() {
        // Interleave sizes, so requests mix them.
        let id = format!("req-{i:05}");
        sent.insert(id.clone(), *events);
        batches.push(routed(batch(*events, &id, i as u64 % 7)));
    }
    batches.sort_by_key(|b| b.key.bytes().rev().collect::<Vec<_>>());
    assert_eq!(sent.values().sum::<usize>(), 10_000);
    let calls = batches
        .chunks(100)
        .map(|chunk| stage.deliver("mp", chunk.to_vec()));
    let outcomes: Vec<_> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(outcomes.len(), shapes.len());
    // A pause (e.g. a slow start) may park some; they must still all arrive.
    assert_eq!(count(&outcomes, Outcome::DeadLettered), 0);
    eventually("every event", Duration::from_secs(60), || {
        fake.accepted_events() >= 10_000
    })
    .await;
    assert_eq!(
        fake.violations(),
        Vec::<String>::new(),
        "no request broke a limit"
    );
    let mut arrived: BTreeMap<String, usize> = BTreeMap::new();
    let mut parts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for b in fake.accepted() {
        let id = b["source_request_id"].as_str().unwrap().to_owned();
        *arrived.entry(original_id(&id).to_owned()).or_default() +=
            b["events"].as_array().unwrap().len();
        parts
            .entry(original_id(&id).to_owned())
            .or_default()
            .insert(id);
    }
    assert_eq!(arrived, sent, "every event of every batch, once");
    for (id, events) in &sent {
        let ids = &parts[id];
        if *events >= 150 {
            assert!(ids.len() >= 2, "{id} of {events} events was split: {ids:?}");
            assert!(ids.iter().all(|p| p.starts_with(&format!("{id}-part-"))));
        } else {
            assert_eq!(
                ids.iter().collect::<Vec<_>>(),
                [id],
                "source_request_id kept"
            );
        }
    }
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.batches <= 100 && r.bytes <= 256 * 1024)
    );
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_nothing_is_lost() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set(|b| b.throttle_every = Some((2, Some(2))));
    let stage = Stage::start(vec![(
        quick("mp"),
        mparticle("mp", &fake.base_url(), secret()),
    )])
    .await;
    let ids: BTreeSet<String> = (0..120).map(|i| format!("r-{i}")).collect();
    let batches: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| routed(batch(10, id, i as u64 % 5)))
        .collect();
    let mut outcomes = Vec::new();
    for chunk in batches.chunks(20) {
        outcomes.extend(stage.deliver("mp", chunk.to_vec()).await);
    }
    assert_eq!(count(&outcomes, Outcome::DeadLettered), 0);
    assert!(
        count(&outcomes, Outcome::Parked) > 0,
        "the 429s parked some"
    );
    eventually("every batch", Duration::from_secs(90), || {
        fake.request_ids().into_iter().collect::<BTreeSet<_>>() == ids
    })
    .await;
    assert_eq!(
        fake.violations(),
        Vec::<String>::new(),
        "no request inside a Retry-After"
    );
    let throttled = fake.requests().iter().filter(|r| r.status == 429).count();
    assert!(throttled >= 2, "{throttled} requests were throttled");
    assert!(stage.dead_letters.list("mp").await.unwrap().is_empty());
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_dead_letters_exactly_the_refused_batches_and_redrive_delivers_them() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set(|b| b.reject_request_ids_starting = Some("bad-".into()));
    let stage = Stage::start(vec![(
        quick("mp"),
        mparticle("mp", &fake.base_url(), secret()),
    )])
    .await;
    let ids: Vec<String> = (0..50)
        .map(|i| {
            if i % 10 == 3 {
                format!("bad-{i}")
            } else {
                format!("good-{i}")
            }
        })
        .collect();
    let batches: Vec<_> = ids.iter().map(|id| routed(batch(3, id, 1))).collect();
    let outcomes = stage.deliver("mp", batches).await;
    let dead: BTreeSet<&str> = outcomes
        .iter()
        .filter(|o| o.outcome == Outcome::DeadLettered as i32)
        .map(|o| o.key.as_str())
        .collect();
    let bad: BTreeSet<&str> = ids
        .iter()
        .filter(|i| i.starts_with("bad-"))
        .map(String::as_str)
        .collect();
    assert_eq!(dead, bad, "exactly the refused batches");
    assert_eq!(count(&outcomes, Outcome::Delivered), 45);
    assert_eq!(fake.request_ids().len(), 45);

    let letters = stage.dead_letters.list("mp").await.unwrap();
    assert_eq!(letters.len(), 5);
    for letter in &letters {
        assert_eq!(letter.status, Some(400));
        assert_eq!(letter.destination, "mp");
        assert_eq!(letter.attempts, 1);
        let id = letter
            .batch
            .batch
            .as_ref()
            .unwrap()
            .source_request_id
            .clone()
            .unwrap();
        assert!(
            letter.answer.contains(&format!("Batch {id} was refused")),
            "{}",
            letter.answer
        );
        assert!(letter.to_pretty_json().contains(&id));
    }

    // A record that cannot be read (damaged, or holding no batch) stops nothing: it is
    // counted, kept for a person to look at, and the rest are redriven.
    use runtime::ObjectStore as _;
    for (name, body) in [
        ("damaged", &b"{not json"[..]),
        ("batchless", &br#"{"id":"batchless","routed_batch":""}"#[..]),
    ] {
        stage
            .store
            .put(
                &format!("dead-letters/mp/{name}.json"),
                body.to_vec().into(),
            )
            .await
            .unwrap();
    }
    assert_eq!(stage.dead_letters.list("mp").await.unwrap().len(), 5);

    // Still refused: redrive dead-letters them again, and keeps one record each.
    let mut client = stage.client().await;
    let again = stage.dead_letters.redrive("mp", &mut client).await.unwrap();
    assert_eq!(again.dead_lettered_again, 5);
    assert_eq!(again.unreadable, 2);
    assert_eq!(stage.dead_letters.list("mp").await.unwrap().len(), 5);

    fake.set(|b| b.reject_request_ids_starting = None);
    let report = stage.dead_letters.redrive("mp", &mut client).await.unwrap();
    assert_eq!(report.delivered, 5);
    assert_eq!(report.unreadable, 2);
    assert!(stage.dead_letters.list("mp").await.unwrap().is_empty());
    assert_eq!(
        stage.store.list("dead-letters/mp/").await.unwrap().len(),
        2,
        "the unreadable records are kept"
    );
    let arrived: BTreeSet<String> = fake.request_ids().into_iter().collect();
    assert_eq!(arrived, ids.iter().cloned().collect(), "every batch, once");
    assert_eq!(fake.violations(), Vec::<String>::new());
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_keeps_every_batch_until_the_credentials_are_fixed() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("mp-secret");
    std::fs::write(&secret_file, "a-wrong-secret\n").unwrap();
    let driver = mparticle(
        "mp",
        &fake.base_url(),
        SecretSource::File(secret_file.clone()),
    );
    let stage = Stage::start(vec![(quick("mp"), driver)]).await;
    let ids: BTreeSet<String> = (0..40).map(|i| format!("f-{i}")).collect();
    let mut outcomes = Vec::new();
    for chunk in ids.iter().collect::<Vec<_>>().chunks(10) {
        let batches = chunk.iter().map(|id| routed(batch(2, id, 2))).collect();
        outcomes.extend(stage.deliver("mp", batches).await);
    }
    assert_eq!(
        count(&outcomes, Outcome::Parked),
        40,
        "kept, not dead-lettered"
    );
    assert!(matches!(
        stage.delivery.destination("mp").unwrap().state(),
        DestinationState::Suspended { .. }
    ));
    // Loud in readiness and metrics.
    let admin = stage.delivery.admin_router();
    let ready = call(&admin, "/readyz").await;
    assert_eq!(ready.0, 503, "the only destination is suspended");
    assert!(
        ready.1.contains("suspended: credentials refused (403)"),
        "{}",
        ready.1
    );
    let metrics = call(&admin, "/metrics").await.1;
    assert!(
        metrics.contains("mpconnect_delivery_suspended{destination=\"mp\"} 1"),
        "{metrics}"
    );
    // Probes go one batch per interval (200 ms) per retry worker (2), not a flood.
    let before = fake.requests().len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let probes = fake.requests().len() - before;
    assert!((1..=14).contains(&probes), "{probes} probes in one second");
    assert!(fake.request_ids().is_empty());
    assert!(stage.dead_letters.list("mp").await.unwrap().is_empty());

    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    eventually("every batch", Duration::from_secs(30), || {
        fake.request_ids().into_iter().collect::<BTreeSet<_>>() == ids
    })
    .await;
    assert_eq!(
        stage.delivery.destination("mp").unwrap().state(),
        DestinationState::Healthy
    );
    assert_eq!(call(&admin, "/readyz").await.0, 200);
    let depth = stage
        .delivery
        .destination("mp")
        .unwrap()
        .retry_queue()
        .depth()
        .await
        .unwrap();
    assert_eq!(depth.visible + depth.delayed, 0, "nothing left parked");
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_window_expires_to_the_dead_letter_store() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set(|b| b.status = Some(503));
    let mut settings = quick("mp");
    settings.retry.window = Duration::from_millis(1500);
    let stage = Stage::start(vec![(
        settings,
        mparticle("mp", &fake.base_url(), secret()),
    )])
    .await;
    let batches: Vec<_> = (0..5)
        .map(|i| routed(batch(2, &format!("w-{i}"), 3)))
        .collect();
    let outcomes = stage.deliver("mp", batches).await;
    assert_eq!(count(&outcomes, Outcome::Parked), 5);
    let mut letters = Vec::new();
    for _ in 0..200 {
        letters = stage.dead_letters.list("mp").await.unwrap();
        if letters.len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        letters.len(),
        5,
        "all five dead-lettered once the window passed"
    );
    for letter in &letters {
        assert_eq!(letter.status, Some(503));
        assert!(
            letter.attempts >= 2,
            "retried before giving up: {}",
            letter.attempts
        );
        assert!(letter.dead_at_ms - letter.first_attempt_ms <= 1500 + 1000);
        assert!(letter.answer.contains("503"));
    }
    let queue = stage
        .delivery
        .destination("mp")
        .unwrap()
        .retry_queue()
        .clone();
    // A letter is stored before its parked copy is acknowledged: the last ack may still be on
    // its way when the fifth letter shows.
    let mut left = u64::MAX;
    for _ in 0..100 {
        let depth = queue.depth().await.unwrap();
        left = depth.visible + depth.delayed + depth.in_flight;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "nothing left parked");
    assert!(fake.request_ids().is_empty());
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentage_used_slows_down_before_any_429() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set(|b| b.percent_used = Some(95));
    let stage = Stage::start(vec![(
        quick("mp"),
        mparticle("mp", &fake.base_url(), secret()),
    )])
    .await;
    let batches: Vec<_> = (0..20)
        .map(|i| routed(batch(1, &format!("p-{i}"), 4)))
        .collect();
    for chunk in batches.chunks(2) {
        stage.deliver("mp", chunk.to_vec()).await;
    }
    let metrics = call(&stage.delivery.admin_router(), "/metrics").await.1;
    let rate: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("mpconnect_delivery_rate_limit_batches_per_second{destination=\"mp\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("the rate limit gauge");
    assert!(
        rate < 270.0 * 0.9_f64.powi(5),
        "rate {rate} after ten answers at 95% used"
    );
    assert_eq!(
        fake.requests().iter().filter(|r| r.status == 429).count(),
        0
    );
    stage.stop().await;
}

/// GET `path` on an axum router: (status, body).
async fn call(router: &axum::Router, path: &str) -> (u16, String) {
    use tower::ServiceExt;
    let response = router
        .clone()
        .oneshot(
            axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An attempt of two requests, one of which hangs past the attempt timeout: the batches of the
/// one that was answered are delivered (and never sent again), only those of the hanging one
/// are parked. Cut off as a whole, the attempt would lose the first request's answer and send
/// its batches twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_request_costs_only_its_own_batches() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set(|b| b.hang_request_ids_starting = Some("slow-".into()));
    let mut settings = quick("mp");
    settings.attempt_timeout = Duration::from_secs(1);
    // Each request's own timeout (5 s) outlasts the attempt's safety net (twice the attempt).
    let stage = Stage::start(vec![(
        settings,
        mparticle("mp", &fake.base_url(), secret()),
    )])
    .await;
    // Over 100 batches: two requests, the second holding the slow ones.
    let ids: Vec<String> = (0..150)
        .map(|i| {
            if i < 100 {
                format!("fast-{i}")
            } else {
                format!("slow-{i}")
            }
        })
        .collect();
    let batches: Vec<_> = ids.iter().map(|id| routed(batch(1, id, 1))).collect();
    let outcomes = stage.deliver("mp", batches).await;
    let delivered: BTreeSet<&str> = outcomes
        .iter()
        .filter(|o| o.outcome == Outcome::Delivered as i32)
        .map(|o| o.key.as_str())
        .collect();
    assert_eq!(
        delivered.len(),
        100,
        "the answered request's batches are delivered"
    );
    assert!(delivered.iter().all(|k| k.starts_with("fast-")));
    assert_eq!(count(&outcomes, Outcome::Parked), 50);

    fake.set(|b| b.hang_request_ids_starting = None);
    eventually("the parked batches", Duration::from_secs(20), || {
        fake.request_ids().len() >= 150
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let arrived = fake.request_ids();
    let unique: BTreeSet<&String> = arrived.iter().collect();
    assert_eq!(unique.len(), 150);
    assert_eq!(arrived.len(), 150, "every batch once");
    stage.stop().await;
}

/// Pass-through batches go out as the sender's bytes, sent in pieces (no copy into one
/// buffer), with the request's length up front: the fake counts every byte and flags a
/// request whose `Content-Length` is missing or wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_batches_arrive_byte_for_byte_with_their_length() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let stage = Stage::start(vec![(
        quick("mp"),
        mparticle("mp", &fake.base_url(), secret()),
    )])
    .await;
    let mut sent_bytes = 0;
    let mut batches = Vec::new();
    for i in 0..60 {
        // The sender's own spacing, which an encoder of ours would not reproduce.
        let text = format!(
            "{{ \"environment\" : \"production\",\n  \"source_request_id\":\"pt-{i:03}\", \"events\":[ {{\"event_type\":\"custom_event\",\"data\":{{\"event_name\":\"e{i}\",\"custom_event_type\":\"other\",\"custom_attributes\":{{\"pad\":\"{}\"}}}}}} ] }}",
            "x".repeat(i * 400)
        );
        let (full, as_sent) = schema::parse_batch_as_sent(text.as_bytes()).unwrap();
        assert!(as_sent);
        let through = schema::pass_through(&full, text.as_bytes()).unwrap();
        assert!(schema::is_pass_through(&through));
        sent_bytes += text.len();
        batches.push(routed(through));
    }
    let outcomes = stage.deliver("mp", batches).await;
    assert_eq!(count(&outcomes, Outcome::Delivered), 60);
    let requests = fake.requests();
    let received_bytes: usize = requests.iter().map(|r| r.bytes).sum();
    let batches_sent: usize = requests.iter().map(|r| r.batches).sum();
    // Several requests (~700 KB in all); each adds its brackets and a comma between batches.
    assert!(requests.len() >= 3, "{} requests", requests.len());
    assert_eq!(batches_sent, 60);
    assert_eq!(
        received_bytes,
        sent_bytes + 2 * requests.len() + (60 - requests.len())
    );
    let arrived: BTreeSet<String> = fake.request_ids().into_iter().collect();
    assert_eq!(arrived, (0..60).map(|i| format!("pt-{i:03}")).collect());
    assert_eq!(fake.violations(), Vec::<String>::new());
    stage.stop().await;
}
