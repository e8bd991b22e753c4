//! `mpconnect backfill s3://bucket/prefix`: objects already in the bucket, into the ingest
//! queue that the configuration names: the same queues, data directory and store as
//! `mpconnect all` (or the split stages) on that configuration.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ingest::s3::{S3Source, S3SourceSettings, backfill};
use runtime::aws::{s3_client, sdk_config};

use crate::ConfigArgs;
use crate::config::{Config, SecretsOf};
use crate::stages::{Shared, aws_settings};

#[derive(clap::Args)]
pub struct Args {
    /// Where the objects are: s3://bucket/prefix (a folder, a date folder, or the whole bucket).
    pub location: String,
    /// The source the batches carry, one of the configuration's (default: its only `s3`
    /// source, or else its only source), so its connections take them.
    #[arg(long)]
    pub source: Option<String>,
    /// Records finished objects; a rerun with the same file skips them.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Caps the pace, so the backfill does not swamp the pipeline.
    #[arg(long)]
    pub max_lines_per_second: Option<u32>,
    /// S3/SQS endpoint (LocalStack, moto), over the configuration's `aws.endpoint_url`;
    /// implies path-style S3 addressing.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Over the configuration's `aws.region`.
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// No progress bar (logs and CI).
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
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

/// The source the backfilled batches carry: the one asked for, which must be configured, or
/// the configuration's only `s3` source, or its only source.
fn chosen_source(config: &Config, asked: Option<&str>) -> anyhow::Result<String> {
    let ids = || {
        config
            .sources
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(id) = asked {
        if config.source(id).is_none() {
            bail!(
                "--source {id}: the configuration has no such source (it has: {})",
                ids()
            );
        }
        return Ok(id.to_owned());
    }
    let s3: Vec<&str> = config
        .sources
        .iter()
        .filter(|s| matches!(s.kind, ingest::SourceKind::S3(_)))
        .map(|s| s.id.as_str())
        .collect();
    match (s3.as_slice(), config.sources.as_slice()) {
        ([only], _) => Ok((*only).to_owned()),
        ([], [only]) => Ok(only.id.clone()),
        _ => bail!(
            "say which source the batches carry with --source (the configuration has: {})",
            ids()
        ),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (bucket, prefix) = parse_location(&args.location)?;
    let (mut config, mut problems) = crate::config::load(args.config.config.as_deref())?;
    if let Some(endpoint) = &args.endpoint_url {
        config.aws.endpoint_url = Some(endpoint.clone());
    }
    if let Some(region) = &args.region {
        config.aws.region = Some(region.clone());
    }
    // Backfill reads no secret: a stage's pod may run it with only its own.
    problems.extend(config.problems_for(SecretsOf {
        sources: false,
        destinations: false,
    }));
    if !problems.is_empty() {
        bail!(
            "the configuration has problems:\n  {}",
            problems.join("\n  ")
        );
    }
    let source_id = chosen_source(&config, args.source.as_deref())?;
    let aws = aws_settings(&config);
    let s3 = s3_client(&sdk_config(&aws).await, &aws);
    let shared = Shared::new(config).await?;
    let (queue, dead_letter) = shared
        .ingest_queues()
        .await
        .context("opening the configuration's ingest queue")?;
    let settings = S3SourceSettings {
        source_id: source_id.clone(),
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
        "backfill of s3://{bucket}/{prefix} as source {source_id}: {} objects read, {} skipped, {} lines, {} batches ({} events) queued, {} bad lines to the dead-letter queue",
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

    fn config(sources: &str) -> Config {
        crate::config::parse(sources, []).unwrap().0
    }

    #[test]
    fn the_source_is_one_the_configuration_has() {
        let http = "[[sources]]\nid = 'web'\nkind = 'http'\n";
        let s3 = "[[sources]]\nid = 'export'\nkind = 's3'\nnotification_queue = 'q'\n";
        // The shipped default's one source; an s3 source over any other; one asked for.
        assert_eq!(chosen_source(&config(http), None).unwrap(), "web");
        let both = config(&format!("{http}{s3}"));
        assert_eq!(chosen_source(&both, None).unwrap(), "export");
        assert_eq!(chosen_source(&both, Some("web")).unwrap(), "web");
        let unknown = chosen_source(&both, Some("mparticle-s3")).unwrap_err();
        assert!(
            unknown.to_string().contains("it has: web, export"),
            "{unknown}"
        );
        let two_http = config(&format!("{http}{}", http.replace("web", "app")));
        assert!(
            chosen_source(&two_http, None).is_err(),
            "ambiguous: must be asked"
        );
    }
}
