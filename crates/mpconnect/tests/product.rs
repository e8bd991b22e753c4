//! The binary as a user meets it: `mpconnect all` on the shipped default config, the three
//! stages as separate processes on SQS with an mParticle destination, and `validate`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn python() -> String {
    std::env::var("MPCONNECT_TEST_PYTHON").expect(
        "MPCONNECT_TEST_PYTHON is not set: run the suite with scripts/test, which creates the \
         venv with mParticle's Python SDK",
    )
}

fn mpconnect() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mpconnect"));
    command
        .env("MPCONNECT_LOG_FORMAT", "json")
        .env_remove("MPCONNECT_CONFIG");
    command
}

/// Kills the process when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mpconnect all` on the embedded default in `data`; returns it, its URL, key, secret.
fn start_all(data: &Path) -> (Running, String, String, String) {
    let mut child = mpconnect()
        .arg("all")
        .env("MPCONNECT__DATA_DIR", data)
        .env("MPCONNECT__LISTEN__INGEST", "127.0.0.1:0")
        .env("MPCONNECT__LISTEN__DELIVERY", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut key, mut secret) = (None, None, None);
    while key.is_none() {
        let line = lines
            .next()
            .expect("mpconnect all printed its welcome")
            .unwrap();
        if let Some(rest) = line.strip_prefix("mpconnect all: listening on ") {
            url = Some(rest.trim().to_owned());
        }
        if line.contains("API key") {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |w: &str| {
                words
                    .iter()
                    .position(|x| *x == w)
                    .map(|i| words[i + 1].to_owned())
            };
            key = after("key");
            secret = after("secret");
        }
    }
    // Keep reading stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Running(child), url.unwrap(), key.unwrap(), secret.unwrap())
}

/// `source_request_id` → events, over every NDJSON file of the file destination.
fn landed(dir: &Path) -> (BTreeMap<String, usize>, usize) {
    let mut found = BTreeMap::new();
    let mut lines = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let batch = schema::decode_batch(line.as_bytes()).expect("one batch a line");
            lines += 1;
            found.insert(
                batch.source_request_id.unwrap_or_default(),
                batch.events.len(),
            );
        }
    }
    (found, lines)
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn all_on_the_default_config_delivers_what_the_python_sdk_sends_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let events = data.join("events");
    let (running, url, key, secret) = start_all(&data);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/post_events.py");
    let output = Command::new(python())
        .args([script, &format!("{url}/v2"), &key, &secret, "25", "sdk"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let accepted: BTreeSet<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(accepted.len(), 25);
    wait_for(
        "the SDK's batches in the file destination",
        Duration::from_secs(30),
        || {
            let (found, _) = landed(&events);
            accepted.iter().all(|id| found.get(id) == Some(&2))
        },
    );

    // A burst of 202s, then kill -9 at once.
    let client = reqwest::blocking::Client::new();
    let mut acknowledged = Vec::new();
    for i in 0..40 {
        let body: Vec<serde_json::Value> = (0..10)
            .map(|j| {
                serde_json::json!({
                    "environment": "development",
                    "source_request_id": format!("burst-{i}-{j}"),
                    "user_identities": {"customerid": format!("c-{j}")},
                    "events": [{"event_type": "custom_event", "data": {"event_name": "burst", "custom_event_type": "other"}}]
                })
            })
            .collect();
        let response = client
            .post(format!("{url}/v2/bulkevents"))
            .basic_auth(&key, Some(&secret))
            .json(&body)
            .send()
            .unwrap();
        if response.status() == 202 {
            acknowledged.extend((0..10).map(|j| format!("burst-{i}-{j}")));
        }
    }
    drop(running); // SIGKILL
    assert_eq!(acknowledged.len(), 400);

    let (_again, _, key2, _) = start_all(&data);
    assert_eq!(key2, key, "the generated credentials are kept");
    wait_for(
        "every acknowledged batch after the restart",
        Duration::from_secs(60),
        || {
            let (found, _) = landed(&events);
            acknowledged.iter().all(|id| found.contains_key(id))
        },
    );
    let (found, lines) = landed(&events);
    let duplicates = lines - found.len();
    eprintln!(
        "after kill -9: {} batches acknowledged, all found, {duplicates} duplicate lines",
        acknowledged.len()
    );
}

#[test]
fn validate_lists_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        r#"
        [[sources]]
        id = "web"
        kind = "http"
        api_key = "key"
        api_secret = { env = "MPCONNECT_TEST_NO_SUCH_SECRET" }
        colour = "blue"

        [[destinations]]
        id = "file"
        kind = "file"

        [[connections]]
        id = "web-out"
        source = "web"
        destinations = ["file", "mparticle-eu"]
        "#,
    )
    .unwrap();
    let output = mpconnect()
        .args(["validate", "--config", path.to_str().unwrap()])
        .env_remove("MPCONNECT_TEST_NO_SUCH_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "sources.0.colour: unknown key",
        "connections[0].destinations[1]: no destination \"mparticle-eu\"",
        "sources[0].api_secret: environment variable MPCONNECT_TEST_NO_SUCH_SECRET is not set",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(expected)),
            "{expected:?} not in:\n{stdout}"
        );
    }
    assert!(String::from_utf8_lossy(&output.stderr).contains("3 problem(s)"));

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/local.toml");
    let output = mpconnect()
        .args(["validate", "--config", shipped])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn keys_new_prints_a_fresh_key_and_secret() {
    let run =
        || String::from_utf8(mpconnect().args(["keys", "new"]).output().unwrap().stdout).unwrap();
    let (a, b) = (run(), run());
    assert!(a.contains("api_key") && a.contains("api_secret"));
    assert_ne!(a, b);
}

#[test]
fn the_benchmark_runs_end_to_end_and_loses_nothing() {
    // A short run: the figures are not asserted (they are the benchmark's to print), but the
    // run must work end to end and every accepted event must arrive once.
    let out = mpconnect()
        .args([
            "bench",
            "--seconds",
            "3",
            "--warmup",
            "1",
            "--connections",
            "2",
            "--drain-timeout",
            "60",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("delivered ") && l.contains("unique"))
        .unwrap_or_else(|| panic!("no delivery line in:\n{text}"));
    assert!(line.contains("missing 0"), "{line}");
    assert!(line.contains(", 0 repeated"), "{line}");
    assert!(!line.contains("delivered 0 events"), "{line}");
    assert!(
        text.contains("malformed 0, over limits 0, unauthorized 0"),
        "{text}"
    );
}
