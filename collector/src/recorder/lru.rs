//! A bounded least-recently-used map with groupcache/lru's semantics (client-go's caches): both
//! lookups and inserts make an entry the most recent; an insert past capacity drops the least.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

struct Slot<V> {
    value: V,
    tick: u64,
}

/// Keys are shared between the map and the recency index, so a long key is stored once.
pub(super) struct Lru<K, V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<Arc<K>, Slot<V>>,
    by_age: BTreeMap<u64, Arc<K>>,
}

impl<K: Hash + Eq, V> Lru<K, V> {
    /// A cache of at most `capacity` entries; 0 is treated as 1 so the bound always holds.
    pub(super) fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), tick: 0, entries: HashMap::new(), by_age: BTreeMap::new() }
    }

    fn next_tick(&mut self) -> u64 {
        // 2^64 touches never happen; wrapping only keeps the arithmetic panic-free.
        self.tick = self.tick.wrapping_add(1);
        self.tick
    }

    /// The value under `key`, now the most recently used.
    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let tick = self.next_tick();
        let slot = self.entries.get_mut(key)?;
        let old = std::mem::replace(&mut slot.tick, tick);
        if let Some(shared) = self.by_age.remove(&old) {
            self.by_age.insert(tick, shared);
        }
        Some(&mut slot.value)
    }

    /// Stores `value` under `key` as the most recent entry. Returns true when that pushed the
    /// least recently used entry out.
    pub(super) fn insert(&mut self, key: K, value: V) -> bool {
        let tick = self.next_tick();
        if let Some(slot) = self.entries.get_mut(&key) {
            slot.value = value;
            let old = std::mem::replace(&mut slot.tick, tick);
            if let Some(shared) = self.by_age.remove(&old) {
                self.by_age.insert(tick, shared);
            }
            return false;
        }
        let mut evicted = false;
        if self.entries.len() >= self.capacity
            && let Some((_, oldest)) = self.by_age.pop_first()
        {
            self.entries.remove(&oldest);
            evicted = true;
        }
        let shared = Arc::new(key);
        self.by_age.insert(tick, Arc::clone(&shared));
        self.entries.insert(shared, Slot { value, tick });
        evicted
    }

    /// Number of entries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `key` is cached, without touching its recency.
    #[cfg(test)]
    pub(super) fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_past_capacity_evicts_least_recent() {
        let mut lru = Lru::new(2);
        assert!(!lru.insert("a", 1));
        assert!(!lru.insert("b", 2));
        assert!(lru.insert("c", 3));
        assert!(!lru.contains(&"a"));
        assert!(lru.contains(&"b"));
        assert!(lru.contains(&"c"));
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn get_refreshes_recency() {
        let mut lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!(lru.get_mut(&"a").copied(), Some(1));
        assert!(lru.insert("c", 3));
        assert!(lru.contains(&"a"));
        assert!(!lru.contains(&"b"));
    }

    #[test]
    fn reinsert_replaces_and_refreshes_without_eviction() {
        let mut lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert!(!lru.insert("a", 10));
        assert_eq!(lru.len(), 2);
        assert!(lru.insert("c", 3));
        assert_eq!(lru.get_mut(&"a").copied(), Some(10));
        assert!(!lru.contains(&"b"));
        assert_eq!(lru.get_mut(&"b"), None);
    }

    #[test]
    fn get_mut_edits_in_place() {
        let mut lru = Lru::new(1);
        lru.insert("a", 1);
        if let Some(v) = lru.get_mut(&"a") {
            *v += 41;
        }
        assert_eq!(lru.get_mut(&"a").copied(), Some(42));
    }

    #[test]
    fn zero_capacity_holds_one() {
        let mut lru = Lru::new(0);
        assert!(!lru.insert("a", 1));
        assert!(lru.insert("b", 2));
        assert_eq!(lru.len(), 1);
        assert!(lru.contains(&"b"));
    }
}
