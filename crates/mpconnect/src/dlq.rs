//! `mpconnect dlq list|show|redrive --destination ID`.

use anyhow::Context;
use schema::v1::delivery_service_client::DeliveryServiceClient;

use crate::ConfigArgs;
use crate::stages::Shared;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// One line per dead letter: id, when, attempts, the destination's last answer.
    List {
        #[arg(long)]
        destination: String,
    },
    /// One dead letter in full, its batch as mParticle JSON.
    Show {
        id: String,
        #[arg(long)]
        destination: String,
    },
    /// Send every dead letter of a destination back through delivery; each is removed once
    /// delivery has answered for it.
    Redrive {
        #[arg(long)]
        destination: String,
        /// Delivery's gRPC address (default: transform.delivery_endpoint of the config).
        #[arg(long)]
        delivery: Option<String>,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (config, problems) = crate::config::load(args.config.config.as_deref())?;
    if !problems.is_empty() {
        anyhow::bail!(
            "the configuration has problems:\n  {}",
            problems.join("\n  ")
        );
    }
    let endpoint = config.transform.delivery_endpoint.clone();
    let shared = Shared::new(config).await?;
    let letters = shared.dead_letters();
    match args.command {
        Command::List { destination } => {
            let all = letters.list(&destination).await?;
            for l in &all {
                println!(
                    "{}  attempts {:>3}  status {:>3}  {}",
                    l.id,
                    l.attempts,
                    l.status.map_or("-".into(), |s| s.to_string()),
                    l.answer.lines().next().unwrap_or_default()
                );
            }
            println!("{} dead letter(s) for {destination}", all.len());
        }
        Command::Show { id, destination } => {
            println!("{}", letters.get(&destination, &id).await?.to_pretty_json());
        }
        Command::Redrive {
            destination,
            delivery,
        } => {
            let addr = delivery.unwrap_or(endpoint);
            let url = if addr.starts_with("http") {
                addr
            } else {
                format!("http://{addr}")
            };
            let mut client = DeliveryServiceClient::connect(url.clone())
                .await
                .with_context(|| format!("connecting to delivery at {url}"))?
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20);
            let report = letters.redrive(&destination, &mut client).await?;
            println!(
                "redriven to {destination}: {} delivered, {} parked for retry, {} dead-lettered again",
                report.delivered, report.parked, report.dead_lettered_again
            );
        }
    }
    Ok(())
}
