//! Identity stage: names the pod and container of each record from the
//! runtime's (and API server's) metadata, waiting a bounded time for it.
//!
//! The cgroup path already gave the container id and pod uid; this stage adds
//! the names. A record whose container the cache does not know yet waits at
//! most `wait` (records stay in order behind it) while the runtime is asked;
//! then it goes out with what is known and is counted as unresolved.

use std::{
    cell::{Cell, RefCell},
    collections::{HashSet, VecDeque},
    rc::Rc,
    time::{Duration, Instant},
};

use crate::{
    metadata::{ContainerMeta, KubeletWord, MetadataCache, MetadataStats, StoppedContainer},
    record::{Identity, Record},
};

/// At most this many records wait for metadata; beyond it the oldest goes out unresolved.
const QUEUE_CAP: usize = 4096;
/// At most this many containers and pods are asked about at once; a record of another one
/// waits without a question of its own (a storm of new containers asks about each once).
const REFRESH_CAP: usize = 64;

/// At most this many stops are explained by the kubelet's Events at once; a mass restart
/// beyond it goes out without the kubelet's word rather than flood the API server.
const KUBELET_CAP: usize = 16;

/// The kubelet's word on a stop, while it is asked for: `None` until the question ends.
type Answer = Rc<RefCell<Option<Option<KubeletWord>>>>;

/// A record in line: named already, or waiting for its names until `deadline`.
struct Waiting {
    deadline: Instant,
    record: Record,
    named: bool,
    /// For a stop the kubelet asked for while the pod lives on: why, once the API answers.
    kubelet: Option<Answer>,
}

/// Adds pod and container names to records. Use it inside a `tokio::task::LocalSet`.
pub struct Identifier {
    metadata: Option<MetadataCache>,
    wait: Duration,
    queue: VecDeque<Waiting>,
    /// The containers and pods being asked about: one question each, however many records wait.
    asking: Rc<RefCell<HashSet<String>>>,
    /// Stops whose `Killing` Event is being asked for.
    explaining: Rc<Cell<usize>>,
    /// Records that went out without the names they should have had.
    pub unresolved: u64,
}

impl Identifier {
    /// An identifier over `metadata` (none: names stay unknown, nothing waits).
    pub fn new(metadata: Option<MetadataCache>, wait: Duration) -> Self {
        Self { metadata, wait, queue: VecDeque::new(), asking: Rc::default(), explaining: Rc::default(), unresolved: 0 }
    }

    /// The metadata cache's counters, if there is a cache.
    pub fn metadata_stats(&self) -> Option<MetadataStats> {
        self.metadata.as_ref().map(MetadataCache::stats)
    }

    /// Takes a record; [`Self::pop_ready`] hands it back, named, in order.
    ///
    /// A record whose names are known now takes them now: it may wait behind
    /// others for longer than its container's tombstone lasts.
    pub fn push(&mut self, mut record: Record, now: Instant) {
        let mut deadline = now;
        let mut named = true;
        let mut kubelet = None;
        if let Some(metadata) = &self.metadata {
            track_lifecycle(metadata, &record, self.wait, &self.asking);
            match missing(metadata, record.identity()) {
                Some(id) => {
                    refresh(metadata, id, self.wait, &self.asking);
                    deadline = now + self.wait;
                    named = false;
                }
                None => {
                    name(metadata, &mut record);
                    kubelet = explain(metadata, &record, self.wait, &self.explaining);
                    if kubelet.is_some() {
                        // The question's own wait, and time for its last answer to come back.
                        deadline = now + self.wait + ANSWER_MARGIN;
                    }
                }
            }
        }
        // Beyond the cap, `pop_ready` lets the oldest go at once: bounded memory beats waiting.
        self.queue.push_back(Waiting { deadline, record, named, kubelet });
    }

    /// The next record, once it is named or has waited long enough (or at once with `flush`).
    pub fn pop_ready(&mut self, now: Instant, flush: bool) -> Option<Record> {
        let head = self.queue.front()?;
        let known = head.named || self.metadata.as_ref().is_none_or(|m| missing(m, head.record.identity()).is_none());
        let answered = head.kubelet.as_ref().is_none_or(|answer| answer.borrow().is_some());
        if !((known && answered) || flush || now >= head.deadline || self.queue.len() > QUEUE_CAP) {
            return None;
        }
        let Waiting { mut record, named, kubelet, .. } = self.queue.pop_front()?;
        if let (Some(said), Record::Exit(exit)) = (kubelet.and_then(|answer| answer.take().flatten()), &mut record)
            && let Some(request) = &mut exit.stop_request
        {
            request.kubelet_message = Some(said.killing);
            request.probe_message = said.probe;
        }
        if let Some(metadata) = &self.metadata {
            let identity = record.identity();
            let unnamed = !named && missing(metadata, identity).is_some();
            if !named {
                if unnamed {
                    self.unresolved += 1;
                }
                name(metadata, &mut record);
            }
            // One lookup per record that names a container or pod, however often it was polled.
            if identity_to_look_up(record.identity()) {
                metadata.count_lookup(!unnamed);
            }
        }
        Some(record)
    }

