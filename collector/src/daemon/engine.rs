//! The engine: each identified record becomes events, which pass the operator's filters and the
//! mutate webhooks, are decided by the recorder, and go to the registered handlers.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use tokio::sync::Notify;

use super::handover::{Handover, Owner};
use crate::{
    clock::Timestamp,
    decode::{KernelRecord, decode},
    events::{EventOptions, events_for},
    filter::{Filters, Verdict},
    health::conditions::{NodeCondition, NodeConditions},
    identify::Identifier,
    record::Record,
    recorder::{Decision, EventSpec, EventType, Recorder},
    resolve::{RecordResolver, ResolveCounts},
    sinks::{
        handler::{Decided, Delivery, Dispatch, Handlers, encode_record},
        webhook::mutate::Mutators,
    },
    telemetry::{self, ContainerRef, DropCause, KernelRecordType, Metrics},
};

/// An event a mutate webhook let through, with its record and the record's JSON.
pub(super) type Mutated = (Record, Bytes, EventSpec);

/// Records to events to sinks.
pub(super) struct Engine {
    pub(super) resolver: RecordResolver,
    pub(super) identifier: Identifier,
    pub(super) recorder: Recorder,
    pub(super) options: EventOptions,
    /// Whether Normal container ends go to the API server; the journal keeps them either way.
    pub(super) emit_normal_exits: bool,
    /// The operator's rules, swapped whole on SIGHUP.
    pub(super) filters: Filters,
    /// Where the events go.
    pub(super) handlers: Handlers,
    /// The mutate webhooks, asked before the recorder; `None` when there are none.
    pub(super) mutators: Option<Mutators>,
    /// Where the mutate webhooks' answered events come back to the loop.
    pub(super) mutated: tokio::sync::mpsc::UnboundedSender<Mutated>,
    pub(super) to_api: bool,
    pub(super) metrics: Arc<Metrics>,
    pub(super) wake: Arc<Notify>,
    pub(super) reported_unresolved: u64,
    pub(super) reported_stops_evicted: u64,
    pub(super) tombstone_ttl: Duration,
    /// Pods whose cgroup is gone: their metric series go when their tombstone does.
    pub(super) gone_pods: VecDeque<(Instant, String, String, String)>,
    /// Namespace and name of each pod (by uid) that has per-container series,
    /// so they can go even if the pod's removal is reported without names.
    pub(super) pods_with_series: HashMap<String, (String, String)>,
    /// Who reports which death while an old and a new daemon overlap.
    pub(super) handover: Handover,
    /// The node conditions the collector owns, and where their changes go (the Node's status).
    pub(super) conditions: NodeConditions,
    pub(super) conditions_tx: tokio::sync::watch::Sender<Vec<NodeCondition>>,
}

impl Engine {
    pub(super) fn handle(&mut self, bytes: &[u8]) {
        let kernel = match decode(bytes) {
            Ok(kernel) => kernel,
            Err(err) => {
                self.metrics.record_malformed();
                tracing::debug!("skipped a ring buffer item: {err}");
                return;
            }
        };
        self.metrics.kernel_record(kernel_type(&kernel));
        // Off unless debug is asked for: a disabled span costs one cached check per record.
        let _span = tracing::debug_span!("record", kind = kernel_type(&kernel).as_str()).entered();
        let now = Instant::now();
        let identifier = &mut self.identifier;
        self.resolver.push(kernel, now, &mut |record| identifier.push(record, now));
        self.release(now, false);
    }

    /// Resolves the records that waited for a walk of the cgroup tree, once it has finished.
    pub(super) fn walk_finished(&mut self) {
        let now = Instant::now();
        let identifier = &mut self.identifier;
        self.resolver.walk_finished(&mut |record| identifier.push(record, now));
        self.release(now, false);
    }

    /// Sends out OOM kills whose victim never exited and records that waited long enough.
    pub(super) fn housekeeping(&mut self, now: Instant, flush: bool) {
        let identifier = &mut self.identifier;
        if flush {
            self.resolver.flush(&mut |record| identifier.push(record, now));
        } else {
            self.resolver.expire(now, &mut |record| identifier.push(record, now));
        }
        self.release(now, flush);
        if self.conditions.tick(now, Timestamp::now()) {
            self.publish_conditions();
        }
        self.resolver.refresh_clock();
        while self.gone_pods.front().is_some_and(|(due, ..)| *due <= now) {
            if let Some((_, namespace, pod, uid)) = self.gone_pods.pop_front() {
                let removed = self.metrics.remove_pod(&namespace, &pod, &uid);
                tracing::debug!("pod {namespace}/{pod} ({uid}): series removed: {removed}");
            }
        }
    }

