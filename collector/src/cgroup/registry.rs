//! cgroup v2 id → path and identity, kept briefly after removal and bounded in size.
//!
//! A process's exit or OOM record can arrive after its cgroup's `cgroup_rmdir`, so a removed
//! cgroup stays resolvable as a tombstone for `tombstone_ttl`. Memory is bounded by `capacity`
//! entries of about 300 bytes plus the path, stored as given: a full default registry of typical
//! 150-byte Kubernetes paths is about 30 MiB; callers bound the path length (the kernel's cgroup
//! tracepoints already cut paths at 1 KiB).
//!
//! Entries live in one slab and sit in exactly one of two intrusive lists: live entries in least
//! recently used order, tombstones in removal order. Eviction takes the oldest tombstone before
//! any live entry, and expired tombstones are dropped from the head of their list, so every
//! operation is O(1) amortised.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::layout::{self, Identity};

/// Default entry limit: more cgroups than a node runs, small enough to bound memory.
pub const DEFAULT_CAPACITY: usize = 65_536;
/// Default time a removed cgroup stays resolvable: 5 minutes, far longer than ring buffer lag.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(300);

/// Errors of the cgroup registry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// A registry that can hold nothing would drop every cgroup it learns of.
    #[error("cgroup registry capacity must be at least 1")]
    ZeroCapacity,
}

/// Registry limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Most entries (live and tombstones) held at once.
    pub capacity: usize,
    /// How long a removed cgroup still resolves.
    pub tombstone_ttl: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { capacity: DEFAULT_CAPACITY, tombstone_ttl: DEFAULT_TOMBSTONE_TTL }
    }
}

/// What the registry knows of one cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the v2 root, as the walk or the kernel gave it.
    pub path: String,
    /// Identity parsed from `path` when it was stored.
    pub identity: Option<Identity>,
    /// When the cgroup was removed; `None` while it exists.
    pub removed_at: Option<Instant>,
}

impl Entry {
    /// Whether the cgroup is gone and this is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.removed_at.is_some()
    }
}

/// Counters since the registry was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RegistryStats {
    /// `get` calls.
    pub lookups: u64,
    /// `get` calls that found a live entry or an unexpired tombstone.
    pub hits: u64,
    /// `get` calls that found nothing (including an expired tombstone).
    pub misses: u64,
    /// Entries dropped to make room, tombstones first.
    pub evictions: u64,
    /// Tombstones dropped because their ttl passed.
    pub tombstones_expired: u64,
    /// `insert` calls, new ids and re-inserted ones alike.
    pub inserts: u64,
    /// `remove` calls that turned a live entry into a tombstone.
    pub removes: u64,
    /// Walks of the tree taken in, the first (at start-up) included; counted by the resolver.
    pub walks: u64,
}

/// Slab index meaning "no node".
const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Node {
    id: u64,
    entry: Entry,
    prev: usize,
    next: usize,
}

#[derive(Debug, Clone, Copy)]
struct List {
    head: usize,
    tail: usize,
}

impl List {
    const EMPTY: Self = Self { head: NIL, tail: NIL };
}

/// Hashes a cgroup id with one multiply (as rustc's FxHash does). Every record is looked up here,
/// and the ids are inode numbers the kernel hands out, which no workload can choose, so SipHash's
/// defence against chosen keys would cost a third of each lookup for nothing.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        // An odd constant keeps the low bits (the bucket) a bijection of the id's, and spreads
        // the high bits (the tag hashbrown compares first).
        self.0 = (self.0.rotate_left(5) ^ id).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// Map from cgroup v2 id (the directory's inode number) to path and identity.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    index: HashMap<u64, usize, BuildHasherDefault<IdHasher>>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    live: List,
    tombstones: List,
    stats: RegistryStats,
}

impl Default for Registry {
    fn default() -> Self {
        Self::with_valid_config(RegistryConfig::default())
    }
}

