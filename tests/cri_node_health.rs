//! Node health in containers, caused for real through CRI: a task hung on a frozen filesystem,
//! a corrupt ext4 read from a container, a container thrashing its memory limit, one with more
//! busy threads than CPUs, one waiting on direct reads from the disk. Each gives the Events
//! `kubectl describe` would show and the node conditions NPD would set. Host only: they need
//! containerd. (`node_health.rs` causes the same kernel faults outside containers, also on 6.1.)
#![expect(clippy::unwrap_used, clippy::panic, reason = "the helpers are test steps: a failure fails the test")]

use std::time::{Duration, Instant};

use collector_tests::containerd::Containerd;
use collector_tests::daemon::{Daemon, StateDir, sample};
use collector_tests::kubelet::{Container, ContainerSpec, PodSpec};
use collector_tests::node::{LoopFs, Sysctl, ext4_lookup_error, node_events, wait_condition};
use collector_tests::privileged;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn a_task_hung_on_a_frozen_filesystem_is_named_on_its_pod_and_sets_kernel_deadlock_until_released() {
    if !privileged("a_task_hung_on_a_frozen_filesystem_is_named_on_its_pod_and_sets_kernel_deadlock_until_released") {
        return;
    }
    let _timeout = Sysctl::set("kernel.hung_task_timeout_secs", "2").unwrap();
    let mut volume = LoopFs::new("hung", 16).unwrap();
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("hung").unwrap();
    let socket = containerd.address().display().to_string();
    let daemon = Daemon::start(&state, &["stdout", "journal"], &socket, &["--condition-clear-after", "3s"]).unwrap();
    let spec = PodSpec { name: "db-0".to_owned(), namespace: "shop".to_owned(), ..PodSpec::unique("db") };
    let pod = containerd.cri().run_pod(spec).unwrap();
    volume.freeze().unwrap();
    let container = ContainerSpec {
        mounts: vec![(volume.path().to_owned(), "/data".to_owned())],
        ..ContainerSpec::shell("writer", "echo row > /data/table; sleep 600")
    };
    let writer = containerd.cri().create_and_start(&pod, container).unwrap();
    let pid = containerd.cri().container_pid(&writer).unwrap();

    let expected = format!("Process {pid} (sh) of container writer blocked for more than 2 s");
    let events = daemon
        .wait_for(TIMEOUT, |events| {
            events.iter().any(|e| e["reason"] == "TaskHung" && e["involvedObject"]["name"] == "db-0")
        })
        .unwrap();
    let hung: Vec<&Value> = events.iter().filter(|e| e["reason"] == "TaskHung").collect();
    let event = hung[0];
    assert_eq!(event["message"], expected.as_str(), "{hung:#?}");
    assert_eq!(event["type"], "Warning");
    assert_eq!(
        (&event["involvedObject"]["kind"], &event["involvedObject"]["namespace"]),
        (&"Pod".into(), &"shop".into())
    );
    assert_eq!(event["involvedObject"]["fieldPath"], "spec.containers{writer}");
    // The kernel's own "blocked for more than" line gives no second, pod-less event.
    assert!(node_events(&events, "TaskHung").is_empty(), "{hung:#?}");

    let deadlock = wait_condition(&state, "KernelDeadlock", "True", TIMEOUT).unwrap();
    assert_eq!(deadlock["reason"], "TaskHung");
    assert_eq!(
        deadlock["message"],
        format!("Process {pid} (sh) of container writer of pod shop/db-0 blocked for more than 2 s").as_str()
    );

    // Released: the detector stops reporting it, and the condition clears 3 s after the last report.
    volume.thaw().unwrap();
    let released = Instant::now();
    wait_condition(&state, "KernelDeadlock", "False", TIMEOUT).unwrap();
    assert!(released.elapsed() >= Duration::from_secs(2), "cleared before the clear time: {:?}", released.elapsed());
    let metrics = daemon.metrics().unwrap();
    assert_eq!(sample(&metrics, "collector_node_condition", "condition=\"KernelDeadlock\""), 0, "{metrics}");
}

/// The share of `Container X stalled on R <share>% of the last <rest>`, and the rest; panics,
/// naming the message, if it says anything else.
fn stalled_share<'a>(message: &'a str, prefix: &str) -> (f64, &'a str) {
    let rest = message.strip_prefix(prefix).unwrap_or_else(|| panic!("{message}"));
    let (percent, rest) = rest.split_once("% of the last ").unwrap_or_else(|| panic!("{message}"));
    (percent.parse().unwrap_or_else(|_| panic!("{message}")), rest)
}

