//! Cause of death in real containers (a private containerd over CRI, the
//! kubelet's cgroupfs layout): a container's exit carries its cgroup; a child
//! OOM-killed by the container's limit, or by the pod's, is reported with the
//! cgroup and limit it hit while the main process goes on; the container's
//! cgroup is created and removed under the id its exits carry.
//!
//! Each container's shell waits for `/tmp/go` before it ends, so the test can
//! read its pid, parent and cgroup while it runs.
#![expect(clippy::unwrap_used, reason = "the helpers are test steps: a failure fails the test")]

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use collector::clock::Timestamp;
use collector_tests::{
    cgroupfs,
    collector::{Collector, Stopped},
    containerd::Containerd,
    kubelet::{Container, ContainerSpec, Pod, PodSpec},
    memcg::victim_memory,
    privileged,
};
use serde_json::{Value, json};

const LIMIT: u64 = 32 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);
const WAIT_FOR_GO: &str = "while [ ! -e /tmp/go ]; do sleep 0.02; done";

/// The container's main process, read while it runs.
struct Main {
    pid: u32,
    /// The shim (its parent once runc is gone).
    ppid: u32,
    oom_score_adj: i64,
    /// The container's cgroup v2 id.
    cgroup_id: u64,
}

fn main_process(containerd: &Containerd, container: &Container) -> Main {
    let pid = containerd.cri().container_pid(container).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // pid (comm) state ppid ...: the name may hold spaces, so split after the last ')'.
    let ppid = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap();
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    let cgroup_id = std::fs::metadata(cgroupfs::v2_dir(&container.cgroup).unwrap()).unwrap().ino();
    Main { pid, ppid, oom_score_adj: adj.trim().parse().unwrap(), cgroup_id }
}

/// Lets the container's shell end, and waits until it has.
fn go_and_wait(containerd: &Containerd, container: &Container, main: &Main) -> i32 {
    std::fs::write(format!("/proc/{}/root/tmp/go", main.pid), "").unwrap();
    containerd.cri().wait_exit(container, TIMEOUT).unwrap()
}

/// Waits until the records are `done` and a quiet moment passed, and stops.
fn stop(collector: Collector, done: impl Fn(&[Value]) -> bool) -> Stopped {
    collector.wait_for(TIMEOUT, done).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "collector failed: {}", stopped.stderr);
    assert_eq!(stopped.summary("lost").unwrap(), 0);
    stopped
}

fn has(records: &[Value], kind: &str, field: &str, value: &Value) -> bool {
    records.iter().any(|r| r["type"] == kind && &r[field] == value)
}

/// The one record of `kind` whose `field` is `value`, its time checked to lie
/// in [before, after] and removed.
fn take(records: &[Value], kind: &str, field: &str, value: &Value, window: (Timestamp, Timestamp)) -> Value {
    let mine: Vec<&Value> = records.iter().filter(|r| r["type"] == kind && &r[field] == value).collect();
    assert_eq!(mine.len(), 1, "exactly one {kind} record with {field} {value}: {records:#?}");
    let mut record = mine[0].clone();
    let time = record.as_object_mut().unwrap().remove("time").unwrap();
    let time = time.as_str().unwrap();
    assert_eq!(time.len(), "2026-11-28T10:40:10.123456789Z".len(), "{time}");
    let (before, after) = (window.0.to_string(), window.1.to_string());
    assert!(before.as_str() <= time && time <= after.as_str(), "{before} <= {time} <= {after}");
    record
}

/// `fields` of a record about `app`: with its cgroup and, from the cgroup path,
/// the ids of the container and the pod. The names would come from the runtime,
/// which these collectors are not asked (`--cri-socket none`).
fn in_container(pod: &Pod, app: &Container, cgroup_id: u64, fields: Value) -> Value {
    let mut record = json!({
        "cgroup_id": cgroup_id, "cgroup_path": app.cgroup, "container_id": app.id, "pod_uid": pod.spec.uid,
        "pod_name": null, "namespace": null, "container_name": null,
    });
    for (field, value) in fields.as_object().unwrap() {
        record[field] = value.clone();
    }
    record
}

