//! Exponential backoff with full jitter, and `Retry-After`.

use std::time::Duration;

/// Exponential backoff with full jitter: the wait before retry `n` (1-based) is
/// uniform in `[0, min(cap, base * 2^(n-1))]`.
///
/// Full jitter (rather than client-go's fixed 10 s) spreads the retries of many
/// nodes after an API server outage, so they do not return in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub base: Duration,
    /// No wait is longer than this, `Retry-After` included.
    pub cap: Duration,
}

impl Default for Backoff {
    /// 250 ms, doubling, capped at 30 s.
    fn default() -> Self {
        Self { base: Duration::from_millis(250), cap: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The ceiling of the wait before retry `retry` (1 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random wait before retry `retry`, in `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=ceiling))
    }

    /// The wait a server asked for, bounded by the cap so a bogus header cannot stall a write.
    pub fn honour(&self, retry_after: Duration) -> Duration {
        retry_after.min(self.cap)
    }
}

/// `Retry-After` in its delta-seconds form; the HTTP-date form is not used by
/// the API server and falls back to the backoff.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_from_250ms_to_a_30s_cap() {
        let b = Backoff::default();
        let ms: Vec<u128> = (1..=10).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(b.ceiling(0), Duration::from_millis(250));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delays_stay_within_the_ceiling() {
        let b = Backoff::default();
        for n in 1..40 {
            for _ in 0..50 {
                assert!(b.delay(n) <= b.ceiling(n));
            }
        }
    }

    #[test]
    fn retry_after_seconds_are_capped() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        let b = Backoff::default();
        assert_eq!(b.honour(Duration::from_secs(3600)), Duration::from_secs(30));
        assert_eq!(b.honour(Duration::from_secs(1)), Duration::from_secs(1));
    }
}
