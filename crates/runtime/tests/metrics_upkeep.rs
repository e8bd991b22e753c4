//! Latencies recorded where nobody scrapes `/metrics` are folded into their buckets as they
//! come, so the process does not grow for as long as it runs. A test binary of its own: it
//! reads the process's RSS, which other tests running beside it would move.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;

fn rss_bytes() -> u64 {
    mpconnect_runtime::telemetry::resident_bytes().expect("VmRSS from /proc/self/status")
}

#[test]
fn latencies_nobody_scrapes_are_folded_away_without_growing_the_process() {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1])
        .expect("buckets")
        .build_recorder();
    mpconnect_runtime::telemetry::spawn_upkeep(recorder.handle(), Duration::from_millis(20));
    let histogram =
        metrics::with_local_recorder(&recorder, || metrics::histogram!("upkeep_test_seconds"));

    let before = rss_bytes();
    let (rounds, per_round) = (60, 100_000);
    for _ in 0..rounds {
        for _ in 0..per_round {
            histogram.record(0.005);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let grown = rss_bytes().saturating_sub(before);
    // Kept until a scrape, 6,000,000 latencies take at least 96 MB (16 bytes each).
    assert!(
        grown < 32 << 20,
        "the process grew by {} MB while latencies went unscraped",
        grown >> 20
    );
    // Folded in, not dropped: a scrape still counts every one.
    let scraped = recorder.handle().render();
    let count = format!("upkeep_test_seconds_count {}", rounds * per_round);
    assert!(scraped.contains(&count), "{scraped}");
}
