//! The other drivers (webhook, file, S3 export), and isolation between destinations.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mpconnect_delivery::file::{FileDriver, FileSettings};
use mpconnect_delivery::limit::LimitSettings;
use mpconnect_delivery::mparticle::{MparticleDriver, MparticleSettings};
use mpconnect_delivery::s3::{S3Driver, S3ExportSettings};
use mpconnect_delivery::testing::FakeMparticle;
use mpconnect_delivery::webhook::{WebhookDriver, WebhookSettings};
use mpconnect_delivery::{DestinationState, Driver};
use runtime::store::S3Store;
use runtime::{AnyStore, Secret, SecretSource};
use schema::v1::Outcome;

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

fn request_ids_of_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            let batch = schema::decode_batch(line.as_bytes()).expect("each line one batch");
            batch.source_request_id.unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_destination_writes_ndjson_rolled_by_size() {
    let out = tempfile::tempdir().unwrap();
    let mut settings = FileSettings::new(out.path());
    settings.app_name = "local".into();
    settings.max_bytes = 40 * 1024;
    let driver: Arc<dyn Driver> = Arc::new(FileDriver::new(settings).unwrap());
    let stage = Stage::start(vec![(quick("file"), driver)]).await;
    let sent = ids("file", 30);
    let calls = sent.chunks(3).map(|chunk| {
        stage.deliver(
            "file",
            chunk.iter().map(|id| routed(batch(10, id, 1))).collect(),
        )
    });
    let outcomes: Vec<_> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(count(&outcomes, Outcome::Delivered), 30);
    let mut files: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "rolled by size: {files:?}");
    let mut arrived = BTreeSet::new();
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("local_") && name.ends_with(".txt"),
            "{name}"
        );
        arrived.extend(request_ids_of_lines(
            &std::fs::read_to_string(file).unwrap(),
        ));
    }
    assert_eq!(arrived, sent.into_iter().collect());
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_batch_is_written_in_full_by_a_driver_that_reads_content() {
    let out = tempfile::tempdir().unwrap();
    let driver: Arc<dyn Driver> = Arc::new(FileDriver::new(FileSettings::new(out.path())).unwrap());
    let stage = Stage::start(vec![(quick("file"), driver)]).await;
    let full = batch(5, "through-1", 2);
    let json = schema::encode_batch(&full, schema::Dialect::Inbound);
    let through = schema::pass_through(&full, &json).unwrap();
    let outcomes = stage.deliver("file", vec![routed(through)]).await;
    assert_eq!(count(&outcomes, Outcome::Delivered), 1);
    let file = std::fs::read_dir(out.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(file).unwrap();
    let written = schema::decode_batch(text.trim_end().as_bytes()).unwrap();
    assert_eq!(
        written, full,
        "the whole batch, not the ids beside its bytes"
    );
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_destination_writes_mparticles_layout_to_a_real_bucket() {
    let (_, s3) = runtime::testing::moto_clients().await;
    let bucket = runtime::testing::unique("export");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let store = AnyStore::S3(S3Store::new(s3.clone(), bucket.clone()));
    let settings = S3ExportSettings {
        app_name: "mPTravel".into(),
        folder: Some("exports".into()),
        date_folders: true,
        gzip: true,
        max_bytes: 64 * 1024,
        max_age: Duration::from_millis(200),
    };
    let driver: Arc<dyn Driver> = Arc::new(S3Driver::new(store, settings));
    let stage = Stage::start(vec![(quick("s3"), driver)]).await;
    let sent = ids("s3", 25);
    let calls = sent.chunks(5).map(|chunk| {
        stage.deliver(
            "s3",
            chunk.iter().map(|id| routed(batch(10, id, 2))).collect(),
        )
    });
    let outcomes: Vec<_> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        count(&outcomes, Outcome::Delivered),
        25,
        "delivered once the file is in S3"
    );
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    assert!(keys.len() >= 2, "rolled by size: {keys:?}");
    let mut arrived = BTreeSet::new();
    for key in &keys {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 3, "{key}");
        assert_eq!(parts[0], "exports");
        assert_eq!(parts[1].len(), 10, "a YYYY-MM-DD folder: {key}");
        assert!(
            parts[2].starts_with("mPTravel_") && parts[2].ends_with(".txt.gz"),
            "{key}"
        );
        let object = s3
            .get_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let gz = object.body.collect().await.unwrap().into_bytes();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        // Each line parses with the schema crate, in mParticle's outbound dialect.
        assert!(
            text.contains("\"user_identities\":["),
            "outbound identities"
        );
        arrived.extend(request_ids_of_lines(&text));
    }
    assert_eq!(arrived, sent.into_iter().collect());
    stage.stop().await;
}