impl Registry {
    /// An empty registry with these limits.
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        if config.capacity == 0 {
            return Err(RegistryError::ZeroCapacity);
        }
        Ok(Self::with_valid_config(config))
    }

    fn with_valid_config(config: RegistryConfig) -> Self {
        Self {
            config,
            index: HashMap::default(),
            nodes: Vec::new(),
            free: Vec::new(),
            live: List::EMPTY,
            tombstones: List::EMPTY,
            stats: RegistryStats::default(),
        }
    }

    /// Records that cgroup `id` exists at `path`; re-inserting an id (even a tombstone) revives it
    /// as most recently used. The path is parsed only when it differs from the stored one.
    pub fn insert(&mut self, id: u64, path: &str, now: Instant) {
        self.stats.inserts += 1;
        self.purge_expired(now);
        if let Some(&slot) = self.index.get(&id) {
            self.unlink(slot);
            let entry = &mut self.nodes[slot].entry;
            entry.removed_at = None;
            if entry.path != path {
                path.clone_into(&mut entry.path);
                entry.identity = layout::parse(path);
            }
            self.push_back(slot);
            return;
        }
        if self.index.len() >= self.config.capacity {
            self.evict_one();
        }
        let node = Node {
            id,
            entry: Entry { path: path.to_owned(), identity: layout::parse(path), removed_at: None },
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.index.insert(id, slot);
        self.push_back(slot);
    }

    /// Records that cgroup `id` was removed; it resolves as a tombstone for `tombstone_ttl`.
    /// Unknown ids and existing tombstones are left alone (the first removal time stands).
    pub fn remove(&mut self, id: u64, now: Instant) {
        self.purge_expired(now);
        let Some(&slot) = self.index.get(&id) else {
            return;
        };
        if self.nodes[slot].entry.is_tombstone() {
            return;
        }
        self.stats.removes += 1;
        self.unlink(slot);
        self.nodes[slot].entry.removed_at = Some(now);
        self.push_back(slot);
    }

    /// Whether [`Self::get`] would find `id` at `now`; neither counted nor reordered.
    pub fn contains(&self, id: u64, now: Instant) -> bool {
        self.index.get(&id).is_some_and(|&slot| !self.is_expired(slot, now))
    }

    /// The entry for `id`: a live cgroup (now most recently used) or an unexpired tombstone.
    /// An expired tombstone is dropped and counts as a miss.
    pub fn get(&mut self, id: u64, now: Instant) -> Option<&Entry> {
        self.stats.lookups += 1;
        let Some(&slot) = self.index.get(&id) else {
            self.stats.misses += 1;
            return None;
        };
        if self.is_expired(slot, now) {
            self.release(slot);
            self.stats.tombstones_expired += 1;
            self.stats.misses += 1;
            return None;
        }
        if !self.nodes[slot].entry.is_tombstone() {
            self.unlink(slot);
            self.push_back(slot);
        }
        self.stats.hits += 1;
        Some(&self.nodes[slot].entry)
    }

    /// Drops tombstones whose ttl has passed and returns how many. `insert` and `remove` call it,
    /// so calling it is only needed to free memory on an otherwise idle registry.
    pub fn purge_expired(&mut self, now: Instant) -> usize {
        let mut purged = 0;
        // Removal order is time order, so the expired ones are a prefix of the list.
        while self.tombstones.head != NIL && self.is_expired(self.tombstones.head, now) {
            self.release(self.tombstones.head);
            self.stats.tombstones_expired += 1;
            purged += 1;
        }
        purged
    }

    /// Entries held, tombstones included (expired ones until they are purged).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the registry holds no entry.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The limits this registry was made with.
    pub fn config(&self) -> RegistryConfig {
        self.config
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RegistryStats {
        self.stats
    }

    fn is_expired(&self, slot: usize, now: Instant) -> bool {
        self.nodes[slot]
            .entry
            .removed_at
            .is_some_and(|at| now.saturating_duration_since(at) > self.config.tombstone_ttl)
    }

    fn evict_one(&mut self) {
        let victim = if self.tombstones.head != NIL { self.tombstones.head } else { self.live.head };
        if victim != NIL {
            self.release(victim);
            self.stats.evictions += 1;
        }
    }

    /// Unlinks and frees a slot, dropping its strings now rather than when the slot is reused.
    fn release(&mut self, slot: usize) {
        self.unlink(slot);
        let node = &mut self.nodes[slot];
        self.index.remove(&node.id);
        node.entry = Entry::default();
        self.free.push(slot);
    }

    fn list_of(&mut self, slot: usize) -> &mut List {
        if self.nodes[slot].entry.is_tombstone() { &mut self.tombstones } else { &mut self.live }
    }

    /// Detaches `slot` from the list its state puts it in.
    fn unlink(&mut self, slot: usize) {
        let Node { prev, next, .. } = self.nodes[slot];
        if prev == NIL {
            self.list_of(slot).head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.list_of(slot).tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
        self.nodes[slot].prev = NIL;
        self.nodes[slot].next = NIL;
    }

    /// Appends a detached `slot` to the list its state puts it in.
    fn push_back(&mut self, slot: usize) {
        let tail = self.list_of(slot).tail;
        self.nodes[slot].prev = tail;
        self.nodes[slot].next = NIL;
        if tail == NIL {
            self.list_of(slot).head = slot;
        } else {
            self.nodes[tail].next = slot;
        }
        self.list_of(slot).tail = slot;
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
