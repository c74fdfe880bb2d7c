//! client-go's `eventLogger`: remembers name, firstTimestamp and count per event key so a repeat
//! becomes a PATCH of the existing object.

use serde_json::{Map, Value};

use super::event::Event;
use super::keys::DedupKey;
use super::lru::Lru;
use crate::clock::Timestamp;

struct Observation {
    count: i32,
    first_timestamp: Timestamp,
    name: String,
}

pub(super) struct DedupLog {
    cache: Lru<DedupKey, Observation>,
    evictions: u64,
}

impl DedupLog {
    pub(super) fn new(capacity: usize) -> Self {
        Self { cache: Lru::new(capacity), evictions: 0 }
    }

    /// `eventObserve`: on a repeat, rewrites `event` to the remembered name and firstTimestamp
    /// with count + 1 and returns true. Either way the new state is remembered, even if the
    /// spam filter later drops the event (client-go filters after observing).
    pub(super) fn observe(&mut self, event: &mut Event, key: DedupKey) -> bool {
        let repeat = match self.cache.get_mut(&key) {
            Some(seen) => {
                seen.count = seen.count.saturating_add(1);
                event.metadata.name.clone_from(&seen.name);
                event.first_timestamp = seen.first_timestamp;
                event.count = seen.count;
                true
            }
            None => false,
        };
        if !repeat {
            let seen = Observation {
                count: event.count,
                first_timestamp: event.first_timestamp,
                name: event.metadata.name.clone(),
            };
            if self.cache.insert(key, seen) {
                self.evictions = self.evictions.saturating_add(1);
            }
        }
        repeat
    }

    pub(super) fn evictions(&self) -> u64 {
        self.evictions
    }
}

/// The strategic merge patch client-go sends for a repeat: `CreateTwoWayMergePatch` between the
/// event and a copy with count 0, lastTimestamp at the epoch and no message. Fields equal in
/// both drop out, so an empty message or a lastTimestamp in the epoch's first second is omitted.
/// Keys sort as Go's map marshalling sorts them.
pub(super) fn patch_body(event: &Event) -> Value {
    let mut patch = Map::new();
    patch.insert("count".to_owned(), Value::from(event.count));
    let last = event.last_timestamp.metav1();
    if last != Timestamp::from_unix_secs(0).metav1() {
        patch.insert("lastTimestamp".to_owned(), Value::from(last));
    }
    if !event.message.is_empty() {
        patch.insert("message".to_owned(), Value::from(event.message.as_str()));
    }
    Value::Object(patch)
}
