//! Pod and container identity for every record.
//!
//! [`MetadataCache`] answers "which container, in which pod" from memory. It is
//! filled from the container runtime over CRI (a full listing at start, then a
//! targeted refresh when the daemon meets an unknown container or pod; there is
//! no polling loop) and, when a cluster is reachable, from a watch on this
//! node's pods in the Kubernetes API for owners and labels. Removed pods and
//! containers stay resolvable as tombstones for a while, so an exit that races
//! the removal of its container still gets a name.
//!
//! Lookups never wait: a miss returns `None` at once, and the caller decides
//! whether to spend up to `--metadata-wait` in [`MetadataCache::resolve_container`].

mod cri;
mod kube;
mod kubelet;
mod refresh;
mod store;
mod types;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::watch;

use self::cri::CriClient;
pub use self::cri::{CONTAINERD_SOCKET, CRIO_SOCKET, SANDBOX_CONTAINER_NAME};
pub use self::kube::KubeClient;
pub use self::kubelet::{KubeletWord, StoppedContainer};
use self::store::Store;
pub use self::types::{ContainerMeta, ContainerState, MetadataStats, PodMeta};
pub use crate::record::{Owner, PodStop};

/// Errors of the metadata sources.
#[derive(Debug, Error)]
pub enum MetadataError {
    /// An explicitly configured CRI socket does not exist.
    #[error("CRI socket {0} does not exist")]
    SocketMissing(PathBuf),
    /// A CRI call failed.
    #[error("CRI {call} failed")]
    Cri {
        /// The RPC.
        call: &'static str,
        /// What the runtime (or the transport) answered.
        #[source]
        source: Box<tonic::Status>,
    },
    /// A CRI call did not answer in time.
    #[error("CRI {call} timed out after {after:?}")]
    CriTimeout {
        /// The RPC.
        call: &'static str,
        /// The per-call timeout.
        after: Duration,
    },
    /// The operation needs CRI, which is off or was not found.
    #[error("no CRI runtime is configured")]
    CriOff,
    /// The Kubernetes client could not be set up or the API server not reached.
    #[error("Kubernetes API")]
    Kube(#[source] Box<::kube::Error>),
    /// The API server did not answer in time.
    #[error("Kubernetes API server did not answer within {0:?}")]
    KubeTimeout(Duration),
}

/// Which CRI socket to use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CriSocket {
    /// The first of [`CONTAINERD_SOCKET`] and [`CRIO_SOCKET`] that exists; none is fine.
    #[default]
    Auto,
    /// This socket; it must exist.
    Path(PathBuf),
    /// CRI is not used.
    Off,
}

impl FromStr for CriSocket {
    type Err = std::convert::Infallible;

    /// `auto` (or empty), `none`, or a socket path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "" | "auto" => Self::Auto,
            "none" => Self::Off,
            path => Self::Path(PathBuf::from(path)),
        })
    }
}

/// The socket `cri` designates: none when CRI is off or `auto` finds none; an
/// explicit socket that does not exist is an error.
pub fn find_cri_socket(cri: &CriSocket) -> Result<Option<PathBuf>, MetadataError> {
    match cri {
        CriSocket::Off => Ok(None),
        CriSocket::Auto => Ok(cri::detect_socket(&[Path::new(CONTAINERD_SOCKET), Path::new(CRIO_SOCKET)])),
        CriSocket::Path(p) if p.exists() => Ok(Some(p.clone())),
        CriSocket::Path(p) => Err(MetadataError::SocketMissing(p.clone())),
    }
}

/// What a container runtime says about itself (CRI `Version`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// `containerd`, `cri-o`.
    pub name: String,
    /// The runtime's own version, e.g. `1.6.20~ds1`.
    pub version: String,
    /// The CRI version it serves, e.g. `v1`.
    pub api_version: String,
}

/// Asks the runtime on `socket` for its name and version, within `timeout`.
pub async fn runtime_version(socket: &Path, timeout: Duration) -> Result<RuntimeVersion, MetadataError> {
    CriClient::lazy(socket, timeout).version().await
}

