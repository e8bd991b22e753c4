//! The S3 source against a real moto server, set up as a user sets up mParticle's S3 output:
//! a bucket whose `s3:ObjectCreated:*` notifications go to an SQS queue.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use common::decode;
use ingest::s3::{S3Source, S3SourceSettings, backfill};
use mpconnect_ingest as ingest;
use runtime::envelope::attr;
use runtime::queue::{EmbeddedSync, SqsQueue, SqsSettings, embedded_stage_queue, local_data};
use runtime::{AnyQueue, Queue, ReceiveOptions, Received, StageQueue};

struct Moto {
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
}

async fn moto() -> Moto {
    let (sqs, s3) = runtime::testing::moto_clients().await;
    Moto { s3, sqs }
}

use runtime::testing::unique;

/// A bucket whose object-created notifications go to a fresh queue, as in mParticle's docs.
async fn notifying_bucket(m: &Moto) -> (String, String) {
    runtime::testing::notifying_bucket(&m.sqs, &m.s3).await
}

struct Pipeline {
    queue: StageQueue,
    dead_letter: StageQueue,
    notifications: SqsQueue,
    _dir: tempfile::TempDir,
}

async fn pipeline(m: &Moto, notification_queue: &str) -> Pipeline {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = local_data(dir.path(), EmbeddedSync::Normal).unwrap();
    let notifications = SqsQueue::connect(m.sqs.clone(), SqsSettings::new(notification_queue))
        .await
        .unwrap();
    Pipeline {
        queue: embedded_stage_queue(&db, "ingest", &store),
        dead_letter: embedded_stage_queue(&db, "ingest-dlq", &store),
        notifications,
        _dir: dir,
    }
}

fn source(m: &Moto, p: &Pipeline, settings: S3SourceSettings) -> S3Source {
    S3Source::new(
        settings,
        m.s3.clone(),
        AnyQueue::Sqs(p.notifications.clone()),
        p.queue.clone(),
        Some(p.dead_letter.clone()),
    )
}

fn running(
    source: &S3Source,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let source = source.clone();
    let task = tokio::spawn(async move {
        source
            .run(async move {
                let _ = rx.await;
            })
            .await
    });
    (task, tx)
}

/// mParticle-style lines: one outbound-dialect batch each.
fn lines(seed: u64, count: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = seed;
    while out.len() < count {
        let batches: Vec<serde_json::Value> =
            serde_json::from_slice(&schema::testing::bulk_request(s, true)).unwrap();
        out.extend(batches.into_iter().map(|b| b.to_string()));
        s += 1;
    }
    out.truncate(count);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

async fn put(m: &Moto, bucket: &str, key: &str, body: Vec<u8>) {
    m.s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap();
}

/// Receives until `count` messages are in hand (acknowledging them) or `within` passes.
async fn collect(queue: &StageQueue, count: usize, within: Duration) -> Vec<Received> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    while all.len() < count && Instant::now() < deadline {
        let got = queue
            .receive(ReceiveOptions {
                max_messages: 10,
                wait: Duration::from_millis(500),
                visibility: Duration::from_secs(60),
            })
            .await
            .unwrap();
        if !got.is_empty() {
            queue
                .ack(&got.iter().map(|m| m.receipt.clone()).collect::<Vec<_>>())
                .await
                .unwrap();
        }
        all.extend(got);
    }
    all
}

