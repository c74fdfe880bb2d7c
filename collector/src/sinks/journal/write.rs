//! The daemon's side: storing events, the outbox, and keeping the file bounded.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, Transaction, params};
use serde_json::Value;

use super::{
    JournalConfig, JournalError, journal_path, schema,
    time::{before, parse_rfc3339},
};
use crate::{clock::Timestamp, sinks::ApiWrite};

/// Rows deleted per statement when pruning for size, so one prune never holds the write lock for
/// long and never builds a huge statement journal.
const PRUNE_BATCH: i64 = 512;

/// What the journal keeps beside the event itself.
#[derive(Clone, Copy, Debug)]
pub struct EventContext<'a> {
    /// The container the event is about; when `None`, taken from an involvedObject fieldPath
    /// of the form `spec.containers{NAME}`.
    pub container: Option<&'a str>,
    /// The resolved kernel record(s) that caused the event, as JSON (usually an array).
    pub records: &'a Value,
}

impl EventContext<'static> {
    /// No container and no kernel records.
    pub const NONE: Self = Self { container: None, records: &Value::Null };
}

/// Whether an event became a new row or updated the row of an earlier occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowChange {
    /// First time this event (namespace + name) was stored.
    Appended,
    /// A repeat: count, lastTimestamp, message and records of the existing row were replaced.
    Updated,
}

/// Outcome of [`Journal::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// What happened to the event row.
    pub row: RowChange,
    /// The outbox id of the write, if it was enqueued.
    pub outbox_id: Option<i64>,
}

/// A write waiting for the Kubernetes sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Pass to [`Journal::mark_delivered`]; increases with every enqueue, never reused.
    pub id: i64,
    /// The write to make.
    pub write: ApiWrite,
    /// When it was enqueued.
    pub enqueued_at: Timestamp,
}

/// What [`Journal::prune`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Occurrences from before `now - max_age`.
    pub by_age: u64,
    /// Further occurrences, oldest first, deleted to fit `max_bytes`.
    pub by_size: u64,
    /// API event rows last seen before `now - max_age`.
    pub events_by_age: u64,
    /// Further API event rows, oldest first, deleted to fit `max_bytes`.
    pub events_by_size: u64,
}

/// An API write checked and encoded, ready for [`Journal::store_prepared`].
pub(super) struct Prepared<'a> {
    row: Row<'a>,
    event: String,
    records: String,
    write: &'a ApiWrite,
}

/// The writer. One per journal file: the daemon owns it; readers use [`super::JournalReader`].
/// Every call is one short transaction, synchronous (call it from a blocking context).
pub struct Journal {
    pub(super) conn: Connection,
    path: PathBuf,
    config: JournalConfig,
}

/// The columns the journal indexes, taken from the event JSON.
struct Row<'a> {
    namespace: &'a str,
    name: &'a str,
    reason: &'a str,
    event_type: &'a str,
    message: &'a str,
    object_kind: &'a str,
    object_name: &'a str,
    pod: Option<(&'a str, &'a str)>,
    container: Option<&'a str>,
    node: Option<&'a str>,
    count: i64,
    first_ts: i64,
    last_ts: i64,
}

impl Journal {
    /// Opens `<state_dir>/journal.db`, creating the directory (mode 0700) and the file if needed.
    pub fn open(state_dir: &Path, config: JournalConfig) -> Result<Self, JournalError> {
        create_state_dir(state_dir)?;
        Self::open_file(&journal_path(state_dir), config)
    }

