//! Stops the kubelet asks for, driven through CRI as the kubelet drives them (StopContainer with a
//! grace period, then StopPodSandbox): a requested stop is not a failure, a container that needs
//! the runtime's SIGKILL is `GracePeriodExceeded`, and a kill by anyone else keeps its sender.
//! The journal keeps every container's end, also the Normal ones the API server does not get.
#![expect(clippy::unwrap_used, clippy::panic, reason = "the helpers are test steps: a failure fails the test")]

use std::time::Duration;

use collector_tests::collector::Collector;
use collector_tests::containerd::Containerd;
use collector_tests::daemon::{Daemon, StateDir, journal_occurrences};
use collector_tests::kubelet::{Container, ContainerSpec, Pod, PodSpec};
use collector_tests::privileged;
use serde_json::{Value, json};

/// Bound on an event showing up once its cause happened (names may wait for CRI up to 2 s).
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The grace period of the stops that time out.
const GRACE: Duration = Duration::from_secs(2);
/// Long enough for a shell to have set its trap once its pid is known.
const SETTLE: Duration = Duration::from_millis(500);

fn web_0(containerd: &Containerd, share_process_namespace: bool) -> Pod {
    let spec = PodSpec {
        name: "web-0".to_owned(),
        namespace: "shop".to_owned(),
        share_process_namespace,
        ..PodSpec::unique("web")
    };
    containerd.cri().run_pod(spec).unwrap()
}

/// `collector run` printing JSON events and keeping its journal, with Normal events for requested
/// stops if `normal`.
fn daemon(containerd: &Containerd, state: &StateDir, normal: bool) -> Daemon {
    let socket = containerd.address().display().to_string();
    let extra: &[&str] = if normal { &["--emit-normal-exits"] } else { &[] };
    Daemon::start(state, &["stdout", "journal"], &socket, extra).unwrap()
}

/// `collector trace` of the pod's cgroup, as JSON.
fn trace(containerd: &Containerd, pod: &Pod) -> Collector {
    let socket = containerd.address().display().to_string();
    Collector::trace(&["--cri-socket", &socket, "--cgroup", pod.cgroup(), "--type", "exit"]).unwrap()
}

fn about<'a>(events: &'a [Value], pod: &Pod) -> Vec<&'a Value> {
    events.iter().filter(|e| e["involvedObject"]["uid"] == pod.spec.uid.as_str()).collect()
}

/// Type, reason, object and message of an event, for exact comparison.
fn summary(event: &Value) -> Value {
    json!({
        "type": event["type"], "reason": event["reason"], "fieldPath": event["involvedObject"]["fieldPath"],
        "message": event["message"],
    })
}

fn expected(kind: &str, reason: &str, container: &Container, message: &str) -> Value {
    json!({
        "type": kind, "reason": reason, "fieldPath": format!("spec.containers{{{}}}", container.name),
        "message": message,
    })
}

/// Waits for `n` events about `pod`, then a little longer for any that should not come.
fn events_about(daemon: &Daemon, pod: &Pod, n: usize) -> Vec<Value> {
    daemon.wait_for(EVENT_TIMEOUT, |events| about(events, pod).len() >= n).unwrap();
    std::thread::sleep(SETTLE);
    about(&daemon.events(), pod).into_iter().cloned().collect()
}

/// `Container NAME stopped on request: exited with code CODE, S s after SIGTERM`: checks all but
/// the seconds, which must be under `within`.
fn check_stopped(message: &str, container: &str, code: u32, within: f64) {
    let head = format!("Container {container} stopped on request: exited with code {code}, ");
    let rest = message.strip_prefix(&head).unwrap_or_else(|| panic!("{message}"));
    let secs = rest.strip_suffix(" s after SIGTERM").unwrap_or_else(|| panic!("{message}"));
    let secs: f64 = secs.parse().unwrap_or_else(|_| panic!("{message}"));
    assert!((0.0..within).contains(&secs), "{message}");
}

