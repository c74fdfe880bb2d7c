//! The in-memory tables behind [`super::MetadataCache`]: bounded, with tombstones.
//!
//! Two sources write here, CRI and the Kubernetes API. CRI knows more about a
//! container (its pid, the sandbox flag), the API knows more about a pod (owner,
//! labels, which containers are init containers), so each keeps what it knows
//! best and neither erases the other's fields.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::{ContainerMeta, PodMeta};

/// Which source last wrote a container entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The container runtime, over CRI.
    Cri,
    /// A pod's `status.containerStatuses` from the Kubernetes API.
    Kube,
}

#[derive(Debug)]
struct ContainerEntry {
    meta: ContainerMeta,
    source: Source,
    removed_at: Option<Instant>,
}

#[derive(Debug)]
struct PodEntry {
    meta: PodMeta,
    /// Whether CRI has a sandbox for it (so a CRI listing without one removes it).
    from_cri: bool,
    /// Whether the API has it.
    from_kube: bool,
    /// Whether `meta.labels` came from the API (which wins over CRI's copy).
    labels_from_kube: bool,
    /// Names of the pod's init containers, when the API told us.
    init_containers: Option<BTreeSet<String>>,
    removed_at: Option<Instant>,
}

/// What an insert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Insert {
    /// The entry was added or updated.
    Stored,
    /// The table was full of live entries: the entry was dropped.
    Full,
}

/// Pod and container tables with caps and tombstone expiry.
#[derive(Debug)]
pub(crate) struct Store {
    pods: HashMap<String, PodEntry>,
    containers: HashMap<String, ContainerEntry>,
    max_pods: usize,
    max_containers: usize,
    ttl: Duration,
    /// Tombstones dropped because their time ran out or room was needed.
    pub(crate) expired: u64,
}

impl Store {
    pub(crate) fn new(max_pods: usize, max_containers: usize, ttl: Duration) -> Self {
        Self { pods: HashMap::new(), containers: HashMap::new(), max_pods, max_containers, ttl, expired: 0 }
    }

    /// Live and tombstoned container entries.
    pub(crate) fn container_count(&self) -> usize {
        self.containers.len()
    }

    /// Live and tombstoned pod entries.
    pub(crate) fn pod_count(&self) -> usize {
        self.pods.len()
    }

    fn alive(&self, removed_at: Option<Instant>, now: Instant) -> bool {
        removed_at.is_none_or(|at| now.saturating_duration_since(at) < self.ttl)
    }

    /// The container, live or tombstoned within the ttl, with `init_container`
    /// filled in from its pod when the API named the pod's init containers.
    pub(crate) fn container(&self, id: &str, now: Instant) -> Option<ContainerMeta> {
        let entry = self.containers.get(id)?;
        if !self.alive(entry.removed_at, now) {
            return None;
        }
        let mut meta = entry.meta.clone();
        if meta.init_container.is_none() && !meta.is_sandbox {
            meta.init_container = self
                .pods
                .get(&meta.pod_uid)
                .and_then(|p| p.init_containers.as_ref())
                .map(|names| names.contains(&meta.container_name));
        }
        Some(meta)
    }

    /// The pod, live or tombstoned within the ttl.
    pub(crate) fn pod(&self, uid: &str, now: Instant) -> Option<PodMeta> {
        let entry = self.pods.get(uid)?;
        self.alive(entry.removed_at, now).then(|| entry.meta.clone())
    }

    /// Whether the cache holds a live (not tombstoned) entry for the container.
    pub(crate) fn container_live(&self, id: &str) -> bool {
        self.containers.get(id).is_some_and(|e| e.removed_at.is_none())
    }

    /// Whether the container entry is a pod sandbox.
    pub(crate) fn is_sandbox(&self, id: &str) -> bool {
        self.containers.get(id).is_some_and(|e| e.meta.is_sandbox)
    }

