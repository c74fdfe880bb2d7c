//! The live stream on real containers: clients with different filters each get exactly theirs,
//! a client that stops reading is cut off while the others go on and the kernel loses nothing,
//! and `collector trace --from` prints what `collector trace` prints, without probes.
#![expect(clippy::unwrap_used, reason = "the helpers are test steps: a failure fails the test")]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use collector_tests::collector::Collector;
use collector_tests::containerd::Containerd;
use collector_tests::daemon::{Daemon, StateDir, samples};
use collector_tests::kubelet::PodSpec;
use collector_tests::privileged;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(15);

/// A stream client: subscribed with `line`, its answer checked.
fn subscribe(socket: &Path, line: &str) -> BufReader<UnixStream> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    writeln!(stream, "{line}").unwrap();
    let mut reader = BufReader::new(stream);
    let mut hello = String::new();
    reader.read_line(&mut hello).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&hello).unwrap(), json!({"subscribed": {"rules": 1}}), "{hello}");
    reader
}

/// Reads lines until `done` holds for them.
fn read_until(reader: &mut BufReader<UnixStream>, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut lines = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while !done(&lines) {
        assert!(Instant::now() < deadline, "{lines:#?}");
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        lines.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    lines
}

/// `exit <container>` for record lines, `event <reason> <container>` for event lines.
fn describe(line: &Value) -> String {
    if let Some(event) = line.get("event") {
        let path = event["involvedObject"]["fieldPath"].as_str().unwrap_or_default();
        return format!("event {} {path}", event["reason"].as_str().unwrap());
    }
    let record = &line["record"];
    format!("{} {}", record["type"].as_str().unwrap(), record["container_name"].as_str().unwrap_or("-"))
}

#[test]
fn stream_clients_get_exactly_what_their_rules_pass_and_a_stalled_one_is_cut_off() {
    if !privileged("stream_clients_get_exactly_what_their_rules_pass_and_a_stalled_one_is_cut_off") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("stream-clients").unwrap();
    let socket_path = containerd.address().display().to_string();
    let daemon = Daemon::start(&state, &["stdout"], &socket_path, &[]).unwrap();
    let socket = state.path().join("stream.sock");
    let spec = PodSpec { namespace: "stream-clients".to_owned(), ..PodSpec::unique("web") };
    let pod = containerd.cri().run_pod(spec).unwrap();
    let namespace = pod.spec.namespace.clone();
    let mut by_namespace = subscribe(
        &socket,
        &format!(r#"filters = [{{ name = "ns", action = "keep", match = {{ namespace = "{namespace}" }} }}]"#),
    );
    let mut workers = subscribe(
        &socket,
        &format!(
            r#"filters = [{{ name = "workers", action = "keep", match = {{ namespace = "{namespace}", container = "worker*" }} }}]"#
        ),
    );
    let stalled = {
        let mut stream = UnixStream::connect(&socket).unwrap();
        writeln!(stream, r#"filters = [{{ name = "all", action = "drop", match = {{ container = "none" }} }}]"#)
            .unwrap();
        stream
    };
    let deadline = Instant::now() + TIMEOUT;
    while !daemon.metrics().unwrap().contains("\ncollector_stream_clients 3\n") {
        assert!(Instant::now() < deadline, "{}", daemon.metrics().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }

    containerd.cri().exit_with(&pod, "app", 3, TIMEOUT).unwrap();
    containerd.cri().exit_with(&pod, "worker", 4, TIMEOUT).unwrap();
    let mine = read_until(&mut by_namespace, |lines| {
        lines.iter().any(|line| describe(line) == "event ContainerExited spec.containers{worker}")
    });
    let theirs = read_until(&mut workers, |lines| {
        lines.iter().any(|line| describe(line) == "event ContainerExited spec.containers{worker}")
    });
    for line in &mine {
        let namespace_of = line
            .get("record")
            .map_or_else(|| line["event"]["involvedObject"]["namespace"].clone(), |record| record["namespace"].clone());
        assert_eq!(namespace_of, namespace.as_str(), "{line}");
    }
    let mine: Vec<String> = mine.iter().map(describe).collect();
    assert!(mine.contains(&"exit app".to_owned()), "{mine:#?}");
    assert!(mine.contains(&"event ContainerExited spec.containers{app}".to_owned()), "{mine:#?}");
    assert!(mine.contains(&"exit worker".to_owned()), "{mine:#?}");
    let theirs: Vec<String> = theirs.iter().map(describe).collect();
    assert!(theirs.contains(&"exit worker".to_owned()), "{theirs:#?}");
    assert!(
        theirs.iter().all(|line| line.ends_with(" worker") || line.ends_with("{worker}")),
        "only the worker's lines: {theirs:#?}"
    );

    // The stalled client asked for every record and reads none: host processes exiting fill
    // its socket and its queue, and it is cut off; the others are untouched.
    collector_tests::fork_exits(12_000).unwrap();
    daemon.wait_metric("collector_stream_clients_cut_total", "cause=\"slow\"", 1, TIMEOUT).unwrap();
    let metrics = daemon.metrics().unwrap();
    assert!(metrics.contains("\ncollector_stream_clients 2\n"), "{metrics}");
    let lost = samples(&metrics, "collector_kernel_records_lost_total");
    assert!(!lost.is_empty() && lost.iter().all(|line| line.ends_with(" 0")), "{metrics}");
    // The other two still get theirs.
    containerd.cri().exit_with(&pod, "worker-2", 5, TIMEOUT).unwrap();
    read_until(&mut workers, |lines| {
        lines.iter().any(|line| line["record"]["exit_code"] == 5 && line["record"]["container_name"] == "worker-2")
    });
    drop(stalled);
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
fn trace_from_prints_what_trace_prints_without_loading_probes() {
    if !privileged("trace_from_prints_what_trace_prints_without_loading_probes") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("stream-trace").unwrap();
    let socket_path = containerd.address().display().to_string();
    let daemon = Daemon::start(&state, &["stdout"], &socket_path, &[]).unwrap();
    let socket = state.path().join("stream.sock").display().to_string();
    let spec = PodSpec { namespace: "stream-trace".to_owned(), ..PodSpec::unique("web") };
    let pod = containerd.cri().run_pod(spec).unwrap();
    let namespace = pod.spec.namespace.clone();
    let from = Collector::trace(&["--from", &socket, "--namespace", &namespace, "--type", "exit"]).unwrap();
    let probes =
        Collector::trace(&["--cri-socket", &socket_path, "--namespace", &namespace, "--type", "exit"]).unwrap();
    containerd.cri().exit_with(&pod, "app", 3, TIMEOUT).unwrap();
    containerd.cri().exit_with(&pod, "worker", 4, TIMEOUT).unwrap();
    let both = |records: &[Value]| {
        ["app", "worker"].iter().all(|name| records.iter().any(|record| record["container_name"] == *name))
    };
    from.wait_for(TIMEOUT, both).unwrap();
    probes.wait_for(TIMEOUT, both).unwrap();
    let from = from.stop().unwrap();
    let probes = probes.stop().unwrap();
    assert!(from.status.success(), "{}", from.stderr);
    // Each process converts the kernel's boot-time stamps to wall time with its own measure of
    // the clocks' offset: the times agree to well under a millisecond, every other field exactly.
    let mains = |records: &[Value]| -> Vec<(Value, i64)> {
        records
            .iter()
            .filter(|record| record["main_process"] == true)
            .map(|record| {
                let mut record = record.clone();
                let time = record["time"].take();
                (record, collector::clock::parse_rfc3339(time.as_str().unwrap()).unwrap())
            })
            .collect()
    };
    let (from_mains, probe_mains) = (mains(&from.records), mains(&probes.records));
    assert_eq!(from_mains.len(), 2, "{:#?}", from.records);
    assert_eq!(probe_mains.len(), 2, "{:#?}", probes.records);
    for ((from, from_ns), (probe, probe_ns)) in from_mains.iter().zip(&probe_mains) {
        assert_eq!(from, probe, "the same record, field for field");
        assert!((from_ns - probe_ns).abs() < 1_000_000, "{from_ns} vs {probe_ns}");
    }
    assert!(
        from.stderr.contains("collector: stopped: ") && from.stderr.contains(" records from the daemon's stream"),
        "{}",
        from.stderr
    );
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    // A subscription the daemon refuses says why.
    let refused = std::process::Command::new(collector_tests::collector::binary().unwrap())
        .args(["trace", "--from", "/nonexistent/stream.sock"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "collector: cannot connect to the stream at /nonexistent/stream.sock: No such file or directory (os error 2)\n"
    );
}
