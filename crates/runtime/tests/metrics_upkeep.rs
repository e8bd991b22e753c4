//! Latencies recorded where nobody scrapes `/metrics` are folded into their buckets as they
//! come, so the process does not grow for as long as it runs. A test binary of its own: it
//! reads the process's RSS, which other tests running beside it would move.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;

fn rss_bytes() -> u64 {
    mpconnect_runtime::telemetry::resident_bytes().expect("VmRSS from /proc/self/status")
}

/// The `_count` a scrape shows for `name`.
fn scraped_count(scraped: &str, name: &str) -> u64 {
    let prefix = format!("{name}_count ");
    scraped
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name}_count in {scraped}"))
}

#[test]
fn latencies_nobody_scrapes_are_folded_away_without_growing_the_process() {
    let every = Duration::from_millis(20);
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1])
        .expect("buckets")
        .build_recorder();
    mpconnect_runtime::telemetry::spawn_upkeep(recorder.handle(), every);
    let (busy, quiet) = metrics::with_local_recorder(&recorder, || {
        (
            metrics::histogram!("upkeep_test_seconds"),
            metrics::histogram!("upkeep_quiet_seconds"),
        )
    });

    let before = rss_bytes();
    let started = std::time::Instant::now();
    let (rounds, per_round) = (60, 100_000);
    for _ in 0..rounds {
        for _ in 0..per_round {
            busy.record(0.005);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let upkeeps_while_recording = (started.elapsed().as_millis() / every.as_millis()) as u64 + 1;
    let grown = rss_bytes().saturating_sub(before);
    // Kept until a scrape, 6,000,000 latencies take at least 96 MB (16 bytes each).
    assert!(
        grown < 32 << 20,
        "the process grew by {} MB while latencies went unscraped",
        grown >> 20
    );

    // Folded in, not dropped. With nothing recorded while the upkeep runs, every one counts.
    for _ in 0..per_round {
        quiet.record(0.005);
    }
    std::thread::sleep(every * 5);
    let scraped = recorder.handle().render();
    assert_eq!(
        scraped_count(&scraped, "upkeep_quiet_seconds"),
        per_round as u64
    );
    // While recording goes on, metrics-util's bucket can miss the one latency being pushed at
    // the instant an upkeep (or a scrape) takes the bucket's blocks: at most one an upkeep.
    let total = (rounds * per_round) as u64;
    let counted = scraped_count(&scraped, "upkeep_test_seconds");
    assert!(
        counted <= total && counted + upkeeps_while_recording >= total,
        "{counted} of {total} counted, with {upkeeps_while_recording} upkeeps at most"
    );
}
