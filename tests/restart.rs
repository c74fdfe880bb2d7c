//! Restart: a daemon killed with SIGKILL leaves no BPF program behind, its
//! journal opens intact, and a new daemon is ready again within seconds.
#![expect(clippy::unwrap_used, clippy::panic, reason = "the helpers are test steps: a failure fails the test")]

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use collector_tests::{collector::binary, privileged};

/// The collector's programs (names are cut to 15 bytes) that process `pid` holds open, by id.
///
/// Counting every loaded program by name would race with the test binary run just before this
/// one: the kernel frees its programs after their last descriptor closes, not at once.
fn collector_programs(pid: u32) -> BTreeSet<u32> {
    const NAMES: [&str; 3] = ["sched_process_e", "signal_generate", "cgroup_attach_t"];
    let held: BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|info| info.lines().find_map(|line| line.strip_prefix("prog_id:")?.trim().parse().ok()))
        .collect();
    loaded()
        .into_iter()
        .filter(|(id, name)| held.contains(id) && NAMES.contains(&name.as_str()))
        .map(|(id, _)| id)
        .collect()
}

/// Every program loaded in the kernel now, by id and name.
fn loaded() -> Vec<(u32, String)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// A `collector run` child; killed on drop.
struct Daemon(Child);

impl Daemon {
    /// Starts the daemon and returns it with how long it took to say it is running.
    fn start(state: &std::path::Path) -> (Self, Duration) {
        let started = Instant::now();
        let mut child = Command::new(binary().unwrap())
            .args(["run", "--sink", "journal", "--cri-socket", "none", "--metrics-addr", "127.0.0.1:0"])
            .args(["--node-name", "test-node", "--state-dir"])
            .arg(state)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut daemon = Self(child);
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("collector: running;") => break,
                Some(Ok(_)) => {}
                other => {
                    let _ = daemon.0.kill();
                    panic!("the daemon stopped before it was ready: {other:?}");
                }
            }
        }
        // Keep reading so the daemon never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (daemon, started.elapsed())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_daemon_leaves_nothing_behind_and_restarts_quickly() {
    if !privileged("a_killed_daemon_leaves_nothing_behind_and_restarts_quickly") {
        return;
    }
    let state = std::env::temp_dir().join(format!("collector-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);

    let (mut first, _) = Daemon::start(&state);
    let programs = collector_programs(first.0.id());
    assert_eq!(programs.len(), 3, "the exit, signal and cgroup-attach programs are loaded: {programs:?}");
    // Mid-storm: processes exit while the daemon dies.
    let storm = Command::new("sh").args(["-c", "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done"]).spawn();
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    storm.unwrap().wait().unwrap();
    // The kernel frees programs, links and maps with the last file descriptor.
    let left = || -> Vec<(u32, String)> { loaded().into_iter().filter(|(id, _)| programs.contains(id)).collect() };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(left(), [], "SIGKILL left a program behind");

    let (second, ready) = Daemon::start(&state);
    // Within what the DaemonSet's liveness probe allows (3 failures 10 s apart) before it kills
    // the pod: 0.5 s on this host, near 10 s in the emulated VM; the bench measures speed.
    assert!(ready < Duration::from_secs(30), "ready again after {ready:?}");
    let events = Command::new(binary().unwrap()).args(["events", "--state-dir"]).arg(&state).output().unwrap();
    assert!(events.status.success(), "the journal opens intact: {}", String::from_utf8_lossy(&events.stderr));
    drop(second);
    let _ = std::fs::remove_dir_all(&state);
}
