//! Cache keys of client-go's three caches (events_cache.go). client-go joins the fields into one
//! string with no separator, so `"ab"+"c"` and `"a"+"bc"` collide there; structured keys do not.
//! `source` and `reportingController/Instance` are left out: one recorder has a single source
//! and every incoming event carries the same reporting pair, so they never split a key.

use super::event::{Event, EventType, ObjectReference};

/// `getSpamKey`: the involved object without fieldPath (and, unlike the aggregator, no type).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ObjectKey {
    kind: String,
    namespace: String,
    name: String,
    uid: String,
    api_version: String,
}

impl ObjectKey {
    pub(super) fn of(object: &ObjectReference) -> Self {
        Self {
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            uid: object.uid.clone(),
            api_version: object.api_version.clone(),
        }
    }
}

/// `EventAggregatorByReasonFunc`'s aggregate key: object (no fieldPath), type, reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct AggregateKey {
    object: ObjectKey,
    event_type: EventType,
    reason: String,
}

impl AggregateKey {
    pub(super) fn of(event: &Event) -> Self {
        Self {
            object: ObjectKey::of(&event.involved_object),
            event_type: event.event_type,
            reason: event.reason.clone(),
        }
    }
}

/// `getEventKey`: object with fieldPath, type, reason, message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct EventKey {
    object: ObjectKey,
    field_path: String,
    event_type: EventType,
    reason: String,
    message: String,
}

impl EventKey {
    pub(super) fn of(event: &Event) -> Self {
        Self {
            object: ObjectKey::of(&event.involved_object),
            field_path: event.involved_object.field_path.clone(),
            event_type: event.event_type,
            reason: event.reason.clone(),
            message: event.message.clone(),
        }
    }
}

/// The dedup log is keyed by the full event key, or by the aggregate key once an event has been
/// aggregated (so every later combined event updates the same object).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum DedupKey {
    Event(EventKey),
    Aggregate(AggregateKey),
}
