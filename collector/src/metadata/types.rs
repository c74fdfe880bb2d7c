//! What the cache answers: containers, pods, and its counters.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::record::{Owner, PodStop};

/// Which container, in which pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerMeta {
    /// The runtime's container id (64 hex for containerd); the sandbox id for a sandbox.
    pub container_id: String,
    /// The name in the pod spec; [`SANDBOX_CONTAINER_NAME`](super::SANDBOX_CONTAINER_NAME) for the sandbox.
    pub container_name: String,
    /// The pod's UID.
    pub pod_uid: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// How often the kubelet restarted this container before (CRI's `attempt`).
    pub restart_count: u32,
    /// The image as the pod spec names it; empty when unknown (and for sandboxes).
    pub image: String,
    /// Whether this is the pod's sandbox (pause) container.
    pub is_sandbox: bool,
    /// The host pid of the container's init process, once the runtime reported it.
    pub pid: Option<u32>,
    /// Whether it is an init container; `None` until the API told us the pod spec.
    pub init_container: Option<bool>,
    /// The sandbox the container runs in, when known.
    pub sandbox_id: Option<String>,
    /// The state when last seen.
    pub state: ContainerState,
}

/// A container's state as the runtime last reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running (a sandbox that is ready).
    Running,
    /// Exited (a sandbox that is not ready).
    Exited,
    /// The runtime does not say.
    Unknown,
}

/// A pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    /// The pod's UID.
    pub uid: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// The controller owner reference, when the API was watched.
    pub owner: Option<Owner>,
    /// `metadata.labels`, from the API or else the sandbox's labels; `None` when unknown.
    pub labels: Option<BTreeMap<String, String>>,
    /// Whether and why the pod is being stopped, as its API object says; none while it runs (or without the API).
    pub stopping: Option<PodStop>,
}

/// Counters of the cache, for the daemon's summary and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetadataStats {
    /// Lookups answered from memory.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Targeted CRI refreshes and full listings run.
    pub refreshes: u64,
    /// CRI calls that failed or timed out.
    pub cri_errors: u64,
    /// Pod events from the API watch.
    pub kube_events: u64,
    /// API watch errors (the watch retries with backoff).
    pub kube_errors: u64,
    /// Objects without the kubelet's labels, or API pods without a UID: skipped.
    pub unlabelled: u64,
    /// Entries dropped because their table was full of live entries.
    pub dropped: u64,
    /// Stops of a container in a living pod explained by the kubelet's `Killing` Event.
    pub kubelet_said: u64,
    /// Such stops for which no `Killing` Event came in time, or the list failed.
    pub kubelet_silent: u64,
    /// Such stops not asked about because too many were being asked about already.
    pub kubelet_skipped: u64,
    /// Tombstones dropped (ttl over, or room needed).
    pub expired: u64,
    /// Pod entries held now, tombstones included.
    pub pods: u64,
    /// Container entries held now, tombstones included.
    pub containers: u64,
}
