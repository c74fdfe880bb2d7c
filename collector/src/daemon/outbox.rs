//! The journal's outbox as the Kubernetes sink's source of pending writes.

use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::sinks::{
    ApiWrite,
    journal::{Journal, JournalError, lock},
    kubernetes::{Outbox, Outcome},
};

/// Errors reading or updating the outbox.
#[derive(Debug, Error)]
pub enum OutboxError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The blocking read of the outbox panicked.
    #[error("reading the outbox panicked")]
    Panicked,
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

    /// Read off the event loop: the journal handler may hold the journal for a commit.
    async fn next_batch(&self, after: Option<i64>, limit: usize) -> Result<Vec<(i64, ApiWrite)>, Self::Error> {
        let journal = Arc::clone(&self.journal);
        let read = tokio::task::spawn_blocking(move || lock(&journal).outbox_after(after, limit));
        let pending = read.await.map_err(|_| OutboxError::Panicked)??;
        Ok(pending.into_iter().map(|pending| (pending.id, pending.write)).collect())
    }

    fn mark_done(&self, id: i64, _outcome: Outcome) -> Result<(), Self::Error> {
        lock(&self.journal).mark_delivered(id)?;
        Ok(())
    }
}
