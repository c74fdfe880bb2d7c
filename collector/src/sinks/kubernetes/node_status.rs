//! Writes the node conditions the collector owns onto the Node's status, as node-problem-detector
//! does: a strategic merge patch of `status.conditions`, merged by `type`, so the kubelet's own
//! conditions are untouched. Each change is written at once; unchanged conditions are written
//! again every [`HEARTBEAT`] (their `lastHeartbeatTime`), and a failed write is tried again with
//! backoff until it lands or a newer state replaces it. The daemon's RBAC needs `nodes/status`
//! patch and nothing wider.

use std::{path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;

use super::Backoff;
use crate::{
    chain,
    clock::Timestamp,
    health::conditions::{NodeCondition, status_patch},
    telemetry::{Metrics, limit::WarnLimit},
};

/// How often unchanged conditions are written again, as NPD's heartbeat does.
pub const HEARTBEAT: Duration = Duration::from_secs(5 * 60);

/// The file in the state directory that keeps the last conditions, for `collector events`.
pub const STATE_FILE: &str = "node-conditions.json";

/// Keeps the Node's conditions as `conditions` says, until `conditions` closes.
pub async fn run(
    client: Option<kube::Client>,
    node: String,
    mut conditions: watch::Receiver<Vec<NodeCondition>>,
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
) {
    let api = client.map(Api::<Node>::all);
    let warnings = WarnLimit::new();
    loop {
        let current = conditions.borrow_and_update().clone();
        save(&state_dir, &current).await;
        let backoff = Backoff::default();
        let mut retry = 0;
        if let Some(api) = &api {
            // Until it lands, or a newer state comes.
            loop {
                let patch = status_patch(&current, Timestamp::now());
                match api.patch_status(&node, &PatchParams::default(), &Patch::Strategic(patch)).await {
                    Ok(_) => {
                        metrics.node_condition_patch(true);
                        tracing::debug!("node {node}: conditions written");
                        break;
                    }
                    Err(err) => {
                        metrics.node_condition_patch(false);
                        if let Some(suppressed) = warnings.allow() {
                            tracing::warn!("cannot write node {node}'s conditions: {}{suppressed}", chain(&err));
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay(retry)) => retry += 1,
                    changed = conditions.changed() => {
                        if changed.is_err() { return; }
                        break;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT) => {}
            changed = conditions.changed() => if changed.is_err() { return },
        }
    }
}

/// Writes the conditions to the state file, whole (a temporary file renamed over it), off the
/// event loop; a failure is logged, and the next change tries again.
async fn save(state_dir: &std::path::Path, conditions: &[NodeCondition]) {
    let (path, json) = (state_dir.join(STATE_FILE), serde_json::to_vec_pretty(conditions));
    let Ok(json) = json else { return };
    let written = tokio::task::spawn_blocking(move || {
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, json).and_then(|()| std::fs::rename(&partial, &path)).map_err(|err| (path, err))
    })
    .await;
    if let Ok(Err((path, err))) = written {
        tracing::warn!("cannot save the node conditions to {}: {err}", path.display());
    }
}

/// The conditions the daemon last saved in `state_dir`; none if it never ran there.
pub fn load(state_dir: &std::path::Path) -> std::io::Result<Option<Vec<NodeCondition>>> {
    match std::fs::read(state_dir.join(STATE_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(std::io::Error::other),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}
