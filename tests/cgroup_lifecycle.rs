//! cgroup lifecycle: a cgroup the test creates, moves a process into and
//! removes appears as `cgroup_mkdir`, `cgroup_attach` and `cgroup_rmdir`
//! records, in that order, each with the directory's inode as its id, the id
//! the `exit` of the process in it carries.

use std::{
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use collector::clock::Timestamp;
use collector_tests::{cgroup::CgroupDir, collector::Collector, privileged};
use serde_json::{Value, json};

/// A cgroup directory made while the collector watches; removed on drop if the
/// test did not remove it.
struct Child {
    dir: PathBuf,
}

impl Child {
    fn remove(&self) -> std::io::Result<()> {
        // An exited process leaves its cgroup asynchronously: retry briefly.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                result => return result,
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        for pid in std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.remove();
    }
}

/// `record` with the identity fields of a cgroup that is no pod's or container's.
fn outside_pods(mut record: Value) -> Value {
    for field in ["container_id", "pod_uid", "pod_name", "namespace", "container_name"] {
        record[field] = Value::Null;
    }
    record
}

#[test]
fn mkdir_attach_exit_and_rmdir_carry_the_directorys_inode() {
    if !privileged("mkdir_attach_exit_and_rmdir_carry_the_directorys_inode") {
        return;
    }
    // The parent exists before the collector starts, so the collector's scope is
    // a directory (filtered in the kernel too); the child is made while it watches.
    let parent = CgroupDir::new("lifecycle").unwrap();
    let collector =
        Collector::trace(&["--cgroup", parent.path(), "--type", "cgroup_mkdir,cgroup_attach,cgroup_rmdir,exit"])
            .unwrap();
    let before = Timestamp::now();
    let child = Child { dir: parent.dir().join("app") };
    std::fs::create_dir(&child.dir).unwrap();
    let id = std::fs::metadata(&child.dir).unwrap().ino();
    let path = format!("{}/app", parent.path());

    // Started outside, then moved in: the attach names the process as it runs.
    let mut sh =
        std::process::Command::new("sh").args(["-c", "read line; exit 4"]).stdin(Stdio::piped()).spawn().unwrap();
    let pid = sh.id();
    // The parent of a vfork-style spawn resumes before the child's exec has renamed it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap() != "sh\n" {
        assert!(Instant::now() < deadline, "{pid} was not renamed sh");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::write(child.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(sh.wait().unwrap().code(), Some(4));
    child.remove().unwrap();

    collector.wait_for(Duration::from_secs(10), |records| records.len() >= 4).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let after = Timestamp::now().to_string();
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "collector failed: {}", stopped.stderr);
    assert_eq!(stopped.summary("lost").unwrap(), 0);

    // In the order things happened, each time within the test and after the one before.
    let mut last = before.to_string();
    let records: Vec<Value> = stopped
        .records
        .into_iter()
        .map(|mut record| {
            let time = record.as_object_mut().unwrap().remove("time").unwrap().as_str().unwrap().to_owned();
            assert_eq!(time.len(), "2026-11-28T10:40:10.123456789Z".len(), "{time}");
            assert!(last <= time && time <= after, "{last} <= {time} <= {after}");
            last = time;
            record
        })
        .collect();
    assert_eq!(
        records,
        vec![
            outside_pods(json!({"type": "cgroup_mkdir", "cgroup_id": id, "cgroup_path": path})),
            outside_pods(
                json!({"type": "cgroup_attach", "pid": pid, "comm": "sh", "cgroup_id": id, "cgroup_path": path})
            ),
            json!({
                "type": "exit", "pid": pid, "ppid": std::process::id(), "comm": "sh", "exit_code": 4,
                "signal": null, "core_dumped": false, "cgroup_id": id, "cgroup_path": path,
                "oom_killed": false, "sender": null, "main_process": null, "stop": null, "stop_request": null,
                "container_id": null, "pod_uid": null, "pod_name": null, "namespace": null, "container_name": null,
            }),
            outside_pods(json!({"type": "cgroup_rmdir", "cgroup_id": id, "cgroup_path": path})),
        ]
    );
}

#[test]
fn short_lived_cgroups_resolve_from_the_kernels_reports() {
    if !privileged("short_lived_cgroups_resolve_from_the_kernels_reports") {
        return;
    }
    // Cgroups made and removed while the collector watches: their exits name them,
    // although the directories are gone by the time the records are read.
    let parent = CgroupDir::new("lifecycle-late").unwrap();
    let collector = Collector::trace(&["--cgroup", parent.path(), "--type", "cgroup_mkdir,exit"]).unwrap();
    let mut paths = Vec::new();
    let mut children = Vec::new();
    // Several short-lived cgroups, each with one process, back to back.
    for n in 0..5 {
        let child = Child { dir: parent.dir().join(format!("c{n}")) };
        std::fs::create_dir(&child.dir).unwrap();
        let id = std::fs::metadata(&child.dir).unwrap().ino();
        let procs = child.dir.join("cgroup.procs");
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("echo $$ > {}; exit {n}", procs.display())])
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(n));
        child.remove().unwrap();
        paths.push((id, format!("{}/c{n}", parent.path()), n));
        children.push(child);
    }
    collector.wait_for(Duration::from_secs(10), |records| records.len() >= 10).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "collector failed: {}", stopped.stderr);
    for (id, path, code) in paths {
        let exits: Vec<&Value> =
            stopped.records.iter().filter(|r| r["type"] == "exit" && r["cgroup_id"] == id).collect();
        assert_eq!(exits.len(), 1, "{:#?}", stopped.records);
        assert_eq!((&exits[0]["cgroup_path"], &exits[0]["exit_code"]), (&json!(path), &json!(code)));
        let mkdirs: Vec<&Value> =
            stopped.records.iter().filter(|r| r["type"] == "cgroup_mkdir" && r["cgroup_id"] == id).collect();
        assert_eq!(mkdirs.len(), 1, "{:#?}", stopped.records);
        assert_eq!(mkdirs[0]["cgroup_path"], json!(path));
    }
}

