//! `mpconnect dlq list|show|redrive --destination ID`, and `mpconnect dlq redrive-ingest`.

use std::time::Duration;

use anyhow::Context;
use runtime::{Message, Queue, ReceiveOptions, StageQueue};
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
    /// One line per dead letter: id, when, attempts, the destination's last answer. Without
    /// --destination: every destination's, and how many messages the ingest dead-letter queue
    /// holds.
    List {
        #[arg(long)]
        destination: Option<String>,
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
    /// Move what is in the ingest dead-letter queue now back to the ingest queue, for the
    /// transform to take again (once the cause is fixed: a connection, delivery, a rule). Each
    /// goes back with the routes it still owed; one refused again returns to the dead-letter
    /// queue with its new reason.
    RedriveIngest,
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
            let every = destination.is_none();
            let destinations = match destination {
                Some(one) => vec![one],
                None => shared
                    .config
                    .destinations
                    .iter()
                    .map(|d| d.id.clone())
                    .collect(),
            };
            for destination in destinations {
                let scan = letters.scan(&destination).await?;
                for l in &scan.letters {
                    println!(
                        "{}  attempts {:>3}  status {:>3}  {}",
                        l.id,
                        l.attempts,
                        l.status.map_or("-".into(), |s| s.to_string()),
                        l.answer.lines().next().unwrap_or_default()
                    );
                }
                println!("{} dead letter(s) for {destination}", scan.letters.len());
                for (key, why) in &scan.unreadable {
                    println!("unreadable: {key}: {why}");
                }
            }
            if every {
                let (_, dead_letter) = shared.ingest_queues().await?;
                let depth = dead_letter.depth().await?;
                println!(
                    "{} message(s) in the ingest dead-letter queue (mpconnect dlq redrive-ingest moves them back)",
                    depth.visible + depth.in_flight + depth.delayed
                );
            }
        }
        Command::Show { id, destination } => {
            println!("{}", letters.get(&destination, &id).await?.to_pretty_json());
        }
        Command::RedriveIngest => {
            let (queue, dead_letter) = shared.ingest_queues().await?;
            let moved = redrive_ingest(&queue, &dead_letter).await?;
            println!(
                "{moved} message(s) moved from the ingest dead-letter queue to the ingest queue"
            );
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
                "redriven to {destination}: {} delivered, {} parked for retry, {} dead-lettered again, {} unreadable (kept; see dlq list)",
                report.delivered, report.parked, report.dead_lettered_again, report.unreadable
            );
        }
    }
    Ok(())
}

/// Moves the messages in `dead_letter` now (as many as its depth at the start: one refused
/// again while this runs is not taken twice) to `queue`, without the reason they were
/// refused. Each is acknowledged from the dead-letter queue only once it is in `queue`.
pub async fn redrive_ingest(queue: &StageQueue, dead_letter: &StageQueue) -> anyhow::Result<usize> {
    let depth = dead_letter.depth().await?;
    let mut left = (depth.visible + depth.delayed) as usize;
    let mut moved = 0;
    while left > 0 {
        let received = dead_letter
            .receive(ReceiveOptions {
                max_messages: left.min(10),
                wait: Duration::from_secs(1),
                visibility: Duration::from_secs(60),
            })
            .await?;
        if received.is_empty() {
            break;
        }
        left = left.saturating_sub(received.len());
        let messages = received
            .iter()
            .map(|m| {
                let (_, attributes) = runtime::envelope::rejection(m.attributes.clone());
                Message {
                    body: m.body.clone(),
                    attributes,
                    ..Message::default()
                }
            })
            .collect();
        queue
            .send(messages)
            .await
            .context("sending to the ingest queue")?;
        let receipts: Vec<_> = received.iter().map(|m| m.receipt.clone()).collect();
        dead_letter.ack(&receipts).await?;
        moved += received.len();
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ingest_dead_letter_queue_goes_back_whole_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) =
            runtime::queue::local_data(dir.path(), runtime::queue::EmbeddedSync::Normal).unwrap();
        let queue = runtime::queue::embedded_stage_queue(&db, "ingest", &store);
        let dead_letter = runtime::queue::embedded_stage_queue(&db, "ingest-dlq", &store);
        let large = vec![7u8; 300 * 1024];
        dead_letter
            .send(
                (0..12)
                    .map(|i| {
                        Message::new(if i == 0 { large.clone() } else { vec![i as u8] })
                            .with_attribute(
                                runtime::envelope::attr::REJECTED_BECAUSE,
                                "delivery down",
                            )
                            .with_attribute(runtime::envelope::attr::ROUTE, "c/mp")
                            .with_attribute(runtime::envelope::attr::SOURCE, "web")
                    })
                    .collect(),
            )
            .await
            .unwrap();
        assert_eq!(redrive_ingest(&queue, &dead_letter).await.unwrap(), 12);
        assert_eq!(dead_letter.depth().await.unwrap().visible, 0);
        let mut back = Vec::new();
        loop {
            let got = queue.receive(ReceiveOptions::default()).await.unwrap();
            if got.is_empty() {
                break;
            }
            back.extend(got);
        }
        assert_eq!(back.len(), 12);
        for m in &back {
            assert!(
                !m.attributes
                    .contains_key(runtime::envelope::attr::REJECTED_BECAUSE)
            );
            assert_eq!(
                &m.attributes[runtime::envelope::attr::ROUTE],
                "c/mp",
                "the routes still owed"
            );
        }
        assert!(back.iter().any(|m| m.body.as_ref() == large.as_slice()));
    }
}
