//! How fast a driver may send: an adaptive concurrency limit (additive increase, multiplicative
//! decrease), a rate limit in batches per second that backs off on 429 and on the destination's
//! own "percentage used" signal, and a pause that honours `Retry-After`.
//!
//! A destination's rate limit is the workspace's (mParticle enforces it per key, however many
//! clients share the key): with several delivery processes, each takes an equal share of it
//! ([`Peers`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How many delivery processes share each destination's rate limit (at least 1); whoever
/// discovers them updates it, and every limiter holding a clone sees the change.
#[derive(Debug, Clone)]
pub struct Peers(Arc<AtomicUsize>);

impl Default for Peers {
    fn default() -> Self {
        Peers(Arc::new(AtomicUsize::new(1)))
    }
}

impl PartialEq for Peers {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Peers {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed).max(1)
    }

    pub fn set(&self, count: usize) {
        let count = count.max(1);
        self.0.store(count, Ordering::Relaxed);
        metrics::gauge!("mpconnect_delivery_peers").set(count as f64);
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// Requests in flight: start here, never above `max_concurrency`, never below 1.
    pub initial_concurrency: usize,
    pub max_concurrency: usize,
    /// Batches per second for the whole workspace, shared by `peers`; `None` for no limit.
    /// mParticle's default is 270.
    pub rate: Option<f64>,
    /// The delivery processes sharing `rate`.
    pub peers: Peers,
    /// The rate never falls below this when slowing down (batches per second).
    pub min_rate: f64,
    /// On a 2xx reporting at least this share of the destination's limit used, slow down.
    pub slow_down_at_percent: u8,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            initial_concurrency: 4,
            max_concurrency: 32,
            rate: None,
            peers: Peers::default(),
            min_rate: 1.0,
            slow_down_at_percent: 80,
        }
    }
}

impl LimitSettings {
    /// This process's share of the rate limit now.
    fn ceiling(&self) -> Option<f64> {
        self.rate.map(|rate| rate / self.peers.get() as f64)
    }
}

/// What one request's answer tells the limiter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// Accepted; with the destination's "percentage of the limit used" when it sent one.
    Success { percent_used: Option<u8> },
    /// 429: over the destination's limit.
    TooManyRequests,
    /// 5xx, timeout, connection error: the destination is struggling.
    Overloaded,
}

struct State {
    concurrency: f64,
    in_flight: usize,
    rate: Option<f64>,
    /// When the next batch may go, by the rate limit (a virtual schedule).
    next_free: Instant,
    paused_until: Option<Instant>,
}

pub struct Limiter {
    settings: LimitSettings,
    state: Mutex<State>,
    released: Notify,
    /// Metric labels.
    destination: String,
}

/// A request slot; gives itself back when dropped.
pub struct Permit {
    limiter: Arc<Limiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut state) = self.limiter.state.lock() {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        self.limiter.released.notify_one();
    }
}

/// Why no permit was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The destination asked us to wait this much longer (`Retry-After`).
    Paused { remaining: Duration },
    /// No slot, or no room in the rate, before the caller's deadline.
    Late,
}

impl Limiter {
    pub fn new(destination: &str, settings: LimitSettings) -> Arc<Self> {
        let state = State {
            concurrency: settings
                .initial_concurrency
                .clamp(1, settings.max_concurrency.max(1)) as f64,
            in_flight: 0,
            rate: settings.ceiling(),
            next_free: Instant::now(),
            paused_until: None,
        };
        let limiter = Arc::new(Limiter {
            settings,
            state: Mutex::new(state),
            released: Notify::new(),
            destination: destination.to_owned(),
        });
        limiter.publish();
        limiter
    }

    /// Waits for a request slot and for the rate limit to allow `batches` more, up to
    /// `deadline`: a request that could not start by then is refused, never started late. A
    /// pause (`Retry-After`) is never waited out here: the caller parks the data instead, so
    /// an inline delivery answers at once.
    pub async fn acquire(
        self: &Arc<Self>,
        batches: usize,
        deadline: Instant,
    ) -> Result<Permit, Refused> {
        loop {
            let notified = self.released.notified();
            match self.try_take(batches, deadline)? {
                Some(wait) => {
                    let permit = Permit {
                        limiter: self.clone(),
                    };
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    // A 429 may have come back while this one waited for its turn.
                    if let Some(remaining) = self.paused_for() {
                        return Err(Refused::Paused { remaining });
                    }
                    return Ok(permit);
                }
                None => {
                    if tokio::time::timeout_at(deadline.into(), notified)
                        .await
                        .is_err()
                    {
                        return Err(Refused::Late);
                    }
                }
            }
        }
    }

