//! Virtual time for the recorder: callers pass the clock in, so tests run on fixed instants.

use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

const NANOS_PER_SEC: i64 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// An instant as nanoseconds since the Unix epoch (UTC), the resolution client-go names events with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The instant `nanos` nanoseconds after the Unix epoch (negative: before it).
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// The instant `secs` whole seconds after the Unix epoch, saturating at the representable range.
    pub const fn from_unix_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(NANOS_PER_SEC))
    }

    /// Converts a wall-clock reading, saturating outside 1677..2262 (the range of i64 nanoseconds).
    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => Self(i64::try_from(after.as_nanos()).unwrap_or(i64::MAX)),
            Err(before) => {
                Self(i64::try_from(before.duration().as_nanos()).map(i64::saturating_neg).unwrap_or(i64::MIN))
            }
        }
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn unix_nanos(self) -> i64 {
        self.0
    }

    /// This instant moved `by` later, saturating at the end of the range.
    pub fn saturating_add(self, by: Duration) -> Self {
        Self(self.0.saturating_add(i64::try_from(by.as_nanos()).unwrap_or(i64::MAX)))
    }

    /// Nanoseconds from `earlier` to `self`; zero when the clock went backwards, as a negative
    /// `time.Duration` never exceeds a positive limit in client-go either.
    pub(super) fn nanos_since(self, earlier: Self) -> u128 {
        u128::try_from(i128::from(self.0) - i128::from(earlier.0)).unwrap_or(0)
    }

    /// RFC 3339 in UTC with whole seconds, as `metav1.Time` serialises (`2026-11-28T10:40:10Z`).
    pub fn rfc3339(self) -> String {
        // Floor division: Go formats instants before the epoch by flooring too.
        let secs = self.0.div_euclid(NANOS_PER_SEC);
        let days = secs.div_euclid(SECS_PER_DAY);
        let in_day = secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = crate::clock::civil_from_days(days);
        format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", in_day / 3600, in_day % 3600 / 60, in_day % 60)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_metav1_time() {
        assert_eq!(Timestamp::from_unix_secs(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp::from_unix_secs(1_795_862_410).rfc3339(), "2026-11-28T10:40:10Z");
        // Sub-second parts are cut, not rounded.
        assert_eq!(Timestamp::from_unix_nanos(1_795_862_410_999_999_999).rfc3339(), "2026-11-28T10:40:10Z");
        assert_eq!(Timestamp::from_unix_secs(1_709_164_800).rfc3339(), "2024-02-29T00:00:00Z");
        assert_eq!(Timestamp::from_unix_secs(951_782_400).rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(Timestamp::from_unix_nanos(-1).rfc3339(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn extremes_do_not_panic() {
        assert_eq!(Timestamp::from_unix_nanos(i64::MIN).rfc3339(), "1677-09-21T00:12:43Z");
        assert_eq!(Timestamp::from_unix_nanos(i64::MAX).rfc3339(), "2262-04-11T23:47:16Z");
        assert_eq!(
            Timestamp::from_unix_nanos(i64::MAX).saturating_add(Duration::MAX),
            Timestamp::from_unix_nanos(i64::MAX)
        );
        assert_eq!(Timestamp::from_unix_secs(i64::MIN).unix_nanos(), i64::MIN);
    }

    #[test]
    fn system_time_conversion() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_862_410, 5);
        assert_eq!(Timestamp::from_system_time(t).unix_nanos(), 1_795_862_410_000_000_005);
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(Timestamp::from_system_time(before).unix_nanos(), -1_000_000_000);
    }

    #[test]
    fn nanos_since_is_zero_backwards() {
        let a = Timestamp::from_unix_secs(10);
        let b = Timestamp::from_unix_secs(20);
        assert_eq!(b.nanos_since(a), 10_000_000_000);
        assert_eq!(a.nanos_since(b), 0);
        assert_eq!(
            Timestamp::from_unix_nanos(i64::MAX).nanos_since(Timestamp::from_unix_nanos(i64::MIN)),
            u128::from(u64::MAX)
        );
    }
}
