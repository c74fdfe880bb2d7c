//! client-go's `EventSourceObjectSpamFilter`: a token bucket per source + object.
//!
//! client-go uses golang.org/x/time/rate with `qps = float32(1/300)`; the bucket starts full,
//! refills continuously and a refused request costs nothing. Here tokens are counted in
//! nanoseconds of refill so the arithmetic is exact: with float32 rounding client-go's token
//! arrives about 7 µs before 300 s, here at exactly 300 s.

use std::time::Duration;

use super::keys::ObjectKey;
use super::lru::Lru;
use crate::clock::Timestamp;

struct Bucket {
    /// Accumulated refill time; one token is worth `SpamFilter::token_ns`.
    credit_ns: u128,
    last: Timestamp,
}

pub(super) struct SpamFilter {
    cache: Lru<ObjectKey, Bucket>,
    token_ns: u128,
    full_ns: u128,
    evictions: u64,
}

impl SpamFilter {
    /// `burst` tokens, one more every `refill`. Both are validated non-zero by the config.
    pub(super) fn new(capacity: usize, burst: u32, refill: Duration) -> Self {
        let token_ns = refill.as_nanos().max(1);
        Self {
            cache: Lru::new(capacity),
            token_ns,
            full_ns: token_ns.saturating_mul(u128::from(burst.max(1))),
            evictions: 0,
        }
    }

    /// Takes a token for `object`; false means drop the event.
    pub(super) fn allow(&mut self, object: &ObjectKey, now: Timestamp) -> bool {
        let (token_ns, full_ns) = (self.token_ns, self.full_ns);
        if let Some(bucket) = self.cache.get_mut(object) {
            return take(bucket, now, token_ns, full_ns);
        }
        let mut bucket = Bucket { credit_ns: full_ns, last: now };
        let allowed = take(&mut bucket, now, token_ns, full_ns);
        if self.cache.insert(object.clone(), bucket) {
            self.evictions = self.evictions.saturating_add(1);
        }
        allowed
    }

    pub(super) fn evictions(&self) -> u64 {
        self.evictions
    }
}

/// x/time/rate `AllowN(now, 1)`: refill since `last` (nothing if the clock went back), cap at
/// burst, take one if there is one. Only a success moves `last`, as in x/time/rate.
fn take(bucket: &mut Bucket, now: Timestamp, token_ns: u128, full_ns: u128) -> bool {
    let credit = bucket.credit_ns.saturating_add(now.nanos_since(bucket.last)).min(full_ns);
    if credit < token_ns {
        return false;
    }
    bucket.credit_ns = credit - token_ns;
    bucket.last = now;
    true
}

#[cfg(test)]
mod tests {
    use super::super::event::ObjectReference;
    use super::*;

    fn pod() -> ObjectKey {
        ObjectKey::of(&ObjectReference::pod("ns", "web-0", "uid-1"))
    }

    #[test]
    fn burst_then_one_per_refill() {
        let mut filter = SpamFilter::new(16, 25, Duration::from_secs(300));
        let t0 = Timestamp::from_unix_secs(1_000);
        let allowed = (0..30).filter(|_| filter.allow(&pod(), t0)).count();
        assert_eq!(allowed, 25);
        assert!(!filter.allow(&pod(), t0.saturating_add(Duration::from_nanos(299_999_999_999))));
        assert!(filter.allow(&pod(), t0.saturating_add(Duration::from_secs(300))));
        assert!(!filter.allow(&pod(), t0.saturating_add(Duration::from_secs(300))));
        // The next token comes 300 s after the last success.
        assert!(filter.allow(&pod(), t0.saturating_add(Duration::from_secs(600))));
    }

    #[test]
    fn refill_caps_at_burst() {
        let mut filter = SpamFilter::new(16, 3, Duration::from_secs(300));
        let t0 = Timestamp::from_unix_secs(0);
        assert!(filter.allow(&pod(), t0));
        let later = t0.saturating_add(Duration::from_secs(86_400));
        let allowed = (0..10).filter(|_| filter.allow(&pod(), later)).count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn backwards_clock_refills_nothing() {
        let mut filter = SpamFilter::new(16, 1, Duration::from_secs(300));
        let t0 = Timestamp::from_unix_secs(10_000);
        assert!(filter.allow(&pod(), t0));
        assert!(!filter.allow(&pod(), Timestamp::from_unix_secs(0)));
        assert!(!filter.allow(&pod(), t0.saturating_add(Duration::from_secs(299))));
        assert!(filter.allow(&pod(), t0.saturating_add(Duration::from_secs(300))));
    }

    #[test]
    fn eviction_forgets_the_bucket() {
        let mut filter = SpamFilter::new(1, 1, Duration::from_secs(300));
        let t0 = Timestamp::from_unix_secs(0);
        let other = ObjectKey::of(&ObjectReference::pod("ns", "web-1", "uid-2"));
        assert!(filter.allow(&pod(), t0));
        assert!(!filter.allow(&pod(), t0));
        assert!(filter.allow(&other, t0));
        assert_eq!(filter.evictions(), 1);
        // A fresh, full bucket again.
        assert!(filter.allow(&pod(), t0));
        assert_eq!(filter.evictions(), 2);
    }
}
