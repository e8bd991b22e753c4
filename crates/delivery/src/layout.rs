//! mParticle's own file layout for NDJSON exports (NOTES §4.1): `<App>_<UTC timestamp>_<5
//! digits>.txt`, the timestamp as `yyyyMMddHHmmss` and six fraction digits, optionally under
//! a `YYYY-MM-DD` folder.

use std::time::{SystemTime, UNIX_EPOCH};

/// Civil date and time (UTC) of `time`: (year, month, day, hour, minute, second, micros).
fn civil(time: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
        since.subsec_micros(),
    )
}

/// `<app>_<yyyyMMddHHmmssffffff>_<5 random digits>.txt`
pub fn file_name(app: &str, time: SystemTime) -> String {
    let (y, mo, d, h, mi, s, us) = civil(time);
    let random: u32 = rand::random_range(0..100_000);
    format!("{app}_{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}{us:06}_{random:05}.txt")
}

/// `YYYY-MM-DD`
pub fn date_folder(time: SystemTime) -> String {
    let (y, mo, d, ..) = civil(time);
    format!("{y:04}-{mo:02}-{d:02}")
}

/// Batches as NDJSON lines in mParticle's outbound dialect, as its S3 output writes them.
pub fn ndjson<'a>(batches: impl IntoIterator<Item = &'a schema::v1::Batch>) -> Vec<u8> {
    let mut out = Vec::new();
    for batch in batches {
        schema::encode_batch_into(batch, schema::Dialect::Outbound, &mut out);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_follow_mparticles_layout() {
        // 2017-10-17T17:09:11.644493Z, mParticle's documented example.
        let time = UNIX_EPOCH + Duration::from_micros(1_508_260_151_644_493);
        let name = file_name("mPTravel", time);
        assert!(name.starts_with("mPTravel_20171017170911644493_"), "{name}");
        assert_eq!(name.len(), "mPTravel_20171017170911644493_34523.txt".len());
        assert!(name[30..35].bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(date_folder(time), "2017-10-17");
        assert_eq!(
            date_folder(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29"
        );
        assert_eq!(date_folder(UNIX_EPOCH), "1970-01-01");
    }
}
