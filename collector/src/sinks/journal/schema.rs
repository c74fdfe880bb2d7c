//! Opening the journal file: pragmas, the schema version, and telling a damaged or foreign file
//! from a journal.

use std::{path::Path, time::Duration};

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{JournalError, SCHEMA_VERSION, WAL_SIZE_LIMIT};

/// `PRAGMA application_id` of a journal ("CoJl"), so that another program's database is refused
/// instead of being written into.
const APPLICATION_ID: i32 = 0x436f_4a6c;

/// How long a statement waits for another connection's lock (a second writer, a checkpoint)
/// before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA_V1: &str = "
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    type        TEXT NOT NULL,
    message     TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    object_name TEXT NOT NULL,
    pod_name    TEXT,
    pod_uid     TEXT,
    container   TEXT,
    node        TEXT,
    count       INTEGER NOT NULL,
    first_ts    INTEGER NOT NULL,
    last_ts     INTEGER NOT NULL,
    event       TEXT NOT NULL,
    records     TEXT NOT NULL,
    stored_at   INTEGER NOT NULL,
    UNIQUE (namespace, name)
);
CREATE INDEX events_by_last_seen ON events (last_ts, id);
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    enqueued_at INTEGER NOT NULL,
    write       TEXT NOT NULL
);
";

/// Version 2: every event the kernel caused, one row each, before client-go's aggregation and
/// spam filter; `api` says what became of it and `event_name` names its row in `events`.
pub(super) const SCHEMA_V2: &str = "
CREATE TABLE occurrences (
    id          INTEGER PRIMARY KEY,
    ts          INTEGER NOT NULL,
    namespace   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    type        TEXT NOT NULL,
    message     TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    object_name TEXT NOT NULL,
    object      TEXT NOT NULL,
    container   TEXT,
    api         TEXT NOT NULL,
    event_name  TEXT,
    records     TEXT NOT NULL,
    stored_at   INTEGER NOT NULL
);
CREATE INDEX occurrences_by_time ON occurrences (ts, id);
";

/// Maps an SQLite error to [`JournalError::Corrupt`] when it says the file is damaged.
pub(super) fn classify(path: &Path, operation: &'static str, source: rusqlite::Error) -> JournalError {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            JournalError::Corrupt { path: path.to_owned(), source }
        }
        _ => JournalError::Sqlite { path: path.to_owned(), operation, source },
    }
}

/// Opens (creating if needed) the journal for writing. A journal left behind by a killed
/// daemon is recovered from its WAL by SQLite on this first access.
pub(super) fn open_writer(path: &Path) -> Result<Connection, JournalError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|source| JournalError::Open { path: path.to_owned(), source })?;
    let fail = |operation| move |source| classify(path, operation, source);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail("set busy timeout"))?;
    // Identify the file before changing anything in it: another program's database must not
    // be switched to WAL, let alone written into.
    let (application_id, tables) = identity(&conn, path)?;
    let fresh = application_id == 0 && tables == 0;
    if !fresh {
        check(&conn, path, application_id)?;
        integrity(&conn, path)?;
    }
    // Only takes effect before the first table exists; lets pruning give pages back to the
    // file system instead of keeping the file at its high-water mark.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(fail("set auto_vacuum"))?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(fail("enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JournalError::NoWal { path: path.to_owned(), mode });
    }
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(fail("set synchronous"))?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT).map_err(fail("set journal_size_limit"))?;
    init_or_check(&conn, path)?;
    Ok(conn)
}

/// Opens an existing journal read-only; works while the daemon writes (WAL readers see the last
/// committed state and never block it).
pub(super) fn open_reader(path: &Path) -> Result<Connection, JournalError> {
    match std::fs::metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(JournalError::Missing { path: path.to_owned() });
        }
        Ok(meta) if meta.len() == 0 => {
            return Err(JournalError::Empty { path: path.to_owned() });
        }
        // Other failures (permissions) are reported by SQLite's open below, naming the file.
        _ => {}
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|source| JournalError::Open { path: path.to_owned(), source })?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|source| classify(path, "set busy timeout", source))?;
    let (application_id, tables) = identity(&conn, path)?;
    if application_id == 0 && tables == 0 {
        return Err(JournalError::Empty { path: path.to_owned() });
    }
    // A reader cannot upgrade: the daemon of this version does, when it opens the journal.
    match check(&conn, path, application_id)? {
        SCHEMA_VERSION => Ok(conn),
        found => Err(JournalError::OldSchema { path: path.to_owned(), found }),
    }
}

/// `PRAGMA quick_check`: O(pages) but catches truncated and damaged files before the daemon
/// writes into them (a 64 MiB journal checks in well under a second).
fn integrity(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    let report: String = conn
        .query_row("PRAGMA quick_check(1)", [], |row| row.get(0))
        .map_err(|source| classify(path, "check integrity", source))?;
    if report == "ok" { Ok(()) } else { Err(JournalError::IntegrityCheck { path: path.to_owned(), report }) }
}

fn identity(conn: &Connection, path: &Path) -> Result<(i32, i64), JournalError> {
    // The first read of the header: garbage or a truncated file fails here with NOTADB.
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(|source| classify(path, "read the header", source))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(|source| classify(path, "read the schema", source))?;
    Ok((application_id, tables))
}

/// Checks that the file is a journal this code can read, and returns its schema version: the
/// current one, or an older one that [`init_or_check`] upgrades.
fn check(conn: &Connection, path: &Path, application_id: i32) -> Result<i64, JournalError> {
    if application_id != APPLICATION_ID {
        return Err(JournalError::Foreign { path: path.to_owned(), application_id });
    }
    let found: i64 = conn
        .query_row("SELECT max(version) FROM schema_version", [], |row| row.get::<_, Option<i64>>(0))
        .map_err(|source| classify(path, "read the schema version", source))?
        .unwrap_or(0);
    match found {
        SCHEMA_VERSION => Ok(found),
        1 => Ok(found),
        _ => Err(JournalError::UnsupportedSchema { path: path.to_owned(), found }),
    }
}

fn init_or_check(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    let fail = |operation| move |source| classify(path, operation, source);
    // IMMEDIATE: two daemons starting at once cannot both create the tables.
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(fail("begin schema transaction"))?;
    let (application_id, tables) = identity(&tx, path)?;
    if application_id == 0 && tables == 0 {
        tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(fail("set application_id"))?;
        tx.execute_batch(SCHEMA_V1).map_err(fail("create the schema"))?;
        tx.execute_batch(SCHEMA_V2).map_err(fail("create the schema"))?;
        tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [SCHEMA_VERSION])
            .map_err(fail("record the schema version"))?;
    } else if check(&tx, path, application_id)? == 1 {
        // Version 1 kept only what reached the API server; its rows stay as they are.
        tx.execute_batch(SCHEMA_V2).map_err(fail("upgrade the schema to version 2"))?;
        tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
            .map_err(fail("record the schema version"))?;
    }
    tx.commit().map_err(fail("commit the schema"))
}