fn stop_daemon(daemon: Daemon) {
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
fn stops_that_end_within_the_grace_period_are_normal_container_stopped_and_never_a_warning() {
    if !privileged("stops_that_end_within_the_grace_period_are_normal_container_stopped_and_never_a_warning") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("stop-in-time").unwrap();
    let pod = web_0(&containerd, false);
    let daemon = daemon(&containerd, &state, true);
    let cri = containerd.cri();
    // A handler that exits 0, and one that exits 143 as Java does.
    let app = cri.create_and_start(&pod, ContainerSpec::shell("app", "trap 'exit 0' TERM; sleep 1000 & wait")).unwrap();
    let java =
        cri.create_and_start(&pod, ContainerSpec::shell("java", "trap 'exit 143' TERM; sleep 1000 & wait")).unwrap();
    cri.container_pid(&app).unwrap();
    cri.container_pid(&java).unwrap();
    std::thread::sleep(SETTLE);
    cri.stop_container(&app, Duration::from_secs(30)).unwrap();
    cri.stop_container(&java, Duration::from_secs(30)).unwrap();
    assert_eq!(cri.wait_exit(&app, EVENT_TIMEOUT).unwrap(), 0);
    assert_eq!(cri.wait_exit(&java, EVENT_TIMEOUT).unwrap(), 143);

    // Each gives exactly one Normal event; the `sleep` each leaves is ended by the kernel with
    // its pid namespace and gives none.
    let events = events_about(&daemon, &pod, 2);
    assert_eq!(events.len(), 2, "{events:#?}");
    for (container, code) in [(&app, 0), (&java, 143)] {
        let event = events
            .iter()
            .find(|e| e["involvedObject"]["fieldPath"] == format!("spec.containers{{{}}}", container.name))
            .unwrap_or_else(|| panic!("no event for {}: {events:#?}", container.name));
        let message = event["message"].as_str().unwrap();
        assert_eq!(summary(event), expected("Normal", "ContainerStopped", container, message));
        check_stopped(message, &container.name, code, 2.0);
    }
    stop_daemon(daemon);
}

#[test]
fn a_main_process_that_ignores_sigterm_is_grace_period_exceeded_once() {
    if !privileged("a_main_process_that_ignores_sigterm_is_grace_period_exceeded_once") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("grace").unwrap();
    let pod = web_0(&containerd, false);
    let daemon = daemon(&containerd, &state, false);
    let collector = trace(&containerd, &pod);
    let cri = containerd.cri();
    // A polite container first: without --emit-normal-exits its stop is no Event.
    let app = cri.create_and_start(&pod, ContainerSpec::shell("app", "trap 'exit 0' TERM; sleep 1000 & wait")).unwrap();
    cri.container_pid(&app).unwrap();
    std::thread::sleep(SETTLE);
    cri.stop_container(&app, Duration::from_secs(30)).unwrap();
    assert_eq!(cri.wait_exit(&app, EVENT_TIMEOUT).unwrap(), 0);
    // busybox sh execs a lone command: `sleep` is PID 1 with no handler, so SIGTERM does nothing.
    let sidecar = cri.create_and_start(&pod, ContainerSpec::shell("sidecar", "sleep 1000")).unwrap();
    let pid = cri.container_pid(&sidecar).unwrap();
    cri.stop_container(&sidecar, GRACE).unwrap();
    assert_eq!(cri.wait_exit(&sidecar, EVENT_TIMEOUT).unwrap(), 137);

    let events = events_about(&daemon, &pod, 1);
    assert_eq!(events.len(), 1, "only the Warning is an Event: {events:#?}");
    assert_eq!(
        summary(&events[0]),
        expected(
            "Warning",
            "GracePeriodExceeded",
            &sidecar,
            "Container sidecar did not exit within 2 s of SIGTERM and was killed (SIGKILL from the runtime); it \
             ignores SIGTERM"
        )
    );
    stop_daemon(daemon);

    // The journal keeps both ends: the Warning, and the polite stop, marked as not sent.
    let mut kept: Vec<(String, String, String)> = journal_occurrences(state.path(), &["--namespace", "shop"])
        .unwrap()
        .iter()
        .filter(|o| o["involvedObject"]["uid"] == pod.spec.uid.as_str())
        .map(|o| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (text(&o["reason"]), text(&o["type"]), text(&o["api"]["outcome"]))
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            ("ContainerStopped".to_owned(), "Normal".to_owned(), "not_emitted".to_owned()),
            ("GracePeriodExceeded".to_owned(), "Warning".to_owned(), "local".to_owned()),
        ]
    );

    // `collector trace` gives the same answer without a cluster.
    let records = collector.wait_for(EVENT_TIMEOUT, |records| records.iter().any(|r| r["pid"] == pid)).unwrap();
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let exit = records.iter().find(|r| r["pid"] == pid).unwrap();
    assert_eq!(exit["stop"], "grace_exceeded", "{exit:#}");
    assert_eq!(exit["exit_code"], 137, "{exit:#}");
    let request = &exit["stop_request"];
    assert_eq!((&request["signal_name"], &request["ignored"]), (&json!("SIGTERM"), &json!(true)), "{exit:#}");
    assert_eq!(request["sender"]["exe"], "runc", "{exit:#}");
    assert_eq!(exit["sender"]["exe"], "runc", "the SIGKILL's sender: {exit:#}");
    assert_ne!(request["sender"]["pid"], exit["sender"]["pid"], "two runc processes: {exit:#}");
    let (sent, killed) = (request["time"].as_str().unwrap(), request["kill_time"].as_str().unwrap());
    assert!(sent < killed, "{exit:#}");
}

