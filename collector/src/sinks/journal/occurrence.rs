//! Occurrences: every event the kernel caused, one row each, stored before client-go's
//! aggregation and spam filter decide what reaches the API server. `collector events` lists
//! these, so a storm is counted exactly when its history matters most; the `events` table keeps
//! the API writes, which each occurrence names.

use rusqlite::{Row, Transaction, params};
use serde::Serialize;
use serde_json::Value;

use super::{
    JournalError, JournalReader, Recorded,
    read::Query,
    schema,
    write::{EventContext, Journal},
};
use crate::{
    clock::Timestamp,
    recorder::{DEFAULT_NAMESPACE, EventSpec},
    sinks::ApiWrite,
};

/// One event the kernel caused, as the collector decided it, before the recorder's aggregation
/// and spam filter.
#[derive(Clone, Copy, Debug)]
pub struct Occurrence<'a> {
    /// When it happened: the kernel record's time.
    pub time: Timestamp,
    /// The event: object, type, reason and message.
    pub spec: &'a EventSpec,
    /// The container and the kernel records behind it.
    pub context: EventContext<'a>,
}

/// What became of an occurrence on its way to the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiOutcome {
    /// Its write (a POST, or a PATCH of an earlier event's count) waits in the outbox.
    Queued,
    /// client-go's spam filter dropped it: 25 events per object, one more every 5 minutes.
    SpamFiltered,
    /// No API sink is configured; the write was kept in the journal only.
    Local,
    /// A Normal container end, which goes to the API server only with `--emit-normal-exits`.
    NotEmitted,
}

impl ApiOutcome {
    /// The stored spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::SpamFiltered => "spam_filtered",
            Self::Local => "local",
            Self::NotEmitted => "not_emitted",
        }
    }
}

/// An occurrence as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOccurrence {
    /// Row id: the order occurrences were stored in.
    pub id: i64,
    /// When it happened.
    pub time: Timestamp,
    /// The namespace its event lives in (`default` for a Node's).
    pub namespace: String,
    /// `reason`.
    pub reason: String,
    /// `type`: Normal or Warning.
    pub event_type: String,
    /// Its own message (not an aggregated one).
    pub message: String,
    /// involvedObject.kind.
    pub object_kind: String,
    /// involvedObject.name.
    pub object_name: String,
    /// The whole involvedObject (JSON text).
    pub object: String,
    /// The container, when known.
    pub container: Option<String>,
    /// What became of it: `queued`, `spam_filtered` or `local`.
    pub api: String,
    /// The name of the API event it was written as (a new one, or a repeat's PATCH).
    pub event_name: Option<String>,
    /// The kernel records behind it (JSON text).
    pub records: String,
    /// When it was stored.
    pub stored_at: Timestamp,
}

/// How many times one object's container met one reason, over the queried window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRow {
    /// The event's namespace.
    pub namespace: String,
    /// involvedObject.kind.
    pub object_kind: String,
    /// involvedObject.name.
    pub object_name: String,
    /// The container, when known.
    pub container: Option<String>,
    /// `reason`.
    pub reason: String,
    /// `type`.
    pub event_type: String,
    /// Occurrences.
    pub count: u64,
    /// How many of them the spam filter kept from the API server.
    pub spam_filtered: u64,
    /// The first one's time.
    pub first: Timestamp,
    /// The last one's time.
    pub last: Timestamp,
}

const COLUMNS: &str = "id, ts, namespace, reason, type, message, object_kind, object_name, object, \
                       container, api, event_name, records, stored_at";
const FILTER: &str = "(?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR (object_kind = 'Pod' AND object_name = ?2)) \
                      AND (?3 IS NULL OR reason = ?3) AND (?4 IS NULL OR ts >= ?4)";

impl Journal {
    /// Stores `occurrence`, which does not go to the API server at all (a Normal container end
    /// without `--emit-normal-exits`), so that the node's history has every death.
    pub fn record_not_emitted(&mut self, occurrence: &Occurrence<'_>, now: Timestamp) -> Result<(), JournalError> {
        let (object, records) = encode(occurrence)?;
        self.transaction("store an occurrence", |tx, path| {
            insert(tx, path, occurrence, ApiOutcome::NotEmitted, None, &object, &records, now)
        })
    }

    /// Stores `occurrence` and, for a write the recorder decided on, its API event (a repeat
    /// updates the earlier row) and, if `enqueue`, the write in the outbox: all in one
    /// transaction. `write` is `None` exactly when the spam filter dropped it.
    pub fn record_occurrence(
        &mut self,
        occurrence: &Occurrence<'_>,
        write: Option<&ApiWrite>,
        enqueue: bool,
        now: Timestamp,
    ) -> Result<Option<Recorded>, JournalError> {
        let outcome = match write {
            None => ApiOutcome::SpamFiltered,
            Some(_) if enqueue => ApiOutcome::Queued,
            Some(_) => ApiOutcome::Local,
        };
        let (object, records) = encode(occurrence)?;
        let prepared = write.map(|write| Self::prepare(write, &occurrence.context)).transpose()?;
        self.transaction("store an occurrence", |tx, path| {
            insert(tx, path, occurrence, outcome, write.map(|w| w.name.as_str()), &object, &records, now)?;
            prepared
                .map(|prepared| Self::store_prepared(tx, path, &prepared, now, outcome == ApiOutcome::Queued))
                .transpose()
        })
    }
}

