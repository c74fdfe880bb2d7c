//! The journal as a [`Handler`]: each occurrence, with its API write and outbox entry, is
//! committed on the handler's own thread, and pruning runs there too, so SQLite never holds up
//! the ring reader.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use serde_json::json;
use tokio::sync::{Notify, mpsc};

use super::{DEFAULT_OUTBOX_MAX_AGE, EventContext, Journal, Occurrence};
use crate::{
    clock::Timestamp,
    sinks::{
        ApiWrite,
        handler::{Decided, Delivery, Dispatch, Handler},
    },
    telemetry::{DropCause, Metrics, PruneReason, http::Readiness, limit::WarnLimit},
};

/// How often the journal is pruned and undeliverable old writes dropped.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How long a stopping daemon waits for the journal to store what is queued. The journal is the
/// node's durable copy, so it gets far longer than the other handlers' 500 ms: a full queue
/// (4096 records) is kept if the disk manages 410 commits a second, well inside the
/// DaemonSet's 30 s grace period. A slow disk (or an emulated machine under load) once fell
/// 42 records behind a kernel-log storm and lost them at stop with 500 ms.
const DRAIN_ON_STOP: Duration = Duration::from_secs(10);

/// Stores occurrences and queues their writes for the API server.
pub struct JournalHandler {
    journal: Arc<Mutex<Journal>>,
    /// Where writes go when an API sink runs: the outbox (woken through `wake`), or straight to
    /// the sink when the journal cannot store them.
    api: Option<ApiPath>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    last_prune: Instant,
    /// A failing journal fails once per record: warned about at a bounded rate.
    warnings: WarnLimit,
}

/// How writes reach the API sink.
pub struct ApiPath {
    /// Woken after each enqueue.
    pub wake: Arc<Notify>,
    /// Takes a write the journal failed to store, so that it is still sent; bounded.
    pub fallback: mpsc::Sender<ApiWrite>,
}

