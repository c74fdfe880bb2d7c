//! Identity in `collector trace` records with a real containerd: every record of a pod's
//! container names the pod, its namespace and uid, the container's name and id, and whether
//! the process was the container's main one, also for a collector started after the pod,
//! for records that race the pod's removal, and (from the cgroup path alone) without CRI.
#![expect(clippy::unwrap_used, reason = "the helpers are test steps: a failure fails the test")]

use std::time::Duration;

use collector_tests::collector::{Collector, Stopped};
use collector_tests::containerd::Containerd;
use collector_tests::kubelet::{Container, ContainerSpec, Pod, PodSpec};
use collector_tests::privileged;
use serde_json::{Value, json};

/// The container's memory limit in the OOM test.
const LIMIT: u64 = 32 << 20;
/// Bound on a record showing up once its cause happened (names may wait for CRI up to 2 s).
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Pod `web-0` in namespace `shop`, with a fresh uid (and so its own cgroup): every test
/// runs its own containerd, so the names may repeat across tests running in parallel.
fn web_0_spec() -> PodSpec {
    PodSpec { name: "web-0".to_owned(), namespace: "shop".to_owned(), ..PodSpec::unique("web") }
}

fn web_0(containerd: &Containerd) -> Pod {
    containerd.cri().run_pod(web_0_spec()).unwrap()
}

fn trace(containerd: &Containerd, pod_uid: &str, extra: &[&str]) -> Collector {
    let socket = containerd.address().display().to_string();
    // The pod's cgroup may not exist yet: the prefix then filters in user space only.
    let cgroup = format!("/kubepods/burstable/pod{pod_uid}");
    let mut args = vec!["--cri-socket", &socket, "--cgroup", &cgroup];
    args.extend_from_slice(extra);
    Collector::trace(&args).unwrap()
}

fn stop(collector: Collector) -> Stopped {
    // Anything racing the last awaited record arrives now.
    std::thread::sleep(Duration::from_millis(200));
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "collector failed: {}", stopped.stderr);
    assert_eq!(stopped.summary("lost").unwrap(), 0, "{}", stopped.stderr);
    assert_eq!(stopped.summary("malformed").unwrap(), 0, "{}", stopped.stderr);
    stopped
}

/// The identity members of a record, for exact comparison.
fn identity(record: &Value) -> Value {
    json!({
        "container_id": record["container_id"], "pod_uid": record["pod_uid"], "pod_name": record["pod_name"],
        "namespace": record["namespace"], "container_name": record["container_name"],
    })
}

/// What every record of `container` in `pod` must name.
fn names(pod: &Pod, container: &Container) -> Value {
    json!({
        "container_id": container.id, "pod_uid": pod.spec.uid, "pod_name": "web-0", "namespace": "shop",
        "container_name": container.name,
    })
}

fn is_64_hex(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The records of `kind` in `cgroup`, leaving out the exits of runc's own init stages
/// (`runc:[0:PARENT]`, `runc:[1:CHILD]`), which also run in the container's cgroup.
fn of_type<'a>(records: &'a [Value], kind: &str, cgroup: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == kind && r["cgroup_path"] == cgroup)
        .filter(|r| !r["comm"].as_str().is_some_and(|comm| comm.starts_with("runc:[")))
        .collect()
}

/// The single exit record of the container's main process.
fn main_exit<'a>(records: &'a [Value], container: &Container) -> &'a Value {
    let mains: Vec<&Value> =
        of_type(records, "exit", &container.cgroup).into_iter().filter(|r| r["main_process"] == true).collect();
    assert_eq!(mains.len(), 1, "one main-process exit in {}: {records:#?}", container.cgroup);
    mains[0]
}

#[test]
fn a_main_process_exit_names_its_pod_and_container() {
    if !privileged("a_main_process_exit_names_its_pod_and_container") {
        return;
    }
    main_process_exit_names_its_pod_and_container(&["--type", "exit"]);
}

#[test]
fn the_helper_reads_of_kernels_before_5_11_find_the_main_process_too() {
    if !privileged("the_helper_reads_of_kernels_before_5_11_find_the_main_process_too") {
        return;
    }
    // The pid in the container's namespace, read the other way.
    main_process_exit_names_its_pod_and_container(&["--type", "exit", "--kernel-reads", "helper"]);
}

