//! The Kubernetes API source: a watch on this node's pods (field selector
//! `spec.nodeName=NODE`) for what CRI does not know (owner, labels as the API
//! has them, which containers are init containers), and a second source of pod
//! identity and container ids when there is no CRI socket.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};

use super::store::Source;
use super::{ContainerMeta, ContainerState, MetadataConfig, MetadataError, Owner, PodMeta, PodStop, Shared, bump};

/// What one API pod tells the cache.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PodView {
    pub(crate) pod: PodMeta,
    pub(crate) init_containers: BTreeSet<String>,
    pub(crate) containers: Vec<ContainerMeta>,
}

/// The cache's view of an API pod; `None` without uid, name or namespace.
pub(crate) fn pod_view(p: &Pod) -> Option<PodView> {
    let m = &p.metadata;
    let uid = m.uid.clone().filter(|s| !s.is_empty())?;
    let name = m.name.clone().filter(|s| !s.is_empty())?;
    let namespace = m.namespace.clone().filter(|s| !s.is_empty())?;
    let refs = m.owner_references.as_deref().unwrap_or_default();
    let owner = refs
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| refs.first())
        .map(|o| Owner { kind: o.kind.clone(), name: o.name.clone() });
    let labels: BTreeMap<String, String> = m.labels.clone().unwrap_or_default();
    let init_containers: BTreeSet<String> =
        p.spec.iter().flat_map(|s| s.init_containers.iter().flatten()).map(|c| c.name.clone()).collect();
    let pod = PodMeta { uid, name, namespace, owner, labels: Some(labels), stopping: stopping(p) };
    let mut containers = Vec::new();
    if let Some(status) = &p.status {
        let groups = [
            (&status.container_statuses, false),
            (&status.init_container_statuses, true),
            (&status.ephemeral_container_statuses, false),
        ];
        for (list, init) in groups {
            for s in list.iter().flatten() {
                containers.extend(containers_of(&pod, s, init));
            }
        }
    }
    Some(PodView { pod, init_containers, containers })
}

/// Whether the pod is being stopped, and why: `deletionTimestamp`, and the `DisruptionTarget`
/// condition that eviction, preemption, the taint manager, pod GC and the kubelet's own
/// node-pressure eviction set before they stop a pod.
fn stopping(p: &Pod) -> Option<PodStop> {
    let deleted = p.metadata.deletion_timestamp.is_some();
    let disruption = p
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True");
    if !deleted && disruption.is_none() {
        return None;
    }
    let text = |s: Option<&String>| s.filter(|s| !s.is_empty()).cloned();
    Some(PodStop {
        deleted,
        reason: text(disruption.and_then(|c| c.reason.as_ref())),
        message: text(disruption.and_then(|c| c.message.as_ref())),
    })
}

/// The current container of a status and the one before it (`lastState`), so
/// that an exit racing a restart still names its container.
fn containers_of(pod: &PodMeta, s: &ContainerStatus, init: bool) -> Vec<ContainerMeta> {
    let restarts = u32::try_from(s.restart_count).unwrap_or(0);
    let meta = |id: &str, restart_count: u32, state: ContainerState| {
        Some(ContainerMeta {
            container_id: runtime_id(id)?.to_owned(),
            container_name: s.name.clone(),
            pod_uid: pod.uid.clone(),
            pod_name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            restart_count,
            image: s.image.clone(),
            is_sandbox: false,
            pid: None,
            init_container: Some(init),
            sandbox_id: None,
            state,
        })
    };
    let current_state = match &s.state {
        Some(st) if st.running.is_some() => ContainerState::Running,
        Some(st) if st.terminated.is_some() => ContainerState::Exited,
        Some(st) if st.waiting.is_some() => ContainerState::Created,
        _ => ContainerState::Unknown,
    };
    let mut out: Vec<ContainerMeta> =
        s.container_id.as_deref().and_then(|id| meta(id, restarts, current_state)).into_iter().collect();
    let previous = s.last_state.as_ref().and_then(|l| l.terminated.as_ref()).and_then(|t| t.container_id.as_deref());
    if let Some(prev) = previous
        && out.first().is_none_or(|c| Some(c.container_id.as_str()) != runtime_id(prev))
    {
        out.extend(meta(prev, restarts.saturating_sub(1), ContainerState::Exited));
    }
    out
}

/// `containerd://<id>` (or `cri-o://`, `docker://`) to `<id>`.
fn runtime_id(s: &str) -> Option<&str> {
    let (_, id) = s.split_once("://")?;
    (!id.is_empty()).then_some(id)
}

/// The daemon's API client, shared with the pod watch so that `--kubeconfig`
/// governs both.
#[derive(Clone)]
pub struct KubeClient(pub Client);

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeClient")
    }
}

/// Checks that the cluster answers and starts the watch.
/// An error means the API source stays off.
pub(super) async fn spawn(
    client: &KubeClient,
    node: &str,
    shared: Arc<Shared>,
    config: &MetadataConfig,
) -> Result<tokio::task::AbortHandle, MetadataError> {
    spawn_with(client.0.clone(), node, shared, config.call_timeout).await
}

/// [`spawn`] with a given client.
pub(crate) async fn spawn_with(
    client: Client,
    node: &str,
    shared: Arc<Shared>,
    timeout: std::time::Duration,
) -> Result<tokio::task::AbortHandle, MetadataError> {
    tokio::time::timeout(timeout, client.apiserver_version())
        .await
        .map_err(|_| MetadataError::KubeTimeout(timeout))?
        .map_err(|e| MetadataError::Kube(Box::new(e)))?;
    let api: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={node}");
    let stream = watcher(api, watcher::Config::default().fields(&selector)).default_backoff();
    let task = tokio::spawn(run(stream, shared));
    Ok(task.abort_handle())
}

/// Applies watch events to the store until the stream ends (never, unless aborted).
pub(crate) async fn run(stream: impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>>, shared: Arc<Shared>) {
    let mut stream = std::pin::pin!(stream);
    // The pods listed since the last (re)start of the watch; `None` outside a listing.
    let mut listing: Option<BTreeSet<String>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                bump(&shared.counters.kube_errors);
                tracing::debug!("metadata: pod watch: {e}");
                continue;
            }
        };
        bump(&shared.counters.kube_events);
        match event {
            watcher::Event::Init => listing = Some(BTreeSet::new()),
            watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                if let (Some(seen), Some(uid)) = (listing.as_mut(), p.metadata.uid.as_ref()) {
                    seen.insert(uid.clone());
                }
                apply(&shared, &p);
            }
            watcher::Event::Delete(p) => {
                if let Some(uid) = &p.metadata.uid {
                    shared.write().remove_pod_kube(uid, Instant::now());
                }
            }
            watcher::Event::InitDone => {
                // Deletions missed while the watch was down: whatever the relist lacks.
                if let Some(seen) = listing.take() {
                    let now = Instant::now();
                    let mut store = shared.write();
                    for uid in store.kube_pods() {
                        if !seen.contains(&uid) {
                            store.remove_pod_kube(&uid, now);
                        }
                    }
                }
            }
        }
    }
}

fn apply(shared: &Shared, p: &Pod) {
    let Some(view) = pod_view(p) else {
        bump(&shared.counters.unlabelled);
        return;
    };
    let now = Instant::now();
    let mut store = shared.write();
    let inserted = store.put_pod_kube(view.pod, view.init_containers, now);
    shared.stored(inserted);
    for c in view.containers {
        let inserted = store.put_container(c, Source::Kube, now);
        shared.stored(inserted);
    }
}

#[cfg(test)]
#[path = "kube_tests.rs"]
mod tests;
