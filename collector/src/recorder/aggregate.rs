//! client-go's `EventAggregator`: counts distinct messages per aggregate key and says when to
//! replace an event with a combined one.
//!
//! Semantics kept from events_cache.go: the record is reset when more than `interval` passed
//! since the previous similar event (a sliding window, not a fixed one: a gap of exactly
//! `interval` keeps it); the event that brings the distinct-message set to `max_events` is the
//! first combined one (the 10th, not the 11th); then one message is dropped from the set, so
//! every further *new* message is combined again while a repeat of a remembered one is not.
//!
//! Deliberate differences: client-go drops an arbitrary message (`sets.String.PopAny`, Go map
//! order); here it is the one first seen longest ago, so outcomes are deterministic. Messages are
//! remembered as 64-bit hashes, not strings (up to 9 KiB per key otherwise); a collision between
//! two distinct messages is a ~2^-64 event and would only delay aggregation by one.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use super::keys::AggregateKey;
use super::lru::Lru;
use crate::clock::Timestamp;

#[derive(Default)]
struct Record {
    messages: HashSet<u64>,
    /// `messages` in first-seen order, for the deterministic stand-in of `PopAny`.
    order: VecDeque<u64>,
    last: Timestamp,
}

impl Record {
    /// Adds `message`; true when the event must be combined.
    fn observe(&mut self, message: u64, now: Timestamp, max_events: usize) -> bool {
        if self.messages.insert(message) {
            self.order.push_back(message);
        }
        self.last = now;
        if self.messages.len() < max_events {
            return false;
        }
        if let Some(oldest) = self.order.pop_front() {
            self.messages.remove(&oldest);
        }
        true
    }
}

pub(super) struct Aggregator {
    cache: Lru<AggregateKey, Record>,
    max_events: usize,
    interval_ns: u128,
    evictions: u64,
}

impl Aggregator {
    pub(super) fn new(capacity: usize, max_events: usize, interval: Duration) -> Self {
        Self { cache: Lru::new(capacity), max_events, interval_ns: interval.as_nanos(), evictions: 0 }
    }

    /// Records an event under `key` with `message`; true when it must be sent combined.
    pub(super) fn observe(&mut self, key: &AggregateKey, message: &str, now: Timestamp) -> bool {
        let message = hash_message(message);
        let (max_events, interval_ns) = (self.max_events, self.interval_ns);
        if let Some(record) = self.cache.get_mut(key) {
            if now.nanos_since(record.last) > interval_ns {
                *record = Record::default();
            }
            return record.observe(message, now, max_events);
        }
        let mut record = Record::default();
        let combine = record.observe(message, now, max_events);
        if self.cache.insert(key.clone(), record) {
            self.evictions = self.evictions.saturating_add(1);
        }
        combine
    }

    pub(super) fn evictions(&self) -> u64 {
        self.evictions
    }
}

fn hash_message(message: &str) -> u64 {
    // Fixed keys: the same message hashes alike for the life of the process.
    let mut hasher = DefaultHasher::new();
    message.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::super::event::{Event, EventMeta, EventSource, EventType, NullTime, ObjectReference};
    use super::*;

    fn key(reason: &str) -> AggregateKey {
        let now = Timestamp::from_unix_secs(0);
        AggregateKey::of(&Event {
            kind: "Event",
            api_version: "v1",
            metadata: EventMeta::default(),
            involved_object: ObjectReference::pod("ns", "web-0", "uid-1"),
            reason: reason.to_owned(),
            message: String::new(),
            source: EventSource::default(),
            first_timestamp: now,
            last_timestamp: now,
            count: 1,
            event_type: EventType::Warning,
            event_time: NullTime,
            reporting_component: String::new(),
            reporting_instance: String::new(),
        })
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_secs(secs)
    }

    #[test]
    fn tenth_distinct_message_is_combined() {
        let mut agg = Aggregator::new(16, 10, Duration::from_secs(600));
        let combined: Vec<bool> = (1..=12).map(|i| agg.observe(&key("R"), &format!("m{i}"), at(i))).collect();
        assert_eq!(combined, [false, false, false, false, false, false, false, false, false, true, true, true]);
    }

    #[test]
    fn repeats_do_not_count() {
        let mut agg = Aggregator::new(16, 10, Duration::from_secs(600));
        for _ in 0..50 {
            assert!(!agg.observe(&key("R"), "same", at(1)));
        }
    }

    #[test]
    fn after_combining_a_remembered_message_is_not_combined() {
        let mut agg = Aggregator::new(16, 10, Duration::from_secs(600));
        for i in 1..=10 {
            agg.observe(&key("R"), &format!("m{i}"), at(i));
        }
        // m1 was dropped from the set on the 10th; m2..m10 remain.
        assert!(!agg.observe(&key("R"), "m5", at(11)));
        assert!(agg.observe(&key("R"), "m1", at(12)));
    }

    #[test]
    fn gap_over_interval_resets_exactly_at_interval_does_not() {
        let mut agg = Aggregator::new(16, 10, Duration::from_secs(600));
        for i in 0..9 {
            agg.observe(&key("R"), &format!("m{i}"), at(i * 600));
        }
        // Each gap exactly 600 s: still one window.
        assert!(agg.observe(&key("R"), "m9", at(9 * 600)));

        let mut agg = Aggregator::new(16, 10, Duration::from_secs(600));
        for i in 0..9 {
            agg.observe(&key("R"), &format!("m{i}"), at(i));
        }
        let late = at(8).saturating_add(Duration::from_nanos(600_000_000_001));
        assert!(!agg.observe(&key("R"), "m9", late));
    }

    #[test]
    fn reasons_aggregate_separately() {
        let mut agg = Aggregator::new(16, 2, Duration::from_secs(600));
        assert!(!agg.observe(&key("A"), "x", at(0)));
        assert!(!agg.observe(&key("B"), "y", at(0)));
        assert!(agg.observe(&key("A"), "z", at(0)));
    }

    #[test]
    fn eviction_forgets_the_window() {
        let mut agg = Aggregator::new(1, 2, Duration::from_secs(600));
        assert!(!agg.observe(&key("A"), "x", at(0)));
        assert!(!agg.observe(&key("B"), "x", at(0)));
        assert_eq!(agg.evictions(), 1);
        assert!(!agg.observe(&key("A"), "y", at(0)));
    }
}
