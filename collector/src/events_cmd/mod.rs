//! `collector events`: the events this node's collector recorded, read from its local journal
//! (they outlive the API server's one-hour event TTL): every event the kernel caused, once each
//! (the default), counts of them (`--summary`), the events as written to the API server
//! (`--api`), or the node conditions it set (`--conditions`).

mod conditions;

use std::{
    io::{self, BufWriter, Write},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use clap::{Args, ValueEnum};
use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::{
    clock::Timestamp,
    escape::escape_bytes,
    sinks::journal::{self, JournalError, JournalReader, Query, StoredEvent, StoredOccurrence},
};

/// Options of `collector events`.
#[derive(Args, Clone, Debug)]
pub struct EventsArgs {
    /// Only events in this namespace.
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// Only events about the pod of this name.
    #[arg(long, value_name = "NAME")]
    pub pod: Option<String>,
    /// Only events with this reason (exact, e.g. OOMKilling).
    #[arg(long, value_name = "R")]
    pub reason: Option<String>,
    /// Only events that happened (with --api: were last seen) within this long: a number and a
    /// unit s, m, h or d (30s, 15m, 2h, 1d; parts may be combined: 1h30m).
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<Duration>,
    /// `text`: columns like `kubectl get events`; `json`: one object per line.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The daemon's state directory, holding `journal.db`.
    #[arg(long, value_name = "DIR", env = "COLLECTOR_STATE_DIR",
          default_value = journal::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Only the most recent N events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Counts per namespace, object, container and reason instead of one line per event:
    /// exact, whatever the spam filter kept from the API server.
    #[arg(long, conflicts_with_all = ["api", "limit"])]
    pub summary: bool,
    /// The events as written to the API server (aggregated, deduplicated, spam-filtered), with
    /// their counts, instead of every event the kernel caused.
    #[arg(long)]
    pub api: bool,
    /// The node conditions the collector set (KernelDeadlock, ReadonlyFilesystem,
    /// FrequentContainerOOM, ...), as it last wrote them, instead of events.
    #[arg(long, conflicts_with_all = ["api", "summary", "limit", "namespace", "pod", "reason", "since"])]
    pub conditions: bool,
}

/// How events are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns; every field escaped onto one line.
    Text,
    /// One JSON object per line; strings exactly as recorded.
    Json,
}

/// What `collector events` printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventsSummary {
    /// Events printed.
    pub printed: u64,
    /// Rows whose stored JSON no longer parsed; skipped in JSON output.
    pub malformed: u64,
}

/// Errors of `collector events`.
#[derive(Debug, Error)]
pub enum EventsError {
    /// There is no journal (yet) in the state directory.
    #[error(
        "no event journal at {}: the collector daemon has not written one yet (is it running \
         with --state-dir {}?)",
        path.display(),
        state_dir.display()
    )]
    NoJournal {
        /// The file looked for.
        path: PathBuf,
        /// The state directory given.
        state_dir: PathBuf,
    },
    /// The journal could not be opened or read.
    #[error(transparent)]
    Journal(JournalError),
    /// The daemon never saved node conditions in the state directory.
    #[error(
        "no node conditions in {}: the collector daemon has not run with this --state-dir yet",
        state_dir.display()
    )]
    NoConditions {
        /// The state directory given.
        state_dir: PathBuf,
    },
    /// The saved node conditions could not be read.
    #[error("cannot read the node conditions in {}: {source}", state_dir.display())]
    Conditions {
        /// The state directory given.
        state_dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("cannot write events: {0}")]
    Output(#[source] io::Error),
    /// A `--since` value is not a duration.
    #[error(
        "invalid duration {input:?}: {problem} (use a number and a unit s, m, h or d, e.g. 30s, \
         15m, 2h, 1d)"
    )]
    InvalidDuration {
        /// The text given.
        input: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl From<JournalError> for EventsError {
    fn from(err: JournalError) -> Self {
        match err {
            JournalError::Missing { path } | JournalError::Empty { path } => {
                Self::NoJournal { state_dir: path.parent().map(PathBuf::from).unwrap_or_default(), path }
            }
            other => Self::Journal(other),
        }
    }
}

/// Parses `--since`: one or more `<digits><unit>` parts, unit `s`, `m`, `h` or `d`.
pub fn parse_since(input: &str) -> Result<Duration, EventsError> {
    let bad = |problem| EventsError::InvalidDuration { input: input.to_owned(), problem };
    if input.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = input;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let (number, after) = rest.split_at(digits);
        let mut chars = after.chars();
        let unit_secs = match chars.next() {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 3600,
            Some('d') => 86_400,
            Some(_) => return Err(bad("unknown unit")),
            None => return Err(bad("missing unit")),
        };
        let number: u64 = number.parse().map_err(|_| bad("number too large"))?;
        let secs = number.checked_mul(unit_secs).ok_or_else(|| bad("number too large"))?;
        total = total.checked_add(Duration::from_secs(secs)).ok_or_else(|| bad("number too large"))?;
        rest = chars.as_str();
    }
    Ok(total)
}