    /// When the oldest waiting record's wait ends, if any is waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|w| w.deadline)
    }

    /// How long the record loop may sleep before its next housekeeping pass:
    /// until a waiting record's deadline, and never long (OOM kills wait too).
    pub fn next_wakeup(&self, now: Instant) -> Duration {
        const IDLE: Duration = Duration::from_millis(500);
        self.next_deadline().map_or(IDLE, |at| at.saturating_duration_since(now).clamp(Duration::from_millis(5), IDLE))
    }
}

/// Whether the record names a container or a pod to look up.
const fn identity_to_look_up(identity: &Identity) -> bool {
    identity.container_id.is_some() || identity.pod_uid.is_some()
}

/// The id to ask the runtime about, if the record names a container or pod the cache lacks.
fn missing(metadata: &MetadataCache, identity: &Identity) -> Option<Lookup> {
    match (&identity.container_id, &identity.pod_uid) {
        (Some(id), _) if metadata.container(id).is_none() => Some(Lookup::Container(id.clone())),
        (None, Some(uid)) if metadata.pod(uid).is_none() => Some(Lookup::Pod(uid.clone())),
        _ => None,
    }
}

enum Lookup {
    Container(String),
    Pod(String),
}

/// Asks the runtime in the background, again and again for at most `wait`:
/// a container's cgroup appears (and its first processes may die) before the
/// runtime has recorded the container, so one early answer of "unknown" must
/// not decide. One task per id being asked about, at most [`REFRESH_CAP`] at once:
/// a storm of records of one new container is one question, not one task each.
///
/// Runs on the caller's `LocalSet`: the metadata client's futures are not
/// provably `Send`, and the collector's loops are single-threaded anyway.
fn refresh(metadata: &MetadataCache, lookup: Lookup, wait: Duration, asking: &Rc<RefCell<HashSet<String>>>) {
    let key = match &lookup {
        Lookup::Container(id) | Lookup::Pod(id) => id.clone(),
    };
    {
        let mut asking = asking.borrow_mut();
        if asking.contains(&key) || asking.len() >= REFRESH_CAP {
            return;
        }
        asking.insert(key.clone());
    }
    let metadata = metadata.clone();
    let asking = Rc::clone(asking);
    tokio::task::spawn_local(async move {
        let (found, what, id) = match &lookup {
            Lookup::Container(id) => (metadata.resolve_container(id, wait).await.is_some(), "container", id),
            Lookup::Pod(uid) => (metadata.resolve_pod(uid, wait).await.is_some(), "pod", uid),
        };
        if !found {
            tracing::debug!("metadata: the runtime did not name {what} {id} within {wait:?}");
        }
        asking.borrow_mut().remove(&key);
    });
}

/// How long past its question's wait a stop waits for the last answer.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

/// Asks the API server why the kubelet stopped the container, for a container's main process
/// that a requested stop ended while its pod was not being stopped (a failed probe, a changed
/// spec); the answer fills the returned slot. None when there is nothing to ask, no API, or
/// [`KUBELET_CAP`] questions are already out.
fn explain(metadata: &MetadataCache, record: &Record, wait: Duration, explaining: &Rc<Cell<usize>>) -> Option<Answer> {
    let stopped = stopped_container(record)?;
    if !metadata.reads_kubelet_events() {
        return None;
    }
    if explaining.get() >= KUBELET_CAP {
        metadata.kubelet_skipped();
        tracing::debug!("metadata: {KUBELET_CAP} stops already wait for the kubelet's word; pod {}", stopped.pod_uid);
        return None;
    }
    explaining.set(explaining.get() + 1);
    let answer = Answer::default();
    let slot = Rc::clone(&answer);
    let metadata = metadata.clone();
    let explaining = Rc::clone(explaining);
    tokio::task::spawn_local(async move {
        let said = metadata.kubelet_word(&stopped, wait).await;
        *slot.borrow_mut() = Some(said);
        explaining.set(explaining.get().saturating_sub(1));
    });
    Some(answer)
}

/// The container whose main process a requested stop ended while its pod lived on.
fn stopped_container(record: &Record) -> Option<StoppedContainer> {
    let Record::Exit(exit) = record else {
        return None;
    };
    let request = exit.stop_request.as_ref().filter(|request| request.pod_stop.is_none())?;
    let identity = &exit.identity;
    if exit.main_process != Some(true) || identity.sandbox {
        return None;
    }
    Some(StoppedContainer {
        namespace: identity.namespace.clone()?,
        pod_uid: identity.pod_uid.clone()?,
        container: identity.container_name.clone()?,
        init: identity.init_container == Some(true),
        signal_time: request.time,
    })
}

