//! Filling the store from CRI: a listing (of everything, or of one pod) and the
//! targeted refresh of one container or sandbox id.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use futures_util::{StreamExt as _, stream};
use k8s_cri::v1::{ContainerStatusResponse, PodSandboxState, PodSandboxStatusResponse};

use super::cri::{self, CriClient};
use super::store::Source;
use super::{MetadataError, Shared, bump};

/// Verbose status calls in flight at once during a listing: enough to list a
/// full node quickly, few enough not to load the runtime.
const STATUS_CONCURRENCY: usize = 8;

/// Lists sandboxes and containers (all, or those of `only`), fetches the verbose
/// status of those whose pid is still unknown, stores them and tombstones what
/// CRI no longer lists.
pub(super) async fn sync(shared: &Shared, cri: &CriClient, only: Option<&str>) -> Result<(), MetadataError> {
    let sandboxes = cri.list_sandboxes(only).await?;
    let containers = cri.list_containers(only).await?;

    let needs_status = |id: &str, running: bool| {
        running && shared.read().container(id, Instant::now()).is_none_or(|m| m.pid.is_none())
    };
    let ready = i32::from(PodSandboxState::SandboxReady);
    let sandbox_ids: Vec<String> =
        sandboxes.iter().filter(|s| needs_status(&s.id, s.state == ready)).map(|s| s.id.clone()).collect();
    let live = [
        i32::from(k8s_cri::v1::ContainerState::ContainerCreated),
        i32::from(k8s_cri::v1::ContainerState::ContainerRunning),
    ];
    let container_ids: Vec<String> =
        containers.iter().filter(|c| needs_status(&c.id, live.contains(&c.state))).map(|c| c.id.clone()).collect();
    let sandbox_status: HashMap<String, PodSandboxStatusResponse> =
        statuses(sandbox_ids, async |id: String| cri.sandbox_status(&id).await.map(|s| s.map(|s| (id, s)))).await?;
    let container_status: HashMap<String, ContainerStatusResponse> =
        statuses(container_ids, async |id: String| cri.container_status(&id).await.map(|s| s.map(|s| (id, s)))).await?;

    let now = Instant::now();
    let mut store = shared.write();
    let mut seen_pods = BTreeSet::new();
    let mut seen_containers = BTreeSet::new();
    // Oldest first, so the newest sandbox of a pod writes its identity last.
    let mut sandboxes = sandboxes;
    sandboxes.sort_by_key(|s| s.created_at);
    for s in &sandboxes {
        let (Some(pod), Some(meta)) = (cri::pod_meta(s), cri::sandbox_container(s, sandbox_status.get(&s.id))) else {
            bump(&shared.counters.unlabelled);
            continue;
        };
        seen_pods.insert(pod.uid.clone());
        seen_containers.insert(meta.container_id.clone());
        let inserted = store.put_pod_cri(pod, now);
        shared.stored(inserted);
        let inserted = store.put_container(meta, Source::Cri, now);
        shared.stored(inserted);
    }
    for c in &containers {
        let Some(meta) = cri::container_meta(c, container_status.get(&c.id)) else {
            bump(&shared.counters.unlabelled);
            continue;
        };
        seen_containers.insert(meta.container_id.clone());
        let inserted = store.put_container(meta, Source::Cri, now);
        shared.stored(inserted);
    }
    store.reconcile_cri(only, &seen_pods, &seen_containers, now);
    store.purge(now);
    Ok(())
}

/// Fetches statuses a few at a time; ids the runtime forgot meanwhile are left out.
async fn statuses<T>(
    ids: Vec<String>,
    fetch: impl AsyncFn(String) -> Result<Option<(String, T)>, MetadataError>,
) -> Result<HashMap<String, T>, MetadataError> {
    let results: Vec<_> = stream::iter(ids).map(|id| fetch(id)).buffer_unordered(STATUS_CONCURRENCY).collect().await;
    let mut out = HashMap::new();
    for r in results {
        if let Some((id, status)) = r? {
            out.insert(id, status);
        }
    }
    Ok(out)
}

/// Asks CRI about one id, as a container and then as a sandbox (or the other way
/// round when the cache knows it is a sandbox). An id the runtime does not know
/// turns a cached entry into a tombstone.
pub(super) async fn container(shared: &Shared, cri: &CriClient, id: &str) -> Result<(), MetadataError> {
    let sandbox_first = shared.read().is_sandbox(id);
    if sandbox_first {
        if refresh_sandbox(shared, cri, id).await? || refresh_container(shared, cri, id).await? {
            return Ok(());
        }
    } else if refresh_container(shared, cri, id).await? || refresh_sandbox(shared, cri, id).await? {
        return Ok(());
    }
    shared.write().remove_container(id, Instant::now());
    Ok(())
}

/// Whether the runtime knows `id` as a container.
async fn refresh_container(shared: &Shared, cri: &CriClient, id: &str) -> Result<bool, MetadataError> {
    let Some(resp) = cri.container_status(id).await? else {
        return Ok(false);
    };
    let Some(meta) = cri::container_meta_from_status(id, &resp) else {
        bump(&shared.counters.unlabelled);
        return Ok(true);
    };
    let now = Instant::now();
    let mut store = shared.write();
    if store.pod(&meta.pod_uid, now).is_none() {
        // Enough to name the pod; its labels come with the next listing or the API.
        let pod = super::PodMeta {
            uid: meta.pod_uid.clone(),
            name: meta.pod_name.clone(),
            namespace: meta.namespace.clone(),
            owner: None,
            stopping: None,
            labels: None,
        };
        let inserted = store.put_pod_cri(pod, now);
        shared.stored(inserted);
    }
    let inserted = store.put_container(meta, Source::Cri, now);
    shared.stored(inserted);
    Ok(true)
}

/// Whether the runtime knows `id` as a sandbox.
async fn refresh_sandbox(shared: &Shared, cri: &CriClient, id: &str) -> Result<bool, MetadataError> {
    let Some(resp) = cri.sandbox_status(id).await? else {
        return Ok(false);
    };
    let parsed = cri::sandbox_from_status(&resp)
        .and_then(|s| Some((cri::pod_meta(&s)?, cri::sandbox_container(&s, Some(&resp))?)));
    let Some((pod, meta)) = parsed else {
        bump(&shared.counters.unlabelled);
        return Ok(true);
    };
    let now = Instant::now();
    let mut store = shared.write();
    let inserted = store.put_pod_cri(pod, now);
    shared.stored(inserted);
    let inserted = store.put_container(meta, Source::Cri, now);
    shared.stored(inserted);
    Ok(true)
}