    /// Adds or updates a container. A pid once known is kept: runtimes report 0
    /// after the container exited, and a container id is never reused.
    pub(crate) fn put_container(&mut self, mut meta: ContainerMeta, source: Source, now: Instant) -> Insert {
        if let Some(old) = self.containers.get_mut(&meta.container_id) {
            if source == Source::Kube && old.source == Source::Cri {
                // CRI's view is richer (pid, sandbox id); the API only confirms it.
                return Insert::Stored;
            }
            meta.pid = meta.pid.or(old.meta.pid);
            meta.sandbox_id = meta.sandbox_id.or_else(|| old.meta.sandbox_id.take());
            meta.init_container = meta.init_container.or(old.meta.init_container);
            old.meta = meta;
            old.source = source;
            old.removed_at = None;
            return Insert::Stored;
        }
        if !self.make_room_for_container(now) {
            return Insert::Full;
        }
        self.containers.insert(meta.container_id.clone(), ContainerEntry { meta, source, removed_at: None });
        Insert::Stored
    }

    /// Adds or updates a pod as CRI sees it: identity and the sandbox's labels,
    /// which the API's labels replace when it has them.
    pub(crate) fn put_pod_cri(&mut self, meta: PodMeta, now: Instant) -> Insert {
        if let Some(old) = self.pods.get_mut(&meta.uid) {
            old.meta.name = meta.name;
            old.meta.namespace = meta.namespace;
            if !old.labels_from_kube && meta.labels.is_some() {
                old.meta.labels = meta.labels;
            }
            old.from_cri = true;
            old.removed_at = None;
            return Insert::Stored;
        }
        self.insert_pod(meta, false, None, now)
    }

    /// Adds or updates a pod as the API sees it; the API is authoritative for
    /// owner, labels and init containers.
    pub(crate) fn put_pod_kube(&mut self, meta: PodMeta, init_containers: BTreeSet<String>, now: Instant) -> Insert {
        if let Some(old) = self.pods.get_mut(&meta.uid) {
            old.meta = meta;
            old.from_kube = true;
            old.labels_from_kube = true;
            old.init_containers = Some(init_containers);
            old.removed_at = None;
            return Insert::Stored;
        }
        self.insert_pod(meta, true, Some(init_containers), now)
    }

    fn insert_pod(
        &mut self,
        meta: PodMeta,
        labels_from_kube: bool,
        init_containers: Option<BTreeSet<String>>,
        now: Instant,
    ) -> Insert {
        if !self.make_room_for_pod(now) {
            return Insert::Full;
        }
        self.pods.insert(
            meta.uid.clone(),
            PodEntry {
                meta,
                from_cri: !labels_from_kube,
                from_kube: labels_from_kube,
                labels_from_kube,
                init_containers,
                removed_at: None,
            },
        );
        Insert::Stored
    }

    /// Tombstones a container: it still resolves for the ttl.
    pub(crate) fn remove_container(&mut self, id: &str, now: Instant) {
        if let Some(e) = self.containers.get_mut(id) {
            e.removed_at.get_or_insert(now);
        }
    }

    /// Tombstones a pod and every container of it.
    pub(crate) fn remove_pod(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.pods.get_mut(uid) {
            e.removed_at.get_or_insert(now);
        }
        for e in self.containers.values_mut() {
            if e.meta.pod_uid == uid {
                e.removed_at.get_or_insert(now);
            }
        }
    }

    /// After a CRI listing (of every pod, or of the pod `only`): tombstones the
    /// containers CRI wrote that it no longer lists, and the pods it no longer has
    /// a sandbox for unless the API still has them.
    pub(crate) fn reconcile_cri(
        &mut self,
        only: Option<&str>,
        pods: &BTreeSet<String>,
        containers: &BTreeSet<String>,
        now: Instant,
    ) {
        let in_scope = |uid: &str| only.is_none_or(|o| o == uid);
        for (id, e) in &mut self.containers {
            if e.source == Source::Cri && in_scope(&e.meta.pod_uid) && !containers.contains(id) {
                e.removed_at.get_or_insert(now);
            }
        }
        for (uid, e) in &mut self.pods {
            if e.from_cri && !e.from_kube && in_scope(uid) && !pods.contains(uid) {
                e.removed_at.get_or_insert(now);
            }
        }
    }

