//! Process exits: the real probe in this kernel, real processes in a fresh
//! cgroup v2 directory, exact fields on every record.
#![expect(clippy::unwrap_used, reason = "the helpers are test steps: a failure fails the test")]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use collector::clock::Timestamp;
use collector_tests::{cgroup::CgroupDir, collector::Collector, privileged};
use serde_json::{Value, json};

const VICTIM: &str = env!("CARGO_BIN_EXE_victim");

/// Starts a collector that sees only `cgroup`, runs `run`, and returns the records of the cgroup.
fn trace(cgroup: &CgroupDir, expected: usize, run: impl FnOnce()) -> Vec<Value> {
    trace_with(cgroup, &[], expected, run)
}

/// [`trace`] with more arguments for `collector trace`.
fn trace_with(cgroup: &CgroupDir, extra: &[&str], expected: usize, run: impl FnOnce()) -> Vec<Value> {
    let mut args = vec!["--cgroup", cgroup.path(), "--type", "exit"];
    args.extend_from_slice(extra);
    let collector = Collector::trace(&args).unwrap();
    run();
    collector.wait_for(Duration::from_secs(10), |records| records.len() >= expected).unwrap();
    // Anything extra would arrive now: stop only after a quiet moment.
    std::thread::sleep(Duration::from_millis(200));
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "collector failed: {}", stopped.stderr);
    assert_eq!(stopped.summary("lost").unwrap(), 0);
    assert_eq!(stopped.summary("malformed").unwrap(), 0);
    stopped.records
}

/// The record of `pid`, with the time checked and removed for exact comparison.
fn record_of(records: &[Value], pid: u32, before: Timestamp, after: Timestamp) -> Value {
    let mine: Vec<&Value> = records.iter().filter(|r| r["pid"] == pid).collect();
    assert_eq!(mine.len(), 1, "exactly one record for pid {pid}: {records:#?}");
    let mut record = mine[0].clone();
    let time = record["time"].as_str().unwrap().to_owned();
    // RFC 3339 UTC with nanoseconds sorts as text, so the window is a text range.
    assert_eq!(time.len(), "2026-11-28T10:40:10.123456789Z".len(), "{time}");
    assert!(before.to_string() <= time && time <= after.to_string(), "{before} <= {time} <= {after}");
    record.as_object_mut().unwrap().remove("time");
    record
}

fn expected(pid: u32, ppid: u32, comm: &str, code: u32, signal: Option<u32>, cgroup: &CgroupDir) -> Value {
    json!({
        "type": "exit", "pid": pid, "ppid": ppid, "comm": comm, "exit_code": code, "signal": signal,
        "core_dumped": false, "cgroup_id": cgroup.id(), "cgroup_path": cgroup.path(),
        "oom_killed": false, "sender": null, "main_process": null, "stop": null, "stop_request": null,
        // A plain cgroup names no pod or container.
        "container_id": null, "pod_uid": null, "pod_name": null, "namespace": null, "container_name": null,
    })
}

/// `expected` for a death by a signal that `sender` sent.
fn killed_by(mut record: Value, sender: Value) -> Value {
    record["sender"] = sender;
    record
}

/// This test thread as the sender an exit record names: the process's pid, the thread's name
/// (the kernel names the sending task) and the cgroup v2 path; an exit record does not carry
/// the sender's executable (signal records do).
fn this_thread() -> Value {
    let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_owned();
    json!({"pid": std::process::id(), "comm": comm.trim_end(), "exe": null, "cgroup_path": path})
}

/// Runs `cmd` to completion in the cgroup; returns its pid and the time window around it.
fn run_to_end(cmd: &mut Command) -> (u32, Timestamp, Timestamp) {
    let before = Timestamp::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    (pid, before, Timestamp::now())
}

#[test]
fn normal_exits_carry_their_status() {
    if !privileged("normal_exits_carry_their_status") {
        return;
    }
    let cgroup = CgroupDir::new("exit-codes").unwrap();
    let mut runs = Vec::new();
    let records = trace(&cgroup, 2, || {
        for code in [0, 7] {
            runs.push((code, run_to_end(cgroup.command("sh").unwrap().args(["-c", &format!("exit {code}")]))));
        }
    });
    assert_eq!(records.len(), 2, "{records:#?}");
    for (code, (pid, before, after)) in runs {
        assert_eq!(
            record_of(&records, pid, before, after),
            expected(pid, std::process::id(), "sh", code, None, &cgroup)
        );
    }
}

#[test]
fn death_by_sigkill_is_137_and_signal_9() {
    if !privileged("death_by_sigkill_is_137_and_signal_9") {
        return;
    }
    let cgroup = CgroupDir::new("sigkill").unwrap();
    let mut run = None;
    let records = trace(&cgroup, 1, || {
        let before = Timestamp::now();
        let mut child = cgroup.command("sleep").unwrap().arg("100").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        child.kill().unwrap();
        child.wait().unwrap();
        run = Some((child.id(), before, Timestamp::now()));
    });
    let (pid, before, after) = run.unwrap();
    assert_eq!(
        record_of(&records, pid, before, after),
        killed_by(expected(pid, std::process::id(), "sleep", 137, Some(9), &cgroup), this_thread())
    );
}

#[test]
fn death_by_sigabrt_is_134_and_signal_6() {
    if !privileged("death_by_sigabrt_is_134_and_signal_6") {
        return;
    }
    let cgroup = CgroupDir::new("sigabrt").unwrap();
    let mut run = None;
    let records = trace(&cgroup, 1, || run = Some(run_to_end(cgroup.command(VICTIM).unwrap().arg("abort"))));
    let (pid, before, after) = run.unwrap();
    // abort() raises SIGABRT with tgkill on itself: the process ended itself.
    let itself = json!({"pid": pid, "comm": "victim", "exe": null, "cgroup_path": cgroup.path()});
    assert_eq!(
        record_of(&records, pid, before, after),
        killed_by(expected(pid, std::process::id(), "victim", 134, Some(6), &cgroup), itself)
    );
}

