//! The local event journal: every event the kernel caused (an occurrence, before client-go's
//! aggregation and spam filter) and every event written to the API server, kept on the node in
//! SQLite long after the API server's one-hour event TTL, plus the outbox of API writes that
//! the Kubernetes sink has not delivered yet.
//!
//! One writer (the daemon, [`Journal`]) and any number of readers (`collector events`,
//! [`JournalReader`]) share `<state-dir>/journal.db` in WAL mode, so readers never block the
//! writer. The event row and its outbox entry are written in one transaction: after a crash
//! either both exist or neither does.
//!
//! Durability: `synchronous = NORMAL`. In WAL mode a commit then reaches the kernel's page
//! cache before `record` returns, so a SIGKILL or OOM kill of the daemon loses nothing; a power
//! loss or kernel crash may lose the last commits since the previous checkpoint, but never
//! corrupts the file. `FULL` would fsync the WAL on every event, which costs an order of
//! magnitude in insert rate exactly when events come in bursts (OOM storms).

mod handler;
mod occurrence;
mod read;
mod schema;
mod time;
mod write;

#[cfg(test)]
pub(crate) mod tests;

/// The statements that create version 2's table, to repair a journal a test broke.
#[cfg(test)]
pub(crate) const SCHEMA_V2_FOR_TESTS: &str = schema::SCHEMA_V2;

use std::{io, path::PathBuf, time::Duration};

pub use handler::{ApiPath, JournalHandler, PRUNE_EVERY};
pub use occurrence::{ApiOutcome, Occurrence, StoredOccurrence, SummaryRow, records_of};
pub use read::{JournalReader, Query, StoredEvent};
pub use write::{EventContext, Journal, Pending, Pruned, Recorded, RowChange};

/// Where the daemon keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/collector";
/// File name of the journal inside the state directory.
pub const JOURNAL_FILE: &str = "journal.db";
/// Events whose last occurrence is older than this are pruned: a day of history, 24 times
/// the API server's default event TTL, in 64 MiB at most ([`DEFAULT_MAX_BYTES`]). The one
/// default of `journal.max_age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Pages in use beyond this many bytes are pruned, oldest events first. The one default of
/// `journal.max_bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Undelivered writes older than this are dropped: the API server's default `--event-ttl`
/// would expire them anyway.
pub const DEFAULT_OUTBOX_MAX_AGE: Duration = Duration::from_secs(3600);
/// The schema this code writes and reads.
pub const SCHEMA_VERSION: i64 = 2;

/// A journal shared between threads, also after a panic elsewhere while it was held: every
/// change is a transaction, which SQLite rolled back, so what is left is consistent (a poisoned
/// lock must not stop the journal for good).
pub fn lock(journal: &std::sync::Mutex<Journal>) -> std::sync::MutexGuard<'_, Journal> {
    journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `<state_dir>/journal.db`.
pub fn journal_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join(JOURNAL_FILE)
}

/// Bounds of the journal; [`JournalConfig::default`] gives the documented defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// Events last seen longer ago than this are pruned.
    pub max_age: Duration,
    /// Pruning deletes the oldest events until the pages in use fit in this many bytes
    /// (the WAL, at most [`WAL_SIZE_LIMIT`] after a checkpoint, comes on top).
    pub max_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self { max_age: DEFAULT_MAX_AGE, max_bytes: DEFAULT_MAX_BYTES }
    }
}

/// The WAL is truncated to this size after a checkpoint.
pub const WAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

/// Errors of the journal. Each names the journal file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A reader found no journal file.
    #[error("no event journal at {}", path.display())]
    Missing {
        /// The file looked for.
        path: PathBuf,
    },
    /// A reader found a journal file that the daemon has not initialised yet.
    #[error("the event journal {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// SQLite could not open the file at all (permissions, missing directory).
    #[error("cannot open the event journal {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is not an SQLite database, or its pages are damaged.
    #[error(
        "{} is corrupt or not an SQLite database ({source}); move it aside and the daemon \
         starts a new journal",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite reported.
        #[source]
        source: rusqlite::Error,
    },
    /// The file passed SQLite's integrity check but its pages are damaged.
    #[error(
        "{} is corrupt (integrity check: {report}); move it aside and the daemon starts a new \
         journal",
        path.display()
    )]
    IntegrityCheck {
        /// The file.
        path: PathBuf,
        /// The first line of `PRAGMA quick_check`.
        report: String,
    },
    /// The file is an SQLite database of some other program.
    #[error(
        "{} is an SQLite database but not a collector event journal (application_id {application_id:#010x})",
        path.display()
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// The database's `PRAGMA application_id`.
        application_id: i32,
    },
    /// The journal was written by a newer collector.
    #[error(
        "the event journal {} has schema version {found}; this collector understands up to {}",
        path.display(),
        SCHEMA_VERSION
    )]
    UnsupportedSchema {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// A reader found a journal of an older schema, which only the daemon upgrades.
    #[error(
        "the event journal {} has schema version {found}; the collector daemon of this version \
         upgrades it to {} when it starts",
        path.display(),
        SCHEMA_VERSION
    )]
    OldSchema {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// SQLite refused WAL mode (e.g. the file system lacks shared memory support).
    #[error("the event journal {} cannot use WAL mode (got journal_mode {mode})", path.display())]
    NoWal {
        /// The file.
        path: PathBuf,
        /// The mode SQLite kept.
        mode: String,
    },
    /// An SQLite statement failed.
    #[error("event journal {}: {operation} failed: {source}", path.display())]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// What was being done, e.g. `store event`.
        operation: &'static str,
        /// What SQLite reported.
        #[source]
        source: rusqlite::Error,
    },
    /// A write's event JSON lacks a field the journal indexes.
    #[error("event {namespace}/{name} has no valid {field}; not journaled")]
    MalformedEvent {
        /// Event namespace as given.
        namespace: String,
        /// Event name as given.
        name: String,
        /// The JSON field at fault, e.g. `lastTimestamp`.
        field: &'static str,
    },
    /// Encoding a write as JSON failed.
    #[error("cannot encode event {name} as JSON: {source}")]
    Encode {
        /// Event name.
        name: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}
