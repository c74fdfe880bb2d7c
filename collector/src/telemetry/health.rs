//! The node-health families: which probes this kernel attached, kernel log lines matched, memory
//! pressure episodes, and the node conditions the collector sets.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Probe {
    probe: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Condition {
    condition: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Resource {
    resource: &'static str,
}

/// The node-health families.
#[derive(Debug, Default)]
pub(super) struct HealthMetrics {
    probe_attached: Family<Probe, Gauge>,
    kernel_problems: Family<Reason, Counter>,
    node_condition: Family<Condition, Gauge>,
    node_condition_patches: Family<Reason, Counter>,
    pressure_episodes: Family<Resource, Counter>,
    pressure_stalled: Family<Resource, Gauge>,
    pressure_read_errors: Counter,
}

impl HealthMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "probe_attached",
            "Whether each node-health probe is attached on this kernel (1) or not (0: the kernel lacks it)",
            metrics.probe_attached.clone(),
        );
        registry.register(
            "kernel_problems",
            "Kernel log lines that matched a node-problem rule, by the rule's reason",
            metrics.kernel_problems.clone(),
        );
        registry.register(
            "node_condition",
            "Each node condition the collector owns: 1 while True, 0 while False",
            metrics.node_condition.clone(),
        );
        registry.register(
            "node_condition_patches",
            "Writes of the node's conditions to the API server, by outcome: ok, error",
            metrics.node_condition_patches.clone(),
        );
        registry.register(
            "pressure_episodes",
            "Containers that began to stall on a resource beyond the threshold, by resource",
            metrics.pressure_episodes.clone(),
        );
        registry.register(
            "pressure_stalled_containers",
            "Containers stalled on a resource beyond the threshold now, by resource",
            metrics.pressure_stalled.clone(),
        );
        registry.register(
            "pressure_read_errors",
            "Pressure files that could not be read or parsed (the cgroup went away, or no PSI)",
            metrics.pressure_read_errors.clone(),
        );
        metrics
    }
}

impl super::Metrics {
    /// Says whether a node-health probe is attached on this kernel.
    pub fn set_probe_attached(&self, probe: &str, attached: bool) {
        self.health.probe_attached.get_or_create(&Probe { probe: probe.to_owned() }).set(i64::from(attached));
    }

    /// Counts a kernel log line that matched a node-problem rule.
    pub fn kernel_problem(&self, reason: &str) {
        self.health.kernel_problems.get_or_create(&Reason { reason: reason.to_owned() }).inc();
    }

    /// Sets a node condition's state as the collector last wrote it.
    pub fn set_node_condition(&self, condition: &str, status: bool) {
        self.health.node_condition.get_or_create(&Condition { condition: condition.to_owned() }).set(i64::from(status));
    }

    /// Counts a write of the node's conditions.
    pub fn node_condition_patch(&self, ok: bool) {
        let reason = if ok { "ok" } else { "error" };
        self.health.node_condition_patches.get_or_create(&Reason { reason: reason.to_owned() }).inc();
    }

    /// A container began or stopped stalling on `resource`.
    pub fn pressure_episode(&self, resource: &'static str, started: bool) {
        let gauge = self.health.pressure_stalled.get_or_create(&Resource { resource });
        if started {
            self.health.pressure_episodes.get_or_create(&Resource { resource }).inc();
            gauge.inc();
        } else {
            gauge.dec();
        }
    }

    /// Counts a pressure file that could not be read.
    pub fn pressure_read_error(&self) {
        self.health.pressure_read_errors.inc();
    }
}
