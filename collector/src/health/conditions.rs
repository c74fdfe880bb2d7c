//! Node conditions, as node-problem-detector sets them, from what the probes report: each
//! condition NPD's kernel monitor owns (`KernelDeadlock`, `ReadonlyFilesystem`, ...) and
//! `FrequentContainerOOM`. They start False (NPD's reason and message), turn True on a report,
//! and turn False again `clear_after` after the last one (a hung task that was released, a
//! filesystem that was repaired and remounted: the node cannot tell which, so time does), or, for
//! `FrequentContainerOOM`, when the window holds few enough OOM kills again.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::kmsg::CONDITIONS;
use crate::{clock::Timestamp, record::Record};

/// The condition of too many OOM kills on the node.
pub const FREQUENT_CONTAINER_OOM: &str = "FrequentContainerOOM";
/// The condition of a hung task (NPD's, which its `DockerHung` rule also sets).
pub const KERNEL_DEADLOCK: &str = "KernelDeadlock";

/// When conditions change on their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConditionConfig {
    /// A condition a report set is cleared this long after the last report.
    pub clear_after: Duration,
    /// `FrequentContainerOOM` is True at more than this many OOM kills within `oom_window`.
    pub oom_kills: u32,
    /// See `oom_kills`.
    pub oom_window: Duration,
}

/// One node condition as the API server's `NodeCondition` holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCondition {
    /// `KernelDeadlock`, `ReadonlyFilesystem`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether the problem is present.
    pub status: bool,
    /// Why, in one CamelCase word.
    pub reason: String,
    /// Why, in a sentence.
    pub message: String,
    /// When `status` last changed.
    pub last_transition: Timestamp,
}

#[derive(Debug)]
struct State {
    condition: NodeCondition,
    /// What it says while False.
    calm: (&'static str, &'static str),
    /// The last report that kept it True.
    last_report: Option<Instant>,
}

/// The conditions the collector owns, and what changes them.
#[derive(Debug)]
pub struct NodeConditions {
    config: ConditionConfig,
    states: Vec<State>,
    /// OOM kills within the window, oldest first.
    oom_kills: VecDeque<Instant>,
}

impl NodeConditions {
    /// Every condition False, as of `now`.
    pub fn new(config: ConditionConfig, now: Timestamp) -> Self {
        let calm = CONDITIONS.iter().map(|default| (default.condition, default.reason, default.message)).chain([(
            FREQUENT_CONTAINER_OOM,
            "NoFrequentContainerOOM",
            "containers are not OOM-killed frequently",
        )]);
        let states = calm
            .map(|(kind, reason, message)| State {
                condition: NodeCondition {
                    kind: kind.to_owned(),
                    status: false,
                    reason: reason.to_owned(),
                    message: message.to_owned(),
                    last_transition: now,
                },
                calm: (reason, message),
                last_report: None,
            })
            .collect();
        Self { config, states, oom_kills: VecDeque::new() }
    }

    /// The conditions as they stand.
    pub fn conditions(&self) -> Vec<NodeCondition> {
        self.states.iter().map(|state| state.condition.clone()).collect()
    }

    /// Whether `record` can change a condition: a hung task, a kernel log line that matched a
    /// rule with a condition, or an OOM kill in a container.
    pub fn concerns(record: &Record) -> bool {
        match record {
            Record::HungTask(_) => true,
            Record::KernelLog(log) => log.condition.is_some(),
            Record::OomKill(oom) => oom.identity.container_id.is_some(),
            _ => false,
        }
    }

    /// Takes in a record ([`Self::concerns`] says which count); whether any condition changed.
    pub fn observe(&mut self, record: &Record, now: Instant, wall: Timestamp) -> bool {
        match record {
            Record::HungTask(hung) => {
                let owner = match (&hung.identity.namespace, &hung.identity.pod_name, &hung.identity.container_name) {
                    (Some(namespace), Some(pod), Some(container)) => {
                        format!(" of container {container} of pod {namespace}/{pod}")
                    }
                    _ => String::new(),
                };
                let message = hung.describe(&owner);
                self.report(KERNEL_DEADLOCK, "TaskHung", message, now, wall)
            }
            Record::KernelLog(log) => match (&log.condition, &log.reason) {
                (Some(condition), Some(reason)) => {
                    let condition = condition.clone();
                    self.report(&condition, reason, log.line.clone(), now, wall)
                }
                _ => false,
            },
            // A container's: the condition says containers are killed, not the node's daemons.
            Record::OomKill(oom) if oom.identity.container_id.is_some() => {
                self.oom_kills.push_back(now);
                self.expire_oom_kills(now);
                let kills = self.oom_kills.len();
                if kills <= self.config.oom_kills as usize {
                    return false;
                }
                let message = format!(
                    "{kills} OOM kills on this node in the last {}, more than {}",
                    crate::config::HumanDuration(self.config.oom_window),
                    self.config.oom_kills
                );
                self.report(FREQUENT_CONTAINER_OOM, FREQUENT_CONTAINER_OOM, message, now, wall)
            }
            _ => false,
        }
    }

