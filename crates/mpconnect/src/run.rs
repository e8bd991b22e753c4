//! Running targets: start the stages a target holds, then on SIGTERM or SIGINT drain them in
//! order (ingest stops taking requests, transform finishes what it holds, delivery flushes)
//! within the grace period.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::routing::get;
use tokio::sync::watch;

use crate::ConfigArgs;
use crate::config::{self, Config};
use crate::stages::{self, Shared};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    All,
    Ingest,
    Transform,
    Delivery,
}

pub fn validate(args: crate::ValidateArgs) -> anyhow::Result<()> {
    let crate::ValidateArgs {
        config: args,
        stage,
    } = args;
    let (config, mut problems) = config::load(args.config.as_deref())?;
    problems.extend(config.problems_for(stage.secrets()));
    let name = args
        .config
        .as_ref()
        .map_or("the embedded default".to_owned(), |p| {
            p.display().to_string()
        });
    if problems.is_empty() {
        println!("{name}: valid");
        // What deployments check against: a stage is given no secret it does not read.
        println!(
            "secrets read from the environment: {}",
            config.secret_env_vars(stage.secrets()).join(" ")
        );
        return Ok(());
    }
    for problem in &problems {
        println!("{problem}");
    }
    bail!("{name}: {} problem(s)", problems.len())
}

fn load(
    args: &ConfigArgs,
    target: Target,
) -> anyhow::Result<(Config, Option<runtime::telemetry::Tracing>)> {
    let (config, mut problems) = config::load(args.config.as_deref())?;
    problems.extend(config.problems_for(target.secrets()));
    let tracing = crate::init_logs(
        Some(&config),
        args.log_format.as_deref(),
        Some(target.service_name()),
    );
    if !problems.is_empty() {
        bail!(
            "the configuration has problems:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok((config, tracing))
}

/// Resolves on SIGTERM or SIGINT.
async fn signalled() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// A stop signal for one stage.
fn stopper() -> (
    watch::Sender<bool>,
    impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
) {
    let (tx, rx) = watch::channel(false);
    let make = move || {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
    };
    (tx, make)
}

async fn bind(addr: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// `/healthz` (answered by `health`), `/readyz` and `/metrics` for a stage without HTTP of
/// its own.
fn admin(health: axum::routing::MethodRouter) -> axum::Router {
    axum::Router::new()
        .route("/healthz", health)
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|| async { runtime::telemetry::metrics_answer() }),
        )
}

/// Serves a stage's admin endpoints until the stage stops.
async fn serve_admin(
    router: axum::Router,
    listener: tokio::net::TcpListener,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(stopped)
        .await
}

impl Target {
    /// The secrets this target reads, and so checks at start: nothing more, so that each
    /// stage's pods can be given only their own.
    pub fn secrets(self) -> config::SecretsOf {
        config::SecretsOf {
            sources: matches!(self, Target::All | Target::Ingest),
            destinations: matches!(self, Target::All | Target::Delivery),
        }
    }

    /// `service.name` of its spans; `all` is one service, its spans name their stage.
    fn service_name(self) -> &'static str {
        match self {
            Target::All => "mpconnect",
            Target::Ingest => "mpconnect-ingest",
            Target::Transform => "mpconnect-transform",
            Target::Delivery => "mpconnect-delivery",
        }
    }
}

pub async fn stage(args: ConfigArgs, target: Target) -> anyhow::Result<()> {
    let (config, tracing) = load(&args, target)?;
    let result = run_stages(config, target).await;
    if let Some(tracing) = tracing {
        tracing.shutdown(Duration::from_secs(3));
    }
    result
}

