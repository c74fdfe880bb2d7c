//! The collector installed from `deploy/` as a DaemonSet on the real cluster
//! of `cargo xtask cluster up`, judged as an operator would judge it:
//! it rolls out; a child OOM kill and a SIGKILL from another process become
//! Events that `kubectl` shows on the right pod and container; its
//! ServiceAccount can do exactly what the daemon needs; without CAP_PERFMON it
//! never becomes Ready and says why; and a rolling update loses no death.
//!
//! One test, in steps: every step needs the DaemonSet, and two of them change it.
#![expect(clippy::unwrap_used, reason = "test steps: a failure fails the test")]
#![expect(clippy::print_stderr, reason = "progress of a long end-to-end test")]

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use collector_tests::cluster::{Applied, Cluster, NODE_NAME, Namespace, assert_pod_event, main_pid, sample};
use serde_json::Value;

const SERVICE_ACCOUNT: &str = "system:serviceaccount:collector:collector";
/// How long an Event may take from the kernel to the API server: the daemon
/// answers within a second; the rest is a loaded 2-core CI machine.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
const ROLLOUT_TIMEOUT: &str = "--timeout=180s";
/// The image `deploy/` names, which `cargo xtask cluster up` imports.
const IMAGE: &str = "docker.io/local/collector:0.1.0";
/// What the daemon logs when the DaemonSet does not add CAP_PERFMON.
const NO_PERFMON: &str =
    "missing capability CAP_PERFMON: attaching tracepoints (perf_event_open) and reading kernel memory fail without it";
const ROLLOUT_IMAGE: &str = "docker.io/local/collector:rollout";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

#[test]
fn daemonset_from_deploy_reports_deaths_with_least_privilege() {
    let Some(cluster) = Cluster::find("daemonset_from_deploy_reports_deaths_with_least_privilege") else { return };
    eprintln!("step 1: kubectl apply -k deploy/");
    let installed = Applied::kustomization(&cluster, deploy_dir()).unwrap();
    rollout(&cluster).unwrap();

    let ns = cluster.namespace("e2e").unwrap();
    eprintln!("step 2: a child OOM kill in {}", ns.name);
    child_oom_kill_becomes_an_event(&cluster, &ns).unwrap();
    eprintln!("step 3: SIGKILL from another process");
    sigkill_names_its_sender(&cluster, &ns).unwrap();
    eprintln!("step 3b: the daemon's metrics, through the API server");
    metrics_count_what_happened(&cluster).unwrap();
    eprintln!("step 3c: a kernel problem on the Node: an Event and NPD's condition");
    kernel_problems_reach_the_node(&cluster).unwrap();
    eprintln!("step 4: the ServiceAccount's permissions");
    service_account_can_do_exactly_what_the_daemon_needs(&cluster).unwrap();
    eprintln!("step 5: without CAP_PERFMON");
    without_perfmon_it_is_never_ready_and_says_why(&cluster).unwrap();
    eprintln!("step 6: a rolling update");
    rolling_update_loses_no_death(&cluster, &ns).unwrap();
    drop(ns);
    drop(installed);
}

fn rollout(cluster: &Cluster) -> Result<()> {
    cluster.kubectl(&["-n", "collector", "rollout", "status", "ds/collector", ROLLOUT_TIMEOUT]).map(drop)
}

/// The pod manifest for a busybox pod with one container `app` running `script`.
fn pod(namespace: &str, name: &str, script: &str, memory_limit: Option<&str>) -> String {
    let resources = memory_limit.map_or(String::new(), |limit| {
        format!("\n    resources:\n      limits:\n        memory: {limit}\n      requests:\n        memory: {limit}")
    });
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: docker.io/local/busybox:1
    command: ["/bin/sh", "-c", {script}]{resources}
"#,
        script = serde_json::to_string(script).unwrap(),
    )
}

