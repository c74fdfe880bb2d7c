//! `collector run` writing Events through its Kubernetes sink (`--kubeconfig`) to the API
//! server TEST DOUBLE, which goes away for a minute (connections refused) during a burst of
//! container deaths under a real containerd and then comes back on the same port: every
//! Event is written once, repeats are PATCHed with client-go's counts, nothing is lost or
//! sent twice, the retry and error counters move, and the daemon's memory stays bounded.
#![expect(clippy::unwrap_used, clippy::panic, reason = "the helpers are test steps: a failure fails the test")]

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use api_double::{Recorded, TestApi};
use collector::sinks::journal::journal_path;
use collector_tests::containerd::Containerd;
use collector_tests::daemon::{Daemon, StateDir};
use collector_tests::kubelet::{ContainerSpec, Pod, PodSpec};
use collector_tests::privileged;
use serde_json::Value;

/// How long the API server is away.
const OUTAGE: Duration = Duration::from_secs(60);
/// Deaths of container `app` of pod `web-0` (the same container, the same exit code, so one
/// event whose count goes up) while the API server is there, and then while it is away.
const EXITS_BEFORE: u64 = 2;
const EXITS_DURING: u64 = 4;
/// Pods whose container has a crash storm during the outage: 16 × 25 writes, more than the
/// 256 the sink holds in memory, so the rest must wait in the journal.
const STORM_PODS: usize = 16;
/// Crashing children per storm.
const CRASHES: usize = 40;
/// client-go's spam filter burst: writes per object before its bucket is empty (one more per 300 s).
const SPAM_BURST: usize = 25;
/// client-go's aggregator: the event that makes this many distinct messages is combined.
const AGGREGATE_MAX: usize = 10;
/// Bound on an event showing up once its cause happened (names may wait for CRI up to 2 s).
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The sink's backoff waits at most 30 s between attempts, so every write is tried again
/// within 30 s of the API server's return; the rest is slack for a loaded 2-core CI machine.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45);
/// Bound on the growth of the daemon's anonymous memory (heap) from just before the outage
/// to its end, with 404 writes queued: the sink holds at most 256 writes in memory and the
/// rest wait in the journal on disk. Room for SQLite's page cache (2 MB) and allocator slack.
const ANON_GROWTH_LIMIT_KB: u64 = 8 * 1024;

/// The API server TEST DOUBLE on a runtime of its own, driven by a thread, so that it
/// answers while the test blocks on containerd and the daemon.
struct Double {
    api: TestApi,
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    driver: Option<JoinHandle<()>>,
}

impl Double {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let driver = std::thread::spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        let api = handle.block_on(TestApi::start());
        Self { api, handle, stop: Some(stop), driver: Some(driver) }
    }

    /// Stop listening and close every connection: connections are refused from now on.
    fn go_away(&mut self) {
        self.handle.block_on(self.api.stop());
    }

    /// Listen again on the same port.
    fn come_back(&mut self) {
        self.handle.block_on(self.api.restart());
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

/// One Events API write as the double received it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Write {
    method: String,
    count: u64,
    status: u16,
}

/// The writes one event gets when it happens `n` times: a POST with count 1, then a PATCH
/// for each repeat with counts 2..=n, each answered 201 or 200 at the first try that reaches
/// the server.
fn writes(n: u64) -> Vec<Write> {
    (1..=n)
        .map(|count| match count {
            1 => Write { method: "POST".to_owned(), count, status: 201 },
            _ => Write { method: "PATCH".to_owned(), count, status: 200 },
        })
        .collect()
}

/// (namespace, event name) of an Events API write, `None` for any other request.
fn event_of(request: &Recorded) -> Option<(String, String)> {
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("POST", ["api", "v1", "namespaces", ns, "events"]) => {
            Some(((*ns).to_owned(), request.body["metadata"]["name"].as_str().unwrap_or_default().to_owned()))
        }
        ("PATCH", ["api", "v1", "namespaces", ns, "events", name]) => Some(((*ns).to_owned(), (*name).to_owned())),
        _ => None,
    }
}

/// Per pod uid, the write sequence of each of its events, sorted (names are not known in advance).
type ByPod = BTreeMap<String, Vec<Vec<Write>>>;
/// The pod uid of each event, by (namespace, name).
type PodOf = BTreeMap<(String, String), String>;

