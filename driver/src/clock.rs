//! Wall-clock times for people: Unix seconds now, and UTC calendar dates
//! (for `meta history`, scheduled snapshot names and schedule displays)
//! without a date crate.

/// Unix seconds now (0 if the clock is before 1970).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `(year, month, day, hour, minute, second)` in UTC of Unix seconds `t`
/// (Howard Hinnant's civil_from_days).
pub fn utc_parts(t: u64) -> (i64, i64, i64, u64, u64, u64) {
    let (days, secs) = (t / 86_400, t % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

/// `YYYY-mm-dd HH:MM:SS` (UTC).
pub fn utc(t: u64) -> String {
    let (y, m, d, hh, mm, ss) = utc_parts(t);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}")
}

/// `YYYYmmdd-HHMMSS` (UTC): sorts by time, fits a volume name.
pub fn stamp(t: u64) -> String {
    let (y, m, d, hh, mm, ss) = utc_parts(t);
    format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_calendar_times() {
        assert_eq!(stamp(0), "19700101-000000");
        assert_eq!(stamp(951_782_400), "20000229-000000");
        assert_eq!(stamp(1_796_043_600 + 3661), "20261130-140101");
        assert_eq!(utc(1_796_043_600 + 3661), "2026-11-30 14:01:01");
        assert!(stamp(1_000) < stamp(1_000_000), "stamps sort by time");
    }
}
