//! The real single-node cluster of `cargo xtask cluster up`, driven with
//! `kubectl` as an operator would, and RAII guards for what a test installs.
//!
//! `cargo xtask test` brings the cluster up and sets `COLLECTOR_TEST_KUBECONFIG`;
//! without it the admin kubeconfig in `target/cluster/` is used if present.
//! Missing in CI is a failure, never a skip.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The node `cargo xtask cluster up` registers.
pub const NODE_NAME: &str = "collector-test-node";

/// A handle on the test cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    kubeconfig: PathBuf,
}

impl Cluster {
    /// The running cluster, or `None` (after saying why) on a developer's machine without one.
    pub fn find(test: &str) -> Option<Self> {
        let kubeconfig = std::env::var_os("COLLECTOR_TEST_KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/cluster/kubeconfig"));
        if kubeconfig.is_file() {
            return Some(Self { kubeconfig });
        }
        let why = format!("no test cluster ({} is missing): run `cargo xtask cluster up`", kubeconfig.display());
        assert!(std::env::var_os("CI").is_none(), "{test}: CI must run the cluster tests, but {why}");
        eprintln!("{test}: skipped: {why}");
        None
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// `kubectl ARGS` against the cluster as its admin; stdout, or an error with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// `kubectl ARGS` with `stdin` as its standard input (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut command = Command::new("kubectl");
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().context("cannot run kubectl")?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            std::io::Write::write_all(&mut pipe, text.as_bytes()).context("writing kubectl's stdin")?;
        }
        let out = child.wait_with_output().context("waiting for kubectl")?;
        if !out.status.success() {
            bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let text = self.kubectl(&args)?;
        serde_json::from_str(&text).with_context(|| format!("kubectl {} printed no JSON", args.join(" ")))
    }

    /// Polls `probe` every 250 ms until it gives `Some`, for at most `timeout`.
    pub fn wait<T>(&self, what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            match probe() {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(err) => last = format!(" (last error: {err:#})"),
            }
            if Instant::now() >= deadline {
                bail!("{what}: not within {timeout:?}{last}");
            }
            sleep(Duration::from_millis(250));
        }
    }

    /// The Events whose involved object is `kind/name` in `namespace`.
    pub fn events_for(&self, namespace: &str, kind: &str, name: &str) -> Result<Vec<Value>> {
        let selector = format!("involvedObject.kind={kind},involvedObject.name={name}");
        let list = self.json(&["get", "events", "-n", namespace, "--field-selector", &selector])?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Applies the pod `manifest` and returns pod `namespace/name` once it is Ready.
    pub fn run_pod(&self, manifest: &str, namespace: &str, name: &str) -> Result<Value> {
        self.kubectl_stdin(&["apply", "-f", "-"], Some(manifest))?;
        self.kubectl(&["-n", namespace, "wait", "--for=condition=Ready", &format!("pod/{name}"), "--timeout=120s"])?;
        self.json(&["-n", namespace, "get", "pod", name])
    }

    /// Waits up to `timeout` for an Event of `reason` on the pod and returns it; more than one
    /// is an error.
    pub fn one_event(&self, namespace: &str, pod: &str, reason: &str, timeout: Duration) -> Result<Value> {
        self.wait(&format!("a {reason} Event on pod {namespace}/{pod}"), timeout, || {
            let events = self.events_for(namespace, "Pod", pod)?;
            let matching: Vec<Value> = events.into_iter().filter(|e| e["reason"] == reason).collect();
            match matching.as_slice() {
                [] => Ok(None),
                [one] => Ok(Some(one.clone())),
                many => bail!("{} {reason} Events, expected one: {many:?}", many.len()),
            }
        })
    }

    /// The Node's condition of `kind`, as the API server has it, once `ready` holds for it.
    pub fn node_condition(&self, kind: &str, timeout: Duration, ready: impl Fn(&Value) -> bool) -> Result<Value> {
        self.wait(&format!("the Node's {kind} condition"), timeout, || {
            let node = self.json(&["get", "node", NODE_NAME])?;
            let conditions = node["status"]["conditions"].as_array().cloned().unwrap_or_default();
            Ok(conditions.into_iter().find(|c| c["type"] == kind && ready(c)))
        })
    }

    /// `/metrics` of the DaemonSet's pod, through the API server's proxy to its metrics port
    /// (by number: the pod proxy panics on a port name in v1.34).
    pub fn daemon_metrics(&self) -> Result<String> {
        let pods = self.json(&["-n", "collector", "get", "pods", "-l", "app.kubernetes.io/name=collector"])?;
        let name = pods["items"][0]["metadata"]["name"].as_str().context("no collector pod")?.to_owned();
        self.kubectl(&["get", "--raw", &format!("/api/v1/namespaces/collector/pods/{name}:9835/proxy/metrics")])
    }

    /// Creates a namespace that is deleted (with everything in it) when the guard drops.
    pub fn namespace(&self, prefix: &str) -> Result<Namespace> {
        let name = format!("{prefix}-{:08x}", fastrand_u32());
        self.kubectl(&["create", "namespace", &name])?;
        Ok(Namespace { cluster: self.clone(), name })
    }
}

