//! The three stages as three processes, as Kubernetes runs them: SQS queues and an S3 store on
//! moto, a fake mParticle Events API as the destination. Each process's logs go to a file.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use delivery::testing::FakeMparticle;

pub const SOURCE_KEY: &str = "web-key";
pub const SOURCE_SECRET: &str = "web-secret-5f1c9e";
pub const DESTINATION_KEY: &str = "mp-key";
pub const DESTINATION_SECRET: &str = "mp-secret-83d2aa";

pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free now and never handed out before in this test binary: the tests of a binary
/// run side by side, and a port released here can come back from the kernel for another
/// test's stage, which then cannot bind it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn python() -> String {
    std::env::var("MPCONNECT_TEST_PYTHON").expect(
        "MPCONNECT_TEST_PYTHON is not set: run the suite with scripts/test, which creates the \
         Python environment",
    )
}

pub struct Stack {
    pub fake: FakeMparticle,
    /// The S3 store (claim checks, dead letters) on moto.
    pub bucket: String,
    pub dir: tempfile::TempDir,
    pub ingest_url: String,
    /// `/metrics` of each stage, by target name.
    pub metrics_urls: Vec<(&'static str, String)>,
    pub processes: Vec<Running>,
}

impl Stack {
    /// Starts delivery, transform and ingest with `env` added to each process's environment.
    pub async fn start(env: &[(&str, &str)]) -> Stack {
        Self::start_with(env, "").await
    }

    /// As [`Stack::start`], with `extra` TOML (more sources, connections) after the config.
    pub async fn start_with(env: &[(&str, &str)], extra: &str) -> Stack {
        let moto = runtime::testing::moto_endpoint();
        let (sqs, s3) = runtime::testing::moto_clients().await;
        let mut urls = Vec::new();
        for name in ["ingest", "ingest-dlq", "retry-mp"] {
            let name = runtime::testing::unique(name);
            urls.push(
                sqs.create_queue()
                    .queue_name(name)
                    .send()
                    .await
                    .unwrap()
                    .queue_url
                    .unwrap(),
            );
        }
        let bucket = runtime::testing::unique("claims");
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        let fake = FakeMparticle::start(DESTINATION_KEY, DESTINATION_SECRET).await;

        let dir = tempfile::tempdir().unwrap();
        let (ingest_port, delivery_port) = (free_port(), free_port());
        let (transform_admin, delivery_admin) = (free_port(), free_port());
        let config = format!(
            r#"
            data_dir = "{data}"
            [listen]
            ingest = "127.0.0.1:{ingest_port}"
            delivery = "127.0.0.1:{delivery_port}"
            transform_admin = "127.0.0.1:{transform_admin}"
            delivery_admin = "127.0.0.1:{delivery_admin}"
            [queues]
            backend = "sqs"
            ingest = "{ingest}"
            ingest_dead_letter = "{dlq}"
            [store]
            backend = "s3"
            bucket = "{bucket}"
            [aws]
            region = "us-east-1"
            endpoint_url = "{moto}"
            [transform]
            delivery_endpoint = "127.0.0.1:{delivery_port}"
            # moto serves few long polls at once: the default dozen pollers would starve it.
            pollers = 4
            [[sources]]
            id = "web"
            kind = "http"
            api_key = "{SOURCE_KEY}"
            api_secret = {{ env = "WEB_SECRET" }}
            [[destinations]]
            id = "mp"
            kind = "mparticle"
            base_url = "{fake}"
            api_key = {{ env = "MP_KEY" }}
            api_secret = {{ file = "{secret_file}" }}
            retry_queue = "{retry}"
            [[connections]]
            id = "web-to-mp"
            source = "web"
            destinations = ["mp"]
            {extra}
            "#,
            data = dir.path().display(),
            ingest = urls[0],
            dlq = urls[1],
            retry = urls[2],
            fake = fake.base_url(),
            secret_file = dir.path().join("mp-secret").display(),
        );
        std::fs::write(
            dir.path().join("mp-secret"),
            format!("{DESTINATION_SECRET}\n"),
        )
        .unwrap();
        let config_path = dir.path().join("mpconnect.toml");
        std::fs::write(&config_path, config).unwrap();
        let start = |target: &str| {
            let log = std::fs::File::create(dir.path().join(format!("{target}.log"))).unwrap();
            let mut command = Command::new(env!("CARGO_BIN_EXE_mpconnect"));
            command
                .args([target, "--config", config_path.to_str().unwrap()])
                .env("WEB_SECRET", SOURCE_SECRET)
                .env("MP_KEY", DESTINATION_KEY)
                .env("MPCONNECT_LOG_FORMAT", "json")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .stdout(Stdio::null())
                .stderr(log);
            for (k, v) in env {
                command.env(k, v);
            }
            Running(command.spawn().unwrap())
        };
        let processes = vec![start("delivery"), start("transform"), start("ingest")];
        Stack {
            fake,
            bucket,
            ingest_url: format!("http://127.0.0.1:{ingest_port}"),
            metrics_urls: vec![
                ("ingest", format!("http://127.0.0.1:{ingest_port}/metrics")),
                (
                    "transform",
                    format!("http://127.0.0.1:{transform_admin}/metrics"),
                ),
                (
                    "delivery",
                    format!("http://127.0.0.1:{delivery_admin}/metrics"),
                ),
            ],
            dir,
            processes,
        }
    }

    /// Waits until ingest answers (the processes are starting).
    pub async fn ready(&self) {
        let client = reqwest::Client::new();
        eventually(Duration::from_secs(30), async || {
            for (_, url) in &self.metrics_urls {
                if !matches!(client.get(url).send().await, Ok(r) if r.status().is_success()) {
                    return Err(format!("{url} never answered"));
                }
            }
            Ok(())
        })
        .await;
    }

    /// Every stage's log, concatenated.
    pub fn logs(&self) -> String {
        ["delivery", "transform", "ingest"]
            .iter()
            .map(|t| std::fs::read_to_string(self.log_path(t)).unwrap_or_default())
            .collect()
    }

    pub fn log_path(&self, target: &str) -> PathBuf {
        self.dir.path().join(format!("{target}.log"))
    }
}

/// Asks `probe` every 100 ms until it answers `Ok`; past `within`, fails with its last `Err`,
/// which says what is still missing. The stages are other processes: every check waits.
pub async fn eventually<T>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(done) => return done,
            Err(missing) => assert!(Instant::now() < deadline, "{missing}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sums the samples of `name` whose labels include every pair in `labels`.
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let has = |(k, v): &(&str, &str)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            };
            labels.iter().all(has).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