/// How the cache finds its sources and how much it keeps.
#[derive(Clone, Debug)]
pub struct MetadataConfig {
    /// The CRI socket.
    pub cri: CriSocket,
    /// This node's name; the API watch is off without it (watching every pod of
    /// the cluster is not this agent's business).
    pub node_name: Option<String>,
    /// The cluster whose API to watch for this node's pods; none leaves the watch off.
    pub kube: Option<KubeClient>,
    /// How long removed pods and containers still resolve.
    pub tombstone_ttl: Duration,
    /// Most pod entries kept, tombstones included.
    pub max_pods: usize,
    /// Most container entries kept, tombstones included.
    pub max_containers: usize,
    /// Bound on each CRI call and on reaching the API server.
    pub call_timeout: Duration,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            cri: CriSocket::Auto,
            node_name: None,
            kube: None,
            tombstone_ttl: Duration::from_secs(300),
            // The kubelet's default is 110 pods a node; this leaves room for churn.
            max_pods: 4096,
            max_containers: 16384,
            call_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    refreshes: AtomicU64,
    cri_errors: AtomicU64,
    kube_events: AtomicU64,
    kube_errors: AtomicU64,
    unlabelled: AtomicU64,
    dropped: AtomicU64,
    kubelet_said: AtomicU64,
    kubelet_silent: AtomicU64,
    kubelet_skipped: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The state shared by every clone of the cache and by the API watch task.
#[derive(Debug)]
struct Shared {
    store: RwLock<Store>,
    counters: Counters,
    cri: Option<CriClient>,
    cri_socket: Option<PathBuf>,
    /// Refreshes running now, so a burst of misses for one object costs one call.
    inflight: Mutex<HashMap<String, watch::Receiver<()>>>,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Store> {
        // The store's invariants hold between statements: a panic elsewhere cannot break them.
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn stored(&self, insert: store::Insert) {
        if insert == store::Insert::Full {
            bump(&self.counters.dropped);
        }
    }
}

/// Stops the API watch when the last clone of the cache is gone (the task
/// itself holds the shared state, so it cannot be the one to notice).
#[derive(Debug, Default)]
struct KubeTask(Mutex<Option<tokio::task::AbortHandle>>);

impl KubeTask {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::AbortHandle>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for KubeTask {
    fn drop(&mut self) {
        if let Some(task) = self.lock().take() {
            task.abort();
        }
    }
}

/// In-memory pod and container metadata; cheap to clone (clones share the cache).
#[derive(Clone, Debug)]
pub struct MetadataCache {
    shared: Arc<Shared>,
    kube: Arc<KubeTask>,
    /// The API client and its per-call timeout, once the pod watch runs: for the kubelet's
    /// word on a stop.
    api: Option<(KubeClient, Duration)>,
}

impl MetadataCache {
    /// Finds the sources, lists what CRI runs now, and starts the API watch.
    ///
    /// Only a missing explicit CRI socket is an error: a runtime that does not
    /// answer yet is counted in `cri_errors` and retried by later refreshes, and
    /// an unreachable cluster turns the API source off.
    pub async fn start(config: MetadataConfig) -> Result<Self, MetadataError> {
        let socket = find_cri_socket(&config.cri)?;
        let mut cache = Self::empty(&config, socket);
        if cache.shared.cri.is_some()
            && let Err(e) = cache.sync().await
        {
            tracing::warn!("metadata: initial CRI listing failed: {e} (will retry on demand)");
        }
        if let Some(client) = &config.kube {
            match &config.node_name {
                Some(node) => match kube::spawn(client, node, Arc::clone(&cache.shared), &config).await {
                    Ok(task) => {
                        *cache.kube.lock() = Some(task);
                        cache.api = Some((client.clone(), config.call_timeout));
                    }
                    Err(e) => tracing::info!("metadata: Kubernetes API source off: {e}"),
                },
                None => tracing::info!("metadata: Kubernetes API source off: no node name"),
            }
        }
        Ok(cache)
    }

