//! `mpconnect bench`: the end-to-end benchmark. It starts `mpconnect all` (this same binary)
//! on a benchmark config, drives it with a load generator over keep-alive connections, has it
//! deliver to a counting mParticle-compatible receiver, and measures in the same run the floor:
//! `serde_json::Value` parse + serialise of the same bodies on one core. Figures, not asserts.

pub mod faults;
mod load;
mod otlp_sink;
mod payload;
mod receiver;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;

use load::{LoadCounts, percentile};
use payload::Payload;
use receiver::Receiver;

#[derive(clap::Args)]
pub struct Args {
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// How long the load runs, warm-up included.
    #[arg(long, default_value_t = 25)]
    seconds: u64,
    /// Left out of the sustained figures: start-up, first allocations, the first backlog.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// After the load: how long to wait for delivery to catch up.
    #[arg(long, default_value_t = 90)]
    drain_timeout: u64,
    /// Batches per request and events per batch.
    #[arg(long, default_value_t = 10)]
    batches: usize,
    #[arg(long, default_value_t = 10)]
    events: usize,
    /// Bytes per event the generated bodies average.
    #[arg(long, default_value_t = 1100)]
    event_bytes: usize,
    /// Extra TOML appended to the benchmark config (e.g. `[queues]` settings).
    #[arg(long)]
    extra_config: Option<PathBuf>,
    /// Then run again with traces exported (OTLP, to a counting sink in the benchmark) and
    /// print what tracing costs.
    #[arg(long)]
    tracing: bool,
    /// With --tracing: pairs of passes, without and with tracing, taken in turn. The machine's
    /// pace drifts over minutes, so one pair says little; the median of several says more.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The distributed variant: ingest, transform and delivery as three processes on SQS and
    /// S3 at this endpoint (moto, LocalStack) instead of `mpconnect all` on the embedded queue.
    #[arg(long)]
    sqs_endpoint: Option<String>,
    /// With --sqs-endpoint: the transform's pollers (moto serves few long polls at once).
    #[arg(long, default_value_t = 4)]
    sqs_pollers: usize,
    /// A process whose CPU is reported beside mpconnect's (the SQS server).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Keep the data directory and logs (printed at the end).
    #[arg(long)]
    keep: bool,
}

/// What a pass delivered: events a second in the sustained window, batches in all, and
/// mpconnect's CPU seconds per 100k events.
#[derive(Clone, Copy)]
struct Delivered {
    sustained: f64,
    batches: u64,
    cpu_per_100k: f64,
}

/// One reading of the mpconnect process and the counters.
#[derive(Clone, Copy, Default)]
struct Sample {
    at: Duration,
    accepted: u64,
    delivered: u64,
    cpu_ticks: u64,
    rss_kb: u64,
    /// The machine's busy and total ticks, every core.
    machine: (u64, u64),
    /// CPU ticks of the SQS server, when one is watched.
    server_ticks: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let payload = Arc::new(Payload::new(args.batches, args.events, args.event_bytes)?);
    println!(
        "payload: {} batches x {} events, {} bytes a request ({} an event), fresh ids per request",
        args.batches,
        args.events,
        payload.len(),
        payload.len() / payload.events.max(1)
    );

    // The floor first, on one core, while nothing else runs.
    let floor = Floor::measure(payload.clone()).await?;
    println!(
        "floor: serde_json::Value parse + serialise, 1 core, best of 5: {:.0} events/s",
        floor.here
    );
    match floor.plain {
        Some(plain) => println!(
            "  as a plain program on the system allocator (mpconnect-floor): {plain:.0} events/s"
        ),
        None => println!(
            "  as a plain program: not measured (mpconnect-floor beside this binary: `scripts/bench` builds it)"
        ),
    }

