//! Unit tests of the cgroup registry.

use super::*;
use layout::{CgroupDriver, QosClass};

const U: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const C: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const TTL: Duration = Duration::from_secs(300);

fn registry(capacity: usize) -> Registry {
    Registry::new(RegistryConfig { capacity, tombstone_ttl: TTL }).unwrap()
}

fn secs(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

/// Ids held, tombstones first then live entries, each list from its eviction end; also checks
/// that both lists agree with the index and are linked both ways.
fn order(r: &Registry) -> (Vec<u64>, Vec<u64>) {
    let walk = |list: List, tombstone: bool| {
        let (mut ids, mut prev, mut slot) = (Vec::new(), NIL, list.head);
        while slot != NIL {
            let node = &r.nodes[slot];
            assert_eq!(node.prev, prev);
            assert_eq!(node.entry.is_tombstone(), tombstone);
            assert_eq!(r.index.get(&node.id), Some(&slot));
            ids.push(node.id);
            (prev, slot) = (slot, node.next);
        }
        assert_eq!(list.tail, prev);
        ids
    };
    let lists = (walk(r.tombstones, true), walk(r.live, false));
    assert_eq!(lists.0.len() + lists.1.len(), r.len());
    assert!(r.len() <= r.config.capacity);
    lists
}

#[test]
fn defaults_are_documented_values() {
    let r = Registry::default();
    assert_eq!(r.config().capacity, 65_536);
    assert_eq!(r.config().tombstone_ttl, Duration::from_secs(5 * 60));
    let zero = RegistryConfig { capacity: 0, ..RegistryConfig::default() };
    assert_eq!(Registry::new(zero).unwrap_err(), RegistryError::ZeroCapacity);
}

#[test]
fn insert_parses_identity_and_get_returns_it() {
    let t0 = Instant::now();
    let mut r = registry(4);
    r.insert(7, &format!("/kubepods/burstable/pod{U}/{C}"), t0);
    r.insert(8, "/system.slice/cron.service", t0);
    let want = Identity {
        pod_uid: Some(U.to_owned()),
        qos: Some(QosClass::Burstable),
        container_id: Some(C.to_owned()),
        runtime: None,
        driver: CgroupDriver::Cgroupfs,
    };
    let e = r.get(7, t0).unwrap();
    assert_eq!((&e.identity, e.removed_at), (&Some(want), None));
    let e = r.get(8, t0).unwrap();
    assert_eq!((e.path.as_str(), &e.identity), ("/system.slice/cron.service", &None));
    // Re-inserting with a new path re-parses it.
    r.insert(8, &format!("/default/{C}"), t0);
    let e = r.get(8, t0).unwrap();
    assert_eq!(e.identity, layout::parse(&format!("/default/{C}")));
    assert!(e.identity.is_some());
    assert_eq!(r.len(), 2);
}

#[test]
fn tombstone_resolves_within_ttl_and_not_after() {
    let t0 = Instant::now();
    let mut r = registry(4);
    r.insert(1, "/default/a", t0);
    r.remove(1, secs(t0, 10));
    let e = r.get(1, secs(t0, 10)).unwrap();
    assert_eq!(e.removed_at, Some(secs(t0, 10)));
    assert_eq!(e.path, "/default/a");
    // Exactly ttl old is not yet "older than the ttl".
    assert!(r.get(1, secs(t0, 310)).is_some());
    assert!(r.get(1, secs(t0, 310) + Duration::from_nanos(1)).is_none());
    assert_eq!(r.len(), 0);
    assert!(r.get(1, secs(t0, 311)).is_none());
    let s = r.stats();
    assert_eq!((s.lookups, s.hits, s.misses, s.tombstones_expired), (4, 2, 2, 1));
}

#[test]
fn second_remove_keeps_first_removal_time() {
    let t0 = Instant::now();
    let mut r = registry(4);
    r.insert(1, "/a", t0);
    r.remove(1, t0);
    r.remove(1, secs(t0, 200));
    r.remove(99, t0);
    assert_eq!(r.get(1, secs(t0, 200)).unwrap().removed_at, Some(t0));
    assert!(r.get(1, secs(t0, 301)).is_none());
    assert_eq!(r.stats().removes, 1);
}

#[test]
fn revive_after_remove() {
    let t0 = Instant::now();
    let mut r = registry(4);
    r.insert(1, "/a", t0);
    r.insert(2, "/b", t0);
    r.remove(1, t0);
    assert_eq!(order(&r), (vec![1], vec![2]));
    r.insert(1, "/a", secs(t0, 1));
    assert_eq!(order(&r), (vec![], vec![2, 1]));
    let e = r.get(1, secs(t0, 1000)).unwrap();
    assert_eq!((e.path.as_str(), e.removed_at), ("/a", None));
    // An expired tombstone is purged by the insert, then inserted afresh.
    r.remove(2, secs(t0, 1000));
    r.insert(2, "/b2", secs(t0, 2000));
    assert_eq!(r.get(2, secs(t0, 2000)).unwrap().path, "/b2");
    let s = r.stats();
    assert_eq!((s.inserts, s.removes, s.tombstones_expired, s.evictions), (4, 2, 1, 0));
}

#[test]
fn eviction_takes_oldest_tombstone_then_least_recently_used() {
    let t0 = Instant::now();
    let mut r = registry(4);
    for id in 1..=4 {
        r.insert(id, "/x", t0);
    }
    r.remove(3, secs(t0, 1));
    r.remove(1, secs(t0, 2));
    assert!(r.get(2, secs(t0, 3)).is_some());
    assert_eq!(order(&r), (vec![3, 1], vec![4, 2]));
    r.insert(5, "/x", secs(t0, 4));
    assert_eq!(order(&r), (vec![1], vec![4, 2, 5]));
    r.insert(6, "/x", secs(t0, 5));
    assert_eq!(order(&r), (vec![], vec![4, 2, 5, 6]));
    // No tombstone left: the least recently used live entry goes; `get` refreshed 2 over 4.
    r.insert(7, "/x", secs(t0, 6));
    assert_eq!(order(&r), (vec![], vec![2, 5, 6, 7]));
    assert!(r.get(2, secs(t0, 7)).is_some());
    r.insert(8, "/x", secs(t0, 8));
    assert_eq!(order(&r), (vec![], vec![6, 7, 2, 8]));
    // Re-inserting a held id never evicts.
    r.insert(6, "/y", secs(t0, 9));
    assert_eq!(order(&r), (vec![], vec![7, 2, 8, 6]));
    assert!(r.get(4, secs(t0, 9)).is_none());
    assert!(r.get(3, secs(t0, 9)).is_none());
    let s = r.stats();
    assert_eq!((s.evictions, s.tombstones_expired, s.inserts, s.removes), (4, 0, 9, 2));
    assert_eq!((s.lookups, s.hits, s.misses), (4, 2, 2));
}

#[test]
fn capacity_one_and_expired_tombstones_before_eviction() {
    let t0 = Instant::now();
    let mut r = registry(1);
    r.insert(1, "/a", t0);
    r.insert(2, "/b", t0);
    assert_eq!(order(&r), (vec![], vec![2]));
    r.remove(2, t0);
    // Past the ttl the tombstone expires rather than being evicted.
    r.insert(3, "/c", secs(t0, 400));
    assert_eq!(order(&r), (vec![], vec![3]));
    r.remove(3, secs(t0, 400));
    assert_eq!(r.purge_expired(secs(t0, 700)), 0);
    assert_eq!(r.purge_expired(secs(t0, 701)), 1);
    assert!(r.is_empty());
    let s = r.stats();
    assert_eq!((s.evictions, s.tombstones_expired, s.inserts, s.removes), (1, 2, 3, 2));
}

#[test]
fn counters_are_exact() {
    let t0 = Instant::now();
    let mut r = registry(2);
    r.insert(1, "/a", t0); // inserts 1
    r.insert(1, "/a", t0); // inserts 2 (refresh)
    assert!(r.get(1, t0).is_some()); // hit
    assert!(r.get(9, t0).is_none()); // miss
    r.remove(9, t0); // unknown: not counted
    r.remove(1, t0); // removes 1
    r.insert(2, "/b", t0); // inserts 3
    r.insert(3, "/c", t0); // inserts 4, evicts tombstone 1
    assert!(r.get(1, t0).is_none()); // miss
    r.remove(2, t0); // removes 2
    assert!(r.get(2, secs(t0, 300)).is_some()); // hit
    assert!(r.get(2, secs(t0, 301)).is_none()); // expired: miss
    assert_eq!(
        r.stats(),
        RegistryStats {
            lookups: 5,
            hits: 2,
            misses: 3,
            evictions: 1,
            tombstones_expired: 1,
            inserts: 4,
            removes: 2,
            walks: 0,
        }
    );
}

/// Deterministic random operations checked against the list invariants and a partial model:
/// whatever `get` returns must match the last insert or first remove of that id.
#[test]
fn random_operations_keep_lists_consistent() {
    let t0 = Instant::now();
    let mut r = registry(64);
    let mut model: HashMap<u64, Option<Instant>> = HashMap::new();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut rand = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut now = t0;
    for step in 0..50_000 {
        now += Duration::from_secs(rand(60));
        let id = rand(100);
        match rand(4) {
            0 | 1 => {
                r.insert(id, &format!("/default/{id}"), now);
                model.insert(id, None);
            }
            2 => {
                r.remove(id, now);
                if let Some(removed @ None) = model.get_mut(&id) {
                    *removed = Some(now);
                }
            }
            _ => {
                if let Some(e) = r.get(id, now) {
                    assert_eq!(e.path, format!("/default/{id}"));
                    assert_eq!(Some(&e.removed_at), model.get(&id));
                    assert!(e.removed_at.is_none_or(|at| now - at <= TTL));
                }
            }
        }
        if step % 997 == 0 {
            order(&r);
        }
    }
    order(&r);
    let s = r.stats();
    assert_eq!(s.lookups, s.hits + s.misses);
    assert!(s.hits > 1000 && s.evictions > 1000 && s.tombstones_expired > 100, "{s:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Through inserts, re-inserts with other paths, removals and evictions, an entry holds the
    /// last path inserted for its id and exactly the identity `layout::parse` gives that path.
    #[test]
    fn entries_hold_the_last_path_and_its_identity(
        odd in proptest::collection::vec(proptest::prelude::any::<String>(), 2),
        ops in proptest::collection::vec((0..8_u64, 0..6_usize, 0..4_u8), 1..64),
    ) {
        let mut paths = vec![format!("/kubepods/burstable/pod{U}/{C}"), format!("/kubepods/pod{U}")];
        paths.extend([format!("/default/{C}"), format!("/system.slice/docker-{C}.scope")]);
        paths.extend(odd);
        let (t0, mut r, mut last) = (Instant::now(), registry(4), HashMap::new());
        for (id, path, op) in ops {
            if op == 0 {
                r.remove(id, t0);
            } else {
                r.insert(id, &paths[path], t0);
                last.insert(id, path);
            }
            let entry = r.get(id, t0);
            proptest::prop_assert!(op == 0 || entry.is_some());
            if let Some(entry) = entry {
                proptest::prop_assert_eq!(&entry.path, &paths[last[&id]]);
                proptest::prop_assert_eq!(&entry.identity, &layout::parse(&paths[last[&id]]));
            }
        }
    }
}
