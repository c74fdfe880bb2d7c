//! The read side: `collector events` opens the journal read-only and streams matching rows.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, Row};

use super::{JournalError, journal_path, schema};
use crate::clock::Timestamp;

/// Which events to read. Every filter is exact; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Events in this namespace.
    pub namespace: Option<String>,
    /// Events about the Pod of this name.
    pub pod: Option<String>,
    /// Events with this reason.
    pub reason: Option<String>,
    /// Events last seen at or after this instant.
    pub since: Option<Timestamp>,
    /// Only the most recent this many (still delivered oldest first).
    pub limit: Option<u64>,
}

/// One journaled event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Row id: insertion order of the first occurrence.
    pub id: i64,
    /// The event's namespace.
    pub namespace: String,
    /// The event object's name.
    pub name: String,
    /// `reason`.
    pub reason: String,
    /// `type`: Normal or Warning.
    pub event_type: String,
    /// `message` of the latest occurrence, unescaped.
    pub message: String,
    /// involvedObject.kind, e.g. `Pod` or `Node`.
    pub object_kind: String,
    /// involvedObject.name.
    pub object_name: String,
    /// The pod's name when the event is about a Pod.
    pub pod_name: Option<String>,
    /// The pod's UID when the event is about a Pod.
    pub pod_uid: Option<String>,
    /// The container, when known.
    pub container: Option<String>,
    /// The reporting node (`source.host`).
    pub node: Option<String>,
    /// `count` as last written.
    pub count: i64,
    /// `firstTimestamp`.
    pub first_timestamp: Timestamp,
    /// `lastTimestamp` of the latest occurrence.
    pub last_timestamp: Timestamp,
    /// The whole event as last written (core/v1 JSON text).
    pub event: String,
    /// The resolved kernel record(s) of the latest occurrence (JSON text).
    pub records: String,
    /// When the row was last written.
    pub stored_at: Timestamp,
}

const COLUMNS: &str = "id, namespace, name, reason, type, message, object_kind, object_name, \
                       pod_name, pod_uid, container, node, count, first_ts, last_ts, event, \
                       records, stored_at";
const FILTER: &str = "(?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR pod_name = ?2) \
                      AND (?3 IS NULL OR reason = ?3) AND (?4 IS NULL OR last_ts >= ?4)";

/// A read-only connection to a journal; any number may be open while the daemon writes.
pub struct JournalReader {
    conn: Connection,
    path: PathBuf,
}

impl JournalReader {
    /// Opens `<state_dir>/journal.db` read-only.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        Self::open_file(&journal_path(state_dir))
    }

    /// Opens the journal at exactly `path` read-only; [`JournalError::Missing`] when there is
    /// no such file.
    pub fn open_file(path: &Path) -> Result<Self, JournalError> {
        Ok(Self { conn: schema::open_reader(path)?, path: path.to_owned() })
    }

    /// The connection, for the other read modules.
    pub(super) const fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `body` on one consistent snapshot: every scan inside sees the same rows even while
    /// the daemon writes. Snapshots do not nest.
    pub fn snapshot<T, E: From<JournalError>>(&self, body: impl FnOnce(&Self) -> Result<T, E>) -> Result<T, E> {
        let fail = |source| schema::classify(&self.path, "begin a read snapshot", source);
        let tx = self.conn.unchecked_transaction().map_err(fail)?;
        let value = body(self)?;
        tx.commit().map_err(fail)?;
        Ok(value)
    }

    /// Calls `visit` with each matching event, oldest (by last seen) first, one row in memory
    /// at a time; returns how many were visited.
    pub fn scan<E: From<JournalError>>(
        &self,
        query: &Query,
        mut visit: impl FnMut(StoredEvent) -> Result<(), E>,
    ) -> Result<u64, E> {
        let fail = |source| schema::classify(&self.path, "read events", source);
        let sql = match query.limit {
            None => format!("SELECT {COLUMNS} FROM events WHERE {FILTER} ORDER BY last_ts, id"),
            Some(_) => format!(
                "SELECT * FROM (SELECT {COLUMNS} FROM events WHERE {FILTER} \
                 ORDER BY last_ts DESC, id DESC LIMIT ?5) ORDER BY last_ts, id"
            ),
        };
        let mut stmt = self.conn.prepare(&sql).map_err(fail)?;
        let since = query.since.map(Timestamp::unix_nanos);
        let mut rows = match query.limit {
            None => stmt.query(rusqlite::params![query.namespace, query.pod, query.reason, since]),
            Some(limit) => stmt.query(rusqlite::params![
                query.namespace,
                query.pod,
                query.reason,
                since,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ]),
        }
        .map_err(fail)?;
        let mut visited = 0_u64;
        while let Some(row) = rows.next().map_err(fail)? {
            visit(stored_event(row).map_err(fail)?)?;
            visited += 1;
        }
        Ok(visited)
    }
}

fn stored_event(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: row.get(0)?,
        namespace: row.get(1)?,
        name: row.get(2)?,
        reason: row.get(3)?,
        event_type: row.get(4)?,
        message: row.get(5)?,
        object_kind: row.get(6)?,
        object_name: row.get(7)?,
        pod_name: row.get(8)?,
        pod_uid: row.get(9)?,
        container: row.get(10)?,
        node: row.get(11)?,
        count: row.get(12)?,
        first_timestamp: Timestamp::from_unix_nanos(row.get(13)?),
        last_timestamp: Timestamp::from_unix_nanos(row.get(14)?),
        event: row.get(15)?,
        records: row.get(16)?,
        stored_at: Timestamp::from_unix_nanos(row.get(17)?),
    })
}