async fn notifications_left(p: &Pipeline) -> u64 {
    let d = p.notifications.depth().await.unwrap();
    d.visible + d.in_flight + d.delayed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_gzip_files_in_every_layout_arrive_line_for_line() {
    let m = moto().await;
    let (bucket, notification_queue) = notifying_bucket(&m).await;
    let p = pipeline(&m, &notification_queue).await;
    let source = source(&m, &p, S3SourceSettings::default());
    let (task, stop) = running(&source);

    let files: [(&str, bool); 4] = [
        ("JazzApp_20261129120000123456_12345.txt", false),
        ("exports/JazzApp_20261129120001123456_23456.txt", true),
        (
            "exports/2026-11-29/JazzApp_20261129120002123456_34567.txt",
            false,
        ),
        (
            "exports/2026-11-29/Jazz App+Live_20261129120003123456_45678.txt",
            true,
        ),
    ];
    let mut sent: HashMap<(String, u64), String> = HashMap::new();
    for (i, (key, compressed)) in files.iter().enumerate() {
        let content = lines(i as u64 * 100 + 1, 10);
        for (n, line) in content.iter().enumerate() {
            sent.insert((format!("s3://{bucket}/{key}"), n as u64 + 1), line.clone());
        }
        let body = content.join("\n") + "\n";
        put(
            &m,
            &bucket,
            key,
            if *compressed {
                gzip(body.as_bytes())
            } else {
                body.into_bytes()
            },
        )
        .await;
    }

    let got = collect(&p.queue, 40, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 40);
    for (message, batch) in got.iter().zip(decode(&got)) {
        let object = message.attributes[attr::S3_OBJECT].to_owned();
        let line: u64 = message.attributes[attr::S3_LINE].parse().unwrap();
        let original = &sent[&(object.clone(), line)];
        assert_eq!(
            batch,
            schema::parse_batch(original.as_bytes()).unwrap(),
            "{object} line {line}"
        );
        assert_eq!(&message.attributes[attr::SOURCE], "mparticle-s3");
        assert_eq!(message.attributes[attr::BATCH_ID].len(), 32);
    }
    // One trace per object.
    let traces: BTreeMap<String, std::collections::BTreeSet<String>> =
        got.iter().fold(BTreeMap::new(), |mut acc, m| {
            acc.entry(m.attributes[attr::S3_OBJECT].to_owned())
                .or_default()
                .insert(m.attributes["traceparent"][3..35].to_owned());
            acc
        });
    assert!(traces.values().all(|t| t.len() == 1), "{traces:?}");
    assert_eq!(
        source
            .stats()
            .objects
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        notifications_left(&p).await,
        0,
        "every notification deleted, the s3:TestEvent included"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verification_file_and_the_test_event_leave_nothing() {
    let m = moto().await;
    let (bucket, notification_queue) = notifying_bucket(&m).await;
    let p = pipeline(&m, &notification_queue).await;
    let source = source(&m, &p, S3SourceSettings::default());
    let (task, stop) = running(&source);
    put(
        &m,
        &bucket,
        "mParticle_Bucket_Verification_20261129-120000.txt",
        b"{}".to_vec(),
    )
    .await;
    put(
        &m,
        &bucket,
        "folder/mparticle_validation.txt",
        b"{}".to_vec(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while source
        .stats()
        .notifications
        .load(std::sync::atomic::Ordering::Relaxed)
        < 3
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        source
            .stats()
            .notifications
            .load(std::sync::atomic::Ordering::Relaxed),
        3,
        "test event + two files"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(notifications_left(&p).await, 0);
    assert!(
        collect(&p.queue, 1, Duration::from_secs(1))
            .await
            .is_empty()
    );
    assert!(
        collect(&p.dead_letter, 1, Duration::from_secs(1))
            .await
            .is_empty()
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_malformed_line_costs_only_itself() {
    let m = moto().await;
    let (bucket, notification_queue) = notifying_bucket(&m).await;
    let p = pipeline(&m, &notification_queue).await;
    let source = source(&m, &p, S3SourceSettings::default());
    let (task, stop) = running(&source);
    let mut content = lines(7, 5);
    content[2] = r#"{"environment":"production","events":[{"event_type":"custom_event","data":{"custom_event_type":"other"}}]"#.to_owned();
    put(
        &m,
        &bucket,
        "App_20261129120000123456_11111.txt",
        (content.join("\n") + "\n").into_bytes(),
    )
    .await;

    let got = collect(&p.queue, 4, Duration::from_secs(30)).await;
    let mut good: Vec<u64> = got
        .iter()
        .map(|m| m.attributes[attr::S3_LINE].parse().unwrap())
        .collect();
    good.sort();
    assert_eq!(good, [1, 2, 4, 5]);
    let dead = collect(&p.dead_letter, 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].attributes[attr::S3_LINE], "3");
    assert_eq!(
        &dead[0].attributes[attr::S3_OBJECT],
        format!("s3://{bucket}/App_20261129120000123456_11111.txt")
    );
    assert!(
        dead[0].attributes["mp-rejected-because"].starts_with("Malformed batch: EOF"),
        "{:?}",
        dead[0].attributes
    );
    assert_eq!(std::str::from_utf8(&dead[0].body).unwrap(), content[2]);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_object_slower_than_its_visibility_timeout_is_read_once() {
    let m = moto().await;
    let (bucket, notification_queue) = notifying_bucket(&m).await;
    let p = pipeline(&m, &notification_queue).await;
    // Two slots: were the heartbeat to fail, the second would take the notification again.
    let settings = S3SourceSettings {
        concurrency: 2,
        visibility: Duration::from_secs(5),
        max_lines_per_second: Some(500),
        ..S3SourceSettings::default()
    };
    let source = source(&m, &p, settings);
    let content = lines(1000, 4300);
    let body = content.join("\n") + "\n";
    assert!(body.len() > 50 * 1000 * 1000, "{} bytes", body.len());
    let (task, stop) = running(&source);
    let started = Instant::now();
    put(
        &m,
        &bucket,
        "big/App_20261129120000123456_99999.txt",
        body.into_bytes(),
    )
    .await;

    let got = collect(&p.queue, content.len(), Duration::from_secs(120)).await;
    let took = started.elapsed();
    assert_eq!(got.len(), content.len());
    assert!(
        took > Duration::from_secs(5),
        "the object must outlast the visibility timeout to prove anything ({took:?})"
    );
    tokio::time::sleep(Duration::from_secs(6)).await; // past one more timeout: nothing comes back
    assert!(
        collect(&p.queue, 1, Duration::from_secs(1))
            .await
            .is_empty(),
        "lines were queued twice"
    );
    assert_eq!(
        source
            .stats()
            .notifications
            .load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the test event and the object, once each"
    );
    assert_eq!(notifications_left(&p).await, 0);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_object_loses_no_line() {
    let m = moto().await;
    let (bucket, notification_queue) = notifying_bucket(&m).await;
    let p = pipeline(&m, &notification_queue).await;
    let settings = S3SourceSettings {
        visibility: Duration::from_secs(2),
        max_lines_per_second: Some(100),
        ..S3SourceSettings::default()
    };
    let content = lines(50, 300);
    let first = source(&m, &p, settings.clone());
    let (task, _stop) = running(&first);
    put(
        &m,
        &bucket,
        "App_20261129120000123456_22222.txt",
        gzip((content.join("\n") + "\n").as_bytes()),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while first
        .stats()
        .notifications
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
        || p.queue.depth().await.unwrap().visible < 50
    {
        assert!(
            Instant::now() < deadline,
            "the first consumer never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort(); // killed: no cleanup, no ack
    let _ = task.await;

    let second = source(&m, &p, settings);
    let (task, stop) = running(&second);
    let got = collect(&p.queue, 400, Duration::from_secs(30)).await;
    let mut by_line: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for message in &got {
        by_line
            .entry(message.attributes[attr::S3_LINE].parse().unwrap())
            .or_default()
            .push(message.attributes[attr::BATCH_ID].to_owned());
    }
    assert_eq!(by_line.len(), 300, "every line arrived");
    assert!(
        got.len() > 300,
        "the restart read the object again (duplicates are allowed)"
    );
    for (line, ids) in &by_line {
        assert!(
            ids.iter().all(|id| id == &ids[0]),
            "line {line}: repeats carry the same batch id"
        );
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_queues_a_prefix_of_100_files_and_resumes() {
    let m = moto().await;
    let bucket = unique("mp-forwarding");
    m.s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let notification_queue = unique("unused");
    m.sqs
        .create_queue()
        .queue_name(&notification_queue)
        .send()
        .await
        .unwrap();
    let p = pipeline(&m, &notification_queue).await;
    let source = source(&m, &p, S3SourceSettings::default());
    let content = lines(300, 200);
    let mut keys = Vec::new();
    for i in 0..100 {
        let key = format!(
            "exports/2026-11-{:02}/JazzApp_20261129120000{i:06}_{:05}.txt",
            1 + i % 28,
            10000 + i
        );
        let body = content[i * 2..i * 2 + 2].join("\n") + "\n";
        put(
            &m,
            &bucket,
            &key,
            if i % 2 == 0 {
                gzip(body.as_bytes())
            } else {
                body.into_bytes()
            },
        )
        .await;
        keys.push(key);
    }
    put(
        &m,
        &bucket,
        "exports/mParticle_Bucket_Verification_20261129-120000.txt",
        b"{}".to_vec(),
    )
    .await;
    put(
        &m,
        &bucket,
        "elsewhere/JazzApp_20261129120000000000_00001.txt",
        content[0].clone().into_bytes(),
    )
    .await;

    // An earlier run finished 40 objects before it was interrupted.
    let state = tempfile::NamedTempFile::new().unwrap();
    let mut sorted = keys.clone();
    sorted.sort();
    std::fs::write(state.path(), sorted[..40].join("\n") + "\n").unwrap();

    let mut reports = Vec::new();
    let summary = backfill(&source, &bucket, "exports/", Some(state.path()), |p| {
        reports.push(p)
    })
    .await
    .unwrap();
    assert_eq!(summary.objects, 60);
    assert_eq!(
        summary.skipped, 41,
        "40 done before, and the verification file"
    );
    assert_eq!(summary.batches, 120);
    assert_eq!(summary.events, 1200);
    assert_eq!(summary.bad_lines, 0);
    assert_eq!(reports.first().unwrap().objects_total, 60);
    assert_eq!(reports.last().unwrap().objects_done, 60);
    assert_eq!(
        collect(&p.queue, 200, Duration::from_secs(10)).await.len(),
        120
    );

    let again = backfill(&source, &bucket, "exports/", Some(state.path()), |_| {})
        .await
        .unwrap();
    assert_eq!(
        (again.objects, again.skipped),
        (0, 101),
        "a finished backfill has nothing left"
    );
}
