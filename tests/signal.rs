//! Who sent the fatal signal: a process killed by another one names its killer
//! (pid, name, cgroup) in its `exit` record and in the `signal` record; a
//! fault raised by the kernel names no one.
//!
//! Every target stays unreaped (a zombie) until the collector has stopped: the
//! `signal` record reads its target's cgroup when it arrives.
#![expect(clippy::unwrap_used, reason = "the helpers are test steps: a failure fails the test")]

use std::{os::unix::process::ExitStatusExt as _, process::Stdio, time::Duration};

use collector::clock::Timestamp;
use collector_tests::{cgroup::CgroupDir, collector::Collector, privileged};
use serde_json::{Value, json};

const VICTIM: &str = env!("CARGO_BIN_EXE_victim");

/// `si_code` of a fault at an unmapped address (libc does not export it).
const SEGV_MAPERR: i32 = 1;

/// Starts a collector of exits and signals in `cgroup`.
fn start(cgroup: &CgroupDir) -> Collector {
    Collector::trace(&["--cgroup", cgroup.path(), "--type", "exit,signal"]).unwrap()
}

/// Waits until the records are `done` and a quiet moment passed, and stops.
fn stop(collector: Collector, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    collector.wait_for(Duration::from_secs(10), done).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "collector failed: {}", stopped.stderr);
    assert_eq!(stopped.summary("lost").unwrap(), 0);
    stopped.records
}

/// The records of `kind` about `pid` (by `pid_field`), times checked to lie in
/// [before, after], in order, and removed.
fn take_all(records: &[Value], kind: &str, pid_field: &str, pid: u32, window: (Timestamp, Timestamp)) -> Vec<Value> {
    let (before, after) = (window.0.to_string(), window.1.to_string());
    let mut last = before.clone();
    records
        .iter()
        .filter(|r| r["type"] == kind && r[pid_field] == pid)
        .map(|record| {
            let mut record = record.clone();
            let time = record.as_object_mut().unwrap().remove("time").unwrap().as_str().unwrap().to_owned();
            assert_eq!(time.len(), "2026-11-28T10:40:10.123456789Z".len(), "{time}");
            assert!(last <= time && time <= after, "{last} <= {time} <= {after}");
            last = time;
            record
        })
        .collect()
}

/// The one record of `kind` about `pid`, as [`take_all`].
fn take(records: &[Value], kind: &str, pid_field: &str, pid: u32, window: (Timestamp, Timestamp)) -> Value {
    let mut mine = take_all(records, kind, pid_field, pid, window);
    assert_eq!(mine.len(), 1, "exactly one {kind} record for {pid_field} {pid}: {records:#?}");
    mine.remove(0)
}

fn exit(pid: u32, comm: &str, code: u32, signal: Option<u32>, sender: Value, cgroup: &CgroupDir) -> Value {
    json!({
        "type": "exit", "pid": pid, "ppid": std::process::id(), "comm": comm, "exit_code": code, "signal": signal,
        "core_dumped": false, "cgroup_id": cgroup.id(), "cgroup_path": cgroup.path(), "oom_killed": false,
        "sender": sender, "main_process": null, "stop": null, "stop_request": null,
        // A plain cgroup names no pod or container.
        "container_id": null, "pod_uid": null, "pod_name": null, "namespace": null, "container_name": null,
    })
}