#[test]
fn processes_the_runtime_kills_when_the_pod_stops_give_nothing() {
    if !privileged("processes_the_runtime_kills_when_the_pod_stops_give_nothing") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("stop-pod").unwrap();
    // One pid namespace for the pod: the runtime, not the kernel, ends what the main process leaves.
    let pod = web_0(&containerd, true);
    let daemon = daemon(&containerd, &state, true);
    let collector = trace(&containerd, &pod);
    let cri = containerd.cri();
    let app = cri.create_and_start(&pod, ContainerSpec::shell("app", "trap 'exit 0' TERM; sleep 1000 & wait")).unwrap();
    let main = cri.container_pid(&app).unwrap();
    std::thread::sleep(SETTLE);
    let child = children(main);
    assert_eq!(child.len(), 1, "the shell's one child: {child:?}");
    cri.stop_container(&app, Duration::from_secs(30)).unwrap();
    cri.stop_pod(&pod).unwrap();

    let events = events_about(&daemon, &pod, 1);
    assert_eq!(events.len(), 1, "{events:#?}");
    let message = events[0]["message"].as_str().unwrap();
    assert_eq!(summary(&events[0]), expected("Normal", "ContainerStopped", &app, message));
    check_stopped(message, "app", 0, 2.0);
    stop_daemon(daemon);

    // The child was killed by the runtime (`runc kill --all`), on request.
    let records = collector.wait_for(EVENT_TIMEOUT, |records| records.iter().any(|r| r["pid"] == child[0])).unwrap();
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let exit = records.iter().find(|r| r["pid"] == child[0]).unwrap();
    assert_eq!((&exit["signal"], &exit["stop"]), (&json!(9), &json!("requested")), "{exit:#}");
    assert_eq!(exit["sender"]["exe"], "runc", "{exit:#}");
    assert_eq!(exit["stop_request"]["signal_name"], "SIGKILL", "{exit:#}");
}

#[test]
fn a_kill_by_another_process_during_a_stop_keeps_its_reason_and_sender() {
    if !privileged("a_kill_by_another_process_during_a_stop_keeps_its_reason_and_sender") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("stop-kill").unwrap();
    let pod = web_0(&containerd, false);
    let daemon = daemon(&containerd, &state, true);
    let cri = containerd.cri();
    // On SIGTERM the shell kills its own child, then exits 0.
    let script = "sleep 1000 & child=$!; trap 'kill -9 $child; exit 0' TERM; wait";
    let app = cri.create_and_start(&pod, ContainerSpec::shell("app", script)).unwrap();
    let main = cri.container_pid(&app).unwrap();
    std::thread::sleep(SETTLE);
    let child = children(main);
    assert_eq!(child.len(), 1, "the shell's one child: {child:?}");
    cri.stop_container(&app, Duration::from_secs(30)).unwrap();
    assert_eq!(cri.wait_exit(&app, EVENT_TIMEOUT).unwrap(), 0);

    let events = events_about(&daemon, &pod, 2);
    assert_eq!(events.len(), 2, "{events:#?}");
    let killed = events.iter().find(|e| e["reason"] == "ProcessKilled").unwrap_or_else(|| panic!("{events:#?}"));
    let message = killed["message"].as_str().unwrap();
    assert_eq!(summary(killed), expected("Warning", "ProcessKilled", &app, message));
    // busybox's `kill` is a shell builtin: the sender is the shell itself.
    assert_eq!(
        message,
        format!("Process {} (sleep) of container app was killed: SIGKILL from pid {main} (sh)", child[0])
    );
    let stopped = events.iter().find(|e| e["reason"] == "ContainerStopped").unwrap_or_else(|| panic!("{events:#?}"));
    check_stopped(stopped["message"].as_str().unwrap(), "app", 0, 2.0);
    stop_daemon(daemon);
}

/// The host pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    text.split_whitespace().map(|p| p.parse().unwrap()).collect()
}
