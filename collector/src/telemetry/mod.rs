//! The collector's own telemetry: typed counters exposed to Prometheus.
//!
//! Every family is registered once, with its HELP text, in [`Metrics::new`];
//! the daemon's stages update them through [`Metrics`]'s methods and
//! [`http::MetricsServer`] serves them as OpenMetrics text. Two families are
//! not plain counters: the kernel's own counters are read from a snapshot at
//! scrape time (the kernel, not this process, increments them), and the
//! per-container families live in a map so a pod's series can be removed when
//! its tombstone expires (a `Family` cannot remove "every series of a pod").

mod caches;
pub mod http;
pub mod limit;
pub mod logs;
mod plugins;

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, text},
    metrics::{MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};
use thiserror::Error;

use crate::recorder::EventType;

/// Errors of the telemetry module.
#[derive(Debug, Error)]
pub enum TelemetryError {
    /// Encoding the exposition failed (a label or collector refused to encode).
    #[error("cannot encode the metrics exposition")]
    Encode(#[source] fmt::Error),
    /// The metrics address could not be bound.
    #[error("cannot listen on {addr} for metrics")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The bound socket's address could not be read.
    #[error("cannot read the metrics listener's address")]
    LocalAddr(#[source] std::io::Error),
}

/// Defines a closed set of label values with their exposition spelling.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &[Self] = &[$(Self::$variant,)*];

            /// The label value as it appears in the exposition.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_values! {
    /// The types of kernel record, for `collector_kernel_records_total{type}`.
    KernelRecordType {
        /// A process ended.
        Exit => "exit",
        /// The OOM killer chose a victim.
        OomKill => "oom_kill",
        /// A signal was generated.
        Signal => "signal",
        /// A cgroup was created.
        CgroupMkdir => "cgroup_mkdir",
        /// A cgroup was removed.
        CgroupRmdir => "cgroup_rmdir",
        /// A task moved into a cgroup.
        CgroupAttach => "cgroup_attach",
    }
}

label_values! {
    /// Why an event was not delivered, for `collector_events_dropped_total{cause}`.
    DropCause {
        /// The client-go spam filter (token bucket per object) refused it.
        SpamFilter => "spam_filter",
        /// A handler's queue was full (counted once per handler that lost it).
        QueueFull => "queue_full",
        /// An operator's filter rule dropped it.
        Filtered => "filtered",
        /// A mutate webhook answered `allow: false`.
        Suppressed => "suppressed",
        /// The API server refused it for good (no retry).
        Rejected => "rejected",
        /// It waited in the outbox longer than an event is worth sending.
        Expired => "expired",
    }
}

/// The event's type is the recorder's, spelled as the API spells it.
impl EncodeLabelValue for EventType {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        encoder.write_str(self.as_str())
    }
}

label_values! {
    /// Why journal entries were removed, for `collector_journal_pruned_total{reason}`.
    PruneReason {
        /// Older than the journal's `max_age`.
        MaxAge => "max_age",
        /// The journal outgrew `max_bytes`.
        MaxBytes => "max_bytes",
    }
}

/// The answer to an API request, for `collector_api_requests_total{status}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiStatus {
    /// The server answered with this HTTP status code.
    Code(u16),
    /// No answer arrived (connection refused, timeout, TLS failure): `error`.
    NoResponse,
}

