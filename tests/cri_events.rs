//! `collector run` with a real containerd: container deaths become kubelet-style Events on
//! the Pod, printed on stdout, kept in the journal (also across a restart) and counted in the
//! metrics; the spam filter caps a crash storm at client-go's burst, and the journal keeps
//! every death of an OOM storm.
#![expect(clippy::unwrap_used, clippy::panic, reason = "the helpers are test steps: a failure fails the test")]

use std::process::Command;
use std::time::{Duration, Instant};

use collector_tests::containerd::Containerd;
use collector_tests::daemon::{
    Daemon, StateDir, journal_events, journal_occurrences, journal_summary, sample, samples,
};
use collector_tests::kubelet::{Container, ContainerSpec, Pod, PodSpec};
use collector_tests::node::wait_condition;
use collector_tests::privileged;
use serde_json::{Value, json};

/// The container's memory limit in the OOM test.
const LIMIT: u64 = 32 << 20;
/// Bound on an event showing up once its cause happened (names may wait for CRI up to 2 s).
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// client-go's spam filter burst: writes per object before the bucket is empty.
const SPAM_BURST: usize = 25;
/// client-go's aggregator: the event that makes this many distinct messages is combined.
const AGGREGATE_MAX: usize = 10;

/// Pod `web-0` in namespace `shop`, with a fresh uid (and so its own cgroup): every test
/// runs its own containerd and daemon, so the names may repeat across parallel tests.
fn web_0(containerd: &Containerd) -> Pod {
    let spec = PodSpec { name: "web-0".to_owned(), namespace: "shop".to_owned(), ..PodSpec::unique("web") };
    containerd.cri().run_pod(spec).unwrap()
}

/// `collector run` writing JSON to stdout and to the journal in `state`, resolving names
/// through the test's containerd.
fn daemon(containerd: &Containerd, state: &StateDir) -> Daemon {
    let socket = containerd.address().display().to_string();
    Daemon::start(state, &["stdout", "journal"], &socket, &[]).unwrap()
}

/// The events about `pod` (other tests' pods are not named by this daemon's containerd, but
/// be exact anyway).
fn about<'a>(events: &'a [Value], pod: &Pod) -> Vec<&'a Value> {
    events.iter().filter(|e| e["involvedObject"]["uid"] == pod.spec.uid.as_str()).collect()
}

/// Checks everything but the message, name and timestamps of an event the daemon wrote about
/// `container` of `pod`, and returns its message.
fn check_event(event: &Value, pod: &Pod, container: &Container, reason: &str, count: u64) -> String {
    check_event_of(event, pod, container, reason, count, false)
}

/// [`check_event`] for an event that may be `aggregated`: client-go leaves such an event's
/// reporting component and instance empty.
fn check_event_of(
    event: &Value,
    pod: &Pod,
    container: &Container,
    reason: &str,
    count: u64,
    aggregated: bool,
) -> String {
    let (component, instance) = if aggregated { ("", "") } else { ("collector", "test-node") };
    let mut fixed = event.clone();
    let object = fixed.as_object_mut().unwrap();
    let message = object.remove("message").unwrap();
    let metadata = object.remove("metadata").unwrap();
    let first = object.remove("firstTimestamp").unwrap();
    let last = object.remove("lastTimestamp").unwrap();
    assert_eq!(
        fixed,
        json!({
            "kind": "Event", "apiVersion": "v1",
            "involvedObject": {
                "kind": "Pod", "namespace": "shop", "name": "web-0", "uid": pod.spec.uid, "apiVersion": "v1",
                "fieldPath": format!("spec.containers{{{}}}", container.name),
            },
            "reason": reason, "source": {"component": "collector", "host": "test-node"},
            "count": count, "type": "Warning", "eventTime": null,
            "reportingComponent": component, "reportingInstance": instance,
        })
    );
    assert_eq!(metadata["namespace"], "shop");
    // client-go's name: `<object name>.<hex unix nanos>`.
    let name = metadata["name"].as_str().unwrap();
    let hex = name.strip_prefix("web-0.").unwrap_or_else(|| panic!("event name {name}"));
    assert!(!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()), "event name {name}");
    // API time: RFC 3339, second precision, UTC.
    for time in [&first, &last] {
        let time = time.as_str().unwrap();
        assert_eq!(time.len(), "2026-11-28T10:40:10Z".len(), "{time}");
        assert!(time.ends_with('Z'), "{time}");
    }
    assert!(first.as_str() <= last.as_str());
    message.as_str().unwrap().to_owned()
}

