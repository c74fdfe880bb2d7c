//! Node health on the real cluster, with the collector installed from `deploy/` with its
//! defaults (the log at debug), as an operator reads it: `kubectl describe pod` says a container
//! stalled on memory (and nothing was OOM-killed), and that a process of a pod is blocked;
//! `kubectl describe node` shows NPD's `KernelDeadlock` for it; the DaemonSet's JSON log names
//! the crate and the record behind an Event.
#![expect(clippy::print_stderr, reason = "progress of a long end-to-end test")]

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use collector_tests::cluster::{Applied, Cluster, Namespace, assert_pod_event, main_pid, sample};
use collector_tests::node::{LoopFs, Sysctl};
use serde_json::{Value, json};

/// From the kernel to the API server: a 10 s pressure window, then a loaded 2-core CI machine.
const TIMEOUT: Duration = Duration::from_secs(90);
const IMAGE: &str = "docker.io/local/busybox:1";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

#[test]
fn kubectl_describe_shows_a_pod_stalled_on_memory_and_a_pods_hung_process_with_kernel_deadlock() {
    let Some(cluster) =
        Cluster::find("kubectl_describe_shows_a_pod_stalled_on_memory_and_a_pods_hung_process_with_kernel_deadlock")
    else {
        return;
    };
    let _installed = Applied::kustomization(&cluster, deploy_dir()).unwrap();
    // As an operator asks "what did it do with that record": the DaemonSet's log at debug.
    cluster.kubectl(&["-n", "collector", "set", "env", "ds/collector", "COLLECTOR_LOG=debug"]).unwrap();
    cluster.kubectl(&["-n", "collector", "rollout", "status", "ds/collector", "--timeout=180s"]).unwrap();
    let ns = cluster.namespace("e2e-health").unwrap();
    eprintln!("step 1: a container thrashing its memory limit, in {}", ns.name);
    memory_pressure_comes_before_any_oom_kill(&cluster, &ns).unwrap();
    eprintln!("step 2: a process hung on a frozen filesystem");
    a_hung_process_is_named_on_its_pod_and_the_node(&cluster, &ns).unwrap();
}

/// The `kubectl describe` lines (Events and conditions) that mention `word`.
fn described(cluster: &Cluster, what: &[&str], word: &str) -> Result<Vec<String>> {
    let text = cluster.kubectl(&[&["describe"], what].concat())?;
    Ok(text.lines().filter(|l| l.contains(word)).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect())
}