    /// Opens (creating if needed) the journal at exactly `path`.
    pub fn open_file(path: &Path, config: JournalConfig) -> Result<Self, JournalError> {
        Ok(Self { conn: schema::open_writer(path)?, path: path.to_owned(), config })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores the event of `write` (a repeat updates its earlier row) and puts the write in the
    /// outbox, in one transaction.
    pub fn record(
        &mut self,
        write: &ApiWrite,
        context: &EventContext<'_>,
        now: Timestamp,
    ) -> Result<Recorded, JournalError> {
        self.store(write, context, now, true)
    }

    /// Stores the event of `write` without enqueueing it (no API sink configured).
    pub fn record_local(
        &mut self,
        write: &ApiWrite,
        context: &EventContext<'_>,
        now: Timestamp,
    ) -> Result<Recorded, JournalError> {
        self.store(write, context, now, false)
    }

    /// Puts only `write` in the outbox; returns its id.
    pub fn enqueue(&mut self, write: &ApiWrite, now: Timestamp) -> Result<i64, JournalError> {
        self.transaction("enqueue", |tx, path| insert_outbox(tx, path, write, now))
    }

    /// Up to `limit` undelivered writes, oldest first. Rows that no longer decode are deleted
    /// and logged so they cannot block the queue.
    pub fn outbox(&mut self, limit: usize) -> Result<Vec<Pending>, JournalError> {
        self.outbox_after(None, limit)
    }

    /// Like [`Self::outbox`], but only writes queued after the one with id `after`.
    pub fn outbox_after(&mut self, after: Option<i64>, limit: usize) -> Result<Vec<Pending>, JournalError> {
        self.read_outbox(after.unwrap_or(0), limit)
    }

    /// Undelivered writes.
    pub fn outbox_len(&self) -> Result<u64, JournalError> {
        self.conn
            .query_row("SELECT count(*) FROM outbox", [], |row| row.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|source| schema::classify(&self.path, "count the outbox", source))
    }

    /// Removes a delivered write from the outbox; false when it was not there (already
    /// delivered or expired).
    pub fn mark_delivered(&mut self, id: i64) -> Result<bool, JournalError> {
        let result = self
            .conn
            .execute("DELETE FROM outbox WHERE id = ?1", [id])
            .map_err(|source| schema::classify(&self.path, "mark delivered", source));
        Ok(result? > 0)
    }

    /// Drops undelivered writes enqueued before `now - max_age` (use
    /// [`super::DEFAULT_OUTBOX_MAX_AGE`]: the API server would have expired them); returns how
    /// many.
    pub fn drop_expired(&mut self, max_age: Duration, now: Timestamp) -> Result<u64, JournalError> {
        let result = self
            .conn
            .execute("DELETE FROM outbox WHERE enqueued_at < ?1", [before(now, max_age)])
            .map_err(|source| schema::classify(&self.path, "drop expired writes", source));
        Ok(to_u64(result?))
    }

    /// Deletes occurrences and API events from before `now - max_age`, then the oldest of either
    /// until the pages in use fit `max_bytes`, and returns freed pages to the file system.
    pub fn prune(&mut self, now: Timestamp) -> Result<Pruned, JournalError> {
        self.prune_inner(now)
    }

    /// Bytes of the pages in use (the file minus its free pages; the WAL not included).
    pub fn used_bytes(&self) -> Result<u64, JournalError> {
        used_bytes(&self.conn, &self.path)
    }

    pub(super) fn transaction<T>(
        &mut self,
        operation: &'static str,
        body: impl FnOnce(&Transaction<'_>, &Path) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let path = &self.path;
        let tx = self.conn.transaction().map_err(|source| schema::classify(path, operation, source))?;
        let value = body(&tx, path)?;
        tx.commit().map_err(|source| schema::classify(path, operation, source))?;
        Ok(value)
    }

    fn store(
        &mut self,
        write: &ApiWrite,
        context: &EventContext<'_>,
        now: Timestamp,
        enqueue: bool,
    ) -> Result<Recorded, JournalError> {
        let prepared = Self::prepare(write, context)?;
        let recorded =
            self.transaction("store event", |tx, path| Self::store_prepared(tx, path, &prepared, now, enqueue))?;
        Ok(recorded)
    }

    /// Checks and encodes `write` before a transaction begins.
    pub(super) fn prepare<'a>(write: &'a ApiWrite, context: &EventContext<'a>) -> Result<Prepared<'a>, JournalError> {
        Ok(Prepared {
            row: Row::of(write, context)?,
            event: encode(&write.name, &write.event)?,
            records: encode(&write.name, context.records)?,
            write,
        })
    }

    /// Stores the event of a prepared write (a repeat updates its row) and, if `enqueue`, puts
    /// the write in the outbox, inside the caller's transaction.
    pub(super) fn store_prepared(
        tx: &Transaction<'_>,
        path: &Path,
        prepared: &Prepared<'_>,
        now: Timestamp,
        enqueue: bool,
    ) -> Result<Recorded, JournalError> {
        let row = upsert(tx, path, &prepared.row, &prepared.event, &prepared.records, now)?;
        let outbox_id = if enqueue { Some(insert_outbox(tx, path, prepared.write, now)?) } else { None };
        Ok(Recorded { row, outbox_id })
    }

    fn read_outbox(&mut self, after: i64, limit: usize) -> Result<Vec<Pending>, JournalError> {
        let path = &self.path;
        let fail = |source| schema::classify(path, "read the outbox", source);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut pending = Vec::new();
        let mut malformed = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT id, enqueued_at, write FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2")
                .map_err(fail)?;
            let mut rows = stmt.query([after, limit]).map_err(fail)?;
            while let Some(row) = rows.next().map_err(fail)? {
                let id: i64 = row.get(0).map_err(fail)?;
                let enqueued_at: i64 = row.get(1).map_err(fail)?;
                let text: String = row.get(2).map_err(fail)?;
                match serde_json::from_str::<ApiWrite>(&text) {
                    Ok(write) => {
                        pending.push(Pending { id, write, enqueued_at: Timestamp::from_unix_nanos(enqueued_at) })
                    }
                    Err(_) => malformed.push(id),
                }
            }
        }
        for id in malformed {
            self.conn
                .execute("DELETE FROM outbox WHERE id = ?1", [id])
                .map_err(|source| schema::classify(&self.path, "drop a malformed write", source))?;
            // Only a corrupted file or a build that wrote another format leaves one behind.
            tracing::warn!("journal {}: dropped outbox write {id}, which no longer decodes", self.path.display());
        }
        Ok(pending)
    }

    fn prune_inner(&mut self, now: Timestamp) -> Result<Pruned, JournalError> {
        let path = self.path.as_path();
        let fail = |operation| move |source| schema::classify(path, operation, source);
        let cutoff = before(now, self.config.max_age);
        let mut pruned = Pruned {
            by_age: to_u64(
                self.conn.execute("DELETE FROM occurrences WHERE ts < ?1", [cutoff]).map_err(fail("prune by age"))?,
            ),
            events_by_age: to_u64(
                self.conn.execute("DELETE FROM events WHERE last_ts < ?1", [cutoff]).map_err(fail("prune by age"))?,
            ),
            ..Pruned::default()
        };
        loop {
            let used = used_bytes(&self.conn, path)?;
            if used <= self.config.max_bytes {
                break;
            }
            // The older of the two tables' oldest rows goes first, so both keep the same window.
            let (rows, oldest_occurrence, oldest_event): (i64, Option<i64>, Option<i64>) = self
                .conn
                .query_row(
                    "SELECT (SELECT count(*) FROM occurrences) + (SELECT count(*) FROM events), \
                     (SELECT min(ts) FROM occurrences), (SELECT min(last_ts) FROM events)",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .map_err(fail("count rows"))?;
            if rows == 0 {
                // Only the outbox and the schema are left; drop_expired bounds the outbox.
                break;
            }
            // Delete the share of rows that matches the excess, at least one, at most a batch.
            let excess = used - self.config.max_bytes;
            let share = u128::from(excess) * u128::from(u64::try_from(rows).unwrap_or(0)) / u128::from(used);
            let batch = i64::try_from(share).unwrap_or(PRUNE_BATCH).clamp(1, PRUNE_BATCH);
            let occurrences_first = match (oldest_occurrence, oldest_event) {
                (Some(occurrence), Some(event)) => occurrence <= event,
                (occurrence, _) => occurrence.is_some(),
            };
            let (sql, count) = if occurrences_first {
                (
                    "DELETE FROM occurrences WHERE id IN (SELECT id FROM occurrences ORDER BY ts, id LIMIT ?1)",
                    &mut pruned.by_size,
                )
            } else {
                (
                    "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY last_ts, id LIMIT ?1)",
                    &mut pruned.events_by_size,
                )
            };
            let deleted = self.conn.execute(sql, [batch]).map_err(fail("prune by size"))?;
            *count = count.saturating_add(to_u64(deleted));
        }
        if pruned != Pruned::default() {
            incremental_vacuum(&self.conn).map_err(fail("vacuum"))?;
        }
        Ok(pruned)
    }
}

impl<'a> Row<'a> {
    fn of(write: &'a ApiWrite, context: &EventContext<'a>) -> Result<Self, JournalError> {
        let event = &write.event;
        let bad = |field| JournalError::MalformedEvent {
            namespace: write.namespace.clone(),
            name: write.name.clone(),
            field,
        };
        let text = |pointer: &str| event.pointer(pointer).and_then(Value::as_str);
        let object = |field: &str| {
            event.get("involvedObject").and_then(|object| object.get(field)).and_then(Value::as_str).unwrap_or("")
        };
        let time = |pointer: &str, field| text(pointer).and_then(parse_rfc3339).ok_or_else(|| bad(field));
        let object_kind = object("kind");
        let object_name = object("name");
        let node = text("/source/host")
            .filter(|host| !host.is_empty())
            .or_else(|| text("/reportingInstance").filter(|host| !host.is_empty()));
        Ok(Self {
            namespace: &write.namespace,
            name: &write.name,
            reason: text("/reason").ok_or_else(|| bad("reason"))?,
            event_type: text("/type").ok_or_else(|| bad("type"))?,
            message: text("/message").unwrap_or(""),
            object_kind,
            object_name,
            pod: (object_kind == "Pod").then(|| (object_name, object("uid"))),
            container: context.container.or_else(|| container_of_field_path(object("fieldPath"))),
            node,
            count: event.get("count").and_then(Value::as_i64).ok_or_else(|| bad("count"))?,
            first_ts: time("/firstTimestamp", "firstTimestamp")?,
            last_ts: time("/lastTimestamp", "lastTimestamp")?,
        })
    }
}

/// `spec.containers{app}` → `app` (also initContainers and ephemeralContainers).
fn container_of_field_path(field_path: &str) -> Option<&str> {
    ["spec.containers{", "spec.initContainers{", "spec.ephemeralContainers{"]
        .iter()
        .find_map(|prefix| field_path.strip_prefix(prefix))
        .and_then(|rest| rest.strip_suffix('}'))
}

fn upsert(
    tx: &Transaction<'_>,
    path: &Path,
    row: &Row<'_>,
    event: &str,
    records: &str,
    now: Timestamp,
) -> Result<RowChange, JournalError> {
    let fail = |source| schema::classify(path, "store event", source);
    let (pod_name, pod_uid) = row.pod.unzip();
    // Update first: a PATCH is the common repeat, and this keeps the row id (and so the
    // row's place in pruning order by id) of the first occurrence.
    // The same columns, in the same order, for the UPDATE and the INSERT.
    let stored_at = now.unix_nanos();
    let values = params![
        row.namespace,
        row.name,
        row.reason,
        row.event_type,
        row.message,
        row.object_kind,
        row.object_name,
        pod_name,
        pod_uid,
        row.container,
        row.node,
        row.count,
        row.first_ts,
        row.last_ts,
        event,
        records,
        stored_at,
    ];
    let updated = tx
        .prepare_cached(
            "UPDATE events SET reason = ?3, type = ?4, message = ?5, object_kind = ?6, \
             object_name = ?7, pod_name = ?8, pod_uid = ?9, container = ?10, node = ?11, \
             count = ?12, first_ts = ?13, last_ts = ?14, event = ?15, records = ?16, \
             stored_at = ?17 WHERE namespace = ?1 AND name = ?2",
        )
        .and_then(|mut stmt| stmt.execute(values))
        .map_err(fail)?;
    if updated > 0 {
        return Ok(RowChange::Updated);
    }
    tx.prepare_cached(
        "INSERT INTO events (namespace, name, reason, type, message, object_kind, object_name, \
         pod_name, pod_uid, container, node, count, first_ts, last_ts, event, records, \
         stored_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
         ?16, ?17)",
    )
    .and_then(|mut stmt| stmt.execute(values))
    .map_err(fail)?;
    Ok(RowChange::Appended)
}

fn insert_outbox(tx: &Transaction<'_>, path: &Path, write: &ApiWrite, now: Timestamp) -> Result<i64, JournalError> {
    let text =
        serde_json::to_string(write).map_err(|source| JournalError::Encode { name: write.name.clone(), source })?;
    tx.prepare_cached("INSERT INTO outbox (enqueued_at, write) VALUES (?1, ?2) RETURNING id")
        .and_then(|mut stmt| stmt.query_row(params![now.unix_nanos(), text], |row| row.get(0)))
        .map_err(|source| schema::classify(path, "enqueue", source))
}

fn encode(name: &str, value: &Value) -> Result<String, JournalError> {
    serde_json::to_string(value).map_err(|source| JournalError::Encode { name: name.to_owned(), source })
}

fn used_bytes(conn: &Connection, path: &Path) -> Result<u64, JournalError> {
    conn.query_row(
        "SELECT (page_count - freelist_count) * page_size \
         FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map(|bytes| u64::try_from(bytes).unwrap_or(0))
    .map_err(|source| schema::classify(path, "measure the file", source))
}

/// Gives every free page back to the file system. The pragma frees one page per step, so it
/// is stepped to the end rather than run once.
fn incremental_vacuum(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("PRAGMA incremental_vacuum")?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

fn create_state_dir(dir: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::DirBuilderExt as _;
    // Events name pods and processes of every tenant on the node: keep them root's.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| JournalError::CreateDir { path: dir.to_owned(), source })
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