    pub(super) fn release(&mut self, now: Instant, flush: bool) {
        while let Some(record) = self.identifier.pop_ready(now, flush) {
            self.on_record(&record);
        }
        for _ in self.reported_unresolved..self.identifier.unresolved {
            self.metrics.record_unresolved();
        }
        self.reported_unresolved = self.identifier.unresolved;
        let counts = self.resolver.take_counts();
        if counts != ResolveCounts::default() {
            self.metrics.cgroup_paths_truncated(counts.truncated_paths);
            self.metrics.records_unjoined(counts.unjoined);
        }
        let evicted = self.resolver.stops_evicted();
        (self.reported_stops_evicted..evicted).for_each(|_| self.metrics.stop_request_evicted());
        self.reported_stops_evicted = evicted;
    }

    /// A record from user space (a container's memory pressure), to name and decide like a kernel one.
    pub(super) fn on_sampled(&mut self, record: Record) {
        let now = Instant::now();
        self.identifier.push(record, now);
        self.release(now, false);
    }

    pub(super) fn on_record(&mut self, record: &Record) {
        // Which record the lines below are about, at debug (`COLLECTOR_LOG=collector=debug`).
        let identity = record.identity();
        let _span = tracing::debug_span!(
            "events",
            kind = ?record.kind(),
            pid = record.pid(),
            namespace = identity.namespace.as_deref(),
            pod = identity.pod_name.as_deref(),
            container = identity.container_name.as_deref(),
        )
        .entered();
        if let Record::KernelLog(log) = record
            && let Some(reason) = &log.reason
        {
            self.metrics.kernel_problem(reason);
        }
        // Checked first: an exit storm must not pay two clock reads per record for nothing.
        if NodeConditions::concerns(record) && self.conditions.observe(record, Instant::now(), Timestamp::now()) {
            self.publish_conditions();
        }
        if count_container_deaths(&self.metrics, record)
            && let (Some(uid), Some(namespace), Some(pod)) =
                (&record.identity().pod_uid, &record.identity().namespace, &record.identity().pod_name)
            && !self.pods_with_series.contains_key(uid)
            && self.pods_with_series.len() < telemetry::MAX_PODS_WITH_SERIES
        {
            self.pods_with_series.insert(uid.clone(), (namespace.clone(), pod.clone()));
        }
        if let Record::CgroupRmdir(change) = record
            && change.identity.container_id.is_none()
            && let Some(uid) = &change.identity.pod_uid
            && let Some((namespace, pod)) = self.pods_with_series.remove(uid)
        {
            let due = Instant::now() + self.tombstone_ttl;
            tracing::debug!("pod {namespace}/{pod} ({uid}) is gone; its series go in {:?}", self.tombstone_ttl);
            self.gone_pods.push_back((due, namespace, pod, uid.clone()));
        }
        let specs = events_for(record, &self.options);
        // Asked only for records that would become events: most records do not.
        if !specs.is_empty() && self.handover.owner(record.time()) != Owner::Me {
            self.metrics.record_handed_over();
            return;
        }
        let mut passed = Vec::with_capacity(specs.len());
        let mut node_only = Vec::new();
        // Encoded once for the mutate webhooks, and handed on to the other handlers.
        let mut json: Option<Bytes> = None;
        for spec in specs {
            match self.filters.decide(&spec, record) {
                Verdict::Drop { rule } => {
                    self.metrics.filter_matched(rule.unwrap_or_default());
                    self.metrics.event_dropped(DropCause::Filtered);
                    continue;
                }
                Verdict::Pass { matched: Some(rule) } => self.metrics.filter_matched(rule),
                Verdict::Pass { matched: None } => {}
            }
            // The node's history keeps every death; the API server gets failures, and the
            // rest only when asked for.
            if spec.event_type == EventType::Normal && !self.emit_normal_exits {
                node_only.push(Decided { spec, delivery: Delivery::NodeOnly });
                continue;
            }
            match &self.mutators {
                Some(mutators) if mutators.wants(&spec) && mutators.has_room(&spec) => {
                    let preview = self.recorder.preview(spec.clone(), Timestamp::from_system_time(SystemTime::now()));
                    let json = json.get_or_insert_with(|| encode_record(record)).clone();
                    let (back, back_json, to) = (record.clone(), json.clone(), self.mutated.clone());
                    let done = move |answered: Option<EventSpec>| {
                        if let Some(spec) = answered {
                            // The loop outlives every task it starts; a send can fail only when it is gone.
                            let _ = to.send((back, back_json, spec));
                        }
                    };
                    mutators.start(spec, preview, json, done);
                }
                _ => passed.push(spec),
            }
        }
        let mut events = self.decide(passed);
        events.append(&mut node_only);
        if !events.is_empty() || self.handlers.wants_every_record() {
            let dispatch = Dispatch::new(record.clone(), events);
            self.handlers.dispatch(match json {
                Some(json) => dispatch.with_record_json(json),
                None => dispatch,
            });
        }
    }

