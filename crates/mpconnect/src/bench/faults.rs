//! `mpconnect faults`: the fault suite. Each scenario starts real mpconnect processes (this
//! binary), sends mParticle bulk requests to them like a real sender (a request not answered
//! 202 is sent again, the same bytes, until it is), has them deliver to a fake mParticle that
//! misbehaves on cue, and counts from what the senders got 202 for and what the fake received:
//! missing, duplicated, dead-lettered (with reasons), and the time to recover after the fault.
//! It exits non-zero when anything acknowledged is missing or more than 0.1% (by default)
//! arrived twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;

use super::load::post_bulk;
use super::payload::Payload;
use super::receiver::{Fault, Receiver};
use super::{Ports, basic, bench_config, free_port, log_tails, split_setup, wait_until_started};

#[derive(clap::Args)]
pub struct Args {
    /// Events each embedded scenario sends (and every acknowledged one must arrive once).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Events of the distributed scenario: moto serves a few SQS calls a second.
    #[arg(long, default_value_t = 4_000)]
    split_events: u64,
    /// The senders' pace, events per second over all connections.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// How long the destination misbehaves.
    #[arg(long, default_value_t = 30)]
    fault_seconds: u64,
    /// `kill -9`s per kill scenario.
    #[arg(long, default_value_t = 3)]
    kills: usize,
    /// Only these scenarios (comma-separated names; see the list printed at the start).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// SQS and S3 for the distributed scenario (moto); without it that scenario is skipped.
    #[arg(long)]
    sqs_endpoint: Option<String>,
    /// After the senders are done: how long to wait for every acknowledged batch.
    #[arg(long, default_value_t = 300)]
    drain_timeout: u64,
    /// Extra TOML appended to every scenario's config (e.g. `[transform.dedupe]` settings).
    #[arg(long)]
    extra_config: Option<PathBuf>,
    /// Keep each scenario's data directory and logs (printed).
    #[arg(long)]
    keep: bool,
    /// The most duplicated events a scenario may show, in percent of those acknowledged.
    #[arg(long, default_value_t = 0.1)]
    max_duplicates_percent: f64,
    /// Print each duplicated batch with its first and last arrival, and when the kills were.
    #[arg(long)]
    list_duplicates: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    KillAll,
    DestinationDown,
    Throttled,
    ThrottledBare,
    ServerErrors,
    Hangs,
    FullDisk,
    KillSplit,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::KillAll,
        Scenario::DestinationDown,
        Scenario::Throttled,
        Scenario::ThrottledBare,
        Scenario::ServerErrors,
        Scenario::Hangs,
        Scenario::FullDisk,
        Scenario::KillSplit,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::KillAll => "kill-all",
            Scenario::DestinationDown => "destination-down",
            Scenario::Throttled => "throttled",
            Scenario::ThrottledBare => "throttled-bare",
            Scenario::ServerErrors => "server-errors",
            Scenario::Hangs => "hangs",
            Scenario::FullDisk => "full-disk",
            Scenario::KillSplit => "kill-split",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::KillAll => {
                "kill -9 of mpconnect all (embedded queue) at random moments, restarted at once"
            }
            Scenario::DestinationDown => {
                "the destination answers 503 to everything, then comes back"
            }
            Scenario::Throttled => "429 with Retry-After: 1 to every other request",
            Scenario::ThrottledBare => "429 without Retry-After to every other request",
            Scenario::ServerErrors => "500, 502 and 503 to every other request",
            Scenario::Hangs => "every other request hangs past the 2 s attempt timeout",
            Scenario::FullDisk => {
                "the embedded queue capped (250 bytes an event of the run) while the destination is down"
            }
            Scenario::KillSplit => {
                "kill -9 of ingest, transform and delivery (three processes on SQS and S3, moto) at random moments, at the volume moto holds (--split-events)"
            }
        }
    }

    fn fault(self, hang: Duration) -> Option<Fault> {
        match self {
            Scenario::DestinationDown | Scenario::FullDisk => Some(Fault::Down),
            Scenario::Throttled => Some(Fault::Throttled { retry_after: true }),
            Scenario::ThrottledBare => Some(Fault::Throttled { retry_after: false }),
            Scenario::ServerErrors => Some(Fault::ServerErrors),
            Scenario::Hangs => Some(Fault::Hang(hang)),
            Scenario::KillAll | Scenario::KillSplit => None,
        }
    }
}

/// The destination's attempt timeout in the suite's config, and how long a hang lasts.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const HANG: Duration = Duration::from_secs(5);
/// The full-disk scenario's cap on the embedded queue's database, per event of the run: about
/// a fifth of what the run takes (25 MB for 100,000 events), never under 4 MB.
const DISK_CAP_BYTES_PER_EVENT: u64 = 250;

