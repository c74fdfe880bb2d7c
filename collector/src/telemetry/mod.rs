//! The collector's own telemetry: typed counters exposed to Prometheus.
//!
//! Every family is registered once, with its HELP text, in [`Metrics::new`];
//! the daemon's stages update them through [`Metrics`]'s methods and
//! [`http::MetricsServer`] serves them as OpenMetrics text. Two families are
//! not plain counters: the kernel's own counters are read from a snapshot at
//! scrape time (the kernel, not this process, increments them), and the
//! per-container families live in a map so a pod's series can be removed when
//! its tombstone expires (a `Family` cannot remove "every series of a pod").

mod api;
mod caches;
mod health;
pub mod http;
mod kernel;
pub mod limit;
pub mod logs;
mod plugins;
mod recorder;
mod series;

pub use api::{ApiStatus, InFlight};
pub use recorder::CACHES as RECORDER_CACHES;

use std::{
    fmt::{self, Write as _},
    sync::Arc,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
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
        /// The hung-task detector reported a task.
        HungTask => "hung_task",
        /// The kernel logged a line.
        KernelLog => "kernel_log",
        /// A filesystem reported an error.
        FsError => "fs_error",
        /// A block request failed.
        IoError => "io_error",
        /// A memory controller reported a hardware error.
        HwError => "hw_error",
    }
}

impl KernelRecordType {
    /// The kernel's number for this type (`collector_common::kind`).
    pub const fn kind(self) -> u32 {
        use collector_common::kind;
        match self {
            Self::Exit => kind::EXIT,
            Self::OomKill => kind::OOM_KILL,
            Self::Signal => kind::SIGNAL,
            Self::CgroupMkdir => kind::CGROUP_MKDIR,
            Self::CgroupRmdir => kind::CGROUP_RMDIR,
            Self::CgroupAttach => kind::CGROUP_ATTACH,
            Self::HungTask => kind::HUNG_TASK,
            Self::KernelLog => kind::KERNEL_LOG,
            Self::FsError => kind::FS_ERROR,
            Self::IoError => kind::IO_ERROR,
            Self::HwError => kind::HW_ERROR,
        }
    }

    /// The type of a kernel record of `kind`, if there is one.
    pub fn of_kind(kind: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.kind() == kind)
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
    kernel: Arc<kernel::KernelSnapshot>,
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
    api: api::ApiMetrics,
    caches: Arc<caches::CacheSnapshot>,
    containers: Arc<series::ContainerSeries>,
    journal_appends: Counter,
    journal_append_errors: Counter,
    journal_pruned: Family<PruneLabel, Counter>,
    journal_size: Gauge,
    journal_outbox_pending: Gauge,
    plugins: plugins::PluginMetrics,
    health: health::HealthMetrics,
    recorder: recorder::RecorderMetrics,
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
        let health = health::HealthMetrics::register(&mut registry);
        let recorder = recorder::RecorderMetrics::register(&mut registry);
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
            api: api::ApiMetrics::default(),
            caches: Arc::default(),
            containers: Arc::default(),
            journal_appends: Counter::default(),
            journal_append_errors: Counter::default(),
            journal_pruned: Family::default(),
            journal_size: Gauge::default(),
            journal_outbox_pending: Gauge::default(),
            plugins,
            health,
            recorder,
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
        metrics.api.register(registry);
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

    /// Counts a record the kernel delivered.
    pub fn kernel_record(&self, kind: KernelRecordType) {
        self.kernel_records.get_or_create(&TypeLabel { r#type: kind }).inc();
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

#[cfg(test)]
mod tests;
