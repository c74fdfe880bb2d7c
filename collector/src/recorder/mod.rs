//! Decides which Kubernetes Event writes to make, reproducing the kubelet's client-go
//! `tools/record` correlator on virtual time: aggregation, then the dedup log, then the spam
//! filter (the order of `EventCorrelator.EventCorrelate`). Delivery, retries and queueing belong
//! to the sinks; this module is pure and synchronous.

mod aggregate;
mod dedup;
mod event;
mod keys;
mod lru;
mod spam;

#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use serde_json::Value;

use crate::{clock::Timestamp, telemetry::Metrics};

pub use event::{
    COMBINED_PREFIX, DEFAULT_NAMESPACE, Event, EventMeta, EventSource, EventSpec, EventType, MAX_MESSAGE_BYTES,
    MAX_REASON_BYTES, NullTime, ObjectReference, TRUNCATION_MARKER, event_name, truncate_utf8,
};

use aggregate::Aggregator;
use dedup::DedupLog;
use keys::{AggregateKey, DedupKey, EventKey, ObjectKey};
use spam::SpamFilter;

/// client-go `maxLruCacheEntries`, per cache.
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;
/// client-go `defaultSpamBurst`.
pub const DEFAULT_SPAM_BURST: u32 = 25;
/// client-go `defaultSpamQPS` = 1/300: one token per 300 s.
pub const DEFAULT_SPAM_REFILL: Duration = Duration::from_secs(300);
/// client-go `defaultAggregateMaxEvents`.
pub const DEFAULT_AGGREGATE_MAX_EVENTS: usize = 10;
/// client-go `defaultAggregateIntervalInSeconds`.
pub const DEFAULT_AGGREGATE_INTERVAL: Duration = Duration::from_secs(600);

/// Errors of this module: only invalid configuration, recording itself cannot fail.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecorderError {
    /// A cache of zero entries could not remember anything.
    #[error("recorder cache capacity must be at least 1")]
    ZeroCacheCapacity,
    /// A burst of zero would drop every event.
    #[error("spam filter burst must be at least 1")]
    ZeroSpamBurst,
    /// A zero refill interval would mean an unlimited rate.
    #[error("spam filter refill interval must be positive")]
    ZeroSpamRefill,
    /// Aggregating after zero events is meaningless.
    #[error("aggregation threshold must be at least 1")]
    ZeroAggregateMaxEvents,
}

/// Source identity and tunables; [`RecorderConfig::new`] gives client-go's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecorderConfig {
    /// `source.component` and `reportingComponent`.
    pub component: String,
    /// `source.host` and `reportingInstance`: the node name.
    pub host: String,
    /// Entries in each of the three caches.
    pub cache_capacity: usize,
    /// Events an object may burst before the spam filter drops.
    pub spam_burst: u32,
    /// Time to earn one more event once the burst is spent.
    pub spam_refill: Duration,
    /// Distinct messages per (object, type, reason) that trigger aggregation.
    pub aggregate_max_events: usize,
    /// Longest gap between similar events that still counts towards aggregation.
    pub aggregate_interval: Duration,
}

impl RecorderConfig {
    /// client-go's defaults for a recorder reporting as `component` on node `host`.
    pub fn new(component: impl Into<String>, host: impl Into<String>) -> Self {
        Self {
            component: component.into(),
            host: host.into(),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            spam_burst: DEFAULT_SPAM_BURST,
            spam_refill: DEFAULT_SPAM_REFILL,
            aggregate_max_events: DEFAULT_AGGREGATE_MAX_EVENTS,
            aggregate_interval: DEFAULT_AGGREGATE_INTERVAL,
        }
    }

    fn validate(&self) -> Result<(), RecorderError> {
        if self.cache_capacity == 0 {
            return Err(RecorderError::ZeroCacheCapacity);
        }
        if self.spam_burst == 0 {
            return Err(RecorderError::ZeroSpamBurst);
        }
        if self.spam_refill.is_zero() {
            return Err(RecorderError::ZeroSpamRefill);
        }
        if self.aggregate_max_events == 0 {
            return Err(RecorderError::ZeroAggregateMaxEvents);
        }
        Ok(())
    }
}

/// An API write to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// `POST /api/v1/namespaces/{namespace}/events` with the event as body.
    Post(Event),
    /// `PATCH /api/v1/namespaces/{namespace}/events/{name}`, content type
    /// `application/strategic-merge-patch+json`.
    Patch {
        /// Event object name.
        name: String,
        /// Event namespace.
        namespace: String,
        /// `{"count", "lastTimestamp", "message"}` as client-go builds it.
        body: Value,
        /// The event as it stands after the patch, for log sinks and for a re-POST on 404.
        event: Event,
    },
}

impl Write {
    /// The event as it stands after this write.
    pub fn event(&self) -> &Event {
        match self {
            Self::Post(event) | Self::Patch { event, .. } => event,
        }
    }
}

/// Outcome of [`Recorder::record`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a Decision is matched right away and its Write moved on; boxing buys nothing"
)]
pub enum Decision {
    /// Send this.
    Write(Write),
    /// Send nothing: client-go's spam filter (the object's token bucket is empty) holds it back.
    SpamFiltered,
}

