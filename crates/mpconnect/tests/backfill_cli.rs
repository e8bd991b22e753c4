//! `mpconnect backfill` as a user runs it: the built binary, a bucket on moto, and the
//! configuration's own queues.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;

/// Five export objects, each of two good lines (one event each) and a bad one.
async fn export_bucket() -> String {
    let (_, s3) = runtime::testing::moto_clients().await;
    let bucket = runtime::testing::unique("mp-forwarding");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let line = r#"{"environment":"production","events":[{"event_type":"session_start","data":{"timestamp_unixtime_ms":"1700000000000"}}]}"#;
    for i in 0..5 {
        let body = format!("{line}\n{line}\nnot json\n");
        s3.put_object()
            .bucket(&bucket)
            .key(format!("exports/App_2026112912000000000{i}_1234{i}.txt"))
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .unwrap();
    }
    bucket
}

/// `mpconnect <args>` on the shipped default configuration, its data in `data`.
fn mpconnect(data: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mpconnect"));
    command
        .env_remove("MPCONNECT_CONFIG")
        .env("MPCONNECT__DATA_DIR", data)
        .env("MPCONNECT__LISTEN__INGEST", "127.0.0.1:0")
        .env("MPCONNECT__LISTEN__DELIVERY", "127.0.0.1:0")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test");
    command
}

fn backfill(data: &Path, bucket: &str) -> std::process::Output {
    mpconnect(data)
        .args([
            "backfill",
            &format!("s3://{bucket}/exports/"),
            "--quiet",
            "--region",
            "us-east-1",
            "--endpoint-url",
            &runtime::testing::moto_endpoint(),
        ])
        .arg("--state-file")
        .arg(data.join("backfill.state"))
        .output()
        .unwrap()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines in the shipped configuration's file destination.
fn landed(data: &Path) -> usize {
    std::fs::read_dir(data.join("events"))
        .into_iter()
        .flatten()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .map(|text| text.lines().filter(|l| !l.is_empty()).count())
        .sum()
}

/// With the shipped configuration and no other flag, backfill queues into the queue that
/// `mpconnect all` reads, as the source its connection takes: the objects' events land in the
/// file destination. A rerun with the same state file skips what was done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_feeds_the_queue_all_reads_and_resumes() {
    let bucket = export_bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let first = backfill(&data, &bucket);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        stdout.contains(
            "as source local: 5 objects read, 0 skipped, 15 lines, 10 batches (10 events) queued, 5 bad lines"
        ),
        "{stdout}"
    );
    let again = backfill(&data, &bucket);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("0 objects read, 5 skipped"), "{stdout}");

    // The bad lines wait in the same configuration's ingest dead-letter queue; `dlq list`
    // without --destination shows every destination and that queue.
    let listed = mpconnect(&data).args(["dlq", "list"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{stdout}");
    assert!(
        stdout.contains("0 dead letter(s) for local-file"),
        "{stdout}"
    );
    assert!(
        stdout.contains("5 message(s) in the ingest dead-letter queue"),
        "{stdout}"
    );

    let _all = Running(
        mpconnect(&data)
            .arg("all")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while landed(&data) < 10 {
        assert!(
            Instant::now() < deadline,
            "mpconnect all delivered {} of the 10 backfilled batches",
            landed(&data)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(landed(&data), 10, "each once");
}

#[test]
fn a_location_that_is_not_s3_is_refused_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_mpconnect"))
        .args(["backfill", "bucket/prefix", "--quiet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("s3://bucket/prefix"));
}
