//! Proleptic Gregorian calendar arithmetic in UTC (Howard Hinnant's `days_from_civil` /
//! `civil_from_days`), without a date crate: the one copy the agent, the HAL (file names,
//! overlays), the sensors (GPS dates) and the workflow layer (RFC 3339 times) share.

/// Days since 1970-01-01 of year `y`, month `m` (1–12), day `d`.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil UTC date (y, m, d) and time (h, m, s) of a Unix time in seconds.
pub fn civil_utc(secs: i64) -> ((i64, i64, i64), (i64, i64, i64)) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    ((y, m, d), (rem / 3600, rem % 3600 / 60, rem % 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(civil_utc(1_795_706_553), ((2026, 11, 26), (15, 22, 33)));
        assert_eq!(civil_utc(-1), ((1969, 12, 31), (23, 59, 59)));
        for day in (-800_000..800_000).step_by(997) {
            let ((y, m, d), _) = civil_utc(day * 86_400);
            assert_eq!(days_from_civil(y, m, d), day, "{y}-{m}-{d}");
        }
    }
}
