//! Property tests of [`parse`]: generated paths of every supported layout parse back to the
//! identifiers they were built from, near misses give the documented non-match, and no input
//! panics or yields an identity the layouts cannot express.

use proptest::{collection::vec, prelude::*, sample::select};

use super::*;
use crate::escape::escape_bytes;

/// A uid in either hex case, dashes between the groups.
fn uid() -> impl Strategy<Value = String> {
    "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
}

/// A container id in either hex case.
fn cid() -> impl Strategy<Value = String> {
    "[0-9a-fA-F]{64}"
}

fn qos() -> impl Strategy<Value = QosClass> {
    select(vec![QosClass::Guaranteed, QosClass::Burstable, QosClass::BestEffort])
}

/// Directories below a container (or pod) that can never be read as a container or a pod:
/// anything but `.` and `..`, too short for an id.
fn tail() -> impl Strategy<Value = Vec<String>> {
    vec("[a-zA-Z0-9_.@-]{1,12}".prop_filter("the kernel never makes . or ..", |c| c != "." && c != ".."), 0..3)
}

/// Joins components the way a kernel or a careless caller might: `/` or `//` between them, no,
/// one or two leading slashes, maybe a trailing one. `parse` must ignore all of that.
fn join(components: &[String], seps: &[bool], lead: usize, trail: bool) -> String {
    let mut path = "/".repeat(lead);
    for (i, component) in components.iter().enumerate() {
        if i > 0 {
            path.push_str(if seps.get(i).copied().unwrap_or(false) { "//" } else { "/" });
        }
        path.push_str(component);
    }
    if trail {
        path.push('/');
    }
    path
}

/// `join`'s choices: which separators are doubled, how many leading slashes, a trailing one.
fn noise() -> impl Strategy<Value = (Vec<bool>, usize, bool)> {
    (vec(prop::bool::weighted(0.1), 8), prop_oneof![1 => Just(0_usize), 8 => Just(1), 1 => Just(2)], any::<bool>())
}

/// The components of the pod directory of `uid` (as written in the path).
fn pod_components(driver: CgroupDriver, qos: QosClass, written_uid: &str) -> Vec<String> {
    match (driver, qos) {
        (CgroupDriver::Cgroupfs, QosClass::Guaranteed) => vec!["kubepods".into(), format!("pod{written_uid}")],
        (CgroupDriver::Cgroupfs, QosClass::Burstable) => {
            vec!["kubepods".into(), "burstable".into(), format!("pod{written_uid}")]
        }
        (CgroupDriver::Cgroupfs, QosClass::BestEffort) => {
            vec!["kubepods".into(), "besteffort".into(), format!("pod{written_uid}")]
        }
        (CgroupDriver::Systemd, QosClass::Guaranteed) => {
            vec!["kubepods.slice".into(), format!("kubepods-pod{written_uid}.slice")]
        }
        (CgroupDriver::Systemd, QosClass::Burstable) => vec![
            "kubepods.slice".into(),
            "kubepods-burstable.slice".into(),
            format!("kubepods-burstable-pod{written_uid}.slice"),
        ],
        (CgroupDriver::Systemd, QosClass::BestEffort) => vec![
            "kubepods.slice".into(),
            "kubepods-besteffort.slice".into(),
            format!("kubepods-besteffort-pod{written_uid}.slice"),
        ],
    }
}

/// The uid as the driver writes it in the pod directory's name.
fn written_uid(driver: CgroupDriver, uid: &str) -> String {
    match driver {
        CgroupDriver::Cgroupfs => uid.to_owned(),
        CgroupDriver::Systemd => uid.replace('-', "_"),
    }
}

/// The directory name of container `id` for a driver and runtime; `None` for pairs no layout has.
fn container_dir(driver: CgroupDriver, runtime: Option<Runtime>, id: &str) -> Option<String> {
    Some(match (driver, runtime) {
        (CgroupDriver::Cgroupfs, None) => id.to_owned(),
        (CgroupDriver::Cgroupfs, Some(Runtime::CriO)) => format!("crio-{id}"),
        (CgroupDriver::Systemd, Some(Runtime::Containerd)) => format!("cri-containerd-{id}.scope"),
        (CgroupDriver::Systemd, Some(Runtime::CriO)) => format!("crio-{id}.scope"),
        (CgroupDriver::Systemd, Some(Runtime::Docker)) => format!("docker-{id}.scope"),
        _ => return None,
    })
}

