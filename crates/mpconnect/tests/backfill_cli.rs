//! `mpconnect backfill` as a user runs it: the built binary, a bucket on moto, the embedded
//! queue in a data directory.

use std::process::Command;

use aws_sdk_s3::primitives::ByteStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_reports_its_counts_and_resumes() {
    let endpoint = runtime::testing::moto_endpoint();
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
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_mpconnect"))
            .args([
                "backfill",
                &format!("s3://{bucket}/exports/"),
                "--quiet",
                "--region",
                "us-east-1",
                "--endpoint-url",
                &endpoint,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--state-file")
            .arg(dir.path().join("backfill.state"))
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        stdout.contains(
            "5 objects read, 0 skipped, 15 lines, 10 batches (10 events) queued, 5 bad lines"
        ),
        "{stdout}"
    );
    let again = run();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("0 objects read, 5 skipped"), "{stdout}");
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
