//! Pod and container identity read from a cgroup v2 path.
//!
//! Accepted layouts (paths relative to the v2 root):
//!
//! - kubelet, cgroupfs driver: `/kubepods[/burstable|/besteffort]/pod<uid>[/<cid>|/crio-<cid>]`.
//! - kubelet, systemd driver: `/kubepods.slice[/kubepods-<qos>.slice]`
//!   `/kubepods[-<qos>]-pod<uid_>.slice[/cri-containerd-<cid>.scope|/crio-<cid>.scope|`
//!   `/docker-<cid>.scope]`, where `<uid_>` is the uid with `_` for `-`.
//! - plain containers: `/<containerd namespace>/<cid>`, `/docker/<cid>`, and a
//!   `cri-containerd-<cid>.scope`, `crio-<cid>.scope` or `docker-<cid>.scope` at any depth.
//!
//! Choices:
//!
//! - Kubernetes layouts must start at the v2 root (no kubelet `--cgroup-root` prefix). A container
//!   with a delegated subtree can create directories below itself; matching `kubepods` at any depth
//!   would let it claim any pod uid.
//! - Once a path starts with `kubepods`/`kubepods.slice`, only the Kubernetes rules apply: a
//!   malformed pod level gives `None`, never a fallback to the plain-container rules.
//! - A pod directory (or anything below it that is not a valid container directory, like CRI-O's
//!   `crio-conmon-<cid>.scope`) gives the pod with no container.
//! - Everything below a container directory belongs to that container. For plain containers the
//!   outermost container component wins, so a container cannot re-label its own children.
//! - Empty components (doubled or trailing `/`, a missing leading `/`) are ignored; a `.` or `..`
//!   component rejects the whole path since the kernel never produces one.
//! - Uids and ids accept either hex case and are returned lowercase, as the API and CRI spell them.

use serde::{Deserialize, Serialize};

/// Kubernetes QoS class of a pod, taken from its cgroup parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QosClass {
    /// Directly under `kubepods`.
    Guaranteed,
    /// Under `kubepods/burstable`.
    Burstable,
    /// Under `kubepods/besteffort`.
    BestEffort,
}

impl QosClass {
    /// The spelling of `status.qosClass` in the Kubernetes API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

/// Container runtime that named the cgroup, when the name says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Runtime {
    /// containerd (`cri-containerd-<id>.scope` or a containerd namespace directory).
    Containerd,
    /// CRI-O (`crio-<id>` or `crio-<id>.scope`).
    CriO,
    /// Docker (`docker-<id>.scope` or `/docker/<id>`).
    Docker,
}

/// How the cgroup tree is managed, told apart by the `.slice`/`.scope` naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CgroupDriver {
    /// Plain directories.
    Cgroupfs,
    /// systemd slices and scopes.
    Systemd,
}

/// What a cgroup path says about the pod and container owning it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// Pod uid, lowercase with dashes; `None` outside Kubernetes.
    pub pod_uid: Option<String>,
    /// QoS class; set exactly when `pod_uid` is.
    pub qos: Option<QosClass>,
    /// Container id, 64 lowercase hex; `None` for a pod-level cgroup.
    pub container_id: Option<String>,
    /// Runtime, when the directory name tells it (a bare cgroupfs id does not).
    pub runtime: Option<Runtime>,
    /// Driver that laid out the path.
    pub driver: CgroupDriver,
}

const CONTAINER_ID_LEN: usize = 64;
const UID_LEN: usize = 36;
/// containerd's limit on identifier (and so namespace) length.
const NAMESPACE_MAX_LEN: usize = 76;

/// Identity from a cgroup v2 path relative to the v2 root; `None` for any other layout.
pub fn parse(path: &str) -> Option<Identity> {
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" => {}
            "." | ".." => return None,
            _ => components.push(component),
        }
    }
    match components.first() {
        Some(&"kubepods") => parse_cgroupfs_pod(&components[1..]),
        Some(&"kubepods.slice") => parse_systemd_pod(&components[1..]),
        _ => parse_plain_container(&components),
    }
}

