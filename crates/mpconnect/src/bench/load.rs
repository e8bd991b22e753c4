//! The load generator: `connections` keep-alive connections, each posting bulk requests back
//! to back with fresh ids until the deadline, honouring `Retry-After` on 429 and 503 as a
//! well-behaved sender does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::payload::Payload;

#[derive(Default)]
pub struct LoadCounts {
    pub accepted_requests: AtomicU64,
    pub accepted_events: AtomicU64,
    pub throttled: AtomicU64,
    pub unavailable: AtomicU64,
    pub other: AtomicU64,
    pub errors: AtomicU64,
}

pub struct LoadResult {
    /// Request latencies in microseconds, every answered request.
    pub latencies_us: Vec<u64>,
}

pub async fn run(
    url: String,
    authorization: String,
    payload: Arc<Payload>,
    connections: usize,
    until: Instant,
    counts: Arc<LoadCounts>,
) -> anyhow::Result<LoadResult> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, url, authorization) = (client.clone(), url.clone(), authorization.clone());
        let (payload, counts) = (payload.clone(), counts.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let body = payload.body();
                let sent = Instant::now();
                let Ok((status, retry_after)) =
                    post_bulk(&client, &url, &authorization, body).await
                else {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                latencies.push(sent.elapsed().as_micros() as u64);
                match status {
                    202 => {
                        counts.accepted_requests.fetch_add(1, Ordering::Relaxed);
                        counts
                            .accepted_events
                            .fetch_add(payload.events as u64, Ordering::Relaxed);
                    }
                    429 | 503 => {
                        let counter = if status == 429 {
                            &counts.throttled
                        } else {
                            &counts.unavailable
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        let wait = Duration::from_secs(retry_after.unwrap_or(1).min(30));
                        let left = until.saturating_duration_since(Instant::now());
                        tokio::time::sleep(wait.min(left)).await;
                    }
                    _ => {
                        counts.other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        });
    }
    let mut latencies_us = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies_us.extend(done?);
    }
    latencies_us.sort_unstable();
    Ok(LoadResult { latencies_us })
}

/// Posts one bulk body and reads the whole answer: its status and its `Retry-After` in
/// seconds, when it has one.
pub async fn post_bulk(
    client: &reqwest::Client,
    url: &str,
    authorization: &str,
    body: Vec<u8>,
) -> Result<(u16, Option<u64>), reqwest::Error> {
    let response = client
        .post(url)
        .header("authorization", authorization)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let _ = response.bytes().await;
    Ok((status, retry_after))
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