/// A new container cgroup warms the cache before its first exit; a removed one starts its tombstone.
fn track_lifecycle(metadata: &MetadataCache, record: &Record, wait: Duration, asking: &Rc<RefCell<HashSet<String>>>) {
    match record {
        Record::CgroupMkdir(change) => {
            if let Some(id) = &change.identity.container_id {
                refresh(metadata, Lookup::Container(id.clone()), wait, asking);
            }
        }
        Record::CgroupRmdir(change) => match (&change.identity.container_id, &change.identity.pod_uid) {
            (Some(id), _) => metadata.container_removed(id),
            (None, Some(uid)) => metadata.pod_removed(uid),
            (None, None) => {}
        },
        _ => {}
    }
}

/// Fills names (and whether the process is the runtime's main one) from the cache.
fn name(metadata: &MetadataCache, record: &mut Record) {
    let container = record.identity().container_id.as_deref().and_then(|id| metadata.container(id));
    let pod = record.identity().pod_uid.as_deref().and_then(|uid| metadata.pod(uid));
    let pid = match record {
        Record::Exit(exit) => Some(exit.pid),
        Record::OomKill(oom) => Some(oom.pid),
        _ => None,
    };
    if let Some(meta) = &container {
        apply_container(record.identity_mut(), meta);
        let main = pid.is_some_and(|pid| meta.pid == Some(pid));
        match record {
            // The runtime's pid also covers shared pid namespaces, where the main process is not pid 1.
            Record::Exit(exit) => exit.main_process = Some(main || exit.main_process == Some(true)),
            Record::OomKill(oom) => oom.main_process = Some(main || oom.main_process == Some(true)),
            _ => {}
        }
    }
    if let Some(pod) = pod {
        // A stop the runtime carried out says why the pod was being stopped, while the pod says so.
        if let Record::Exit(exit) = record
            && let Some(request) = &mut exit.stop_request
        {
            request.pod_stop = pod.stopping;
        }
        let identity = record.identity_mut();
        identity.pod_name.get_or_insert(pod.name);
        identity.namespace.get_or_insert(pod.namespace);
        identity.pod_labels = pod.labels;
        identity.owner = pod.owner;
    }
}