/// `rest` is what follows `/kubepods`.
fn parse_cgroupfs_pod(rest: &[&str]) -> Option<Identity> {
    let (qos, rest) = match rest.split_first()? {
        (&"burstable", rest) => (QosClass::Burstable, rest),
        (&"besteffort", rest) => (QosClass::BestEffort, rest),
        _ => (QosClass::Guaranteed, rest),
    };
    let (pod, rest) = rest.split_first()?;
    let pod_uid = parse_uid(pod.strip_prefix("pod")?, b'-')?;
    let container = rest.first().and_then(|name| {
        if is_container_id(name) {
            Some((name.to_ascii_lowercase(), None))
        } else {
            let id = name.strip_prefix("crio-").filter(|id| is_container_id(id))?;
            Some((id.to_ascii_lowercase(), Some(Runtime::CriO)))
        }
    });
    Some(pod_identity(pod_uid, qos, container, CgroupDriver::Cgroupfs))
}

/// `rest` is what follows `/kubepods.slice`.
fn parse_systemd_pod(rest: &[&str]) -> Option<Identity> {
    let (qos, stem, rest) = match rest.split_first()? {
        (&"kubepods-burstable.slice", rest) => (QosClass::Burstable, "kubepods-burstable", rest),
        (&"kubepods-besteffort.slice", rest) => (QosClass::BestEffort, "kubepods-besteffort", rest),
        _ => (QosClass::Guaranteed, "kubepods", rest),
    };
    let (pod, rest) = rest.split_first()?;
    let escaped = pod.strip_prefix(stem)?.strip_prefix("-pod")?.strip_suffix(".slice")?;
    let pod_uid = parse_uid(escaped, b'_')?;
    let container = rest.first().and_then(|name| parse_scope(name)).map(|(id, rt)| (id, Some(rt)));
    Some(pod_identity(pod_uid, qos, container, CgroupDriver::Systemd))
}

fn pod_identity(
    pod_uid: String,
    qos: QosClass,
    container: Option<(String, Option<Runtime>)>,
    driver: CgroupDriver,
) -> Identity {
    let (container_id, runtime) = container.unzip();
    Identity { pod_uid: Some(pod_uid), qos: Some(qos), container_id, runtime: runtime.flatten(), driver }
}

fn parse_plain_container(components: &[&str]) -> Option<Identity> {
    for (depth, name) in components.iter().enumerate() {
        if let Some((id, runtime)) = parse_scope(name) {
            return Some(plain_identity(id, runtime, CgroupDriver::Systemd));
        }
        if depth == 1 && is_container_id(name) {
            let runtime = match components[0] {
                "docker" => Runtime::Docker,
                namespace if is_containerd_namespace(namespace) => Runtime::Containerd,
                _ => continue,
            };
            let id = name.to_ascii_lowercase();
            return Some(plain_identity(id, runtime, CgroupDriver::Cgroupfs));
        }
    }
    None
}

fn plain_identity(id: String, runtime: Runtime, driver: CgroupDriver) -> Identity {
    Identity { pod_uid: None, qos: None, container_id: Some(id), runtime: Some(runtime), driver }
}

/// A systemd scope named by a runtime: `<prefix>-<64 hex>.scope`.
fn parse_scope(name: &str) -> Option<(String, Runtime)> {
    let stem = name.strip_suffix(".scope")?;
    let (id, runtime) = if let Some(id) = stem.strip_prefix("cri-containerd-") {
        (id, Runtime::Containerd)
    } else if let Some(id) = stem.strip_prefix("crio-") {
        (id, Runtime::CriO)
    } else {
        (stem.strip_prefix("docker-")?, Runtime::Docker)
    };
    is_container_id(id).then(|| (id.to_ascii_lowercase(), runtime))
}

