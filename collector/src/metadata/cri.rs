//! The CRI source: the container runtime's view of pods and containers over its
//! Unix socket (containerd or CRI-O), and the parsing of what it answers.
//!
//! The kubelet labels every sandbox and container with the pod's identity
//! (`io.kubernetes.pod.*`), so CRI alone names a container's pod. The pid is
//! only in the verbose status: `info["info"]` is a JSON document whose `pid`
//! both containerd and CRI-O fill while the container runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    Container, ContainerFilter, ContainerStatusRequest, ContainerStatusResponse, ListContainersRequest,
    ListPodSandboxRequest, PodSandbox, PodSandboxFilter, PodSandboxState, PodSandboxStatusRequest,
    PodSandboxStatusResponse, VersionRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::store::without_kubelet_labels;
use super::{ContainerMeta, ContainerState, MetadataError, PodMeta, RuntimeVersion};

/// Label with the pod's name, on sandboxes and containers.
pub(crate) const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
/// Label with the pod's namespace.
pub(crate) const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Label with the pod's UID.
pub(crate) const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
/// Label with the container's name in the pod spec.
pub(crate) const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";
/// The name the kubelet (and cAdvisor) give a pod's sandbox container.
pub const SANDBOX_CONTAINER_NAME: &str = "POD";

/// The labels the kubelet adds to a sandbox on top of the pod's own.
pub(crate) const KUBELET_POD_LABELS: [&str; 3] = [POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL];

/// Where containerd serves CRI.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Where CRI-O serves CRI.
pub const CRIO_SOCKET: &str = "/var/run/crio/crio.sock";

/// Large nodes list thousands of containers with their labels; tonic's 4 MiB default is tight.
const MAX_MESSAGE: usize = 64 << 20;

/// A pod's identity from the kubelet's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodIdentity {
    pub(crate) uid: String,
    pub(crate) name: String,
    pub(crate) namespace: String,
}

/// The identity the kubelet wrote into `labels`; `None` for objects the kubelet
/// did not make (a `ctr run`, another CRI client), or with an empty field.
pub(crate) fn pod_identity(labels: &HashMap<String, String>) -> Option<PodIdentity> {
    let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
    Some(PodIdentity { uid: get(POD_UID_LABEL)?, name: get(POD_NAME_LABEL)?, namespace: get(POD_NAMESPACE_LABEL)? })
}

/// What the verbose status's `info["info"]` JSON says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct VerboseInfo {
    /// The init process's host pid; `None` before start and after exit (reported as 0).
    pub(crate) pid: Option<u32>,
    /// The sandbox a container runs in (`sandboxID`).
    pub(crate) sandbox_id: Option<String>,
    /// The sandbox (pause) image, in containerd's sandbox info.
    pub(crate) image: Option<String>,
}