/// The window a stall was measured over, in seconds, and what follows it. The share is measured
/// from the newest reading at least the window (4 s) old, read once a second, so it spans the
/// window and up to one reading more (5 s once, when a reading came late on a loaded machine).
fn measured_window<'a>(message: &'a str, rest: &'a str) -> (f64, &'a str) {
    let (seconds, rest) = rest.split_once(" s").unwrap_or_else(|| panic!("{message}"));
    (seconds.parse().unwrap_or_else(|_| panic!("{message}")), rest)
}

/// Waits for a `reason` Event on pod `pod` and returns it; panics unless it is one Warning.
fn one_warning(daemon: &Daemon, reason: &str, pod: &str) -> Value {
    let ours = |e: &Value| e["reason"] == reason && e["involvedObject"]["name"] == pod;
    let events = daemon.wait_for(TIMEOUT, |events| events.iter().any(ours)).unwrap();
    let matching: Vec<&Value> = events.iter().filter(|e| ours(e)).collect();
    assert_eq!(matching.len(), 1, "{matching:#?}");
    assert_eq!(matching[0]["type"], "Warning");
    matching[0].clone()
}

/// The reason and fieldPath of every `...Pressure` Event on pod `pod`.
fn pressure_events<'a>(events: &'a [Value], pod: &str) -> Vec<(&'a str, &'a str)> {
    events
        .iter()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .filter(|e| e["reason"].as_str().is_some_and(|reason| reason.ends_with("Pressure")))
        .map(|e| (e["reason"].as_str().unwrap(), e["involvedObject"]["fieldPath"].as_str().unwrap()))
        .collect()
}