    /// Clears what has not been reported for `clear_after`, and `FrequentContainerOOM` once the
    /// window holds few enough kills; whether any condition changed.
    pub fn tick(&mut self, now: Instant, wall: Timestamp) -> bool {
        self.expire_oom_kills(now);
        let mut changed = false;
        let (clear_after, frequent) = (self.config.clear_after, self.oom_kills.len() > self.config.oom_kills as usize);
        for state in &mut self.states {
            let quiet = if state.condition.kind == FREQUENT_CONTAINER_OOM {
                !frequent
            } else {
                state.last_report.is_some_and(|at| now.duration_since(at) >= clear_after)
            };
            if state.condition.status && quiet {
                state.condition = NodeCondition {
                    kind: state.condition.kind.clone(),
                    status: false,
                    reason: state.calm.0.to_owned(),
                    message: state.calm.1.to_owned(),
                    last_transition: wall,
                };
                state.last_report = None;
                changed = true;
            }
        }
        changed
    }

    fn expire_oom_kills(&mut self, now: Instant) {
        while self.oom_kills.front().is_some_and(|at| now.duration_since(*at) >= self.config.oom_window) {
            self.oom_kills.pop_front();
        }
    }

    /// Sets `kind` True with this reason and message; whether anything changed.
    fn report(&mut self, kind: &str, reason: &str, message: String, now: Instant, wall: Timestamp) -> bool {
        let Some(state) = self.states.iter_mut().find(|state| state.condition.kind == kind) else {
            return false;
        };
        state.last_report = Some(now);
        let condition = &mut state.condition;
        if condition.status && condition.reason == reason && condition.message == message {
            return false;
        }
        if !condition.status {
            condition.last_transition = wall;
        }
        condition.status = true;
        reason.clone_into(&mut condition.reason);
        condition.message = message;
        true
    }
}

