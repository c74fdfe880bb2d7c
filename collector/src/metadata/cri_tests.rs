use super::*;

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn the_kubelet_labels_name_the_pod() {
    let l = labels(&[
        (POD_NAME_LABEL, "web-0"),
        (POD_NAMESPACE_LABEL, "prod"),
        (POD_UID_LABEL, "1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
        (CONTAINER_NAME_LABEL, "app"),
    ]);
    assert_eq!(
        pod_identity(&l),
        Some(PodIdentity {
            uid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".to_owned(),
            name: "web-0".to_owned(),
            namespace: "prod".to_owned(),
        })
    );
}

#[test]
fn objects_without_all_three_pod_labels_are_not_the_kubelets() {
    assert_eq!(pod_identity(&labels(&[(POD_NAME_LABEL, "x"), (POD_NAMESPACE_LABEL, "y")])), None);
    assert_eq!(pod_identity(&labels(&[(POD_NAME_LABEL, "x"), (POD_NAMESPACE_LABEL, "y"), (POD_UID_LABEL, "")])), None);
    assert_eq!(pod_identity(&HashMap::new()), None);
}

#[test]
fn malformed_verbose_info_gives_no_pid() {
    for info in ["", "{", "[]", r#"{"pid": -1}"#, r#"{"pid": "12"}"#, r#"{"pid": 0}"#, r#"{"pid": 4294967296}"#] {
        let map = HashMap::from([("info".to_owned(), info.to_owned())]);
        assert_eq!(verbose_info(&map), VerboseInfo::default(), "{info}");
    }
    assert_eq!(verbose_info(&HashMap::new()), VerboseInfo::default());
}

/// `info["info"]` of a verbose ContainerStatus, captured from containerd 1.6.20
/// (Debian 12) running a container of a kubelet-labelled pod.
const CONTAINERD_CONTAINER_INFO: &str = include_str!("testdata/containerd-1.6-container-info.json");
/// `info["info"]` of a verbose PodSandboxStatus of that container's sandbox.
const CONTAINERD_SANDBOX_INFO: &str = include_str!("testdata/containerd-1.6-sandbox-info.json");
const SANDBOX_ID: &str = "b615d3bcec36d7f352dbf86931fc9c4856d9f969265a71a3665301a6390e032a";
const CONTAINER_ID: &str = "39b0049d3e5ea2de13d9e1016c0d936fdc763d677e5caea9dc2fa905f3c90e5b";
const UID: &str = "44b2eaf7-78b9-4672-bb0e-745f3172cec0";

fn info(json: &str) -> HashMap<String, String> {
    HashMap::from([("info".to_owned(), json.to_owned())])
}

fn kubelet_labels(container: Option<&str>) -> HashMap<String, String> {
    let mut l =
        labels(&[(POD_NAME_LABEL, "web-13813-2"), (POD_NAMESPACE_LABEL, "collector-test"), (POD_UID_LABEL, UID)]);
    if let Some(c) = container {
        l.insert(CONTAINER_NAME_LABEL.to_owned(), c.to_owned());
    }
    l
}

#[test]
fn containerd_container_info_gives_pid_and_sandbox() {
    assert_eq!(
        verbose_info(&info(CONTAINERD_CONTAINER_INFO)),
        VerboseInfo { pid: Some(14320), sandbox_id: Some(SANDBOX_ID.to_owned()), image: None }
    );
}

#[test]
fn containerd_sandbox_info_gives_the_pause_pid_and_image() {
    assert_eq!(
        verbose_info(&info(CONTAINERD_SANDBOX_INFO)),
        VerboseInfo { pid: Some(14285), sandbox_id: None, image: Some("docker.io/local/busybox:1".to_owned()) }
    );
}

/// CRI-O's verbose container info has the same `pid` and `sandboxID` keys
/// (shape from cri-o's `createContainerInfo`; not captured on this machine).
#[test]
fn crio_container_info_gives_pid_and_sandbox() {
    let crio = r#"{"sandboxID":"abc","pid":4242,"privileged":false,"runtimeSpec":{"ociVersion":"1.0.2"}}"#;
    assert_eq!(
        verbose_info(&info(crio)),
        VerboseInfo { pid: Some(4242), sandbox_id: Some("abc".to_owned()), image: None }
    );
}

#[test]
fn a_status_answer_becomes_a_container() {
    let resp = ContainerStatusResponse {
        status: Some(k8s_cri::v1::ContainerStatus {
            id: CONTAINER_ID.to_owned(),
            metadata: Some(k8s_cri::v1::ContainerMetadata { name: "app".to_owned(), attempt: 3 }),
            state: k8s_cri::v1::ContainerState::ContainerRunning.into(),
            image: Some(k8s_cri::v1::ImageSpec { image: "docker.io/local/busybox:1".to_owned(), ..Default::default() }),
            labels: kubelet_labels(Some("app")),
            ..Default::default()
        }),
        info: info(CONTAINERD_CONTAINER_INFO),
    };
    assert_eq!(
        container_meta_from_status(CONTAINER_ID, &resp),
        Some(ContainerMeta {
            container_id: CONTAINER_ID.to_owned(),
            container_name: "app".to_owned(),
            pod_uid: UID.to_owned(),
            pod_name: "web-13813-2".to_owned(),
            namespace: "collector-test".to_owned(),
            restart_count: 3,
            image: "docker.io/local/busybox:1".to_owned(),
            is_sandbox: false,
            pid: Some(14320),
            init_container: None,
            sandbox_id: Some(SANDBOX_ID.to_owned()),
            state: ContainerState::Running,
        })
    );
}

#[test]
fn a_listed_sandbox_is_the_pods_pause_container_and_its_labels_are_the_pods() {
    let mut l = kubelet_labels(None);
    l.insert("app".to_owned(), "web".to_owned());
    let sandbox = PodSandbox {
        id: SANDBOX_ID.to_owned(),
        metadata: Some(k8s_cri::v1::PodSandboxMetadata {
            name: "web-13813-2".to_owned(),
            uid: UID.to_owned(),
            namespace: "collector-test".to_owned(),
            attempt: 1,
        }),
        state: PodSandboxState::SandboxReady.into(),
        labels: l,
        ..Default::default()
    };
    let status = PodSandboxStatusResponse { info: info(CONTAINERD_SANDBOX_INFO), ..Default::default() };
    let meta = sandbox_container(&sandbox, Some(&status)).unwrap();
    assert_eq!(
        meta,
        ContainerMeta {
            container_id: SANDBOX_ID.to_owned(),
            container_name: "POD".to_owned(),
            pod_uid: UID.to_owned(),
            pod_name: "web-13813-2".to_owned(),
            namespace: "collector-test".to_owned(),
            restart_count: 1,
            image: "docker.io/local/busybox:1".to_owned(),
            is_sandbox: true,
            pid: Some(14285),
            init_container: Some(false),
            sandbox_id: Some(SANDBOX_ID.to_owned()),
            state: ContainerState::Running,
        }
    );
    let pod = pod_meta(&sandbox).unwrap();
    assert_eq!(pod.labels, Some(std::collections::BTreeMap::from([("app".to_owned(), "web".to_owned())])));
    let mut stopped = sandbox;
    stopped.state = PodSandboxState::SandboxNotready.into();
    let meta = sandbox_container(&stopped, Some(&status)).unwrap();
    assert_eq!((meta.state, meta.pid), (ContainerState::Exited, None));
}

#[test]
fn a_listed_container_without_the_container_label_falls_back_to_metadata() {
    let c = Container {
        id: "c1".to_owned(),
        pod_sandbox_id: SANDBOX_ID.to_owned(),
        metadata: Some(k8s_cri::v1::ContainerMetadata { name: "sidecar".to_owned(), attempt: 2 }),
        image: Some(k8s_cri::v1::ImageSpec { image: "sha256:51baf3c7".to_owned(), ..Default::default() }),
        state: k8s_cri::v1::ContainerState::ContainerCreated.into(),
        labels: kubelet_labels(None),
        ..Default::default()
    };
    let meta = container_meta(&c, None).unwrap();
    assert_eq!(meta.container_name, "sidecar");
    assert_eq!(meta.restart_count, 2);
    assert_eq!(meta.image, "sha256:51baf3c7");
    assert_eq!(meta.sandbox_id.as_deref(), Some(SANDBOX_ID));
    assert_eq!((meta.state, meta.pid), (ContainerState::Created, None));
    let unlabelled = Container { labels: HashMap::new(), ..c };
    assert_eq!(container_meta(&unlabelled, None), None);
}
