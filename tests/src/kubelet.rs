//! The kubelet's side of CRI for tests: host-network pods with kubelet labels and a
//! cgroup parent, containers with the kubelet's labels and memory limits, exit codes.

use std::collections::HashMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};

use crate::cgroupfs;
use crate::cri::Cri;
use crate::image::BUSYBOX_IMAGE;

/// How often ContainerStatus is polled while waiting for an exit.
const POLL: Duration = Duration::from_millis(20);

/// The pod the kubelet would run: metadata and the cgroup parent for its QoS class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name (`metadata.name`).
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod UID (a UUID in Kubernetes).
    pub uid: String,
    /// The pod's cgroup, e.g. `/kubepods/burstable/pod<uid>`.
    pub cgroup_parent: String,
    /// `shareProcessNamespace`: one pid namespace for the pod, whose PID 1 is the sandbox.
    pub share_process_namespace: bool,
    /// The pod's own labels (`metadata.labels`), which the kubelet copies onto the sandbox.
    pub labels: Vec<(String, String)>,
}

impl PodSpec {
    /// A burstable pod with a name and UID unique to this process and call, so tests
    /// can run in parallel: name `<prefix>-<pid>-<n>`, namespace `collector-test`,
    /// cgroup parent `/kubepods/burstable/pod<uid>` (kubelet's cgroupfs layout).
    pub fn unique(prefix: &str) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let uid = random_uuid();
        Self {
            name: format!("{prefix}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)),
            namespace: "collector-test".to_owned(),
            cgroup_parent: format!("/kubepods/burstable/pod{uid}"),
            uid,
            share_process_namespace: false,
            labels: Vec::new(),
        }
    }
}

/// A running pod sandbox.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The sandbox id containerd chose (64 hex).
    pub id: String,
    /// What the pod was made from.
    pub spec: PodSpec,
    pub(crate) config: PodSandboxConfig,
    pub(crate) log_dir: PathBuf,
}

impl Pod {
    /// The pod's cgroup (its cgroup parent).
    pub fn cgroup(&self) -> &str {
        &self.spec.cgroup_parent
    }

    /// The sandbox container's cgroup: `<cgroup_parent>/<sandbox id>`.
    pub fn sandbox_cgroup(&self) -> String {
        format!("{}/{}", self.spec.cgroup_parent, self.id)
    }

    /// Limits the whole pod's memory, as the kubelet does on the pod cgroup; set it
    /// before starting the containers it should constrain.
    pub fn set_memory_limit(&self, bytes: u64) -> Result<()> {
        cgroupfs::set_memory_limit(&self.spec.cgroup_parent, bytes)
    }
}

/// A container to create in a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name in the pod spec.
    pub name: String,
    /// Command line; replaces the image's, e.g. `["sh", "-c", "exit 3"]`.
    pub command: Vec<String>,
    /// The container's memory limit (`resources.limits.memory`).
    pub memory_limit_bytes: Option<u64>,
    /// Host directories bind-mounted read-write: (host path, path in the container).
    pub mounts: Vec<(PathBuf, String)>,
}

impl ContainerSpec {
    /// A container named `name` running `sh -c script`, without limits.
    pub fn shell(name: &str, script: &str) -> Self {
        Self {
            name: name.to_owned(),
            command: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
            memory_limit_bytes: None,
            mounts: Vec::new(),
        }
    }
}

/// A created container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Container id (64 hex).
    pub id: String,
    /// Container name in the pod spec.
    pub name: String,
    /// The sandbox it runs in.
    pub pod_id: String,
    /// Its cgroup in every hierarchy: `<cgroup_parent>/<container id>`.
    pub cgroup: String,
    log_path: PathBuf,
}

/// What ContainerStatus says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// CREATED, RUNNING, EXITED or UNKNOWN.
    pub state: ContainerState,
    /// Exit code once exited (128+signal when killed by a signal).
    pub exit_code: i32,
    /// The runtime's reason once exited: `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// The init process's host pid while it runs.
    pub pid: Option<u32>,
}

impl Cri {
    /// Runs a host-network pod sandbox with the kubelet's labels, like RunPodSandbox from
    /// the kubelet; it is stopped and removed when the [`crate::containerd::Containerd`] guard
    /// drops, unless [`Cri::remove_pod`] removed it before.
    pub fn run_pod(&self, spec: PodSpec) -> Result<Pod> {
        let log_dir = self.log_root.join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        let mut labels: HashMap<String, String> = spec.labels.iter().cloned().collect();
        labels.extend([
            ("io.kubernetes.pod.name".to_owned(), spec.name.clone()),
            ("io.kubernetes.pod.namespace".to_owned(), spec.namespace.clone()),
            ("io.kubernetes.pod.uid".to_owned(), spec.uid.clone()),
        ]);
        let annotations = HashMap::from([
            ("kubernetes.io/config.source".to_owned(), "api".to_owned()),
            ("kubernetes.io/config.seen".to_owned(), "2024-01-01T00:00:00Z".to_owned()),
        ]);
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: log_dir.display().to_string(),
            labels,
            annotations,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: spec.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network(spec.share_process_namespace)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Some(record) = &self.record {
            append_line(record, &spec.cgroup_parent)?;
        }
        let mut c = self.runtime.clone();
        let req = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        let id = {
            let _creating = cgroupfs::KubepodsLock::acquire(false);
            self.call(async move { c.run_pod_sandbox(req).await })
                .with_context(|| format!("RunPodSandbox {}", spec.name))?
                .pod_sandbox_id
        };
        let pod = Pod { id, spec, config, log_dir };
        self.tracked().push(pod.clone());
        Ok(pod)
    }