/// [`ByPod`] from the double's log in arrival order, and [`PodOf`].
fn by_pod(requests: &[Recorded]) -> (ByPod, PodOf) {
    let mut per_event: BTreeMap<(String, String), Vec<Write>> = BTreeMap::new();
    let mut uid_of = BTreeMap::new();
    for request in requests {
        let Some(key) = event_of(request) else { continue };
        if request.method == "POST" {
            let uid = request.body["involvedObject"]["uid"].as_str().unwrap_or_default().to_owned();
            uid_of.insert(key.clone(), uid);
        }
        let count = request.body["count"].as_u64().unwrap_or(0);
        per_event.entry(key).or_default().push(Write { method: request.method.clone(), count, status: request.status });
    }
    let mut pods = ByPod::new();
    for (key, writes) in per_event {
        let uid = uid_of.get(&key).cloned().unwrap_or_else(|| format!("no POST for {key:?}"));
        pods.entry(uid).or_default().push(writes);
    }
    for events in pods.values_mut() {
        events.sort();
    }
    (pods, uid_of)
}

/// The value of the series `series` (name and labels exactly as served), or 0 if absent.
fn value(exposition: &str, series: &str) -> u64 {
    let prefix = format!("{series} ");
    exposition.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map_or(0, |v| v.trim().parse().unwrap())
}

/// Writes still in the daemon's outbox, read from its journal.
fn outbox_len(state: &StateDir) -> u64 {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(journal_path(state.path()), flags).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |row| row.get(0)).unwrap();
    u64::try_from(n).unwrap()
}

