//! Pod and container metadata from a real containerd over CRI: the cache names a
//! container's pod exactly as the kubelet labelled it, finds the runtime's pid,
//! tells the sandbox apart, resolves pods that existed before it started, and
//! keeps removed pods resolvable as tombstones for the ttl.
#![expect(clippy::expect_used, reason = "the helpers are test steps: a failure fails the test")]

use std::time::{Duration, Instant};

use collector::metadata::{
    ContainerMeta, ContainerState, CriSocket, MetadataCache, MetadataConfig, PodMeta, SANDBOX_CONTAINER_NAME,
};
use collector_tests::containerd::Containerd;
use collector_tests::kubelet::{ContainerSpec, PodSpec};
use collector_tests::privileged;

/// The image the harness imports, as ContainerStatus names it.
const IMAGE: &str = collector_tests::image::BUSYBOX_IMAGE;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn config(containerd: &Containerd, ttl: Duration) -> MetadataConfig {
    MetadataConfig { cri: CriSocket::Path(containerd.address()), kube: None, tombstone_ttl: ttl, ..Default::default() }
}

#[test]
fn a_cache_started_after_the_pod_names_its_containers_and_sandbox() {
    if !privileged("a_cache_started_after_the_pod_names_its_containers_and_sandbox") {
        return;
    }
    let containerd = Containerd::start().expect("containerd");
    let cri = containerd.cri();
    let pod = cri.run_pod(PodSpec::unique("web")).expect("pod");
    let app = cri.create_and_start(&pod, ContainerSpec::shell("app", "sleep 30")).expect("container");
    let pid = cri.container_pid(&app).expect("pid from CRI");

    let rt = runtime();
    let started = Instant::now();
    let cache = rt.block_on(MetadataCache::start(config(&containerd, Duration::from_secs(300)))).expect("cache");
    let start_time = started.elapsed();

    assert_eq!(
        cache.container(&app.id),
        Some(ContainerMeta {
            container_id: app.id.clone(),
            container_name: "app".to_owned(),
            pod_uid: pod.spec.uid.clone(),
            pod_name: pod.spec.name.clone(),
            namespace: "collector-test".to_owned(),
            restart_count: 0,
            image: IMAGE.to_owned(),
            is_sandbox: false,
            pid: Some(pid),
            init_container: None,
            sandbox_id: Some(pod.id.clone()),
            state: ContainerState::Running,
        })
    );
    let sandbox = cache.container(&pod.id).expect("sandbox resolves");
    assert!(sandbox.is_sandbox);
    assert_eq!(sandbox.container_name, SANDBOX_CONTAINER_NAME);
    assert_eq!(sandbox.pod_uid, pod.spec.uid);
    assert_eq!(sandbox.pod_name, pod.spec.name);
    assert_eq!(sandbox.namespace, "collector-test");
    assert_eq!(sandbox.restart_count, 0);
    assert_eq!(sandbox.state, ContainerState::Running);
    assert_eq!(sandbox.image, IMAGE, "the harness's sandbox image");
    let sandbox_pid = sandbox.pid.expect("the pause process's pid");
    assert_ne!(sandbox_pid, pid);
    assert!(
        std::path::Path::new(&format!("/proc/{sandbox_pid}")).exists(),
        "sandbox pid {sandbox_pid} is a live process"
    );
    assert_eq!(
        cache.pod(&pod.spec.uid),
        Some(PodMeta {
            uid: pod.spec.uid.clone(),
            name: pod.spec.name.clone(),
            namespace: "collector-test".to_owned(),
            owner: None,
            stopping: None,
            labels: Some(Default::default()),
        })
    );
    let stats = cache.stats();
    assert_eq!((stats.cri_errors, stats.refreshes), (0, 1), "{stats:?}");
    assert_eq!((stats.pods, stats.containers), (1, 2), "{stats:?}");
    assert!(start_time < Duration::from_secs(2), "start took {start_time:?}");
}

#[test]
fn an_unknown_container_resolves_by_refresh_and_a_removed_pod_by_tombstone() {
    if !privileged("an_unknown_container_resolves_by_refresh_and_a_removed_pod_by_tombstone") {
        return;
    }
    let containerd = Containerd::start().expect("containerd");
    let cri = containerd.cri();
    let rt = runtime();
    let ttl = Duration::from_secs(3);
    let cache = rt.block_on(MetadataCache::start(config(&containerd, ttl))).expect("cache");
    assert_eq!(cache.stats().containers, 0);

    // Made after the cache listed: unknown until a refresh.
    let pod = cri.run_pod(PodSpec::unique("late")).expect("pod");
    let app = cri.create_and_start(&pod, ContainerSpec::shell("worker", "sleep 30")).expect("container");
    let pid = cri.container_pid(&app).expect("pid from CRI");
    assert_eq!(cache.container(&app.id), None);

    let refreshed = Instant::now();
    let found = rt.block_on(cache.resolve_container(&app.id, Duration::from_secs(2))).expect("resolves by refresh");
    let refresh_time = refreshed.elapsed();
    assert_eq!(found.container_name, "worker");
    assert_eq!(found.pod_uid, pod.spec.uid);
    assert_eq!(found.pod_name, pod.spec.name);
    assert_eq!(found.namespace, "collector-test");
    assert_eq!(found.pid, Some(pid));
    assert_eq!(found.restart_count, 0);
    assert!(!found.is_sandbox);
    assert_eq!(found.image, IMAGE);
    assert_eq!(cache.container(&app.id), Some(found.clone()));

    let sandbox = rt.block_on(cache.refresh_container(&pod.id)).expect("CRI answers").expect("the sandbox id resolves");
    assert!(sandbox.is_sandbox);
    assert_eq!(sandbox.pod_uid, pod.spec.uid);
    let by_pod = rt.block_on(cache.refresh_pod(&pod.spec.uid)).expect("CRI answers").expect("pod");
    assert_eq!(by_pod.name, pod.spec.name);

    // Gone from the runtime: a refresh turns the entries into tombstones that
    // still resolve, with the pid the container had.
    cri.remove_pod(&pod).expect("remove pod");
    let removed = Instant::now();
    let after = rt.block_on(cache.refresh_pod(&pod.spec.uid)).expect("CRI answers");
    assert_eq!(after.map(|p| p.name), Some(pod.spec.name.clone()));
    let tomb = rt.block_on(cache.refresh_container(&app.id)).expect("CRI answers");
    assert_eq!(tomb, Some(found.clone()), "the tombstone keeps everything");
    assert_eq!(cache.container(&pod.id).map(|s| s.is_sandbox), Some(true));

    // And expire with the ttl.
    std::thread::sleep(ttl.saturating_sub(removed.elapsed()) + Duration::from_millis(50));
    assert_eq!(cache.container(&app.id), None);
    assert_eq!(cache.container(&pod.id), None);
    assert_eq!(cache.pod(&pod.spec.uid), None);
    cache.purge();
    let stats = cache.stats();
    assert_eq!(stats.cri_errors, 0, "{stats:?}");
    assert_eq!((stats.pods, stats.containers), (0, 0), "{stats:?}");
    assert!(refresh_time < Duration::from_secs(2), "refresh took {refresh_time:?}");
}
