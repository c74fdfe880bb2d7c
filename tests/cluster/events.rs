//! The Event semantics the API-server double used to stand in for, against
//! the real API server of `cargo xtask cluster up`: a repeat of the same death
//! is a PATCH of the same Event (count 2, firstTimestamp kept), a PATCH
//! answered 404 because the Event was deleted is POSTed again whole, and
//! `collector doctor` names every verb that an identity without the
//! collector's ClusterRole is denied (one SelfSubjectAccessReview each).

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use collector_tests::{
    cluster::{Applied, Cluster},
    collector::binary,
};
use serde_json::Value;

/// A crash-looping container exits again after the kubelet's back-off (10 s, then 20 s).
const REPEAT_TIMEOUT: Duration = Duration::from_secs(120);

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The pod's ContainerExited Event once its `count` reaches `count`.
fn exited_event(cluster: &Cluster, namespace: &str, count: u64) -> Result<Value> {
    cluster.wait(&format!("ContainerExited with count {count}"), REPEAT_TIMEOUT, || {
        let events = cluster.events_for(namespace, "Pod", "repeat")?;
        let exits: Vec<Value> = events.into_iter().filter(|e| e["reason"] == "ContainerExited").collect();
        anyhow::ensure!(exits.len() <= 1, "one death, said again, must stay one Event: {exits:?}");
        Ok(exits.into_iter().find(|e| e["count"].as_u64() >= Some(count)))
    })
}

#[test]
fn a_repeat_patches_the_event_and_a_deleted_event_is_posted_again() {
    let Some(cluster) = Cluster::find("a_repeat_patches_the_event_and_a_deleted_event_is_posted_again") else {
        return;
    };
    let _installed = Applied::kustomization(&cluster, deploy_dir()).unwrap();
    cluster.kubectl(&["-n", "collector", "rollout", "status", "ds/collector", "--timeout=180s"]).unwrap();
    let ns = cluster.namespace("e2e-events").unwrap();
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"repeat","namespace":"{}"}},
"spec":{{"restartPolicy":"OnFailure","terminationGracePeriodSeconds":1,
"containers":[{{"name":"app","image":"docker.io/local/busybox:1","command":["/bin/sh","-c","sleep 1; exit 3"]}}]}}}}"#,
        ns.name
    );
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&pod)).unwrap();

    let first = exited_event(&cluster, &ns.name, 1).unwrap();
    assert_eq!(first["message"], "Container app exited with code 3");
    assert_eq!(first["count"], 1);
    let name = first["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("repeat."), "client-go names events <object>.<hex nanos>: {name}");

    // The restarted container dies the same way: the same Event, patched.
    let second = exited_event(&cluster, &ns.name, 2).unwrap();
    assert_eq!(second["metadata"]["name"], name.as_str());
    assert_eq!(second["count"], 2);
    assert_eq!(second["firstTimestamp"], first["firstTimestamp"]);
    assert!(second["lastTimestamp"].as_str() >= first["lastTimestamp"].as_str(), "{second}");

    // Deleted (as the API server's TTL would), the next repeat's PATCH finds
    // nothing and the whole Event is POSTed again, count and all.
    cluster.kubectl(&["-n", &ns.name, "delete", "event", &name]).unwrap();
    let third = exited_event(&cluster, &ns.name, 3).unwrap();
    assert_eq!(third["metadata"]["name"], name.as_str());
    assert_eq!(third["count"], 3);
    assert_eq!(third["firstTimestamp"], first["firstTimestamp"]);
    assert_eq!(third["message"], "Container app exited with code 3");
}

/// A kubeconfig for the service account `name`: the cluster's server and CA, its token.
fn service_account_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    dir: &std::path::Path,
) -> Result<PathBuf> {
    cluster.kubectl(&["-n", namespace, "create", "serviceaccount", name])?;
    let token = cluster.kubectl(&["-n", namespace, "create", "token", name])?;
    let server = cluster.kubectl(&["config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"])?;
    let ca = cluster.kubectl(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority}",
    ])?;
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: u\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
         current-context: c\n",
        token.trim()
    );
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, config).context("writing the kubeconfig")?;
    Ok(path)
}

#[test]
fn doctor_names_every_verb_an_identity_without_the_cluster_role_is_denied() {
    let Some(cluster) = Cluster::find("doctor_names_every_verb_an_identity_without_the_cluster_role_is_denied") else {
        return;
    };
    let ns = cluster.namespace("e2e-rbac").unwrap();
    let dir = collector_tests::daemon::StateDir::new("rbac").unwrap();
    let kubeconfig = service_account_kubeconfig(&cluster, &ns.name, "nobody", dir.path()).unwrap();
    let output = Command::new(binary().unwrap())
        .args(["doctor", "--cri-socket", "none", "--format", "json", "--kubeconfig"])
        .arg(&kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("COLLECTOR_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let check = |name: &str| report["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap();
    assert_eq!(check("api")["status"], "ok", "{report}");
    let rbac = check("rbac");
    assert_eq!(rbac["status"], "fail", "{report}");
    assert_eq!(
        rbac["detail"],
        "denied: create events, patch events, list events, get pods, list pods, watch pods, get nodes, \
         patch nodes/status"
    );
    assert_eq!(
        rbac["fix"],
        "grant create, patch, list on events; get, list, watch on pods; get on nodes; patch on nodes/status \
         (apiGroups [\"\"]) in the ClusterRole bound to the collector's service account (deploy/)"
    );
}