impl EncodeLabelValue for ApiStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(encoder, "{code}"),
            Self::NoResponse => encoder.write_str("error"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TypeLabel {
    r#type: KernelRecordType,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    reason: String,
    r#type: EventType,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CauseLabel {
    cause: DropCause,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabels {
    verb: &'static str,
    status: ApiStatus,
}

/// `result` of a lookup or a reload (`hit`, `miss`; `ok`, `error`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandlerLabel {
    handler: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PruneLabel {
    reason: PruneReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// The container a per-container counter is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerRef<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod's name.
    pub pod: &'a str,
    /// The pod's uid: not a label, but it decides whose series [`Metrics::remove_pod`] removes.
    pub pod_uid: &'a str,
    /// The container's name.
    pub container: &'a str,
}

/// The collector's metrics. Share it as an `Arc<Metrics>`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    kernel_records: Family<TypeLabel, Counter>,
    kernel: Arc<KernelSnapshot>,
    records_malformed: Counter,
    records_unresolved: Counter,
    records_handed_over: Counter,
    stop_requests_evicted: Counter,
    cgroup_paths_truncated: Counter,
    records_unjoined: Counter,
    events: Family<EventLabels, Counter>,
    events_dropped: Family<CauseLabel, Counter>,
    handler_dropped: Family<HandlerLabel, Counter>,
    filter_matches: Family<RuleLabel, Counter>,
    filter_rules: Gauge,
    filter_reloads: Family<ResultLabel, Counter>,
    api_requests: Family<ApiLabels, Counter>,
    api_retries: Counter,
    api_deferred: Counter,
    caches: Arc<caches::CacheSnapshot>,
    containers: Arc<ContainerSeries>,
    journal_appends: Counter,
    journal_append_errors: Counter,
    journal_pruned: Family<PruneLabel, Counter>,
    journal_size: Gauge,
    journal_outbox_pending: Gauge,
    plugins: plugins::PluginMetrics,
}

/// The most pods with per-container series; beyond it increments are counted as dropped.
///
/// A node runs at most a few hundred pods and a pod's series go when its
/// tombstone expires, so reaching this means series are leaking; the cap
/// keeps that from growing the exposition without bound.
pub const MAX_PODS_WITH_SERIES: usize = 2048;

impl Metrics {
    /// Registers every family (HELP texts get their final period from
    /// prometheus-client); `version` is the `collector_build_info` version label.
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::with_prefix("collector");
        let plugins = plugins::PluginMetrics::register(&mut registry);
        let mut metrics = Self {
            registry,
            kernel_records: Family::default(),
            kernel: Arc::default(),
            records_malformed: Counter::default(),
            records_unresolved: Counter::default(),
            records_handed_over: Counter::default(),
            stop_requests_evicted: Counter::default(),
            cgroup_paths_truncated: Counter::default(),
            records_unjoined: Counter::default(),
            events: Family::default(),
            events_dropped: Family::default(),
            handler_dropped: Family::default(),
            filter_matches: Family::default(),
            filter_rules: Gauge::default(),
            filter_reloads: Family::default(),
            api_requests: Family::default(),
            api_retries: Counter::default(),
            api_deferred: Counter::default(),
            caches: Arc::default(),
            containers: Arc::default(),
            journal_appends: Counter::default(),
            journal_append_errors: Counter::default(),
            journal_pruned: Family::default(),
            journal_size: Gauge::default(),
            journal_outbox_pending: Gauge::default(),
            plugins,
        };
        let registry = &mut metrics.registry;
        registry.register(
            "build",
            "The collector's version; always 1",
            Info::new(BuildLabels { version: version.to_owned() }),
        );
        registry.register(
            "kernel_records",
            "Records the kernel programs delivered, by record type",
            metrics.kernel_records.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&metrics.kernel)));
        // Zero series for the closed label sets, so rate() and alerts see them before the first increment.
        for &kind in KernelRecordType::ALL {
            let _ = metrics.kernel_records.get_or_create(&TypeLabel { r#type: kind });
        }
        for &cause in DropCause::ALL {
            let _ = metrics.events_dropped.get_or_create(&CauseLabel { cause });
        }
        for &reason in PruneReason::ALL {
            let _ = metrics.journal_pruned.get_or_create(&PruneLabel { reason });
        }
        registry.register(
            "records_malformed",
            "Ring buffer items that did not decode and were skipped",
            metrics.records_malformed.clone(),
        );
        registry.register(
            "records_unresolved",
            "Records that could not be tied to a pod and container within the metadata wait",
            metrics.records_unresolved.clone(),
        );
        registry.register(
            "records_handed_over",
            "Records of a death left to another collector on this node during a rolling update's overlap",
            metrics.records_handed_over.clone(),
        );
        registry.register(
            "stop_requests_evicted",
            "Container runtime stop signals forgotten before the exit they asked for (too many pending)",
            metrics.stop_requests_evicted.clone(),
        );
        registry.register(
            "cgroup_paths_truncated",
            "cgroup paths the kernel cut at 256 bytes, resolved from the cgroup tree instead",
            metrics.cgroup_paths_truncated.clone(),
        );
        registry.register(
            "records_unjoined",
            "OOM kills and signals sent out without the exit they waited for (the victim never exited in time)",
            metrics.records_unjoined.clone(),
        );
        registry.register(
            "events",
            "Kubernetes Events the recorder emitted, by reason and type",
            metrics.events.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not delivered, by cause: spam_filter, queue_full, filtered, suppressed, rejected, expired",
            metrics.events_dropped.clone(),
        );
        registry.register(
            "handler_dropped",
            "Records a handler's full queue could not take, by handler; their events are counted in \
             events_dropped{cause=\"queue_full\"}",
            metrics.handler_dropped.clone(),
        );
        registry.register(
            "filter_matches",
            "Events each filter rule decided: dropped by a drop rule, let through by a keep rule; \
             rule=\"\" counts those dropped because no keep rule matched",
            metrics.filter_matches.clone(),
        );
        registry.register("filter_rules", "Filter rules in force", metrics.filter_rules.clone());
        registry.register(
            "filter_reloads",
            "SIGHUP reloads of the filter rules, by result: ok, or error (the rules in force stay)",
            metrics.filter_reloads.clone(),
        );
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API server, by verb and HTTP status (error: no response)",
            metrics.api_requests.clone(),
        );
        registry.register("api_retries", "Kubernetes API writes retried after a failure", metrics.api_retries.clone());
        registry.register(
            "api_writes_deferred",
            "Kubernetes API writes that ran out of attempts and wait in the outbox for a later pass",
            metrics.api_deferred.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&metrics.caches)));
        registry.register_collector(Box::new(Arc::clone(&metrics.containers)));
        registry.register(
            "journal_appends",
            "Occurrences (events the kernel caused, before the spam filter) appended to the journal",
            metrics.journal_appends.clone(),
        );
        registry.register(
            "journal_append_errors",
            "Journal appends that failed; the entry was not stored",
            metrics.journal_append_errors.clone(),
        );
        registry.register(
            "journal_pruned",
            "Journal occurrences removed, by reason: max_age or max_bytes",
            metrics.journal_pruned.clone(),
        );
        registry.register_with_unit(
            "journal_size",
            "Size of the journal on disk",
            Unit::Bytes,
            metrics.journal_size.clone(),
        );
        registry.register(
            "journal_outbox_pending",
            "API writes waiting in the journal's outbox",
            metrics.journal_outbox_pending.clone(),
        );
        metrics
    }

    /// Stores the cgroup registry's counters (totals: set, not added).
    pub fn set_cgroup_cache(&self, stats: crate::cgroup::registry::RegistryStats) {
        self.caches.set_cgroups(stats);
    }

    /// Stores the metadata cache's counters and sizes (totals: set, not added).
    pub fn set_metadata_cache(&self, stats: crate::metadata::MetadataStats) {
        self.caches.set_metadata(stats);
    }

    /// Counts an API write put back in the outbox after its last attempt failed.
    pub fn api_write_deferred(&self) {
        self.api_deferred.inc();
    }

    /// Counts a record the kernel delivered.
    pub fn kernel_record(&self, kind: KernelRecordType) {
        self.kernel_records.get_or_create(&TypeLabel { r#type: kind }).inc();
    }

    /// Stores the kernel programs' own counters, read from their map: records
    /// lost to a full ring buffer, by type, and field reads that failed.
    ///
    /// They are totals kept by the kernel, so they are set, not added; a
    /// reload of the probes restarts them at zero, which Prometheus treats as
    /// a counter reset.
    pub fn set_kernel_counters(&self, lost: impl IntoIterator<Item = (KernelRecordType, u64)>, read_failed: u64) {
        for (kind, count) in lost {
            self.kernel.lost[kind as usize].store(count, Ordering::Relaxed);
        }
        self.kernel.read_failed.store(read_failed, Ordering::Relaxed);
    }

    /// Counts a ring buffer item that did not decode.
    pub fn record_malformed(&self) {
        self.records_malformed.inc();
    }

    /// Counts a record that could not be tied to a pod and container.
    pub fn record_unresolved(&self) {
        self.records_unresolved.inc();
    }

    /// Counts a record that another collector on this node reports (a rolling update's overlap).
    pub fn record_handed_over(&self) {
        self.records_handed_over.inc();
    }

    /// Counts a record a handler's full queue could not take. `handler` is a registered
    /// handler's name, from the collector's own code.
    pub fn handler_dropped(&self, handler: &str) {
        self.handler_dropped.get_or_create(&HandlerLabel { handler: handler.to_owned() }).inc();
    }

    /// Counts an event a filter rule decided; `rule` is the operator's rule name, "" for "no
    /// keep rule matched". Rule names are few and fixed by the configuration.
    pub fn filter_matched(&self, rule: &str) {
        self.filter_matches.get_or_create(&RuleLabel { rule: rule.to_owned() }).inc();
    }

    /// Sets how many filter rules are in force.
    pub fn set_filter_rules(&self, rules: usize) {
        self.filter_rules.set(i64::try_from(rules).unwrap_or(i64::MAX));
    }

    /// Counts a SIGHUP reload of the filter rules.
    pub fn filter_reload(&self, ok: bool) {
        self.filter_reloads.get_or_create(&ResultLabel { result: if ok { "ok" } else { "error" } }).inc();
    }

    /// Counts cgroup paths the kernel cut, resolved from the tree instead.
    pub fn cgroup_paths_truncated(&self, paths: u64) {
        self.cgroup_paths_truncated.inc_by(paths);
    }

    /// Counts OOM kills and signals sent out without the exit they waited for.
    pub fn records_unjoined(&self, records: u64) {
        self.records_unjoined.inc_by(records);
    }

    /// Counts a stop request the resolver forgot before its exit came.
    pub fn stop_request_evicted(&self) {
        self.stop_requests_evicted.inc();
    }

    /// Counts an emitted event. `reason` comes from the collector's own code
    /// (a bounded set such as `OOMKilling`), never from the kernel.
    pub fn event_emitted(&self, reason: &str, kind: EventType) {
        self.events.get_or_create(&EventLabels { reason: reason.to_owned(), r#type: kind }).inc();
    }

    /// Counts an event that will not be delivered.
    pub fn event_dropped(&self, cause: DropCause) {
        self.events_dropped.get_or_create(&CauseLabel { cause }).inc();
    }

    /// Counts a request to the API server; `verb` is `sinks::Verb::as_str()` (`POST`, `PATCH`).
    pub fn api_request(&self, verb: &'static str, status: ApiStatus) {
        self.api_requests.get_or_create(&ApiLabels { verb, status }).inc();
    }

    /// Counts a retried API write.
    pub fn api_retry(&self) {
        self.api_retries.inc();
    }

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

    /// Counts an entry appended to the journal.
    pub fn journal_appended(&self) {
        self.journal_appends.inc();
    }

    /// Counts a journal append that failed.
    pub fn journal_append_failed(&self) {
        self.journal_append_errors.inc();
    }

    /// Counts `entries` removed from the journal for `reason`.
    pub fn journal_pruned(&self, reason: PruneReason, entries: u64) {
        self.journal_pruned.get_or_create(&PruneLabel { reason }).inc_by(entries);
    }

    /// Sets the journal's size on disk.
    pub fn set_journal_size(&self, bytes: u64) {
        self.journal_size.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Sets the number of API writes waiting in the outbox.
    pub fn set_outbox_pending(&self, writes: u64) {
        self.journal_outbox_pending.set(i64::try_from(writes).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition, ending with `# EOF`.
    pub fn encode(&self) -> Result<String, TelemetryError> {
        let mut out = String::with_capacity(4096);
        text::encode(&mut out, &self.registry).map_err(TelemetryError::Encode)?;
        Ok(out)
    }
}

/// Counters kept by the kernel programs, copied in by the daemon and read at scrape time.
#[derive(Debug, Default)]
struct KernelSnapshot {
    /// Records lost because the ring buffer was full, indexed by [`KernelRecordType`].
    lost: [AtomicU64; KernelRecordType::ALL.len()],
    read_failed: AtomicU64,
}

impl Collector for KernelSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        // By type, as `kernel_records` is: records delivered plus records lost is then what
        // the kernel produced, type by type.
        let mut metric = encoder.encode_descriptor(
            "kernel_records_lost",
            "Records the kernel programs dropped because the ring buffer was full, by record type.",
            None,
            MetricType::Counter,
        )?;
        for &kind in KernelRecordType::ALL {
            let counter = ConstCounter::new(self.lost[kind as usize].load(Ordering::Relaxed));
            counter.encode(metric.encode_family(&TypeLabel { r#type: kind })?)?;
        }
        let counter = ConstCounter::new(self.read_failed.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            "kernel_field_read_failures",
            "Records the kernel programs sent with a field they could not read.",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

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
struct ContainerSeries {
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

#[cfg(test)]
mod tests;