/// A `/proc/PID/status` field in kB, e.g. `RssAnon`.
fn status_kb(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let prefix = format!("{field}:");
    status
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.trim().strip_suffix(" kB"))
        .and_then(|kb| kb.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"))
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most `timeout`.
fn until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(done) = probe() {
            return done;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Container `app` of `pod` dies with code 1 once more, and the daemon has decided its
/// `count`-th event about it; then it is removed so that the next attempt can take its name.
fn exit_once(containerd: &Containerd, daemon: &Daemon, pod: &Pod, count: u64) {
    let cri = containerd.cri();
    let app = cri.create_and_start(pod, ContainerSpec::shell("app", "sleep 0.2; exit 1")).unwrap();
    assert_eq!(cri.wait_exit(&app, EVENT_TIMEOUT).unwrap(), 1);
    // Waiting keeps the deaths in order and lets the daemon name the container before it goes.
    daemon
        .wait_for(EVENT_TIMEOUT, |events| {
            events.iter().filter(|e| e["involvedObject"]["uid"] == pod.spec.uid.as_str()).count() as u64 >= count
        })
        .unwrap();
    cri.remove_container(&app).unwrap();
}

#[test]
fn an_api_outage_during_a_burst_loses_nothing_and_writes_each_event_once() {
    if !privileged("an_api_outage_during_a_burst_loses_nothing_and_writes_each_event_once") {
        return;
    }
    let started = Instant::now();
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("api-outage").unwrap();
    let mut double = Double::start();
    let kubeconfig = double.api.kubeconfig();
    let socket = containerd.address().display().to_string();
    let kubeconfig = kubeconfig.display().to_string();
    let daemon = Daemon::start(&state, &["kubernetes", "stdout"], &socket, &["--kubeconfig", &kubeconfig]).unwrap();
    let web = containerd
        .cri()
        .run_pod(PodSpec { name: "web-0".to_owned(), namespace: "shop".to_owned(), ..PodSpec::unique("web") })
        .unwrap();
    let exits = EXITS_BEFORE + EXITS_DURING;

    // With the API server there: the first deaths are written at once.
    for count in 1..=EXITS_BEFORE {
        exit_once(&containerd, &daemon, &web, count);
    }
    until("the first writes", EVENT_TIMEOUT, || {
        let (pods, _) = by_pod(&double.api.requests());
        (pods.get(&web.spec.uid) == Some(&vec![writes(EXITS_BEFORE)]) && outbox_len(&state) == 0).then_some(())
    });
    let before = double.api.requests().len();
    let ready = started.elapsed();
    let anon_before = status_kb(daemon.pid(), "RssAnon");
    let rss_before = status_kb(daemon.pid(), "VmRSS");

    // The API server goes away; the burst happens meanwhile.
    double.go_away();
    let outage = Instant::now();
    for count in EXITS_BEFORE + 1..=exits {
        exit_once(&containerd, &daemon, &web, count);
    }
    let script = format!("i=0; while [ $i -lt {CRASHES} ]; do sh -c 'kill -SEGV $$' & i=$((i+1)); done; wait; exit 0");
    let mut storms = Vec::new();
    for _ in 0..STORM_PODS {
        let pod = containerd.cri().run_pod(PodSpec::unique("storm")).unwrap();
        let storm = containerd.cri().create_and_start(&pod, ContainerSpec::shell("storm", &script)).unwrap();
        assert_eq!(containerd.cri().wait_exit(&storm, EVENT_TIMEOUT).unwrap(), 0);
        storms.push(pod);
    }
    let burst_took = outage.elapsed();
    // Each storm: the spam filter lets the first 25 crashes through and drops the other 15.
    let passed = (STORM_PODS * SPAM_BURST) as u64;
    let spammed = (STORM_PODS * (CRASHES - SPAM_BURST)) as u64;
    let metrics = until("the burst to be recorded", EVENT_TIMEOUT, || {
        let metrics = daemon.metrics().unwrap();
        let decided = value(&metrics, r#"collector_events_total{reason="ContainerExited",type="Warning"}"#) == exits
            && value(&metrics, r#"collector_events_total{reason="ProcessCrashed",type="Warning"}"#) == passed
            && value(&metrics, r#"collector_events_dropped_total{cause="spam_filter"}"#) == spammed
            // The outbox gauge is refreshed every 250 ms, not on each append.
            && value(&metrics, "collector_journal_outbox_pending") == EXITS_DURING + passed;
        decided.then_some(metrics)
    });
    // Nothing was delivered or dropped meanwhile: every write of the burst waits in the outbox.
    let queued = EXITS_DURING + passed;
    assert_eq!(outbox_len(&state), queued, "{metrics}");
    assert_eq!(value(&metrics, "collector_journal_outbox_pending"), queued, "{metrics}");
    assert_eq!(double.api.requests().len(), before);
    let mut anon_peak = anon_before;
    while outage.elapsed() < OUTAGE {
        anon_peak = anon_peak.max(status_kb(daemon.pid(), "RssAnon"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let metrics = daemon.metrics().unwrap();
    let refused = value(&metrics, r#"collector_api_requests_total{verb="POST",status="error"}"#)
        + value(&metrics, r#"collector_api_requests_total{verb="PATCH",status="error"}"#);
    let retries = value(&metrics, "collector_api_retries_total");
    assert!(refused > 0 && retries > 0, "the outage must show in the metrics:\n{metrics}");
    let hwm = status_kb(daemon.pid(), "VmHWM");
    assert!(
        anon_peak - anon_before < ANON_GROWTH_LIMIT_KB,
        "anonymous memory grew from {anon_before} kB to {anon_peak} kB during the outage (VmHWM {hwm} kB)"
    );
    assert_eq!(outbox_len(&state), queued, "nothing may leave the outbox while the API server is away");

    // The API server comes back on the same port: the outbox drains.
    double.come_back();
    let back = Instant::now();
    let storm_writes = || {
        let mut events = vec![writes(1); AGGREGATE_MAX - 1];
        // The combined event: the 10th crash creates it, the next 15 that passed update it.
        events.push(writes((SPAM_BURST - AGGREGATE_MAX + 1) as u64));
        events.sort();
        events
    };
    let mut expected = ByPod::new();
    expected.insert(web.spec.uid.clone(), vec![writes(exits)]);
    for pod in &storms {
        expected.insert(pod.spec.uid.clone(), storm_writes());
    }
    let total: usize = expected.values().flatten().map(Vec::len).sum();
    until("the outbox to drain", DRAIN_TIMEOUT, || {
        let written = double.api.requests().iter().filter(|r| event_of(r).is_some()).count();
        (written >= total && outbox_len(&state) == 0).then_some(())
    });
    let drained = back.elapsed();
    println!(
        "ready and first writes after {ready:?}; burst took {burst_took:?} of the outage; drained {drained:?} after \
         the API server came back; RssAnon {anon_before} -> peak {anon_peak} kB during the outage, VmRSS \
         {rss_before} kB before, VmHWM {hwm} kB; {refused} requests refused, {retries} retries"
    );
    // Longer than the sink's poll of its outbox: a write sent twice would show by now.
    std::thread::sleep(Duration::from_millis(1200));

    let requests = double.api.requests();
    // The start-up checks ask one SelfSubjectAccessReview per verb the daemon uses (doctor's
    // `rbac`); nothing else but Events and the node conditions is written.
    let is_review = |r: &Recorded| r.path.starts_with("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews");
    let is_conditions =
        |r: &Recorded| r.method == "PATCH" && r.path.split('?').next() == Some("/api/v1/nodes/test-node/status");
    assert_eq!(requests.iter().filter(|r| is_review(r)).count(), 8, "one review per verb");
    let others: Vec<&Recorded> = requests
        .iter()
        .filter(|r| event_of(r).is_none() && r.method != "GET" && !is_review(r) && !is_conditions(r))
        .collect();
    assert!(others.is_empty(), "writes other than Events and node conditions: {others:#?}");
    // The conditions, written at start (or, in the outage, once the server came back).
    let conditions = requests.iter().rfind(|r| is_conditions(r) && r.status == 200);
    let written = conditions.map(|r| r.body["status"]["conditions"].as_array().map_or(0, Vec::len));
    assert_eq!(written, Some(5), "the node conditions were never written: {requests:#?}");
    let (pods, uid_of) = by_pod(&requests);
    // Each event POSTed once, then PATCHed with counts 2, 3, ... in order, each answered 2xx:
    // no duplicate from a retry (no 409), no PATCH before its POST (no 404).
    assert_eq!(pods, expected);

    // The double holds what the recorder decided, each event at its final count.
    let printed = daemon.events();
    let mut last_printed: BTreeMap<(String, String), &Value> = BTreeMap::new();
    for event in &printed {
        let key = (
            event["metadata"]["namespace"].as_str().unwrap().to_owned(),
            event["metadata"]["name"].as_str().unwrap().to_owned(),
        );
        last_printed.insert(key, event);
    }
    assert_eq!(last_printed.keys().collect::<Vec<_>>(), uid_of.keys().collect::<Vec<_>>());
    for ((namespace, name), event) in &last_printed {
        let stored = double.api.stored(namespace, name).unwrap();
        for field in ["count", "message", "reason", "type", "involvedObject", "firstTimestamp", "lastTimestamp"] {
            assert_eq!(stored[field], event[field], "{field} of {namespace}/{name}");
        }
    }
    let web_event = last_printed.values().find(|e| e["involvedObject"]["uid"] == web.spec.uid.as_str()).unwrap();
    assert_eq!(
        (&web_event["reason"], &web_event["message"], &web_event["count"]),
        (&Value::from("ContainerExited"), &Value::from("Container app exited with code 1"), &Value::from(exits))
    );
    assert_eq!(web_event["involvedObject"]["fieldPath"], "spec.containers{app}");
    for pod in &storms {
        let mine: Vec<&Value> =
            last_printed.values().copied().filter(|e| e["involvedObject"]["uid"] == pod.spec.uid.as_str()).collect();
        let combined: Vec<&Value> = mine
            .iter()
            .copied()
            .filter(|e| e["message"].as_str().unwrap().starts_with("(combined from similar events): Process "))
            .collect();
        assert_eq!(combined.len(), 1, "{mine:#?}");
        assert_eq!(combined[0]["count"], (SPAM_BURST - AGGREGATE_MAX + 1) as u64);
        assert!(mine.iter().all(|e| e["reason"] == "ProcessCrashed"), "{mine:#?}");
    }

    // The metrics tell the same story.
    let posts = expected.values().flatten().count() as u64;
    let patches = total as u64 - posts;
    let metrics = until("the metrics to catch up", EVENT_TIMEOUT, || {
        let metrics = daemon.metrics().unwrap();
        (value(&metrics, r#"collector_api_requests_total{verb="PATCH",status="200"}"#) == patches).then_some(metrics)
    });
    assert_eq!(value(&metrics, r#"collector_api_requests_total{verb="POST",status="201"}"#), posts, "{metrics}");
    for status in ["404", "409"] {
        for verb in ["POST", "PATCH"] {
            let series = format!(r#"collector_api_requests_total{{verb="{verb}",status="{status}"}}"#);
            assert_eq!(value(&metrics, &series), 0, "{series}\n{metrics}");
        }
    }
    for cause in ["rejected", "expired", "queue_full"] {
        let series = format!(r#"collector_events_dropped_total{{cause="{cause}"}}"#);
        assert_eq!(value(&metrics, &series), 0, "{series}\n{metrics}");
    }
    assert!(value(&metrics, "collector_api_retries_total") >= retries, "{metrics}");
    assert_eq!(value(&metrics, "collector_journal_outbox_pending"), 0, "{metrics}");
    // Writes that ran out of attempts during the outage went back to the outbox, not away.
    assert!(value(&metrics, "collector_api_writes_deferred_total") > 0, "{metrics}");
    assert!(!metrics.contains("gave_up"), "{metrics}");
    // The caches that named all this are in the exposition: web-0 and the 16 storm pods at least.
    assert!(value(&metrics, r#"collector_metadata_entries{kind="pod"}"#) >= 17, "{metrics}");
    assert!(value(&metrics, r#"collector_cgroup_cache_lookups_total{result="hit"}"#) > 0, "{metrics}");

    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    println!(
        "daemon stopped after {:?}; api_writes_deferred_total {}",
        started.elapsed(),
        value(&metrics, "collector_api_writes_deferred_total")
    );
}
