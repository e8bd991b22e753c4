//! What an operator sees of a known run of the three stages as three processes: one trace per
//! batch across them (exported over OTLP to a receiver in the suite), `/metrics` counts equal
//! to what was sent, delivered and dead-lettered, no secret or identity in logs or spans, and a
//! dashboard that queries only metrics the stages export.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::{
    DESTINATION_KEY, DESTINATION_SECRET, Running, SOURCE_KEY, SOURCE_SECRET, Stack, eventually,
    metric,
};
use serde_json::{Value, json};

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// A caller's trace it chose not to sample (flags 00).
const UNSAMPLED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const EMAIL: &str = "jane.doe@example.com";
const CUSTOMER_ID: &str = "cust-known-4242";
const IP: &str = "203.0.113.77";
const WRONG_SECRET: &str = "wrong-secret-attempt-9";

fn batch(id: &str) -> Value {
    json!({
        "environment": "production",
        "source_request_id": id,
        "user_identities": {"customerid": format!("c-{id}")},
        "events": [
            {"event_type": "custom_event", "data": {"event_name": "one", "custom_event_type": "other"}},
            {"event_type": "screen_view", "data": {"screen_name": "Home"}}
        ]
    })
}

/// Waits until the fake mParticle has accepted the batch `id`.
async fn arrived(stack: &Stack, id: &str) {
    eventually(Duration::from_secs(30), async || {
        if stack.fake.request_ids().iter().any(|arrived| arrived == id) {
            return Ok(());
        }
        Err(format!("the batch {id} never arrived"))
    })
    .await;
}

/// Starts the OTLP receiver; spans land as JSON lines in `out`.
fn receiver(out: &std::path::Path) -> (Running, u16) {
    let mut child = Command::new(common::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/otlp_receiver.py"
        ))
        .arg(out)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the receiver's port");
    (Running(child), port)
}

