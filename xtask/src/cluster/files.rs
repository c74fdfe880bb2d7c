//! The files the test cluster's processes read: containerd's config, the CNI
//! network, the kubelet's configuration and the kubeconfigs.

use std::path::Path;

use super::{APISERVER_PORT, BUSYBOX_IMAGE, NODE_IP, POD_SUBNET, Paths, SERVICE_SUBNET};

/// containerd 1.6 for the kubelet: the standard socket path (so the
/// DaemonSet's hostPath mount needs no change), everything else under the
/// cluster's own dirs, and pod networking from Debian's CNI plugins.
pub(super) fn containerd_toml(paths: &Paths) -> String {
    let (root, run, cni_conf) = (paths.state.join("containerd"), &paths.run, paths.state.join("cni"));
    let (root, run, cni_conf) = (root.display(), run.display(), cni_conf.display());
    format!(
        r#"version = 2
root = "{root}"
state = "{run}/containerd"
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
  address = "{socket}"

[ttrpc]
  address = "{run}/containerd.ttrpc.sock"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{BUSYBOX_IMAGE}"
  # runc cannot set a negative oom_score_adj without CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  disable_tcp_service = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni_conf}"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{runc}"
"#,
        socket = paths.containerd_socket.display(),
        runc = paths.runc_root().display(),
    )
}

/// One bridge with host-local addresses inside the cluster's network
/// namespace. No masquerading: nothing in the cluster talks to the outside.
pub(super) fn cni_conflist(paths: &Paths) -> String {
    let ipam = paths.state.join("cni-ipam");
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "collector-test",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": ipam.display().to_string(),
                "ranges": [[{ "subnet": POD_SUBNET }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        }],
    })
    .to_string()
}

/// The kubelet: cgroupfs driver (containerd 1.6 has no RuntimeConfig call),
/// pods under `/kubepods` as on a real node, client certificates checked
/// against the cluster CA, and eviction and image GC thresholds low enough
/// that a full developer disk neither evicts the test pods nor deletes the
/// imported images (nothing can be pulled back).
pub(super) fn kubelet_config(paths: &Paths) -> String {
    let pki = &paths.pki();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
cgroupRoot: /
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{socket}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
makeIPTablesUtilChains: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
evictionPressureTransitionPeriod: 10s
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 10s
shutdownGracePeriod: 0s
"#,
        socket = paths.containerd_socket.display(),
        ca = pki.join("ca.crt").display(),
    )
}

/// A kubeconfig for a client certificate issued by `kube certs`.
pub(super) fn kubeconfig(pki: &Path, server: &str, user: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: collector-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: collector-test
  context:
    cluster: collector-test
    user: {user}
current-context: collector-test
"#,
        ca = pki.join("ca.crt").display(),
        cert = pki.join(format!("{user}.crt")).display(),
        key = pki.join(format!("{user}.key")).display(),
    )
}

/// kube-apiserver's flags: envtest's, plus what a kubelet needs (Node
/// authorization, NodeRestriction, a client certificate for logs and exec).
pub(super) fn apiserver_args(paths: &Paths) -> Vec<String> {
    let pki = paths.pki();
    let p = |name: &str| pki.join(name).display().to_string();
    vec![
        "--etcd-servers=http://127.0.0.1:2379".into(),
        "--bind-address=0.0.0.0".into(),
        format!("--secure-port={APISERVER_PORT}"),
        format!("--advertise-address={NODE_IP}"),
        format!("--service-cluster-ip-range={SERVICE_SUBNET}"),
        format!("--client-ca-file={}", p("ca.crt")),
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        format!("--kubelet-client-certificate={}", p("apiserver-kubelet-client.crt")),
        format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
        "--kubelet-preferred-address-types=InternalIP".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}