    let untraced = pass(&args, payload.clone(), floor, None).await?;
    if args.tracing {
        let sink = Arc::new(otlp_sink::OtlpSink::default());
        let endpoint = otlp_sink::start(sink.clone()).await?;
        let mut rounds = Vec::with_capacity(args.rounds.max(1));
        for round in 0..args.rounds.max(1) {
            let without = if round == 0 {
                untraced
            } else {
                pass(&args, payload.clone(), floor, None).await?
            };
            let spans_before = sink.spans.load(Ordering::Relaxed);
            let with = pass(&args, payload.clone(), floor, Some(&endpoint)).await?;
            let spans = sink.spans.load(Ordering::Relaxed) - spans_before;
            rounds.push((without, with, spans));
        }
        println!();
        println!(
            "tracing on (OTLP to a counting sink, default sampling), each round a pass without and one with:"
        );
        let mut fewer = Vec::with_capacity(rounds.len());
        let mut dearer = Vec::with_capacity(rounds.len());
        for (i, (without, with, spans)) in rounds.iter().enumerate() {
            let less = (1.0 - with.sustained / without.sustained.max(1e-9)) * 100.0;
            let cpu = (with.cpu_per_100k / without.cpu_per_100k.max(1e-9) - 1.0) * 100.0;
            fewer.push(less);
            dearer.push(cpu);
            let delivered = if less >= 0.0 {
                format!("{less:.1}% less")
            } else {
                format!(
                    "{:.1}% more (the machine's pace moved more than tracing cost)",
                    -less
                )
            };
            // A batch's trace has an ingest, a queue wait, a transform and a deliver span,
            // and shares call spans: fewer than four a batch means the exporter dropped some.
            println!(
                "  round {}: {:.0} against {:.0} events/s delivered, {delivered}; CPU {:.2} against {:.2} s per 100k events ({cpu:+.0}%); {spans} spans received, {:.1} a batch (a complete trace has at least 4)",
                i + 1,
                with.sustained,
                without.sustained,
                with.cpu_per_100k,
                without.cpu_per_100k,
                *spans as f64 / with.batches.max(1) as f64
            );
        }
        println!(
            "  median: {:.1}% fewer events delivered with tracing on, CPU per event {:+.0}%",
            median(&mut fewer),
            median(&mut dearer)
        );
    }
    Ok(())
}

/// The middle value; of an even count, the mean of the two in the middle.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if !n.is_multiple_of(2) => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// How long `mpconnect all` gets to answer `/healthz`.
const START_WITHIN: Duration = Duration::from_secs(30);

