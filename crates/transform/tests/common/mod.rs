//! A recording delivery peer (the real `DeliveryService` gRPC contract, answering as told),
//! queues, and a running transform.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use mpconnect_transform::testing::{Peer, Recorder};
use mpconnect_transform::{
    Connection, DeliveryClient, Resolve, Rules, Transform, TransformSettings,
};
use runtime::queue::{EmbeddedDb, EmbeddedSync, embedded_stage_queue, local_data};
use runtime::{ReceiveOptions, StageQueue};

pub fn fixed(addrs: Arc<Mutex<Vec<SocketAddr>>>) -> Resolve {
    Arc::new(move || {
        let found = addrs.lock().unwrap().clone();
        Box::pin(async move { Ok(found) })
    })
}

pub fn client(addrs: Vec<SocketAddr>) -> DeliveryClient {
    DeliveryClient::balanced(
        fixed(Arc::new(Mutex::new(addrs))),
        Duration::from_millis(200),
        Duration::from_secs(5),
    )
}

pub fn connection(id: &str, source: &str, destinations: &[&str], rules: Rules) -> Connection {
    Connection {
        id: id.into(),
        source: source.into(),
        destinations: destinations.iter().map(|d| d.to_string()).collect(),
        rules,
    }
}

pub fn settings(connections: Vec<Connection>) -> TransformSettings {
    TransformSettings {
        connections,
        pollers: 2,
        receive: ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_millis(200),
            visibility: Duration::from_secs(3),
        },
        retry_min: Duration::from_millis(200),
        retry_max: Duration::from_secs(1),
        ..TransformSettings::default()
    }
}

pub struct Queues {
    pub queue: StageQueue,
    pub dead_letter: StageQueue,
    pub db: EmbeddedDb,
    _dir: tempfile::TempDir,
}

pub fn embedded() -> Queues {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = local_data(dir.path(), EmbeddedSync::Normal).unwrap();
    Queues {
        queue: embedded_stage_queue(&db, "ingest", &store),
        dead_letter: embedded_stage_queue(&db, "ingest-dlq", &store),
        db,
        _dir: dir,
    }
}

/// As [`embedded`], the queue dead-lettering a message on its receive after `max_receives`.
pub fn embedded_dead_lettering_after(max_receives: u32) -> Queues {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = local_data(dir.path(), EmbeddedSync::Normal).unwrap();
    let queue = db.queue_with_dead_letter("ingest", max_receives, "ingest-dlq");
    let dead_letter = queue.dead_letter().unwrap();
    let wrap = |q| {
        runtime::queue::ClaimChecked::new(
            runtime::AnyQueue::Embedded(q),
            store.clone(),
            runtime::queue::DEFAULT_CLAIM_CHECK_THRESHOLD,
            "claims/",
            runtime::queue::plain_size,
        )
    };
    Queues {
        queue: wrap(queue),
        dead_letter: wrap(dead_letter),
        db,
        _dir: dir,
    }
}

pub struct Running {
    pub transform: Transform,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.unwrap();
    }
}

pub fn run(transform: Transform) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t = transform.clone();
    let task = tokio::spawn(async move {
        t.run(async move {
            let _ = stopped.await;
        })
        .await
    });
    Running {
        transform,
        stop: Some(stop),
        task,
    }
}

/// A queue message as ingest makes it.
pub fn message(source: &str, json: &str) -> runtime::Message {
    use prost::Message as _;
    let batch = schema::decode_batch(json.as_bytes()).unwrap();
    runtime::Message::new(batch.encode_to_vec())
        .with_attribute(runtime::envelope::attr::SOURCE, source)
        .with_attribute(
            runtime::envelope::attr::CONTENT_TYPE,
            runtime::envelope::content_type::BATCH,
        )
        .with_attribute(
            runtime::envelope::attr::TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
}

/// As ingest queues a batch from the Events API: the sender's bytes beside the ids.
pub fn pass_through_message(source: &str, json: &str) -> runtime::Message {
    use prost::Message as _;
    let (batch, as_sent) = schema::parse_batch_as_sent(json.as_bytes()).unwrap();
    assert!(as_sent);
    let through = schema::pass_through(&batch, json.as_bytes()).unwrap();
    let mut message = message(source, json);
    message.body = through.encode_to_vec().into();
    message
}

pub fn batch_json(request_id: &str, events: &str) -> String {
    format!(
        r#"{{"environment":"development","source_request_id":"{request_id}","events":[{events}]}}"#
    )
}

pub fn custom(name: &str, message_id: &str) -> String {
    format!(
        r#"{{"event_type":"custom_event","data":{{"event_name":"{name}","custom_event_type":"other","source_message_id":"{message_id}","custom_attributes":{{"keep":1,"drop":2,"old":3}}}}}}"#
    )
}
