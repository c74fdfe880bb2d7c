//! The journal's outbox as the Kubernetes sink's source of pending writes.

use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::sinks::{
    ApiWrite,
    journal::{Journal, JournalError},
    kubernetes::{Outbox, Outcome},
};

/// Errors reading or updating the outbox.
#[derive(Debug, Error)]
pub enum OutboxError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A previous holder of the journal's lock panicked.
    #[error("the journal's lock is poisoned")]
    Poisoned,
}

/// The journal, shared between the record loop (which writes) and the sink (which delivers).
#[derive(Clone)]
pub struct JournalOutbox {
    journal: Arc<Mutex<Journal>>,
}

impl JournalOutbox {
    /// Shares `journal`.
    pub const fn new(journal: Arc<Mutex<Journal>>) -> Self {
        Self { journal }
    }
}

impl Outbox for JournalOutbox {
    type Error = OutboxError;

    async fn next_batch(&self, after: Option<i64>, limit: usize) -> Result<Vec<(i64, ApiWrite)>, Self::Error> {
        let mut journal = self.journal.lock().map_err(|_| OutboxError::Poisoned)?;
        Ok(journal.outbox_after(after, limit)?.into_iter().map(|pending| (pending.id, pending.write)).collect())
    }

    fn mark_done(&self, id: i64, _outcome: Outcome) -> Result<(), Self::Error> {
        let mut journal = self.journal.lock().map_err(|_| OutboxError::Poisoned)?;
        journal.mark_delivered(id)?;
        Ok(())
    }
}
