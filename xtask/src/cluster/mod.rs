//! `cargo xtask cluster up|down`: a real single-node Kubernetes for tests.
//!
//! etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a kubelet
//! (one binary built from the Go module proxy, see [`build`]) with a private
//! containerd, all in their own network namespace ([`net`]) with real TLS,
//! client-certificate users, `Node,RBAC` authorization and NodeRestriction.
//! `up` returns once the node is Ready; `down` removes every process,
//! container, cgroup, mount and file it made, also after a crash of `up`.

mod build;
mod files;

pub(crate) use build::which_go;
mod net;
mod procs;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The Kubernetes release the cluster runs: the newest 1.34 (1.35's kubelet
/// refuses this host's hybrid cgroups unless told otherwise).
pub(crate) const KUBERNETES_VERSION: &str = "v1.34.4";
/// The node's name, also its kubelet's user `system:node:<name>`.
pub(crate) const NODE_NAME: &str = "collector-test-node";

const NETNS: &str = "collector-cluster";
/// The node's address, on the namespace's loopback interface.
const NODE_IP: &str = "10.250.0.1";
/// The Service range, and its first address, which the API server gives the
/// `kubernetes` Service. It is a local address in the namespace and the API
/// server listens on 443, so pods reach it without kube-proxy.
const SERVICE_SUBNET: &str = "10.96.0.0/24";
const SERVICE_IP: &str = "10.96.0.1";
const POD_SUBNET: &str = "10.244.0.0/24";
const APISERVER_PORT: u16 = 443;
/// The veth pair between the host and the namespace (link-local: never routed).
const HOST_VETH: &str = "ckube-host";
const NODE_VETH: &str = "ckube-node";
const HOST_VETH_IP: &str = "169.254.77.1";
const NODE_VETH_IP: &str = "169.254.77.2";

/// The test image, also the pod sandbox ("pause") image: its command sleeps.
pub(crate) use oci_layout::busybox::IMAGE as BUSYBOX_IMAGE;

/// Components in start order; `down` stops them in reverse.
const COMPONENTS: &[&str] =
    &["containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"];

/// Bounds on start-up, generous for a loaded 2-core machine.
const APISERVER_TIMEOUT: Duration = Duration::from_secs(180);
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Where the cluster keeps its files.
pub(crate) struct Paths {
    /// Data: etcd, containerd's root, the kubelet's root, PKI, logs.
    state: PathBuf,
    /// Runtime state and sockets (short paths: Unix socket paths are limited).
    run: PathBuf,
    /// The standard containerd socket, so `deploy/` needs no change.
    containerd_socket: PathBuf,
    /// `target/cluster` in the checkout: the admin kubeconfig.
    target: PathBuf,
}

impl Paths {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            state: PathBuf::from("/var/lib/collector-cluster"),
            run: PathBuf::from("/run/collector-cluster"),
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
            target: root.join("target/cluster"),
        }
    }
    fn pki(&self) -> PathBuf {
        self.state.join("pki")
    }
    fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
    fn pids(&self) -> PathBuf {
        self.run.join("pids")
    }
    fn runc_root(&self) -> PathBuf {
        self.run.join("runc")
    }
    /// The admin kubeconfig, reaching the API server from the host.
    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.target.join("kubeconfig")
    }
    fn inside_kubeconfig(&self, user: &str) -> PathBuf {
        self.state.join(format!("{user}.kubeconfig"))
    }
}

/// Whether every component runs and the API server is ready.
pub(crate) fn is_up(root: &Path) -> bool {
    let paths = Paths::new(root);
    COMPONENTS.iter().all(|c| procs::running(&paths, c).is_some())
        && kubectl(&paths, &["get", "--raw", "/readyz"]).is_ok()
}