async fn run_stages(config: Config, target: Target) -> anyhow::Result<()> {
    let grace = Duration::from_secs(config.shutdown.grace_period_secs);
    let listen = config.listen.clone();
    let endpoint = config.transform.delivery_endpoint.clone();
    let shared = Shared::new(config).await?;
    let runs = |t: Target| target == Target::All || target == t;

    // Delivery first, so the transform has somewhere to deliver; ingest last.
    let (stop_delivery, delivery_stopped) = stopper();
    let mut delivery_task = None;
    let mut in_process_delivery = None;
    if runs(Target::Delivery) {
        if let Some(names) = shared.config.delivery.peers.clone() {
            delivery::limit::count_peers(
                names,
                shared.peers.clone(),
                stages::RESOLVE_EVERY,
                delivery_stopped(),
            )
            .await;
        }
        let delivery = stages::delivery(&shared).await?;
        if target == Target::All {
            in_process_delivery = Some(delivery.clone());
        }
        let listener = bind(&listen.delivery, "delivery (gRPC)").await?;
        tracing::info!(addr = %listener.local_addr()?, "delivery listening (gRPC)");
        if target == Target::Delivery {
            let admin = bind(&listen.delivery_admin, "delivery's health and metrics").await?;
            tracing::info!(addr = %admin.local_addr()?, "delivery health and metrics");
            tokio::spawn(serve_admin(
                delivery.admin_router(),
                admin,
                delivery_stopped(),
            ));
        }
        delivery_task = Some(tokio::spawn(delivery.serve(listener, delivery_stopped())));
    }

    let (stop_transform, transform_stopped) = stopper();
    let mut transform_task = None;
    if runs(Target::Transform) {
        // In `all`, the transform calls delivery's service directly: no loopback gRPC.
        let client = match &in_process_delivery {
            Some(delivery) => transform::DeliveryClient::in_process(
                Arc::new(delivery.clone()),
                transform::DELIVER_DEADLINE,
            ),
            None => stages::delivery_client(&endpoint)?,
        };
        let transform = stages::transform(&shared, client).await?;
        match &in_process_delivery {
            Some(_) => tracing::info!("transform started; delivery in this process"),
            None => tracing::info!(delivery = %endpoint, "transform started"),
        }
        if target == Target::Transform {
            let admin_listener =
                bind(&listen.transform_admin, "transform's health and metrics").await?;
            tracing::info!(addr = %admin_listener.local_addr()?, "transform health and metrics");
            // A stuck poller makes the process unhealthy, so Kubernetes restarts it.
            let watched = transform.clone();
            let router = admin(get(move || {
                let stalled = watched.stalled();
                async move {
                    match stalled {
                        None => (axum::http::StatusCode::OK, "ok".to_owned()),
                        Some(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                }
            }));
            tokio::spawn(serve_admin(router, admin_listener, transform_stopped()));
        }
        let stopped = transform_stopped();
        transform_task = Some(tokio::spawn(async move { transform.run(stopped).await }));
    }

    let (stop_ingest, ingest_stopped) = stopper();
    let mut ingest_tasks = Vec::new();
    if runs(Target::Ingest) {
        let stage = stages::ingest(&shared).await?;
        let listener = bind(&listen.ingest, "ingest (HTTP)").await?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "ingest listening (HTTP)");
        if target == Target::All {
            print_welcome(&shared, addr);
        }
        let http = stage.http.clone();
        let stopped = ingest_stopped();
        ingest_tasks.push(tokio::spawn(async move {
            if let Err(e) = http.serve(listener, stopped).await {
                tracing::error!(error = %e, "ingest stopped");
            }
        }));
        for source in stage.s3 {
            let stopped = ingest_stopped();
            ingest_tasks.push(tokio::spawn(async move { source.run(stopped).await }));
        }
    }

    signalled().await;
    tracing::info!(
        grace_period_secs = grace.as_secs(),
        "stopping: draining every stage in order"
    );
    let drained = tokio::time::timeout(grace, async {
        let _ = stop_ingest.send(true);
        for task in ingest_tasks {
            let _ = task.await;
        }
        let _ = stop_transform.send(true);
        if let Some(task) = transform_task {
            let _ = task.await;
        }
        let _ = stop_delivery.send(true);
        if let Some(task) = delivery_task {
            let _ = task.await;
        }
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("stopped cleanly"),
        Err(_) => tracing::warn!(
            "the grace period ran out; what was not acknowledged comes back from the queues"
        ),
    }
    Ok(())
}

/// What a user of `mpconnect all` needs: where to send, with what, and where events land.
fn print_welcome(shared: &Shared, addr: std::net::SocketAddr) {
    let config = &shared.config;
    println!("mpconnect all: listening on http://{addr}");
    println!("  Events API:  POST http://{addr}/v2/events  and  /v2/bulkevents");
    for source in &config.sources {
        let ingest::SourceKind::Http(http) = &source.kind else {
            continue;
        };
        println!("  webhook:     POST http://{addr}/webhook/{}", source.id);
        let generated =
            |s: &Option<config::SecretConfig>| s.as_ref().is_some_and(|s| s.is_generated());
        // Only generated local credentials are printed: configured ones stay secret.
        if generated(&http.api_key) && generated(&http.api_secret) {
            let read = |s: &Option<config::SecretConfig>| {
                s.as_ref()
                    .and_then(|s| s.source(&config.data_dir).load().ok())
                    .map(|s| s.expose().to_owned())
                    .unwrap_or_default()
            };
            println!(
                "  source {:<12} API key {}  API secret {}",
                source.id,
                read(&http.api_key),
                read(&http.api_secret)
            );
        } else {
            println!("  source {:<12} (credentials as configured)", source.id);
        }
    }
    for d in &config.destinations {
        match &d.kind {
            delivery::DestinationKind::File(file) => println!(
                "  destination {:<7} events land in {}",
                d.id,
                file.dir(&config.data_dir).display()
            ),
            kind => println!("  destination {:<7} ({})", d.id, kind.name()),
        }
    }
    println!("  metrics:     http://{addr}/metrics");
}
