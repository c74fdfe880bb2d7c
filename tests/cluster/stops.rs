//! Rollouts on the real cluster, with the collector installed from `deploy/`: the kubelet stops
//! the old pods' containers (CRI StopContainer with the pod's grace period, then
//! StopPodSandbox). A Deployment whose containers shut down on SIGTERM gives no Warning at all;
//! one whose containers ignore it gives exactly one `GracePeriodExceeded` per container, saying
//! the pod was being deleted (and, for a pod evicted through the Eviction API, why, in the API
//! server's words); the journal on the node keeps the pod's owner with each record. A container
//! the kubelet restarts because its liveness probe failed is stopped the same way, but that is a
//! failure: one `StoppedByProbe` Warning quotes the kubelet's reason.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use collector_tests::cluster::{Applied, Cluster};
use serde_json::{Value, json};

/// Rollouts, deletions and the collector's writes, on a loaded CI machine.
const TIMEOUT: Duration = Duration::from_secs(180);
/// How long to wait for Events that must not come.
const QUIET: Duration = Duration::from_secs(5);

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// A Deployment of one pod running `command` in each of `containers`.
fn deployment(namespace: &str, name: &str, grace: u32, containers: &[&str], command: &str) -> String {
    let containers: Vec<String> = containers
        .iter()
        .map(|c| {
            format!(
                r#"{{"name":"{c}","image":"docker.io/local/busybox:1","imagePullPolicy":"Never",
"command":["/bin/sh","-c",{}]}}"#,
                serde_json::to_string(command).unwrap_or_default()
            )
        })
        .collect();
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{name}","namespace":"{namespace}"}},
"spec":{{"replicas":1,"selector":{{"matchLabels":{{"app":"{name}"}}}},
"template":{{"metadata":{{"labels":{{"app":"{name}"}}}},
"spec":{{"terminationGracePeriodSeconds":{grace},"containers":[{}]}}}}}}}}"#,
        containers.join(",")
    )
}

