//! A message the embedded queue accepted survives `kill -9` of the process that sent it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mpconnect_runtime::queue::{EmbeddedDb, EmbeddedSync};
use mpconnect_runtime::{Message, Queue};

const CHILD_DB: &str = "MPCONNECT_TEST_CHILD_DB";
const MESSAGES: usize = 1000;

/// Runs only in the child: sends 1,000 messages in batches of 10, says so, then waits to be
/// killed.
#[tokio::test]
#[ignore = "a helper: sent_messages_survive_kill_9 runs it as its child process"]
async fn child_sender() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let db = EmbeddedDb::open(path.as_ref(), EmbeddedSync::Normal).unwrap();
    let queue = db.queue("ingest");
    for batch in 0..MESSAGES / 10 {
        let messages = (0..10)
            .map(|i| Message::new(format!("message {}", batch * 10 + i)))
            .collect();
        queue.send(messages).await.unwrap();
    }
    println!("SENT {MESSAGES}");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_sender",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let said = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("SENT")))
        .is_some();
    assert!(said, "the child did not report its sends");
    child.kill().unwrap(); // SIGKILL: no destructor, no flush, no checkpoint
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");

    let db = EmbeddedDb::open(&path, EmbeddedSync::Normal).unwrap();
    let queue = db.queue("ingest");
    let oldest = queue
        .oldest_sent_at_ms()
        .await
        .unwrap()
        .expect("messages are waiting");
    assert!(
        (mpconnect_runtime::now_ms() - oldest).abs() < 60_000,
        "the oldest waits since it was sent"
    );
    let bodies: std::collections::HashSet<String> =
        mpconnect_runtime::testing::drain(&queue, Duration::ZERO)
            .await
            .iter()
            .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
            .collect();
    assert_eq!(bodies.len(), MESSAGES);
    assert_eq!(
        queue.oldest_sent_at_ms().await.unwrap(),
        None,
        "nothing waits once all are acked"
    );
    assert!((0..MESSAGES).all(|i| bodies.contains(&format!("message {i}"))));
}
