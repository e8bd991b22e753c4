//! `mpconnect`: the mParticle – Events connector. One binary, one target per stage (`ingest`,
//! `transform`, `delivery`), and `all` to run every stage in one process.

use clap::{Parser, Subcommand};
use mpconnect::{ConfigArgs, ValidateArgs, backfill, bench, dlq, init_logs, run};

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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, Command::Bench(_)) {
        // The benchmark's load generator and receiver share one worker thread: two workers
        // handing their tasks to each other took more of the cores the pipeline under test
        // needs (measured: README, benchmark).
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
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
                println!("api_key    = {:?}", runtime::config::random_token(32));
                println!("api_secret = {:?}", runtime::config::random_token(48));
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
