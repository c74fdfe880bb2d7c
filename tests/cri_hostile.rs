//! Hostile process names in a pod's container (with a real containerd): the Events the daemon
//! prints on stdout and keeps in its journal name each process escaped, on one line, within
//! the API's 1024 bytes; /metrics stays well-formed. Host only (needs containerd).
#![expect(clippy::unwrap_used, reason = "the helpers are test steps: a failure fails the test")]

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::ExitStatusExt as _,
    process::Stdio,
    time::Duration,
};

use collector_tests::{
    cgroup::command_in,
    cgroupfs::v2_dir,
    containerd::Containerd,
    daemon::{Daemon, StateDir, journal_events},
    exposition,
    hostile::{MIX, NAMES, hex},
    kubelet::{ContainerSpec, PodSpec},
    privileged,
};
use serde_json::Value;

const NAMER: &str = env!("CARGO_BIN_EXE_namer");
/// Bound on an event showing up once its cause happened (names may wait for CRI up to 2 s).
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server's limit on an Event's message.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Every event is an Event object whose message is one line of printable text within the limit.
fn check_well_formed(event: &Value) -> &str {
    assert_eq!(event["kind"], "Event", "{event}");
    let message = event["message"].as_str().unwrap();
    assert!(message.len() <= MAX_MESSAGE_BYTES, "{message}");
    assert!(!message.chars().any(char::is_control), "raw control character in {message:?}");
    message
}

#[test]
fn cri_hostile_process_names_stay_escaped_in_events_journal_and_metrics() {
    if !privileged("cri_hostile_process_names_stay_escaped_in_events_journal_and_metrics") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("cri-hostile").unwrap();
    let spec = PodSpec { name: "web-0".to_owned(), namespace: "shop".to_owned(), ..PodSpec::unique("hostile") };
    let pod = containerd.cri().run_pod(spec).unwrap();
    let socket = containerd.address().display().to_string();
    let daemon = Daemon::start(&state, &["stdout", "journal"], &socket, &[]).unwrap();
    let app = containerd.cri().create_and_start(&pod, ContainerSpec::shell("app", "sleep 1000")).unwrap();
    // Processes join the container's cgroup from the host: the collector knows a container's
    // processes by their cgroup, and a host binary can take any name.
    let dir = v2_dir(&app.cgroup).unwrap();

    let mut expected = Vec::new();
    for name in &NAMES {
        let status = command_in(NAMER, &[&dir]).unwrap().args([hex(name.raw).as_str(), "segv"]).status().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGSEGV));
        // The status does not say the pid; the event does, and it is checked against the exit below.
        expected.push(format!("({}) of container app crashed: SIGSEGV", name.shown));
    }
    let mut waiting = command_in(NAMER, &[&dir]).unwrap();
    let mut waiting = waiting.args([hex(MIX.raw).as_str(), "wait"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut named = String::new();
    BufReader::new(waiting.stdout.take().unwrap()).read_line(&mut named).unwrap();
    let killed_pid = waiting.id();
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    let killer = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    let killed = format!(
        "Process {killed_pid} ({}) of container app was killed: SIGKILL from pid {} ({})",
        MIX.shown,
        std::process::id(),
        killer.trim_end()
    );

    let about = |events: &[Value]| -> Vec<Value> {
        events.iter().filter(|e| e["involvedObject"]["uid"] == pod.spec.uid.as_str()).cloned().collect()
    };
    daemon.wait_for(EVENT_TIMEOUT, |events| about(events).len() > NAMES.len()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let exposition = daemon.metrics().unwrap();
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    for event in &stopped.events {
        assert!(event.is_object(), "the stdout sink printed a line that is not JSON: {event}");
    }
    let events = about(&stopped.events);
    assert_eq!(events.len(), NAMES.len() + 1, "{events:#?}");
    let messages: Vec<&str> = events.iter().map(check_well_formed).collect();
    let crashed: Vec<&&str> = messages.iter().filter(|m| m.ends_with("crashed: SIGSEGV")).collect();
    assert_eq!(crashed.len(), NAMES.len(), "{messages:#?}");
    for (message, tail) in crashed.iter().zip(&expected) {
        // `Process <pid> (<name>) of container app crashed: SIGSEGV`, in the order they died.
        let pid = message.strip_prefix("Process ").and_then(|m| m.split_once(' ')).unwrap().0;
        assert!(pid.parse::<u32>().is_ok(), "{message}");
        assert_eq!(**message, format!("Process {pid} {tail}"));
    }
    assert!(messages.contains(&killed.as_str()), "{killed:?} in {messages:#?}");

    // The journal keeps the same messages, unescaped no further.
    let journal = journal_events(state.path(), &[]).unwrap();
    let mut kept: Vec<&str> =
        journal.iter().filter(|e| e["involvedObject"]["uid"] == pod.spec.uid.as_str()).map(check_well_formed).collect();
    let mut printed = messages.clone();
    kept.sort_unstable();
    printed.sort_unstable();
    assert_eq!(kept, printed);

    // Nine deaths by a signal in container app: one well-formed series.
    let samples = exposition::parse(&exposition).unwrap();
    let labels = [("namespace", "shop"), ("pod", "web-0"), ("container", "app")];
    assert_eq!(
        exposition::value(&samples, "collector_container_nonzero_exits_total", &labels),
        Some((NAMES.len() + 1) as f64)
    );
}