    /// A cache without sources that holds `containers` (and their pods), for tests
    /// of the stages that read it.
    #[cfg(test)]
    pub(crate) fn holding(containers: Vec<ContainerMeta>, tombstone_ttl: Duration) -> Self {
        let cache = Self::empty(&MetadataConfig { cri: CriSocket::Off, tombstone_ttl, ..Default::default() }, None);
        let now = Instant::now();
        let mut store = cache.shared.write();
        for meta in containers {
            let _ = store.put_container(meta, store::Source::Cri, now);
        }
        drop(store);
        cache
    }

    /// This cache, also holding `pod` as the API server gave it, for tests.
    #[cfg(test)]
    pub(crate) fn with_api_pod(self, pod: PodMeta) -> Self {
        let _ = self.shared.write().put_pod_kube(pod, std::collections::BTreeSet::new(), Instant::now());
        self
    }

    /// A cache with sources resolved but nothing listed yet.
    fn empty(config: &MetadataConfig, socket: Option<PathBuf>) -> Self {
        let cri = socket.as_deref().map(|s| CriClient::lazy(s, config.call_timeout));
        Self {
            shared: Arc::new(Shared {
                store: RwLock::new(Store::new(config.max_pods, config.max_containers, config.tombstone_ttl)),
                counters: Counters::default(),
                cri,
                cri_socket: socket,
                inflight: Mutex::new(HashMap::new()),
            }),
            kube: Arc::new(KubeTask::default()),
            api: None,
        }
    }

    /// Counts a stop [`Self::kubelet_word`] was not asked about: too many were being asked about.
    pub fn kubelet_skipped(&self) {
        bump(&self.shared.counters.kubelet_skipped);
    }

    /// Whether [`Self::kubelet_word`] can ask the API server.
    pub fn reads_kubelet_events(&self) -> bool {
        self.api.is_some()
    }

    /// Why the kubelet stopped `stopped`, in its words (its `Killing` Event, and the failed
    /// probe's), asked of the API server for at most `wait`; none without the API, or when no
    /// such Event came.
    pub async fn kubelet_word(&self, stopped: &StoppedContainer, wait: Duration) -> Option<KubeletWord> {
        let (client, timeout) = self.api.as_ref()?;
        let counters = &self.shared.counters;
        match kubelet::kubelet_word(&client.0, stopped, wait, *timeout).await {
            Ok(Some(word)) => {
                bump(&counters.kubelet_said);
                Some(word)
            }
            Ok(None) => {
                bump(&counters.kubelet_silent);
                None
            }
            Err(e) => {
                bump(&counters.kubelet_silent);
                bump(&counters.kube_errors);
                tracing::debug!(
                    "metadata: the kubelet's Killing events of pod {} could not be listed: {}",
                    stopped.pod_uid,
                    crate::chain(&e)
                );
                None
            }
        }
    }

    /// The container with this runtime id (or sandbox id), from memory only. Not counted: a
    /// record may be looked up many times while it waits; [`Self::count_lookup`] counts it once.
    pub fn container(&self, container_id: &str) -> Option<ContainerMeta> {
        self.shared.read().container(container_id, Instant::now())
    }

    /// The pod with this UID, from memory only; not counted, as [`Self::container`].
    pub fn pod(&self, pod_uid: &str) -> Option<PodMeta> {
        self.shared.read().pod(pod_uid, Instant::now())
    }

    /// Counts one record's lookup (`collector_metadata_lookups_total{result}`): a hit if it
    /// went out named.
    pub fn count_lookup(&self, hit: bool) {
        bump(if hit { &self.shared.counters.hits } else { &self.shared.counters.misses });
    }

    /// Lists every sandbox and container over CRI and replaces what the cache
    /// believed CRI runs (also the initial fill).
    pub async fn sync(&self) -> Result<(), MetadataError> {
        let cri = self.shared.cri.as_ref().ok_or(MetadataError::CriOff)?;
        self.counted(refresh::sync(&self.shared, cri, None)).await
    }