/// Brings the cluster up (or finds it up) and returns once the node is Ready.
pub(crate) fn up(root: &Path) -> Result<()> {
    let paths = Paths::new(root);
    let images = images(root)?;
    let images = &images;
    if is_up(root) {
        eprintln!("xtask cluster: already up");
        import_images(&paths, images)?;
        return print_usage(&paths);
    }
    // Whatever a crashed `up` left behind goes first.
    down(root)?;
    let kube = build::kube_binary(root)?;
    let started = Instant::now();
    for dir in [&paths.state, &paths.run, &paths.target, &paths.pki(), &paths.logs(), &paths.state.join("cni")] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    check_free_space(&paths.state)?;
    if paths.containerd_socket.exists() {
        bail!(
            "{} exists: another containerd runs on this machine; stop it first (the cluster's containerd uses the standard path so that deploy/ works unchanged)",
            paths.containerd_socket.display()
        );
    }
    let pki = paths.pki();
    crate::command::run(
        Command::new(&kube)
            .args(["certs", "--node", NODE_NAME, "--dir"])
            .arg(&pki)
            .arg(format!("--ips={SERVICE_IP},{NODE_IP},{NODE_VETH_IP},127.0.0.1")),
    )?;
    write(&paths.kubeconfig(), &files::kubeconfig(&pki, &format!("https://{NODE_VETH_IP}:{APISERVER_PORT}"), "admin"))?;
    let inside = format!("https://127.0.0.1:{APISERVER_PORT}");
    for user in ["kube-controller-manager", "kube-scheduler", "kubelet"] {
        write(&paths.inside_kubeconfig(user), &files::kubeconfig(&pki, &inside, user))?;
    }
    write(&paths.state.join("containerd.toml"), &files::containerd_toml(&paths))?;
    write(&paths.state.join("cni/10-collector-test.conflist"), &files::cni_conflist(&paths))?;
    write(&paths.state.join("kubelet.yaml"), &files::kubelet_config(&paths))?;
    mount_tracefs()?;
    net::create()?;

    let containerd = which("containerd")?;
    let mut child = procs::spawn(
        &paths,
        "containerd",
        &containerd,
        &["--config".into(), paths.state.join("containerd.toml").display().to_string()],
    )?;
    wait_for(&paths, "containerd", &mut child, Duration::from_secs(30), || paths.containerd_socket.exists())?;
    import_images(&paths, images)?;

    let etcd = paths.state.join("etcd");
    procs::spawn(
        &paths,
        "etcd",
        &kube,
        &[
            "etcd".into(),
            "--name=default".into(),
            format!("--data-dir={}", etcd.display()),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=default=http://127.0.0.1:2380".into(),
            // A test cluster on a shared disk: durability is not worth the fsyncs.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
    )?;
    let mut apiserver = vec!["kube-apiserver".to_owned()];
    apiserver.extend(files::apiserver_args(&paths));
    let mut child = procs::spawn(&paths, "kube-apiserver", &kube, &apiserver)?;
    wait_for(&paths, "kube-apiserver", &mut child, APISERVER_TIMEOUT, || {
        kubectl(&paths, &["get", "--raw", "/readyz"]).is_ok()
    })?;

    let kcm = paths.inside_kubeconfig("kube-controller-manager");
    procs::spawn(
        &paths,
        "kube-controller-manager",
        &kube,
        &[
            "kube-controller-manager".into(),
            format!("--kubeconfig={}", kcm.display()),
            format!("--authentication-kubeconfig={}", kcm.display()),
            format!("--authorization-kubeconfig={}", kcm.display()),
            "--bind-address=127.0.0.1".into(),
            format!("--service-account-private-key-file={}", pki.join("sa.key").display()),
            format!("--root-ca-file={}", pki.join("ca.crt").display()),
            "--use-service-account-credentials=true".into(),
            "--leader-elect=false".into(),
            "--v=1".into(),
        ],
    )?;
    let scheduler = paths.inside_kubeconfig("kube-scheduler");
    procs::spawn(
        &paths,
        "kube-scheduler",
        &kube,
        &[
            "kube-scheduler".into(),
            format!("--kubeconfig={}", scheduler.display()),
            format!("--authentication-kubeconfig={}", scheduler.display()),
            format!("--authorization-kubeconfig={}", scheduler.display()),
            "--bind-address=127.0.0.1".into(),
            "--leader-elect=false".into(),
            "--v=1".into(),
        ],
    )?;
    let kubelet_root = paths.state.join("kubelet");
    let mut child = procs::spawn(
        &paths,
        "kubelet",
        &kube,
        &[
            "kubelet".into(),
            format!("--config={}", paths.state.join("kubelet.yaml").display()),
            format!("--kubeconfig={}", paths.inside_kubeconfig("kubelet").display()),
            format!("--root-dir={}", kubelet_root.display()),
            format!("--cert-dir={}", kubelet_root.join("pki").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            "--v=1".into(),
        ],
    )?;
    // Ready, and the node lifecycle controller has lifted the not-ready taint,
    // so pods without tolerations schedule at once.
    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints}";
    wait_for(&paths, "kubelet", &mut child, NODE_READY_TIMEOUT, || {
        kubectl(&paths, &["get", "node", NODE_NAME, "-o", ready]).is_ok_and(|s| s.trim() == "True")
    })?;
    eprintln!("xtask cluster: up in {:.0} s", started.elapsed().as_secs_f64());
    print_usage(&paths)
}

/// Stops everything `up` started and removes its state; quiet when nothing is there.
pub(crate) fn down(root: &Path) -> Result<()> {
    let paths = Paths::new(root);
    let anything = paths.run.exists() || paths.state.exists() || net::exists();
    if !anything {
        return Ok(());
    }
    eprintln!("xtask cluster: stopping");
    // The kubelet first, so it restarts nothing; then what it ran.
    for name in ["kubelet", "kube-scheduler", "kube-controller-manager"] {
        procs::stop(&paths, name);
    }
    let pod_netns = procs::kill_containers(&paths);
    // The standard socket path is ours only while our containerd is recorded.
    let our_socket = paths.pids().join("containerd").exists();
    procs::stop(&paths, "containerd");
    if our_socket {
        // Shims outlive containerd; theirs name its socket.
        procs::kill_matching(&format!("-address {}", paths.containerd_socket.display()));
    }
    for name in ["kube-apiserver", "etcd"] {
        procs::stop(&paths, name);
    }
    let mut roots = vec![paths.state.clone(), paths.run.clone()];
    roots.extend(pod_netns.iter().cloned());
    procs::unmount_below(&roots);
    for ns in &pod_netns {
        let _ = fs::remove_file(ns);
    }
    procs::remove_qos_cgroups();
    let mut problems = net::delete();
    if our_socket {
        let _ = fs::remove_file(&paths.containerd_socket);
    }
    for dir in [&paths.state, &paths.run, &paths.target] {
        if dir.exists()
            && let Err(err) = fs::remove_dir_all(dir)
        {
            problems.push(format!("cannot remove {}: {err}", dir.display()));
        }
    }
    if !problems.is_empty() {
        bail!("xtask cluster down left something behind:\n{}", problems.join("\n"));
    }
    eprintln!("xtask cluster: down");
    Ok(())
}

/// The images the cluster runs (nothing can be pulled): busybox, which is
/// also the pod sandbox image, and the collector's.
fn images(root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let busybox = oci_layout::busybox::cached_tar()?;
    let collector = crate::image::build(root, None)?;
    Ok(vec![(busybox, BUSYBOX_IMAGE.to_owned()), (collector.tarball, collector.name)])
}

/// Imports OCI image tarballs into the cluster's containerd, as the tests do.
fn import_images(paths: &Paths, images: &[(PathBuf, String)]) -> Result<()> {
    for (tarball, name) in images {
        crate::image::import(&paths.containerd_socket, tarball, name)?;
    }
    Ok(())
}

fn print_usage(paths: &Paths) -> Result<()> {
    eprintln!(
        "xtask cluster: node {NODE_NAME} is Ready (Kubernetes {KUBERNETES_VERSION}).\n\
         \x20 export KUBECONFIG={}\n\
         \x20 kubectl get nodes; kubectl apply -k deploy/\n\
         \x20 logs: {}; stop with `cargo xtask cluster down`",
        paths.kubeconfig().display(),
        paths.logs().display()
    );
    Ok(())
}

/// `kubectl --kubeconfig <admin> ARGS`, its stdout on success.
pub(crate) fn kubectl(paths: &Paths, args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(paths.kubeconfig())
        .args(["--request-timeout=5s"])
        .args(args)
        .output()
        .context("cannot run kubectl")?;
    if !out.status.success() {
        bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `ready` until it holds; fails early with the log's tail if `name` died.
fn wait_for(
    paths: &Paths,
    name: &str,
    child: &mut std::process::Child,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{name} exited during start-up ({status})\n{}", procs::log_tail(paths, name));
        }
        if Instant::now() >= deadline {
            bail!("{name} not ready after {timeout:?}\n{}", procs::log_tail(paths, name));
        }
        sleep(Duration::from_millis(500));
    }
}

/// A node's init system mounts tracefs; the DaemonSet mounts the host's
/// `/sys/kernel/tracing` and cannot mount it itself.
/// Free space the cluster's file system must keep: the kubelet evicts pods and admits none under
/// 1 % (`evictionHard` in its configuration), and images, logs and test pods need room above it.
const MIN_FREE_PERCENT: f64 = 3.0;

/// Fails, naming the file system and what to do, when `dir`'s file system is nearly full: a node
/// under disk pressure runs no pod, and every cluster test would time out for no visible reason.
fn check_free_space(dir: &Path) -> Result<()> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{} is not a valid path", dir.display()))?;
    // SAFETY: statvfs zeroed is a valid value of this plain C struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` a valid out-pointer for the call.
    if unsafe { libc::statvfs(path.as_ptr(), &raw mut stat) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {}", dir.display()));
    }
    let block = u128::from(stat.f_frsize);
    let (free, total) = (u128::from(stat.f_bavail) * block, u128::from(stat.f_blocks) * block);
    match too_full(free, total) {
        Some(problem) => bail!(
            "{problem} on the file system of {}: the test cluster's kubelet would report DiskPressure and run no \
             pod (it evicts under 1 %). Free space first, such as old target/ directories or clones under /tmp",
            dir.display()
        ),
        None => Ok(()),
    }
}

/// Why `free` of `total` bytes is too little, if it is.
fn too_full(free: u128, total: u128) -> Option<String> {
    let percent = if total == 0 { 0.0 } else { free as f64 * 100.0 / total as f64 };
    (percent < MIN_FREE_PERCENT).then(|| {
        let gib = |bytes: u128| bytes as f64 / f64::from(1_u32 << 30);
        format!("only {:.1} GiB of {:.0} GiB free ({percent:.1} %, under {MIN_FREE_PERCENT} %)", gib(free), gib(total))
    })
}

fn mount_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    crate::command::run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}

fn which(program: &str) -> Result<PathBuf> {
    crate::command::which(program)
        .with_context(|| format!("{program} not found (cargo xtask setup --tests installs it)"))
}

fn write(path: &Path, content: &str) -> Result<()> {
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nearly_full_disk_is_refused_with_the_numbers() {
        const GIB: u128 = 1 << 30;
        assert_eq!(
            too_full(2 * GIB + GIB / 10, 252 * GIB).as_deref(),
            Some("only 2.1 GiB of 252 GiB free (0.8 %, under 3 %)")
        );
        assert_eq!(too_full(47 * GIB, 252 * GIB), None);
        assert!(too_full(0, 0).is_some());
    }
}
