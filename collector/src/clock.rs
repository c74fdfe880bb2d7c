//! Kernel boot time to wall-clock time, and RFC 3339 timestamps.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use collector_common::time::civil_from_days;
pub use collector_common::time::parse_rfc3339;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de, ser};

/// Nanoseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self(clock_ns(libc::CLOCK_REALTIME))
    }

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
    #[must_use]
    pub fn saturating_add(self, by: Duration) -> Self {
        Self(self.0.saturating_add(i64::try_from(by.as_nanos()).unwrap_or(i64::MAX)))
    }

    /// Nanoseconds from `earlier` to `self`; zero when the clock went backwards, as a negative
    /// `time.Duration` never exceeds a positive limit in client-go either.
    pub(crate) fn nanos_since(self, earlier: Self) -> u128 {
        u128::try_from(i128::from(self.0) - i128::from(earlier.0)).unwrap_or(0)
    }

    /// RFC 3339 in UTC with whole seconds, as `metav1.Time` serialises (`2026-11-28T10:40:10Z`);
    /// `Display` keeps the nanoseconds, as the collector's own records do.
    pub fn metav1(self) -> String {
        // Floor division: Go formats instants before the epoch by flooring too.
        let secs = self.0.div_euclid(NANOS_PER_SEC);
        let (days, in_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", in_day / 3600, in_day % 3600 / 60, in_day % 60)
    }
}

/// Serialises a [`Timestamp`] as `metav1.Time` does (whole seconds), for Kubernetes objects.
pub fn serialize_metav1<S: Serializer>(time: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.metav1())
}