/// The (driver, runtime) pairs a pod's container directory can have.
fn pod_flavour() -> impl Strategy<Value = (CgroupDriver, Option<Runtime>)> {
    select(vec![
        (CgroupDriver::Cgroupfs, None),
        (CgroupDriver::Cgroupfs, Some(Runtime::CriO)),
        (CgroupDriver::Systemd, Some(Runtime::Containerd)),
        (CgroupDriver::Systemd, Some(Runtime::CriO)),
        (CgroupDriver::Systemd, Some(Runtime::Docker)),
    ])
}

/// A containerd namespace (`docker` included, which names Docker instead).
fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => select(vec!["default".to_owned(), "k8s.io".to_owned(), "moby".to_owned(), "docker".to_owned()]),
        3 => "[a-zA-Z0-9]{1,8}([._-][a-zA-Z0-9]{1,8}){0,3}".prop_filter(
            "kubepods is the Kubernetes layout; systemd unit names are not namespaces",
            |ns| ns != "kubepods" && ![".slice", ".scope", ".service"].iter().any(|unit| ns.ends_with(unit)),
        ),
    ]
}

/// Slices and services a systemd scope may sit under (never `kubepods*`: that is the pod layout).
fn slices() -> impl Strategy<Value = Vec<String>> {
    vec("[a-z][a-z0-9-]{0,8}(\\.slice|\\.service|@1000\\.service)?", 0..4)
        .prop_filter("kubepods is the Kubernetes layout", |s| s.first().is_none_or(|c| !c.starts_with("kubepods")))
}

/// One of the ways to spoil an identifier: a character short, one too many, or a non-hex
/// character (or the wrong separator) in place of one.
#[derive(Clone, Debug)]
enum Spoil {
    Drop(usize),
    Insert(usize, char),
    Replace(usize, char),
}

fn spoil() -> impl Strategy<Value = Spoil> {
    let bad = select(vec!['g', 'G', 'z', '_', '.', '-', ' ', ':', 'é', '\n', '\\']);
    prop_oneof![
        any::<usize>().prop_map(Spoil::Drop),
        (any::<usize>(), select("0123456789abcdefABCDEF".chars().collect::<Vec<_>>()))
            .prop_map(|(at, c)| Spoil::Insert(at, c)),
        (any::<usize>(), bad).prop_map(|(at, c)| Spoil::Replace(at, c)),
    ]
}

/// `id` spoiled: never again a valid id of its length and alphabet.
fn apply_spoil(id: &str, spoil: &Spoil, separator: Option<char>) -> String {
    let mut chars: Vec<char> = id.chars().collect();
    match *spoil {
        Spoil::Drop(at) => {
            chars.remove(at % chars.len());
        }
        Spoil::Insert(at, c) => chars.insert(at % (chars.len() + 1), c),
        Spoil::Replace(at, c) => {
            let at = at % chars.len();
            // Replacing a separator by itself would change nothing.
            chars[at] = if Some(chars[at]) == separator && Some(c) == separator { 'x' } else { c };
        }
    }
    chars.into_iter().collect()
}

/// A path that renders `id`, so that any parsed identity can be parsed again from its canonical
/// form. `None` would mean `parse` produced a combination no layout has.
fn render(id: &Identity) -> Option<String> {
    let mut components = match (&id.pod_uid, id.qos) {
        (Some(uid), Some(qos)) => pod_components(id.driver, qos, &written_uid(id.driver, uid)),
        (None, None) => match (id.driver, id.runtime) {
            (CgroupDriver::Cgroupfs, Some(Runtime::Containerd)) => vec!["default".to_owned()],
            (CgroupDriver::Cgroupfs, Some(Runtime::Docker)) => vec!["docker".to_owned()],
            (CgroupDriver::Systemd, Some(_)) => vec!["system.slice".to_owned()],
            _ => return None,
        },
        _ => return None,
    };
    match (&id.container_id, id.runtime) {
        // Outside Kubernetes a cgroupfs container is `/<namespace>/<id>`: the namespace names the runtime.
        (Some(cid), _) if id.pod_uid.is_none() && id.driver == CgroupDriver::Cgroupfs => components.push(cid.clone()),
        (Some(cid), runtime) => components.push(container_dir(id.driver, runtime, cid)?),
        (None, None) => {}
        (None, Some(_)) => return None,
    }
    Some(format!("/{}", components.join("/")))
}

