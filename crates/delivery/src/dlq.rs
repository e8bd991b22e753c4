//! The dead-letter store: batches a destination refused for good, or that outlived the retry
//! window, each kept with its destination, the last answer and the attempt count, as one JSON
//! object in the object store (S3, or the local data directory). `mpconnect dlq` lists, shows
//! and redrives them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use prost::Message as _;
use runtime::{AnyStore, ObjectStore, StoreError};
use schema::v1::delivery_service_client::DeliveryServiceClient;
use schema::v1::{DeliverRequest, Outcome, RoutedBatch};
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// `<dead_at_ms>-<uuid>`: sorts by time.
    pub id: String,
    pub destination: String,
    pub attempts: u32,
    pub first_attempt_ms: i64,
    pub dead_at_ms: i64,
    /// The destination's last status code, when it gave one.
    pub status: Option<u16>,
    /// Its last answer (e.g. mParticle's error body), or why we gave up.
    pub answer: String,
    pub batch: RoutedBatch,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("dead letter {key} is unreadable: {why}")]
    Corrupt { key: String, why: String },
    #[error("redrive: delivery answered {0}")]
    Delivery(String),
}

impl DeadLetter {
    pub fn new(
        destination: &str,
        batch: RoutedBatch,
        attempts: u32,
        first_attempt_ms: i64,
        status: Option<u16>,
        answer: &str,
    ) -> Self {
        let dead_at_ms = runtime::now_ms();
        DeadLetter {
            id: format!("{dead_at_ms:013}-{}", uuid::Uuid::new_v4().simple()),
            destination: destination.to_owned(),
            attempts,
            first_attempt_ms,
            dead_at_ms,
            status,
            answer: answer.to_owned(),
            batch,
        }
    }

    /// The record's fields, without the batch.
    fn record(&self) -> serde_json::Map<String, serde_json::Value> {
        let record = json!({
            "id": self.id,
            "destination": self.destination,
            "attempts": self.attempts,
            "first_attempt_ms": self.first_attempt_ms,
            "dead_at_ms": self.dead_at_ms,
            "status": self.status,
            "answer": self.answer,
            "key": self.batch.key,
            "source": self.batch.source,
            "connection": self.batch.connection,
            "historical": self.batch.historical,
        });
        match record {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }

    fn to_json(&self) -> Vec<u8> {
        let mut record = self.record();
        // Exact, whatever the batch holds; `show` prints it as mParticle JSON.
        record.insert(
            "routed_batch".into(),
            BASE64.encode(self.batch.encode_to_vec()).into(),
        );
        serde_json::Value::Object(record).to_string().into_bytes()
    }

    fn from_json(key: &str, bytes: &[u8]) -> Result<Self, DlqError> {
        let corrupt = |why: String| DlqError::Corrupt {
            key: key.to_owned(),
            why,
        };
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let text = |name: &str| v[name].as_str().unwrap_or_default().to_owned();
        let int = |name: &str| v[name].as_i64().unwrap_or_default();
        let routed = BASE64
            .decode(v["routed_batch"].as_str().unwrap_or_default())
            .map_err(|e| corrupt(e.to_string()))?;
        let batch = RoutedBatch::decode(routed.as_slice()).map_err(|e| corrupt(e.to_string()))?;
        if batch.batch.is_none() {
            return Err(corrupt("it holds no batch".into()));
        }
        Ok(DeadLetter {
            id: text("id"),
            destination: text("destination"),
            attempts: int("attempts") as u32,
            first_attempt_ms: int("first_attempt_ms"),
            dead_at_ms: int("dead_at_ms"),
            status: v["status"].as_u64().map(|s| s as u16),
            answer: text("answer"),
            batch,
        })
    }

    /// The record for people: the batch as mParticle JSON (outbound dialect) instead of bytes.
    pub fn to_pretty_json(&self) -> String {
        let batch: serde_json::Value = self
            .batch
            .batch
            .as_ref()
            .and_then(|b| {
                let mut full = b.clone();
                schema::materialize(&mut full).ok()?;
                Some(schema::encode_batch(&full, schema::Dialect::Outbound))
            })
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or(serde_json::Value::Null);
        let mut record = self.record();
        record.insert("batch".into(), batch);
        serde_json::to_string_pretty(&record).unwrap_or_default()
    }
}

/// Where dead letters live in the object store, unless told otherwise.
pub const DEAD_LETTER_PREFIX: &str = "dead-letters/";

/// Dead letters under `prefix` in a store, one folder per destination.
#[derive(Clone)]
pub struct DeadLetters {
    store: AnyStore,
    prefix: String,
}

impl DeadLetters {
    pub fn new(store: AnyStore, prefix: impl Into<String>) -> Self {
        DeadLetters {
            store,
            prefix: prefix.into(),
        }
    }

