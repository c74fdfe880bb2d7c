//! OOM kills in cgroups the test makes (no container runtime): the `oom_kill`
//! record names the victim, the cgroup whose limit it hit and that limit; the
//! victim's `exit` says the OOM killer chose it; its parent shell goes on.
//! The limit sits where the host keeps limits (v1 memory on hybrid hosts,
//! `memory.max` on pure v2), at the same path as the v2 cgroup.
#![expect(clippy::unwrap_used, reason = "the helpers are test steps: a failure fails the test")]

use std::{process::Stdio, time::Duration};

use collector::clock::Timestamp;
use collector_tests::{
    collector::Collector,
    memcg::{MemCgroup, victim_memory},
    privileged,
};
use serde_json::{Value, json};

const LIMIT: u64 = 32 << 20;

/// Set (by `cargo xtask test-vm`) where the kernel is known to allow fentry programs.
const FENTRY_ALLOWED: &str = "COLLECTOR_TEST_FENTRY_ALLOWED";

/// dd's 64 MiB buffer cannot fit in 32 MiB; the shell survives dd's death and exits 0.
const SCRIPT: &str = "dd if=/dev/zero of=/dev/null bs=64M; echo dd=$?";

/// What one run of [`SCRIPT`] caused.
struct Run {
    records: Vec<Value>,
    shell: u32,
    before: Timestamp,
    after: Timestamp,
}

/// Runs [`SCRIPT`] in `cgroup` under a collector scoped to `scope`.
fn run_oom(scope: &MemCgroup, cgroup: &MemCgroup) -> Run {
    run_oom_with(scope, cgroup, &[])
}

/// [`run_oom`] with more arguments for `collector trace`.
fn run_oom_with(scope: &MemCgroup, cgroup: &MemCgroup, extra: &[&str]) -> Run {
    let mut args = vec!["--cgroup", scope.path(), "--type", "exit,oom_kill"];
    args.extend_from_slice(extra);
    let collector = Collector::trace(&args).unwrap();
    let before = Timestamp::now();
    let child = cgroup.command("sh").unwrap().args(["-c", SCRIPT]).stdout(Stdio::piped()).spawn().unwrap();
    let shell = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "dd=137\n", "dd was not SIGKILLed");
    // dd's exit, the shell's exit and the OOM kill.
    collector.wait_for(Duration::from_secs(10), |records| records.len() >= 3).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let after = Timestamp::now();
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "collector failed: {}", stopped.stderr);
    assert_eq!(stopped.summary("lost").unwrap(), 0);
    assert_eq!(stopped.records.len(), 3, "{:#?}", stopped.records);
    // Where the kernel takes fentry (the VM's stock Debian kernels; this host's refuses it), the
    // cgroup whose limit was hit comes from the `out_of_memory` probe, not from inference.
    if std::env::var_os(FENTRY_ALLOWED).is_some() {
        assert!(!stopped.stderr.contains("cannot attach to out_of_memory"), "{FENTRY_ALLOWED}: {}", stopped.stderr);
    }
    Run { records: stopped.records, shell, before, after }
}

/// The one record of `kind` for `pid`, its time checked to lie in the run and removed.
fn take(run: &Run, kind: &str, pid: u32) -> Value {
    let mine: Vec<&Value> = run.records.iter().filter(|r| r["type"] == kind && r["pid"] == pid).collect();
    assert_eq!(mine.len(), 1, "exactly one {kind} record for pid {pid}: {:#?}", run.records);
    let mut record = mine[0].clone();
    let time = record.as_object_mut().unwrap().remove("time").unwrap();
    let time = time.as_str().unwrap();
    assert_eq!(time.len(), "2026-11-28T10:40:10.123456789Z".len(), "{time}");
    let (before, after) = (run.before.to_string(), run.after.to_string());
    assert!(before.as_str() <= time && time <= after.as_str(), "{before} <= {time} <= {after}");
    record
}

/// dd's pid: the one process named dd.
fn dd_pid(run: &Run) -> u32 {
    let dd: Vec<u64> = run.records.iter().filter(|r| r["comm"] == "dd").filter_map(|r| r["pid"].as_u64()).collect();
    assert!(!dd.is_empty() && dd.iter().all(|p| *p == dd[0]), "one dd: {:#?}", run.records);
    u32::try_from(dd[0]).unwrap()
}