/// A container's shell exits 3 after a child: the shell's exit is the main process's, with
/// the pod's and container's names, and the child's is not.
fn main_process_exit_names_its_pod_and_container(args: &[&str]) {
    let containerd = Containerd::start().unwrap();
    let spec = web_0_spec();
    let collector = trace(&containerd, &spec.uid, args);
    let pod = containerd.cri().run_pod(spec).unwrap();
    let app = containerd.cri().create_and_start(&pod, ContainerSpec::shell("app", "sleep 0.2; exit 3")).unwrap();
    assert_eq!(containerd.cri().wait_exit(&app, RECORD_TIMEOUT).unwrap(), 3);
    let cgroup = app.cgroup.clone();
    collector
        .wait_for(RECORD_TIMEOUT, |records| {
            records.iter().any(|r| r["cgroup_path"] == cgroup.as_str() && r["main_process"] == true)
        })
        .unwrap();
    let records = stop(collector).records;

    let exit = main_exit(&records, &app);
    assert!(is_64_hex(&app.id), "{}", app.id);
    assert_eq!(identity(exit), names(&pod, &app));
    assert_eq!(
        (&exit["comm"], &exit["exit_code"], &exit["signal"], &exit["oom_killed"], &exit["sender"]),
        (&json!("sh"), &json!(3), &Value::Null, &json!(false), &Value::Null)
    );
    // The `sleep` child: same names, not the main process.
    let children: Vec<&Value> = of_type(&records, "exit", &app.cgroup).into_iter().filter(|r| r != &exit).collect();
    assert_eq!(children.len(), 1, "{records:#?}");
    assert_eq!(children[0]["comm"], "sleep");
    assert_eq!(children[0]["exit_code"], 0);
    assert_eq!(children[0]["main_process"], false);
    assert_eq!(identity(children[0]), names(&pod, &app));
}

#[test]
fn a_child_oom_kill_names_its_container_and_the_container_scope() {
    if !privileged("a_child_oom_kill_names_its_container_and_the_container_scope") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let pod = web_0(&containerd);
    let collector = trace(&containerd, &pod.spec.uid, &["--type", "exit,oom_kill"]);
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1; exit 0";
    let spec = ContainerSpec { memory_limit_bytes: Some(LIMIT), ..ContainerSpec::shell("app", script) };
    let app = containerd.cri().create_and_start(&pod, spec).unwrap();
    // The shell goes on after its child's OOM kill and exits 0 (containerd still says
    // `OOMKilled`: it reports any OOM event in the container's cgroup).
    assert_eq!(containerd.cri().wait_exit(&app, RECORD_TIMEOUT).unwrap(), 0);
    let cgroup = app.cgroup.clone();
    collector
        .wait_for(RECORD_TIMEOUT, |records| {
            let here = |kind: &str| records.iter().any(|r| r["type"] == kind && r["cgroup_path"] == cgroup.as_str());
            here("oom_kill") && records.iter().any(|r| r["cgroup_path"] == cgroup.as_str() && r["main_process"] == true)
        })
        .unwrap();
    let records = stop(collector).records;

    let ooms = of_type(&records, "oom_kill", &app.cgroup);
    assert_eq!(ooms.len(), 1, "{records:#?}");
    let oom = ooms[0];
    assert_eq!(identity(oom), names(&pod, &app));
    assert_eq!(
        (&oom["comm"], &oom["scope"], &oom["main_process"], &oom["memory_limit_bytes"], &oom["trigger_comm"]),
        (&json!("dd"), &json!("container"), &json!(false), &json!(LIMIT), &json!("dd"))
    );
    assert_eq!(oom["oom_cgroup_path"], app.cgroup, "the container's own limit was hit");
    let dd: Vec<&Value> =
        of_type(&records, "exit", &app.cgroup).into_iter().filter(|r| r["pid"] == oom["pid"]).collect();
    assert_eq!(dd.len(), 1, "{records:#?}");
    assert_eq!(
        (&dd[0]["comm"], &dd[0]["signal"], &dd[0]["exit_code"], &dd[0]["oom_killed"], &dd[0]["main_process"]),
        (&json!("dd"), &json!(9), &json!(137), &json!(true), &json!(false))
    );
    assert_eq!(identity(dd[0]), names(&pod, &app));
    let main = main_exit(&records, &app);
    assert_eq!((&main["exit_code"], &main["oom_killed"]), (&json!(0), &json!(false)));
    assert_eq!(identity(main), names(&pod, &app));
}

#[test]
fn a_collector_started_after_the_pod_resolves_it() {
    if !privileged("a_collector_started_after_the_pod_resolves_it") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let pod = web_0(&containerd);
    // SIGTERM is ignored by a pid namespace's init without a handler: the trap makes it exit 5.
    let script = "trap 'exit 5' TERM; while true; do sleep 0.05; done";
    let app = containerd.cri().create_and_start(&pod, ContainerSpec::shell("app", script)).unwrap();
    let pid = containerd.cri().container_pid(&app).unwrap();
    // Read while the container runs: its cgroup goes with it.
    let cgroup_id = cgroup_id(&app.cgroup);

    // Both the cgroup (start-up walk of the tree) and the names (CRI list) predate it.
    let collector = trace(&containerd, &pod.spec.uid, &["--type", "exit", "--metadata-wait", "0s"]);
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid.cast_signed(), libc::SIGTERM) }, 0);
    assert_eq!(containerd.cri().wait_exit(&app, RECORD_TIMEOUT).unwrap(), 5);
    let cgroup = app.cgroup.clone();
    collector
        .wait_for(RECORD_TIMEOUT, |records| {
            records.iter().any(|r| r["cgroup_path"] == cgroup.as_str() && r["main_process"] == true)
        })
        .unwrap();
    let records = stop(collector).records;

    // With no time to ask CRI (`--metadata-wait 0s`), only what the start-up list gave names it.
    let exit = main_exit(&records, &app);
    assert_eq!(identity(exit), names(&pod, &app));
    assert_eq!((&exit["pid"], &exit["comm"], &exit["exit_code"]), (&json!(pid), &json!("sh"), &json!(5)));
    assert_eq!(exit["cgroup_id"], cgroup_id);
    for record in of_type(&records, "exit", &app.cgroup) {
        assert_eq!(identity(record), names(&pod, &app), "{record:#}");
    }
}