/// The exit record of a container's main `sh` that outlived an OOM-killed child and exited 0.
fn main_exited_cleanly(pod: &Pod, app: &Container, main: &Main) -> Value {
    in_container(
        pod,
        app,
        main.cgroup_id,
        json!({
            "type": "exit", "pid": main.pid, "ppid": main.ppid, "comm": "sh", "exit_code": 0, "signal": null,
            "core_dumped": false, "oom_killed": false, "sender": null, "main_process": true,
            "stop": null, "stop_request": null,
        }),
    )
}

/// Starts a collector of `types` in `pod`'s cgroup, without runtime metadata.
fn trace(pod: &Pod, types: &str) -> Collector {
    Collector::trace(&["--cgroup", pod.cgroup(), "--type", types, "--cri-socket", "none"]).unwrap()
}

#[test]
fn a_containers_exit_carries_its_cgroup_and_code() {
    if !privileged("a_containers_exit_carries_its_cgroup_and_code") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let pod = containerd.cri().run_pod(PodSpec::unique("exit3")).unwrap();
    let collector = trace(&pod, "exit");
    let before = Timestamp::now();
    let spec = ContainerSpec::shell("app", &format!("{WAIT_FOR_GO}; exit 3"));
    let app = containerd.cri().create_and_start(&pod, spec).unwrap();
    let main = main_process(&containerd, &app);
    assert_eq!(go_and_wait(&containerd, &app, &main), 3);
    let stopped = stop(collector, |records| has(records, "exit", "pid", &json!(main.pid)));
    let window = (before, Timestamp::now());
    assert_eq!(
        take(&stopped.records, "exit", "pid", &json!(main.pid), window),
        in_container(
            &pod,
            &app,
            main.cgroup_id,
            json!({
                "type": "exit", "pid": main.pid, "ppid": main.ppid, "comm": "sh", "exit_code": 3, "signal": null,
                "core_dumped": false, "oom_killed": false, "sender": null,
                // pid 1 of the container's pid namespace.
                "main_process": true,
                "stop": null, "stop_request": null,
            })
        )
    );
    assert_eq!(app.cgroup, format!("{}/{}", pod.cgroup(), app.id));
}

/// Runs a container whose shell's child dd is OOM-killed; the shell then exits 0.
/// `limit_on_pod` puts the limit on the pod's cgroup instead of the container's.
fn assert_child_oom_kill(limit_on_pod: bool) {
    let containerd = Containerd::start().unwrap();
    let pod = containerd.cri().run_pod(PodSpec::unique("oom")).unwrap();
    if limit_on_pod {
        pod.set_memory_limit(LIMIT).unwrap();
    }
    let collector = trace(&pod, "exit,oom_kill");
    let before = Timestamp::now();
    let spec = ContainerSpec {
        memory_limit_bytes: (!limit_on_pod).then_some(LIMIT),
        ..ContainerSpec::shell("app", &format!("dd if=/dev/zero of=/dev/null bs=64M; echo dd=$?; {WAIT_FOR_GO}"))
    };
    let app = containerd.cri().create_and_start(&pod, spec).unwrap();
    let main = main_process(&containerd, &app);
    assert_eq!(go_and_wait(&containerd, &app, &main), 0);
    assert!(containerd.cri().container_log(&app).unwrap().contains("dd=137"), "dd was not SIGKILLed");
    let stopped = stop(collector, |records| {
        has(records, "exit", "pid", &json!(main.pid)) && has(records, "oom_kill", "comm", &json!("dd"))
    });
    let window = (before, Timestamp::now());
    let records = &stopped.records;

    let dd = records.iter().find(|r| r["type"] == "oom_kill").unwrap()["pid"].clone();
    let oom = take(records, "oom_kill", "pid", &dd, window);
    let limited = if limit_on_pod { pod.cgroup() } else { app.cgroup.as_str() };
    let mut expected = in_container(
        &pod,
        &app,
        main.cgroup_id,
        json!({
            "type": "oom_kill", "pid": dd, "comm": "dd", "main_process": false,
            "trigger_pid": dd, "trigger_comm": "dd", "oom_cgroup_path": limited, "memory_limit_bytes": LIMIT,
            "scope": if limit_on_pod { "pod" } else { "container" },
        }),
    );
    for (field, value) in victim_memory(&oom, 64 << 20, LIMIT, main.oom_score_adj).unwrap().as_object().unwrap() {
        expected[field] = value.clone();
    }
    assert_eq!(oom, expected);

    let dd = u32::try_from(dd.as_u64().unwrap()).unwrap();
    assert_eq!(
        take(records, "exit", "pid", &json!(dd), window),
        in_container(
            &pod,
            &app,
            main.cgroup_id,
            json!({
                "type": "exit", "pid": dd, "ppid": main.pid, "comm": "dd", "exit_code": 137, "signal": 9,
                "core_dumped": false, "oom_killed": true, "main_process": false,
                // The OOM killer is the kernel: no process sent the SIGKILL.
                "sender": null, "stop": null, "stop_request": null,
            })
        )
    );
    assert_eq!(take(records, "exit", "pid", &json!(main.pid), window), main_exited_cleanly(&pod, &app, &main));
    assert_eq!(records.iter().filter(|r| r["type"] == "oom_kill").count(), 1, "{records:#?}");
}

