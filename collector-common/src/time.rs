//! Calendar arithmetic and the RFC 3339 form of the collector's record times: what the collector
//! writes, and what its readers (`cargo xtask bench`, the tests) parse back.

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub const fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// Parses the `metav1.Time` form the recorder writes (`2026-11-28T10:40:10Z`, optionally with a
/// fraction) and the collector's records use into Unix nanoseconds. Anything else is `None`.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
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
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

fn digits(text: &str) -> Option<i64> {
    if text.bytes().all(|b| b.is_ascii_digit()) { text.parse().ok() } else { None }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm), the
/// inverse of [`civil_from_days`].
pub const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
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
    fn parses_the_collectors_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.000000000Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-28T10:40:10.123456789Z"), Some(1_795_862_410_123_456_789));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00.5Z"), Some(951_782_400_500_000_000));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400_000_000_000));
        assert_eq!(parse_rfc3339("2000-02-29 00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00.1234567890Z"), None);
    }

    #[test]
    fn days_round_trip() {
        for days in [-719_468, -1, 0, 1, 11_016, 20_420, 106_751] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, i64::from(month), i64::from(day)), days);
        }
    }
}