impl Timestamp {
    /// RFC 3339 in UTC with nanoseconds, as ASCII: every record carries one, so it is
    /// written digit by digit rather than through `core::fmt`. An i64 of nanoseconds spans
    /// the years 1677 to 2262, so four digits always hold the year.
    pub(crate) fn rfc3339_ascii(self) -> [u8; 30] {
        let secs = self.0.div_euclid(1_000_000_000);
        let nanos = self.0.rem_euclid(1_000_000_000);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000000000Z";
        let fields = [
            (0, 4, year),
            (5, 2, i64::from(month)),
            (8, 2, i64::from(day)),
            (11, 2, rem / 3600),
            (14, 2, rem % 3600 / 60),
            (17, 2, rem % 60),
            (20, 9, nanos),
        ];
        for (at, width, value) in fields {
            let mut value = value.unsigned_abs();
            for digit in out[at..at + width].iter_mut().rev() {
                // A digit: the remainder of a division by 10.
                *digit = b'0' + u8::try_from(value % 10).unwrap_or(0);
                value /= 10;
            }
        }
        out
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with nanoseconds: `2026-11-28T10:40:10.123456789Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ascii = self.rfc3339_ascii();
        f.write_str(std::str::from_utf8(&ascii).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ascii = self.rfc3339_ascii();
        // One str rather than `collect_str`, whose pieces the JSON writer would escape one by one.
        serializer.serialize_str(std::str::from_utf8(&ascii).map_err(ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        parse_rfc3339(&text)
            .map(Self)
            .ok_or_else(|| de::Error::custom(format!("{text:?} is not an RFC 3339 time in UTC")))
    }
}

/// Converts `CLOCK_BOOTTIME` readings (what `bpf_ktime_get_boot_ns` returns) to wall time.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// Wall time minus boot time, in nanoseconds.
    offset_ns: i64,
}

/// A change of offset smaller than this is measurement noise, not a clock step.
const STEP_NS: i64 = 1_000_000;

impl BootClock {
    /// Measures the offset now, to within a microsecond or so: the wall clock is read
    /// between two boot-clock readings, and of a few tries the tightest pair wins (a
    /// preemption between two plain reads would skew it by its length).
    pub fn now() -> Self {
        let mut best: Option<(i64, i64)> = None;
        for _ in 0..5 {
            let before = clock_ns(libc::CLOCK_BOOTTIME);
            let wall = clock_ns(libc::CLOCK_REALTIME);
            let after = clock_ns(libc::CLOCK_BOOTTIME);
            let width = after - before;
            let offset = wall - (before + width / 2);
            if best.is_none_or(|(best_width, _)| width < best_width) {
                best = Some((width, offset));
            }
        }
        Self { offset_ns: best.map_or(0, |(_, offset)| offset) }
    }

    /// Follows a clock step (NTP, suspend) but not measurement noise, so that records
    /// converted before and after a refresh stay in the order they happened.
    #[must_use]
    pub fn refreshed(self) -> Self {
        self.follow(Self::now())
    }

    fn follow(self, measured: Self) -> Self {
        if (measured.offset_ns - self.offset_ns).abs() >= STEP_NS { measured } else { self }
    }

    /// A clock with a given offset, for tests.
    #[cfg(test)]
    pub const fn with_offset(offset_ns: i64) -> Self {
        Self { offset_ns }
    }

    /// Wall time of a boot-time reading.
    pub const fn wall(&self, boot_ns: u64) -> Timestamp {
        Timestamp(self.offset_ns.saturating_add(boot_ns as i64))
    }
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec)
}

const NANOS_PER_SEC: i64 = 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::BootClock;

    #[test]
    fn a_refresh_follows_a_clock_step_but_not_noise() {
        let clock = BootClock::with_offset(1_000_000_000);
        assert_eq!(clock.follow(BootClock::with_offset(1_000_065_000)).offset_ns, 1_000_000_000);
        assert_eq!(clock.follow(BootClock::with_offset(999_500_000)).offset_ns, 1_000_000_000);
        assert_eq!(clock.follow(BootClock::with_offset(1_001_000_000)).offset_ns, 1_001_000_000);
        assert_eq!(clock.follow(BootClock::with_offset(-5)).offset_ns, -5);
    }

    #[test]
    fn the_measured_offset_is_stable_to_well_under_a_millisecond() {
        let (a, b) = (BootClock::now(), BootClock::now());
        assert!((a.offset_ns - b.offset_ns).abs() < 1_000_000, "{a:?} {b:?}");
    }

    use super::*;

    #[test]
    fn formats_rfc3339_with_nanoseconds() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(Timestamp(1_795_862_410_123_456_789).to_string(), "2026-11-28T10:40:10.123456789Z");
        assert_eq!(Timestamp(951_782_400_000_000_000).to_string(), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn formats_every_time_as_core_fmt_would() {
        let reference = |t: Timestamp| {
            let secs = t.0.div_euclid(1_000_000_000);
            let nanos = t.0.rem_euclid(1_000_000_000);
            let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
            let (year, month, day) = civil_from_days(days);
            let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
            format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{nanos:09}Z")
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for t in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX]
            .into_iter()
            .chain((0..10_000).map(|_| rng.i64(..)))
        {
            let t = Timestamp(t);
            assert_eq!(t.to_string(), reference(t), "{}", t.0);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{}\"", reference(t)), "{}", t.0);
        }
    }

    #[test]
    fn boot_time_maps_to_wall_time() {
        let clock = BootClock::with_offset(1_000);
        assert_eq!(clock.wall(500), Timestamp(1_500));
        let live = BootClock::now();
        let wall = live.wall(u64::try_from(clock_ns(libc::CLOCK_BOOTTIME)).unwrap());
        assert!((wall.0 - Timestamp::now().0).abs() < 1_000_000_000, "{wall} is not now");
    }

    #[test]
    fn rfc3339_matches_metav1_time() {
        assert_eq!(Timestamp::from_unix_secs(0).metav1(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp::from_unix_secs(1_795_862_410).metav1(), "2026-11-28T10:40:10Z");
        // Sub-second parts are cut, not rounded.
        assert_eq!(Timestamp::from_unix_nanos(1_795_862_410_999_999_999).metav1(), "2026-11-28T10:40:10Z");
        assert_eq!(Timestamp::from_unix_secs(1_709_164_800).metav1(), "2024-02-29T00:00:00Z");
        assert_eq!(Timestamp::from_unix_secs(951_782_400).metav1(), "2000-02-29T00:00:00Z");
        assert_eq!(Timestamp::from_unix_nanos(-1).metav1(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn extremes_do_not_panic() {
        assert_eq!(Timestamp::from_unix_nanos(i64::MIN).metav1(), "1677-09-21T00:12:43Z");
        assert_eq!(Timestamp::from_unix_nanos(i64::MAX).metav1(), "2262-04-11T23:47:16Z");
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
