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

    /// Creates a namespace that is deleted (with everything in it) when the guard drops.
    pub fn namespace(&self, prefix: &str) -> Result<Namespace> {
        let name = format!("{prefix}-{:08x}", fastrand_u32());
        self.kubectl(&["create", "namespace", &name])?;
        Ok(Namespace { cluster: self.clone(), name })
    }
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