struct Report {
    scenario: Scenario,
    accepted_batches: usize,
    events_per_batch: usize,
    missing: usize,
    duplicated: usize,
    dead_letters: String,
    recovery: Option<Duration>,
    answers: String,
}

impl Report {
    fn duplicate_rate(&self) -> f64 {
        self.duplicated as f64 / (self.accepted_batches.max(1)) as f64
    }

    fn events(&self, batches: usize) -> usize {
        batches * self.events_per_batch
    }

    fn recovery_text(&self) -> String {
        self.recovery
            .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    }

    fn holds(&self, max_duplicates_percent: f64) -> bool {
        self.missing == 0 && self.duplicate_rate() * 100.0 <= max_duplicates_percent
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let chosen: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.name()))
        .collect();
    anyhow::ensure!(
        !chosen.is_empty(),
        "no scenario is called {:?}; they are: {}",
        args.only,
        Scenario::ALL.map(Scenario::name).join(", ")
    );
    println!("scenarios:");
    for s in Scenario::ALL {
        println!("  {:<17} {}", s.name(), s.describe());
    }
    let payload = Arc::new(Payload::new(10, 10, 1100)?);
    let mut reports = Vec::new();
    for scenario in chosen {
        if scenario == Scenario::KillSplit && args.sqs_endpoint.is_none() {
            println!(
                "\n{}: skipped (no --sqs-endpoint; scripts/faults starts moto)",
                scenario.name()
            );
            continue;
        }
        println!("\n{}: {}", scenario.name(), scenario.describe());
        let report = run_scenario(&args, scenario, payload.clone()).await?;
        print_report(&report);
        reports.push(report);
    }
    println!(
        "\n| scenario | events acknowledged | missing | duplicated (rate) | dead-lettered | recovery | ingest answers |"
    );
    println!("| --- | ---: | ---: | ---: | --- | ---: | --- |");
    for r in &reports {
        println!(
            "| {} | {} | {} | {} ({:.3}%) | {} | {} | {} |",
            r.scenario.name(),
            r.events(r.accepted_batches),
            r.events(r.missing),
            r.events(r.duplicated),
            r.duplicate_rate() * 100.0,
            r.dead_letters,
            r.recovery_text(),
            r.answers,
        );
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.holds(args.max_duplicates_percent))
        .map(|r| r.scenario.name())
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "data lost or over {}% duplicated in: {}",
        args.max_duplicates_percent,
        failed.join(", ")
    );
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "  acknowledged {} events ({} batches); missing {}; duplicated {} ({:.3}%); dead-lettered: {}; recovered {} after the fault; ingest answered {}",
        r.events(r.accepted_batches),
        r.accepted_batches,
        r.events(r.missing),
        r.events(r.duplicated),
        r.duplicate_rate() * 100.0,
        r.dead_letters,
        r.recovery_text(),
        r.answers,
    );
}