#[test]
fn a_process_with_eight_threads_gives_exactly_one_record() {
    if !privileged("a_process_with_eight_threads_gives_exactly_one_record") {
        return;
    }
    let cgroup = CgroupDir::new("threads").unwrap();
    let mut run = None;
    let records = trace(&cgroup, 1, || {
        run = Some(run_to_end(cgroup.command(VICTIM).unwrap().args(["threads", "8", "9"])));
    });
    let (pid, before, after) = run.unwrap();
    assert_eq!(records.len(), 1, "nine threads exited, one process ended: {records:#?}");
    assert_eq!(record_of(&records, pid, before, after), expected(pid, std::process::id(), "victim", 9, None, &cgroup));
}

#[test]
fn a_process_ended_by_a_renamed_thread_after_its_leader_is_named_by_the_leader() {
    if !privileged("a_process_ended_by_a_renamed_thread_after_its_leader_is_named_by_the_leader") {
        return;
    }
    // The thread that ended the group is called `worker`; the process is its leader's name.
    leader_first_is_named_by_its_leader("leader-first", &[]);
}

#[test]
fn the_helper_reads_of_kernels_before_5_11_give_the_same_records() {
    if !privileged("the_helper_reads_of_kernels_before_5_11_give_the_same_records") {
        return;
    }
    // Every field the exit probe reads from the task: status, parent, the leader's name.
    leader_first_is_named_by_its_leader("helper-reads", &["--kernel-reads", "helper"]);
}

/// A `leader-first 7` victim, traced with `extra` arguments, gives one record: the process,
/// named by its leader, with [`leader_first_status`].
fn leader_first_is_named_by_its_leader(name: &str, extra: &[&str]) {
    let cgroup = CgroupDir::new(name).unwrap();
    let mut run = None;
    let records = trace_with(&cgroup, extra, 1, || {
        run = Some(run_to_end(cgroup.command(VICTIM).unwrap().args(["leader-first", "7"])));
    });
    let (pid, before, after) = run.unwrap();
    assert_eq!(records.len(), 1, "two threads exited, one process ended: {records:#?}");
    let status = leader_first_status(7);
    assert_eq!(
        record_of(&records, pid, before, after),
        expected(pid, std::process::id(), "victim", status, None, &cgroup)
    );
}

/// The exit status a `leader-first CODE` victim is reported with: `CODE`, which its last thread
/// exits with, where `sched_process_exit` says which exit ends the group (`group_dead`, 6.18
/// here); the leader's own 0 on kernels without it (6.1, 6.12), where the leader's exit stands
/// for the process (README, "Lost on older kernels").
fn leader_first_status(code: u32) -> u32 {
    if collector_tests::exit_tracepoint_has_group_dead().unwrap() { code } else { 0 }
}

#[test]
fn a_grandchild_names_its_own_parent() {
    if !privileged("a_grandchild_names_its_own_parent") {
        return;
    }
    let cgroup = CgroupDir::new("grandchild").unwrap();
    let mut run = None;
    let records = trace(&cgroup, 2, || {
        run = Some(run_to_end(cgroup.command("sh").unwrap().args(["-c", "sh -c 'exit 5'; exit 3"])));
    });
    let (pid, before, after) = run.unwrap();
    assert_eq!(records.len(), 2, "{records:#?}");
    let grandchild = records.iter().find(|r| r["pid"] != pid).unwrap()["pid"].as_u64().unwrap();
    let grandchild = u32::try_from(grandchild).unwrap();
    assert_eq!(record_of(&records, grandchild, before, after), expected(grandchild, pid, "sh", 5, None, &cgroup));
    assert_eq!(record_of(&records, pid, before, after), expected(pid, std::process::id(), "sh", 3, None, &cgroup));
}

/// On a quiet node the reader stops polling (after 100 ms without a record) and the kernel wakes
/// it for the next record: each lone exit is printed at once, not when the idle reader next
/// looks on its own (`reader::IDLE_CHECK`, 1 s).
#[test]
fn a_lone_exit_on_a_quiet_node_is_read_at_once() {
    if !privileged("a_lone_exit_on_a_quiet_node_is_read_at_once") {
        return;
    }
    let cgroup = CgroupDir::new("quiet").unwrap();
    // Only this cgroup's exits reach the ring: the rest of the node cannot keep the reader busy.
    let collector = Collector::trace(&["--cgroup", cgroup.path(), "--type", "exit"]).unwrap();
    let mut delays = Vec::new();
    for round in 1..=4 {
        // Three times the quiet spell after which the reader goes idle.
        std::thread::sleep(Duration::from_millis(300));
        let (pid, _, _) = run_to_end(&mut cgroup.command("true").unwrap());
        let ended = Instant::now();
        collector.wait_for(Duration::from_secs(5), |records| records.iter().any(|r| r["pid"] == pid)).unwrap();
        delays.push(ended.elapsed());
        assert_eq!(collector.wait_for(Duration::ZERO, |_| true).unwrap().len(), round);
    }
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "collector failed: {}", stopped.stderr);
    // A reader that missed its wake-up finds a record at a random point of its 1 s check: all
    // four under 200 ms by chance is 1 in 600. Once awake, a record takes a few milliseconds.
    assert!(delays.iter().all(|delay| *delay < Duration::from_millis(200)), "delays from exit to record: {delays:?}");
}