/// Prints the matching events on stdout. A closed stdout (`| head`) ends the listing quietly.
pub fn run(args: EventsArgs) -> Result<EventsSummary, EventsError> {
    let now = Timestamp::from_system_time(SystemTime::now());
    if args.conditions {
        let mut out = io::stdout().lock();
        return conditions::print(&args, now, &mut out);
    }
    let reader = JournalReader::open(&args.state_dir).map_err(|err| match EventsError::from(err) {
        EventsError::NoJournal { path, .. } => EventsError::NoJournal { path, state_dir: args.state_dir.clone() },
        other => other,
    })?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = print(&reader, &args, now, &mut out)
        .and_then(|summary| out.flush().map(|()| summary).map_err(EventsError::Output));
    match result {
        Err(EventsError::Output(err)) if err.kind() == io::ErrorKind::BrokenPipe => Ok(EventsSummary::default()),
        Ok(summary) => {
            if summary.printed == 0 && args.format == Format::Text {
                let _ = writeln!(io::stderr(), "No events found.");
            }
            Ok(summary)
        }
        Err(err) => Err(err),
    }
}

/// The listing of `args` at `now`, written to `out`.
fn print(
    reader: &JournalReader,
    args: &EventsArgs,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<EventsSummary, EventsError> {
    let query = Query {
        namespace: args.namespace.clone(),
        pod: args.pod.clone(),
        reason: args.reason.clone(),
        since: args.since.map(|since| {
            Timestamp::from_unix_nanos(
                now.unix_nanos().saturating_sub(i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)),
            )
        }),
        limit: args.limit,
    };
    let first = usize::from(args.namespace.is_some());
    match (args.format, args.summary, args.api) {
        (Format::Json, true, _) => print_summary_json(reader, &query, out),
        (Format::Text, true, _) => print_summary_text(reader, &query, first, now, out),
        (Format::Json, false, true) => print_api_json(reader, &query, out),
        (Format::Text, false, true) => reader.snapshot(|reader| {
            print_table(out, &API_HEADERS[first..], |visit| {
                reader.scan(&query, |stored| visit(api_cells(&stored, now)[first..].to_vec()))
            })
        }),
        (Format::Json, false, false) => print_occurrences_json(reader, &query, out),
        (Format::Text, false, false) => reader.snapshot(|reader| {
            print_table(out, &HEADERS[first..], |visit| {
                reader.scan_occurrences(&query, |stored| visit(cells(&stored, now)[first..].to_vec()))
            })
        }),
    }
}

