//! The benchmark's floor: `serde_json::Value` parse + serialise of the payload's bodies on one
//! core. `mpconnect bench` runs this loop in its own process (mimalloc, like `mpconnect all`)
//! and as `mpconnect-floor`, a plain program on the system allocator, which is how the floor
//! was first measured (issue #14). The same code either way, so only the allocator differs.

use std::time::{Duration, Instant};

/// Events per second that `serde_json::Value` parses and serialises again, on the calling
/// thread: the best of five slices, as the least disturbed by anything else on the machine.
pub fn events_per_second(
    bodies: &[Vec<u8>],
    events_per_body: usize,
    for_at_least: Duration,
) -> f64 {
    let slices = 5;
    let mut best = 0f64;
    let mut bytes = 0usize;
    for _ in 0..slices {
        let started = Instant::now();
        let mut events = 0usize;
        while started.elapsed() < for_at_least / slices {
            for body in bodies {
                let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                bytes += serde_json::to_vec(&value).map_or(0, |v| v.len());
                events += events_per_body;
            }
        }
        best = best.max(events as f64 / started.elapsed().as_secs_f64());
    }
    std::hint::black_box(bytes);
    best
}

/// The bodies as `mpconnect-floor` reads them from a file: each a little-endian `u32` length,
/// then its bytes.
pub fn write_bodies(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bodies.iter().map(|b| b.len() + 4).sum());
    for body in bodies {
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// The bodies back from [`write_bodies`]' form; `None` when the file is cut short.
pub fn read_bodies(mut file: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut bodies = Vec::new();
    while !file.is_empty() {
        let (len, rest) = file.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        bodies.push(rest.get(..len)?.to_vec());
        file = &rest[len..];
    }
    Some(bodies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_back_as_written_and_a_cut_file_is_refused() {
        let bodies = vec![
            br#"[{"events":[]}]"#.to_vec(),
            Vec::new(),
            b"[1,2]".to_vec(),
        ];
        let file = write_bodies(&bodies);
        assert_eq!(read_bodies(&file), Some(bodies));
        assert_eq!(read_bodies(&file[..file.len() - 1]), None);
        assert_eq!(read_bodies(&file[..2]), None);
    }

    #[test]
    fn the_floor_counts_the_events_of_each_body_it_reads() {
        let body = br#"[{"events":[{"data":{}},{"data":{}}]}]"#.to_vec();
        let rate = events_per_second(std::slice::from_ref(&body), 2, Duration::from_millis(50));
        assert!(rate > 0.0, "{rate}");
        assert_eq!(
            events_per_second(&[body], 0, Duration::from_millis(50)),
            0.0
        );
    }
}