/// One run of `mpconnect all` (or the three stages) under load: what it delivered.
async fn pass(
    args: &Args,
    payload: Arc<Payload>,
    floor: Floor,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Delivered> {
    let dir = tempfile::Builder::new()
        .prefix("mpconnect-bench-")
        .tempdir()?;
    let started = Instant::now();
    let receiver_auth = basic("bench-mp-key", "bench-mp-secret");
    let receiver = Receiver::new(started, receiver_auth);
    let receiver_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver_addr = receiver_listener.local_addr()?;
    let router = receiver.router();
    let served = tokio::spawn(async move { axum::serve(receiver_listener, router).await });

    let ingest_addr = free_port()?;
    let delivery_addr = free_port()?;
    let split = match &args.sqs_endpoint {
        Some(endpoint) => Some(split_setup(endpoint, &delivery_addr, args.sqs_pollers).await?),
        None => None,
    };
    let extra = match &args.extra_config {
        Some(path) => std::fs::read_to_string(path)?,
        None => String::new(),
    };
    let config = bench_config(
        dir.path(),
        &Ports {
            ingest: ingest_addr.clone(),
            delivery: delivery_addr.clone(),
            receiver: receiver_addr.to_string(),
        },
        "",
        &extra,
        split.as_ref(),
    )?;
    let targets: &[&str] = match split {
        Some(_) => &["delivery", "transform", "ingest"],
        None => &["all"],
    };
    let config_path = dir.path().join("bench.toml");
    std::fs::write(&config_path, config)?;
    let mut children = Vec::new();
    for target in targets {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .args([target, "--config"])
            .arg(&config_path)
            .args(["--log-format", "text"])
            .stdout(std::fs::File::create(
                dir.path().join(format!("{target}.out")),
            )?)
            .stderr(std::fs::File::create(
                dir.path().join(format!("{target}.log")),
            )?)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(endpoint) = otlp_endpoint {
            command.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        }
        children.push(
            command
                .spawn()
                .with_context(|| format!("starting mpconnect {target}"))?,
        );
    }
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let what = format!(
        "{}, tracing {}",
        match &args.sqs_endpoint {
            Some(_) => "ingest + transform + delivery as three processes on SQS and S3 (moto)",
            None => "mpconnect all, embedded queue",
        },
        if otlp_endpoint.is_some() { "on" } else { "off" }
    );
    let result = match wait_until_started(&ingest_addr, START_WITHIN, targets, &mut children).await
    {
        Ok(()) => drive(args, payload, &receiver, &ingest_addr, &pids, floor, &what).await,
        Err(e) => Err(e),
    };
    // SIGTERM for a clean drain; SIGKILL if it does not go.
    for child in children.iter_mut().rev() {
        let _ = std::process::Command::new("kill")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    served.abort();
    if args.keep {
        println!("kept: {}", dir.keep().display());
    } else if result.is_err() {
        eprintln!("{}", log_tails(dir.path(), targets));
    }
    result
}

async fn drive(
    args: &Args,
    payload: Arc<Payload>,
    receiver: &Arc<Receiver>,
    ingest_addr: &str,
    pids: &[u32],
    floor: Floor,
    what: &str,
) -> anyhow::Result<Delivered> {
    let counts = Arc::new(LoadCounts::default());
    let t0 = Instant::now();
    let load_end = t0 + Duration::from_secs(args.seconds);
    let warm = Duration::from_secs(args.warmup.min(args.seconds.saturating_sub(1)));
    let samples = Arc::new(std::sync::Mutex::new(Vec::<Sample>::new()));
    let sampler = {
        let (samples, counts, receiver) = (samples.clone(), counts.clone(), receiver.clone());
        let (pids, server) = (pids.to_vec(), args.server_pid);
        tokio::spawn(async move {
            loop {
                let (cpu_ticks, rss_kb) = processes_reading(&pids);
                let sample = Sample {
                    at: t0.elapsed(),
                    accepted: counts.accepted_events.load(Ordering::Relaxed),
                    delivered: receiver.delivered_events(),
                    cpu_ticks,
                    rss_kb,
                    machine: machine_ticks(),
                    server_ticks: server.map_or(0, |pid| process_reading(pid).0),
                };
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(sample);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let url = format!("http://{ingest_addr}/v2/bulkevents");
    let loaded = load::run(
        url,
        basic("bench-key", "bench-secret"),
        payload.clone(),
        args.connections,
        load_end,
        counts.clone(),
    )
    .await?;
    let load_secs = t0.elapsed().as_secs_f64();
    let accepted = counts.accepted_events.load(Ordering::Relaxed);

    // Then wait for the backlog to be delivered.
    let drain_by = Instant::now() + Duration::from_secs(args.drain_timeout);
    let mut last = (receiver.delivered_events(), Instant::now());
    while receiver.delivered_events() < accepted && Instant::now() < drain_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = receiver.delivered_events();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sampler.abort();
    let (end_ticks, end_rss) = processes_reading(pids);
    let peak_rss_kb: u64 = pids.iter().map(|&pid| peak_rss_kb(pid)).sum();
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // The floor again, now the load is over: the machine's pace drifts within a run, and the
    // higher of the two is the one compared with (the harder bar).
    let floor_before = floor;
    let floor_after = Floor::measure(payload.clone()).await?;
    let floor = floor_before.here.max(floor_after.here);
    let plain_floor = floor_before
        .plain
        .into_iter()
        .chain(floor_after.plain)
        .reduce(f64::max);

    let rc = &receiver.counts;
    let delivered = rc.events.load(Ordering::Relaxed);
    let unique = delivered - rc.duplicate_events.load(Ordering::Relaxed);
    let at = |t: Duration| {
        samples
            .iter()
            .find(|s| s.at >= t)
            .copied()
            .or_else(|| samples.last().copied())
            .unwrap_or_default()
    };
    let (from, to) = (at(warm), at(Duration::from_secs_f64(load_secs)));
    let window = (to.at - from.at).as_secs_f64().max(1e-9);
    let sustained_delivered = (to.delivered - from.delivered) as f64 / window;
    let sustained_accepted = (to.accepted - from.accepted) as f64 / window;
    let last_delivery = receiver.started + Duration::from_nanos(rc.last_ns.load(Ordering::Relaxed));
    let overall = delivered as f64
        / last_delivery
            .saturating_duration_since(t0)
            .as_secs_f64()
            .max(1e-9);
    let steady: Vec<u64> = {
        let mut v: Vec<u64> = samples
            .iter()
            .filter(|s| s.at >= from.at && s.at <= to.at)
            .map(|s| s.rss_kb)
            .collect();
        v.sort_unstable();
        v
    };
    let steady_rss = steady.get(steady.len() / 2).copied().unwrap_or(end_rss);
    let first_ticks = samples.first().map_or(0, |s| s.cpu_ticks);
    let cpu_secs = (end_ticks.saturating_sub(first_ticks)) as f64 / ticks_per_second();
    let backlog_at_end = to.accepted.saturating_sub(to.delivered);
    let max_backlog = samples
        .iter()
        .map(|s| s.accepted.saturating_sub(s.delivered))
        .max()
        .unwrap_or(0);

    let busy =
        (to.machine.0 - from.machine.0) as f64 / ((to.machine.1 - from.machine.1) as f64).max(1.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mpconnect_cores = (to.cpu_ticks - from.cpu_ticks) as f64 / ticks_per_second() / window;
    let lat = &loaded.latencies_us;
    println!();
    println!(
        "{what}, {} connections, {} s load ({} s warm-up), load generator and receiver on the same cores",
        args.connections,
        args.seconds,
        warm.as_secs()
    );
    println!(
        "  accepted (202, durable)      {:>10.0} events/s sustained   {accepted} events in all",
        sustained_accepted
    );
    println!(
        "  delivered                    {:>10.0} events/s sustained   ({:.2}x the floor)",
        sustained_delivered,
        sustained_delivered / floor
    );
    println!(
        "  delivered, first request to last delivery {:>8.0} events/s",
        overall
    );
    println!(
        "  floor (1 core)               {:>10.0} events/s   (before the load {:.0}, after it {:.0}: the higher)",
        floor, floor_before.here, floor_after.here
    );
    // The floor as issue #14 first measured it: a plain program, so glibc's allocator, not the
    // mimalloc this process (and the floor above) runs on. Shown beside, not compared with.
    if let Some(plain) = plain_floor {
        println!(
            "  floor, plain program         {:>10.0} events/s   (system allocator; before the load {}, after it {}: the higher; delivered {:.2}x of it)",
            plain,
            floor_before.plain.map_or("-".into(), |f| format!("{f:.0}")),
            floor_after.plain.map_or("-".into(), |f| format!("{f:.0}")),
            sustained_delivered / plain
        );
    }
    println!(
        "  requests: 202 {}  429 {}  503 {}  other {}  errors {}",
        counts.accepted_requests.load(Ordering::Relaxed),
        counts.throttled.load(Ordering::Relaxed),
        counts.unavailable.load(Ordering::Relaxed),
        counts.other.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed)
    );
    println!(
        "  latency: p50 {:.1} ms  p99 {:.1} ms",
        percentile(lat, 0.5) as f64 / 1000.0,
        percentile(lat, 0.99) as f64 / 1000.0
    );
    println!(
        "  backlog (accepted - delivered): at the end of the load {backlog_at_end} events, at most {max_backlog}"
    );
    println!(
        "  delivered {delivered} events ({unique} unique, {} repeated), accepted {accepted}, missing {}",
        delivered - unique,
        accepted.saturating_sub(unique)
    );
    println!(
        "  receiver: {} requests, {} batches, malformed {}, over limits {}, unauthorized {}",
        rc.requests.load(Ordering::Relaxed),
        rc.batches.load(Ordering::Relaxed),
        rc.malformed.load(Ordering::Relaxed),
        rc.over_limits.load(Ordering::Relaxed),
        rc.unauthorized.load(Ordering::Relaxed)
    );
    let cpu_per_100k = cpu_secs / (delivered.max(1) as f64) * 100_000.0;
    println!(
        "  mpconnect CPU: {cpu_per_100k:.2} s per 100k events delivered ({cpu_secs:.1} s in all)"
    );
    println!(
        "  sustained window: machine {:.0}% busy of {cores} cores; mpconnect used {:.2} cores",
        busy * 100.0,
        mpconnect_cores
    );
    if args.server_pid.is_some() {
        let server_cores =
            (to.server_ticks - from.server_ticks) as f64 / ticks_per_second() / window;
        println!(
            "  the SQS/S3 server used {server_cores:.2} cores in the sustained window: near 1, it is the ceiling (one Python process)"
        );
    }
    println!(
        "  mpconnect RSS: peak {:.0} MB, steady {:.0} MB",
        peak_rss_kb as f64 / 1024.0,
        steady_rss as f64 / 1024.0
    );
    Ok(Delivered {
        sustained: sustained_delivered,
        batches: rc.batches.load(Ordering::Relaxed),
        cpu_per_100k,
    })
}

/// The floor: `serde_json::Value` parse + serialise of the payload's bodies on one core,
/// measured in this process (mimalloc, as `mpconnect all` runs: the floor compared with) and,
/// when `mpconnect-floor` sits beside this binary, as a plain program on the system allocator.
#[derive(Clone, Copy)]
struct Floor {
    here: f64,
    plain: Option<f64>,
}

impl Floor {
    const FOR_AT_LEAST: Duration = Duration::from_secs(3);

    async fn measure(payload: Arc<Payload>) -> anyhow::Result<Floor> {
        Ok(tokio::task::spawn_blocking(move || {
            let bodies: Vec<Vec<u8>> = (0..16).map(|_| payload.body()).collect();
            let here = floor::events_per_second(&bodies, payload.events, Self::FOR_AT_LEAST);
            let plain = plain_floor(&bodies, payload.events)
                .inspect_err(|e| eprintln!("floor as a plain program: {e:#}"))
                .ok()
                .flatten();
            Floor { here, plain }
        })
        .await?)
    }
}

/// `mpconnect-floor` on the same bodies; `None` when it is not beside this binary.
fn plain_floor(bodies: &[Vec<u8>], events: usize) -> anyhow::Result<Option<f64>> {
    let program = std::env::current_exe()?.with_file_name("mpconnect-floor");
    if !program.is_file() {
        return Ok(None);
    }
    let mut file = tempfile::NamedTempFile::new()?;
    std::io::Write::write_all(&mut file, &floor::write_bodies(bodies))?;
    let out = std::process::Command::new(&program)
        .arg(file.path())
        .arg(events.to_string())
        .arg(Floor::FOR_AT_LEAST.as_secs_f64().to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} {}: {}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let rate = String::from_utf8_lossy(&out.stdout).trim().parse::<f64>()?;
    Ok(Some(rate))
}

fn basic(key: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
    )
}

/// Lines of each stage's log shown when a run fails.
const LOG_TAIL_LINES: usize = 20;

/// The end of each stage's log in `dir` (`<target>.log`): why a run failed, shown before the
/// run's directory (and the logs in it) is removed.
fn log_tails(dir: &Path, targets: &[&str]) -> String {
    targets
        .iter()
        .map(|target| {
            let name = format!("{target}.log");
            let log = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            format!("--- the end of mpconnect {target}'s log ---\n{tail}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until ingest at `ingest_addr` answers `/healthz`, for at most `within`; fails at once
/// when one of the stages' processes (`children`, started as `targets`) has already ended.
async fn wait_until_started(
    ingest_addr: &str,
    within: Duration,
    targets: &[&str],
    children: &mut [std::process::Child],
) -> anyhow::Result<()> {
    let health = format!("http://{ingest_addr}/healthz");
    let client = reqwest::Client::new();
    let ready_by = Instant::now() + within;
    while client.get(&health).send().await.is_err() {
        let ended = children
            .iter_mut()
            .zip(targets)
            .find_map(|(child, target)| matches!(child.try_wait(), Ok(Some(_))).then_some(target));
        if let Some(target) = ended {
            anyhow::bail!("mpconnect {target} exited as it started");
        }
        anyhow::ensure!(
            Instant::now() < ready_by,
            "mpconnect did not start in {} s",
            within.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn free_port() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Where mpconnect listens, and the receiver it delivers to.
struct Ports {
    ingest: String,
    delivery: String,
    receiver: String,
}

/// The benchmark's configuration: one HTTP source, one `mparticle` destination without a rate
/// limit at the receiver (`destination_extra` is added to its table, `extra` at the end);
/// `split` adds the distributed variant's queues, bucket and ports.
fn bench_config(
    dir: &Path,
    ports: &Ports,
    destination_extra: &str,
    extra: &str,
    split: Option<&Split>,
) -> anyhow::Result<String> {
    let Ports {
        ingest,
        delivery,
        receiver,
    } = ports;
    let (retry_queue, split) = match split {
        Some(split) => (
            format!("retry_queue = \"{}\"", split.retry_queue),
            split.tables.clone(),
        ),
        None => (String::new(), String::new()),
    };
    let mut config = format!(
        r#"data_dir = {data:?}

[listen]
ingest = "{ingest}"
delivery = "{delivery}"
transform_admin = "{transform_admin}"
delivery_admin = "{delivery_admin}"

[telemetry]
log_level = "warn"

[[sources]]
id = "bench"
kind = "http"
api_key = "bench-key"
api_secret = "bench-secret"

[[destinations]]
id = "mp"
kind = "mparticle"
base_url = "http://{receiver}/v2"
api_key = "bench-mp-key"
api_secret = "bench-mp-secret"
rate_limit = 0
{retry_queue}
{destination_extra}

[[connections]]
id = "bench"
source = "bench"
destinations = ["mp"]
{split}"#,
        data = dir.join("data").display().to_string(),
        transform_admin = free_port()?,
        delivery_admin = free_port()?,
    );
    config.push('\n');
    config.push_str(extra);
    Ok(config)
}

/// The distributed variant's resources: the destination's retry queue, and the TOML tables
/// that point the stages at the rest.
struct Split {
    retry_queue: String,
    tables: String,
}

/// The distributed variant: fresh queues and a bucket at `endpoint`.
async fn split_setup(endpoint: &str, delivery: &str, pollers: usize) -> anyhow::Result<Split> {
    let settings = runtime::aws::AwsSettings {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint.to_owned()),
        force_path_style: true,
    };
    let aws = runtime::aws::sdk_config(&settings).await;
    let (sqs, s3) = (
        runtime::aws::sqs_client(&aws),
        runtime::aws::s3_client(&aws, &settings),
    );
    let run = format!("{:08x}", rand::random::<u32>());
    let mut urls = Vec::new();
    for name in ["ingest", "ingest-dead-letter", "retry-mp"] {
        let url = sqs
            .create_queue()
            .queue_name(format!("bench-{run}-{name}"))
            .send()
            .await
            .with_context(|| format!("creating the queue {name} at {endpoint}"))?
            .queue_url
            .context("no queue URL")?;
        urls.push(url);
    }
    let bucket = format!("bench-{run}");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .with_context(|| format!("creating the bucket {bucket}"))?;
    let tables = format!(
        r#"
[queues]
backend = "sqs"
ingest = "{ingest}"
ingest_dead_letter = "{dlq}"

[store]
backend = "s3"
bucket = "{bucket}"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[transform]
delivery_endpoint = "{delivery}"
pollers = {pollers}
"#,
        ingest = urls[0],
        dlq = urls[1],
    );
    Ok(Split {
        retry_queue: urls[2].clone(),
        tables,
    })
}

/// CPU ticks (user + system) and resident memory (kB) of a process, from `/proc`.
fn process_reading(pid: u32) -> (u64, u64) {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which sits in parentheses and may hold spaces.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    (ticks, status_kb(pid, "VmRSS:"))
}

/// Busy and total ticks of the whole machine, from the first line of `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU ticks and resident memory summed over processes.
fn processes_reading(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .map(|&pid| process_reading(pid))
        .fold((0, 0), |(t, r), (pt, pr)| (t + pt, r + pr))
}

fn peak_rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Linux's USER_HZ, which `/proc/<pid>/stat` counts in: 100 on every mainstream kernel.
fn ticks_per_second() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_an_even_count_is_between_the_middle_two() {
        assert!((median(&mut [12.6, 6.7, -1.8, -2.6]) - 2.45).abs() < 1e-9);
        assert_eq!(median(&mut [3.0, -1.0, 2.0]), 2.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
