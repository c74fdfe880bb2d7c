//! The journal as a [`Handler`]: each occurrence, with its API write and outbox entry, is
//! committed on the handler's own thread, and pruning runs there too, so SQLite never holds up
//! the ring reader.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use serde_json::json;
use tokio::sync::Notify;

use super::{DEFAULT_OUTBOX_MAX_AGE, EventContext, Journal, Occurrence};
use crate::{
    recorder::Timestamp,
    sinks::{
        ApiWrite,
        handler::{Decided, Dispatch, Handler},
    },
    telemetry::{DropCause, Metrics, PruneReason},
};

/// How often the journal is pruned and undeliverable old writes dropped.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Stores occurrences and queues their writes for the API server.
pub struct JournalHandler {
    journal: Arc<Mutex<Journal>>,
    /// Whether writes go to the outbox (an API sink runs), woken through `wake`.
    enqueue: bool,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    last_prune: Instant,
}

impl JournalHandler {
    /// A handler storing into `journal`; with `enqueue`, writes go to its outbox and `wake`
    /// tells the API sink.
    pub fn new(journal: Arc<Mutex<Journal>>, enqueue: bool, wake: Arc<Notify>, metrics: Arc<Metrics>) -> Self {
        Self { journal, enqueue, wake, metrics, last_prune: Instant::now() }
    }

    fn lock(&self) -> MutexGuard<'_, Journal> {
        super::lock(&self.journal)
    }

    fn store(&self, records: &serde_json::Value, dispatch: &Dispatch, decided: &Decided) {
        let api = match decided.write.as_ref().map(ApiWrite::try_from).transpose() {
            Ok(api) => api,
            Err(err) => {
                log::warn!("cannot encode an event: {err}");
                return;
            }
        };
        let context = EventContext { container: dispatch.record.identity().container_name.as_deref(), records };
        let occurrence =
            Occurrence { time: Timestamp::from_unix_nanos(dispatch.record.time().0), spec: &decided.spec, context };
        let now = Timestamp::from_system_time(SystemTime::now());
        let stored = self.lock().record_occurrence(&occurrence, api.as_ref(), self.enqueue, now);
        match stored {
            Ok(recorded) => {
                self.metrics.journal_appended();
                if recorded.is_some_and(|recorded| recorded.outbox_id.is_some()) {
                    self.wake.notify_one();
                }
            }
            Err(err) => {
                self.metrics.journal_append_failed();
                log::warn!("journal: {err}");
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
            Err(err) => log::warn!("journal: {err}"),
        }
        match journal.drop_expired(DEFAULT_OUTBOX_MAX_AGE, now) {
            Ok(expired) => (0..expired).for_each(|_| self.metrics.event_dropped(DropCause::Expired)),
            Err(err) => log::warn!("journal: {err}"),
        }
        if let Ok(bytes) = journal.used_bytes() {
            self.metrics.set_journal_size(bytes);
        }
    }
}

impl Handler for JournalHandler {
    fn name(&self) -> &'static str {
        "journal"
    }

    fn handle(&mut self, dispatch: &Dispatch) {
        let records = json!([dispatch.record]);
        for decided in &dispatch.events {
            self.store(&records, dispatch, decided);
        }
    }

    fn tick(&mut self) {
        // Appends grow the outbox and deliveries shrink it: one count per tick keeps the gauge
        // current without a count on every append.
        if self.enqueue
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