/// The occurrence's object reference and records as stored (JSON text).
fn encode(occurrence: &Occurrence<'_>) -> Result<(String, String), JournalError> {
    let fail = |source| JournalError::Encode { name: occurrence.spec.reason.clone(), source };
    let object = serde_json::to_string(&occurrence.spec.involved_object).map_err(fail)?;
    let records = serde_json::to_string(occurrence.context.records).map_err(fail)?;
    Ok((object, records))
}

#[expect(clippy::too_many_arguments, reason = "one row's columns, named at each call site")]
fn insert(
    tx: &Transaction<'_>,
    path: &std::path::Path,
    occurrence: &Occurrence<'_>,
    outcome: ApiOutcome,
    event_name: Option<&str>,
    object: &str,
    records: &str,
    now: Timestamp,
) -> Result<(), JournalError> {
    let spec = occurrence.spec;
    let reference = &spec.involved_object;
    let namespace = if reference.namespace.is_empty() { DEFAULT_NAMESPACE } else { &reference.namespace };
    tx.prepare_cached(
        "INSERT INTO occurrences (ts, namespace, reason, type, message, object_kind, object_name, object, \
         container, api, event_name, records, stored_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            occurrence.time.unix_nanos(),
            namespace,
            spec.reason,
            spec.event_type.as_str(),
            spec.message,
            reference.kind,
            reference.name,
            object,
            occurrence.context.container,
            outcome.as_str(),
            event_name,
            records,
            now.unix_nanos(),
        ])
    })
    .map_err(|source| schema::classify(path, "store an occurrence", source))?;
    Ok(())
}

impl JournalReader {
    /// Calls `visit` with each matching occurrence, oldest first, one row in memory at a time;
    /// returns how many were visited.
    pub fn scan_occurrences<E: From<JournalError>>(
        &self,
        query: &Query,
        mut visit: impl FnMut(StoredOccurrence) -> Result<(), E>,
    ) -> Result<u64, E> {
        let fail = |source| schema::classify(self.path(), "read occurrences", source);
        let sql = match query.limit {
            None => format!("SELECT {COLUMNS} FROM occurrences WHERE {FILTER} ORDER BY ts, id"),
            Some(_) => format!(
                "SELECT * FROM (SELECT {COLUMNS} FROM occurrences WHERE {FILTER} \
                 ORDER BY ts DESC, id DESC LIMIT ?5) ORDER BY ts, id"
            ),
        };
        let mut stmt = self.conn().prepare(&sql).map_err(fail)?;
        let since = query.since.map(Timestamp::unix_nanos);
        let limit = query.limit.map(|limit| i64::try_from(limit).unwrap_or(i64::MAX));
        let mut rows = match limit {
            None => stmt.query(params![query.namespace, query.pod, query.reason, since]),
            Some(limit) => stmt.query(params![query.namespace, query.pod, query.reason, since, limit]),
        }
        .map_err(fail)?;
        let mut visited = 0_u64;
        while let Some(row) = rows.next().map_err(fail)? {
            visit(stored(row).map_err(fail)?)?;
            visited += 1;
        }
        Ok(visited)
    }

    /// Counts of the matching occurrences per namespace, object, container, reason and type,
    /// ordered by namespace, object, container and reason. `limit` does not apply.
    pub fn summary(&self, query: &Query) -> Result<Vec<SummaryRow>, JournalError> {
        let fail = |source| schema::classify(self.path(), "summarise occurrences", source);
        let sql = format!(
            "SELECT namespace, object_kind, object_name, container, reason, type, count(*), \
             sum(api = 'spam_filtered'), min(ts), max(ts) FROM occurrences WHERE {FILTER} \
             GROUP BY namespace, object_kind, object_name, container, reason, type \
             ORDER BY namespace, object_kind, object_name, container, reason, type"
        );
        let mut stmt = self.conn().prepare(&sql).map_err(fail)?;
        let since = query.since.map(Timestamp::unix_nanos);
        let rows = stmt
            .query_map(params![query.namespace, query.pod, query.reason, since], |row| {
                Ok(SummaryRow {
                    namespace: row.get(0)?,
                    object_kind: row.get(1)?,
                    object_name: row.get(2)?,
                    container: row.get(3)?,
                    reason: row.get(4)?,
                    event_type: row.get(5)?,
                    count: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
                    spam_filtered: u64::try_from(row.get::<_, i64>(7)?).unwrap_or(0),
                    first: Timestamp::from_unix_nanos(row.get(8)?),
                    last: Timestamp::from_unix_nanos(row.get(9)?),
                })
            })
            .map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }
}

fn stored(row: &Row<'_>) -> rusqlite::Result<StoredOccurrence> {
    Ok(StoredOccurrence {
        id: row.get(0)?,
        time: Timestamp::from_unix_nanos(row.get(1)?),
        namespace: row.get(2)?,
        reason: row.get(3)?,
        event_type: row.get(4)?,
        message: row.get(5)?,
        object_kind: row.get(6)?,
        object_name: row.get(7)?,
        object: row.get(8)?,
        container: row.get(9)?,
        api: row.get(10)?,
        event_name: row.get(11)?,
        records: row.get(12)?,
        stored_at: Timestamp::from_unix_nanos(row.get(13)?),
    })
}

/// The occurrence's records as JSON, or `Value::Null` if the stored text is damaged.
pub fn records_of(stored: &StoredOccurrence) -> Value {
    serde_json::from_str(&stored.records).unwrap_or(Value::Null)
}