    /// The API deleted the pod: tombstone it, and its containers unless CRI still
    /// runs them.
    pub(crate) fn remove_pod_kube(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.pods.get_mut(uid) {
            e.from_kube = false;
            e.removed_at.get_or_insert(now);
        }
        for e in self.containers.values_mut() {
            if e.meta.pod_uid == uid && e.source == Source::Kube {
                e.removed_at.get_or_insert(now);
            }
        }
    }

    /// The UIDs of the live pods the API told us about.
    pub(crate) fn kube_pods(&self) -> Vec<String> {
        self.pods.iter().filter(|(_, e)| e.from_kube && e.removed_at.is_none()).map(|(uid, _)| uid.clone()).collect()
    }

    /// Drops every tombstone whose ttl ran out.
    pub(crate) fn purge(&mut self, now: Instant) {
        let ttl = self.ttl;
        let before = self.pods.len() + self.containers.len();
        let keep = |at: &Option<Instant>| at.is_none_or(|at| now.saturating_duration_since(at) < ttl);
        self.pods.retain(|_, e| keep(&e.removed_at));
        self.containers.retain(|_, e| keep(&e.removed_at));
        let after = self.pods.len() + self.containers.len();
        self.expired += u64::try_from(before - after).unwrap_or(u64::MAX);
    }

    fn make_room_for_container(&mut self, now: Instant) -> bool {
        if self.containers.len() < self.max_containers {
            return true;
        }
        self.purge(now);
        if self.containers.len() < self.max_containers {
            return true;
        }
        let oldest = oldest_tombstone(self.containers.iter().map(|(k, e)| (k, e.removed_at)));
        match oldest {
            Some(id) => {
                self.containers.remove(&id);
                self.expired += 1;
                true
            }
            None => false,
        }
    }

    fn make_room_for_pod(&mut self, now: Instant) -> bool {
        if self.pods.len() < self.max_pods {
            return true;
        }
        self.purge(now);
        if self.pods.len() < self.max_pods {
            return true;
        }
        let oldest = oldest_tombstone(self.pods.iter().map(|(k, e)| (k, e.removed_at)));
        match oldest {
            Some(uid) => {
                self.pods.remove(&uid);
                self.expired += 1;
                true
            }
            None => false,
        }
    }
}

fn oldest_tombstone<'a>(entries: impl Iterator<Item = (&'a String, Option<Instant>)>) -> Option<String> {
    entries.filter_map(|(k, at)| at.map(|at| (at, k))).min().map(|(_, k)| k.clone())
}