#[test]
fn a_child_oom_killed_by_the_containers_limit_while_the_main_process_goes_on() {
    if !privileged("a_child_oom_killed_by_the_containers_limit_while_the_main_process_goes_on") {
        return;
    }
    assert_child_oom_kill(false);
}

#[test]
fn a_child_oom_killed_by_the_pods_limit_names_the_pod_cgroup() {
    if !privileged("a_child_oom_killed_by_the_pods_limit_names_the_pod_cgroup") {
        return;
    }
    assert_child_oom_kill(true);
}

#[test]
fn the_containers_cgroup_is_created_and_removed_under_the_id_its_exits_carry() {
    if !privileged("the_containers_cgroup_is_created_and_removed_under_the_id_its_exits_carry") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let cri = containerd.cri();
    let pod = cri.run_pod(PodSpec::unique("lifecycle")).unwrap();
    let collector = trace(&pod, "exit,cgroup_mkdir,cgroup_rmdir");
    let before = Timestamp::now();
    let app = cri.create_and_start(&pod, ContainerSpec::shell("app", &format!("{WAIT_FOR_GO}; exit 0"))).unwrap();
    let main = main_process(&containerd, &app);
    assert_eq!(go_and_wait(&containerd, &app, &main), 0);
    cri.remove_container(&app).unwrap();
    let path = json!(app.cgroup);
    let stopped = stop(collector, |records| has(records, "cgroup_rmdir", "cgroup_path", &path));
    let window = (before, Timestamp::now());
    let records = &stopped.records;

    let change = |kind: &str| in_container(&pod, &app, main.cgroup_id, json!({"type": kind}));
    assert_eq!(take(records, "cgroup_mkdir", "cgroup_path", &path, window), change("cgroup_mkdir"));
    assert_eq!(take(records, "cgroup_rmdir", "cgroup_path", &path, window), change("cgroup_rmdir"));
    // Every process of the container, the main one and its sleeps, exited in that cgroup.
    let exits: Vec<&Value> = records.iter().filter(|r| r["type"] == "exit").collect();
    assert!(exits.iter().all(|r| r["cgroup_id"] == main.cgroup_id && r["cgroup_path"] == path), "{records:#?}");
    assert_eq!(take(records, "exit", "pid", &json!(main.pid), window), main_exited_cleanly(&pod, &app, &main));
    // Nothing else was made or removed in the pod meanwhile.
    assert_eq!(records.len(), exits.len() + 2, "{records:#?}");
}
