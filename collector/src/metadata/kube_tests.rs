use super::*;

/// A Deployment's pod as the API returns it after one restart of `app` (an
/// OOM kill), with an init container; trimmed to the fields the cache reads
/// plus a few it must ignore.
const POD: &str = r#"{
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {
    "name": "web-5d8f7c9b4-x2x7q",
    "namespace": "prod",
    "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    "labels": {"app": "web", "pod-template-hash": "5d8f7c9b4"},
    "ownerReferences": [
      {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-the-controller", "uid": "u0"},
      {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7c9b4",
       "uid": "u1", "controller": true, "blockOwnerDeletion": true}
    ]
  },
  "spec": {
    "nodeName": "node-1",
    "initContainers": [{"name": "migrate", "image": "busybox:1"}],
    "containers": [{"name": "app", "image": "nginx:1.27"}]
  },
  "status": {
    "phase": "Running",
    "initContainerStatuses": [{
      "name": "migrate", "image": "docker.io/library/busybox:1", "imageID": "",
      "containerID": "containerd://aaaa", "ready": true, "restartCount": 0,
      "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                               "containerID": "containerd://aaaa"}}
    }],
    "containerStatuses": [{
      "name": "app", "image": "docker.io/library/nginx:1.27", "imageID": "",
      "containerID": "containerd://cccc", "ready": true, "restartCount": 1,
      "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}},
      "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                   "containerID": "containerd://bbbb"}}
    }]
  }
}"#;

fn container(id: &str, name: &str, restarts: u32, init: bool, state: ContainerState) -> ContainerMeta {
    ContainerMeta {
        container_id: id.to_owned(),
        container_name: name.to_owned(),
        pod_uid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".to_owned(),
        pod_name: "web-5d8f7c9b4-x2x7q".to_owned(),
        namespace: "prod".to_owned(),
        restart_count: restarts,
        image: if init { "docker.io/library/busybox:1" } else { "docker.io/library/nginx:1.27" }.to_owned(),
        is_sandbox: false,
        pid: None,
        init_container: Some(init),
        sandbox_id: None,
        state,
    }
}

#[test]
fn an_api_pod_gives_owner_labels_init_containers_and_container_ids() {
    let pod: Pod = serde_json::from_str(POD).unwrap();
    let view = pod_view(&pod).unwrap();
    assert_eq!(
        view.pod,
        PodMeta {
            uid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".to_owned(),
            name: "web-5d8f7c9b4-x2x7q".to_owned(),
            namespace: "prod".to_owned(),
            owner: Some(Owner { kind: "ReplicaSet".to_owned(), name: "web-5d8f7c9b4".to_owned() }),
            labels: Some(BTreeMap::from([
                ("app".to_owned(), "web".to_owned()),
                ("pod-template-hash".to_owned(), "5d8f7c9b4".to_owned()),
            ])),
            stopping: None,
        }
    );
    assert_eq!(view.init_containers, BTreeSet::from(["migrate".to_owned()]));
    assert_eq!(
        view.containers,
        vec![
            container("cccc", "app", 1, false, ContainerState::Running),
            container("bbbb", "app", 0, false, ContainerState::Exited),
            container("aaaa", "migrate", 0, true, ContainerState::Exited),
        ]
    );
}

#[test]
fn a_pending_pod_without_statuses_or_owner_still_names_itself() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "solo", "namespace": "default", "uid": "u-1"},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"phase": "Pending", "containerStatuses": [
            {"name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ContainerCreating"}}}
        ]}
    }))
    .unwrap();
    let view = pod_view(&pod).unwrap();
    assert_eq!(view.pod.owner, None);
    assert_eq!(view.pod.labels, Some(BTreeMap::new()));
    assert_eq!(view.containers, vec![], "no containerID yet");
}

#[test]
fn a_pod_without_uid_is_skipped() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "x", "namespace": "default"}
    }))
    .unwrap();
    assert_eq!(pod_view(&pod), None);
}

#[test]
fn runtime_ids_lose_their_scheme() {
    assert_eq!(runtime_id("containerd://abc"), Some("abc"));
    assert_eq!(runtime_id("cri-o://abc"), Some("abc"));
    assert_eq!(runtime_id("containerd://"), None);
    assert_eq!(runtime_id("abc"), None);
}

/// The watch loop on a scripted stream: a relist that lacks a pod removes it.
#[tokio::test]
async fn watch_events_fill_the_store_and_a_relist_drops_missed_deletions() {
    use std::time::Duration;
    let cache = super::super::MetadataCache::empty(
        &MetadataConfig { tombstone_ttl: Duration::from_secs(300), ..Default::default() },
        None,
    );
    let pod: Pod = serde_json::from_str(POD).unwrap();
    let mut other = pod.clone();
    other.metadata.uid = Some("other-uid".to_owned());
    other.status = None;
    let events = vec![
        Ok(watcher::Event::Init),
        Ok(watcher::Event::InitApply(pod.clone())),
        Ok(watcher::Event::InitApply(other.clone())),
        Ok(watcher::Event::InitDone),
        Ok(watcher::Event::Init),
        Ok(watcher::Event::InitApply(pod.clone())),
        Ok(watcher::Event::InitDone),
    ];
    run(futures_util::stream::iter(events), Arc::clone(&cache.shared)).await;
    let got = cache.container("bbbb").unwrap();
    assert_eq!((got.restart_count, got.init_container), (0, Some(false)));
    assert_eq!(cache.pod("1b4e28ba-2fa1-11d2-883f-0016d3cca427").unwrap().owner.unwrap().name, "web-5d8f7c9b4");
    assert!(!cache.shared.read().kube_pods().contains(&"other-uid".to_owned()));
    assert_eq!(cache.stats().kube_events, 7);

    run(futures_util::stream::iter(vec![Ok(watcher::Event::Delete(pod))]), Arc::clone(&cache.shared)).await;
    assert!(cache.shared.read().kube_pods().is_empty());
    // A tombstone: still resolves for the ttl.
    assert_eq!(cache.container("cccc").unwrap().container_name, "app");
}