fn spans(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn scrape(stack: &Stack) -> BTreeMap<&'static str, String> {
    let client = reqwest::Client::new();
    let mut bodies = BTreeMap::new();
    for (stage, url) in &stack.metrics_urls {
        let answer = client.get(url).send().await.unwrap();
        assert_eq!(
            answer.headers()["content-type"],
            runtime::telemetry::METRICS_CONTENT_TYPE,
            "{stage} answers in Prometheus's text format"
        );
        bodies.insert(*stage, answer.text().await.unwrap());
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_run_shows_one_trace_per_batch_exact_metrics_and_no_secrets() {
    let receiver_dir = tempfile::tempdir().unwrap();
    let spans_path = receiver_dir.path().join("spans.jsonl");
    let (_receiver, port) = receiver(&spans_path);
    let endpoint = format!("http://127.0.0.1:{port}");
    let stack = Stack::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=known%20run"),
        (
            "RUST_LOG",
            "info,mpconnect=debug,mpconnect_ingest=debug,mpconnect_transform=debug,\
             mpconnect_delivery=debug,mpconnect_runtime=debug",
        ),
    ])
    .await;
    stack
        .fake
        .set(|b| b.reject_request_ids_starting = Some("bad-".into()));
    stack.ready().await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: &Value| {
        client
            .post(format!("{}{path}", stack.ingest_url))
            .basic_auth(SOURCE_KEY, Some(SOURCE_SECRET))
            .json(body)
    };

    // A first batch through every stage, so the connections between them are up (a first
    // hand-off that finds delivery not yet connected is retried, and would show twice).
    let answer = post("/v2/events", &batch("warm-up")).send().await.unwrap();
    assert_eq!(answer.status(), 202);
    arrived(&stack, "warm-up").await;

    // One batch in the caller's trace, carrying personal data that must not show anywhere.
    let mut traced = batch("traced-1");
    traced["user_identities"] = json!({"email": EMAIL, "customerid": CUSTOMER_ID});
    traced["ip"] = json!(IP);
    let answer = post("/v2/events", &traced)
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    // Delivered alone, so its trace holds one delivery attempt.
    arrived(&stack, "traced-1").await;

    // One in a trace its caller did not sample: no span of it is exported, and its context
    // still travels on, unsampled, to the destination.
    let answer = post("/v2/events", &batch("unsampled-1"))
        .header(
            "traceparent",
            format!("00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    arrived(&stack, "unsampled-1").await;

    // Three bulk requests of three good batches and one mParticle will refuse; the first also
    // carries a batch our ingest refuses (kept in its dead-letter queue, the rest accepted).
    let mut good = BTreeSet::new();
    for r in 0..3 {
        let mut body: Vec<Value> = (0..3).map(|b| batch(&format!("good-{r}-{b}"))).collect();
        good.extend((0..3).map(|b| format!("good-{r}-{b}")));
        body.push(batch(&format!("bad-{r}")));
        if r == 0 {
            body.push(json!({"events": []}));
        }
        let answer = post("/v2/bulkevents", &Value::Array(body))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
    }
    good.insert("traced-1".to_owned());
    good.insert("unsampled-1".to_owned());
    good.insert("warm-up".to_owned());
    // A request with nothing usable, and one with a wrong secret.
    let answer = post("/v2/events", &json!({"events": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let answer = client
        .post(format!("{}/v2/events", stack.ingest_url))
        .basic_auth(SOURCE_KEY, Some(WRONG_SECRET))
        .json(&batch("never"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);

    // Wait for the run to settle: every good batch delivered, every refused one dead-lettered.
    let metrics = eventually(Duration::from_secs(60), async || {
        let metrics = scrape(&stack).await;
        let dead = metric(
            &metrics["delivery"],
            "mpconnect_delivery_batches_total",
            &[("destination", "mp"), ("outcome", "dead_lettered")],
        );
        let arrived: BTreeSet<String> = stack.fake.request_ids().into_iter().collect();
        // And the transform has ended every message it received (its last acks and retries
        // are calls to SQS after delivery answered).
        let transform_messages =
            |outcome| metric(&metrics["transform"], "mpconnect_transform_messages_total", &[("outcome", outcome)]);
        let unsettled = transform_messages("received")
            - transform_messages("answered")
            - transform_messages("dead_lettered")
            - transform_messages("retried");
        if dead >= 3.0 && good.is_subset(&arrived) && unsettled == 0.0 {
            return Ok(metrics);
        }
        Err(format!(
            "the run did not settle: {dead} dead-lettered, {} of {} arrived, {unsettled} messages in the transform",
            good.intersection(&arrived).count(),
            good.len()
        ))
    })
    .await;

    // Metrics: what was sent, delivered and dead-lettered, stage by stage.
    let (ingest, transform, delivery) = (
        &metrics["ingest"],
        &metrics["transform"],
        &metrics["delivery"],
    );
    let requests = |status| {
        metric(
            ingest,
            "mpconnect_ingest_requests_total",
            &[("status", status)],
        )
    };
    assert_eq!(requests("202"), 6.0);
    assert_eq!(requests("400"), 1.0);
    assert_eq!(requests("403"), 1.0);
    let web = ("source", "web");
    let ingested = |outcome| {
        metric(
            ingest,
            "mpconnect_ingest_batches_total",
            &[web, ("outcome", outcome)],
        )
    };
    assert_eq!(ingested("queued"), 15.0);
    assert_eq!(ingested("dead_lettered"), 1.0);
    assert_eq!(ingested("invalid"), 1.0);
    assert_eq!(
        metric(ingest, "mpconnect_ingest_events_total", &[web]),
        30.0
    );
    let transformed = |outcome| {
        metric(
            transform,
            "mpconnect_transform_events_total",
            &[("connection", "web-to-mp"), ("outcome", outcome)],
        )
    };
    let messages = |outcome| {
        metric(
            transform,
            "mpconnect_transform_messages_total",
            &[("outcome", outcome)],
        )
    };
    // At least once: a message received again (a retried send, a late answer) is processed
    // again and counted again; every message received ends once per receive.
    let received = messages("received");
    assert!(received >= 15.0, "{transform}");
    assert_eq!(
        messages("answered") + messages("dead_lettered") + messages("retried"),
        received,
        "{transform}"
    );
    assert_eq!(transformed("in"), 2.0 * received);
    assert_eq!(
        transformed("out") + transformed("deduplicated") + transformed("filtered"),
        transformed("in")
    );
    assert_eq!(transformed("filtered"), 0.0);
    let mp = ("destination", "mp");
    let delivered = |outcome| {
        metric(
            delivery,
            "mpconnect_delivery_batches_total",
            &[mp, ("outcome", outcome)],
        )
    };
    // Delivered: what the destination accepted (12 distinct batches, a repeat counted again).
    let accepted_batches = stack.fake.accepted().len() as f64;
    assert!(accepted_batches >= 12.0);
    assert_eq!(delivered("delivered"), accepted_batches);
    assert_eq!(
        metric(
            delivery,
            "mpconnect_delivery_events_total",
            &[mp, ("outcome", "delivered")]
        ),
        2.0 * accepted_batches
    );
    // Dead-lettered: the letters kept in the store.
    let (_, s3) = runtime::testing::moto_clients().await;
    let letters = s3
        .list_objects_v2()
        .bucket(&stack.bucket)
        .prefix("dead-letters/mp/")
        .send()
        .await
        .unwrap()
        .key_count()
        .unwrap_or_default();
    assert!(letters >= 3);
    assert_eq!(delivered("dead_lettered"), f64::from(letters));
    assert_eq!(delivered("parked"), 0.0);
    let accepted_requests = metric(
        delivery,
        "mpconnect_delivery_requests_total",
        &[mp, ("status", "202")],
    );
    let accepted_by_fake = stack
        .fake
        .requests()
        .iter()
        .filter(|r| r.status == 202)
        .count();
    assert_eq!(accepted_requests, accepted_by_fake as f64);
    assert!(
        delivery.contains("mpconnect_queue_depth{queue=\"retry-mp\""),
        "delivery reports its retry queue's depth"
    );
    assert!(
        transform.contains("mpconnect_queue_oldest_message_age_seconds{queue=\"ingest\"}"),
        "the transform reports the ingest queue's lag"
    );
    for (stage, body) in &metrics {
        assert!(
            metric(body, "process_cpu_seconds_total", &[]) > 0.0
                && metric(body, "process_resident_memory_bytes", &[]) > 0.0,
            "{stage} reports its CPU and memory"
        );
    }

    // Traces: the caller's batch runs ingest → transform → delivery → the destination call.
    let wanted = [
        "ingest",
        "queue wait",
        "transform",
        "mpconnect.v1.DeliveryService/Deliver",
        "deliver",
        "destination call",
    ];
    let traced: Vec<Value> = eventually(Duration::from_secs(30), async || {
        let in_trace: Vec<Value> = spans(&spans_path)
            .into_iter()
            .filter(|s| s["trace_id"] == CALLER_TRACE)
            .collect();
        let names: BTreeSet<&str> = in_trace.iter().filter_map(|s| s["name"].as_str()).collect();
        if wanted.iter().all(|w| names.contains(w)) {
            return Ok(in_trace);
        }
        Err(format!("spans of the caller's trace: {names:?}"))
    })
    .await;
    let one = |name: &str| -> &Value {
        let found: Vec<&Value> = traced.iter().filter(|s| s["name"] == name).collect();
        assert_eq!(found.len(), 1, "one {name} span in {traced:#?}");
        found[0]
    };
    let (ingest_span, wait, transform_span, deliver, call) = (
        one("ingest"),
        one("queue wait"),
        one("transform"),
        one("deliver"),
        one("destination call"),
    );
    let services: BTreeSet<&str> = traced
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(
        services,
        BTreeSet::from([
            "mpconnect-ingest",
            "mpconnect-transform",
            "mpconnect-delivery"
        ])
    );
    assert_eq!(ingest_span["service"], "mpconnect-ingest");
    assert_eq!(ingest_span["resource"]["deployment.environment"], "test");
    assert!(
        traced.iter().all(|s| s["tenant"] == "known run"),
        "every export carried OTEL_EXPORTER_OTLP_HEADERS"
    );
    assert_eq!(ingest_span["parent_span_id"], CALLER_SPAN);
    assert_eq!(wait["parent_span_id"], ingest_span["span_id"]);
    assert!(wait["end"].as_u64() >= wait["start"].as_u64());
    assert_eq!(transform_span["service"], "mpconnect-transform");
    assert_eq!(transform_span["parent_span_id"], ingest_span["span_id"]);
    assert_eq!(deliver["service"], "mpconnect-delivery");
    assert_eq!(deliver["parent_span_id"], transform_span["span_id"]);
    assert_eq!(call["parent_span_id"], deliver["span_id"]);
    // The gRPC hop: a client span in the transform, the server's child of it by the
    // traceparent in the call's metadata.
    let rpc = |service: &str| -> &Value {
        traced
            .iter()
            .find(|s| {
                s["name"] == "mpconnect.v1.DeliveryService/Deliver" && s["service"] == service
            })
            .unwrap_or_else(|| panic!("a Deliver span from {service} in {traced:#?}"))
    };
    let (rpc_client, rpc_server) = (rpc("mpconnect-transform"), rpc("mpconnect-delivery"));
    assert_eq!(rpc_client["parent_span_id"], transform_span["span_id"]);
    assert_eq!(rpc_server["parent_span_id"], rpc_client["span_id"]);
    assert_eq!(ingest_span["attributes"]["source"], "web");
    assert_eq!(ingest_span["attributes"]["outcome"], "queued");
    assert_eq!(ingest_span["attributes"]["events"], 2);
    assert!(transform_span["attributes"]["message_id"].is_string());
    assert_eq!(transform_span["attributes"]["receive_count"], 1);
    assert_eq!(transform_span["attributes"]["events_in"], 2);
    assert_eq!(transform_span["attributes"]["events_out"], 2);
    assert_eq!(transform_span["attributes"]["destinations"], 1);
    assert_eq!(deliver["attributes"]["destination"], "mp");
    assert_eq!(deliver["attributes"]["connection"], "web-to-mp");
    assert_eq!(deliver["attributes"]["outcome"], "delivered");
    assert_eq!(call["attributes"]["status"], 202);
    // The destination was called in the same trace, as a child of the call span.
    let traceparent = format!("00-{CALLER_TRACE}-{}-01", call["span_id"].as_str().unwrap());
    assert!(
        stack
            .fake
            .requests()
            .iter()
            .any(|r| r.traceparent.as_deref() == Some(traceparent.as_str())),
        "the destination got {traceparent}"
    );
    // Every other batch is a trace of its own; the refused ones end dead, with mParticle's 400.
    // (Each stage exports on its own schedule: wait until every batch's spans are in.)
    let (ingest_traces, dead) = eventually(Duration::from_secs(30), async || {
        let all = spans(&spans_path);
        let ingest_traces: BTreeSet<String> = all
            .iter()
            .filter(|s| s["name"] == "ingest" && s["attributes"]["outcome"] == "queued")
            .filter_map(|s| s["trace_id"].as_str().map(str::to_owned))
            .collect();
        let dead: Vec<Value> = all
            .into_iter()
            .filter(|s| s["name"] == "deliver" && s["attributes"]["outcome"] == "dead")
            .collect();
        if ingest_traces.len() >= 14 && dead.len() >= 3 {
            return Ok((ingest_traces, dead));
        }
        Err(format!(
            "one trace per batch: {} batch traces, {} dead batches",
            ingest_traces.len(),
            dead.len()
        ))
    })
    .await;
    assert_eq!(
        ingest_traces.len(),
        14,
        "one trace per sampled batch (all but unsampled-1)"
    );
    let unsampled: Vec<Value> = spans(&spans_path)
        .into_iter()
        .filter(|s| s["trace_id"] == UNSAMPLED_TRACE)
        .collect();
    assert!(
        unsampled.is_empty(),
        "spans of an unsampled trace: {unsampled:#?}"
    );
    let carried_on = stack.fake.requests().into_iter().find_map(|r| {
        let traceparent = r.traceparent?;
        let rest = traceparent.strip_prefix(&format!("00-{UNSAMPLED_TRACE}-"))?;
        Some(rest.to_owned())
    });
    let carried_on = carried_on.expect("the destination got the unsampled trace's context");
    assert!(
        carried_on.len() == 19
            && carried_on.ends_with("-00")
            && !carried_on.starts_with(CALLER_SPAN),
        "the unsampled trace went on, unsampled, with a span id of ours: {carried_on}"
    );
    assert!(dead.len() >= 3);
    assert!(dead.iter().all(|s| s["attributes"]["status"] == 400));

    // Neither a secret nor an identity, in any log or span.
    let logs = stack.logs();
    let exported = std::fs::read_to_string(&spans_path).unwrap();
    assert!(logs.lines().count() > 10, "the stages logged: {logs}");
    let basic = |key: &str, secret: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
    };
    for secret in [
        SOURCE_SECRET.to_owned(),
        DESTINATION_SECRET.to_owned(),
        WRONG_SECRET.to_owned(),
        basic(SOURCE_KEY, SOURCE_SECRET),
        basic(DESTINATION_KEY, DESTINATION_SECRET),
        basic(SOURCE_KEY, WRONG_SECRET),
        EMAIL.to_owned(),
        CUSTOMER_ID.to_owned(),
        IP.to_owned(),
    ] {
        assert!(!logs.contains(&secret), "{secret} in the logs");
        assert!(!exported.contains(&secret), "{secret} in the spans");
    }

    // The dashboard queries only metrics the stages export.
    let exported_names: BTreeSet<String> = metrics
        .values()
        .flat_map(|body| body.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/mpconnect.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let queried = dashboard_metrics(&dashboard);
    assert!(queried.len() >= 15, "the dashboard queries {queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|m| !exported_names.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which no stage exports"
    );
}

/// Every metric name in the dashboard's PromQL expressions.
fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if token.starts_with("mpconnect_") || token.starts_with("process_") {
                    names.insert(token.to_owned());
                }
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_collector_listening_costs_no_events() {
    // Spans are exported to a port nobody listens on: they are dropped, the events are not.
    let nowhere = format!("http://127.0.0.1:{}", common::free_port());
    let stack = Stack::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &nowhere),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ])
    .await;
    stack.ready().await;
    let client = reqwest::Client::new();
    let ids: BTreeSet<String> = (0..20).map(|i| format!("no-collector-{i}")).collect();
    let body: Vec<Value> = ids.iter().map(|id| batch(id)).collect();
    for chunk in body.chunks(5) {
        let answer = client
            .post(format!("{}/v2/bulkevents", stack.ingest_url))
            .basic_auth(SOURCE_KEY, Some(SOURCE_SECRET))
            .json(&chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
    }
    eventually(Duration::from_secs(30), async || {
        if ids.is_subset(&stack.fake.request_ids().into_iter().collect()) {
            return Ok(());
        }
        Err("events stalled without a collector".to_owned())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_source_makes_a_trace_per_object_with_a_span_per_batch() {
    // mParticle's S3 output: a bucket whose new objects are announced on an SQS queue.
    let (sqs, s3) = runtime::testing::moto_clients().await;
    let (bucket, queue_url) = runtime::testing::notifying_bucket(&sqs, &s3).await;

    let receiver_dir = tempfile::tempdir().unwrap();
    let spans_path = receiver_dir.path().join("spans.jsonl");
    let (_receiver, port) = receiver(&spans_path);
    let endpoint = format!("http://127.0.0.1:{port}");
    let extra = format!(
        r#"
        [[sources]]
        id = "mp-s3"
        kind = "s3"
        notification_queue = "{queue_url}"
        [[connections]]
        id = "s3-to-mp"
        source = "mp-s3"
        destinations = ["mp"]
        "#
    );
    let stack = Stack::start_with(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
        &extra,
    )
    .await;
    stack.ready().await;
    let ids: Vec<String> = (0..3).map(|i| format!("s3-line-{i}")).collect();
    let object: String = ids.iter().map(|id| format!("{}\n", batch(id))).collect();
    s3.put_object()
        .bucket(&bucket)
        .key("in/App_20261129_00001.txt")
        .body(object.into_bytes().into())
        .send()
        .await
        .unwrap();

    let (object_span, lines, delivered) = eventually(Duration::from_secs(60), async || {
        let all = spans(&spans_path);
        let object_span = all.iter().find(|s| s["name"] == "s3 object").cloned();
        let in_trace = |name: &str| -> Vec<Value> {
            all.iter()
                .filter(|s| {
                    s["name"] == name
                        && object_span
                            .as_ref()
                            .is_some_and(|o| s["trace_id"] == o["trace_id"])
                })
                .cloned()
                .collect()
        };
        let (lines, delivered) = (in_trace("ingest"), in_trace("deliver"));
        if let Some(object_span) = object_span.clone()
            && lines.len() >= 3
            && delivered.len() >= 3
        {
            return Ok((object_span, lines, delivered));
        }
        Err(format!(
            "the object's trace: {object_span:?}, {} line spans, {} deliver spans",
            lines.len(),
            delivered.len()
        ))
    })
    .await;
    assert_eq!(object_span["service"], "mpconnect-ingest");
    assert_eq!(object_span["parent_span_id"], "", "a trace of its own");
    assert_eq!(object_span["attributes"]["batches"], 3);
    assert_eq!(lines.len(), 3, "a span per batch");
    for line in &lines {
        assert_eq!(line["parent_span_id"], object_span["span_id"]);
        assert_eq!(line["attributes"]["outcome"], "queued");
    }
    let line_numbers: BTreeSet<i64> = lines
        .iter()
        .filter_map(|l| l["attributes"]["line"].as_i64())
        .collect();
    assert_eq!(line_numbers, BTreeSet::from([1, 2, 3]));
    assert!(
        delivered
            .iter()
            .all(|d| d["attributes"]["outcome"] == "delivered")
    );
    let arrived: BTreeSet<String> = stack.fake.request_ids().into_iter().collect();
    assert!(ids.iter().all(|id| arrived.contains(id)));
}