/// One line per occurrence: when it happened, the event as decided (`involvedObject`, `type`,
/// `reason`, its own message), what became of it on the way to the API server, and the kernel
/// records behind it.
fn print_occurrences_json(
    reader: &JournalReader,
    query: &Query,
    out: &mut dyn Write,
) -> Result<EventsSummary, EventsError> {
    let mut summary = EventsSummary::default();
    reader.scan_occurrences(query, |stored| {
        let (Ok(object), Ok(records)) =
            (serde_json::from_str::<Value>(&stored.object), serde_json::from_str::<Value>(&stored.records))
        else {
            summary.malformed += 1;
            return Ok(());
        };
        let line = json!({
            "time": stored.time.to_string(),
            "namespace": stored.namespace,
            "involvedObject": object,
            "type": stored.event_type,
            "reason": stored.reason,
            "message": stored.message,
            "container": stored.container,
            "api": {"outcome": stored.api, "event": stored.event_name},
            "records": records,
            "storedAt": stored.stored_at.to_string(),
        });
        writeln!(out, "{line}").map_err(EventsError::Output)?;
        summary.printed += 1;
        Ok::<_, EventsError>(())
    })?;
    Ok(summary)
}

fn print_api_json(reader: &JournalReader, query: &Query, out: &mut dyn Write) -> Result<EventsSummary, EventsError> {
    let mut summary = EventsSummary::default();
    reader.scan(query, |stored| {
        match json_line(&stored) {
            Some(line) => {
                writeln!(out, "{line}").map_err(EventsError::Output)?;
                summary.printed += 1;
            }
            None => summary.malformed += 1,
        }
        Ok::<_, EventsError>(())
    })?;
    Ok(summary)
}

/// The stored event object with a `journal` member; `None` if the stored JSON is damaged.
fn json_line(stored: &StoredEvent) -> Option<Value> {
    let Ok(Value::Object(mut event)) = serde_json::from_str::<Value>(&stored.event) else {
        return None;
    };
    let records = serde_json::from_str::<Value>(&stored.records).ok()?;
    let mut journal = Map::new();
    journal.insert("container".to_owned(), json!(stored.container));
    journal.insert("node".to_owned(), json!(stored.node));
    journal.insert("records".to_owned(), records);
    journal.insert("storedAt".to_owned(), json!(stored.stored_at.to_string()));
    event.insert("journal".to_owned(), Value::Object(journal));
    Some(Value::Object(event))
}

fn print_summary_json(
    reader: &JournalReader,
    query: &Query,
    out: &mut dyn Write,
) -> Result<EventsSummary, EventsError> {
    let mut summary = EventsSummary::default();
    for row in reader.summary(query)? {
        let line = json!({
            "namespace": row.namespace,
            "object": {"kind": row.object_kind, "name": row.object_name},
            "container": row.container,
            "reason": row.reason,
            "type": row.event_type,
            "count": row.count,
            "spamFiltered": row.spam_filtered,
            "first": row.first.to_string(),
            "last": row.last.to_string(),
        });
        writeln!(out, "{line}").map_err(EventsError::Output)?;
        summary.printed += 1;
    }
    Ok(summary)
}