/// The invariants every accepted path must keep.
fn check_identity(path: &str, id: &Identity) -> Result<(), TestCaseError> {
    prop_assert_eq!(id.pod_uid.is_some(), id.qos.is_some(), "{:?}", path);
    prop_assert!(id.pod_uid.is_some() || id.container_id.is_some(), "{:?}", path);
    if let Some(uid) = &id.pod_uid {
        prop_assert_eq!(parse_uid(uid, b'-'), Some(uid.clone()), "{:?}", path);
        prop_assert_eq!(uid, &uid.to_ascii_lowercase());
        // Kubernetes layouts start at the root: nothing above `kubepods` can claim a pod.
        let first = path.split('/').find(|c| !c.is_empty());
        prop_assert!(matches!(first, Some("kubepods" | "kubepods.slice")), "{:?}", path);
    }
    if let Some(cid) = &id.container_id {
        prop_assert!(is_container_id(cid) && *cid == cid.to_ascii_lowercase(), "{:?}", path);
    }
    let canonical = render(id);
    prop_assert!(canonical.is_some(), "{:?} gave an identity no layout has: {:?}", path, id);
    if let Some(canonical) = canonical {
        prop_assert_eq!(parse(&canonical), Some(id.clone()), "{:?} re-rendered as {:?}", path, canonical);
    }
    Ok(())
}