    fn key(&self, destination: &str, id: &str) -> String {
        format!("{}{destination}/{id}.json", self.prefix)
    }

    pub async fn put(&self, letter: &DeadLetter) -> Result<(), DlqError> {
        let key = self.key(&letter.destination, &letter.id);
        self.store.put(&key, Bytes::from(letter.to_json())).await?;
        Ok(())
    }

    /// Every readable dead letter of `destination`; records that cannot be read are logged
    /// and left out (see [`DeadLetters::scan`]).
    pub async fn list(&self, destination: &str) -> Result<Vec<DeadLetter>, DlqError> {
        Ok(self.scan(destination).await?.letters)
    }

    /// Every record of `destination`, each read once: the readable dead letters, and the keys
    /// of those that cannot be read, with why.
    pub async fn scan(&self, destination: &str) -> Result<Scan, DlqError> {
        let mut scan = Scan::default();
        for key in self.keys(destination).await? {
            match self.read(&key).await? {
                Some(Ok(letter)) => scan.letters.push(letter),
                Some(Err(why)) => scan.unreadable.push((key, why)),
                None => {}
            }
        }
        Ok(scan)
    }

    async fn keys(&self, destination: &str) -> Result<Vec<String>, DlqError> {
        let folder = format!("{}{destination}/", self.prefix);
        Ok(self
            .store
            .list(&folder)
            .await?
            .into_iter()
            .map(|object| object.key)
            .filter(|key| key.ends_with(".json"))
            .collect())
    }

    /// One record: `None` when it is gone (redriven by someone else since the listing),
    /// `Some(Err)` when it cannot be read.
    async fn read(&self, key: &str) -> Result<Option<Result<DeadLetter, String>>, DlqError> {
        match self.store.get_bytes(key).await {
            Ok(bytes) => Ok(Some(DeadLetter::from_json(key, &bytes).map_err(|e| {
                tracing::warn!(key, error = %e, "an unreadable dead letter");
                e.to_string()
            }))),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, destination: &str, id: &str) -> Result<DeadLetter, DlqError> {
        let key = self.key(destination, id);
        let bytes = self.store.get_bytes(&key).await?;
        DeadLetter::from_json(&key, &bytes)
    }

    pub async fn delete(&self, destination: &str, id: &str) -> Result<(), DlqError> {
        self.store.delete(&self.key(destination, id)).await?;
        Ok(())
    }

    /// Sends every dead letter of `destination` back through delivery, 100 batches a call (only
    /// those in memory at once), and removes each once delivery has answered for it
    /// (delivered, parked, or dead-lettered anew, which writes a fresh record). A record that
    /// cannot be read is counted and kept, and stops nothing. Returns the outcome counts.
    pub async fn redrive(
        &self,
        destination: &str,
        client: &mut DeliveryServiceClient<tonic::transport::Channel>,
    ) -> Result<RedriveReport, DlqError> {
        let mut report = RedriveReport::default();
        for keys in self.keys(destination).await?.chunks(100) {
            let mut batches = Vec::with_capacity(keys.len());
            for key in keys {
                match self.read(key).await? {
                    Some(Ok(letter)) => {
                        let mut batch = letter.batch;
                        // The key comes back with the outcome; the dead letter's id finds it.
                        batch.key = letter.id;
                        batches.push(batch);
                    }
                    Some(Err(_)) => report.unreadable += 1,
                    None => {}
                }
            }
            if batches.is_empty() {
                continue;
            }
            let response = client
                .deliver(DeliverRequest {
                    destination: destination.to_owned(),
                    batches,
                })
                .await
                .map_err(|s| DlqError::Delivery(format!("{}: {}", s.code(), s.message())))?
                .into_inner();
            for outcome in response.outcomes {
                match Outcome::try_from(outcome.outcome) {
                    Ok(Outcome::Delivered) => report.delivered += 1,
                    Ok(Outcome::Parked) => report.parked += 1,
                    Ok(Outcome::DeadLettered) => report.dead_lettered_again += 1,
                    _ => continue,
                }
                self.delete(destination, &outcome.key).await?;
            }
        }
        Ok(report)
    }
}

/// A destination's dead-letter records, each read once.
#[derive(Debug, Default)]
pub struct Scan {
    pub letters: Vec<DeadLetter>,
    /// Records that cannot be read: their keys, and why.
    pub unreadable: Vec<(String, String)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedriveReport {
    pub delivered: usize,
    pub parked: usize,
    pub dead_lettered_again: usize,
    /// Records that could not be read; kept where they are.
    pub unreadable: usize,
}
