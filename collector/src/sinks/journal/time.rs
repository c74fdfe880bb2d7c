//! Instants as the journal stores them: i64 Unix nanoseconds.

use std::time::Duration;

use crate::recorder::Timestamp;

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// `now - age`, saturating at the start of the representable range.
pub(super) fn before(now: Timestamp, age: Duration) -> i64 {
    now.unix_nanos().saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX))
}

/// Parses the `metav1.Time` form the recorder writes (`2026-11-28T10:40:10Z`, optionally with a
/// fraction) into Unix nanoseconds. Anything else is `None`.
pub(super) fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') {
        return None;
    }
    if !matches!(bytes.get(10), Some(b'T' | b't')) || bytes.get(13) != Some(&b':') || bytes.get(16) != Some(&b':') {
        return None;
    }
    let year = digits(text.get(0..4)?)?;
    let month = digits(text.get(5..7)?)?;
    let day = digits(text.get(8..10)?)?;
    let hour = digits(text.get(11..13)?)?;
    let minute = digits(text.get(14..16)?)?;
    let second = digits(text.get(17..19)?)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // 60 is a leap second; Go folds it into the next minute, and so does this.
    if second > 60 {
        return None;
    }
    let rest = text.get(19..)?;
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(after_dot) => {
            let end = after_dot.find(|c: char| !c.is_ascii_digit()).unwrap_or(after_dot.len());
            after_dot.split_at(end)
        }
        None => ("", rest),
    };
    if !(zone == "Z" || zone == "z") || fraction.len() > 9 {
        return None;
    }
    let mut nanos = 0_i64;
    for (i, digit) in fraction.bytes().enumerate() {
        let place = 10_i64.pow(8 - u32::try_from(i).ok()?);
        nanos += i64::from(digit - b'0') * place;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(nanos)
}

fn digits(text: &str) -> Option<i64> {
    if text.bytes().all(|b| b.is_ascii_digit()) { text.parse().ok() } else { None }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm), the
/// inverse of `clock::civil_from_days`.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metav1_time() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-28T10:40:10Z"), Some(1_795_862_410 * NANOS_PER_SEC));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800 * NANOS_PER_SEC));
        assert_eq!(parse_rfc3339("2026-11-28T10:40:10.5Z"), Some(1_795_862_410 * NANOS_PER_SEC + 500_000_000));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-NANOS_PER_SEC));
    }

    #[test]
    fn round_trips_the_recorders_format() {
        for secs in [0_i64, 1, 951_782_400, 1_795_862_410, -86_401, 4_102_444_800] {
            let text = Timestamp::from_unix_secs(secs).rfc3339();
            assert_eq!(parse_rfc3339(&text), Some(secs * NANOS_PER_SEC), "{text}");
        }
    }

    #[test]
    fn rejects_other_forms() {
        for bad in [
            "",
            "2026-11-28",
            "2026-11-28T10:40:10",
            "2026-11-28T10:40:10+01:00",
            "2026-13-28T10:40:10Z",
            "2026-11-28T24:00:00Z",
            "2026-11-28 10:40:10Z",
            "+026-11-28T10:40:10Z",
            "2026-11-28T10:40:10.1234567891Z",
            "2026-11-28T10:40:10.Zx",
            "２０２６-11-28T10:40:10Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn before_saturates() {
        let now = Timestamp::from_unix_secs(100);
        assert_eq!(before(now, Duration::from_secs(40)), 60 * NANOS_PER_SEC);
        assert_eq!(before(Timestamp::from_unix_nanos(i64::MIN), Duration::from_secs(1)), i64::MIN);
        assert_eq!(before(now, Duration::MAX), 100 * NANOS_PER_SEC - i64::MAX);
    }
}
