//! `mpconnect`: the mParticle – Events connector. One binary, one target per stage (`ingest`,
//! `transform`, `delivery`), and `all` to run every stage in one process.
//!
//! The library is the binary's one wiring path: the configuration ([`config`]) and the stage
//! builders ([`stages`]), used by the stage targets ([`run`]), `backfill`, `dlq` and the
//! integration tests alike.

pub mod backfill;
pub mod bench;
pub mod config;
pub mod dlq;
pub mod run;
pub mod stages;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

#[derive(Args, Clone)]
pub struct ConfigArgs {
    /// The TOML configuration. Without it: the embedded default (examples/local.toml).
    #[arg(long, short, env = "MPCONNECT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format: auto (text on a terminal, JSON otherwise), text or json.
    #[arg(long, env = "MPCONNECT_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
}

#[derive(clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Check as this stage will run: only the secrets it reads must be there (ingest reads the
    /// sources', delivery the destinations', the transform none). Prints their env vars.
    #[arg(long, value_enum, default_value = "all")]
    pub stage: run::Target,
}

/// Logs to stderr (text on a terminal, JSON otherwise) and, when `tracing` names a service
/// and an OTLP endpoint is configured, pipeline spans to OTLP. Returns the exporter to shut
/// down at exit.
pub fn init_logs(
    config: Option<&config::Config>,
    flag: Option<&str>,
    tracing_as: Option<&str>,
) -> Option<runtime::telemetry::Tracing> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let format = flag
        .map(str::to_owned)
        .or_else(|| config.and_then(|c| c.telemetry.log_format.clone()))
        .unwrap_or_else(|| "auto".into());
    let level = config
        .and_then(|c| c.telemetry.log_level.clone())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let json = match format.as_str() {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    let settings = tracing_as.map(|service| runtime::telemetry::TracingSettings {
        service_name: service.to_owned(),
        endpoint: config.and_then(|c| c.telemetry.otlp_endpoint.clone()),
    });
    let installed = match settings.map(|s| runtime::telemetry::Tracing::install(&s)) {
        Some(Ok(installed)) => installed,
        Some(Err(e)) => {
            eprintln!("mpconnect: traces are off: {e}");
            None
        }
        None => None,
    };
    tracing_subscriber::registry().with(logs).init();
    installed
}