/// What a webhook receiver saw: (Authorization, body).
type Seen = Arc<Mutex<Vec<(Option<String>, Vec<u8>)>>>;

async fn webhook_receiver(status: Arc<Mutex<u16>>) -> (String, Seen) {
    use axum::http::HeaderMap;
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let recorded = recorded.clone();
            let status = status.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                let code = *status.lock().unwrap();
                if code < 300 {
                    recorded.lock().unwrap().push((auth, body.to_vec()));
                }
                axum::http::StatusCode::from_u16(code).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_posts_one_outbound_batch_each_with_its_authorization() {
    let status = Arc::new(Mutex::new(500u16));
    let (url, seen) = webhook_receiver(status.clone()).await;
    let mut settings = WebhookSettings::new(url);
    settings.authorization = Some(SecretSource::Value(Secret::new("Bearer s3cr3t")));
    let driver: Arc<dyn Driver> = Arc::new(WebhookDriver::new("hook", settings).unwrap());
    let stage = Stage::start(vec![(quick("hook"), driver)]).await;
    let sent = ids("hook", 6);
    // Down (500): parked, then retried until it answers.
    let outcomes = stage
        .deliver(
            "hook",
            sent[..3].iter().map(|id| routed(batch(2, id, 3))).collect(),
        )
        .await;
    assert_eq!(count(&outcomes, Outcome::Parked), 3);
    *status.lock().unwrap() = 200;
    let outcomes = stage
        .deliver(
            "hook",
            sent[3..].iter().map(|id| routed(batch(2, id, 3))).collect(),
        )
        .await;
    assert_eq!(
        count(&outcomes, Outcome::Delivered) + count(&outcomes, Outcome::Parked),
        3
    );
    eventually("every batch", Duration::from_secs(20), || {
        seen.lock().unwrap().len() >= 6
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let mut arrived = BTreeSet::new();
    for (auth, body) in seen {
        assert_eq!(auth.as_deref(), Some("Bearer s3cr3t"));
        let batch = schema::decode_batch(&body).expect("one batch per POST");
        assert!(
            String::from_utf8_lossy(&body).contains("\"user_identities\":["),
            "outbound"
        );
        arrived.insert(batch.source_request_id.unwrap());
    }
    assert_eq!(arrived, sent.into_iter().collect());
    stage.stop().await;
}

/// A fast mParticle driver: no rate limit, so the test measures delivery, not the limiter.
fn unthrottled(id: &str, fake: &FakeMparticle, timeout: Duration) -> Arc<dyn Driver> {
    let mut settings = MparticleSettings::new(
        fake.base_url(),
        SecretSource::Value(Secret::new(KEY)),
        secret(),
    );
    settings.limit.rate = None;
    settings.request_timeout = timeout;
    Arc::new(MparticleDriver::new(id, settings).unwrap())
}

/// Seconds to deliver 1,200 batches to `destination`, three calls in flight at a time.
async fn time_to_deliver(stage: &Stage, destination: &str, round: usize) -> f64 {
    let started = Instant::now();
    let work: Vec<Vec<_>> = (0..60)
        .map(|c| {
            (0..20)
                .map(|i| routed(batch(10, &format!("{destination}-{round}-{c}-{i}"), 5)))
                .collect()
        })
        .collect();
    let mut work = work.into_iter();
    loop {
        let calls: Vec<_> = work
            .by_ref()
            .take(3)
            .map(|b| stage.deliver(destination, b))
            .collect();
        if calls.is_empty() {
            break;
        }
        for outcomes in futures_util::future::join_all(calls).await {
            assert_eq!(count(&outcomes, Outcome::Delivered), outcomes.len());
        }
    }
    started.elapsed().as_secs_f64()
}

/// Calls held by a hanging destination take nothing a healthy one needs (connections,
/// workers, the server's concurrency): the healthy one's whole delivery is done while every
/// hanging call still waits for its answer. Checked as an order of events, not as a share of
/// a time on shared cores: were the healthy calls queued behind the hanging ones, they would
/// end only after those gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_destination_does_not_slow_another() {
    // As many as the hanging driver first lets into flight.
    let hanging_calls_in_flight = LimitSettings::default().initial_concurrency;
    let hang_for = Duration::from_secs(8);
    let healthy = FakeMparticle::start(KEY, SECRET).await;
    healthy.set(|b| b.skip_schema = true);
    let hanging = FakeMparticle::start(KEY, SECRET).await;
    hanging.set(|b| b.hang = true);
    let mut slow = quick("hanging");
    slow.attempt_timeout = hang_for + Duration::from_secs(2);
    let stage = Stage::start(vec![
        (
            quick("healthy"),
            unthrottled("healthy", &healthy, Duration::from_secs(5)),
        ),
        (slow, unthrottled("hanging", &hanging, hang_for)),
    ])
    .await;

    let client = stage.client().await;
    let hanging_calls: Vec<_> = (0..hanging_calls_in_flight)
        .map(|n| {
            let batches = (0..20)
                .map(|i| routed(batch(10, &format!("h-{n}-{i}"), 6)))
                .collect();
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .deliver(schema::v1::DeliverRequest {
                        destination: "hanging".into(),
                        batches,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .outcomes
            })
        })
        .collect();
    eventually(
        "every hanging call to reach the hanging mParticle",
        Duration::from_secs(5),
        || hanging.hung() >= hanging_calls_in_flight,
    )
    .await;

    let took = time_to_deliver(&stage, "healthy", 1).await;
    let still_held = hanging_calls.iter().filter(|c| !c.is_finished()).count();
    eprintln!("healthy: 1,200 batches in {took:.2}s beside {still_held} hanging calls");
    assert_eq!(
        still_held, hanging_calls_in_flight,
        "a hanging call ended (after {hang_for:?}) before the healthy delivery did ({took:.2}s)"
    );

    // Each hanging call then ends on its own timeout, its batches parked for a retry.
    for call in hanging_calls {
        let outcomes = call.await.unwrap();
        assert_eq!(count(&outcomes, Outcome::Parked), outcomes.len());
    }
    assert!(matches!(
        stage.delivery.destination("hanging").unwrap().state(),
        DestinationState::BackingOff { .. } | DestinationState::Healthy
    ));
    assert_eq!(healthy.accepted().len(), 1200);
    assert!(hanging.accepted().is_empty());
    stage.stop().await;
}

/// The webhook driver's answer for one batch posted to `url`.
async fn post_one_to_webhook(url: String, request_id: &str) -> Vec<mpconnect_delivery::Answer> {
    let driver = WebhookDriver::new("hook", WebhookSettings::new(url)).unwrap();
    driver
        .send(
            &[routed(batch(1, request_id, 1))],
            Instant::now() + Duration::from_secs(5),
        )
        .await
}

/// A webhook that answers with a redirect has not taken the batch: following it would turn the
/// POST into a GET of whatever page it names, and record a 200 for data nobody received.
#[tokio::test]
async fn a_webhook_redirect_is_not_a_delivery() {
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::FOUND,
                    [(axum::http::header::LOCATION, "/moved")],
                )
            }),
        )
        .route("/moved", axum::routing::any(|| async { "a login page" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let answers = post_one_to_webhook(url, "redirected").await;
    assert!(
        matches!(
            &answers[0],
            mpconnect_delivery::Answer::Retry {
                status: Some(302),
                ..
            }
        ),
        "{answers:?}"
    );
}

/// A webhook URL often carries its token: an error must not copy it into dead letters, logs
/// or readiness answers.
#[tokio::test]
async fn a_webhook_error_does_not_carry_its_url() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}/hooks/T0-secret-token-5e1f");
    let answers = post_one_to_webhook(url, "unreachable").await;
    let mpconnect_delivery::Answer::Retry { detail, .. } = &answers[0] else {
        panic!("{answers:?}");
    };
    assert!(detail.contains("connection"), "{detail}");
    assert!(!detail.contains("secret-token"), "the URL leaked: {detail}");
}
