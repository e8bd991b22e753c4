//! `mpconnect`: the mParticle – Events connector. One binary, one target per stage.

mod backfill;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mpconnect",
    version,
    about = "Moves mParticle event data in and out: ingest, transform, delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Queue the objects already in mParticle's S3 output (resumable).
    Backfill(backfill::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Backfill(args) => backfill::run(args).await,
        }
    })
}