/// The names of the pods of Deployment `name`.
fn pods(cluster: &Cluster, namespace: &str, name: &str) -> Vec<String> {
    let list = cluster.json(&["-n", namespace, "get", "pods", "-l", &format!("app={name}")]).unwrap_or_default();
    list["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The collector's Events in `namespace`.
fn collector_events(cluster: &Cluster, namespace: &str) -> Vec<Value> {
    let list = cluster.json(&["get", "events", "-n", namespace]).unwrap_or_default();
    list["items"]
        .as_array()
        .map(|items| items.iter().filter(|e| e["source"]["component"] == "collector").cloned().collect())
        .unwrap_or_default()
}

/// A pod whose container shuts down on SIGTERM and whose liveness probe always fails: the kubelet
/// stops and restarts the container a second or two after each start.
fn failing_liveness(namespace: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "liveness", "namespace": namespace},
           "spec": {"terminationGracePeriodSeconds": 30, "containers": [{
               "name": "app", "image": "docker.io/local/busybox:1", "imagePullPolicy": "Never",
               "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"],
               "livenessProbe": {"exec": {"command": ["/bin/sh", "-c", "echo not alive; exit 1"]},
                                 "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 1}}]}})
    .to_string()
}

#[test]
fn stops_give_no_warning_unless_a_container_outlives_its_grace_period_or_fails_its_probe() {
    let Some(cluster) =
        Cluster::find("stops_give_no_warning_unless_a_container_outlives_its_grace_period_or_fails_its_probe")
    else {
        return;
    };
    let _installed = Applied::kustomization(&cluster, deploy_dir()).unwrap();
    cluster.kubectl(&["-n", "collector", "rollout", "status", "ds/collector", "--timeout=180s"]).unwrap();
    let ns = cluster.namespace("e2e-stops").unwrap();
    // Shuts down on SIGTERM, as a well-behaved server does.
    let polite = deployment(&ns.name, "polite", 30, &["app"], "trap 'exit 0' TERM; sleep 1000 & wait");
    // `sleep` as PID 1 has no handler: SIGTERM does nothing and only the SIGKILL ends it.
    let stubborn = deployment(&ns.name, "stubborn", 2, &["app", "sidecar"], "exec sleep 1000");
    // In a namespace of its own: its Warnings are not the rollouts'.
    let probed = cluster.namespace("e2e-probe").unwrap();
    for manifest in [&polite, &stubborn, &failing_liveness(&probed.name)] {
        cluster.kubectl_stdin(&["apply", "-f", "-"], Some(manifest)).unwrap();
    }
    for name in ["polite", "stubborn"] {
        let deployment = format!("deployment/{name}");
        cluster.kubectl(&["-n", &ns.name, "rollout", "status", &deployment, "--timeout=180s"]).unwrap();
    }
    let old_polite = pods(&cluster, &ns.name, "polite");
    let old_stubborn = pods(&cluster, &ns.name, "stubborn");
    assert_eq!((old_polite.len(), old_stubborn.len()), (1, 1), "{old_polite:?} {old_stubborn:?}");

    cluster.kubectl(&["-n", &ns.name, "rollout", "restart", "deployment/polite", "deployment/stubborn"]).unwrap();
    for name in ["polite", "stubborn"] {
        let deployment = format!("deployment/{name}");
        cluster.kubectl(&["-n", &ns.name, "rollout", "status", &deployment, "--timeout=180s"]).unwrap();
    }
    // The old pods are gone once their containers are.
    cluster
        .wait("the old pods to be deleted", TIMEOUT, || {
            let left: Vec<String> = [("polite", &old_polite), ("stubborn", &old_stubborn)]
                .into_iter()
                .flat_map(|(name, old)| pods(&cluster, &ns.name, name).into_iter().filter(|p| old.contains(p)))
                .collect();
            Ok(left.is_empty().then_some(()))
        })
        .unwrap();
    let events = grace_period_events(&cluster, &ns.name, 2).unwrap();

    // Exactly the two containers that ignore SIGTERM, once each, and nothing else; the
    // ReplicaSet controller deleted their pod.
    let old = &old_stubborn[0];
    let deleted = "; the pod was being deleted";
    assert_eq!(seen(&events), [grace(old, "app", deleted), grace(old, "sidecar", deleted)], "{events:#?}");
    for event in &events {
        assert_eq!((&event["reason"], &event["count"]), (&Value::from("GracePeriodExceeded"), &Value::from(1)));
    }
    // The journal on the node keeps the records behind them: the pod's owner from the pod
    // watch, and why the pod was stopped.
    let replica_set = old.rsplit_once('-').map(|(set, _)| set.to_owned()).unwrap_or_default();
    let args = ["events", "--format", "json", "--namespace", &ns.name, "--reason", "GracePeriodExceeded"];
    let journaled = journal(&cluster, &args).unwrap();
    assert_eq!(journaled.len(), 2, "{journaled:#?}");
    for line in &journaled {
        let exit = &line["records"][0];
        assert_eq!(
            (&exit["type"], &exit["pod_name"], &exit["owner"], &exit["stop_request"]["pod_stop"]),
            (
                &json!("exit"),
                &json!(old),
                &json!({"kind": "ReplicaSet", "name": replica_set}),
                &json!({"deleted": true, "reason": null, "message": null})
            ),
            "{line:#}"
        );
    }

    // Evicted through the Eviction API, the new pod's Events say so, in the API server's words.
    let new = pods(&cluster, &ns.name, "stubborn");
    assert_eq!(new.len(), 1, "{new:?}");
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
                          "metadata": {"name": new[0], "namespace": ns.name}});
    let path = format!("/api/v1/namespaces/{}/pods/{}/eviction", ns.name, new[0]);
    cluster.kubectl_stdin(&["create", "--raw", &path, "-f", "-"], Some(&eviction.to_string())).unwrap();
    let events = grace_period_events(&cluster, &ns.name, 4).unwrap();
    let evicted = "; the pod was being deleted (EvictionByEvictionAPI: Eviction API: evicting)";
    let mut want = vec![
        grace(old, "app", deleted),
        grace(old, "sidecar", deleted),
        grace(&new[0], "app", evicted),
        grace(&new[0], "sidecar", evicted),
    ];
    want.sort();
    assert_eq!(seen(&events), want, "{events:#?}");

    // The kubelet restarted `liveness` meanwhile: its container exited 0 on SIGTERM, as asked,
    // but the Warning says why it was asked.
    let said = "Container app failed liveness probe, will be restarted";
    // The probe's output, as the kubelet's Unhealthy Event has it (its newline left out).
    let probe = "Liveness probe failed: not alive";
    // Once per restart (the kubelet backs off 10 s, 20 s, ...), each as the first.
    let events = cluster
        .wait("a StoppedByProbe Event on pod liveness", TIMEOUT, || {
            let events = cluster.events_for(&probed.name, "Pod", "liveness")?;
            let stopped: Vec<Value> = events.into_iter().filter(|e| e["reason"] == "StoppedByProbe").collect();
            Ok((!stopped.is_empty()).then_some(stopped))
        })
        .unwrap();
    for event in &events {
        let message = event["message"].as_str().unwrap_or_default();
        assert_eq!(
            (&event["type"], &event["involvedObject"]["fieldPath"], &event["source"]["component"]),
            (&json!("Warning"), &json!("spec.containers{app}"), &json!("collector")),
            "{event:#}"
        );
        assert!(message.starts_with("Container app stopped on request: exited with code 0, "), "{message}");
        let why = format!(" s after SIGTERM; the kubelet said \"{said}\" after \"{probe}\"");
        assert!(message.ends_with(&why), "{message}");
    }
    // Nothing else about that pod: a stop is no ContainerExited, and it ended within its grace.
    let others: Vec<Value> = cluster
        .events_for(&probed.name, "Pod", "liveness")
        .unwrap()
        .into_iter()
        .filter(|e| e["source"]["component"] == "collector" && e["reason"] != "StoppedByProbe")
        .collect();
    assert!(others.is_empty(), "{others:#?}");
    // The journal keeps the kubelet's words with the record.
    let args = ["events", "--format", "json", "--namespace", &probed.name, "--reason", "StoppedByProbe"];
    let journaled = journal(&cluster, &args).unwrap();
    assert!(!journaled.is_empty());
    for line in &journaled {
        let request = &line["records"][0]["stop_request"];
        assert_eq!(
            (&request["kubelet_message"], &request["probe_message"], &request["pod_stop"]),
            (&json!(said), &json!(probe), &Value::Null),
            "{line:#}"
        );
    }
}

/// The collector's Events in `namespace` once `count` GracePeriodExceeded are there, and
/// [`QUIET`] later, so that any extra one shows.
fn grace_period_events(cluster: &Cluster, namespace: &str, count: usize) -> anyhow::Result<Vec<Value>> {
    cluster.wait(&format!("{count} GracePeriodExceeded events"), TIMEOUT, || {
        let events = collector_events(cluster, namespace);
        Ok((events.iter().filter(|e| e["reason"] == "GracePeriodExceeded").count() >= count).then_some(()))
    })?;
    std::thread::sleep(QUIET);
    Ok(collector_events(cluster, namespace))
}

/// Each Event as (pod, fieldPath, type, message), sorted.
fn seen(events: &[Value]) -> Vec<(String, String, String, String)> {
    let mut seen: Vec<(String, String, String, String)> = events
        .iter()
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                text(&e["involvedObject"]["name"]),
                text(&e["involvedObject"]["fieldPath"]),
                text(&e["type"]),
                text(&e["message"]),
            )
        })
        .collect();
    seen.sort();
    seen
}

/// The GracePeriodExceeded Event of `container` of `pod`, its message ending in `why`.
fn grace(pod: &str, container: &str, why: &str) -> (String, String, String, String) {
    (
        pod.to_owned(),
        format!("spec.containers{{{container}}}"),
        "Warning".to_owned(),
        format!(
            "Container {container} did not exit within 2 s of SIGTERM and was killed (SIGKILL from the runtime); \
             it ignores SIGTERM{why}"
        ),
    )
}

/// What `collector ARGS` (`events --format json ...`) prints in the collector's pod, one JSON
/// value per line: the journal on the node.
fn journal(cluster: &Cluster, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut command = vec!["-n", "collector", "exec", "ds/collector", "--", "/usr/bin/collector"];
    command.extend(args);
    let text = cluster.kubectl(&command)?;
    text.lines().map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))).collect()
}
