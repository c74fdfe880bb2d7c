//! A private containerd 1.6 per test, run as a child process with its own root, state,
//! sockets and runc root under one short temp dir, and torn down on drop.
//!
//! Dropping the guard (also while a test panics) removes the pods it ran, stops
//! containerd and its shims, removes the pods' `/kubepods/...` cgroup dirs in every
//! hierarchy (rmdir only) and deletes the temp dir. A test process killed outright
//! leaves its dir behind; the next [`Containerd::start`] cleans those up.

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use sha2::{Digest as _, Sha256};

use crate::cgroupfs;
use crate::cri::Cri;
use crate::image;

/// Parent of every instance's dir; short because Unix socket paths are limited to 108 bytes.
const TMP_PREFIX: &str = "/tmp/ctrd-";
/// Bound on containerd coming up, generous for a loaded 2-core CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on CRI noticing the imported image.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long containerd gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// The file listing the cgroup of every pod this instance made, for stale cleanup.
const PODS_RECORD: &str = "pods";

/// A running private containerd with CRI and the busybox image imported.
#[derive(Debug)]
pub struct Containerd {
    cri: Cri,
    instance: Instance,
}

/// The process and its dir; owns cleanup from the moment the dir exists, so a failed
/// start cleans up too.
#[derive(Debug)]
struct Instance {
    dir: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd, waits for CRI readiness, imports busybox as
    /// [`image::BUSYBOX_IMAGE`] and waits until CRI sees it.
    pub fn start() -> Result<Self> {
        remove_stale_instances();
        let mut instance = Instance { dir: make_instance_dir()?, child: None };
        let dir = instance.dir.clone();
        for sub in ["root", "state", "runc", "cni-bin", "cni-conf", "logs"] {
            let p = dir.join(sub);
            fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        let config = dir.join("config.toml");
        fs::write(&config, config_toml(&dir)).context("writing containerd config")?;
        let log = fs::File::create(log_path(&dir)).context("creating containerd log")?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating log fd")?)
            .stderr(log)
            .spawn()
            .context("spawning containerd (Debian package containerd)")?;
        instance.child = Some(child);

        let address = address(&dir);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !address.exists() {
            instance.check_alive()?;
            if Instant::now() >= deadline {
                bail!("containerd socket missing after {READY_TIMEOUT:?}\n{}", log_tail(&dir));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let with_log = |e: anyhow::Error| anyhow!("{e:#}\n{}", log_tail(&dir));
        let cri = Cri::connect(
            &address,
            dir.join("logs"),
            Some(dir.join(PODS_RECORD)),
            deadline.saturating_duration_since(Instant::now()),
        )
        .map_err(with_log)?;
        image::import_busybox(&address).map_err(with_log)?;
        cri.wait_image(image::BUSYBOX_IMAGE, IMAGE_TIMEOUT).map_err(with_log)?;
        Ok(Self { cri, instance })
    }

    /// The CRI client acting as this node's kubelet.
    pub fn cri(&self) -> &Cri {
        &self.cri
    }

    /// The containerd gRPC socket (also serves CRI), for `ctr --address`.
    pub fn address(&self) -> PathBuf {
        address(&self.instance.dir)
    }

    /// The instance's temp dir (config, root, state, logs).
    pub fn dir(&self) -> &Path {
        &self.instance.dir
    }

    /// containerd's pid.
    pub fn pid(&self) -> Option<u32> {
        self.instance.child.as_ref().map(Child::id)
    }

    /// The last lines containerd logged.
    pub fn log_tail(&self) -> String {
        log_tail(&self.instance.dir)
    }

    /// Tears everything down now and reports what could not be cleaned up.
    pub fn shutdown(mut self) -> Result<()> {
        let failed = self.teardown();
        if failed.is_empty() { Ok(()) } else { Err(anyhow!("containerd cleanup left: {failed:#?}")) }
    }

    /// Idempotent; returns descriptions of what it failed to remove.
    fn teardown(&mut self) -> Vec<String> {
        let mut failed = self.cri.remove_all_pods();
        failed.extend(self.instance.teardown());
        failed
    }
}

impl Instance {
    fn check_alive(&mut self) -> Result<()> {
        let exited = match self.child.as_mut() {
            Some(c) => c.try_wait().context("polling containerd")?,
            None => None,
        };
        match exited {
            Some(status) => bail!("containerd exited early ({status})\n{}", log_tail(&self.dir)),
            None => Ok(()),
        }
    }

    /// Idempotent: stops containerd and its shims, removes the recorded pods' cgroup
    /// dirs and the instance dir.
    fn teardown(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        kill_processes_using(&self.dir);
        remove_shim_sockets(&self.dir);
        for cg in recorded_cgroups(&self.dir) {
            failed.extend(cgroupfs::remove_pod_tree(&cg));
        }
        if let Err(e) = remove_instance_dir(&self.dir) {
            failed.push(format!("{}: {e:#}", self.dir.display()));
        }
        failed
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let failed = self.teardown();
        if !failed.is_empty() {
            report(&format!("containerd harness cleanup left: {failed:#?}"));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let failed = self.cri.remove_all_pods();
        if !failed.is_empty() {
            report(&format!("containerd harness cleanup left: {failed:#?}"));
        }
        // `instance` is dropped next and does the rest.
    }
}

fn address(dir: &Path) -> PathBuf {
    dir.join("c.sock")
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("containerd.log")
}

fn log_tail(dir: &Path) -> String {
    let path = log_path(dir);
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(&path) {
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let _ = f.read_to_string(&mut text);
    }
    format!("--- containerd log tail ({}) ---\n{text}", path.display())
}

#[expect(clippy::print_stderr, reason = "Drop cannot return errors; the test's captured stderr shows them")]
fn report(msg: &str) {
    eprintln!("{msg}");
}

fn make_instance_dir() -> Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    loop {
        let dir = PathBuf::from(format!("{TMP_PREFIX}{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left by an earlier process with the same pid; take the next number.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
}

fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.native",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
  "io.containerd.internal.v1.opt",
]

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/t.sock"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{d}/cni-bin"
  conf_dir = "{d}/cni-conf"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{d}/runc"
"#,
        image = image::BUSYBOX_IMAGE,
    )
}

fn stop_child(child: &mut Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) on our own child, which has not been reaped yet.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILLs every process whose command line names `dir`: containerd and its shims
/// (`containerd-shim-runc-v2 ... -address <dir>/c.sock`), which outlive containerd.
fn kill_processes_using(dir: &Path) {
    let needle = format!("{}/", dir.display());
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle)
            && let Ok(pid) = libc::pid_t::try_from(pid)
        {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Removes the sockets of shims that were killed rather than shut down. containerd 1.6
/// puts them at `/run/containerd/s/<sha256 of "<grpc address>/<namespace>/<shim id>">`
/// whatever its state dir, and keeps a task dir per shim id in its state dir.
fn remove_shim_sockets(dir: &Path) {
    let address = address(dir);
    let Ok(namespaces) = fs::read_dir(dir.join("state/io.containerd.runtime.v2.task")) else {
        return;
    };
    for ns in namespaces.flatten() {
        let Ok(tasks) = fs::read_dir(ns.path()) else {
            continue;
        };
        for task in tasks.flatten() {
            let key = address.join(ns.file_name()).join(task.file_name());
            let hash = Sha256::digest(key.as_os_str().as_encoded_bytes());
            let name: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            let _ = fs::remove_file(Path::new("/run/containerd/s").join(name));
        }
    }
}

fn recorded_cgroups(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join(PODS_RECORD))
        .map(|s| s.lines().filter(|l| l.starts_with("/kubepods")).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Unmounts whatever is still mounted below `dir` (rootfs overlays, sandbox shm after
/// a crash), then deletes it. Mounts go first so no removal reaches through them.
fn remove_instance_dir(dir: &Path) -> Result<()> {
    let prefix = format!("{}/", dir.display());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut mounts: Vec<&str> =
        mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&prefix)).collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let Ok(c) = std::ffi::CString::new(m) else {
            continue;
        };
        // SAFETY: c is a valid NUL-terminated path for the duration of the call.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Cleans up after test processes that died without dropping their guard: any
/// `/tmp/ctrd-<pid>-<n>` whose pid no longer runs.
fn remove_stale_instances() {
    let Ok(entries) = fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(rest) = path.to_str().and_then(|p| p.strip_prefix(TMP_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_processes_using(&path);
        remove_shim_sockets(&path);
        for cg in recorded_cgroups(&path) {
            let _ = cgroupfs::remove_pod_tree(&cg);
        }
        let _ = remove_instance_dir(&path);
    }
}

#[cfg(test)]
#[path = "containerd_tests.rs"]
mod tests;