    /// Creates a container in `pod` with the kubelet's labels and the memory limit in
    /// its linux resources; it is not started.
    pub fn create_container(&self, pod: &Pod, spec: ContainerSpec) -> Result<Container> {
        let log_rel = format!("{}/0.log", spec.name);
        let log_path = pod.log_dir.join(&log_rel);
        if let Some(dir) = log_path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_owned(), pod.spec.name.clone()),
            ("io.kubernetes.pod.namespace".to_owned(), pod.spec.namespace.clone()),
            ("io.kubernetes.pod.uid".to_owned(), pod.spec.uid.clone()),
            ("io.kubernetes.container.name".to_owned(), spec.name.clone()),
        ]);
        let annotations = HashMap::from([
            ("io.kubernetes.container.restartCount".to_owned(), "0".to_owned()),
            ("io.kubernetes.container.terminationMessagePath".to_owned(), "/dev/termination-log".to_owned()),
            ("io.kubernetes.container.terminationMessagePolicy".to_owned(), "File".to_owned()),
        ]);
        let memory_limit_in_bytes = match spec.memory_limit_bytes {
            Some(b) => i64::try_from(b).context("memory limit above i64::MAX")?,
            None => 0,
        };
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: spec.name.clone(), attempt: 0 }),
            image: Some(ImageSpec { image: BUSYBOX_IMAGE.to_owned(), ..Default::default() }),
            command: spec.command,
            labels,
            annotations,
            log_path: log_rel,
            mounts: spec
                .mounts
                .iter()
                .map(|(host, container)| Mount {
                    container_path: container.clone(),
                    host_path: host.display().to_string(),
                    ..Default::default()
                })
                .collect(),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources { memory_limit_in_bytes, ..Default::default() }),
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_network(pod.spec.share_process_namespace)),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let mut c = self.runtime.clone();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let id = self
            .call(async move { c.create_container(req).await })
            .with_context(|| format!("CreateContainer {} in {}", spec.name, pod.spec.name))?
            .container_id;
        Ok(Container {
            cgroup: format!("{}/{id}", pod.spec.cgroup_parent),
            id,
            name: spec.name,
            pod_id: pod.id.clone(),
            log_path,
        })
    }

    /// Starts a created container; its process runs when this returns.
    pub fn start_container(&self, container: &Container) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = StartContainerRequest { container_id: container.id.clone() };
        let _creating = cgroupfs::KubepodsLock::acquire(false);
        self.call(async move { c.start_container(req).await })
            .with_context(|| format!("StartContainer {}", container.name))?;
        Ok(())
    }

    /// Creates and starts a container, as the kubelet does for each container of a pod.
    pub fn create_and_start(&self, pod: &Pod, spec: ContainerSpec) -> Result<Container> {
        let container = self.create_container(pod, spec)?;
        self.start_container(&container)?;
        Ok(container)
    }

    /// ContainerStatus, with the init pid from the verbose info.
    pub fn status(&self, container: &Container) -> Result<Status> {
        let mut c = self.runtime.clone();
        let req = ContainerStatusRequest { container_id: container.id.clone(), verbose: true };
        let resp = self
            .call(async move { c.container_status(req).await })
            .with_context(|| format!("ContainerStatus {}", container.name))?;
        let status = resp.status.ok_or_else(|| anyhow!("ContainerStatus without status"))?;
        let pid = resp
            .info
            .get("info")
            .and_then(|info| serde_json::from_str::<serde_json::Value>(info).ok())
            .and_then(|v| v.get("pid").and_then(serde_json::Value::as_u64))
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0);
        Ok(Status {
            state: ContainerState::try_from(status.state).unwrap_or(ContainerState::ContainerUnknown),
            exit_code: status.exit_code,
            reason: status.reason,
            pid,
        })
    }

    /// The host pid of the container's init process while it runs.
    pub fn container_pid(&self, container: &Container) -> Result<u32> {
        let status = self.status(container)?;
        status.pid.ok_or_else(|| anyhow!("container {} has no pid (state {:?})", container.name, status.state))
    }

    /// Runs a container named `name` in `pod` whose shell exits with `code`, and waits for that
    /// exit: an error unless it ends with exactly `code` within `timeout`.
    pub fn exit_with(&self, pod: &Pod, name: &str, code: u32, timeout: Duration) -> Result<()> {
        let container = self.create_and_start(pod, ContainerSpec::shell(name, &format!("exit {code}")))?;
        let status = self.wait_exit(&container, timeout)?;
        if i64::from(status) != i64::from(code) {
            bail!("container {name} exited with {status}, not {code}");
        }
        Ok(())
    }

    /// Polls ContainerStatus until the container has exited and returns its exit code.
    pub fn wait_exit(&self, container: &Container, timeout: Duration) -> Result<i32> {
        Ok(self.wait_exit_status(container, timeout)?.exit_code)
    }

    /// Polls ContainerStatus until the container has exited and returns the whole status.
    pub fn wait_exit_status(&self, container: &Container, timeout: Duration) -> Result<Status> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(container)?;
            if status.state == ContainerState::ContainerExited {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("container {} still {:?} after {timeout:?}", container.name, status.state);
            }
            std::thread::sleep(POLL);
        }
    }

    /// What the container wrote to stdout and stderr, in CRI log format.
    pub fn container_log(&self, container: &Container) -> Result<String> {
        let mut text = String::new();
        fs::File::open(&container.log_path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("reading {}", container.log_path.display()))?;
        Ok(text)
    }

    /// StopContainer: SIGTERM, then SIGKILL after `grace`.
    pub fn stop_container(&self, container: &Container, grace: Duration) -> Result<()> {
        let mut c = self.runtime.clone();
        let timeout = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let req = StopContainerRequest { container_id: container.id.clone(), timeout };
        self.call(async move { c.stop_container(req).await })
            .with_context(|| format!("StopContainer {}", container.name))?;
        Ok(())
    }

    /// RemoveContainer (kills it first if it still runs).
    pub fn remove_container(&self, container: &Container) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = RemoveContainerRequest { container_id: container.id.clone() };
        self.call(async move { c.remove_container(req).await })
            .with_context(|| format!("RemoveContainer {}", container.name))?;
        Ok(())
    }

    /// StopPodSandbox: kills every container of the pod and its sandbox.
    pub fn stop_pod(&self, pod: &Pod) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() };
        self.call(async move { c.stop_pod_sandbox(req).await })
            .with_context(|| format!("StopPodSandbox {}", pod.spec.name))?;
        Ok(())
    }

    /// Stops and removes the pod with its containers, then removes its cgroup dirs.
    pub fn remove_pod(&self, pod: &Pod) -> Result<()> {
        self.stop_pod(pod)?;
        let mut c = self.runtime.clone();
        let req = RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() };
        self.call(async move { c.remove_pod_sandbox(req).await })
            .with_context(|| format!("RemovePodSandbox {}", pod.spec.name))?;
        self.tracked().retain(|p| p.id != pod.id);
        let failed = cgroupfs::remove_pod_tree(&pod.spec.cgroup_parent);
        if !failed.is_empty() {
            bail!("cgroup dirs left behind: {failed:?}");
        }
        Ok(())
    }

    /// Stops and removes every pod this client made and still tracks; returns what
    /// failed. The pods' cgroup dirs are left to the caller.
    pub(crate) fn remove_all_pods(&self) -> Vec<String> {
        let pods: Vec<Pod> = std::mem::take(&mut *self.tracked());
        let mut failed = Vec::new();
        for pod in pods {
            let mut c = self.runtime.clone();
            let stop = StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() };
            if let Err(e) = self.call(async move { c.stop_pod_sandbox(stop).await }) {
                failed.push(format!("StopPodSandbox {}: {e:#}", pod.spec.name));
            }
            let mut c = self.runtime.clone();
            let remove = RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() };
            if let Err(e) = self.call(async move { c.remove_pod_sandbox(remove).await }) {
                failed.push(format!("RemovePodSandbox {}: {e:#}", pod.spec.name));
            }
        }
        failed
    }
}

