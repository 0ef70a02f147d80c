//! How the store's rows are shown and selected outside the agent: times as RFC 3339 UTC,
//! `since` as a time or an age, CSV fields. `aegis db export` and the web page's events use
//! the same functions, so both print and filter alike.

/// A `since`/`until` value that is neither a time nor an age.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--since {0:?}: expected RFC 3339 UTC like 2026-11-26T10:00:00Z, an age like 30m, 2h, 7d, or all"
)]
pub struct SinceError(pub String);

/// Parses `--since`: RFC 3339 UTC, `<n>s|m|h|d` ago, or `all`; µs since the epoch.
pub fn parse_since(text: &str, now_us: i64) -> Result<i64, SinceError> {
    let t = text.trim();
    if t == "all" {
        return Ok(i64::MIN);
    }
    if let Some(unit) = t.chars().last().filter(|c| "smhd".contains(*c))
        && let Ok(n) = t[..t.len() - 1].parse::<u64>()
    {
        let secs = n * match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 86_400,
        };
        return Ok(now_us - secs as i64 * 1_000_000);
    }
    parse_rfc3339_utc(t).ok_or_else(|| SinceError(text.to_string()))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` → µs since the epoch.
fn parse_rfc3339_utc(t: &str) -> Option<i64> {
    let t = t.strip_suffix('Z').or_else(|| t.strip_suffix("+00:00"))?;
    let (date, time) = t.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    let valid = (1..=12).contains(&mo)
        && (1..=31).contains(&da)
        && (0..24).contains(&hh)
        && (0..60).contains(&mm)
        && (0..=60).contains(&ss);
    if !valid || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros = format!("{frac:0<6}")[..6].parse::<i64>().ok()?;
    aegis_config::civil::days_from_civil(y, mo, da)?
        .checked_mul(86_400)?
        .checked_add(hh * 3600 + mm * 60 + ss)?
        .checked_mul(1_000_000)?
        .checked_add(micros)
}

/// µs since the epoch → `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_utc(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let ((y, mo, d), (h, mi, s)) = aegis_hal::record::civil_utc(secs);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
        us.rem_euclid(1_000_000)
    )
}

/// `s` as one CSV field (RFC 4180: quoted when it holds `,` `"` or a line break). Text that
/// a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage
/// return — a camera name or a sensor value is hostile input) gets a leading `'`, as OWASP
/// advises; numbers (`-3.5`) are left as they are.
pub fn csv_field(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err();
    let s = if formula {
        std::borrow::Cow::Owned(format!("'{s}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(csv_field("+1+cmd"), "'+1+cmd");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("\tx"), "'\tx");
        // Numbers stay numbers.
        assert_eq!(csv_field("-3.5"), "-3.5");
        assert_eq!(csv_field("+48.1"), "+48.1");
    }
}