async fn run_scenario(
    args: &Args,
    scenario: Scenario,
    payload: Arc<Payload>,
) -> anyhow::Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("mpconnect-faults-{}-", scenario.name()))
        .tempdir()?;
    let receiver = Receiver::new(Instant::now(), basic("bench-mp-key", "bench-mp-secret"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ports = Ports {
        ingest: free_port()?,
        delivery: free_port()?,
        receiver: listener.local_addr()?.to_string(),
    };
    let router = receiver.router();
    let served = tokio::spawn(async move { axum::serve(listener, router).await });

    let split = scenario == Scenario::KillSplit;
    let split_tables = match (&args.sqs_endpoint, split) {
        (Some(endpoint), true) => Some(split_setup(endpoint, &ports.delivery, 4).await?),
        _ => None,
    };
    let mut extra = match scenario {
        Scenario::FullDisk => format!(
            "[queues]\nmax_disk_bytes = {}\n",
            (args.events * DISK_CAP_BYTES_PER_EVENT).max(4 << 20)
        ),
        _ => String::new(),
    };
    if let Some(path) = &args.extra_config {
        extra.push_str(&std::fs::read_to_string(path)?);
    }
    let config = bench_config(
        dir.path(),
        &ports,
        &format!("attempt_timeout_ms = {}", ATTEMPT_TIMEOUT.as_millis()),
        &extra,
        split_tables.as_ref(),
    )?;
    let config_path = dir.path().join("faults.toml");
    std::fs::write(&config_path, &config)?;
    let targets: &[&'static str] = if split {
        &["delivery", "transform", "ingest"]
    } else {
        &["all"]
    };
    let mut stages = Stages::start(dir.path(), &config_path, targets)?;
    let result = drive(args, scenario, payload, &receiver, &ports, &mut stages).await;
    stages.stop().await;
    if result.is_err() {
        eprintln!("{}", log_tails(dir.path(), targets));
    }
    let mut report = result?;
    report.dead_letters = dead_letters(&config_path)?;
    served.abort();
    if args.keep || !report.holds(args.max_duplicates_percent) {
        println!("  kept: {}", dir.keep().display());
    }
    Ok(report)
}

async fn drive(
    args: &Args,
    scenario: Scenario,
    payload: Arc<Payload>,
    receiver: &Arc<Receiver>,
    ports: &Ports,
    stages: &mut Stages,
) -> anyhow::Result<Report> {
    wait_until_started(
        &ports.ingest,
        START_WITHIN,
        &stages.targets,
        &mut stages.children,
    )
    .await?;

    let events = if scenario == Scenario::KillSplit {
        args.split_events
    } else {
        args.events
    };
    let ledger = Arc::new(Ledger::default());
    let senders_done = Arc::new(AtomicBool::new(false));
    let load = {
        let (ledger, done) = (ledger.clone(), senders_done.clone());
        let url = format!("http://{}/v2/bulkevents", ports.ingest);
        let (connections, rate) = (args.connections, args.rate.max(1));
        let clock = receiver.started;
        tokio::spawn(async move {
            let result = send(url, payload, events, connections, rate, ledger, clock).await;
            done.store(true, Ordering::Relaxed);
            result
        })
    };

    // The fault, while the senders send.
    let fault_ended = match scenario.fault(HANG) {
        Some(fault) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            receiver.set_fault(fault);
            tokio::time::sleep(Duration::from_secs(args.fault_seconds)).await;
            receiver.set_fault(Fault::None);
            receiver.started.elapsed()
        }
        None => {
            // Kills when the acknowledged count passes random points of the run.
            let mut points: Vec<u64> = (0..args.kills)
                .map(|_| events / 10 + rand::random::<u64>() % (events * 8 / 10).max(1))
                .collect();
            points.sort_unstable();
            let mut last = receiver.started.elapsed();
            for (k, point) in points.into_iter().enumerate() {
                while ledger.accepted_events(10) < point && !senders_done.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let target = k % stages.targets.len();
                // Ingest, then the transform, then delivery: each stage dies once in three kills.
                let target = stages.targets.len() - 1 - target;
                println!(
                    "  kill -9 {} at {} events acknowledged",
                    stages.targets[target],
                    ledger.accepted_events(10)
                );
                stages.kill_and_restart(target)?;
                last = receiver.started.elapsed();
                if args.list_duplicates {
                    println!("  killed at {:.3} s", last.as_secs_f64());
                }
                // Let it start before the next one.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            last
        }
    };
    load.await??;

    // Every acknowledged batch, once, or the drain timeout.
    let accepted = ledger.ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let drain_by = Instant::now() + Duration::from_secs(args.drain_timeout);
    let missing = |arrivals: &std::collections::HashMap<Box<str>, _>| {
        accepted
            .iter()
            .filter(|(id, _)| !arrivals.contains_key(id.as_str()))
            .count()
    };
    loop {
        let arrivals = receiver.arrivals();
        if missing(&arrivals) == 0 || Instant::now() >= drain_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Late repeats have a moment to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arrivals = receiver.arrivals();
    let missing = missing(&arrivals);
    let duplicated = arrivals
        .values()
        .map(|a| a.times.saturating_sub(1) as usize)
        .sum();
    if args.list_duplicates {
        let mut dups: Vec<_> = arrivals.iter().filter(|(_, a)| a.times > 1).collect();
        dups.sort_by_key(|(_, a)| a.first_ns);
        for (id, a) in dups {
            println!(
                "  duplicated {id} x{}: first at {:.3} s, last at {:.3} s",
                a.times,
                a.first_ns as f64 / 1e9,
                a.last_ns as f64 / 1e9
            );
        }
    }
    // Recovered when the last batch acknowledged before the fault ended had arrived.
    let last_first = accepted
        .iter()
        .filter(|(_, acked)| *acked <= fault_ended)
        .filter_map(|(id, _)| arrivals.get(id.as_str()))
        .map(|a| Duration::from_nanos(a.first_ns))
        .max();
    let recovery = match last_first {
        Some(last) if missing == 0 => Some(last.saturating_sub(fault_ended)),
        _ => None,
    };
    Ok(Report {
        scenario,
        accepted_batches: accepted.len(),
        events_per_batch: 10,
        missing,
        duplicated,
        dead_letters: String::new(),
        recovery,
        answers: ledger.answers(),
    })
}

/// What the senders were answered.
#[derive(Default)]
struct Ledger {
    /// `source_request_id` of every batch acknowledged with 202, with when (since the start).
    ids: Mutex<Vec<(String, Duration)>>,
    throttled: AtomicU64,
    unavailable: AtomicU64,
    errors: AtomicU64,
    other: AtomicU64,
}

impl Ledger {
    fn accepted_events(&self, per_batch: u64) -> u64 {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).len() as u64 * per_batch
    }

    fn answers(&self) -> String {
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} x 202, {} x 429, {} x 503, {} other, {} connection errors",
            self.ids.lock().unwrap_or_else(|p| p.into_inner()).len() / 10,
            count(&self.throttled),
            count(&self.unavailable),
            count(&self.other),
            count(&self.errors)
        )
    }
}