/// A loopback stand-in for the API server (a test double, not a real one): it
/// answers `/version`, lists [`POD`] for a pod list, holds watches open without
/// events, and records every request line.
fn fake_api_server() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut out = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let request = line.trim_end().to_owned();
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                    }
                    seen.lock().unwrap().push(request.clone());
                    let path = request.split(' ').nth(1).unwrap_or_default();
                    if path.contains("watch=true") {
                        let _ = out.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                        );
                        std::thread::sleep(std::time::Duration::from_secs(30));
                        return;
                    }
                    let body = if path.starts_with("/version") {
                        serde_json::json!({
                            "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "",
                            "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "gc",
                            "platform": "linux/amd64"
                        })
                        .to_string()
                    } else {
                        let pod: serde_json::Value = serde_json::from_str(POD).unwrap();
                        serde_json::json!({
                            "apiVersion": "v1", "kind": "PodList",
                            "metadata": {"resourceVersion": "10"}, "items": [pod]
                        })
                        .to_string()
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, requests)
}

/// The real kube client and watcher against the stand-in: this node's pods only,
/// and with no CRI the API alone names the pod and its containers.
#[tokio::test]
async fn the_watch_asks_for_this_nodes_pods_and_fills_the_cache_without_cri() {
    use std::time::Duration;
    let (url, requests) = fake_api_server();
    let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    // The client the daemon built from `--kubeconfig` is the one the watch uses.
    let config = MetadataConfig {
        cri: super::super::CriSocket::Off,
        node_name: Some("node-1".to_owned()),
        kube: Some(KubeClient(client)),
        call_timeout: Duration::from_secs(5),
        ..MetadataConfig::default()
    };
    let cache = super::super::MetadataCache::start(config).await.unwrap();
    let uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.pod(uid).is_none() {
        assert!(Instant::now() < deadline, "pod never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pod = cache.pod(uid).unwrap();
    assert_eq!(pod.owner.unwrap().kind, "ReplicaSet");
    assert_eq!(cache.container("cccc"), Some(container("cccc", "app", 1, false, ContainerState::Running)));
    let requests = requests.lock().unwrap().clone();
    let lists: Vec<&String> = requests.iter().filter(|r| r.contains("/api/v1/pods")).collect();
    assert!(!lists.is_empty(), "{requests:?}");
    for r in lists {
        assert!(r.contains("fieldSelector=spec.nodeName%3Dnode-1"), "{r}");
    }
}

#[test]
fn a_pod_being_deleted_or_evicted_says_why() {
    let pod = |metadata: serde_json::Value, conditions: serde_json::Value| {
        let mut meta = serde_json::json!({"name": "web-1", "namespace": "prod", "uid": "u-1"});
        meta.as_object_mut().unwrap().extend(metadata.as_object().unwrap().clone());
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": meta,
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running", "conditions": conditions}
        }))
        .unwrap();
        pod_view(&pod).unwrap().pod.stopping
    };
    let ready = serde_json::json!([{"type": "Ready", "status": "True"}]);
    assert_eq!(pod(serde_json::json!({}), ready.clone()), None);
    assert_eq!(
        pod(serde_json::json!({"deletionTimestamp": "2026-12-06T10:00:00Z"}), ready),
        Some(PodStop { deleted: true, reason: None, message: None })
    );
    let evicted = serde_json::json!([
        {"type": "Ready", "status": "True"},
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
         "message": "Eviction API: evicting"}
    ]);
    assert_eq!(
        pod(serde_json::json!({"deletionTimestamp": "2026-12-06T10:00:00Z"}), evicted),
        Some(PodStop {
            deleted: true,
            reason: Some("EvictionByEvictionAPI".to_owned()),
            message: Some("Eviction API: evicting".to_owned())
        })
    );
    // The kubelet's node-pressure eviction stops the pod without deleting it.
    let pressure = serde_json::json!([{"type": "DisruptionTarget", "status": "True",
        "reason": "TerminationByKubelet", "message": "The node was low on resource: memory."}]);
    assert_eq!(
        pod(serde_json::json!({}), pressure),
        Some(PodStop {
            deleted: false,
            reason: Some("TerminationByKubelet".to_owned()),
            message: Some("The node was low on resource: memory.".to_owned())
        })
    );
    // A condition that is not True says nothing.
    let cleared =
        serde_json::json!([{"type": "DisruptionTarget", "status": "False", "reason": "EvictionByEvictionAPI"}]);
    assert_eq!(pod(serde_json::json!({}), cleared), None);
}