/// Strings made of the pieces the layouts are made of, valid ids among them, so that the
/// accepting branches are reached as well as the rejecting ones.
fn soup() -> impl Strategy<Value = String> {
    let fixed = [
        "/",
        "//",
        "kubepods",
        "kubepods.slice",
        "burstable",
        "besteffort",
        "kubepods-burstable.slice",
        "kubepods-besteffort.slice",
        "kubepods-",
        "-pod",
        "pod",
        ".slice",
        ".scope",
        "cri-containerd-",
        "crio-",
        "docker-",
        "docker",
        "k8s.io",
        "default",
        "..",
        ".",
        "\n",
        "\0",
        "é",
        "🦀",
        "-",
        "_",
        "system.slice",
    ]
    .map(str::to_owned)
    .to_vec();
    let token = prop_oneof![
        6 => select(fixed),
        1 => uid(),
        1 => uid().prop_map(|u| u.replace('-', "_")),
        1 => cid(),
        1 => any::<String>(),
    ];
    vec(token, 0..12).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    /// Every pod layout, QoS class and runtime, with or without a container, in either hex case
    /// and with sloppy slashes: parses back to exactly the uid, QoS, container id and runtime
    /// it was built from (lowercased), whatever lies below the container.
    #[test]
    fn pod_paths_parse_back_to_their_identifiers(
        (driver, runtime) in pod_flavour(),
        qos in qos(),
        uid in uid(),
        container in proptest::option::weighted(0.8, cid()),
        tail in tail(),
        (seps, lead, trail) in noise(),
    ) {
        let mut components = pod_components(driver, qos, &written_uid(driver, &uid));
        if let Some(cid) = &container {
            components.extend(container_dir(driver, runtime, cid));
        }
        components.extend(tail);
        let path = join(&components, &seps, lead, trail);
        let want = Identity {
            pod_uid: Some(uid.to_ascii_lowercase()),
            qos: Some(qos),
            container_id: container.as_ref().map(|cid| cid.to_ascii_lowercase()),
            runtime: container.as_ref().and(runtime),
            driver,
        };
        prop_assert_eq!(parse(&path), Some(want), "{:?}", path);
    }

    /// Containers outside Kubernetes: `/<namespace>/<id>` (Docker's `/docker/<id>` included) and
    /// runtime scopes under any slices.
    #[test]
    fn plain_container_paths_parse_back_to_their_identifiers(
        cid in cid(),
        namespace in namespace(),
        slices in slices(),
        scope in select(vec![("cri-containerd", Runtime::Containerd), ("crio", Runtime::CriO), ("docker", Runtime::Docker)]),
        use_scope in any::<bool>(),
        tail in tail(),
        (seps, lead, trail) in noise(),
    ) {
        let (mut components, want) = if use_scope {
            let mut components = slices;
            components.push(format!("{}-{cid}.scope", scope.0));
            (components, Identity {
                pod_uid: None, qos: None, container_id: Some(cid.to_ascii_lowercase()),
                runtime: Some(scope.1), driver: CgroupDriver::Systemd,
            })
        } else {
            let runtime = if namespace == "docker" { Runtime::Docker } else { Runtime::Containerd };
            (vec![namespace, cid.clone()], Identity {
                pod_uid: None, qos: None, container_id: Some(cid.to_ascii_lowercase()),
                runtime: Some(runtime), driver: CgroupDriver::Cgroupfs,
            })
        };
        components.extend(tail);
        let path = join(&components, &seps, lead, trail);
        prop_assert_eq!(parse(&path), Some(want), "{:?}", path);
    }

    /// A pod uid a character short or long, with a non-hex character or the other driver's
    /// separator: no identity at all (never a pod with the wrong uid), container or not.
    #[test]
    fn spoiled_pod_uids_give_no_identity(
        (driver, runtime) in pod_flavour(),
        qos in qos(),
        uid in uid(),
        spoil in spoil(),
        container in proptest::option::of(cid()),
    ) {
        let separator = if driver == CgroupDriver::Systemd { '_' } else { '-' };
        let bad = apply_spoil(&written_uid(driver, &uid), &spoil, Some(separator));
        let mut components = pod_components(driver, qos, &bad);
        if let Some(cid) = &container {
            components.extend(container_dir(driver, runtime, cid));
        }
        let path = join(&components, &[], 1, false);
        prop_assert_eq!(parse(&path), None, "{:?}", path);
    }

    /// A container id a character short or long or with a non-hex character: below a pod, the
    /// pod with no container; outside Kubernetes, nothing.
    #[test]
    fn spoiled_container_ids_give_no_container(
        (driver, runtime) in pod_flavour(),
        qos in qos(),
        uid in uid(),
        cid in cid(),
        spoil in spoil(),
        namespace in namespace(),
        tail in tail(),
    ) {
        let bad = apply_spoil(&cid, &spoil, None);
        let mut components = pod_components(driver, qos, &written_uid(driver, &uid));
        components.extend(container_dir(driver, runtime, &bad));
        components.extend(tail.clone());
        let path = join(&components, &[], 1, false);
        let pod_only = Identity {
            pod_uid: Some(uid.to_ascii_lowercase()), qos: Some(qos), container_id: None, runtime: None, driver,
        };
        prop_assert_eq!(parse(&path), Some(pod_only), "{:?}", path);

        let mut plain = vec![namespace, bad.clone()];
        plain.extend(tail.clone());
        let path = join(&plain, &[], 1, false);
        prop_assert_eq!(parse(&path), None, "{:?}", path);
        for prefix in ["cri-containerd", "crio", "docker"] {
            let mut scoped = vec!["system.slice".to_owned(), format!("{prefix}-{bad}.scope")];
            scoped.extend(tail.clone());
            let path = join(&scoped, &[], 1, false);
            prop_assert_eq!(parse(&path), None, "{:?}", path);
        }
    }

    /// Arbitrary text and layout soup never panic, and whatever they give keeps the invariants.
    #[test]
    fn any_text_keeps_the_invariants(path in prop_oneof![any::<String>(), soup()]) {
        if let Some(id) = parse(&path) {
            check_identity(&path, &id)?;
        }
    }

    /// Arbitrary bytes, escaped as the resolver escapes paths before parsing, or decoded lossily.
    #[test]
    fn any_bytes_keep_the_invariants(bytes in vec(any::<u8>(), 0..200)) {
        for path in [escape_bytes(&bytes), String::from_utf8_lossy(&bytes).into_owned()] {
            if let Some(id) = parse(&path) {
                check_identity(&path, &id)?;
            }
        }
    }
}