#[derive(Deserialize)]
struct RequestId {
    source_request_id: String,
}

/// Sends `events` in bulk requests at `rate` events/s over `connections`; a request not
/// answered 202 goes again, the same bytes, after its `Retry-After` (or a moment), as
/// mParticle's own senders do.
async fn send(
    url: String,
    payload: Arc<Payload>,
    events: u64,
    connections: usize,
    rate: u64,
    ledger: Arc<Ledger>,
    clock: Instant,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let authorization = basic("bench-key", "bench-secret");
    let per_request = payload.events as u64;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, url, authorization) = (client.clone(), url.clone(), authorization.clone());
        let (payload, ledger, next) = (payload.clone(), ledger.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k * per_request >= events {
                    return Ok::<(), anyhow::Error>(());
                }
                let due = started + Duration::from_secs_f64((k * per_request) as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let body = payload.body();
                let ids: Vec<RequestId> = serde_json::from_slice(&body)?;
                loop {
                    let Ok((status, retry_after)) =
                        post_bulk(&client, &url, &authorization, body.clone()).await
                    else {
                        ledger.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    };
                    match status {
                        202 => {
                            let at = clock.elapsed();
                            ledger
                                .ids
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .extend(ids.into_iter().map(|i| (i.source_request_id, at)));
                            break;
                        }
                        429 | 503 => {
                            let counter = if status == 429 {
                                &ledger.throttled
                            } else {
                                &ledger.unavailable
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            let wait = retry_after.map_or(Duration::from_millis(500), |s| {
                                Duration::from_secs(s.min(10))
                            });
                            tokio::time::sleep(wait).await;
                        }
                        _ => {
                            // Refused for good: not owed, and not sent again.
                            ledger.other.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// How long the first start of a scenario's stages gets (the debug build, on a busy machine).
const START_WITHIN: Duration = Duration::from_secs(60);

/// The scenario's mpconnect processes, started again after each `kill -9`.
struct Stages {
    dir: PathBuf,
    config: PathBuf,
    targets: Vec<&'static str>,
    children: Vec<Child>,
}

impl Stages {
    fn start(dir: &Path, config: &Path, targets: &[&'static str]) -> anyhow::Result<Stages> {
        let mut stages = Stages {
            dir: dir.to_owned(),
            config: config.to_owned(),
            targets: targets.to_vec(),
            children: Vec::new(),
        };
        for target in targets {
            let child = stages.spawn(target)?;
            stages.children.push(child);
        }
        Ok(stages)
    }

    fn spawn(&self, target: &str) -> anyhow::Result<Child> {
        let log = |suffix: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{target}.{suffix}")))
        };
        Command::new(std::env::current_exe()?)
            .args([target, "--config"])
            .arg(&self.config)
            .args(["--log-format", "text"])
            .stdout(Stdio::from(log("out")?))
            .stderr(Stdio::from(log("log")?))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .spawn()
            .with_context(|| format!("starting mpconnect {target}"))
    }

    /// SIGKILL: no drain, no flush, no destructor; then the same command again.
    fn kill_and_restart(&mut self, index: usize) -> anyhow::Result<()> {
        let child = &mut self.children[index];
        child.kill()?;
        child.wait()?;
        let target = self.targets[index];
        self.children[index] = self.spawn(target)?;
        Ok(())
    }

    /// SIGTERM for a clean drain, the front first; SIGKILL if a process does not go.
    async fn stop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The destination's dead letters, by reason, as `mpconnect dlq list` reports them.
fn dead_letters(config: &Path) -> anyhow::Result<String> {
    let output = Command::new(std::env::current_exe()?)
        .args(["dlq", "--config"])
        .arg(config)
        .args(["--log-format", "text", "list", "--destination", "mp"])
        .stderr(Stdio::null())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "mpconnect dlq list failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        // "<id>  attempts   n  status nnn  <answer>"
        if let Some((_, answer)) = line.split_once("  status ") {
            *reasons.entry(answer.trim().to_owned()).or_default() += 1;
        } else if let Some(rest) = line.strip_prefix("unreadable: ") {
            *reasons.entry(format!("unreadable: {rest}")).or_default() += 1;
        }
    }
    if reasons.is_empty() {
        return Ok("0".into());
    }
    Ok(reasons
        .into_iter()
        .map(|(why, n)| format!("{n} ({why})"))
        .collect::<Vec<_>>()
        .join(", "))
}