/// The host pid of the pod's first container's main process, from its cgroup in the v2 tree.
pub fn main_pid(pod: &Value) -> Result<u32> {
    let id = pod["status"]["containerStatuses"][0]["containerID"].as_str().context("no containerID")?;
    let id = id.strip_prefix("containerd://").context("not a containerd id")?;
    let qos = pod["status"]["qosClass"].as_str().context("no qosClass")?.to_lowercase();
    let uid = pod["metadata"]["uid"].as_str().context("no uid")?;
    let parent = if qos == "guaranteed" { String::new() } else { format!("/{qos}") };
    let procs = format!("/sys/fs/cgroup/unified/kubepods{parent}/pod{uid}/{id}/cgroup.procs");
    let text = std::fs::read_to_string(&procs).with_context(|| format!("reading {procs}"))?;
    let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    match pids.as_slice() {
        [pid] => Ok(*pid),
        other => bail!("{procs} lists {other:?}, expected the main process alone"),
    }
}

/// Asserts the involved object, source and type every collector Warning on a container has.
pub fn assert_pod_event(event: &Value, pod: &Value, container: &str) {
    let object = &event["involvedObject"];
    assert_eq!(object["kind"], "Pod", "{event}");
    assert_eq!(object["name"], pod["metadata"]["name"], "{event}");
    assert_eq!(object["namespace"], pod["metadata"]["namespace"], "{event}");
    assert_eq!(object["uid"], pod["metadata"]["uid"], "{event}");
    assert_eq!(object["fieldPath"], format!("spec.containers{{{container}}}"), "{event}");
    assert_eq!(event["source"]["component"], "collector", "{event}");
    assert_eq!(event["source"]["host"], NODE_NAME, "{event}");
    assert_eq!(event["type"], "Warning", "{event}");
}

/// The value of the series whose line starts with `series ` in an exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A namespace that a test made; deleted on drop, also when the test fails.
#[derive(Debug)]
pub struct Namespace {
    cluster: Cluster,
    /// Its name.
    pub name: String,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(err) = self.cluster.kubectl(&["delete", "namespace", &self.name, "--wait=false"]) {
            eprintln!("cleanup: cannot delete namespace {}: {err:#}", self.name);
        }
    }
}

/// `kubectl apply -k DIR` on creation and `kubectl delete -k DIR` on drop.
#[derive(Debug)]
pub struct Applied {
    cluster: Cluster,
    dir: PathBuf,
}

impl Applied {
    /// Applies the kustomization in `dir`.
    pub fn kustomization(cluster: &Cluster, dir: PathBuf) -> Result<Self> {
        let shown = dir.display().to_string();
        cluster.kubectl(&["apply", "-k", &shown])?;
        Ok(Self { cluster: cluster.clone(), dir })
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        let shown = self.dir.display().to_string();
        if let Err(err) = self.cluster.kubectl(&["delete", "-k", &shown, "--wait=true", "--timeout=60s"]) {
            eprintln!("cleanup: cannot delete {shown}: {err:#}");
        }
    }
}

fn fastrand_u32() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}
