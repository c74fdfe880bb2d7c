//! The core/v1 Event as the API server takes it, and what callers hand the recorder.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use crate::clock::Timestamp;

/// Longest message written, in bytes (the events.k8s.io `note` limit; core/v1 itself has none).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest reason written, in bytes (events.k8s.io counts `len()` of a Go string: bytes).
pub const MAX_REASON_BYTES: usize = 128;
/// Appended to a message cut to [`MAX_MESSAGE_BYTES`], inside the limit.
pub const TRUNCATION_MARKER: &str = "...";
/// Prefix client-go's `EventAggregatorByReasonMessageFunc` puts on an aggregated message.
pub const COMBINED_PREFIX: &str = "(combined from similar events): ";
/// Namespace of events about cluster-scoped objects (client-go `makeEvent`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// `type` of an event; client-go refuses anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub enum EventType {
    /// Routine information.
    Normal,
    /// Something the user may need to act on.
    Warning,
}

impl EventType {
    /// The API spelling, also usable as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// core/v1 `ObjectReference`: the object an event is about. Empty strings mean absent and are
/// omitted from JSON, as Go's `omitempty` does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// Kind, e.g. `Pod` or `Node`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Namespace; empty for cluster-scoped objects.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Object name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Object UID.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// API version of the object, e.g. `v1`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// Part of the object, e.g. `spec.containers{app}`; empty for the whole object.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field_path: String,
}

impl ObjectReference {
    /// A reference to a Pod (`v1`, namespaced).
    pub fn pod(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            kind: "Pod".to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            api_version: "v1".to_owned(),
            field_path: String::new(),
        }
    }

    /// A reference to a Node the way the kubelet builds it: UID set to the node name, no apiVersion.
    pub fn node(name: &str) -> Self {
        Self {
            kind: "Node".to_owned(),
            namespace: String::new(),
            name: name.to_owned(),
            uid: name.to_owned(),
            api_version: String::new(),
            field_path: String::new(),
        }
    }

    /// The same reference narrowed to a field, e.g. `spec.containers{app}`.
    pub fn with_field_path(mut self, field_path: &str) -> Self {
        field_path.clone_into(&mut self.field_path);
        self
    }
}

/// core/v1 `EventSource`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventSource {
    /// Reporting component, e.g. `kubelet`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub component: String,
    /// Node name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
}

/// The subset of `ObjectMeta` an event is created with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventMeta {
    /// `<involvedObject.name>.<hex unix nanoseconds>`.
    pub name: String,
    /// Namespace the event lives in.
    pub namespace: String,
    /// What mutate webhooks added; none by default.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `eventTime`: always `null` in events written by the legacy (core/v1) recorder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NullTime;

impl Serialize for NullTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_none()
    }
}

/// A core/v1 Event; serialises to the JSON body the API server takes on POST.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Always `Event`.
    pub kind: &'static str,
    /// Always `v1`.
    pub api_version: &'static str,
    /// Name and namespace.
    pub metadata: EventMeta,
    /// The object the event is about.
    pub involved_object: ObjectReference,
    /// Short UpperCamelCase cause.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Human-readable description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Component and host that reported it.
    pub source: EventSource,
    /// First occurrence of this (deduplicated) event.
    #[serde(serialize_with = "crate::clock::serialize_metav1")]
    pub first_timestamp: Timestamp,
    /// Latest occurrence.
    #[serde(serialize_with = "crate::clock::serialize_metav1")]
    pub last_timestamp: Timestamp,
    /// Occurrences so far, starting at 1.
    pub count: i32,
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Always null here.
    pub event_time: NullTime,
    /// client-go sets source.component here, except on aggregated events where it stays empty.
    pub reporting_component: String,
    /// client-go sets source.host here, except on aggregated events where it stays empty.
    pub reporting_instance: String,
}

/// What a caller wants recorded; the recorder adds source, names and timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    /// The object the event is about.
    pub involved_object: ObjectReference,
    /// Normal or Warning.
    pub event_type: EventType,
    /// Short UpperCamelCase cause; cut to [`MAX_REASON_BYTES`].
    pub reason: String,
    /// Human-readable description, already escaped by its builder; cut to [`MAX_MESSAGE_BYTES`].
    pub message: String,
    /// Annotations of the Event object, from mutate webhooks; none by default.
    pub annotations: BTreeMap<String, String>,
}

impl EventSpec {
    /// A spec from its four parts.
    pub fn new(
        involved_object: ObjectReference,
        event_type: EventType,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            involved_object,
            event_type,
            reason: reason.into(),
            message: message.into(),
            annotations: BTreeMap::new(),
        }
    }
}

/// client-go's `fmt.Sprintf("%v.%x", name, t.UnixNano())`; Go prints a negative value as `-` and
/// the magnitude in hex, not as two's complement.
pub fn event_name(object_name: &str, at: Timestamp) -> String {
    let nanos = at.unix_nanos();
    let sign = if nanos < 0 { "-" } else { "" };
    format!("{object_name}.{sign}{:x}", nanos.unsigned_abs())
}

/// Cuts `text` to at most `max` bytes on a char boundary, ending it with `marker` when the marker
/// fits. Returns whether anything was cut.
pub fn truncate_utf8(text: &mut String, max: usize, marker: &str) -> bool {
    if text.len() <= max {
        return false;
    }
    let marker = if marker.len() <= max { marker } else { "" };
    let mut cut = max - marker.len();
    // Index 0 is always a boundary, so this stops.
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(marker);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_name_dot_lowercase_hex_nanos() {
        let at = Timestamp::from_unix_secs(1_795_862_410);
        assert_eq!(event_name("web-0", at), "web-0.18ec2f58d586e400");
        assert_eq!(event_name("web-0", Timestamp::from_unix_nanos(0xabc)), "web-0.abc");
        assert_eq!(event_name("n", Timestamp::from_unix_nanos(-255)), "n.-ff");
        assert_eq!(event_name("n", Timestamp::from_unix_nanos(i64::MIN)), "n.-8000000000000000");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut short = "abc".to_owned();
        assert!(!truncate_utf8(&mut short, 3, "..."));
        assert_eq!(short, "abc");

        let mut ascii = "abcdef".to_owned();
        assert!(truncate_utf8(&mut ascii, 5, "..."));
        assert_eq!(ascii, "ab...");

        // 'é' is two bytes: 7 - 3 = 4 bytes of text fit, exactly two é.
        let mut accented = "ééééé".to_owned();
        assert!(truncate_utf8(&mut accented, 7, "..."));
        assert_eq!(accented, "éé...");
        // 6 - 3 = 3 bytes would split the second é; keep one.
        let mut accented = "ééééé".to_owned();
        assert!(truncate_utf8(&mut accented, 6, "..."));
        assert_eq!(accented, "é...");

        let mut emoji = "😀😀".to_owned();
        assert!(truncate_utf8(&mut emoji, 5, ""));
        assert_eq!(emoji, "😀");

        // A marker longer than the limit is left out rather than overflowing it.
        let mut tiny = "abcdef".to_owned();
        assert!(truncate_utf8(&mut tiny, 2, "..."));
        assert_eq!(tiny, "ab");
        let mut zero = "é".to_owned();
        assert!(truncate_utf8(&mut zero, 0, "..."));
        assert_eq!(zero, "");
    }

    #[test]
    fn node_reference_matches_kubelet() {
        let node = ObjectReference::node("node-1");
        assert_eq!(
            serde_json::to_value(&node).unwrap(),
            serde_json::json!({"kind": "Node", "name": "node-1", "uid": "node-1"})
        );
    }
}