fn apply_container(identity: &mut Identity, meta: &ContainerMeta) {
    identity.pod_uid.get_or_insert_with(|| meta.pod_uid.clone());
    identity.pod_name = Some(meta.pod_name.clone());
    identity.namespace = Some(meta.namespace.clone());
    identity.sandbox = meta.is_sandbox;
    identity.init_container = meta.init_container;
    // The sandbox is not a container of the pod spec: it has no name there.
    identity.container_name = (!meta.is_sandbox).then(|| meta.container_name.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Timestamp,
        metadata::{ContainerState, Owner, PodMeta, PodStop},
        record::{CgroupChange, Exit, Process, StopRequest},
    };

    const KNOWN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const UNKNOWN: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn in_container(id: &str) -> Identity {
        Identity { container_id: Some(id.to_owned()), pod_uid: Some("uid-1".to_owned()), ..Identity::default() }
    }

    fn change(id: &str) -> CgroupChange {
        CgroupChange {
            time: Timestamp(0),
            cgroup_id: 1,
            cgroup_path: format!("/kubepods/pod-uid-1/{id}"),
            identity: in_container(id),
        }
    }

    /// Container `app` of pod `web-0` in `shop`, its main process `pid`.
    fn app(pid: u32) -> ContainerMeta {
        ContainerMeta {
            container_id: KNOWN.to_owned(),
            container_name: "app".to_owned(),
            pod_uid: "uid-1".to_owned(),
            pod_name: "web-0".to_owned(),
            namespace: "shop".to_owned(),
            restart_count: 0,
            image: "busybox".to_owned(),
            is_sandbox: false,
            pid: Some(pid),
            init_container: Some(false),
            sandbox_id: None,
            state: ContainerState::Running,
        }
    }

    fn exit(id: &str) -> Record {
        Record::Exit(Box::new(Exit {
            time: Timestamp(0),
            pid: 7,
            ppid: 1,
            comm: "dd".to_owned(),
            exit_code: 137,
            signal: Some(9),
            core_dumped: false,
            cgroup_id: 1,
            cgroup_path: None,
            oom_killed: true,
            sender: None,
            identity: in_container(id),
            main_process: None,
            stop: None,
            stop_request: None,
        }))
    }

    /// A record behind one that waits for its names keeps the names it had when it came,
    /// even if its container's tombstone runs out while it waits.
    #[tokio::test]
    async fn a_record_waiting_in_line_keeps_names_its_container_had_when_it_came() {
        let tombstone = Duration::from_millis(20);
        let metadata = MetadataCache::holding(vec![app(1)], tombstone);
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut identifier = Identifier::new(Some(metadata), Duration::from_secs(1));
                let now = Instant::now();
                identifier.push(Record::CgroupMkdir(Box::new(change(UNKNOWN))), now);
                identifier.push(exit(KNOWN), now);
                identifier.push(Record::CgroupRmdir(Box::new(change(KNOWN))), now);
                assert!(identifier.pop_ready(now, false).is_none(), "the unknown container's record waits");
                std::thread::sleep(3 * tombstone);

                let later = now + Duration::from_secs(2);
                let first = identifier.pop_ready(later, false).unwrap();
                assert_eq!(first.identity().container_name, None);
                for record in [identifier.pop_ready(later, false).unwrap(), identifier.pop_ready(later, false).unwrap()]
                {
                    let identity = record.identity();
                    assert_eq!(identity.container_name.as_deref(), Some("app"), "{record:?}");
                    assert_eq!(
                        (identity.pod_name.as_deref(), identity.namespace.as_deref()),
                        (Some("web-0"), Some("shop"))
                    );
                }
                assert!(identifier.pop_ready(later, false).is_none());
                assert_eq!(identifier.unresolved, 1, "only the unknown container's record went out unnamed");
                // One lookup per record, although the waiting one was polled twice.
                let stats = identifier.metadata_stats().unwrap();
                assert_eq!((stats.hits, stats.misses), (2, 1));
            })
            .await;
    }

    /// What the API server says about the pod reaches the record: its owner, and why a stop the
    /// runtime carried out was asked for.
    #[tokio::test]
    async fn a_record_gets_its_pods_owner_and_why_the_pod_was_stopped() {
        let owner = Owner { kind: "ReplicaSet".to_owned(), name: "web-5d8f".to_owned() };
        let evicted = PodStop {
            deleted: true,
            reason: Some("EvictionByEvictionAPI".to_owned()),
            message: Some("Eviction API: evicting".to_owned()),
        };
        let metadata = MetadataCache::holding(vec![app(7)], Duration::from_secs(1)).with_api_pod(PodMeta {
            uid: "uid-1".to_owned(),
            name: "web-0".to_owned(),
            namespace: "shop".to_owned(),
            owner: Some(owner.clone()),
            labels: None,
            stopping: Some(evicted.clone()),
        });
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut identifier = Identifier::new(Some(metadata), Duration::from_secs(1));
                let now = Instant::now();
                let Record::Exit(mut stopped) = exit(KNOWN) else { unreachable!() };
                stopped.stop_request = Some(StopRequest {
                    time: Timestamp(0),
                    signal: 15,
                    signal_name: "SIGTERM".to_owned(),
                    ignored: true,
                    kill_time: Some(Timestamp(2)),
                    sender: Process { pid: 9, comm: "runc".to_owned(), exe: None, cgroup_path: None },
                    pod_stop: None,
                    kubelet_message: None,
                    probe_message: None,
                });
                identifier.push(Record::Exit(stopped), now);
                identifier.push(exit(KNOWN), now);
                let Some(Record::Exit(stopped)) = identifier.pop_ready(now, false) else { panic!("no exit") };
                assert_eq!(stopped.identity.owner.as_ref(), Some(&owner));
                assert_eq!(stopped.stop_request.and_then(|r| r.pod_stop), Some(evicted));
                // An exit nobody asked for stays without one.
                let Some(Record::Exit(other)) = identifier.pop_ready(now, false) else { panic!("no exit") };
                assert_eq!((other.identity.owner.as_ref(), other.stop_request), (Some(&owner), None));
            })
            .await;
    }

    /// A storm of records of one unknown container asks about it once, and a storm of new
    /// containers asks about at most [`REFRESH_CAP`] at a time.
    #[tokio::test]
    async fn a_storm_of_unnamed_records_asks_once_per_container_within_a_bound() {
        let metadata = MetadataCache::holding(Vec::new(), Duration::from_secs(1));
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut identifier = Identifier::new(Some(metadata), Duration::from_millis(200));
                let now = Instant::now();
                for _ in 0..1000 {
                    identifier.push(exit(UNKNOWN), now);
                }
                assert_eq!(identifier.asking.borrow().len(), 1);
                for n in 0..1000 {
                    identifier.push(exit(&format!("{n:064x}")), now);
                }
                assert_eq!(identifier.asking.borrow().len(), REFRESH_CAP);
                // The questions end (no runtime answers here) and free their places.
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert!(identifier.asking.borrow().is_empty());
            })
            .await;
    }
}
