//! Identity stage: names the pod and container of each record from the
//! runtime's (and API server's) metadata, waiting a bounded time for it.
//!
//! The cgroup path already gave the container id and pod uid; this stage adds
//! the names. A record whose container the cache does not know yet waits at
//! most `wait` (records stay in order behind it) while the runtime is asked;
//! then it goes out with what is known and is counted as unresolved.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::{
    metadata::{ContainerMeta, MetadataCache, MetadataStats},
    record::{Identity, Record},
};

/// At most this many records wait for metadata; beyond it the oldest goes out unresolved.
const QUEUE_CAP: usize = 4096;

/// Adds pod and container names to records. Use it inside a `tokio::task::LocalSet`.
pub struct Identifier {
    metadata: Option<MetadataCache>,
    wait: Duration,
    queue: VecDeque<(Instant, Record)>,
    /// Records that went out without the names they should have had.
    pub unresolved: u64,
}

impl Identifier {
    /// An identifier over `metadata` (none: names stay unknown, nothing waits).
    pub fn new(metadata: Option<MetadataCache>, wait: Duration) -> Self {
        Self { metadata, wait, queue: VecDeque::new(), unresolved: 0 }
    }

    /// The metadata cache's counters, if there is a cache.
    pub fn metadata_stats(&self) -> Option<MetadataStats> {
        self.metadata.as_ref().map(MetadataCache::stats)
    }

    /// Takes a record; [`Self::pop_ready`] hands it back, named, in order.
    pub fn push(&mut self, record: Record, now: Instant) {
        let mut deadline = now;
        if let Some(metadata) = &self.metadata {
            track_lifecycle(metadata, &record);
            if let Some(id) = missing(metadata, record.identity()) {
                refresh(metadata, id);
                deadline = now + self.wait;
            }
        }
        // Beyond the cap, `pop_ready` lets the oldest go at once: bounded memory beats waiting.
        self.queue.push_back((deadline, record));
    }

    /// The next record, once it is named or has waited long enough (or at once with `flush`).
    pub fn pop_ready(&mut self, now: Instant, flush: bool) -> Option<Record> {
        let (deadline, record) = self.queue.front()?;
        let known = self.metadata.as_ref().is_none_or(|m| missing(m, record.identity()).is_none());
        if !(known || flush || now >= *deadline || self.queue.len() > QUEUE_CAP) {
            return None;
        }
        let (_, mut record) = self.queue.pop_front()?;
        if let Some(metadata) = &self.metadata {
            if !known && missing(metadata, record.identity()).is_some() {
                self.unresolved += 1;
            }
            name(metadata, &mut record);
        }
        Some(record)
    }

    /// When the oldest waiting record's wait ends, if any is waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|(deadline, _)| *deadline)
    }

    /// How long the record loop may sleep before its next housekeeping pass:
    /// until a waiting record's deadline, and never long (OOM kills wait too).
    pub fn next_wakeup(&self, now: Instant) -> Duration {
        const IDLE: Duration = Duration::from_millis(500);
        self.next_deadline().map_or(IDLE, |at| at.saturating_duration_since(now).clamp(Duration::from_millis(5), IDLE))
    }
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

/// Asks the runtime in the background; concurrent asks for one id share a call.
///
/// Runs on the caller's `LocalSet`: the metadata client's futures are not
/// provably `Send`, and the collector's loops are single-threaded anyway.
fn refresh(metadata: &MetadataCache, lookup: Lookup) {
    tokio::task::spawn_local(refresh_task(metadata.clone(), lookup));
}

async fn refresh_task(metadata: MetadataCache, lookup: Lookup) {
    let result = match lookup {
        Lookup::Container(id) => metadata.refresh_container(&id).await.map(drop),
        Lookup::Pod(uid) => metadata.refresh_pod(&uid).await.map(drop),
    };
    if let Err(err) = result {
        log::debug!("metadata refresh failed: {err}");
    }
}

/// A new container cgroup warms the cache before its first exit; a removed one starts its tombstone.
fn track_lifecycle(metadata: &MetadataCache, record: &Record) {
    match record {
        Record::CgroupMkdir(change) => {
            if let Some(id) = &change.identity.container_id {
                refresh(metadata, Lookup::Container(id.clone()));
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
        let identity = record.identity_mut();
        identity.pod_name.get_or_insert(pod.name);
        identity.namespace.get_or_insert(pod.namespace);
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
