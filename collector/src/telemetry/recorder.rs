//! The recorder's families: what client-go's rules did to events on their way to the API server
//! beyond the writes and spam drops (`collector_events_total`, `collector_events_dropped_total`):
//! aggregation, cutting to the API's limits, and evictions from its bounded caches.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FieldLabel {
    field: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabel {
    cache: &'static str,
}

/// The recorder's caches, as labels.
pub const CACHES: [&str; 3] = ["spam_filter", "aggregator", "dedup_log"];

/// The recorder families.
#[derive(Debug, Default)]
pub(super) struct RecorderMetrics {
    aggregations: Counter,
    truncated: Family<FieldLabel, Counter>,
    evictions: Family<CacheLabel, Counter>,
}

impl RecorderMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "recorder_aggregations",
            "Events replaced by a '(combined from similar events)' one: 10 similar in 600 s, as client-go",
            metrics.aggregations.clone(),
        );
        registry.register(
            "recorder_truncated",
            "Events whose field was cut to the API's limit, by field: message (1024 bytes), reason (128)",
            metrics.truncated.clone(),
        );
        registry.register(
            "recorder_cache_evictions",
            "Entries pushed out of the recorder's bounded caches, by cache: spam_filter (the object gets a full \
             bucket again), aggregator, dedup_log (the next repeat is POSTed anew)",
            metrics.evictions.clone(),
        );
        // Zero series for the closed label sets.
        for field in ["message", "reason"] {
            let _ = metrics.truncated.get_or_create(&FieldLabel { field });
        }
        for cache in CACHES {
            let _ = metrics.evictions.get_or_create(&CacheLabel { cache });
        }
        metrics
    }
}

impl super::Metrics {
    /// Counts an event replaced by an aggregate.
    pub fn recorder_aggregation(&self) {
        self.recorder.aggregations.inc();
    }

    /// Counts an event whose `field` (`message` or `reason`) was cut.
    pub fn recorder_truncated(&self, field: &'static str) {
        self.recorder.truncated.get_or_create(&FieldLabel { field }).inc();
    }

    /// Counts `count` entries pushed out of `cache` (one of [`CACHES`]).
    pub fn recorder_evicted(&self, cache: &'static str, count: u64) {
        if count > 0 {
            self.recorder.evictions.get_or_create(&CacheLabel { cache }).inc_by(count);
        }
    }
}
