//! A running ingest on 127.0.0.1 over a real queue, and helpers to look into that queue.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use ingest::{HttpSource, Ingest, IngestSettings};
use mpconnect_ingest as ingest;
use prost::Message as _;
use runtime::queue::{EmbeddedDb, EmbeddedSync, embedded_stage_queue, local_data};
use runtime::{Received, Secret, StageQueue};
use tokio::net::TcpListener;

pub const KEY: &str = "key-web";
pub const SECRET: &str = "secret-web";

pub fn source() -> HttpSource {
    HttpSource {
        id: "web".into(),
        api_key: Secret::new(KEY),
        api_secret: Secret::new(SECRET),
    }
}

pub fn settings() -> IngestSettings {
    IngestSettings {
        sources: vec![source()],
        ..IngestSettings::default()
    }
}

pub struct Server {
    pub base: String,
    pub queue: StageQueue,
    pub dead_letter: StageQueue,
    pub db: Option<EmbeddedDb>,
    /// The server's handle: its router answers as the listener does.
    pub ingest: Ingest,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signals shutdown and waits for the server to finish what is in flight.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn finished(&mut self) {
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

fn embedded(dir: &tempfile::TempDir) -> (EmbeddedDb, StageQueue, StageQueue) {
    let (db, store) = local_data(dir.path(), EmbeddedSync::Normal).unwrap();
    let queue = embedded_stage_queue(&db, "ingest", &store);
    let dead_letter = embedded_stage_queue(&db, "ingest-dlq", &store);
    (db, queue, dead_letter)
}

/// Ingest over the embedded queue.
pub async fn start(settings: IngestSettings) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (db, queue, dead_letter) = embedded(&dir);
    let mut server = start_with(settings, queue, dead_letter, dir).await;
    server.db = Some(db);
    server
}

pub async fn start_with(
    settings: IngestSettings,
    queue: StageQueue,
    dead_letter: StageQueue,
    dir: tempfile::TempDir,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let ingest = Ingest::new(settings, queue.clone(), Some(dead_letter.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = ingest.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await
    });
    Server {
        base,
        queue,
        dead_letter,
        db: None,
        ingest,
        shutdown: Some(tx),
        task: Some(task),
        _dir: dir,
    }
}

/// Everything in the queue now, acknowledged.
pub async fn drain(queue: &StageQueue) -> Vec<Received> {
    runtime::testing::drain(queue, Duration::from_millis(300)).await
}

/// The queued batches, in full (a pass-through batch is read from its bytes).
pub fn decode(received: &[Received]) -> Vec<schema::v1::Batch> {
    decode_as_queued(received)
        .into_iter()
        .map(|mut batch| {
            schema::materialize(&mut batch).expect("its bytes decode");
            batch
        })
        .collect()
}

/// The queued batches as they are on the queue.
pub fn decode_as_queued(received: &[Received]) -> Vec<schema::v1::Batch> {
    received
        .iter()
        .map(|m| schema::v1::Batch::decode(m.body.as_ref()).expect("a protobuf batch"))
        .collect()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// A minimal valid batch.
pub fn batch_json(request_id: &str) -> String {
    format!(
        r#"{{"environment":"production","source_request_id":"{request_id}","events":[
            {{"event_type":"custom_event","data":{{"event_name":"Played","custom_event_type":"media",
              "custom_attributes":{{"n":1}}}}}}]}}"#
    )
}

pub async fn post(
    path: &str,
    server: &Server,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client()
        .post(server.url(path))
        .basic_auth(KEY, Some(SECRET))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

pub async fn error_body(response: reqwest::Response) -> serde_json::Value {
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/json"
    );
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

pub fn schema_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../schema/tests/fixtures")
        .join(name)
}

#[allow(unused_imports)]
pub use runtime::testing::FaultProxy;
