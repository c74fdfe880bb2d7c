//! Per-container series (OOM kills and non-zero exits by namespace, pod and container), kept
//! for at most [`MAX_PODS_WITH_SERIES`] pods and removed when a pod's tombstone expires.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};

use super::{ContainerRef, MAX_PODS_WITH_SERIES};

#[derive(Clone, Copy, Debug, Default)]
struct ContainerCounts {
    oom_kills: u64,
    nonzero_exits: u64,
}

#[derive(Debug, Default)]
struct PodSeries {
    /// The uid of the pod that last wrote; see [`Metrics::remove_pod`].
    uid: String,
    containers: BTreeMap<String, ContainerCounts>,
}

/// Per-container counters, keyed by (namespace, pod).
#[derive(Debug, Default)]
pub(super) struct ContainerSeries {
    pods: Mutex<BTreeMap<(String, String), PodSeries>>,
    dropped: AtomicU64,
}

impl ContainerSeries {
    fn inc(&self, at: &ContainerRef<'_>, field: impl Fn(&mut ContainerCounts) -> &mut u64) {
        // A panic elsewhere while holding the lock leaves plain counters, still usable.
        let mut pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (at.namespace.to_owned(), at.pod.to_owned());
        if !pods.contains_key(&key) && pods.len() >= MAX_PODS_WITH_SERIES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let series = pods.entry(key).or_default();
        if series.uid != at.pod_uid {
            at.pod_uid.clone_into(&mut series.uid);
        }
        let counts = series.containers.entry(at.container.to_owned()).or_default();
        let value = field(counts);
        *value = value.saturating_add(1);
    }

    fn remove_pod(&self, namespace: &str, pod: &str, uid: &str) -> bool {
        let mut pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (namespace.to_owned(), pod.to_owned());
        if pods.get(&key).is_some_and(|series| series.uid == uid) {
            pods.remove(&key);
            true
        } else {
            false
        }
    }
}

/// Reads one of a container's counts.
type CountOf = fn(&ContainerCounts) -> u64;

impl Collector for ContainerSeries {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        let families: [(&str, &str, CountOf); 2] = [
            ("container_oom_kills", "Processes in the container killed by the OOM killer.", |counts| counts.oom_kills),
            (
                "container_nonzero_exits",
                "Processes in the container that exited with a non-zero status or by a signal.",
                |counts| counts.nonzero_exits,
            ),
        ];
        for (name, help, value) in families {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((namespace, pod), series) in pods.iter() {
                for (container, counts) in &series.containers {
                    let value = value(counts);
                    // Only series that happened, as a Family would show them.
                    if value == 0 {
                        continue;
                    }
                    let labels =
                        [("namespace", namespace.as_str()), ("pod", pod.as_str()), ("container", container.as_str())];
                    ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        let dropped = ConstCounter::new(self.dropped.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            "container_series_dropped",
            "Per-container increments not recorded because too many pods had series.",
            None,
            dropped.metric_type(),
        )?;
        dropped.encode(metric)
    }
}

impl super::Metrics {
    /// Counts an OOM kill in a container.
    pub fn container_oom_kill(&self, container: &ContainerRef<'_>) {
        self.containers.inc(container, |counts| &mut counts.oom_kills);
    }

    /// Counts a non-zero exit (status or signal) in a container.
    pub fn container_nonzero_exit(&self, container: &ContainerRef<'_>) {
        self.containers.inc(container, |counts| &mut counts.nonzero_exits);
    }

    /// Removes every per-container series of a pod; called when its tombstone expires.
    ///
    /// Nothing is removed if a pod with the same namespace and name but another
    /// uid wrote to the series since: they now belong to that (live) pod.
    /// Returns whether series were removed.
    pub fn remove_pod(&self, namespace: &str, pod: &str, pod_uid: &str) -> bool {
        self.containers.remove_pod(namespace, pod, pod_uid)
    }
}