/// The `oom_score_adj` children of this process inherit.
fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap()
}

/// Checks the three records of a run: dd OOM-killed in `cgroup` by the limit of `limited`.
fn assert_oom_kill(run: &Run, cgroup: &MemCgroup, limited: &MemCgroup) {
    let dd = dd_pid(run);
    let oom = take(run, "oom_kill", dd);
    let mut expected = json!({
        "type": "oom_kill", "pid": dd, "comm": "dd", "cgroup_id": cgroup.id(), "cgroup_path": cgroup.path(),
        // dd's own allocation hit the limit.
        "trigger_pid": dd, "trigger_comm": "dd",
        "oom_cgroup_path": limited.path(), "memory_limit_bytes": LIMIT,
        // Neither cgroup is a container or a pod.
        "scope": "cgroup", "main_process": null,
        "container_id": null, "pod_uid": null, "pod_name": null, "namespace": null, "container_name": null,
    });
    for (field, value) in victim_memory(&oom, 64 << 20, LIMIT, own_oom_score_adj()).unwrap().as_object().unwrap() {
        expected[field] = value.clone();
    }
    assert_eq!(oom, expected);

    let exit = |pid: u32, ppid: u32, comm: &str, code: u32, signal: Option<u32>, oom_killed: bool| {
        json!({
            "type": "exit", "pid": pid, "ppid": ppid, "comm": comm, "exit_code": code, "signal": signal,
            "core_dumped": false, "cgroup_id": cgroup.id(), "cgroup_path": cgroup.path(),
            "oom_killed": oom_killed,
            // The OOM killer is the kernel: no process sent the SIGKILL.
            "sender": null,
            "main_process": null, "stop": null, "stop_request": null,
            "container_id": null, "pod_uid": null, "pod_name": null, "namespace": null, "container_name": null,
        })
    };
    assert_eq!(take(run, "exit", dd), exit(dd, run.shell, "dd", 137, Some(9), true));
    assert_eq!(take(run, "exit", run.shell), exit(run.shell, std::process::id(), "sh", 0, None, false));
}

#[test]
fn a_child_killed_by_its_own_cgroups_limit() {
    if !privileged("a_child_killed_by_its_own_cgroups_limit") {
        return;
    }
    let cgroup = MemCgroup::new("oom-own").unwrap();
    cgroup.set_memory_limit(LIMIT).unwrap();
    let run = run_oom(&cgroup, &cgroup);
    assert_oom_kill(&run, &cgroup, &cgroup);
}

#[test]
fn the_helper_reads_of_kernels_before_5_11_see_the_oom_victim_too() {
    if !privileged("the_helper_reads_of_kernels_before_5_11_see_the_oom_victim_too") {
        return;
    }
    // The exit probe's other way to read the victim's signal->oom_mm.
    let cgroup = MemCgroup::new("oom-helper").unwrap();
    cgroup.set_memory_limit(LIMIT).unwrap();
    let run = run_oom_with(&cgroup, &cgroup, &["--kernel-reads", "helper"]);
    assert_oom_kill(&run, &cgroup, &cgroup);
}

#[test]
fn a_child_killed_by_its_parents_limit() {
    if !privileged("a_child_killed_by_its_parents_limit") {
        return;
    }
    // Like a pod with a limit and a container without one.
    let pod = MemCgroup::new("oom-parent").unwrap();
    pod.set_memory_limit(LIMIT).unwrap();
    let container = pod.child("app").unwrap();
    let run = run_oom(&pod, &container);
    assert_oom_kill(&run, &container, &pod);
}

#[test]
fn a_parents_tighter_limit_is_the_one_hit() {
    if !privileged("a_parents_tighter_limit_is_the_one_hit") {
        return;
    }
    // The container's own limit is larger than its pod's: the pod's is reached first.
    let pod = MemCgroup::new("oom-tighter").unwrap();
    pod.set_memory_limit(LIMIT).unwrap();
    let container = pod.child("app").unwrap();
    container.set_memory_limit(2 * LIMIT).unwrap();
    let run = run_oom(&pod, &container);
    assert_oom_kill(&run, &container, &pod);
}