/// The strategic merge patch of the Node's status that sets `conditions` (merged by `type`, so
/// the kubelet's own conditions stay), with `heartbeat` as each one's `lastHeartbeatTime`.
pub fn status_patch(conditions: &[NodeCondition], heartbeat: Timestamp) -> serde_json::Value {
    let conditions: Vec<serde_json::Value> = conditions
        .iter()
        .map(|condition| {
            serde_json::json!({
                "type": condition.kind,
                "status": if condition.status { "True" } else { "False" },
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": condition.last_transition.metav1(),
                "lastHeartbeatTime": heartbeat.metav1(),
            })
        })
        .collect();
    serde_json::json!({ "status": { "conditions": conditions } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{HungTask, Identity, KernelLog};

    fn config() -> ConditionConfig {
        ConditionConfig { clear_after: Duration::from_secs(30), oom_kills: 2, oom_window: Duration::from_secs(60) }
    }

    fn find<'a>(conditions: &'a [NodeCondition], kind: &str) -> &'a NodeCondition {
        conditions.iter().find(|c| c.kind == kind).expect("the condition exists")
    }

    fn hung(pid: u32) -> Record {
        Record::HungTask(Box::new(HungTask {
            time: Timestamp(0),
            pid,
            tid: pid,
            comm: "postgres".to_owned(),
            cgroup_id: 0,
            cgroup_path: None,
            timeout_secs: Some(120),
            identity: Identity {
                namespace: Some("db".to_owned()),
                pod_name: Some("pg-0".to_owned()),
                container_name: Some("postgres".to_owned()),
                ..Identity::default()
            },
        }))
    }

    #[test]
    fn starts_false_with_npd_reasons() {
        let conditions = NodeConditions::new(config(), Timestamp(5)).conditions();
        let kinds: Vec<&str> = conditions.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["KernelDeadlock", "XfsShutdown", "CperHardwareErrorFatal", "ReadonlyFilesystem", "FrequentContainerOOM"]
        );
        let deadlock = find(&conditions, KERNEL_DEADLOCK);
        assert!(!deadlock.status);
        assert_eq!(
            (deadlock.reason.as_str(), deadlock.message.as_str()),
            ("KernelHasNoDeadlock", "kernel has no deadlock")
        );
    }

    #[test]
    fn a_hung_task_sets_kernel_deadlock_until_quiet_for_clear_after() {
        let t0 = Instant::now();
        let mut conditions = NodeConditions::new(config(), Timestamp(0));
        assert!(conditions.observe(&hung(42), t0, Timestamp(1_000_000_000)));
        let set = conditions.conditions();
        let deadlock = find(&set, KERNEL_DEADLOCK);
        assert!(deadlock.status);
        assert_eq!(deadlock.reason, "TaskHung");
        assert_eq!(
            deadlock.message,
            "Process 42 (postgres) of container postgres of pod db/pg-0 blocked for more than 120 s"
        );
        assert_eq!(deadlock.last_transition, Timestamp(1_000_000_000));
        // The same report again changes nothing, but keeps it set.
        assert!(!conditions.observe(&hung(42), t0 + Duration::from_secs(20), Timestamp(2)));
        assert!(!conditions.tick(t0 + Duration::from_secs(49), Timestamp(3)));
        assert!(conditions.tick(t0 + Duration::from_secs(50), Timestamp(4_000_000_000)));
        let cleared = conditions.conditions();
        let deadlock = find(&cleared, KERNEL_DEADLOCK);
        assert!(!deadlock.status);
        assert_eq!(deadlock.reason, "KernelHasNoDeadlock");
        assert_eq!(deadlock.last_transition, Timestamp(4_000_000_000));
    }

    #[test]
    fn a_read_only_remount_sets_readonly_filesystem() {
        let mut conditions = NodeConditions::new(config(), Timestamp(0));
        let line = "EXT4-fs (loop0): Remounting filesystem read-only";
        let log = Record::KernelLog(Box::new(KernelLog {
            time: Timestamp(0),
            line: line.to_owned(),
            truncated: false,
            pid: 1,
            comm: "mount".to_owned(),
            reason: Some("FilesystemIsReadOnly".to_owned()),
            condition: Some("ReadonlyFilesystem".to_owned()),
            identity: Identity::default(),
        }));
        assert!(conditions.observe(&log, Instant::now(), Timestamp(0)));
        let set = conditions.conditions();
        let readonly = find(&set, "ReadonlyFilesystem");
        assert!(readonly.status);
        assert_eq!((readonly.reason.as_str(), readonly.message.as_str()), ("FilesystemIsReadOnly", line));
    }

    #[test]
    fn frequent_oom_kills_set_and_clear_with_the_window() {
        let t0 = Instant::now();
        let mut conditions = NodeConditions::new(config(), Timestamp(0));
        let oom = Record::OomKill(Box::new(crate::record::OomKill {
            time: Timestamp(0),
            pid: 7,
            comm: None,
            cgroup_id: None,
            cgroup_path: None,
            total_vm_kb: None,
            anon_rss_kb: None,
            file_rss_kb: None,
            shmem_rss_kb: None,
            oom_score_adj: None,
            trigger_pid: 7,
            trigger_comm: "dd".to_owned(),
            oom_cgroup_path: None,
            memory_limit_bytes: None,
            scope_known: false,
            identity: Identity { container_id: Some("c".repeat(64)), ..Identity::default() },
            main_process: None,
            scope: None,
        }));
        assert!(NodeConditions::concerns(&oom));
        assert!(!conditions.observe(&oom, t0, Timestamp(0)));
        assert!(!conditions.observe(&oom, t0 + Duration::from_secs(1), Timestamp(0)));
        assert!(conditions.observe(&oom, t0 + Duration::from_secs(2), Timestamp(0)));
        let set = conditions.conditions();
        let frequent = find(&set, FREQUENT_CONTAINER_OOM);
        assert!(frequent.status);
        assert_eq!(frequent.message, "3 OOM kills on this node in the last 1m, more than 2");
        assert!(!conditions.tick(t0 + Duration::from_secs(59), Timestamp(0)));
        assert!(conditions.tick(t0 + Duration::from_secs(60), Timestamp(0)));
        assert!(!find(&conditions.conditions(), FREQUENT_CONTAINER_OOM).status);
    }

    #[test]
    fn the_patch_merges_by_type_with_api_spellings() {
        let conditions = NodeConditions::new(config(), Timestamp(1_700_000_000_000_000_000)).conditions();
        let patch = status_patch(&conditions[..1], Timestamp(1_700_000_060_000_000_000));
        assert_eq!(
            patch,
            serde_json::json!({"status": {"conditions": [{
                "type": "KernelDeadlock",
                "status": "False",
                "reason": "KernelHasNoDeadlock",
                "message": "kernel has no deadlock",
                "lastTransitionTime": "2023-11-14T22:13:20Z",
                "lastHeartbeatTime": "2023-11-14T22:14:20Z",
            }]}})
        );
    }
}