/// Host network, a pid namespace per container (or the pod's, if `shared_pid`), the pod's IPC
/// namespace: the kubelet's choice for a `hostNetwork: true` pod.
fn host_network(shared_pid: bool) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node.into(),
        pid: if shared_pid { NamespaceMode::Pod } else { NamespaceMode::Container }.into(),
        ipc: NamespaceMode::Pod.into(),
        ..Default::default()
    }
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))
}

/// A random version-4 UUID, like the pod UIDs the API server assigns.
fn random_uuid() -> String {
    let mut b = [0u8; 16];
    let filled = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if filled.is_err() {
        // Uniqueness within this machine is all that matters; fall back to time and pid.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mix = nanos ^ (u128::from(std::process::id()) << 64) ^ u128::from(SEQ.fetch_add(1, Ordering::Relaxed));
        b = mix.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_pods_differ_and_use_the_cgroupfs_layout() {
        let a = PodSpec::unique("t");
        let b = PodSpec::unique("t");
        assert_ne!(a.name, b.name);
        assert_ne!(a.uid, b.uid);
        assert_eq!(a.cgroup_parent, format!("/kubepods/burstable/pod{}", a.uid));
        assert_eq!(a.uid.len(), 36);
        assert_eq!(a.uid.as_bytes()[14], b'4');
    }
}
