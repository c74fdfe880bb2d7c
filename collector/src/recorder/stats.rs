//! Counters the daemon exports about recording decisions.

use std::collections::BTreeMap;

use super::event::EventType;

/// Distinct reasons counted by name before the rest share [`OTHER_REASON`]; reasons come from
/// the daemon's own code, the cap only keeps a bug from growing the map without bound.
pub const MAX_REASON_LABELS: usize = 64;
/// Label under which reasons past [`MAX_REASON_LABELS`] are counted.
pub const OTHER_REASON: &str = "_other";

/// Events handed to the recorder, split by type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TypeCounts {
    /// `Normal` events.
    pub normal: u64,
    /// `Warning` events.
    pub warning: u64,
}

impl TypeCounts {
    /// The count for one type.
    pub const fn get(&self, event_type: EventType) -> u64 {
        match event_type {
            EventType::Normal => self.normal,
            EventType::Warning => self.warning,
        }
    }
}

/// Entries pushed out of each cache at capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Spam filter buckets (an evicted object gets a full bucket again).
    pub spam_filter: u64,
    /// Aggregation windows.
    pub aggregator: u64,
    /// Dedup log entries (an evicted event is POSTed anew on its next repeat).
    pub dedup_log: u64,
}

/// A snapshot of the recorder's counters; all monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Every `record` call by reason (after truncation) and type, whatever became of it.
    pub recorded: BTreeMap<String, TypeCounts>,
    /// POST decisions from `record`.
    pub posts: u64,
    /// PATCH decisions from `record` (dedup repeats).
    pub patches: u64,
    /// Events replaced by a `(combined from similar events)` one.
    pub aggregations: u64,
    /// Events dropped by the spam filter.
    pub dropped_spam_filter: u64,
    /// PATCHes answered 404 and turned into a POST by `patch_not_found`.
    pub reposts_after_not_found: u64,
    /// Messages cut to the byte limit.
    pub messages_truncated: u64,
    /// Reasons cut to the byte limit.
    pub reasons_truncated: u64,
    /// Cache evictions.
    pub evictions: Evictions,
}

impl RecorderStats {
    /// Recorded events of one reason and type.
    pub fn recorded(&self, reason: &str, event_type: EventType) -> u64 {
        self.recorded.get(reason).map_or(0, |counts| counts.get(event_type))
    }

    pub(super) fn count_recorded(&mut self, reason: &str, event_type: EventType) {
        let label = if self.recorded.contains_key(reason) || self.recorded.len() < MAX_REASON_LABELS {
            reason
        } else {
            OTHER_REASON
        };
        if !self.recorded.contains_key(label) {
            self.recorded.insert(label.to_owned(), TypeCounts::default());
        }
        let Some(counts) = self.recorded.get_mut(label) else {
            return;
        };
        let slot = match event_type {
            EventType::Normal => &mut counts.normal,
            EventType::Warning => &mut counts.warning,
        };
        *slot = slot.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_capped() {
        let mut stats = RecorderStats::default();
        for i in 0..MAX_REASON_LABELS + 5 {
            stats.count_recorded(&format!("R{i}"), EventType::Warning);
        }
        stats.count_recorded("R0", EventType::Normal);
        assert_eq!(stats.recorded.len(), MAX_REASON_LABELS + 1);
        assert_eq!(stats.recorded(OTHER_REASON, EventType::Warning), 5);
        assert_eq!(stats.recorded("R0", EventType::Warning), 1);
        assert_eq!(stats.recorded("R0", EventType::Normal), 1);
        assert_eq!(stats.recorded("nope", EventType::Normal), 0);
    }
}
