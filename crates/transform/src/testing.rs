//! A recording `DeliveryService` peer for tests across the workspace: answers as told and keeps
//! what it got. Not for production use.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schema::v1::delivery_service_server::{DeliveryService, DeliveryServiceServer};
use schema::v1::{BatchOutcome, DeliverRequest, DeliverResponse, Outcome, RoutedBatch};
use tonic::{Request, Response, Status};

/// "Delivered" for each batch.
fn delivered(batches: &[RoutedBatch]) -> Vec<BatchOutcome> {
    batches
        .iter()
        .map(|b| BatchOutcome {
            key: b.key.clone(),
            outcome: Outcome::Delivered as i32,
            detail: String::new(),
        })
        .collect()
}

/// A test hook run on each call.
pub type Hook = Box<dyn Fn() + Send + Sync>;

/// What a destination received, and how the peer answers.
#[derive(Clone, Default)]
pub struct Recorder {
    pub received: Arc<Mutex<Vec<(String, RoutedBatch)>>>,
    /// Destinations answered UNAVAILABLE.
    pub failing: Arc<Mutex<HashSet<String>>>,
    /// Destinations whose batches are answered dead-lettered (and not recorded).
    pub dead_lettering: Arc<Mutex<HashSet<String>>>,
    pub calls: Arc<AtomicU64>,
    /// Runs on each call before answering (a test's hook, e.g. to cut the network).
    pub on_call: Arc<Mutex<Option<Hook>>>,
}

#[tonic::async_trait]
impl DeliveryService for Recorder {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        if request.destination == "unknown" {
            return Err(Status::not_found("no such destination"));
        }
        if self.failing.lock().unwrap().contains(&request.destination) {
            return Err(Status::unavailable("destination down"));
        }
        if self
            .dead_lettering
            .lock()
            .unwrap()
            .contains(&request.destination)
        {
            let outcomes = request
                .batches
                .iter()
                .map(|b| BatchOutcome {
                    key: b.key.clone(),
                    outcome: Outcome::DeadLettered as i32,
                    detail: "refused by the destination".into(),
                })
                .collect();
            return Ok(Response::new(DeliverResponse { outcomes }));
        }
        let outcomes = delivered(&request.batches);
        {
            let mut received = self.received.lock().unwrap();
            for batch in request.batches {
                received.push((request.destination.clone(), batch));
            }
        }
        if let Some(hook) = self.on_call.lock().unwrap().as_ref() {
            hook();
        }
        Ok(Response::new(DeliverResponse { outcomes }))
    }
}

impl Recorder {
    pub fn fail(&self, destination: &str, failing: bool) {
        let mut set = self.failing.lock().unwrap();
        if failing {
            set.insert(destination.to_owned());
        } else {
            set.remove(destination);
        }
    }

    /// `source_request_id`s received by a destination, in order.
    pub fn request_ids(&self, destination: &str) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, _)| d == destination)
            .map(|(_, b)| {
                b.batch
                    .as_ref()
                    .unwrap()
                    .source_request_id
                    .clone()
                    .unwrap_or_default()
            })
            .collect()
    }

    pub fn batches(&self, destination: &str) -> Vec<schema::v1::Batch> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, _)| d == destination)
            .map(|(_, b)| b.batch.clone().unwrap())
            .collect()
    }

    pub async fn wait_for(&self, destination: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.request_ids(destination).len() < count {
            assert!(
                Instant::now() < deadline,
                "{destination} got {} of {count}",
                self.request_ids(destination).len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct Peer {
    pub addr: SocketAddr,
    pub recorder: Recorder,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    pub async fn start() -> Peer {
        Self::start_at("127.0.0.1:0".parse().unwrap(), Recorder::default()).await
    }

    pub async fn start_at(addr: SocketAddr, recorder: Recorder) -> Peer {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = DeliveryServiceServer::new(recorder.clone());
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        Peer {
            addr,
            recorder,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// A delivery peer that answers "delivered" to everything and keeps nothing (benchmarks).
#[derive(Clone, Default)]
pub struct Discard {
    pub batches: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl DeliveryService for Discard {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let request = request.into_inner();
        self.batches
            .fetch_add(request.batches.len() as u64, Ordering::Relaxed);
        let outcomes = delivered(&request.batches);
        Ok(Response::new(DeliverResponse { outcomes }))
    }
}

/// Serves `service` on 127.0.0.1 until the process ends; returns its address.
pub async fn serve_discard(service: Discard) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DeliveryServiceServer::new(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr
}