#[test]
fn a_cgroup_whose_creation_was_lost_is_found_by_walking_the_tree() {
    if !privileged("a_cgroup_whose_creation_was_lost_is_found_by_walking_the_tree") {
        return;
    }
    let parent = CgroupDir::new("lifecycle-lost").unwrap();
    // 4096 bytes hold 56 exit records: 600 exits while the collector is stopped fill it, so the
    // child's creation, right after them, is lost too.
    let collector =
        Collector::trace(&["--cgroup", parent.path(), "--type", "cgroup_mkdir,exit", "--ring-buffer-bytes", "4096"])
            .unwrap();
    let child = Child { dir: parent.dir().join("late") };
    parent.exits_while_stopped(collector.pid(), || std::fs::create_dir(&child.dir)).unwrap().unwrap();
    let id = std::fs::metadata(&child.dir).unwrap().ino();
    // Time to drain the full ring, so that the exit below finds room.
    std::thread::sleep(Duration::from_millis(300));
    let procs = child.dir.join("cgroup.procs");
    let status =
        std::process::Command::new("sh").args(["-c", &format!("echo $$ > {}; exit 3", procs.display())]).status();
    assert_eq!(status.unwrap().code(), Some(3));
    collector
        .wait_for(Duration::from_secs(10), |records| {
            records.iter().any(|r| r["type"] == "exit" && r["cgroup_id"] == id)
        })
        .unwrap();
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "collector failed: {}", stopped.stderr);
    let about_child: Vec<&Value> = stopped.records.iter().filter(|r| r["cgroup_id"] == id).collect();
    // No cgroup_mkdir: the registry could only learn of the child by reading the tree.
    assert_eq!(about_child.len(), 1, "{about_child:#?}\n{}", stopped.stderr);
    assert_eq!(
        (&about_child[0]["type"], &about_child[0]["cgroup_path"], &about_child[0]["exit_code"]),
        (&json!("exit"), &json!(format!("{}/late", parent.path())), &json!(3))
    );
    let lost = stopped.summary("lost").unwrap();
    assert!(lost > stopped.summary("exits").unwrap(), "a cgroup_mkdir was lost too ({lost} lost)");
}