fn memory_pressure_comes_before_any_oom_kill(cluster: &Cluster, ns: &Namespace) -> Result<()> {
    // 52 MiB it cannot give back (tmpfs, no swap) and a 24 MiB file it rereads for 40 s: a
    // working set over its 64Mi limit, so it refaults its own page cache. Beside it, a calm one.
    let script = "dd if=/dev/zero of=/dev/shm/hog bs=1M count=52 2>/dev/null; \
                  dd if=/dev/urandom of=/file bs=1M count=24 2>/dev/null; \
                  end=$(($(date +%s)+40)); while [ $(date +%s) -lt $end ]; do cat /file > /dev/null; done; \
                  rm /dev/shm/hog; echo calm; exec sleep 3600";
    let limit = json!({"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}});
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "cache", "namespace": ns.name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [
            {"name": "thrash", "image": IMAGE, "command": ["/bin/sh", "-c", script], "resources": limit},
            {"name": "calm", "image": IMAGE, "command": ["/bin/sh", "-c", "exec sleep 3600"], "resources": limit},
        ]},
    });
    let pod = cluster.run_pod(&manifest.to_string(), &ns.name, "cache")?;
    let event = cluster.one_event(&ns.name, "cache", "MemoryPressure", TIMEOUT)?;
    assert_pod_event(&event, &pod, "thrash");
    // The deploy/ defaults: 5 % of a 10 s window.
    let message = event["message"].as_str().context("no message")?;
    eprintln!("  {message}");
    let rest = message.strip_prefix("Container thrash stalled on memory ").context(message.to_owned())?;
    let (percent, rest) = rest.split_once("% of the last ").context(message.to_owned())?;
    let percent: f64 = percent.parse().context(message.to_owned())?;
    assert!(percent >= 5.0, "{message}");
    assert!(rest.starts_with("10 s; limit 64Mi, usage "), "{message}");
    let lines = described(cluster, &["-n", &ns.name, "pod", "cache"], "MemoryPressure")?;
    assert!(lines.iter().any(|l| l.starts_with("Warning MemoryPressure") && l.contains(message)), "{lines:?}");
    // Its log says the same in JSON, with the crate and the record (kind, pod, container).
    let log = cluster.kubectl(&["-n", "collector", "logs", "ds/collector"])?;
    let line = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["reason"] == "MemoryPressure")
        .with_context(|| format!("no MemoryPressure line in the collector's log:\n{log}"))?;
    assert_eq!(
        (&line["level"], &line["target"], &line["message"], &line["count"]),
        (&"DEBUG".into(), &"collector::daemon::engine".into(), &format!("event: {message}").into(), &1.into()),
        "{line}"
    );
    let span = &line["span"];
    assert_eq!(
        (&span["name"], &span["kind"], &span["namespace"], &span["pod"], &span["container"]),
        (&"events".into(), &"Pressure".into(), &ns.name.as_str().into(), &"cache".into(), &"thrash".into()),
        "{line}"
    );

    // It ends without an OOM kill; the episode closes, and the calm container got nothing.
    cluster.wait("the thrash to stop", TIMEOUT, || {
        Ok(cluster.kubectl(&["-n", &ns.name, "logs", "cache", "-c", "thrash"])?.contains("calm").then_some(()))
    })?;
    cluster.wait("the pressure episode to end", TIMEOUT, || {
        let metrics = cluster.daemon_metrics()?;
        Ok((sample(&metrics, r#"collector_pressure_stalled_containers{resource="memory"}"#) == Some(0.0))
            .then_some(metrics))
    })?;
    let metrics = cluster.daemon_metrics()?;
    assert_eq!(sample(&metrics, r#"collector_pressure_episodes_total{resource="memory"}"#), Some(1.0), "{metrics}");
    let events = cluster.events_for(&ns.name, "Pod", "cache")?;
    let ours: Vec<(&Value, &Value)> = events
        .iter()
        .filter(|e| e["source"]["component"] == "collector")
        .map(|e| (&e["reason"], &e["involvedObject"]["fieldPath"]))
        .collect();
    assert_eq!(ours, [(&"MemoryPressure".into(), &"spec.containers{thrash}".into())], "{events:#?}");
    Ok(())
}

fn a_hung_process_is_named_on_its_pod_and_the_node(cluster: &Cluster, ns: &Namespace) -> Result<()> {
    let _timeout = Sysctl::set("kernel.hung_task_timeout_secs", "2")?;
    let mut volume = LoopFs::new("cluster-hung", 16)?;
    volume.freeze()?;
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db", "namespace": ns.name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "writer", "image": IMAGE,
                "command": ["/bin/sh", "-c", "echo row > /data/table; exec sleep 3600"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "hostPath": {"path": volume.path(), "type": "Directory"}}]},
    });
    let pod = cluster.run_pod(&manifest.to_string(), &ns.name, "db")?;
    let pid = main_pid(&pod)?;
    let event = cluster.one_event(&ns.name, "db", "TaskHung", TIMEOUT)?;
    assert_pod_event(&event, &pod, "writer");
    eprintln!("  {}", event["message"]);
    assert_eq!(event["message"], format!("Process {pid} (sh) of container writer blocked for more than 2 s"));
    let lines = described(cluster, &["-n", &ns.name, "pod", "db"], "TaskHung")?;
    assert!(
        lines.iter().any(|l| l.starts_with("Warning TaskHung") && l.contains("blocked for more than 2 s")),
        "{lines:?}"
    );

    let message = format!("Process {pid} (sh) of container writer of pod {}/db blocked for more than 2 s", ns.name);
    let deadlock = cluster.node_condition("KernelDeadlock", TIMEOUT, |c| c["status"] == "True")?;
    assert_eq!((&deadlock["reason"], &deadlock["message"]), (&"TaskHung".into(), &message.as_str().into()));
    let lines = described(cluster, &["node", collector_tests::cluster::NODE_NAME], "KernelDeadlock")?;
    assert!(lines.iter().any(|l| l.starts_with("KernelDeadlock True") && l.ends_with(&message)), "{lines:?}");

    // Released: the writer finishes; the pod goes before its filesystem is unmounted.
    volume.thaw()?;
    cluster.kubectl(&["-n", &ns.name, "delete", "pod", "db", "--wait=true", "--timeout=60s"])?;
    Ok(())
}