/// The inode number of a cgroup v2 directory, which is its id.
fn cgroup_id(cgroup: &str) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let dir = collector_tests::cgroupfs::v2_dir(cgroup).unwrap();
    std::fs::metadata(dir).unwrap().ino()
}

#[test]
fn records_racing_the_pods_removal_still_name_it() {
    if !privileged("records_racing_the_pods_removal_still_name_it") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let spec = web_0_spec();
    let collector = trace(&containerd, &spec.uid, &["--type", "exit,cgroup_mkdir,cgroup_rmdir"]);
    let pod = containerd.cri().run_pod(spec).unwrap();
    let app = containerd.cri().create_and_start(&pod, ContainerSpec::shell("app", "sleep 30 & wait")).unwrap();
    // The collector has named the container (from its cgroup_mkdir) before the pod goes.
    let cgroup = app.cgroup.clone();
    collector
        .wait_for(RECORD_TIMEOUT, |records| {
            records.iter().any(|r| r["type"] == "cgroup_mkdir" && r["cgroup_path"] == cgroup.as_str())
        })
        .unwrap();
    containerd.cri().remove_pod(&pod).unwrap();
    // The pod's own cgroup goes last, after RemovePodSandbox: nothing about the pod is left in
    // the runtime by then.
    let pod_cgroup = pod.cgroup().to_owned();
    collector
        .wait_for(RECORD_TIMEOUT, |records| {
            records.iter().any(|r| r["type"] == "cgroup_rmdir" && r["cgroup_path"] == pod_cgroup.as_str())
        })
        .unwrap();
    let records = stop(collector).records;

    let app_records = |kind| of_type(&records, kind, &app.cgroup);
    assert_eq!(app_records("cgroup_rmdir").len(), 1, "{records:#?}");
    let exits = app_records("exit");
    // sh and sleep, both killed by the runtime.
    assert_eq!(exits.len(), 2, "{records:#?}");
    for record in exits.iter().chain(&app_records("cgroup_rmdir")) {
        assert_eq!(identity(record), names(&pod, &app), "{record:#}");
    }
    let main = main_exit(&records, &app);
    assert_eq!((&main["comm"], &main["signal"]), (&json!("sh"), &json!(9)));
    // The sandbox (pause) and the pod's cgroup name the pod but no container of its spec.
    let sandbox_cgroup = pod.sandbox_cgroup();
    for (kind, cgroup, container_id) in [
        ("cgroup_rmdir", sandbox_cgroup.as_str(), json!(pod.id)),
        ("exit", sandbox_cgroup.as_str(), json!(pod.id)),
        ("cgroup_rmdir", pod.cgroup(), Value::Null),
    ] {
        let found = of_type(&records, kind, cgroup);
        assert_eq!(found.len(), 1, "one {kind} in {cgroup}: {records:#?}");
        assert_eq!(
            identity(found[0]),
            json!({
                "container_id": container_id, "pod_uid": pod.spec.uid, "pod_name": "web-0", "namespace": "shop",
                "container_name": null,
            }),
            "{kind} in {cgroup}"
        );
    }
}

#[test]
fn without_cri_the_path_still_gives_the_pod_uid_and_container_id() {
    if !privileged("without_cri_the_path_still_gives_the_pod_uid_and_container_id") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let pod = web_0(&containerd);
    let cgroup = pod.cgroup().to_owned();
    let collector = Collector::trace(&["--cri-socket", "none", "--cgroup", &cgroup, "--type", "exit"]).unwrap();
    let app = containerd.cri().create_and_start(&pod, ContainerSpec::shell("app", "exit 3")).unwrap();
    assert_eq!(containerd.cri().wait_exit(&app, RECORD_TIMEOUT).unwrap(), 3);
    let cgroup = app.cgroup.clone();
    collector.wait_for(RECORD_TIMEOUT, |records| records.iter().any(|r| r["cgroup_path"] == cgroup.as_str())).unwrap();
    let records = stop(collector).records;

    let exit = main_exit(&records, &app);
    assert_eq!(
        identity(exit),
        json!({
            "container_id": app.id, "pod_uid": pod.spec.uid, "pod_name": null, "namespace": null,
            "container_name": null,
        })
    );
    assert_eq!((&exit["comm"], &exit["exit_code"]), (&json!("sh"), &json!(3)));
}
