//! `mpconnect`: the mParticle – Events connector. One binary, one target per stage (`ingest`,
//! `transform`, `delivery`), and `all` to run every stage in one process.

mod backfill;
mod bench;
mod config;
mod dlq;
mod run;
mod stages;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// mimalloc over glibc's malloc: under load glibc spent about a fifth of the CPU in
/// `malloc`/`free` and their locks (many small strings per event, freed on other threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mpconnect",
    version,
    about = "Moves mParticle event data in and out: ingest, transform, delivery",
    long_about = "Moves mParticle event data in and out of your systems.\n\n\
        As a source, it takes mParticle's Events API shape, its Webhook output and its S3 \
        output; as a destination, it sends to mParticle's Events API (and to S3, a webhook or \
        a file). Run every stage in one process with `mpconnect all`, or each on its own."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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

#[derive(Subcommand)]
enum Command {
    /// Every stage in one process: the embedded queue, the real gRPC hop on loopback.
    All(ConfigArgs),
    /// The ingest stage: the Events API, the webhook, and S3 notifications, into the queue.
    Ingest(ConfigArgs),
    /// The transform stage: the ingest queue, through the rules, to delivery over gRPC.
    Transform(ConfigArgs),
    /// The delivery stage: the gRPC server, the destinations, retry queues and dead letters.
    Delivery(ConfigArgs),
    /// Check a configuration: every problem at once, each with its path in the file.
    Validate(ValidateArgs),
    /// Credentials for a source.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Dead letters: batches a destination refused, or that outlived the retry window.
    Dlq(dlq::Args),
    /// Queue the objects already in mParticle's S3 output (resumable).
    Backfill(backfill::Args),
    /// The end-to-end benchmark: `mpconnect all` under load, delivering to a counting
    /// receiver, beside the one-core floor measured in the same run (see README).
    Bench(bench::Args),
    /// The fault suite: kill -9, an unwell destination, a full disk; counts what went
    /// missing or arrived twice (see README).
    Faults(bench::faults::Args),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a fresh API key and secret (put them in the source's config or its secret store).
    New,
}

/// Logs to stderr (text on a terminal, JSON otherwise) and, when `tracing` names a service
/// and an OTLP endpoint is configured, pipeline spans to OTLP. Returns the exporter to shut
/// down at exit.
fn init_logs(
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
    // Pipeline spans are for the trace exporter; in logs they would only add noise and cost.
    let filter = match format!("{}=off", runtime::telemetry::SPAN_TARGET).parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
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
    match installed {
        Some((tracing, layer)) => {
            let spans = tracing_subscriber::filter::Targets::new()
                .with_target(runtime::telemetry::SPAN_TARGET, tracing::Level::INFO);
            tracing_subscriber::registry()
                .with(logs)
                .with(layer.with_filter(spans))
                .init();
            Some(tracing)
        }
        None => {
            tracing_subscriber::registry().with(logs).init();
            None
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mpconnect: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::All(args) => run::stage(args, run::Target::All).await,
            Command::Ingest(args) => run::stage(args, run::Target::Ingest).await,
            Command::Transform(args) => run::stage(args, run::Target::Transform).await,
            Command::Delivery(args) => run::stage(args, run::Target::Delivery).await,
            Command::Validate(args) => run::validate(args),
            Command::Keys(KeysCommand::New) => {
                println!("api_key    = {:?}", config::random_token(32));
                println!("api_secret = {:?}", config::random_token(48));
                Ok(())
            }
            Command::Dlq(args) => {
                init_logs(None, args.config.log_format.as_deref(), None);
                dlq::run(args).await
            }
            Command::Bench(args) => bench::run(args).await,
            Command::Faults(args) => bench::faults::run(args).await,
            Command::Backfill(args) => {
                init_logs(None, args.config.log_format.as_deref(), None);
                backfill::run(args).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpconnect: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