/// What [`Recorder::make_event`] cut to the API's limits.
struct Cut {
    reason: bool,
    message: bool,
}

/// The event correlator of one source (component + node).
pub struct Recorder {
    source: EventSource,
    aggregator: Aggregator,
    dedup: DedupLog,
    spam: SpamFilter,
    /// Where aggregations, cuts and cache evictions are counted as they happen.
    metrics: Option<Arc<Metrics>>,
}

impl Recorder {
    /// A recorder with empty caches.
    pub fn new(config: RecorderConfig) -> Result<Self, RecorderError> {
        config.validate()?;
        Ok(Self {
            aggregator: Aggregator::new(config.cache_capacity, config.aggregate_max_events, config.aggregate_interval),
            dedup: DedupLog::new(config.cache_capacity),
            spam: SpamFilter::new(config.cache_capacity, config.spam_burst, config.spam_refill),
            source: EventSource { component: config.component, host: config.host },
            metrics: None,
        })
    }

    /// The same recorder, counting into `metrics` as it decides.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Decides the write for one occurrence at `now`; never fails, never panics.
    pub fn record(&mut self, spec: EventSpec, now: Timestamp) -> Decision {
        let (mut event, cut) = self.make_event(spec, now);
        let metrics = self.metrics.clone();
        let metrics = metrics.as_deref();
        if cut.reason {
            metrics.inspect(|metrics| metrics.recorder_truncated("reason"));
        }
        if cut.message {
            metrics.inspect(|metrics| metrics.recorder_truncated("message"));
        }
        let evicted = [self.spam.evictions(), self.aggregator.evictions(), self.dedup.evictions()];

        let aggregate_key = AggregateKey::of(&event);
        let dedup_key = if self.aggregator.observe(&aggregate_key, &event.message, now) {
            metrics.inspect(|metrics| metrics.recorder_aggregation());
            combine(&mut event, now);
            DedupKey::Aggregate(aggregate_key)
        } else {
            DedupKey::Event(EventKey::of(&event))
        };

        let repeat = self.dedup.observe(&mut event, dedup_key);
        let allowed = self.spam.allow(&ObjectKey::of(&event.involved_object), now);
        if let Some(metrics) = metrics {
            let now_evicted = [self.spam.evictions(), self.aggregator.evictions(), self.dedup.evictions()];
            for ((cache, after), before) in crate::telemetry::RECORDER_CACHES.iter().zip(now_evicted).zip(evicted) {
                metrics.recorder_evicted(cache, after - before);
            }
        }
        if !allowed {
            return Decision::SpamFiltered;
        }
        let write = if repeat {
            Write::Patch {
                name: event.metadata.name.clone(),
                namespace: event.metadata.namespace.clone(),
                body: dedup::patch_body(&event),
                event,
            }
        } else {
            Write::Post(event)
        };
        Decision::Write(write)
    }

    /// The event a first occurrence of `spec` at `now` would be POSTed as, without touching
    /// the caches: what a mutate webhook is shown before the recorder decides.
    pub fn preview(&self, spec: EventSpec, now: Timestamp) -> Event {
        self.make_event(spec, now).0
    }

    /// client-go `makeEvent` + `generateEvent`: the event of one occurrence, with its reason and
    /// message cut to the API's limits (and whether they were).
    fn make_event(&self, spec: EventSpec, now: Timestamp) -> (Event, Cut) {
        let EventSpec { involved_object, event_type, mut reason, mut message, annotations } = spec;
        let cut = Cut {
            reason: truncate_utf8(&mut reason, MAX_REASON_BYTES, ""),
            message: truncate_utf8(&mut message, MAX_MESSAGE_BYTES, TRUNCATION_MARKER),
        };
        let namespace = if involved_object.namespace.is_empty() {
            DEFAULT_NAMESPACE.to_owned()
        } else {
            involved_object.namespace.clone()
        };
        let event = Event {
            kind: "Event",
            api_version: "v1",
            metadata: EventMeta { name: event_name(&involved_object.name, now), namespace, annotations },
            involved_object,
            reason,
            message,
            source: self.source.clone(),
            first_timestamp: now,
            last_timestamp: now,
            count: 1,
            event_type,
            event_time: NullTime,
            reporting_component: self.source.component.clone(),
            reporting_instance: self.source.host.clone(),
        };
        (event, cut)
    }
}

/// client-go `EventAggregate` replaces the event with a fresh one: new name and timestamps at
/// `now`, count 1, the combined message, and no reportingComponent/reportingInstance (the copy
/// does not carry them). Combining can overflow the byte limit again, so cut once more.
fn combine(event: &mut Event, now: Timestamp) {
    event.metadata.name = event_name(&event.involved_object.name, now);
    event.first_timestamp = now;
    event.last_timestamp = now;
    event.count = 1;
    event.message.insert_str(0, COMBINED_PREFIX);
    truncate_utf8(&mut event.message, MAX_MESSAGE_BYTES, TRUNCATION_MARKER);
    event.reporting_component.clear();
    event.reporting_instance.clear();
}