fn is_container_id(s: &str) -> bool {
    s.len() == CONTAINER_ID_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A UUID (8-4-4-4-12 hex) with `separator` between groups, returned lowercase with dashes.
fn parse_uid(s: &str, separator: u8) -> Option<String> {
    let bytes = s.as_bytes();
    if bytes.len() != UID_LEN {
        return None;
    }
    let mut uid = String::with_capacity(UID_LEN);
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b != separator {
                return None;
            }
            uid.push('-');
        } else if b.is_ascii_hexdigit() {
            uid.push(char::from(b.to_ascii_lowercase()));
        } else {
            return None;
        }
    }
    Some(uid)
}

/// containerd's identifier rule: alphanumeric runs joined by single `.`, `_` or `-`. systemd unit
/// names also fit it, but a systemd-managed directory never holds containerd's cgroupfs ones.
fn is_containerd_namespace(name: &str) -> bool {
    if name.is_empty() || name.len() > NAMESPACE_MAX_LEN {
        return false;
    }
    if [".slice", ".scope", ".service"].iter().any(|unit| name.ends_with(unit)) {
        return false;
    }
    let mut previous_was_separator = true;
    for b in name.bytes() {
        let separator = matches!(b, b'.' | b'_' | b'-');
        if separator && previous_was_separator || !separator && !b.is_ascii_alphanumeric() {
            return false;
        }
        previous_was_separator = separator;
    }
    !previous_was_separator
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use CgroupDriver::{Cgroupfs, Systemd};
    use QosClass::{BestEffort, Burstable, Guaranteed};
    use Runtime::{Containerd, CriO, Docker};

    const U: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const U_: &str = "1b4e28ba_2fa1_11d2_883f_0016d3cca427";
    const C: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const C2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn pod(qos: QosClass, cid: Option<&str>, rt: Option<Runtime>, d: CgroupDriver) -> Option<Identity> {
        let container_id = cid.map(str::to_owned);
        let (pod_uid, qos) = (Some(U.to_owned()), Some(qos));
        Some(Identity { pod_uid, qos, container_id, runtime: rt, driver: d })
    }
    fn fs(qos: QosClass, cid: Option<&str>, rt: Option<Runtime>) -> Option<Identity> {
        pod(qos, cid, rt, Cgroupfs)
    }
    fn sd(qos: QosClass, cid: Option<&str>, rt: Option<Runtime>) -> Option<Identity> {
        pod(qos, cid, rt, Systemd)
    }
    fn plain(cid: &str, rt: Runtime, d: CgroupDriver) -> Option<Identity> {
        let container_id = Some(cid.to_owned());
        Some(Identity { pod_uid: None, qos: None, container_id, runtime: Some(rt), driver: d })
    }

    /// `path => expected` rows for `check`; a macro keeps each row on one line.
    macro_rules! cases {
        ($($path:expr => $want:expr),* $(,)?) => {
            check(&[$(($path, $want)),*])
        };
    }

    /// Expands `{G}`, `{B}`, `{BE}` (systemd pod slices), `{U}`, `{U_}`, `{C}` and `{C2}`.
    fn expand(template: &str) -> String {
        let b = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice";
        let be = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice";
        template
            .replace("{G}", "/kubepods.slice/kubepods-pod{U_}.slice")
            .replace("{BE}", be)
            .replace("{B}", b)
            .replace("{U_}", U_)
            .replace("{U}", U)
            .replace("{C2}", C2)
            .replace("{C}", C)
    }

    /// `expand` with the uid and ids in uppercase hex.
    fn shout(template: &str) -> String {
        let path = expand(template).replace(U, &U.to_uppercase());
        path.replace(U_, &U_.to_uppercase()).replace(C, &C.to_uppercase())
    }

    fn check<P: AsRef<str>>(cases: &[(P, Option<Identity>)]) {
        for (template, want) in cases {
            let path = expand(template.as_ref());
            assert_eq!(&parse(&path), want, "path {path:?}");
        }
    }

    #[test]
    fn cgroupfs_driver() {
        cases! {
            "/kubepods/pod{U}/{C}" => fs(Guaranteed, Some(C), None),
            "/kubepods/burstable/pod{U}/{C}" => fs(Burstable, Some(C), None),
            "/kubepods/besteffort/pod{U}/{C}" => fs(BestEffort, Some(C), None),
            "/kubepods/pod{U}" => fs(Guaranteed, None, None),
            "/kubepods/burstable/pod{U}" => fs(Burstable, None, None),
            "/kubepods/besteffort/pod{U}/crio-{C}" => fs(BestEffort, Some(C), Some(CriO)),
            "/kubepods/burstable/pod{U}/crio-conmon-{C}" => fs(Burstable, None, None),
            "/kubepods/burstable/pod{U}/{C}/sub" => fs(Burstable, Some(C), None),
            "/kubepods/pod{U}/{C}/a/b/{C2}" => fs(Guaranteed, Some(C), None),
            "/kubepods/burstable/pod{U}/junk/{C}" => fs(Burstable, None, None),
            "/kubepods/burstable/pod{U}/{C}.scope" => fs(Burstable, None, None),
            "/kubepods/burstable/pod{U}/docker-{C}" => fs(Burstable, None, None),
            "/kubepods" => None,
            "/kubepods/burstable" => None,
            "/kubepods/besteffort/" => None,
            "/kubepods/burstable/pod" => None,
            "/kubepods/burstable/pod{U_}/{C}" => None,
            "/kubepods/burstable/{U}/{C}" => None,
            "/kubepods/burstable/pod-{U}" => None,
            "/kubepods/burstable/pod{U}x/{C}" => None,
            "/kubepods/{C}" => None,
            "/kubepods/guaranteed/pod{U}/{C}" => None,
            "/kubepods/burstable/burstable/pod{U}" => None,
            "/kubepods/kubepods-burstable-pod{U_}.slice/{C}" => None,
        }
        let upper = shout("/kubepods/burstable/pod{U}/{C}");
        check(&[(upper, fs(Burstable, Some(C), None))]);
    }

    #[test]
    fn systemd_driver() {
        cases! {
            "{B}/cri-containerd-{C}.scope" => sd(Burstable, Some(C), Some(Containerd)),
            "{B}/crio-{C}.scope" => sd(Burstable, Some(C), Some(CriO)),
            "{BE}/docker-{C}.scope" => sd(BestEffort, Some(C), Some(Docker)),
            "{G}/cri-containerd-{C}.scope" => sd(Guaranteed, Some(C), Some(Containerd)),
            "{G}" => sd(Guaranteed, None, None),
            "{B}" => sd(Burstable, None, None),
            "{BE}/" => sd(BestEffort, None, None),
            "{B}/crio-{C}.scope/container" => sd(Burstable, Some(C), Some(CriO)),
            "{B}/crio-conmon-{C}.scope" => sd(Burstable, None, None),
            "{B}/cri-containerd-{C}" => sd(Burstable, None, None),
            "{B}/{C}" => sd(Burstable, None, None),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U}.slice" => None,
            "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{U_}.slice" => None,
            "/kubepods.slice/kubepods-burstable-pod{U_}.slice" => None,
            "/kubepods.slice/burstable/pod{U}/{C}" => None,
            "/kubepods.slice/docker-{C}.scope" => None,
            "/kubepods.slice/kubepods-pod{U_}" => None,
            "/kubepods.slice/kubepods-pod{U_}.slice.slice" => None,
            "/kubepods.slice/kubepods-burstable.slice" => None,
            "/kubepods.slice" => None,
        }
        let upper = shout("{B}/docker-{C}.scope");
        check(&[(upper, sd(Burstable, Some(C), Some(Docker)))]);
    }

    #[test]
    fn plain_containers() {
        let rootless = "/user.slice/user-1000.slice/user@1000.service/app.slice";
        cases! {
            "/k8s.io/{C}" => plain(C, Containerd, Cgroupfs),
            "/default/{C}" => plain(C, Containerd, Cgroupfs),
            "/my-ns.v2_x/{C}/sub/dir" => plain(C, Containerd, Cgroupfs),
            "/docker/{C}" => plain(C, Docker, Cgroupfs),
            "/system.slice/docker-{C}.scope" => plain(C, Docker, Systemd),
            "/system.slice/cri-containerd-{C}.scope" => plain(C, Containerd, Systemd),
            "/system.slice/crio-{C}.scope/container" => plain(C, CriO, Systemd),
            "/docker-{C}.scope" => plain(C, Docker, Systemd),
            // The outermost container wins: a container cannot relabel cgroups it creates.
            "/default/{C}/docker-{C2}.scope" => plain(C, Containerd, Cgroupfs),
            "/default/{C}/kubepods/pod{U}/{C2}" => plain(C, Containerd, Cgroupfs),
            "/system.slice/docker-{C}.scope/kubepods/pod{U}/{C2}" => plain(C, Docker, Systemd),
            // kind-style --cgroup-root prefixes are not Kubernetes layouts here.
            "/kubelet/kubepods/burstable/pod{U}/{C}" => None,
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{U_}.slice" => None,
            "/docker/{C2}/kubelet/kubepods/pod{U}/{C}" => plain(C2, Docker, Cgroupfs),
            "/system.slice/{C}" => None,
            "/containerd.service/{C}" => None,
            "/bad..ns/{C}" => None,
            "/-ns/{C}" => None,
            "/ns-/{C}" => None,
            "/nämespace/{C}" => None,
            "/{C}" => None,
            "/a/b/{C}" => None,
            "/default/{C}0" => None,
            "/system.slice/docker-{C}.scope.x" => None,
            "/system.slice/podman-{C}.scope" => None,
            "/system.slice/docker.service" => None,
        }
        cases! {
            format!("{rootless}/docker-{C}.scope") => plain(C, Docker, Systemd),
            format!("/{}/{C}", "n".repeat(76)) => plain(C, Containerd, Cgroupfs),
            format!("/{}/{C}", "n".repeat(77)) => None,
            format!("/default/{}", &C[..63]) => None,
            format!("/default/{}g", &C[..63]) => None,
            format!("/system.slice/docker-{}.scope", &C[..63]) => None,
        }
    }

    #[test]
    fn odd_and_hostile_paths() {
        cases! {
            "" => None,
            "/" => None,
            "//" => None,
            "pod" => None,
            "///kubepods//burstable//pod{U}//{C}//" => fs(Burstable, Some(C), None),
            "kubepods/burstable/pod{U}/{C}" => fs(Burstable, Some(C), None),
            "/kubepods/burstable/pod{U}/../pod{U}/{C}" => None,
            "/kubepods/./burstable/pod{U}" => None,
            "/kubepods/burstable/pod{U}/{C}/.." => None,
            "/default/{C}/." => None,
            "/kubepods/burstable/pod{U}/{C}/..." => fs(Burstable, Some(C), None),
            "/kubepods/burstable/pod{U}/{C}\n" => fs(Burstable, None, None),
            "/kubepods/burstable/pod{U}\n/{C}" => None,
            "/kubepods\n/burstable/pod{U}/{C}" => None,
            "/kubepods/burstable/pod{U}/{C}\0" => fs(Burstable, None, None),
            "🦀/🦀/🦀" => None,
            "/kubepods/burstable/pod1b4e28ba2-fa1-11d2-883f-0016d3cca427" => None,
            "/kubepods/burstable/pod1b4e28ba-2fa1-11d2-883f_0016d3cca427" => None,
            "/kubepods/burstable/pod1b4e28ba-2fa1-11d2-883f-0016d3cca42g" => None,
        }
        let long_tail = "x/".repeat(100_000);
        cases! {
            format!("/kubepods/burstable/pod{}é/{C}", &U[..35]) => None,
            format!("/kubepods/burstable/pod{}é/{C}", &U[..34]) => None,
            format!("/kubepods/burstable/pod{}１/{C}", &U[..33]) => None,
            format!("/default/{}é", &C[..62]) => None,
            format!("/kubepods/burstable/pod{}/{C}", &U[..35]) => None,
            format!("/kubepods/burstable/pod{U}0/{C}") => None,
            format!("/kubepods/burstable/pod{}/{C}", U.replace('-', "")) => None,
            format!("/kubepods/burstable/pod{U}/{C}/{long_tail}") => fs(Burstable, Some(C), None),
            format!("/{}", "a".repeat(1_000_000)) => None,
            "/".repeat(100_000) => None,
        }
    }

    #[test]
    fn names_match_the_kubernetes_api() {
        assert_eq!(BestEffort.as_str(), "BestEffort");
        assert_eq!(Guaranteed.as_str(), "Guaranteed");
        assert_eq!(Burstable.as_str(), "Burstable");
        assert_eq!(serde_json::to_string(&BestEffort).unwrap(), "\"BestEffort\"");
    }

    /// xorshift64*: deterministic, so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }
    }

    #[test]
    fn generated_paths_never_panic_and_keep_invariants() {
        let soup = "/ // kubepods kubepods.slice burstable besteffort kubepods-burstable.slice \
            kubepods-besteffort.slice kubepods- -pod pod .slice .scope cri-containerd- crio- \
            docker- docker k8s.io default .. . \n \0 é 🦀 - _ a 0 f system.slice";
        let mut tokens: Vec<String> = soup.split(' ').map(str::to_owned).collect();
        tokens.extend([U.to_owned(), U_.to_owned(), U.to_uppercase(), C.to_owned()]);
        tokens.extend([C[..63].to_owned(), format!("{C}0")]);
        let valid = [
            "/kubepods/burstable/pod{U}/{C}/sub",
            "/kubepods/pod{U}/crio-{C}",
            "{BE}/crio-{C}.scope",
            "{G}/docker-{C}.scope",
            "/k8s.io/{C}",
            "/system.slice/cri-containerd-{C}.scope",
        ]
        .map(expand);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut found = 0_u32;
        for _ in 0..100_000 {
            // Half token soup, half a valid path with a few edits, to reach the accepting branches.
            let mut path = if rng.below(2) == 0 { String::new() } else { valid[rng.below(valid.len())].clone() };
            for _ in 0..rng.below(4) {
                let at = rng.below(path.len() + 1);
                if !path.is_char_boundary(at) {
                    continue;
                }
                let token = &tokens[rng.below(tokens.len())];
                match rng.below(3) {
                    0 => path.insert_str(at, token),
                    1 => path.truncate(at),
                    _ => {
                        let end = (at + token.len()).min(path.len());
                        if path.is_char_boundary(end) {
                            path.replace_range(at..end, token);
                        }
                    }
                }
            }
            let path = path.as_str();
            let Some(id) = parse(path) else { continue };
            found += 1;
            assert_eq!(id.pod_uid.is_some(), id.qos.is_some(), "{path:?}");
            if let Some(uid) = &id.pod_uid {
                assert_eq!(parse_uid(uid, b'-').as_ref(), Some(uid), "{path:?}");
                assert_eq!(uid, &uid.to_ascii_lowercase());
            }
            if let Some(cid) = &id.container_id {
                assert!(is_container_id(cid), "{path:?}");
                assert_eq!(cid, &cid.to_ascii_lowercase());
            }
            assert!(id.pod_uid.is_some() || id.container_id.is_some(), "{path:?}");
        }
        // The generator must actually reach the accepting branches to be worth running.
        assert!(found > 1000, "only {found} identities generated");
    }
}
