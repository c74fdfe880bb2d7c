//! Filter rules from the configuration file, on real containers: a drop rule silences a noisy
//! sidecar and nothing else, each rule counts its work, and SIGHUP swaps the rules while the
//! daemon runs (a broken file keeps the rules in force), also while the node is busy.
#![expect(clippy::unwrap_used, reason = "the helpers are test steps: a failure fails the test")]

use std::time::Duration;

use collector_tests::containerd::Containerd;
use collector_tests::daemon::{Daemon, StateDir, samples};
use collector_tests::kubelet::{Pod, PodSpec};
use collector_tests::privileged;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);

const SILENCE_SIDECARS: &str = r#"
[[filters]]
name = "ignore-sidecar-sigterm"
action = "drop"
match = { container = "*-sidecar", exit_code = 143 }
"#;

const SILENCE_APP: &str = r#"
[[filters]]
name = "ignore-app"
action = "drop"
match = { container = "app*" }
"#;

fn messages(events: &[Value], pod: &Pod) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["involvedObject"]["uid"] == pod.spec.uid.as_str())
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_drop_rule_silences_a_sidecar_and_sighup_swaps_the_rules() {
    if !privileged("a_drop_rule_silences_a_sidecar_and_sighup_swaps_the_rules") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("filters").unwrap();
    let file = state.path().join("collector.toml");
    std::fs::write(&file, SILENCE_SIDECARS).unwrap();
    let spec = PodSpec { name: "web-0".to_owned(), namespace: "shop".to_owned(), ..PodSpec::unique("web") };
    let pod = containerd.cri().run_pod(spec).unwrap();
    let socket = containerd.address().display().to_string();
    let config = file.display().to_string();
    let daemon = Daemon::start(&state, &["stdout"], &socket, &["--config", &config]).unwrap();

    containerd.cri().exit_with(&pod, "envoy-sidecar", 143, TIMEOUT).unwrap();
    containerd.cri().exit_with(&pod, "istio-sidecar", 1, TIMEOUT).unwrap();
    containerd.cri().exit_with(&pod, "app", 143, TIMEOUT).unwrap();
    daemon.wait_for(TIMEOUT, |events| messages(events, &pod).len() >= 2).unwrap();
    daemon.wait_metric("collector_filter_matches_total", "rule=\"ignore-sidecar-sigterm\"", 1, TIMEOUT).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        messages(&daemon.events(), &pod),
        ["Container istio-sidecar exited with code 1", "Container app exited with code 143"]
    );
    let metrics = daemon.metrics().unwrap();
    assert!(
        samples(&metrics, "collector_events_dropped_total")
            .contains(&"collector_events_dropped_total{cause=\"filtered\"} 1"),
        "{metrics}"
    );

    // A broken file keeps the rules in force, and says why.
    std::fs::write(&file, "[[filters]]\nname = \"x\"\naction = \"mute\"\nmatch = { pod = \"p\" }\n").unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(daemon.pid(), libc::SIGHUP) };
    daemon.wait_metric("collector_filter_reloads_total", "result=\"error\"", 1, TIMEOUT).unwrap();
    assert!(
        daemon.stderr().contains(&format!(
            "collector: SIGHUP: {config}:3: filter rule \"x\": `action`: expected \"drop\" or \"keep\", found \"mute\""
        )),
        "{}",
        daemon.stderr()
    );
    containerd.cri().exit_with(&pod, "proxy-sidecar", 143, TIMEOUT).unwrap();
    daemon.wait_metric("collector_filter_matches_total", "rule=\"ignore-sidecar-sigterm\"", 2, TIMEOUT).unwrap();

    // A good file replaces them.
    std::fs::write(&file, SILENCE_APP).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(daemon.pid(), libc::SIGHUP) };
    daemon.wait_metric("collector_filter_reloads_total", "result=\"ok\"", 1, TIMEOUT).unwrap();
    containerd.cri().exit_with(&pod, "app-2", 2, TIMEOUT).unwrap();
    containerd.cri().exit_with(&pod, "mesh-sidecar", 143, TIMEOUT).unwrap();
    daemon.wait_for(TIMEOUT, |events| messages(events, &pod).len() >= 3).unwrap();
    daemon.wait_metric("collector_filter_matches_total", "rule=\"ignore-app\"", 1, TIMEOUT).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        messages(&daemon.events(), &pod),
        [
            "Container istio-sidecar exited with code 1",
            "Container app exited with code 143",
            "Container mesh-sidecar exited with code 143",
        ]
    );
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
fn a_reload_under_load_loses_nothing_and_the_next_record_meets_the_new_rules() {
    if !privileged("a_reload_under_load_loses_nothing_and_the_next_record_meets_the_new_rules") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("filters-load").unwrap();
    let file = state.path().join("collector.toml");
    std::fs::write(&file, SILENCE_SIDECARS).unwrap();
    let spec = PodSpec { name: "load-0".to_owned(), namespace: "load".to_owned(), ..PodSpec::unique("load") };
    let pod = containerd.cri().run_pod(spec).unwrap();
    let socket = containerd.address().display().to_string();
    let config = file.display().to_string();
    let daemon = Daemon::start(&state, &["stdout"], &socket, &["--config", &config]).unwrap();

    // Host processes exit as fast as one core forks them while the rules are swapped four times.
    const FORKS: u64 = 20_000;
    let load = std::thread::spawn(|| collector_tests::fork_exits(FORKS).unwrap());
    for (round, rules) in [SILENCE_APP, SILENCE_SIDECARS, SILENCE_APP, SILENCE_SIDECARS, SILENCE_APP].iter().enumerate()
    {
        std::fs::write(&file, rules).unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(daemon.pid(), libc::SIGHUP) };
        daemon.wait_metric("collector_filter_reloads_total", "result=\"ok\"", round as u64 + 1, TIMEOUT).unwrap();
    }
    load.join().unwrap();
    // The rules in force are the last file's: the app is silenced, sidecars are not.
    containerd.cri().exit_with(&pod, "app-x", 2, TIMEOUT).unwrap();
    containerd.cri().exit_with(&pod, "envoy-sidecar", 143, TIMEOUT).unwrap();
    daemon.wait_for(TIMEOUT, |events| !messages(events, &pod).is_empty()).unwrap();
    daemon.wait_metric("collector_filter_matches_total", "rule=\"ignore-app\"", 1, TIMEOUT).unwrap();
    assert_eq!(messages(&daemon.events(), &pod), ["Container envoy-sidecar exited with code 143"]);
    let metrics = daemon.metrics().unwrap();
    let lost = samples(&metrics, "collector_kernel_records_lost_total");
    assert!(!lost.is_empty() && lost.iter().all(|line| line.ends_with(" 0")), "{metrics}");
    let exits = samples(&metrics, "collector_kernel_records_total")
        .into_iter()
        .find_map(|line| line.strip_prefix("collector_kernel_records_total{type=\"exit\"} "))
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(exits >= FORKS, "{exits} exit records for {FORKS} forks:\n{metrics}");
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
fn a_labels_rule_silences_the_canary_pods_only() {
    if !privileged("a_labels_rule_silences_the_canary_pods_only") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("filters-labels").unwrap();
    let file = state.path().join("collector.toml");
    std::fs::write(
        &file,
        "[[filters]]\nname = \"quiet-canaries\"\naction = \"drop\"\nmatch = { labels = { app = \"web\", track = \"canary*\" } }\n",
    )
    .unwrap();
    let labelled = |name: &str, track: &str| PodSpec {
        name: name.to_owned(),
        namespace: "shop".to_owned(),
        labels: vec![("app".to_owned(), "web".to_owned()), ("track".to_owned(), track.to_owned())],
        ..PodSpec::unique("web")
    };
    let canary = containerd.cri().run_pod(labelled("web-canary", "canary-1")).unwrap();
    let stable = containerd.cri().run_pod(labelled("web-stable", "stable")).unwrap();
    let socket = containerd.address().display().to_string();
    let config = file.display().to_string();
    let daemon = Daemon::start(&state, &["stdout"], &socket, &["--config", &config]).unwrap();
    containerd.cri().exit_with(&canary, "app", 3, TIMEOUT).unwrap();
    containerd.cri().exit_with(&stable, "app", 3, TIMEOUT).unwrap();
    daemon.wait_for(TIMEOUT, |events| !messages(events, &stable).is_empty()).unwrap();
    daemon.wait_metric("collector_filter_matches_total", "rule=\"quiet-canaries\"", 1, TIMEOUT).unwrap();
    assert_eq!(messages(&daemon.events(), &canary), Vec::<String>::new());
    assert_eq!(messages(&daemon.events(), &stable), ["Container app exited with code 3"]);
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}