    /// Takes a slot if one is free, with the wait the rate limit asks for; `None` when all
    /// slots are taken.
    fn try_take(&self, batches: usize, deadline: Instant) -> Result<Option<Duration>, Refused> {
        let mut state = self.state.lock().expect("limiter lock");
        let now = Instant::now();
        if let Some(until) = state.paused_until {
            if until > now {
                return Err(Refused::Paused {
                    remaining: until - now,
                });
            }
            state.paused_until = None;
        }
        if state.in_flight >= state.concurrency.floor().max(1.0) as usize {
            return Ok(None);
        }
        // A peer joined since: never above this process's share.
        if let (Some(rate), Some(ceiling)) = (state.rate, self.settings.ceiling()) {
            state.rate = Some(rate.min(ceiling));
        }
        let wait = match state.rate {
            Some(rate) => {
                let start = state.next_free.max(now);
                if start > deadline {
                    return Err(Refused::Late);
                }
                state.next_free = start + Duration::from_secs_f64(batches as f64 / rate.max(0.001));
                start - now
            }
            None => Duration::ZERO,
        };
        state.in_flight += 1;
        Ok(Some(wait))
    }

    /// How long sending stays paused, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        let state = self.state.lock().ok()?;
        let until = state.paused_until?;
        until.checked_duration_since(Instant::now())
    }

    /// No request is sent before `until` (a `Retry-After`).
    pub fn pause_until(&self, until: Instant) {
        if let Ok(mut state) = self.state.lock() {
            state.paused_until = Some(state.paused_until.map_or(until, |u| u.max(until)));
        }
    }

    pub fn record(&self, signal: Signal) {
        let settings = &self.settings;
        {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let max = settings.max_concurrency.max(1) as f64;
            match signal {
                Signal::Success { percent_used } => {
                    let near_limit =
                        percent_used.is_some_and(|p| p >= settings.slow_down_at_percent);
                    if near_limit {
                        // Slow down before the destination has to say 429.
                        state.rate = state
                            .rate
                            .or(settings.ceiling())
                            .map(|r| (r * 0.9).max(settings.min_rate));
                    } else {
                        state.concurrency = (state.concurrency + 1.0 / state.concurrency).min(max);
                        // Additive increase: back to the ceiling within twenty good answers.
                        if let (Some(rate), Some(ceiling)) = (state.rate, settings.ceiling()) {
                            state.rate = Some((rate + ceiling * 0.05).min(ceiling));
                        }
                    }
                }
                Signal::TooManyRequests => {
                    state.concurrency = (state.concurrency / 2.0).max(1.0);
                    state.rate = state
                        .rate
                        .or(settings.ceiling())
                        .map(|r| (r * 0.75).max(settings.min_rate));
                }
                Signal::Overloaded => {
                    state.concurrency = (state.concurrency / 2.0).max(1.0);
                }
            }
        }
        self.publish();
    }

    /// The current concurrency limit and rate, for metrics and tests.
    pub fn current(&self) -> (usize, Option<f64>) {
        self.state
            .lock()
            .map(|s| (s.concurrency.floor() as usize, s.rate))
            .unwrap_or((1, None))
    }

    fn publish(&self) {
        let (concurrency, rate) = self.current();
        metrics::gauge!("mpconnect_delivery_concurrency_limit", "destination" => self.destination.clone())
            .set(concurrency as f64);
        metrics::gauge!("mpconnect_delivery_rate_limit_batches_per_second", "destination" => self.destination.clone())
            .set(rate.unwrap_or(0.0));
    }
}

/// Counts the delivery processes named by `names` (comma-separated `host:port`; every address
/// each name resolves to) once before returning, so no process starts at the whole rate, then
/// every `every` in the background until `stopped`, setting `peers` to the count. When a
/// lookup fails, the last count stands: a DNS hiccup must not double every pod's rate.
pub async fn count_peers(
    names: String,
    peers: Peers,
    every: Duration,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) {
    async fn recount(names: &str, peers: &Peers, every: Duration) {
        match tokio::time::timeout(every, peer_count(names)).await {
            Ok(Ok(count)) => {
                if count.max(1) != peers.get() {
                    tracing::info!(
                        peers = count,
                        "delivery peers changed; each takes an equal share of the rate limits"
                    );
                }
                peers.set(count);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot count delivery peers; keeping the last count")
            }
            Err(_) => {
                tracing::warn!("counting delivery peers took too long; keeping the last count")
            }
        }
    }
    recount(&names, &peers, every).await;
    tokio::spawn(async move {
        let counting = async {
            loop {
                tokio::time::sleep(every).await;
                recount(&names, &peers, every).await;
            }
        };
        tokio::select! {
            _ = counting => {}
            _ = stopped => {}
        }
    });
}