    /// Hands the conditions to the Node's writer and the metrics.
    pub(super) fn publish_conditions(&self) {
        let conditions = self.conditions.conditions();
        for condition in &conditions {
            self.metrics.set_node_condition(&condition.kind, condition.status);
        }
        // The writer outlives the loop; with no receiver there is nothing to tell.
        let _ = self.conditions_tx.send(conditions);
    }

    /// An event the mutate webhooks let through, back for the recorder; its record went out
    /// when it arrived.
    pub(super) fn on_mutated(&mut self, (record, record_json, spec): Mutated) {
        let events = self.decide(vec![spec]);
        if !events.is_empty() {
            self.handlers.dispatch(Dispatch::again(record, record_json, events));
        }
    }

    /// The recorder's decision on each event, counted.
    pub(super) fn decide(&mut self, specs: Vec<EventSpec>) -> Vec<Decided> {
        let mut events = Vec::with_capacity(specs.len());
        for spec in specs {
            let now = Timestamp::from_system_time(SystemTime::now());
            match self.recorder.record(spec.clone(), now) {
                Decision::Write(write) => {
                    let event = write.event();
                    tracing::debug!(reason = %event.reason, count = event.count, "event: {}", event.message);
                    self.metrics.event_emitted(&event.reason, event.event_type);
                    events.push(Decided { spec, delivery: Delivery::Write(write) });
                }
                Decision::SpamFiltered => {
                    tracing::debug!(reason = %spec.reason, "event spam-filtered: {}", spec.message);
                    self.metrics.event_dropped(DropCause::SpamFilter);
                    // Dropped on its way to the API server, not from the node's history.
                    events.push(Decided { spec, delivery: Delivery::SpamFiltered });
                }
            }
        }
        events
    }

    /// Re-reads the filter rules from the configuration file; a file with any problem keeps the
    /// rules in force. Records in flight are untouched: the next one meets the new rules.
    pub(super) fn reload_filters(&mut self, file: Option<&std::path::Path>) {
        let Some(file) = file else {
            tracing::warn!("collector: SIGHUP: no configuration file (--config) to reload filters from");
            return;
        };
        match crate::config::reload_filters(file) {
            Ok(rules) => {
                tracing::info!("collector: SIGHUP: {} filter rules from {}", rules.len(), file.display());
                self.metrics.set_filter_rules(rules.len());
                self.metrics.filter_reload(true);
                self.filters = Filters::new(rules);
            }
            Err(problems) => {
                self.metrics.filter_reload(false);
                for problem in &problems {
                    tracing::warn!("collector: SIGHUP: {problem}");
                }
                tracing::warn!(
                    "collector: SIGHUP: the filter rules in force stay; fix {} and send SIGHUP again",
                    file.display()
                );
            }
        }
    }

    /// Copies the cgroup registry's and the metadata cache's counters into the metrics.
    pub(super) fn sync_cache_stats(&self) {
        self.metrics.set_cgroup_cache(self.resolver.cgroups().stats());
        if let Some(stats) = self.identifier.metadata_stats() {
            self.metrics.set_metadata_cache(stats);
        }
    }
}

/// OOM kills and non-zero exits per container, for the per-pod series; whether one was counted.
fn count_container_deaths(metrics: &Metrics, record: &Record) -> bool {
    let identity = record.identity();
    let (Some(namespace), Some(pod), Some(pod_uid), Some(container)) =
        (&identity.namespace, &identity.pod_name, &identity.pod_uid, &identity.container_name)
    else {
        return false;
    };
    let container = ContainerRef { namespace, pod, pod_uid, container };
    match record {
        Record::OomKill(_) => metrics.container_oom_kill(&container),
        Record::Exit(exit) if exit.exit_code != 0 && !exit.oom_killed => metrics.container_nonzero_exit(&container),
        _ => return false,
    }
    true
}

fn kernel_type(kernel: &KernelRecord) -> KernelRecordType {
    match kernel {
        KernelRecord::Exit(..) => KernelRecordType::Exit,
        KernelRecord::OomKill(_) => KernelRecordType::OomKill,
        KernelRecord::Signal(_) => KernelRecordType::Signal,
        KernelRecord::CgroupMkdir(_) => KernelRecordType::CgroupMkdir,
        KernelRecord::CgroupRmdir(_) => KernelRecordType::CgroupRmdir,
        KernelRecord::CgroupAttach(_) => KernelRecordType::CgroupAttach,
        // `decode` makes these only for the health kinds, each of which has a type.
        KernelRecord::Health(health) => match KernelRecordType::of_kind(health.header.kind) {
            Some(kind) => kind,
            None => KernelRecordType::KernelLog,
        },
    }
}