    /// Asks CRI about one container or sandbox id now. A runtime that no longer
    /// knows the id turns a cached entry into a tombstone; the answer is then `None`
    /// unless the tombstone still resolves.
    pub async fn refresh_container(&self, container_id: &str) -> Result<Option<ContainerMeta>, MetadataError> {
        let cri = self.shared.cri.as_ref().ok_or(MetadataError::CriOff)?;
        let key = format!("c/{container_id}");
        let run = refresh::container(&self.shared, cri, container_id);
        self.single_flight(key, self.counted(run)).await?;
        Ok(self.shared.read().container(container_id, Instant::now()))
    }

    /// Asks CRI about one pod's sandboxes and containers now.
    pub async fn refresh_pod(&self, pod_uid: &str) -> Result<Option<PodMeta>, MetadataError> {
        let cri = self.shared.cri.as_ref().ok_or(MetadataError::CriOff)?;
        let key = format!("p/{pod_uid}");
        let run = refresh::sync(&self.shared, cri, Some(pod_uid));
        self.single_flight(key, self.counted(run)).await?;
        Ok(self.shared.read().pod(pod_uid, Instant::now()))
    }

    /// The container from memory, else (or while its pid is still unknown)
    /// refreshed from CRI until it resolves or `wait` is over.
    pub async fn resolve_container(&self, container_id: &str, wait: Duration) -> Option<ContainerMeta> {
        let complete =
            |m: &ContainerMeta| self.shared.cri.is_none() || m.pid.is_some() || m.state == ContainerState::Exited;
        let found = self.container(container_id);
        if found.as_ref().is_some_and(complete) || self.shared.cri.is_none() {
            return found;
        }
        let mut best = found;
        self.retry(wait, async || {
            if let Ok(Some(m)) = self.refresh_container(container_id).await {
                // A tombstone will not learn more from asking again.
                let done = complete(&m) || !self.shared.read().container_live(container_id);
                best = Some(m);
                done
            } else {
                false
            }
        })
        .await;
        best
    }

    /// The pod from memory, else refreshed from CRI until it resolves or `wait` is over.
    pub async fn resolve_pod(&self, pod_uid: &str, wait: Duration) -> Option<PodMeta> {
        if let Some(found) = self.pod(pod_uid) {
            return Some(found);
        }
        self.shared.cri.as_ref()?;
        let mut best = None;
        self.retry(wait, async || {
            best = self.refresh_pod(pod_uid).await.ok().flatten();
            best.is_some()
        })
        .await;
        best
    }

