//! `mpconnect backfill s3://bucket/prefix`: objects already in the bucket, into the ingest queue.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ingest::s3::{S3Source, S3SourceSettings, backfill};
use runtime::aws::{AwsSettings, s3_client, sdk_config, sqs_client};
use runtime::queue::{
    EmbeddedSync, SqsQueue, SqsSettings, embedded_stage_queue, local_data, sqs_stage_queue,
};
use runtime::store::S3Store;
use runtime::{AnyStore, StageQueue};

#[derive(clap::Args)]
pub struct Args {
    /// Where the objects are: s3://bucket/prefix (a folder, a date folder, or the whole bucket).
    pub location: String,
    /// The ingest queue on SQS (name or URL). Without it, the embedded queue in --data-dir.
    #[arg(long, env = "MPCONNECT_INGEST_QUEUE")]
    pub queue: Option<String>,
    /// The dead-letter queue on SQS for bad lines (name or URL).
    #[arg(long, env = "MPCONNECT_INGEST_DLQ", requires = "queue")]
    pub dead_letter_queue: Option<String>,
    /// Data directory of the embedded queue (used without --queue).
    #[arg(long, env = "MPCONNECT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Bucket for claim-checked bodies when the queue is SQS.
    #[arg(long, env = "MPCONNECT_CLAIM_BUCKET")]
    pub claim_bucket: Option<String>,
    /// The source id the batches carry.
    #[arg(long, default_value = "mparticle-s3")]
    pub source: String,
    /// Records finished objects; a rerun with the same file skips them.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Caps the pace, so the backfill does not swamp the pipeline.
    #[arg(long)]
    pub max_lines_per_second: Option<u32>,
    /// S3/SQS endpoint (LocalStack, moto); implies path-style S3 addressing.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// No progress bar (logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

fn parse_location(location: &str) -> anyhow::Result<(String, String)> {
    let Some(rest) = location.strip_prefix("s3://") else {
        bail!("the location must look like s3://bucket/prefix, not {location:?}");
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("no bucket in {location:?}");
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (bucket, prefix) = parse_location(&args.location)?;
    let aws = AwsSettings {
        region: args.region.clone(),
        endpoint_url: args.endpoint_url.clone(),
        force_path_style: args.endpoint_url.is_some(),
    };
    let config = sdk_config(&aws).await;
    let s3 = s3_client(&config, &aws);

    let (queue, dead_letter): (StageQueue, StageQueue) = match &args.queue {
        Some(name) => {
            let sqs = sqs_client(&config);
            let claims = args
                .claim_bucket
                .clone()
                .context("--claim-bucket is needed with an SQS queue")?;
            let store = AnyStore::S3(S3Store::new(s3.clone(), claims));
            let queue = SqsQueue::connect(sqs.clone(), SqsSettings::new(name)).await?;
            let dlq_name = args
                .dead_letter_queue
                .clone()
                .unwrap_or_else(|| format!("{name}-dlq"));
            let dlq = SqsQueue::connect(sqs, SqsSettings::new(dlq_name)).await?;
            (sqs_stage_queue(queue, &store), sqs_stage_queue(dlq, &store))
        }
        None => {
            let (db, store) = local_data(&args.data_dir, EmbeddedSync::Normal)?;
            (
                embedded_stage_queue(&db, "ingest", &store),
                embedded_stage_queue(&db, "ingest-dlq", &store),
            )
        }
    };
    let settings = S3SourceSettings {
        source_id: args.source.clone(),
        max_lines_per_second: args.max_lines_per_second,
        ..S3SourceSettings::default()
    };
    let source = S3Source::for_backfill(settings, s3, queue, Some(dead_letter));

    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} objects  {msg}  {elapsed_precise} (eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    let summary = backfill(&source, &bucket, &prefix, args.state_file.as_deref(), |p| {
        bar.set_length(p.objects_total);
        bar.set_position(p.objects_done);
        bar.set_message(format!(
            "{:.1}/{:.1} MB",
            p.bytes_done as f64 / 1e6,
            p.bytes_total as f64 / 1e6
        ));
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "backfill of s3://{bucket}/{prefix}: {} objects read, {} skipped, {} lines, {} batches ({} events) queued, {} bad lines to the dead-letter queue",
        summary.objects,
        summary.skipped,
        summary.lines,
        summary.batches,
        summary.events,
        summary.bad_lines
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            parse_location("s3://b/exports/2026-11-29/").unwrap(),
            ("b".into(), "exports/2026-11-29/".into())
        );
        assert_eq!(parse_location("s3://b").unwrap(), ("b".into(), "".into()));
        assert!(parse_location("b/prefix").is_err());
        assert!(parse_location("s3:///x").is_err());
    }
}