/// Parses the verbose info map; malformed or missing parts give `None` fields.
pub(crate) fn verbose_info(info: &HashMap<String, String>) -> VerboseInfo {
    let Some(doc) = info.get("info").and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()) else {
        return VerboseInfo::default();
    };
    let pid =
        doc.get("pid").and_then(serde_json::Value::as_u64).and_then(|p| u32::try_from(p).ok()).filter(|p| *p != 0);
    let sandbox_id =
        doc.get("sandboxID").and_then(serde_json::Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let image = doc.get("image").and_then(serde_json::Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    VerboseInfo { pid, sandbox_id, image }
}

fn container_state(raw: i32) -> ContainerState {
    match k8s_cri::v1::ContainerState::try_from(raw) {
        Ok(k8s_cri::v1::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(k8s_cri::v1::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(k8s_cri::v1::ContainerState::ContainerExited) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

/// A container from ListContainers, completed by its verbose status when there is one.
pub(crate) fn container_meta(c: &Container, status: Option<&ContainerStatusResponse>) -> Option<ContainerMeta> {
    let pod = pod_identity(&c.labels)?;
    let mut meta = ContainerMeta {
        container_id: c.id.clone(),
        container_name: container_name(&c.labels, c.metadata.as_ref().map(|m| m.name.as_str())),
        pod_uid: pod.uid,
        pod_name: pod.name,
        namespace: pod.namespace,
        restart_count: c.metadata.as_ref().map_or(0, |m| m.attempt),
        image: c.image.as_ref().map(|i| i.image.clone()).unwrap_or_default(),
        is_sandbox: false,
        pid: None,
        init_container: None,
        sandbox_id: Some(c.pod_sandbox_id.clone()).filter(|s| !s.is_empty()),
        state: container_state(c.state),
    };
    if let Some(status) = status {
        complete_from_status(&mut meta, status);
    }
    Some(meta)
}

/// A container from its verbose ContainerStatus alone (a targeted refresh).
pub(crate) fn container_meta_from_status(id: &str, resp: &ContainerStatusResponse) -> Option<ContainerMeta> {
    let status = resp.status.as_ref()?;
    let pod = pod_identity(&status.labels)?;
    let mut meta = ContainerMeta {
        container_id: id.to_owned(),
        container_name: container_name(&status.labels, status.metadata.as_ref().map(|m| m.name.as_str())),
        pod_uid: pod.uid,
        pod_name: pod.name,
        namespace: pod.namespace,
        restart_count: status.metadata.as_ref().map_or(0, |m| m.attempt),
        image: String::new(),
        is_sandbox: false,
        pid: None,
        init_container: None,
        sandbox_id: None,
        state: container_state(status.state),
    };
    complete_from_status(&mut meta, resp);
    Some(meta)
}

/// ContainerStatus names the image by a tag of it when the runtime has one
/// (ListContainers may give the image id instead), and its verbose info has the pid.
fn complete_from_status(meta: &mut ContainerMeta, resp: &ContainerStatusResponse) {
    if let Some(status) = &resp.status {
        if let Some(image) = status.image.as_ref().filter(|i| !i.image.is_empty()) {
            meta.image = image.image.clone();
        }
        meta.state = container_state(status.state);
    }
    let info = verbose_info(&resp.info);
    meta.pid = info.pid;
    meta.sandbox_id = meta.sandbox_id.take().or(info.sandbox_id);
}

fn container_name(labels: &HashMap<String, String>, metadata_name: Option<&str>) -> String {
    labels
        .get(CONTAINER_NAME_LABEL)
        .filter(|n| !n.is_empty())
        .map_or_else(|| metadata_name.unwrap_or_default().to_owned(), Clone::clone)
}

/// A pod from its sandbox: identity, and the pod's labels without the kubelet's.
pub(crate) fn pod_meta(sandbox: &PodSandbox) -> Option<PodMeta> {
    let id = pod_identity(&sandbox.labels)?;
    Some(PodMeta {
        uid: id.uid,
        name: id.name,
        namespace: id.namespace,
        owner: None,
        stopping: None,
        labels: Some(without_kubelet_labels(&sandbox.labels)),
    })
}

/// A sandbox as the container it also is (the pause container), with the pid
/// from its verbose status when there is one.
pub(crate) fn sandbox_container(
    sandbox: &PodSandbox,
    status: Option<&PodSandboxStatusResponse>,
) -> Option<ContainerMeta> {
    let pod = pod_identity(&sandbox.labels)?;
    let ready = sandbox.state == i32::from(PodSandboxState::SandboxReady);
    let info = status.map(|s| verbose_info(&s.info)).unwrap_or_default();
    Some(ContainerMeta {
        container_id: sandbox.id.clone(),
        container_name: SANDBOX_CONTAINER_NAME.to_owned(),
        pod_uid: pod.uid,
        pod_name: pod.name,
        namespace: pod.namespace,
        restart_count: sandbox.metadata.as_ref().map_or(0, |m| m.attempt),
        image: info.image.unwrap_or_default(),
        is_sandbox: true,
        // A stopped sandbox's info may still carry the pid of its dead pause process.
        pid: info.pid.filter(|_| ready),
        init_container: Some(false),
        sandbox_id: Some(sandbox.id.clone()),
        state: if ready { ContainerState::Running } else { ContainerState::Exited },
    })
}

/// The sandbox of a PodSandboxStatus answer, in ListPodSandbox's shape.
pub(crate) fn sandbox_from_status(resp: &PodSandboxStatusResponse) -> Option<PodSandbox> {
    let s = resp.status.as_ref()?;
    Some(PodSandbox {
        id: s.id.clone(),
        metadata: s.metadata.clone(),
        state: s.state,
        created_at: s.created_at,
        labels: s.labels.clone(),
        annotations: s.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    })
}

/// The socket to use: the explicit one, else the first runtime socket that exists.
pub(crate) fn detect_socket(candidates: &[&Path]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.exists()).map(|p| p.to_path_buf())
}

/// A CRI RuntimeService client on a Unix socket.
#[derive(Clone, Debug)]
pub(crate) struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    timeout: Duration,
}

impl CriClient {
    /// A client that connects on first use and reconnects after the runtime restarts.
    pub(crate) fn lazy(socket: &Path, timeout: Duration) -> Self {
        let socket = socket.to_path_buf();
        // The URI is never dialled: the connector always opens the Unix socket.
        let channel = Endpoint::from_static("http://cri.invalid").connect_timeout(timeout).connect_with_connector_lazy(
            tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
            }),
        );
        Self { runtime: RuntimeServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE), timeout }
    }

    async fn call<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<Option<T>, MetadataError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(resp)) => Ok(Some(resp.into_inner())),
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(None),
            Ok(Err(status)) => Err(MetadataError::Cri { call: what, source: Box::new(status) }),
            Err(_) => Err(MetadataError::CriTimeout { call: what, after: self.timeout }),
        }
    }

    /// Sandboxes, all or those of one pod UID.
    pub(crate) async fn list_sandboxes(&self, pod_uid: Option<&str>) -> Result<Vec<PodSandbox>, MetadataError> {
        let filter = pod_uid.map(|uid| PodSandboxFilter {
            label_selector: HashMap::from([(POD_UID_LABEL.to_owned(), uid.to_owned())]),
            ..Default::default()
        });
        let mut c = self.runtime.clone();
        let resp = self.call("ListPodSandbox", c.list_pod_sandbox(ListPodSandboxRequest { filter })).await?;
        Ok(resp.map(|r| r.items).unwrap_or_default())
    }

    /// Containers (not sandboxes), all or those of one pod UID.
    pub(crate) async fn list_containers(&self, pod_uid: Option<&str>) -> Result<Vec<Container>, MetadataError> {
        let filter = pod_uid.map(|uid| ContainerFilter {
            label_selector: HashMap::from([(POD_UID_LABEL.to_owned(), uid.to_owned())]),
            ..Default::default()
        });
        let mut c = self.runtime.clone();
        let resp = self.call("ListContainers", c.list_containers(ListContainersRequest { filter })).await?;
        Ok(resp.map(|r| r.containers).unwrap_or_default())
    }

    /// Verbose ContainerStatus; `None` when the runtime does not know the id.
    pub(crate) async fn container_status(&self, id: &str) -> Result<Option<ContainerStatusResponse>, MetadataError> {
        let mut c = self.runtime.clone();
        let req = ContainerStatusRequest { container_id: id.to_owned(), verbose: true };
        self.call("ContainerStatus", c.container_status(req)).await
    }

    /// The runtime's name and version. Unlike the lookups, a NotFound answer is an error here.
    pub(crate) async fn version(&self) -> Result<RuntimeVersion, MetadataError> {
        let mut c = self.runtime.clone();
        // The kubelet sends its own CRI version; runtimes answer with theirs whatever it is.
        let req = VersionRequest { version: "v1".to_owned() };
        match tokio::time::timeout(self.timeout, c.version(req)).await {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                Ok(RuntimeVersion {
                    name: resp.runtime_name,
                    version: resp.runtime_version,
                    api_version: resp.runtime_api_version,
                })
            }
            Ok(Err(status)) => Err(MetadataError::Cri { call: "Version", source: Box::new(status) }),
            Err(_) => Err(MetadataError::CriTimeout { call: "Version", after: self.timeout }),
        }
    }

    /// Verbose PodSandboxStatus; `None` when the runtime does not know the id.
    pub(crate) async fn sandbox_status(&self, id: &str) -> Result<Option<PodSandboxStatusResponse>, MetadataError> {
        let mut c = self.runtime.clone();
        let req = PodSandboxStatusRequest { pod_sandbox_id: id.to_owned(), verbose: true };
        self.call("PodSandboxStatus", c.pod_sandbox_status(req)).await
    }
}

#[cfg(test)]
#[path = "cri_tests.rs"]
mod tests;
