//! `mpconnect`: the mParticle – Events connector. One binary, one target per stage (`ingest`,
//! `transform`, `delivery`), and `all` to run every stage in one process.

mod backfill;
mod config;
mod dlq;
mod run;
mod stages;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    Validate(ConfigArgs),
    /// Credentials for a source.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Dead letters: batches a destination refused, or that outlived the retry window.
    Dlq(dlq::Args),
    /// Queue the objects already in mParticle's S3 output (resumable).
    Backfill(backfill::Args),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a fresh API key and secret (put them in the source's config or its secret store).
    New,
}

fn init_logs(config: Option<&config::Config>, flag: Option<&str>) {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
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
                init_logs(None, args.config.log_format.as_deref());
                dlq::run(args).await
            }
            Command::Backfill(args) => {
                init_logs(None, None);
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