/// The distinct addresses that the comma-separated `host:port` names resolve to.
pub async fn peer_count(names: &str) -> std::io::Result<usize> {
    let mut found = std::collections::HashSet::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        found.extend(tokio::net::lookup_host(name).await?);
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LimitSettings {
        LimitSettings {
            initial_concurrency: 4,
            max_concurrency: 8,
            rate: Some(270.0),
            peers: Peers::default(),
            min_rate: 10.0,
            slow_down_at_percent: 80,
        }
    }

    #[tokio::test]
    async fn concurrency_grows_on_success_and_halves_on_trouble() {
        let limiter = Limiter::new("t", settings());
        for _ in 0..100 {
            limiter.record(Signal::Success { percent_used: None });
        }
        assert_eq!(limiter.current().0, 8, "capped at the maximum");
        limiter.record(Signal::Overloaded);
        assert_eq!(limiter.current().0, 4);
        limiter.record(Signal::TooManyRequests);
        assert_eq!(limiter.current().0, 2);
        assert_eq!(
            limiter.current().1,
            Some(202.5),
            "429 cuts the rate by a quarter"
        );
        for _ in 0..30 {
            limiter.record(Signal::TooManyRequests);
        }
        assert_eq!(limiter.current(), (1, Some(10.0)), "floors hold");
    }

    #[tokio::test]
    async fn percentage_used_slows_down_before_the_limit() {
        let limiter = Limiter::new("t", settings());
        limiter.record(Signal::Success {
            percent_used: Some(95),
        });
        assert_eq!(limiter.current().1, Some(243.0));
        limiter.record(Signal::Success {
            percent_used: Some(10),
        });
        assert!(
            limiter.current().1.unwrap() > 243.0,
            "recovers when well under"
        );
    }

    #[tokio::test]
    async fn each_peer_takes_an_equal_share_of_the_rate() {
        let peers = Peers::default();
        let limiter = Limiter::new(
            "t",
            LimitSettings {
                peers: peers.clone(),
                ..settings()
            },
        );
        peers.set(3);
        drop(limiter.acquire(1, soon()).await.unwrap());
        assert_eq!(limiter.current().1, Some(90.0), "a third of 270");
        limiter.record(Signal::Success { percent_used: None });
        assert_eq!(limiter.current().1, Some(90.0), "never above the share");
        peers.set(1);
        for _ in 0..40 {
            limiter.record(Signal::Success { percent_used: None });
        }
        assert_eq!(
            limiter.current().1,
            Some(270.0),
            "the whole rate again once alone"
        );
        peers.set(0);
        assert_eq!(peers.get(), 1, "never fewer than this process");
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn no_permit_while_paused_and_slots_are_bounded() {
        let limiter = Limiter::new(
            "t",
            LimitSettings {
                initial_concurrency: 2,
                max_concurrency: 2,
                rate: None,
                ..settings()
            },
        );
        let a = limiter.acquire(1, soon()).await.unwrap();
        let _b = limiter.acquire(1, soon()).await.unwrap();
        let third =
            tokio::time::timeout(Duration::from_millis(50), limiter.acquire(1, soon())).await;
        assert!(third.is_err(), "a third waits while two are in flight");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_millis(50), limiter.acquire(1, soon()))
            .await
            .expect("a slot was given back")
            .unwrap();
        limiter.pause_until(Instant::now() + Duration::from_secs(2));
        drop(_b);
        let Err(Refused::Paused { remaining }) = limiter.acquire(1, soon()).await else {
            panic!("not paused");
        };
        assert!(remaining > Duration::from_millis(1900));
    }

    #[tokio::test]
    async fn the_rate_spaces_requests_by_their_batches() {
        let limiter = Limiter::new(
            "t",
            LimitSettings {
                rate: Some(1000.0),
                ..settings()
            },
        );
        let started = Instant::now();
        for _ in 0..5 {
            drop(limiter.acquire(100, soon()).await.unwrap());
        }
        // 500 batches at 1000/s: the first goes at once, the fifth after 400 ms.
        assert!(started.elapsed() >= Duration::from_millis(390));
        // A request that could not start before its deadline is refused, and takes no room.
        let near = Instant::now() + Duration::from_millis(20);
        assert_eq!(limiter.acquire(100, near).await.err(), Some(Refused::Late));
        assert!(limiter.acquire(100, soon()).await.is_ok());
    }
}