fn print_summary_text(
    reader: &JournalReader,
    query: &Query,
    first: usize,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<EventsSummary, EventsError> {
    let rows = reader.summary(query)?;
    print_table(out, &SUMMARY_HEADERS[first..], |visit| {
        for row in &rows {
            let object = format!("{}/{}", row.object_kind.to_ascii_lowercase(), row.object_name);
            let cells = [
                escape_bytes(row.namespace.as_bytes()),
                escape_bytes(object.as_bytes()),
                row.container.as_deref().map_or_else(|| "-".to_owned(), |c| escape_bytes(c.as_bytes())),
                escape_bytes(row.reason.as_bytes()),
                escape_bytes(row.event_type.as_bytes()),
                row.count.to_string(),
                row.spam_filtered.to_string(),
                human_duration(now.unix_nanos().saturating_sub(row.first.unix_nanos())),
                human_duration(now.unix_nanos().saturating_sub(row.last.unix_nanos())),
            ];
            visit(cells[first..].to_vec())?;
        }
        Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
    })
}

const HEADERS: [&str; 7] = ["NAMESPACE", "SEEN", "TYPE", "REASON", "OBJECT", "API", "MESSAGE"];
const API_HEADERS: [&str; 7] = ["NAMESPACE", "LAST SEEN", "TYPE", "REASON", "OBJECT", "COUNT", "MESSAGE"];
const SUMMARY_HEADERS: [&str; 9] =
    ["NAMESPACE", "OBJECT", "CONTAINER", "REASON", "TYPE", "COUNT", "SPAM FILTERED", "FIRST", "LAST"];

/// One occurrence's cells, every cell escaped.
fn cells(stored: &StoredOccurrence, now: Timestamp) -> [String; 7] {
    let object = format!("{}/{}", stored.object_kind.to_ascii_lowercase(), stored.object_name);
    [
        escape_bytes(stored.namespace.as_bytes()),
        human_duration(now.unix_nanos().saturating_sub(stored.time.unix_nanos())),
        escape_bytes(stored.event_type.as_bytes()),
        escape_bytes(stored.reason.as_bytes()),
        escape_bytes(object.as_bytes()),
        escape_bytes(stored.api.as_bytes()),
        escape_bytes(stored.message.as_bytes()),
    ]
}

/// One API event's cells, every cell escaped.
fn api_cells(stored: &StoredEvent, now: Timestamp) -> [String; 7] {
    let since = now.unix_nanos().saturating_sub(stored.last_timestamp.unix_nanos());
    let object = format!("{}/{}", stored.object_kind.to_ascii_lowercase(), stored.object_name);
    [
        escape_bytes(stored.namespace.as_bytes()),
        human_duration(since),
        escape_bytes(stored.event_type.as_bytes()),
        escape_bytes(stored.reason.as_bytes()),
        escape_bytes(object.as_bytes()),
        stored.count.to_string(),
        escape_bytes(stored.message.as_bytes()),
    ]
}

/// Prints an aligned table: `rows` is called twice with a visitor of each row's cells (within
/// one snapshot, the same rows), first to measure the columns, then to print, so the output is
/// aligned without holding the rows in memory. Nothing is printed when there are no rows.
fn print_table(
    out: &mut dyn Write,
    headers: &[&str],
    mut rows: impl FnMut(&mut dyn FnMut(Vec<String>) -> Result<(), EventsError>) -> Result<u64, EventsError>,
) -> Result<EventsSummary, EventsError> {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.chars().count()).collect();
    rows(&mut |cells| {
        for (width, cell) in widths.iter_mut().zip(&cells) {
            *width = (*width).max(cell.chars().count());
        }
        Ok(())
    })?;
    let mut summary = EventsSummary::default();
    let headers: Vec<String> = headers.iter().map(|header| (*header).to_owned()).collect();
    rows(&mut |cells| {
        if summary.printed == 0 {
            write_row(out, &headers, &widths)?;
        }
        write_row(out, &cells, &widths)?;
        summary.printed += 1;
        Ok(())
    })?;
    Ok(summary)
}

fn write_row(out: &mut dyn Write, cells: &[String], widths: &[usize]) -> Result<(), EventsError> {
    let last = cells.len().saturating_sub(1);
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        line.push_str(cell);
        if i < last {
            let pad = width.saturating_sub(cell.chars().count()) + 3;
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    writeln!(out, "{line}").map_err(EventsError::Output)
}

/// kubectl's `duration.HumanDuration` (k8s.io/apimachinery), the LAST SEEN column.
fn human_duration(nanos: i64) -> String {
    let seconds = nanos / 1_000_000_000;
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 { format!("{}y", hours / 24 / 365) } else { format!("{}y{dy}d", hours / 24 / 365) };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests;