/// Labels with the kubelet's own bookkeeping keys removed, as the pod's
/// `metadata.labels` were before the kubelet added them.
pub(crate) fn without_kubelet_labels(labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| !super::cri::KUBELET_POD_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{ContainerState, Owner};

    fn container(id: &str, uid: &str, name: &str, pid: Option<u32>) -> ContainerMeta {
        ContainerMeta {
            container_id: id.to_owned(),
            container_name: name.to_owned(),
            pod_uid: uid.to_owned(),
            pod_name: "web".to_owned(),
            namespace: "prod".to_owned(),
            restart_count: 0,
            image: "busybox".to_owned(),
            is_sandbox: false,
            pid,
            init_container: None,
            sandbox_id: Some("sb".to_owned()),
            state: ContainerState::Running,
        }
    }

    fn pod(uid: &str, labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            uid: uid.to_owned(),
            name: "web".to_owned(),
            namespace: "prod".to_owned(),
            owner: None,
            stopping: None,
            labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
        }
    }

    const TTL: Duration = Duration::from_secs(300);

    #[test]
    fn a_known_pid_survives_a_refresh_after_exit() {
        let now = Instant::now();
        let mut s = Store::new(10, 10, TTL);
        s.put_container(container("c1", "u1", "app", Some(42)), Source::Cri, now);
        let mut exited = container("c1", "u1", "app", None);
        exited.state = ContainerState::Exited;
        s.put_container(exited, Source::Cri, now);
        let got = s.container("c1", now).unwrap();
        assert_eq!(got.pid, Some(42));
        assert_eq!(got.state, ContainerState::Exited);
    }

    #[test]
    fn tombstones_resolve_until_the_ttl_and_then_expire() {
        let t0 = Instant::now();
        let mut s = Store::new(10, 10, TTL);
        s.put_pod_cri(pod("u1", &[]), t0);
        s.put_container(container("c1", "u1", "app", Some(1)), Source::Cri, t0);
        s.remove_pod("u1", t0);
        let later = t0 + TTL - Duration::from_millis(1);
        assert_eq!(s.container("c1", later).unwrap().container_name, "app");
        assert_eq!(s.pod("u1", later).unwrap().name, "web");
        assert!(!s.container_live("c1"));
        let expired = t0 + TTL;
        assert_eq!(s.container("c1", expired), None);
        assert_eq!(s.pod("u1", expired), None);
        s.purge(expired);
        assert_eq!((s.container_count(), s.pod_count(), s.expired), (0, 0, 2));
    }

    #[test]
    fn a_full_table_evicts_the_oldest_tombstone_but_never_a_live_entry() {
        let t0 = Instant::now();
        let mut s = Store::new(10, 2, TTL);
        s.put_container(container("a", "u", "a", None), Source::Cri, t0);
        s.put_container(container("b", "u", "b", None), Source::Cri, t0);
        assert_eq!(s.put_container(container("c", "u", "c", None), Source::Cri, t0), Insert::Full);
        s.remove_container("b", t0);
        assert_eq!(s.put_container(container("c", "u", "c", None), Source::Cri, t0), Insert::Stored);
        assert!(s.container("a", t0).is_some());
        assert!(s.container("b", t0).is_none());
        assert!(s.container("c", t0).is_some());
        assert_eq!(s.expired, 1);
    }

    #[test]
    fn api_labels_and_owner_win_over_cri_and_stay() {
        let now = Instant::now();
        let mut s = Store::new(10, 10, TTL);
        s.put_pod_cri(pod("u1", &[("app", "cri")]), now);
        let mut from_api = pod("u1", &[("app", "api")]);
        from_api.owner = Some(Owner { kind: "ReplicaSet".to_owned(), name: "web-5d8f".to_owned() });
        s.put_pod_kube(from_api, BTreeSet::from(["init".to_owned()]), now);
        s.put_pod_cri(pod("u1", &[("app", "cri")]), now);
        let got = s.pod("u1", now).unwrap();
        assert_eq!(got.labels.unwrap()["app"], "api");
        assert_eq!(got.owner.unwrap().kind, "ReplicaSet");
        s.put_container(container("c1", "u1", "init", None), Source::Cri, now);
        s.put_container(container("c2", "u1", "app", None), Source::Cri, now);
        assert_eq!(s.container("c1", now).unwrap().init_container, Some(true));
        assert_eq!(s.container("c2", now).unwrap().init_container, Some(false));
    }

    #[test]
    fn the_api_does_not_overwrite_what_cri_said_about_a_container() {
        let now = Instant::now();
        let mut s = Store::new(10, 10, TTL);
        s.put_container(container("c1", "u1", "app", Some(7)), Source::Cri, now);
        let mut api = container("c1", "u1", "app", None);
        api.image = "docker.io/library/busybox:latest".to_owned();
        s.put_container(api, Source::Kube, now);
        let got = s.container("c1", now).unwrap();
        assert_eq!((got.pid, got.image.as_str()), (Some(7), "busybox"));
    }

    #[test]
    fn missing_containers_of_a_refreshed_pod_become_tombstones() {
        let now = Instant::now();
        let mut s = Store::new(10, 10, TTL);
        s.put_container(container("c1", "u1", "a", None), Source::Cri, now);
        s.put_container(container("c2", "u1", "b", None), Source::Cri, now);
        s.put_container(container("c3", "u2", "b", None), Source::Cri, now);
        s.put_pod_cri(pod("u1", &[]), now);
        s.put_pod_cri(pod("u2", &[]), now);
        let keep = BTreeSet::from(["c1".to_owned()]);
        s.reconcile_cri(Some("u1"), &BTreeSet::new(), &keep, now);
        assert!(s.container_live("c1"));
        assert!(!s.container_live("c2"));
        assert!(s.container_live("c3"));
        assert!(s.pod("u1", now).is_some(), "a tombstone still resolves");
        s.purge(now + TTL);
        assert!(s.pod("u1", now + TTL).is_none());
        assert!(s.pod("u2", now + TTL).is_some());
    }
}