/// Waits up to a minute for `container`'s script to print `calm`: its load has stopped.
fn wait_until_calm(containerd: &Containerd, container: &Container) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !containerd.cri().container_log(container).unwrap().contains("calm") {
        assert!(Instant::now() < deadline, "{} did not calm down", container.name);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_container_thrashing_its_memory_limit_gets_memory_pressure_before_any_oom_kill_and_a_calm_one_nothing() {
    if !privileged(
        "a_container_thrashing_its_memory_limit_gets_memory_pressure_before_any_oom_kill_and_a_calm_one_nothing",
    ) {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("pressure").unwrap();
    let socket = containerd.address().display().to_string();
    let flags = ["--pressure-threshold", "3%", "--pressure-window", "4s"];
    let daemon = Daemon::start(&state, &["stdout", "journal"], &socket, &flags).unwrap();
    let spec = PodSpec { name: "cache-0".to_owned(), namespace: "shop".to_owned(), ..PodSpec::unique("cache") };
    let pod = containerd.cri().run_pod(spec).unwrap();
    // 48 MiB it cannot give back (tmpfs, no swap) and a 24 MiB file it rereads: a working set over
    // its 64 MiB limit, so it refaults its own page cache; measured at about 9% stalled here.
    let script = "dd if=/dev/zero of=/dev/shm/hog bs=1M count=48 2>/dev/null; \
                  dd if=/dev/urandom of=/file bs=1M count=24 2>/dev/null; \
                  end=$(($(date +%s)+20)); while [ $(date +%s) -lt $end ]; do cat /file > /dev/null; done; \
                  rm /dev/shm/hog; echo calm; sleep 600";
    let thrash = ContainerSpec { memory_limit_bytes: Some(64 << 20), ..ContainerSpec::shell("thrash", script) };
    let calm = ContainerSpec { memory_limit_bytes: Some(64 << 20), ..ContainerSpec::shell("calm", "sleep 600") };
    let thrash = containerd.cri().create_and_start(&pod, thrash).unwrap();
    containerd.cri().create_and_start(&pod, calm).unwrap();

    let events = daemon.wait_for(TIMEOUT, |events| events.iter().any(|e| e["reason"] == "MemoryPressure")).unwrap();
    let pressure: Vec<&Value> = events.iter().filter(|e| e["reason"] == "MemoryPressure").collect();
    assert_eq!(pressure.len(), 1, "{pressure:#?}");
    let event = pressure[0];
    assert_eq!(event["involvedObject"]["fieldPath"], "spec.containers{thrash}");
    let message = event["message"].as_str().unwrap();
    let (percent, rest) = stalled_share(message, "Container thrash stalled on memory ");
    assert!(percent >= 3.0, "{message}");
    let (window, rest) = measured_window(message, rest);
    assert!((4.0..6.0).contains(&window), "{message}");
    assert!(rest.starts_with("; limit 64Mi, usage "), "{message}");
    assert!(!events.iter().any(|e| e["reason"] == "OOMKilling"), "pressure came with an OOM kill: {events:#?}");

    // The thrash ends: the episode ends (a record, no event), and nothing came for the calm one.
    wait_until_calm(&containerd, &thrash);
    daemon.wait_metric("collector_pressure_stalled_containers", "resource=\"memory\"", 0, TIMEOUT).unwrap();
    let metrics = daemon.metrics().unwrap();
    assert_eq!(sample(&metrics, "collector_pressure_episodes_total", "resource=\"memory\""), 1, "{metrics}");
    let stopped = daemon.stop().unwrap();
    let pressure = stopped.events.iter().filter(|e| e["reason"] == "MemoryPressure").count();
    assert_eq!(pressure, 1, "{:#?}", stopped.events);
}

#[test]
fn a_container_with_more_busy_threads_than_cpus_gets_cpu_pressure_when_asked_and_an_idle_one_nothing() {
    if !privileged("a_container_with_more_busy_threads_than_cpus_gets_cpu_pressure_when_asked_and_an_idle_one_nothing")
    {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("cpu-pressure").unwrap();
    let socket = containerd.address().display().to_string();
    let flags = ["--pressure-resources", "memory,cpu", "--pressure-threshold", "20%", "--pressure-window", "4s"];
    let daemon = Daemon::start(&state, &["stdout", "journal"], &socket, &flags).unwrap();
    let spec = PodSpec { name: "batch-0".to_owned(), namespace: "jobs".to_owned(), ..PodSpec::unique("batch") };
    let pod = containerd.cri().run_pod(spec).unwrap();
    // Twice as many spinning shells as CPUs: some of them always wait for one, for 15 s.
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    let spinners = "while :; do :; done & pids=\"$pids $!\"; ".repeat(2 * cpus);
    let script = format!("pids=; {spinners}sleep 15; kill $pids; echo calm; sleep 600");
    let spin = containerd.cri().create_and_start(&pod, ContainerSpec::shell("spin", &script)).unwrap();
    containerd.cri().create_and_start(&pod, ContainerSpec::shell("idle", "sleep 600")).unwrap();

    let event = one_warning(&daemon, "CPUPressure", "batch-0");
    assert_eq!(event["involvedObject"]["fieldPath"], "spec.containers{spin}");
    let message = event["message"].as_str().unwrap();
    let (percent, rest) = stalled_share(message, "Container spin stalled on CPU ");
    let (window, rest) = measured_window(message, rest);
    assert!(percent >= 20.0, "{message}");
    assert!((4.0..6.0).contains(&window), "{message}");
    // No CPU limit in the spec, so none in the message.
    assert_eq!(rest, "", "{message}");

    // The spinning stops: the episode ends, and the idle container never had one.
    wait_until_calm(&containerd, &spin);
    daemon.wait_metric("collector_pressure_stalled_containers", "resource=\"cpu\"", 0, TIMEOUT).unwrap();
    let stopped = daemon.stop().unwrap();
    assert_eq!(pressure_events(&stopped.events, "batch-0"), [("CPUPressure", "spec.containers{spin}")]);
}

#[test]
fn a_corrupt_filesystem_read_from_a_container_gives_filesystem_error_on_node_and_pod_and_readonly_filesystem() {
    if !privileged(
        "a_corrupt_filesystem_read_from_a_container_gives_filesystem_error_on_node_and_pod_and_readonly_filesystem",
    ) {
        return;
    }
    let volume = LoopFs::corrupted("fserror").unwrap();
    let device = volume.device().unwrap();
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("fserror").unwrap();
    let socket = containerd.address().display().to_string();
    let daemon = Daemon::start(&state, &["stdout", "journal"], &socket, &[]).unwrap();
    let spec = PodSpec { name: "files-0".to_owned(), namespace: "shop".to_owned(), ..PodSpec::unique("files") };
    let pod = containerd.cri().run_pod(spec).unwrap();
    let container = ContainerSpec {
        mounts: vec![(volume.path().to_owned(), "/data".to_owned())],
        ..ContainerSpec::shell("reader", "ls -l /data/d; sleep 600")
    };
    containerd.cri().create_and_start(&pod, container).unwrap();

    let events = daemon
        .wait_for(TIMEOUT, |events| {
            let errors = events.iter().filter(|e| e["reason"] == "FilesystemError").count();
            errors >= 2
                && node_events(events, "FilesystemIsReadOnly")
                    .iter()
                    .any(|e| e["message"].as_str().is_some_and(|m| m.contains(&format!("EXT4-fs ({device})"))))
        })
        .unwrap();
    let errors: Vec<&Value> = events.iter().filter(|e| e["reason"] == "FilesystemError").collect();
    let message = |kind: &str| {
        errors.iter().find(|e| e["involvedObject"]["kind"] == kind).map(|e| e["message"].as_str().unwrap().to_owned())
    };
    let node = message("Node").unwrap_or_else(|| panic!("{errors:#?}"));
    let (_, process) = ext4_lookup_error(&node, &device).unwrap_or_else(|| panic!("{node}"));
    assert!(process.ends_with(" (ls)"), "{node}");
    assert_eq!(message("Pod").unwrap_or_else(|| panic!("{errors:#?}")), format!("{node} of container reader"));
    let pod_event = errors.iter().find(|e| e["involvedObject"]["kind"] == "Pod").unwrap();
    assert_eq!(pod_event["involvedObject"]["name"], "files-0");
    // The kernel's own "EXT4-fs error" line adds no event: the probe's has the pod.
    assert!(node_events(&events, "Ext4Error").is_empty(), "{events:#?}");
    let readonly = wait_condition(&state, "ReadonlyFilesystem", "True", TIMEOUT).unwrap();
    assert_eq!(readonly["reason"], "FilesystemIsReadOnly");
    assert_eq!(readonly["message"], format!("EXT4-fs ({device}): Remounting filesystem read-only").as_str());
}

#[test]
fn a_container_waiting_on_direct_reads_gets_io_pressure_when_asked_and_an_idle_one_nothing() {
    if !privileged("a_container_waiting_on_direct_reads_gets_io_pressure_when_asked_and_an_idle_one_nothing") {
        return;
    }
    // A file on the host's disk: O_DIRECT reads bypass the page cache, so each one waits for the
    // device (measured here at about 20 % of the time stalled).
    let data = StateDir::new("io-data").unwrap();
    std::fs::write(data.path().join("file"), vec![7u8; 32 << 20]).unwrap();
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("io-pressure").unwrap();
    let socket = containerd.address().display().to_string();
    let flags = ["--pressure-resources", "memory,io", "--pressure-threshold", "5%", "--pressure-window", "4s"];
    let daemon = Daemon::start(&state, &["stdout", "journal"], &socket, &flags).unwrap();
    let spec = PodSpec { name: "scan-0".to_owned(), namespace: "jobs".to_owned(), ..PodSpec::unique("scan") };
    let pod = containerd.cri().run_pod(spec).unwrap();
    let script = "end=$(($(date +%s)+15)); while [ $(date +%s) -lt $end ]; do \
                  dd if=/data/file of=/dev/null bs=4k iflag=direct 2>/dev/null; done; echo calm; sleep 600";
    let reader = ContainerSpec {
        mounts: vec![(data.path().to_owned(), "/data".to_owned())],
        ..ContainerSpec::shell("reader", script)
    };
    let reader = containerd.cri().create_and_start(&pod, reader).unwrap();
    containerd.cri().create_and_start(&pod, ContainerSpec::shell("idle", "sleep 600")).unwrap();

    let event = one_warning(&daemon, "IOPressure", "scan-0");
    assert_eq!(event["involvedObject"]["fieldPath"], "spec.containers{reader}");
    let message = event["message"].as_str().unwrap();
    let (percent, rest) = stalled_share(message, "Container reader stalled on I/O ");
    assert!(percent >= 5.0, "{message}");
    let (window, rest) = measured_window(message, rest);
    assert!((4.0..6.0).contains(&window), "{message}");
    assert_eq!(rest, "", "{message}");

    // The reads stop: the episode ends, and the idle container never had one.
    wait_until_calm(&containerd, &reader);
    daemon.wait_metric("collector_pressure_stalled_containers", "resource=\"io\"", 0, TIMEOUT).unwrap();
    let stopped = daemon.stop().unwrap();
    assert_eq!(pressure_events(&stopped.events, "scan-0"), [("IOPressure", "spec.containers{reader}")]);
}
