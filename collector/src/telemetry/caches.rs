//! The resolver's caches in the exposition: the cgroup registry and the pod
//! metadata cache keep their own counters, which the daemon copies in and a
//! scrape reads, as the kernel's counters are.

use std::{
    fmt,
    sync::{Mutex, PoisonError},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::ResultLabel;
use crate::{cgroup::registry::RegistryStats, metadata::MetadataStats};

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The latest counters of both caches.
#[derive(Debug, Default)]
pub(super) struct CacheSnapshot {
    stats: Mutex<(RegistryStats, Option<MetadataStats>)>,
}

impl CacheSnapshot {
    pub(super) fn set_cgroups(&self, stats: RegistryStats) {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner).0 = stats;
    }

    pub(super) fn set_metadata(&self, stats: MetadataStats) {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner).1 = Some(stats);
    }
}

/// Writes one counter family with one series per `(label, value)`.
fn counters<L: EncodeLabelSet + fmt::Debug>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(L, u64)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (label, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(label)?)?;
    }
    Ok(())
}

/// Writes one unlabelled counter.
fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

impl Collector for CacheSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let (cgroups, metadata) = *self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let e = &mut encoder;
        counters(
            e,
            "cgroup_cache_lookups",
            "Cgroup id lookups in the registry, by result: hit or miss.",
            &[(ResultLabel { result: "hit" }, cgroups.hits), (ResultLabel { result: "miss" }, cgroups.misses)],
        )?;
        counter(
            e,
            "cgroup_tree_walks",
            "Reads of the whole cgroup tree: at start-up, and for records from cgroups whose creation was not seen.",
            cgroups.walks,
        )?;
        counter(
            e,
            "cgroup_cache_evictions",
            "Cgroup entries dropped to make room in the registry.",
            cgroups.evictions,
        )?;
        counter(
            e,
            "cgroup_cache_tombstones_expired",
            "Removed cgroups forgotten because their tombstone time passed.",
            cgroups.tombstones_expired,
        )?;
        // Without a runtime to ask (`--cri-socket none`) there is no metadata cache to report.
        let Some(metadata) = metadata else {
            return Ok(());
        };
        counters(
            e,
            "metadata_lookups",
            "Pod and container name lookups, by result: hit or miss.",
            &[(ResultLabel { result: "hit" }, metadata.hits), (ResultLabel { result: "miss" }, metadata.misses)],
        )?;
        counter(e, "metadata_refreshes", "Runtime listings and targeted refreshes run.", metadata.refreshes)?;
        counters(
            e,
            "metadata_errors",
            "Failed metadata calls, by source: cri (the runtime) or kube (the API server's pod watch).",
            &[
                (SourceLabel { source: "cri" }, metadata.cri_errors),
                (SourceLabel { source: "kube" }, metadata.kube_errors),
            ],
        )?;
        counters(
            e,
            "metadata_kubelet_stops",
            "Stops of a container in a living pod, by what the kubelet's Killing Event said: said (its reason was \
             read), silent (no such Event in time, or the list failed) or skipped (too many asked about at once).",
            &[
                (ResultLabel { result: "said" }, metadata.kubelet_said),
                (ResultLabel { result: "silent" }, metadata.kubelet_silent),
                (ResultLabel { result: "skipped" }, metadata.kubelet_skipped),
            ],
        )?;
        counter(
            e,
            "metadata_evictions",
            "Pod or container entries dropped because the cache was full of live entries.",
            metadata.dropped,
        )?;
        let mut metric = e.encode_descriptor(
            "metadata_entries",
            "Entries the metadata cache holds, tombstones included, by kind: pod or container.",
            None,
            MetricType::Gauge,
        )?;
        for (kind, value) in [("pod", metadata.pods), ("container", metadata.containers)] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(metric.encode_family(&KindLabel { kind })?)?;
        }
        Ok(())
    }
}