/// Waits until `pid` has exec'd into `comm`: a spawn returns a moment before
/// the kernel renames the new program.
fn wait_for_comm(pid: u32, comm: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim_end() != comm {
        assert!(std::time::Instant::now() < deadline, "{pid} was not renamed {comm}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// This test thread as a signal record's sender: the process's pid, the thread's name (the
/// kernel names the sending task), its executable's file name and the cgroup v2 path.
fn this_thread() -> Value {
    let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_owned();
    let exe = std::env::current_exe().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    json!({"pid": std::process::id(), "comm": comm.trim_end(), "exe": exe, "cgroup_path": path})
}

/// `sender` with `exe` replaced.
fn with_exe(sender: &Value, exe: Value) -> Value {
    let mut sender = sender.clone();
    sender["exe"] = exe;
    sender
}

/// The file name of the executable `command` runs from `PATH`, links followed (`/bin/sh` is
/// `dash` on Debian, `busybox` in the VM): what the kernel's `mm->exe_file` names.
fn exe_of(command: &str) -> String {
    let path = std::env::var_os("PATH").unwrap();
    let found = std::env::split_paths(&path).map(|dir| dir.join(command)).find(|p| p.is_file()).unwrap();
    std::fs::canonicalize(found).unwrap().file_name().unwrap().to_str().unwrap().to_owned()
}

#[test]
fn sigterm_from_another_process_names_the_killer() {
    if !privileged("sigterm_from_another_process_names_the_killer") {
        return;
    }
    let cgroup = CgroupDir::new("sigterm").unwrap();
    let collector = start(&cgroup);
    let before = Timestamp::now();
    let mut target = cgroup.command("sleep").unwrap().arg("30").spawn().unwrap();
    let target_pid = target.id();
    wait_for_comm(target_pid, "sleep");
    let mut killer = cgroup.command("sh").unwrap().args(["-c", &format!("kill -TERM {target_pid}")]).spawn().unwrap();
    let killer_pid = killer.id();
    assert!(killer.wait().unwrap().success());
    // The signal, the target's exit and the killer's exit.
    let records = stop(collector, |records| records.len() >= 3);
    let window = (before, Timestamp::now());
    assert_eq!(target.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert_eq!(records.len(), 3, "{records:#?}");

    let killer = json!({"pid": killer_pid, "comm": "sh", "exe": exe_of("sh"), "cgroup_path": cgroup.path()});
    assert_eq!(
        take(&records, "signal", "target_pid", target_pid, window),
        json!({
            "type": "signal", "signal": 15, "signal_name": "SIGTERM", "code": 0, "sender": killer,
            "target_pid": target_pid, "target_comm": "sleep", "target_cgroup_path": cgroup.path(),
            // kill(2) signals the whole process.
            "group": true, "result": "delivered",
            "container_id": null, "pod_uid": null, "pod_name": null, "namespace": null, "container_name": null,
        })
    );
    assert_eq!(
        take(&records, "exit", "pid", target_pid, window),
        // An exit record's sender has no executable: the kernel's exit record does not carry it.
        exit(target_pid, "sleep", 143, Some(15), with_exe(&killer, json!(null)), &cgroup)
    );
    assert_eq!(
        take(&records, "exit", "pid", killer_pid, window),
        exit(killer_pid, "sh", 0, None, json!(null), &cgroup)
    );
}

#[test]
fn a_segfault_is_139_signal_11_and_no_sender() {
    if !privileged("a_segfault_is_139_signal_11_and_no_sender") {
        return;
    }
    let cgroup = CgroupDir::new("segv").unwrap();
    let collector = start(&cgroup);
    let before = Timestamp::now();
    let mut victim = cgroup.command(VICTIM).unwrap().arg("segv").spawn().unwrap();
    let pid = victim.id();
    let records = stop(collector, |records| records.iter().any(|r| r["type"] == "exit"));
    let window = (before, Timestamp::now());
    assert_eq!(victim.wait().unwrap().signal(), Some(libc::SIGSEGV));

    assert_eq!(take(&records, "exit", "pid", pid, window), exit(pid, "victim", 139, Some(11), json!(null), &cgroup));
    // The fault raises SIGSEGV in the faulting thread. Rust's runtime catches the
    // first one (to tell a stack overflow), restores the default action and
    // returns, so the fault repeats: two records, the same but for the time.
    let signals = take_all(&records, "signal", "target_pid", pid, window);
    assert_eq!(signals.len(), 2, "{records:#?}");
    for signal in signals {
        assert_eq!(
            signal,
            json!({
                "type": "signal", "signal": 11, "signal_name": "SIGSEGV", "code": SEGV_MAPERR, "sender": null,
                "target_pid": pid, "target_comm": "victim", "target_cgroup_path": cgroup.path(),
                "group": false, "result": "delivered",
                "container_id": null, "pod_uid": null, "pod_name": null, "namespace": null, "container_name": null,
            })
        );
    }
}

#[test]
fn a_caught_sigterm_is_not_a_cause_of_death() {
    if !privileged("a_caught_sigterm_is_not_a_cause_of_death") {
        return;
    }
    let cgroup = CgroupDir::new("trapped").unwrap();
    let collector = start(&cgroup);
    let before = Timestamp::now();
    // The shell says when its trap is set, then handles SIGTERM by exiting 5.
    let mut target = cgroup
        .command("sh")
        .unwrap()
        .args(["-c", "trap 'exit 5' TERM; echo ready; while :; do sleep 0.05; done"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = target.id();
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(target.stdout.take().unwrap()), &mut ready).unwrap();
    assert_eq!(ready, "ready\n");
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid.cast_signed(), libc::SIGTERM) }, 0);
    let records = stop(collector, |records| records.iter().any(|r| r["type"] == "exit" && r["pid"] == pid));
    let window = (before, Timestamp::now());
    assert_eq!(target.wait().unwrap().code(), Some(5));

    // The signal was sent and delivered, but the process chose its own end.
    assert_eq!(
        take(&records, "signal", "target_pid", pid, window),
        json!({
            "type": "signal", "signal": 15, "signal_name": "SIGTERM", "code": 0, "sender": this_thread(),
            "target_pid": pid, "target_comm": "sh", "target_cgroup_path": cgroup.path(),
            "group": true, "result": "delivered",
            "container_id": null, "pod_uid": null, "pod_name": null, "namespace": null, "container_name": null,
        })
    );
    assert_eq!(take(&records, "exit", "pid", pid, window), exit(pid, "sh", 5, None, json!(null), &cgroup));
}

#[test]
fn a_signal_to_a_target_reaped_before_the_record_is_read_keeps_its_cgroup() {
    if !privileged("a_signal_to_a_target_reaped_before_the_record_is_read_keeps_its_cgroup") {
        return;
    }
    let cgroup = CgroupDir::new("reaped").unwrap();
    let collector = start(&cgroup);
    let before = Timestamp::now();
    let mut target = cgroup.command("sleep").unwrap().arg("30").spawn().unwrap();
    let pid = target.id();
    wait_for_comm(pid, "sleep");
    // A collector that is slow to read (here: stopped) while the target is killed
    // and reaped, as a container runtime reaps at once.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(collector.pid(), libc::SIGSTOP) };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid.cast_signed(), libc::SIGTERM) }, 0);
    assert_eq!(target.wait().unwrap().signal(), Some(libc::SIGTERM));
    // SAFETY: as above.
    unsafe { libc::kill(collector.pid(), libc::SIGCONT) };
    let records = stop(collector, |records| records.iter().any(|r| r["type"] == "exit" && r["pid"] == pid));
    let window = (before, Timestamp::now());
    assert_eq!(
        take(&records, "signal", "target_pid", pid, window),
        json!({
            "type": "signal", "signal": 15, "signal_name": "SIGTERM", "code": 0, "sender": this_thread(),
            "target_pid": pid, "target_comm": "sleep", "target_cgroup_path": cgroup.path(),
            "group": true, "result": "delivered",
            "container_id": null, "pod_uid": null, "pod_name": null, "namespace": null, "container_name": null,
        })
    );
}

#[test]
fn a_signal_pending_for_a_thread_that_ended_alone_is_not_given_to_the_next_task_with_its_id() {
    if !privileged("a_signal_pending_for_a_thread_that_ended_alone_is_not_given_to_the_next_task_with_its_id") {
        return;
    }
    let cgroup = CgroupDir::new("stale").unwrap();
    let collector = start(&cgroup);
    let before = Timestamp::now();
    // A SIGUSR1 is sent to a thread (tid X) that ignores it and then ends alone: the kernel
    // program keeps that pending signal. Then a process is started with pid X (by setting the
    // last pid given out; another fork can take X first, so up to 50 tries) whose worker thread
    // kills it with a SIGUSR1 of its own. The process that sent X's old task the same signal must
    // not be named. Where `sched_process_exit` says which exit ends the group (6.18 here), the
    // leader ends first and the worker's exit, which ends the group, names the worker; where it
    // does not (6.1), the leader's exit stands for the process, and the leader was sent nothing.
    let group_dead = collector_tests::exit_tracepoint_has_group_dead().unwrap();
    let mut target = None;
    for _ in 0..50 {
        let alone = std::process::Command::new(VICTIM).arg("signal-a-lone-thread").output().unwrap();
        assert!(alone.status.success(), "{alone:?}");
        let tid: u32 = String::from_utf8(alone.stdout).unwrap().trim().parse().unwrap();
        std::fs::write("/proc/sys/kernel/ns_last_pid", (tid - 1).to_string()).unwrap();
        let leader = if group_dead { "leader-ends" } else { "leader-stays" };
        let mut child = cgroup.command(VICTIM).unwrap().args(["thread-signal", leader]).spawn().unwrap();
        if child.id() == tid {
            target = Some(child);
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut target = target.expect("no process was given the lone thread's id in 50 tries");
    let pid = target.id();
    let records = stop(collector, |records| records.iter().any(|r| r["type"] == "exit" && r["pid"] == pid));
    let window = (before, Timestamp::now());
    assert_eq!(target.wait().unwrap().signal(), Some(libc::SIGUSR1));
    let sender = if group_dead {
        json!({"pid": pid, "comm": "worker", "exe": null, "cgroup_path": cgroup.path()})
    } else {
        json!(null)
    };
    assert_eq!(take(&records, "exit", "pid", pid, window), exit(pid, "victim", 138, Some(10), sender, &cgroup));
}
