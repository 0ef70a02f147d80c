//! Proleptic Gregorian calendar arithmetic in UTC (Howard Hinnant's `days_from_civil` /
//! `civil_from_days`), without a date crate: the one copy the agent, the HAL (file names,
//! overlays), the sensors (GPS dates) and the workflow layer (RFC 3339 times) share.
//!
//! Every function is total: no input overflows or panics. Dates come from untrusted text
//! (workflow documents, command lines, GPS receivers), so [`days_from_civil`] validates its
//! input and returns `None` for a date that does not exist or whose day number does not fit
//! in an `i64`, rather than wrapping or normalising (`2026-02-31` is not `2026-03-03`).
//! [`civil_utc`] accepts every `i64`: its results are always in range (see its docs).

/// Whether `year` is a leap year of the proleptic Gregorian calendar.
pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Number of days of `month` (1–12) in `year`, or `None` for a month outside 1–12.
pub fn days_in_month(year: i64, month: i64) -> Option<i64> {
    Some(match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => return None,
    })
}

/// Days since 1970-01-01 of year `y`, month `m` (1–12), day `d` (1–the month's length).
///
/// `None` when the date does not exist (month outside 1–12, day outside the month, such as
/// February 29 of a common year) or when the result would not fit in an `i64` (years beyond
/// about ±2.5 × 10^16). Never panics and never wraps.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=days_in_month(y, m)?).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era.checked_mul(146_097)?
        .checked_add(doe)?
        .checked_sub(719_468)
}

/// Civil UTC date `(y, m, d)` and time `(h, m, s)` of a Unix time in seconds.
///
/// Defined for every `i64`: the day number is at most about 1.07 × 10^14 in magnitude, so
/// no intermediate value comes near the `i64` limits, and the year is at most about
/// 2.9 × 10^11 in magnitude. Callers that print the year in a fixed-width field (RFC 3339
/// needs 0000–9999) must bound the input themselves.
pub fn civil_utc(secs: i64) -> ((i64, i64, i64), (i64, i64, i64)) {
    // |days| <= 2^63 / 86 400 < 1.07e14, so every step below stays far inside i64.
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
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 2, 29), Some(11_016));
        assert_eq!(days_from_civil(9999, 12, 31), Some(2_932_896));
        assert_eq!(days_from_civil(1969, 12, 31), Some(-1));
        assert_eq!(days_from_civil(0, 3, 1), Some(-719_468));
        assert_eq!(civil_utc(1_795_706_553), ((2026, 11, 26), (15, 22, 33)));
        assert_eq!(civil_utc(-1), ((1969, 12, 31), (23, 59, 59)));
        assert_eq!(civil_utc(253_402_300_799), ((9999, 12, 31), (23, 59, 59)));
        for day in (-800_000..800_000).step_by(997) {
            let ((y, m, d), _) = civil_utc(day * 86_400);
            assert_eq!(days_from_civil(y, m, d), Some(day), "{y}-{m}-{d}");
        }
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        // 1900-03-01 .. 2300-03-01 covers every leap-year rule.
        let first = days_from_civil(1900, 3, 1).expect("valid");
        for day in first..first + 146_097 {
            let ((y, m, d), time) = civil_utc(day * 86_400 + 86_399);
            assert_eq!(time, (23, 59, 59));
            assert_eq!(days_from_civil(y, m, d), Some(day), "{y}-{m}-{d}");
        }
    }

    #[test]
    fn leap_years_and_month_lengths() {
        assert!(is_leap_year(2000) && is_leap_year(2024) && is_leap_year(-4));
        assert!(!is_leap_year(1900) && !is_leap_year(2100) && !is_leap_year(2026));
        assert_eq!(days_in_month(1900, 2), Some(28));
        assert_eq!(days_in_month(2000, 2), Some(29));
        assert_eq!(days_in_month(2026, 4), Some(30));
        assert_eq!(days_in_month(2026, 12), Some(31));
        assert_eq!(days_in_month(2026, 0), None);
        assert_eq!(days_in_month(2026, 13), None);
        assert_eq!(days_from_civil(1900, 2, 29), None);
        assert_eq!(days_from_civil(2000, 2, 29), Some(11_016));
        assert_eq!(days_from_civil(2000, 2, 30), None);
        assert_eq!(days_from_civil(2026, 4, 31), None);
        assert_eq!(days_from_civil(2026, 1, 0), None);
        assert_eq!(days_from_civil(2026, -1, 1), None);
    }

    #[test]
    fn extreme_inputs_neither_overflow_nor_panic() {
        for y in [
            i64::MIN,
            i64::MIN + 1,
            -99_999_999_999,
            99_999_999_999,
            i64::MAX,
        ] {
            for (m, d) in [
                (1, 1),
                (2, 28),
                (3, 1),
                (12, 31),
                (i64::MIN, 1),
                (1, i64::MAX),
            ] {
                let _ = days_from_civil(y, m, d);
            }
        }
        assert_eq!(days_from_civil(i64::MAX, 12, 31), None);
        assert_eq!(days_from_civil(i64::MIN, 1, 1), None);
        // The largest years whose day numbers still fit.
        let big = 25_000_000_000_000_000;
        assert!(days_from_civil(big, 1, 1).is_some());
        assert!(days_from_civil(-big, 1, 1).is_some());
        for secs in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX] {
            let ((y, m, d), (hh, mm, ss)) = civil_utc(secs);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d), "{secs}");
            assert!((0..24).contains(&hh) && (0..60).contains(&mm) && (0..60).contains(&ss));
            assert_eq!(
                days_from_civil(y, m, d),
                Some(secs.div_euclid(86_400)),
                "{secs}"
            );
        }
    }
}
