//! Instants as the journal stores them: i64 Unix nanoseconds.

use std::time::Duration;

use crate::clock::Timestamp;
pub(super) use crate::clock::parse_rfc3339;

/// `now - age`, saturating at the start of the representable range.
pub(super) fn before(now: Timestamp, age: Duration) -> i64 {
    now.unix_nanos().saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NANOS_PER_SEC: i64 = 1_000_000_000;

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
            let text = Timestamp::from_unix_secs(secs).metav1();
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