impl JournalHandler {
    /// A handler storing into `journal`; with `api`, writes go to its outbox too. Whether the
    /// last store failed is told to `readiness`.
    pub fn new(
        journal: Arc<Mutex<Journal>>,
        api: Option<ApiPath>,
        metrics: Arc<Metrics>,
        readiness: Readiness,
    ) -> Self {
        Self { journal, api, metrics, readiness, last_prune: Instant::now(), warnings: WarnLimit::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Journal> {
        super::lock(&self.journal)
    }

    fn store(&self, records: &serde_json::Value, dispatch: &Dispatch, decided: &Decided) {
        let api = match decided.write().map(ApiWrite::try_from).transpose() {
            Ok(api) => api,
            Err(err) => {
                tracing::warn!("cannot encode an event: {err}");
                return;
            }
        };
        let context = EventContext { container: dispatch.record.identity().container_name.as_deref(), records };
        let occurrence = Occurrence { time: dispatch.record.time(), spec: &decided.spec, context };
        let now = Timestamp::from_system_time(SystemTime::now());
        let stored = match decided.delivery {
            Delivery::NodeOnly => self.lock().record_not_emitted(&occurrence, now).map(|()| None),
            Delivery::Write(_) | Delivery::SpamFiltered => {
                self.lock().record_occurrence(&occurrence, api.as_ref(), self.api.is_some(), now)
            }
        };
        match stored {
            Ok(recorded) => {
                self.metrics.journal_appended();
                self.readiness.set_journal_failing(false);
                if let Some(path) = &self.api
                    && recorded.is_some_and(|recorded| recorded.outbox_id.is_some())
                {
                    path.wake.notify_one();
                }
            }
            Err(err) => {
                self.metrics.journal_append_failed();
                self.readiness.set_journal_failing(true);
                if let Some(suppressed) = self.warnings.allow() {
                    tracing::warn!("journal: {err}; the event is sent without being kept{suppressed}");
                }
                // Not kept, but still sent: the API server is the other place it can live.
                if let (Some(path), Some(write)) = (&self.api, api)
                    && path.fallback.try_send(write).is_err()
                {
                    self.metrics.event_dropped(DropCause::QueueFull);
                }
            }
        }
    }

    /// Keeps the journal within its limits and drops writes too old to matter.
    fn prune(&self) {
        let mut journal = self.lock();
        let now = Timestamp::from_system_time(SystemTime::now());
        match journal.prune(now) {
            Ok(pruned) => {
                self.metrics.journal_pruned(PruneReason::MaxAge, pruned.by_age);
                self.metrics.journal_pruned(PruneReason::MaxBytes, pruned.by_size);
            }
            Err(err) => tracing::warn!("journal: {err}"),
        }
        match journal.drop_expired(DEFAULT_OUTBOX_MAX_AGE, now) {
            Ok(expired) => (0..expired).for_each(|_| self.metrics.event_dropped(DropCause::Expired)),
            Err(err) => tracing::warn!("journal: {err}"),
        }
        if let Ok(bytes) = journal.used_bytes() {
            self.metrics.set_journal_size(bytes);
        }
    }
}

impl Handler for JournalHandler {
    fn name(&self) -> &str {
        "journal"
    }

    fn handle(&mut self, dispatch: &Dispatch) {
        let records = json!([dispatch.record]);
        for decided in &dispatch.events {
            self.store(&records, dispatch, decided);
        }
    }

    fn drain_on_stop(&self) -> Option<Duration> {
        Some(DRAIN_ON_STOP)
    }

    fn tick(&mut self) {
        // Appends grow the outbox and deliveries shrink it: one count per tick keeps the gauge
        // current without a count on every append.
        if self.api.is_some()
            && let Ok(pending) = self.lock().outbox_len()
        {
            self.metrics.set_outbox_pending(pending);
        }
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.prune();
            self.last_prune = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        record::{CgroupChange, Identity, Record},
        recorder::{Decision, EventSpec, EventType},
        sinks::{
            Verb,
            journal::{
                JournalConfig, SCHEMA_V2_FOR_TESTS,
                tests::{TempDir, at, pod, recorder},
            },
        },
    };

    fn dispatch(message: &str) -> Dispatch {
        let record = Record::CgroupMkdir(Box::new(CgroupChange {
            time: Timestamp(0),
            cgroup_id: 1,
            cgroup_path: "/x".into(),
            identity: Identity::default(),
        }));
        let spec = EventSpec::new(pod("shop", "web-0"), EventType::Warning, "OOMKilling", message);
        let Decision::Write(write) = recorder().record(spec.clone(), at(0)) else { panic!("spam-filtered") };
        Dispatch::new(record, vec![Decided { spec, delivery: Delivery::Write(write) }])
    }

    #[test]
    fn a_journal_that_cannot_store_still_sends_the_write_and_is_not_ready_until_it_can() {
        let dir = TempDir::new("failing");
        let journal = Journal::open(dir.path(), JournalConfig::default()).unwrap();
        // Damage it the way a full or broken disk would show: statements fail.
        journal.conn.execute_batch("DROP TABLE occurrences").unwrap();
        let journal = Arc::new(Mutex::new(journal));
        let (fallback, mut sent) = mpsc::channel(4);
        let readiness = Readiness::new();
        readiness.set_ready(true);
        let metrics = Arc::new(Metrics::new("test"));
        let api = ApiPath { wake: Arc::new(Notify::new()), fallback };
        let mut handler = JournalHandler::new(Arc::clone(&journal), Some(api), Arc::clone(&metrics), readiness.clone());

        handler.handle(&dispatch("killed process 7"));
        assert!(!readiness.is_ready());
        let write = sent.try_recv().unwrap();
        assert_eq!((write.verb, write.event["message"].as_str()), (Verb::Post, Some("killed process 7")));
        let text = metrics.encode().unwrap();
        assert!(text.contains("\ncollector_journal_append_errors_total 1\n"), "{text}");
        assert_eq!(journal.lock().unwrap().outbox_len().unwrap(), 0);

        // Repaired, the next store succeeds: kept, queued, and ready again.
        journal.lock().unwrap().conn.execute_batch(SCHEMA_V2_FOR_TESTS).unwrap();
        handler.handle(&dispatch("killed process 8"));
        assert!(readiness.is_ready());
        assert!(sent.try_recv().is_err());
        assert_eq!(journal.lock().unwrap().outbox_len().unwrap(), 1);
    }
}
