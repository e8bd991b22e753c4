//! The HTTP source end to end: real clients (mParticle's Python SDK, reqwest, raw TCP) against
//! a running ingest over a real queue.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use common::*;
use ingest::IngestSettings;
use mpconnect_ingest as ingest;
use runtime::envelope::attr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn python() -> String {
    std::env::var("MPCONNECT_TEST_PYTHON").expect(
        "MPCONNECT_TEST_PYTHON is not set: run the suite with scripts/test, which creates the \
         venv with mParticle's Python SDK",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_posts_and_every_batch_arrives_field_for_field() {
    let server = start(settings()).await;
    let out = tempfile::NamedTempFile::new().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/send_with_sdk.py");
    let host = server.url("/v2");
    let output = tokio::process::Command::new(python())
        .args([script, &host, KEY, SECRET, out.path().to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let sent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap();
    let types: Vec<&str> = sent["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application_state_transition",
            "breadcrumb",
            "commerce_event",
            "custom_event",
            "first_run",
            "network_performance",
            "opt_out",
            "profile",
            "push_message",
            "push_registration",
            "screen_view",
            "session_end",
            "session_start",
            "user_attribute_change",
        ],
        "every event type the SDK offers"
    );

    let queued: BTreeMap<String, schema::v1::Batch> = decode(&drain(&server.queue).await)
        .into_iter()
        .map(|b| (b.source_request_id.clone().unwrap(), b))
        .collect();
    let sent_batches = sent["batches"].as_array().unwrap();
    assert_eq!(
        queued.len(),
        sent_batches.len(),
        "exactly the batches sent (the refused one is not there)"
    );
    for batch in sent_batches {
        let expected = schema::parse_batch(batch.to_string().as_bytes()).unwrap();
        let id = expected.source_request_id.clone().unwrap();
        assert_eq!(
            queued.get(&id),
            Some(&expected),
            "batch {id} differs from what the SDK sent"
        );
    }
    let single = &queued["single-1"];
    assert_eq!(single.mpid, Some(-42));
    let ids = &single.user_identities.as_ref().unwrap().values;
    assert!(
        ids.iter()
            .any(|i| i.identity_type.as_deref() == Some("customer_id")),
        "customerid read as customer_id"
    );
    server.stop().await;
}

#[tokio::test]
async fn bare_paths_and_queue_attributes() {
    let server = start(settings()).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = client()
        .post(server.url("/events"))
        .basic_auth(KEY, Some(SECRET))
        .header("content-type", "application/json; charset=utf-8")
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=x")
        .body(batch_json("r1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert!(
        response.text().await.unwrap().is_empty(),
        "202 has no body, as mParticle's"
    );
    let got = drain(&server.queue).await;
    assert_eq!(got.len(), 1);
    let a = &got[0].attributes;
    assert_eq!(&a[attr::SOURCE], "web");
    assert_eq!(&a[attr::TRACEPARENT], traceparent);
    assert_eq!(&a[attr::TRACESTATE], "vendor=x");
    assert_eq!(
        &a[attr::CONTENT_TYPE],
        runtime::envelope::content_type::BATCH
    );
    assert_eq!(&a[attr::ENDPOINT], "events");
    let received_at: i64 = a[attr::RECEIVED_AT].parse().unwrap();
    assert!((runtime::now_ms() - received_at).abs() < 60_000);

    // Without a caller's trace, each batch of a bulk request starts its own.
    let bulk = format!("[{},{}]", batch_json("b1"), batch_json("b2"));
    assert_eq!(post("/bulkevents", &server, bulk).await.status(), 202);
    let got = drain(&server.queue).await;
    assert_eq!(got.len(), 2);
    assert_ne!(
        got[0].attributes[attr::TRACEPARENT][3..35],
        got[1].attributes[attr::TRACEPARENT][3..35]
    );
    server.stop().await;
}

#[tokio::test]
async fn webhook_outbound_batches_arrive_with_each_authorization_form() {
    let server = start(settings()).await;
    let fixture = std::fs::read_to_string(schema_fixture("outbound_all_types.json")).unwrap();
    let expected = schema::parse_batch(fixture.as_bytes()).unwrap();
    let basic = format!("Basic {}", base64_of(&format!("{KEY}:{SECRET}")));
    for authorization in [format!("Bearer {KEY}"), KEY.to_owned(), basic] {
        let response = client()
            .post(server.url("/webhook/web"))
            .header("authorization", authorization.clone())
            .header("content-type", "application/json")
            .body(fixture.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{authorization}");
        let got = decode(&drain(&server.queue).await);
        assert_eq!(got, vec![expected.clone()], "field for field");
    }
    // An array is tolerated.
    let response = client()
        .post(server.url("/webhook/web"))
        .header("authorization", format!("Bearer {KEY}"))
        .body(format!("[{fixture},{fixture}]"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let got = drain(&server.queue).await;
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].attributes[attr::ENDPOINT], "webhook");

    for (authorization, status) in [
        (Some("Bearer wrong"), 403),
        (Some("wrong"), 403),
        (None, 401),
    ] {
        let mut request = client()
            .post(server.url("/webhook/web"))
            .body(fixture.clone());
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
    }
    // An unknown source is refused like a wrong key: source ids are not for guessing.
    let response = client()
        .post(server.url("/webhook/nope"))
        .header("authorization", format!("Bearer {KEY}"))
        .body(fixture)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(drain(&server.queue).await.is_empty());
    server.stop().await;
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn assert_refused(response: reqwest::Response, status: u16, code: &str, message_part: &str) {
    assert_eq!(response.status(), status);
    let body = error_body(response).await;
    let errors = body["errors"].as_array().unwrap();
    assert!(!errors.is_empty());
    assert_eq!(errors[0]["code"], code, "{body}");
    let all = errors
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" | ");
    assert!(all.contains(message_part), "{all:?} lacks {message_part:?}");
}

#[tokio::test]
async fn each_refusal_has_its_status_and_an_mparticle_error_body() {
    let server = start(settings()).await;
    let url = server.url("/v2/events");

    let r = client()
        .post(&url)
        .body(batch_json("x"))
        .send()
        .await
        .unwrap();
    assert_refused(r, 401, "UNAUTHORIZED", "Authorization header is missing").await;
    let r = client()
        .post(&url)
        .basic_auth(KEY, Some("nope"))
        .body(batch_json("x"))
        .send()
        .await
        .unwrap();
    assert_refused(r, 403, "FORBIDDEN", "not valid").await;
    let r = client()
        .post(&url)
        .header("authorization", "Basic !!!")
        .body(batch_json("x"))
        .send()
        .await
        .unwrap();
    assert_refused(r, 403, "FORBIDDEN", "not valid").await;

    assert_refused(
        post("/v2/events", &server, "{\"environment\":").await,
        400,
        "BAD_REQUEST",
        "Malformed JSON: EOF",
    )
    .await;
    assert_refused(
        post("/v2/events", &server, r#"{"events":[]}"#).await,
        400,
        "BAD_REQUEST",
        "Required batch field \"environment\" is missing or empty.",
    )
    .await;
    assert_refused(
        post("/v2/events", &server, r#"{"environment":"production","events":[{"event_type":"custom_event","data":{"custom_event_type":"other"}}]}"#).await,
        400,
        "BAD_REQUEST",
        "Required event field \"event_name\" is missing or empty. (at events[0].data.event_name)",
    )
    .await;
    assert_refused(
        post("/v2/events", &server, format!("[{}]", batch_json("x"))).await,
        400,
        "BAD_REQUEST",
        "send arrays of batches to /v2/bulkevents",
    )
    .await;
    assert_refused(
        post("/v2/bulkevents", &server, batch_json("x")).await,
        400,
        "BAD_REQUEST",
        "take an array",
    )
    .await;

    let many = format!(
        "[{}]",
        vec![r#"{"environment":"production","events":[]}"#; 101].join(",")
    );
    assert_refused(
        post("/v2/bulkevents", &server, many).await,
        400,
        "BAD_REQUEST",
        "at most 100 batches; this one has 101",
    )
    .await;

    let huge = format!("[{}]", vec![batch_json("x"); 1500].join(","));
    assert!(huge.len() > 256 * 1024);
    assert_refused(
        post("/v2/bulkevents", &server, huge).await,
        413,
        "REQUEST_TOO_LARGE",
        "exceeds 262144 bytes",
    )
    .await;

    let padding = "p".repeat(130 * 1024);
    let big_batch = format!(r#"{{"environment":"production","events":[],"x":"{padding}"}}"#);
    assert_refused(
        post("/v2/events", &server, big_batch).await,
        413,
        "REQUEST_TOO_LARGE",
        "a batch may be at most 131072 bytes",
    )
    .await;

    let r = client()
        .post(&url)
        .basic_auth(KEY, Some(SECRET))
        .header("content-type", "text/plain")
        .body(batch_json("x"))
        .send()
        .await
        .unwrap();
    assert_refused(r, 415, "UNSUPPORTED_MEDIA_TYPE", "must be application/json").await;
    let r = client()
        .post(&url)
        .basic_auth(KEY, Some(SECRET))
        .header("content-encoding", "br")
        .body(batch_json("x"))
        .send()
        .await
        .unwrap();
    assert_refused(r, 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Encoding \"br\"").await;

    assert!(
        drain(&server.queue).await.is_empty(),
        "nothing refused reached the queue"
    );
    server.stop().await;
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn gzip_bodies_count_against_the_limit_once_inflated() {
    let server = start(settings()).await;
    let body = format!("[{}]", vec![batch_json("z"); 50].join(","));
    let r = client()
        .post(server.url("/v2/bulkevents"))
        .basic_auth(KEY, Some(SECRET))
        .header("content-encoding", "gzip")
        .body(gzip(body.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(drain(&server.queue).await.len(), 50);

    // About 1 KB that inflates to 1 MB.
    let bomb = gzip(&vec![b' '; 1024 * 1024]);
    assert!(bomb.len() < 1100, "{}", bomb.len());
    let r = client()
        .post(server.url("/v2/bulkevents"))
        .basic_auth(KEY, Some(SECRET))
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_refused(r, 413, "REQUEST_TOO_LARGE", "after decompression").await;
    server.stop().await;
}

#[tokio::test]
async fn historical_batches_follow_their_extra_rules() {
    let server = start(settings()).await;
    let old = runtime::now_ms() - 73 * 3600 * 1000;
    let recent = runtime::now_ms() - 3600 * 1000;
    let with_ts = |ts: i64| {
        format!(
            r#"[{{"environment":"production","events":[{{"event_type":"session_start","data":{{"timestamp_unixtime_ms":{ts}}}}}]}}]"#
        )
    };
    assert_eq!(
        post("/v2/bulkevents/historical", &server, with_ts(old))
            .await
            .status(),
        202
    );
    let got = drain(&server.queue).await;
    assert_eq!(&got[0].attributes[attr::HISTORICAL], "true");
    assert_eq!(&got[0].attributes[attr::ENDPOINT], "historical");
    assert_refused(
        post("/v2/bulkevents/historical", &server, with_ts(recent)).await,
        400,
        "BAD_REQUEST",
        "less than 72 hours old",
    )
    .await;
    assert_refused(
        post(
            "/bulkevents/historical",
            &server,
            r#"[{"environment":"production","events":[]}]"#,
        )
        .await,
        400,
        "BAD_REQUEST",
        "at least one event",
    )
    .await;
    // The same recent data is fine on the ordinary endpoint.
    assert_eq!(
        post("/v2/bulkevents", &server, with_ts(recent))
            .await
            .status(),
        202
    );
    assert!(
        !drain(&server.queue).await[0]
            .attributes
            .contains_key(attr::HISTORICAL)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_bad_batch_in_a_bulk_request_costs_none_of_the_others() {
    let server = start(settings()).await;
    let bad = r#"{"environment":"staging","source_request_id":"bad","events":[]}"#;
    let body = format!("[{},{bad},{}]", batch_json("good-1"), batch_json("good-2"));
    assert_eq!(
        post("/v2/bulkevents", &server, body).await.status(),
        202,
        "as mParticle answers"
    );
    let good = decode(&drain(&server.queue).await);
    let ids: Vec<_> = good
        .iter()
        .map(|b| b.source_request_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["good-1", "good-2"]);
    let dead = drain(&server.dead_letter).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        std::str::from_utf8(&dead[0].body).unwrap(),
        bad,
        "kept as sent"
    );
    assert!(
        dead[0].attributes[attr::REJECTED_BECAUSE]
            .starts_with("[1] Batch field \"environment\" must be"),
        "{:?}",
        dead[0].attributes
    );
    server.stop().await;
}

/// A batch that does not even read as a batch (an event that is not an object) sends the
/// request down the split-first path: the others are still queued as sent, and it is
/// dead-lettered by itself.
#[tokio::test]
async fn a_batch_that_does_not_read_costs_none_of_the_others() {
    let server = start(settings()).await;
    let unreadable = r#"{"environment":"production","source_request_id":"bad","events":[3]}"#;
    let good = batch_json("good-1");
    let body = format!("[ {good} ,\n{unreadable}, {}]", batch_json("good-2"));
    assert_eq!(post("/v2/bulkevents", &server, body).await.status(), 202);
    let mut queued = decode_as_queued(&drain(&server.queue).await);
    queued.sort_by(|a, b| a.source_request_id.cmp(&b.source_request_id));
    let ids: Vec<_> = queued
        .iter()
        .map(|b| b.source_request_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["good-1", "good-2"]);
    assert_eq!(queued[0].inbound_json, good.as_bytes(), "byte for byte");
    let dead = drain(&server.dead_letter).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(std::str::from_utf8(&dead[0].body).unwrap(), unreadable);
    assert!(
        dead[0].attributes[attr::REJECTED_BECAUSE].starts_with("[1] Malformed batch:"),
        "{:?}",
        dead[0].attributes
    );
    server.stop().await;
}

#[tokio::test]
async fn events_api_batches_are_queued_as_the_senders_bytes_unless_read_with_a_change() {
    let server = start(settings()).await;
    let as_sent = batch_json("as-sent");
    let changed = r#"{"environment":"production","source_request_id":"changed",
        "user_identities":{"customerid":"c1"},"events":[]}"#;
    let body = format!("[{as_sent},{changed}]");
    assert_eq!(post("/v2/bulkevents", &server, body).await.status(), 202);
    let mut queued = decode_as_queued(&drain(&server.queue).await);
    queued.sort_by(|a, b| a.source_request_id.cmp(&b.source_request_id));
    assert_eq!(queued.len(), 2);
    assert_eq!(queued[0].inbound_json, as_sent.as_bytes(), "byte for byte");
    assert_eq!(queued[0].events.len(), 1);
    // `customerid` is read as `customer_id`: that batch travels as what it was read as.
    assert!(!schema::is_pass_through(&queued[1]));
    assert_eq!(
        queued[1].user_identities.as_ref().unwrap().values[0]
            .identity_type
            .as_deref(),
        Some("customer_id")
    );
    // The webhook's outbound dialect is always read in full.
    let webhook = r#"{"environment":"production","source_request_id":"hook","events":[]}"#;
    let answer = client()
        .post(server.url("/webhook/web"))
        .header("authorization", KEY)
        .header("content-type", "application/json")
        .body(webhook)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let queued = decode_as_queued(&drain(&server.queue).await);
    assert_eq!(queued.len(), 1);
    assert!(!schema::is_pass_through(&queued[0]));
    server.stop().await;
}

#[tokio::test]
async fn a_backed_up_queue_answers_429_with_retry_after() {
    let settings = IngestSettings {
        max_backlog: Some(5),
        backlog_refresh: Duration::from_millis(50),
        retry_after: Duration::from_secs(7),
        ..settings()
    };
    let server = start(settings).await;
    let bulk = format!("[{}]", vec![batch_json("q"); 10].join(","));
    assert_eq!(post("/v2/bulkevents", &server, bulk).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = post("/v2/events", &server, batch_json("later")).await;
    assert_eq!(r.headers().get("retry-after").unwrap(), "7");
    assert_refused(r, 429, "TOO_MANY_REQUESTS", "slow down").await;
    // Drained, it takes data again.
    assert_eq!(drain(&server.queue).await.len(), 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post("/v2/events", &server, batch_json("later"))
            .await
            .status(),
        202
    );
    server.stop().await;
}

/// Past the bound the backlog is read again while requests wait on it, not only at the
/// periodic read (here once an hour): a waiting request is taken once the queue drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_sees_the_backlog_fall_before_the_next_periodic_read() {
    let server = over_the_backlog_bound(Duration::from_secs(3600)).await;
    a_request_waits_then_is_taken_as_the_queue_drains(&server, Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_backlog_a_request_waits_for_it_to_fall_before_429() {
    let server = over_the_backlog_bound(Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a_request_waits_then_is_taken_as_the_queue_drains(&server, Duration::from_millis(500)).await;
    server.stop().await;
}

/// A server whose queue holds 10 batches against a bound of 5 (a request waits up to 3 s),
/// its backlog read every `refresh`.
async fn over_the_backlog_bound(refresh: Duration) -> Server {
    let settings = IngestSettings {
        max_backlog: Some(5),
        backlog_refresh: refresh,
        backlog_wait: Duration::from_secs(3),
        ..settings()
    };
    let server = start(settings).await;
    let bulk = format!("[{}]", vec![batch_json("q"); 10].join(","));
    assert_eq!(post("/v2/bulkevents", &server, bulk).await.status(), 202);
    server
}

/// Over the bound, a request is still waiting after `waited`; the queue is then drained, and
/// the request is taken meanwhile (once fewer than six are left to receive).
async fn a_request_waits_then_is_taken_as_the_queue_drains(server: &Server, waited: Duration) {
    let waiting = tokio::spawn({
        let url = server.url("/v2/events");
        async move {
            client()
                .post(url)
                .basic_auth(KEY, Some(SECRET))
                .header("content-type", "application/json")
                .body(batch_json("waited"))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(waited).await;
    assert!(!waiting.is_finished(), "answered at once over the bound");
    let mut got = decode(&drain(&server.queue).await);
    assert_eq!(waiting.await.unwrap(), 202);
    got.extend(decode(&drain(&server.queue).await));
    assert_eq!(got.len(), 11);
    assert!(
        got.iter()
            .any(|b| b.source_request_id.as_deref() == Some("waited"))
    );
}

/// Starts `POST /v2/events` of `body` and sends only its first 10 bytes: a request in hand.
async fn begin_slow_request(server: &Server, body: &str) -> tokio::net::TcpStream {
    let addr = server.base.trim_start_matches("http://").to_owned();
    let auth = base64_of(&format!("{KEY}:{SECRET}"));
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v2/events HTTP/1.1\r\nhost: {addr}\r\nauthorization: Basic {auth}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    stream
}

/// Sends the rest of the body; returns the answer's first bytes.
async fn finish_slow_request(stream: &mut tokio::net::TcpStream, body: &str) -> String {
    stream.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut response = vec![0u8; 1024];
    let n = stream.read(&mut response).await.unwrap();
    String::from_utf8_lossy(&response[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sender_holds_no_place_among_the_requests_in_hand() {
    let settings = IngestSettings {
        max_in_flight: 1,
        backlog_wait: Duration::from_millis(300),
        ..settings()
    };
    let server = start(settings).await;
    // One request whose body arrives slowly...
    let body = batch_json("slow");
    let mut stream = begin_slow_request(&server, &body).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...does not keep the only place from another.
    let started = std::time::Instant::now();
    let r = post("/v2/events", &server, batch_json("quick")).await;
    assert_eq!(r.status(), 202);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "it waited for the slow one"
    );
    let answer = finish_slow_request(&mut stream, &body).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let mut ids: Vec<_> = decode(&drain(&server.queue).await)
        .into_iter()
        .filter_map(|b| b.source_request_id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["quick", "slow"]);
    server.stop().await;
}

#[tokio::test]
async fn a_full_embedded_queue_answers_503_and_the_retry_succeeds() {
    let server = start(settings()).await;
    let db = server.db.clone().unwrap();
    let mut accepted = Vec::new();
    // Fill what is free under a tight cap.
    db.set_max_size(Some(256 * 1024)).await.unwrap();
    let mut refused = 0;
    for i in 0..200 {
        let id = format!("fill-{i}");
        let r = post(
            "/v2/bulkevents",
            &server,
            format!("[{}]", vec![batch_json(&id); 10].join(",")),
        )
        .await;
        match r.status().as_u16() {
            202 => accepted.push(id),
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                assert_refused(
                    r,
                    503,
                    "SERVICE_UNAVAILABLE",
                    "nothing from this request was accepted",
                )
                .await;
                refused += 1;
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "the cap was never reached");
    // readyz still answers: reads work on a full queue.
    assert_eq!(
        client()
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    db.set_max_size(None).await.unwrap();
    assert_eq!(
        post("/v2/events", &server, batch_json("after"))
            .await
            .status(),
        202
    );
    accepted.push("after".into());

    let queued: std::collections::HashSet<String> = decode(&drain(&server.queue).await)
        .into_iter()
        .map(|b| b.source_request_id.unwrap())
        .collect();
    for id in &accepted {
        assert!(queued.contains(id), "{id} got 202 but is not in the queue");
    }
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = start(settings()).await;
    assert_eq!(
        client()
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(
        client()
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post("/v2/events", &server, batch_json("m")).await.status(),
        202
    );
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mpconnect_ingest_requests_total{"),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"202\""), "{metrics}");
    assert!(!metrics.contains(SECRET));
    server.stop().await;
}

/// `/readyz` as the server's router answers it (the listener takes no new connection once
/// draining).
async fn readiness(server: &Server) -> u16 {
    use tower::ServiceExt as _;
    let request = axum::http::Request::get("/readyz")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = server.ingest.router().oneshot(request).await.unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight() {
    let mut server = start(settings()).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let body = batch_json("in-flight");
    let mut stream = begin_slow_request(&server, &body).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(readiness(&server).await, 200);
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        readiness(&server).await,
        503,
        "unready once draining, so the endpoints drop the pod"
    );
    let answer = finish_slow_request(&mut stream, &body).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    drop(stream);
    server.finished().await;
    // New connections are no longer taken.
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
    assert_eq!(
        decode(&drain(&server.queue).await)[0]
            .source_request_id
            .as_deref(),
        Some("in-flight")
    );
}