#[test]
fn a_child_oom_kill_is_one_oomkilling_event_on_stdout_in_the_journal_and_in_metrics() {
    if !privileged("a_child_oom_kill_is_one_oomkilling_event_on_stdout_in_the_journal_and_in_metrics") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("oom").unwrap();
    let pod = web_0(&containerd);
    let daemon = daemon(&containerd, &state);
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1; exit 0";
    let spec = ContainerSpec { memory_limit_bytes: Some(LIMIT), ..ContainerSpec::shell("app", script) };
    let app = containerd.cri().create_and_start(&pod, spec).unwrap();
    assert_eq!(containerd.cri().wait_exit(&app, EVENT_TIMEOUT).unwrap(), 0, "the shell outlives its child");
    daemon.wait_for(EVENT_TIMEOUT, |events| !about(events, &pod).is_empty()).unwrap();
    // A second event (the exit of dd, or of the shell) would come now.
    std::thread::sleep(Duration::from_millis(500));

    let events = daemon.events();
    let mine = about(&events, &pod);
    assert_eq!(mine.len(), 1, "exactly one event: {events:#?}");
    let message = check_event(mine[0], &pod, &app, "OOMKilling", 1);
    let pid = oom_victim(&message, "a child of container app");

    // The journal holds the same event, with the container and the kernel record behind it.
    let journal = journal_events(state.path(), &["--pod", "web-0"]).unwrap();
    assert_eq!(journal.len(), 1, "{journal:#?}");
    let mut stored = journal[0].clone();
    let context = stored.as_object_mut().unwrap().remove("journal").unwrap();
    assert_eq!(&stored, mine[0]);
    assert_eq!((&context["container"], &context["node"]), (&json!("app"), &json!("test-node")));
    let records = context["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{context:#}");
    assert_eq!(
        (&records[0]["type"], &records[0]["pid"], &records[0]["scope"], &records[0]["container_id"]),
        (&json!("oom_kill"), &json!(pid), &json!("container"), &json!(app.id))
    );

    let metrics = daemon.metrics().unwrap();
    assert_eq!(
        samples(&metrics, "collector_events_total"),
        ["collector_events_total{reason=\"OOMKilling\",type=\"Warning\"} 1"],
        "{metrics}"
    );
    assert_eq!(
        samples(&metrics, "collector_container_oom_kills_total"),
        ["collector_container_oom_kills_total{namespace=\"shop\",pod=\"web-0\",container=\"app\"} 1"],
        "{metrics}"
    );
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

/// The victim's pid in an OOMKilling message for `dd` in `relation` to its container, e.g.
/// `Memory cgroup out of memory: killed process 4242 (dd), a child of container app; container
/// limit 32Mi; anon-rss 31744kB`, where pid and rss vary.
fn oom_victim(message: &str, relation: &str) -> u32 {
    let rest =
        message.strip_prefix("Memory cgroup out of memory: killed process ").unwrap_or_else(|| panic!("{message}"));
    let (pid, rest) = rest.split_once(' ').unwrap();
    let rss = rest
        .strip_prefix(&format!("(dd), {relation}; container limit 32Mi; anon-rss "))
        .and_then(|r| r.strip_suffix("kB"))
        .unwrap_or_else(|| panic!("{message}"));
    let rss: u64 = rss.parse().unwrap_or_else(|_| panic!("{message}"));
    assert!(rss <= LIMIT / 1024, "{message}");
    pid.parse().unwrap_or_else(|_| panic!("{message}"))
}

#[test]
fn a_main_process_oom_kill_is_oomkilling_only() {
    if !privileged("a_main_process_oom_kill_is_oomkilling_only") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("oom-main").unwrap();
    let pod = web_0(&containerd);
    let daemon = daemon(&containerd, &state);
    // busybox sh execs a lone command: dd is the container's main process.
    let spec = ContainerSpec {
        memory_limit_bytes: Some(LIMIT),
        ..ContainerSpec::shell("app", "dd if=/dev/zero of=/dev/null bs=64M count=1")
    };
    let app = containerd.cri().create_and_start(&pod, spec).unwrap();
    let status = containerd.cri().wait_exit_status(&app, EVENT_TIMEOUT).unwrap();
    // containerd's reason (OOMKilled or Error) depends on a race in its shim; the code does not.
    assert_eq!(status.exit_code, 137, "{status:?}");
    daemon.wait_for(EVENT_TIMEOUT, |events| !about(events, &pod).is_empty()).unwrap();
    // Its exit is the OOM kill's: no ContainerExited besides.
    std::thread::sleep(Duration::from_millis(500));

    let events = daemon.events();
    let mine = about(&events, &pod);
    assert_eq!(mine.len(), 1, "exactly one event: {events:#?}");
    let message = check_event(mine[0], &pod, &app, "OOMKilling", 1);
    oom_victim(&message, "the main process of container app");
    let metrics = daemon.metrics().unwrap();
    assert_eq!(
        samples(&metrics, "collector_events_total"),
        ["collector_events_total{reason=\"OOMKilling\",type=\"Warning\"} 1"],
        "{metrics}"
    );
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
fn a_main_process_killed_from_the_host_names_the_sender() {
    if !privileged("a_main_process_killed_from_the_host_names_the_sender") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("sigkill").unwrap();
    let pod = web_0(&containerd);
    let daemon = daemon(&containerd, &state);
    // A loop, so that the main process stays `sh` (busybox execs a lone command).
    let app =
        containerd.cri().create_and_start(&pod, ContainerSpec::shell("app", "while true; do sleep 1; done")).unwrap();
    let pid = containerd.cri().container_pid(&app).unwrap();
    let mut kill = Command::new("kill").args(["-9", &pid.to_string()]).spawn().unwrap();
    let kill_pid = kill.id();
    assert!(kill.wait().unwrap().success());
    assert_eq!(containerd.cri().wait_exit(&app, EVENT_TIMEOUT).unwrap(), 137);
    daemon.wait_for(EVENT_TIMEOUT, |events| !about(events, &pod).is_empty()).unwrap();
    // The `sleep` child, killed by the kernel as its pid namespace ends, gives none.
    std::thread::sleep(Duration::from_millis(500));

    let events = daemon.events();
    let mine = about(&events, &pod);
    assert_eq!(mine.len(), 1, "exactly one event: {events:#?}");
    assert_eq!(
        check_event(mine[0], &pod, &app, "ContainerExited", 1),
        format!("Container app exited with code 137: SIGKILL from pid {kill_pid} (kill)")
    );
    let metrics = daemon.metrics().unwrap();
    assert_eq!(sample(&metrics, "collector_events_total", "reason=\"ContainerExited\",type=\"Warning\""), 1);
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
fn a_crash_storm_is_capped_by_the_spam_filter() {
    if !privileged("a_crash_storm_is_capped_by_the_spam_filter") {
        return;
    }
    const CRASHES: usize = 40;
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("storm").unwrap();
    let pod = web_0(&containerd);
    let daemon = daemon(&containerd, &state);
    // 40 children that each send themselves SIGSEGV, all at once; then the shell exits 0.
    let script = format!("i=0; while [ $i -lt {CRASHES} ]; do sh -c 'kill -SEGV $$' & i=$((i+1)); done; wait; exit 0");
    let started = Instant::now();
    let app = containerd.cri().create_and_start(&pod, ContainerSpec::shell("app", &script)).unwrap();
    assert_eq!(containerd.cri().wait_exit(&app, EVENT_TIMEOUT).unwrap(), 0);
    assert!(started.elapsed() < Duration::from_secs(3), "the storm took {:?}", started.elapsed());
    // Every crash was seen once the dropped ones are counted too.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let dropped = |metrics: &str| sample(metrics, "collector_events_dropped_total", "cause=\"spam_filter\"");
    let mut metrics = daemon.metrics().unwrap();
    while dropped(&metrics) < (CRASHES - SPAM_BURST) as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        metrics = daemon.metrics().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let metrics = daemon.metrics().unwrap();
    let events = daemon.events();
    let mine = about(&events, &pod);

    assert_eq!(mine.len(), SPAM_BURST, "{events:#?}\n{metrics}");
    assert_eq!(dropped(&metrics), (CRASHES - SPAM_BURST) as u64, "{metrics}");
    assert_eq!(
        sample(&metrics, "collector_events_total", "reason=\"ProcessCrashed\",type=\"Warning\""),
        SPAM_BURST as u64,
        "{metrics}"
    );
    // client-go's aggregation: 9 events with their own message, then one combined event that
    // later crashes update (count 1, 2, ...).
    let mut pids = std::collections::HashSet::new();
    for (i, event) in mine.iter().enumerate() {
        let combined = i + 1 >= AGGREGATE_MAX;
        let count = if combined { i + 2 - AGGREGATE_MAX } else { 1 };
        let message = check_event_of(event, &pod, &app, "ProcessCrashed", count as u64, combined);
        let own = if combined {
            message.strip_prefix("(combined from similar events): ").unwrap_or_else(|| panic!("{i}: {message}"))
        } else {
            &message
        };
        // `Process 4300 (sh) of container app crashed: SIGSEGV` (and ` (core dumped)` if it did).
        let rest = own.strip_prefix("Process ").unwrap_or_else(|| panic!("{i}: {message}"));
        let (pid, rest) = rest.split_once(' ').unwrap();
        assert!(pids.insert(pid.to_owned()), "{i}: pid {pid} twice");
        assert!(
            rest == "(sh) of container app crashed: SIGSEGV"
                || rest == "(sh) of container app crashed: SIGSEGV (core dumped)",
            "{i}: {message}"
        );
    }
    let journal = journal_events(state.path(), &["--pod", "web-0"]).unwrap();
    // The API events: one per name, the 9 singles and the combined one at its last count.
    assert_eq!(journal.len(), AGGREGATE_MAX, "{journal:#?}");
    // The node's history: every crash, once, the filtered ones too; and the shell's exit 0,
    // which the API server does not get.
    let occurrences = journal_occurrences(state.path(), &["--pod", "web-0"]).unwrap();
    assert_eq!(occurrences.len(), CRASHES + 1, "{occurrences:#?}");
    let crashes = occurrences.iter().filter(|o| o["reason"] == "ProcessCrashed").count();
    assert_eq!(crashes, CRASHES, "{occurrences:#?}");
    let end = occurrences.iter().find(|o| o["reason"] == "ContainerExited").unwrap();
    assert_eq!(
        (&end["type"], &end["message"], &end["api"]["outcome"], &end["container"]),
        (&json!("Normal"), &json!("Container app exited with code 0"), &json!("not_emitted"), &json!("app")),
        "{end:#}"
    );
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
fn an_oom_storm_keeps_every_kill_in_the_journal_while_the_api_gets_at_most_the_burst() {
    if !privileged("an_oom_storm_keeps_every_kill_in_the_journal_while_the_api_gets_at_most_the_burst") {
        return;
    }
    const KILLS: usize = 40;
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("oom-storm").unwrap();
    let pod = web_0(&containerd);
    let daemon = daemon(&containerd, &state);
    // One child after another outgrows the limit; the shell, small, survives them all.
    let script =
        format!("i=0; while [ $i -lt {KILLS} ]; do dd if=/dev/zero of=/dev/null bs=64M count=1; i=$((i+1)); done");
    let spec = ContainerSpec { memory_limit_bytes: Some(LIMIT), ..ContainerSpec::shell("app", &script) };
    let app = containerd.cri().create_and_start(&pod, spec).unwrap();
    assert_eq!(containerd.cri().wait_exit(&app, Duration::from_secs(60)).unwrap(), 0);
    let kills = |metrics: &str| {
        sample(metrics, "collector_container_oom_kills_total", "namespace=\"shop\",pod=\"web-0\",container=\"app\"")
    };
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut metrics = daemon.metrics().unwrap();
    while kills(&metrics) < KILLS as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        metrics = daemon.metrics().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let metrics = daemon.metrics().unwrap();
    assert_eq!(kills(&metrics), KILLS as u64, "{metrics}");
    // What the API server would get: client-go's burst, no more.
    let events = daemon.events();
    assert_eq!(about(&events, &pod).len(), SPAM_BURST, "{events:#?}");

    // The journal: every kill once, with its own message and kernel record.
    let occurrences = journal_occurrences(state.path(), &["--pod", "web-0", "--reason", "OOMKilling"]).unwrap();
    assert_eq!(occurrences.len(), KILLS, "{occurrences:#?}");
    let mut pids = std::collections::HashSet::new();
    for (i, occurrence) in occurrences.iter().enumerate() {
        assert_eq!((&occurrence["reason"], &occurrence["container"]), (&json!("OOMKilling"), &json!("app")));
        let outcome = if i < SPAM_BURST { "local" } else { "spam_filtered" };
        assert_eq!(occurrence["api"]["outcome"], outcome, "{i}: {occurrence:#}");
        let pid = oom_victim(occurrence["message"].as_str().unwrap(), "a child of container app");
        assert_eq!(occurrence["records"][0]["pid"], pid, "{occurrence:#}");
        assert!(pids.insert(pid), "pid {pid} twice");
    }
    // Exact counts per reason: the kills, and the shell's own end (exit 0, not sent).
    let summary = journal_summary(state.path(), &["--pod", "web-0"]).unwrap();
    let mut counts: Vec<(&Value, &Value, &Value)> =
        summary.iter().map(|row| (&row["reason"], &row["count"], &row["spamFiltered"])).collect();
    counts.sort_by_key(|row| row.0.as_str());
    assert_eq!(
        counts,
        [
            (&json!("ContainerExited"), &json!(1), &json!(0)),
            (&json!("OOMKilling"), &json!(KILLS), &json!(KILLS - SPAM_BURST))
        ],
        "{summary:#?}"
    );
    // Far more than 5 OOM kills in 10 minutes: the node condition says so (the other tests of
    // this file may add a kill or two of their own).
    let frequent = wait_condition(&state, "FrequentContainerOOM", "True", EVENT_TIMEOUT).unwrap();
    assert_eq!(frequent["reason"], "FrequentContainerOOM");
    let message = frequent["message"].as_str().unwrap();
    let (count, rest) = message.split_once(' ').unwrap();
    assert!(count.parse::<usize>().unwrap() >= KILLS, "{message}");
    assert_eq!(rest, "OOM kills on this node in the last 10m, more than 5");
    assert_eq!(sample(&daemon.metrics().unwrap(), "collector_node_condition", "condition=\"FrequentContainerOOM\""), 1);
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
fn the_journal_keeps_events_across_a_daemon_restart() {
    if !privileged("the_journal_keeps_events_across_a_daemon_restart") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("restart").unwrap();
    let pod = web_0(&containerd);
    let first = daemon(&containerd, &state);
    let app = containerd.cri().create_and_start(&pod, ContainerSpec::shell("app", "sleep 0.2; exit 3")).unwrap();
    assert_eq!(containerd.cri().wait_exit(&app, EVENT_TIMEOUT).unwrap(), 3);
    let events = first.wait_for(EVENT_TIMEOUT, |events| !about(events, &pod).is_empty()).unwrap();
    let event = about(&events, &pod)[0].clone();
    assert_eq!(check_event(&event, &pod, &app, "ContainerExited", 1), "Container app exited with code 3");
    let stopped = first.stop().unwrap();
    assert!(stopped.status.success(), "SIGTERM is a clean stop: {}", stopped.stderr);
    assert_eq!(about(&stopped.events, &pod).len(), 1, "{:#?}", stopped.events);

    let second = daemon(&containerd, &state);
    let journal = journal_events(state.path(), &["--pod", "web-0"]).unwrap();
    assert_eq!(journal.len(), 1, "{journal:#?}");
    let mut stored = journal[0].clone();
    stored.as_object_mut().unwrap().remove("journal");
    assert_eq!(stored, event);
    // Still there when the second daemon stopped too, and it did not print the old event again.
    let stopped = second.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(about(&stopped.events, &pod).is_empty(), "{:#?}", stopped.events);
    assert_eq!(journal_events(state.path(), &["--pod", "web-0"]).unwrap().len(), 1);
    assert!(journal_events(state.path(), &["--pod", "web-1"]).unwrap().is_empty());
}

/// The pod's per-container series go when its tombstone does. The metadata wait is longer than
/// the tombstone on purpose: the OOM record may wait in line behind other tests' containers,
/// which this daemon's runtime cannot name, after its own container's tombstone has run out.
#[test]
fn a_removed_pods_metric_series_go_when_its_tombstone_expires() {
    if !privileged("a_removed_pods_metric_series_go_when_its_tombstone_expires") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("tombstone").unwrap();
    let pod = web_0(&containerd);
    let socket = containerd.address().display().to_string();
    let extra = ["--tombstone-ttl", "3s", "--metadata-wait", "5s"];
    let daemon = Daemon::start(&state, &["journal"], &socket, &extra).unwrap();
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1; exit 0";
    let spec = ContainerSpec { memory_limit_bytes: Some(LIMIT), ..ContainerSpec::shell("app", script) };
    let app = containerd.cri().create_and_start(&pod, spec).unwrap();
    assert_eq!(containerd.cri().wait_exit(&app, EVENT_TIMEOUT).unwrap(), 0);
    let series = || samples(&daemon.metrics().unwrap(), "collector_container_oom_kills_total").len();
    let deadline = Instant::now() + 2 * EVENT_TIMEOUT;
    while series() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if series() != 1 {
        let stopped = daemon.stop().unwrap();
        let events = journal_events(state.path(), &[]).unwrap();
        panic!("the OOM kill is not counted for shop/web-0/app; events: {events:#?}\n{}", stopped.stderr);
    }

    containerd.cri().remove_pod(&pod).unwrap();
    let deadline = Instant::now() + 2 * EVENT_TIMEOUT;
    while series() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = series();
    let stopped = daemon.stop().unwrap();
    assert_eq!(left, 0, "the series went with the pod's 3 s tombstone:\n{}", stopped.stderr);
}