    /// Runs `attempt` until it says done or `wait` is over, backing off between
    /// tries: right after a cgroup appears the runtime may not have recorded the
    /// container yet.
    async fn retry(&self, wait: Duration, mut attempt: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(20);
        loop {
            if tokio::time::timeout_at(deadline, attempt()).await.unwrap_or(true) {
                return;
            }
            let now = tokio::time::Instant::now();
            if now + pause >= deadline {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Marks a container as gone (e.g. its cgroup was removed): it resolves for
    /// the tombstone ttl more.
    pub fn container_removed(&self, container_id: &str) {
        self.shared.write().remove_container(container_id, Instant::now());
    }

    /// Marks a pod and its containers as gone: they resolve for the tombstone ttl more.
    pub fn pod_removed(&self, pod_uid: &str) {
        self.shared.write().remove_pod(pod_uid, Instant::now());
    }

    /// Drops tombstones whose ttl is over (also done when a table fills up).
    pub fn purge(&self) {
        self.shared.write().purge(Instant::now());
    }

    /// The CRI socket in use, if any.
    pub fn cri_socket(&self) -> Option<&Path> {
        self.shared.cri_socket.as_deref()
    }

    /// Whether the Kubernetes API watch runs.
    pub fn kube_enabled(&self) -> bool {
        self.kube.lock().as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The counters now.
    pub fn stats(&self) -> MetadataStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let store = self.shared.read();
        MetadataStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            refreshes: get(&c.refreshes),
            cri_errors: get(&c.cri_errors),
            kube_events: get(&c.kube_events),
            kube_errors: get(&c.kube_errors),
            unlabelled: get(&c.unlabelled),
            dropped: get(&c.dropped),
            kubelet_said: get(&c.kubelet_said),
            kubelet_silent: get(&c.kubelet_silent),
            kubelet_skipped: get(&c.kubelet_skipped),
            expired: store.expired,
            pods: u64::try_from(store.pod_count()).unwrap_or(u64::MAX),
            containers: u64::try_from(store.container_count()).unwrap_or(u64::MAX),
        }
    }

    async fn counted(&self, run: impl Future<Output = Result<(), MetadataError>>) -> Result<(), MetadataError> {
        bump(&self.shared.counters.refreshes);
        let result = run.await;
        if result.is_err() {
            bump(&self.shared.counters.cri_errors);
        }
        result
    }

    /// Runs `run` unless a refresh with the same key is running; then waits for
    /// that one instead (its result is in the store when it ends).
    async fn single_flight(
        &self,
        key: String,
        run: impl Future<Output = Result<(), MetadataError>>,
    ) -> Result<(), MetadataError> {
        let leader = {
            let mut inflight = self.shared.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            match inflight.get(&key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(());
                    inflight.insert(key.clone(), rx);
                    Ok(tx)
                }
            }
        };
        match leader {
            Ok(tx) => {
                // Removes the key also when this future is dropped mid-call (a timeout).
                let _done = InflightGuard { shared: &self.shared, key, _tx: tx };
                run.await
            }
            Err(mut rx) => {
                // Ends when the leader drops its sender.
                let _ = rx.changed().await;
                Ok(())
            }
        }
    }
}

struct InflightGuard<'a> {
    shared: &'a Shared,
    key: String,
    _tx: watch::Sender<()>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.shared.inflight.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_socket_flag_values() {
        assert_eq!("auto".parse(), Ok(CriSocket::Auto));
        assert_eq!("none".parse(), Ok(CriSocket::Off));
        assert_eq!(
            "/run/k3s/containerd/containerd.sock".parse(),
            Ok(CriSocket::Path(PathBuf::from("/run/k3s/containerd/containerd.sock")))
        );
    }

    #[tokio::test]
    async fn a_missing_explicit_socket_is_an_error_and_none_turns_cri_off() {
        let missing = MetadataConfig {
            cri: CriSocket::Path(PathBuf::from("/nonexistent/cri.sock")),
            kube: None,
            ..Default::default()
        };
        assert!(matches!(
            MetadataCache::start(missing).await,
            Err(MetadataError::SocketMissing(p)) if p == Path::new("/nonexistent/cri.sock")
        ));
        let off = MetadataCache::start(MetadataConfig { cri: CriSocket::Off, kube: None, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(off.cri_socket(), None);
        assert_eq!(off.container("abc"), None);
        assert!(matches!(off.refresh_container("abc").await, Err(MetadataError::CriOff)));
        let start = Instant::now();
        assert_eq!(off.resolve_container("abc", Duration::from_secs(2)).await, None);
        assert!(start.elapsed() < Duration::from_millis(100), "no CRI, no wait");
        // Asking counts nothing: the identity stage counts each record once.
        assert_eq!((off.stats().hits, off.stats().misses), (0, 0));
    }

    #[tokio::test]
    async fn an_unanswering_runtime_is_counted_and_the_wait_is_bounded() {
        let dir = std::env::temp_dir().join(format!("meta-dead-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("cri.sock");
        let _ = std::fs::remove_file(&socket);
        // Bound but never accepting: connects hang or fail, like a stuck runtime.
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let cache = MetadataCache::start(MetadataConfig {
            cri: CriSocket::Path(socket.clone()),
            kube: None,
            call_timeout: Duration::from_millis(200),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(cache.stats().cri_errors >= 1);
        let start = Instant::now();
        assert_eq!(cache.resolve_container("abc", Duration::from_millis(300)).await, None);
        assert!(start.elapsed() < Duration::from_millis(600), "{:?}", start.elapsed());
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