/// The words of `message` that are numbers replaced by `N`, so a message with
/// kernel pids and sizes compares exactly.
fn shape(message: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

fn child_oom_kill_becomes_an_event(cluster: &Cluster, ns: &Namespace) -> Result<()> {
    // dd's 64 MiB buffer cannot fit under 32Mi: the OOM killer takes dd, the
    // shell (the container's main process) lives on, and the kubelet says nothing.
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd-exited-$?; exec sleep 3600";
    let pod = cluster.run_pod(&pod(&ns.name, "oom", script, Some("32Mi")), &ns.name, "oom")?;
    let event = cluster.one_event(&ns.name, "oom", "OOMKilling", EVENT_TIMEOUT)?;
    assert_pod_event(&event, &pod, "app");
    let message = event["message"].as_str().context("no message")?;
    // The kubelet gives the pod cgroup the sum of its containers' limits, and the
    // sandbox's few pages count there too: the pod's 32Mi is usually hit first.
    let shapes = ["container", "pod"].map(|scope| {
        format!("Memory cgroup out of memory: killed process N (dd), a child of container app; {scope} limit NMi; anon-rss NkB")
    });
    assert!(shapes.contains(&shape(message)), "{message}");
    assert!(message.contains(" limit 32Mi;"), "{message}");
    // The main process lives on: the pod still runs, and dd died by SIGKILL.
    let logs = cluster.kubectl(&["-n", &ns.name, "logs", "oom"])?;
    assert!(logs.contains("dd-exited-137"), "{logs}");
    let phase = cluster.json(&["-n", &ns.name, "get", "pod", "oom"])?["status"]["phase"].clone();
    assert_eq!(phase, "Running");
    let describe = cluster.kubectl(&["-n", &ns.name, "describe", "pod", "oom"])?;
    assert!(
        describe.lines().any(|l| l.contains("Warning") && l.contains("OOMKilling") && l.contains("collector")),
        "kubectl describe pod shows no OOMKilling from collector:\n{describe}"
    );
    Ok(())
}

/// The host pid of the container's main process, from its cgroup in the v2 tree.
fn sigkill_names_its_sender(cluster: &Cluster, ns: &Namespace) -> Result<()> {
    let pod = cluster.run_pod(&pod(&ns.name, "victim", "exec sleep 3600", None), &ns.name, "victim")?;
    let target = main_pid(&pod)?;
    let kill = Command::new("kill").args(["-KILL", &target.to_string()]).spawn().context("running kill")?;
    let sender = kill.id();
    let status = kill.wait_with_output()?.status;
    assert!(status.success(), "kill -KILL {target}: {status}");
    let event = cluster.one_event(&ns.name, "victim", "ContainerExited", EVENT_TIMEOUT)?;
    assert_pod_event(&event, &pod, "app");
    assert_eq!(event["message"], format!("Container app exited with code 137: SIGKILL from pid {sender} (kill)"));
    Ok(())
}

fn metrics_count_what_happened(cluster: &Cluster) -> Result<()> {
    let metrics = cluster.daemon_metrics()?;
    // This pod saw exactly the test's one OOM kill and one SIGKILLed main process.
    assert_eq!(
        sample(&metrics, r#"collector_events_total{reason="OOMKilling",type="Warning"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, r#"collector_events_total{reason="ContainerExited",type="Warning"}"#),
        Some(1.0),
        "{metrics}"
    );
    // The pod watch on the real API server (list and watch pods on this node) works.
    assert_eq!(sample(&metrics, r#"collector_metadata_errors_total{source="kube"}"#), Some(0.0), "{metrics}");
    assert_eq!(sample(&metrics, r#"collector_metadata_errors_total{source="cri"}"#), Some(0.0), "{metrics}");
    for kind in ["exit", "oom_kill"] {
        let lost = sample(&metrics, &format!(r#"collector_kernel_records_lost_total{{type="{kind}"}}"#));
        assert_eq!(lost, Some(0.0), "{kind}: {metrics}");
    }
    Ok(())
}

fn kernel_problems_reach_the_node(cluster: &Cluster) -> Result<()> {
    // The DaemonSet writes NPD's conditions, False, under its own ServiceAccount; the kubelet's stay.
    let calm = cluster.node_condition("KernelDeadlock", EVENT_TIMEOUT, |c| c["status"] == "False")?;
    assert_eq!((&calm["reason"], &calm["message"]), (&"KernelHasNoDeadlock".into(), &"kernel has no deadlock".into()));
    cluster.node_condition("Ready", EVENT_TIMEOUT, |c| c["status"] == "True")?;
    // A read-only remount as ext4 logs it, on this node's kernel.
    let line = format!("EXT4-fs (loop{}): Remounting filesystem read-only", std::process::id());
    collector_tests::node::kmsg(3, &line)?;
    let readonly = cluster.node_condition("ReadonlyFilesystem", EVENT_TIMEOUT, |c| c["status"] == "True")?;
    assert_eq!((&readonly["reason"], &readonly["message"]), (&"FilesystemIsReadOnly".into(), &line.as_str().into()));
    let event = cluster.wait("the FilesystemIsReadOnly Event on the Node", EVENT_TIMEOUT, || {
        let events = cluster.events_for("default", "Node", NODE_NAME)?;
        Ok(events.into_iter().find(|e| e["reason"] == "FilesystemIsReadOnly" && e["message"] == line.as_str()))
    })?;
    assert_eq!((&event["type"], &event["source"]["component"]), (&"Warning".into(), &"collector".into()));
    let metrics = cluster.daemon_metrics()?;
    assert_eq!(sample(&metrics, r#"collector_node_condition_patches_total{reason="error"}"#), None, "{metrics}");
    assert_eq!(sample(&metrics, r#"collector_node_condition{condition="ReadonlyFilesystem"}"#), Some(1.0), "{metrics}");
    Ok(())
}

fn can_i(cluster: &Cluster, verb: &str, resource: &str) -> Result<bool> {
    // `nodes/status` would read as the node named `status`: a subresource is a flag.
    let (resource, subresource) = resource.split_once('/').map_or((resource, None), |(r, s)| (r, Some(s)));
    // `auth can-i` exits 1 for "no": read its answer, not its status.
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(["auth", "can-i", verb, resource, "--all-namespaces"])
        .args(subresource.map(|s| format!("--subresource={s}")))
        .args(["--as", SERVICE_ACCOUNT])
        .output()?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!("kubectl auth can-i {verb} {resource}: {other:?} {}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn service_account_can_do_exactly_what_the_daemon_needs(cluster: &Cluster) -> Result<()> {
    let allowed = [
        ("create", "events"),
        ("patch", "events"),
        ("list", "events"),
        ("get", "pods"),
        ("list", "pods"),
        ("watch", "pods"),
        ("get", "nodes"),
        ("patch", "nodes/status"),
    ];
    let denied = [
        ("get", "secrets"),
        ("list", "secrets"),
        ("delete", "pods"),
        ("create", "pods"),
        ("update", "pods"),
        ("patch", "nodes"),
        ("update", "nodes/status"),
        ("list", "nodes"),
        ("update", "events"),
        ("delete", "events"),
        ("get", "events"),
        ("watch", "events"),
        ("get", "configmaps"),
        ("create", "pods/exec"),
        ("*", "*"),
    ];
    for (verb, resource) in allowed {
        assert!(can_i(cluster, verb, resource)?, "{SERVICE_ACCOUNT} cannot {verb} {resource}");
    }
    for (verb, resource) in denied {
        assert!(!can_i(cluster, verb, resource)?, "{SERVICE_ACCOUNT} can {verb} {resource}");
    }
    Ok(())
}

fn without_perfmon_it_is_never_ready_and_says_why(cluster: &Cluster) -> Result<()> {
    let patch = r#"[{"op":"replace","path":"/spec/template/spec/containers/0/securityContext/capabilities/add","value":["BPF"]}]"#;
    cluster.kubectl(&["-n", "collector", "patch", "ds/collector", "--type=json", "-p", patch])?;
    let result = (|| -> Result<()> {
        // The new pod (no CAP_PERFMON) starts, fails its start-up checks and is never Ready.
        let name = cluster.wait("the pod without CAP_PERFMON", Duration::from_secs(120), || {
            let pods = cluster.json(&["-n", "collector", "get", "pods", "-l", "app.kubernetes.io/name=collector"])?;
            let pods = pods["items"].as_array().cloned().unwrap_or_default();
            Ok(pods.into_iter().find_map(|p| {
                let adds = &p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"];
                let restarted = p["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap_or(0) > 0;
                (adds == &serde_json::json!(["BPF"]) && restarted)
                    .then(|| p["metadata"]["name"].as_str().map(str::to_owned))?
            }))
        })?;
        let pod = cluster.json(&["-n", "collector", "get", "pod", &name])?;
        let status = &pod["status"]["containerStatuses"][0];
        assert_eq!(status["ready"], false, "{pod}");
        // FallbackToLogsOnError puts the log's tail in the status, where
        // `kubectl describe pod` shows it.
        let terminated = &status["lastState"]["terminated"];
        assert_eq!(terminated["exitCode"], 1, "{pod}");
        let message = terminated["message"].as_str().unwrap_or_default();
        assert!(message.contains(NO_PERFMON), "the termination message does not name CAP_PERFMON:\n{message}");
        Ok(())
    })();
    // Put it back whatever happened, and wait for it to be Ready again.
    let restore = r#"[{"op":"replace","path":"/spec/template/spec/containers/0/securityContext/capabilities/add","value":["BPF","PERFMON"]}]"#;
    cluster.kubectl(&["-n", "collector", "patch", "ds/collector", "--type=json", "-p", restore])?;
    rollout(cluster)?;
    result
}

fn rolling_update_loses_no_death(cluster: &Cluster, ns: &Namespace) -> Result<()> {
    // Pods that each exit 3 at their own second, spread over the rollout.
    const PODS: u64 = 12;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let start = now + 20;
    let mut manifests = String::new();
    for i in 0..PODS {
        let at = start + i;
        let script = format!("while [ $(date +%s) -lt {at} ]; do usleep 100000; done; exit 3");
        manifests.push_str(&pod(&ns.name, &format!("exit-{i}"), &script, None));
        manifests.push_str("---\n");
    }
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&manifests))?;
    cluster.kubectl(&["-n", &ns.name, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s"]).or_else(
        |err| {
            if SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() >= start { Ok(String::new()) } else { Err(err) }
        },
    )?;
    // The new image: the same image under another tag, so the pod template changes.
    let ctr = Command::new("ctr")
        .args(["--address", "/run/containerd/containerd.sock", "--namespace", "k8s.io", "image", "tag", "--force"])
        .args([IMAGE, ROLLOUT_IMAGE])
        .output()?;
    assert!(ctr.status.success(), "ctr image tag: {}", String::from_utf8_lossy(&ctr.stderr));
    let wait = start.saturating_sub(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs()).saturating_sub(2);
    std::thread::sleep(Duration::from_secs(wait));
    cluster.kubectl(&["-n", "collector", "set", "image", "ds/collector", &format!("collector={ROLLOUT_IMAGE}")])?;
    rollout(cluster)?;
    // The new daemon took over at B (the handover file on the node's state dir);
    // only a death within the old daemon's slack after B may be reported by both.
    let handover = std::fs::read_to_string("/var/lib/collector/handover").context("the handover file")?;
    let takeover_ns: i64 = handover.split(' ').next().context("empty handover file")?.parse()?;
    let mut duplicated = 0;
    for i in 0..PODS {
        let name = format!("exit-{i}");
        let events = cluster.wait(&format!("ContainerExited on {name}"), EVENT_TIMEOUT, || {
            let events = cluster.events_for(&ns.name, "Pod", &name)?;
            let exits: Vec<Value> = events.into_iter().filter(|e| e["reason"] == "ContainerExited").collect();
            Ok((!exits.is_empty()).then_some(exits))
        })?;
        for event in &events {
            assert_eq!(event["message"], "Container app exited with code 3", "{name}");
        }
        // The pod dies within 0.1 s after its second.
        let died_ns = i64::try_from(start + i)? * 1_000_000_000;
        let near_takeover = (died_ns - 1_000_000_000..died_ns + 1_000_000_000).contains(&takeover_ns);
        if !near_takeover {
            assert_eq!(events.len(), 1, "{name} reported {} times: {events:?}", events.len());
        }
        duplicated += events.len() - 1;
    }
    eprintln!("rolling update: {PODS} deaths, each reported; {duplicated} reported twice (at the takeover)");
    Ok(())
}
