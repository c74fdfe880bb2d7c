//! `collector events`: the events this node's collector recorded, read from its local journal
//! (they outlive the API server's one-hour event TTL).

use std::{
    io::{self, BufWriter, Write},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use clap::{Args, ValueEnum};
use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::{
    clock,
    escape::escape_bytes,
    recorder::Timestamp,
    sinks::journal::{self, JournalError, JournalReader, Query, StoredEvent},
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
    /// Only events last seen within this long: a number and a unit s, m, h or d (30s, 15m,
    /// 2h, 1d; parts may be combined: 1h30m).
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<Duration>,
    /// `text`: columns like `kubectl get events`; `json`: one event object per line, with a
    /// `journal` member holding the container, node, kernel records and time stored.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The daemon's state directory, holding `journal.db`.
    #[arg(long, value_name = "DIR", env = "COLLECTOR_STATE_DIR",
          default_value = journal::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Only the most recent N events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
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
    match args.format {
        Format::Json => print_json(reader, &query, out),
        Format::Text => print_text(reader, &query, args.namespace.is_none(), now, out),
    }
}

fn print_json(reader: &JournalReader, query: &Query, out: &mut dyn Write) -> Result<EventsSummary, EventsError> {
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
    journal.insert("storedAt".to_owned(), json!(clock::Timestamp(stored.stored_at.unix_nanos()).to_string()));
    event.insert("journal".to_owned(), Value::Object(journal));
    Some(Value::Object(event))
}

/// One row of text output, every cell escaped.
struct Cells([String; 7]);

const HEADERS: [&str; 7] = ["NAMESPACE", "LAST SEEN", "TYPE", "REASON", "OBJECT", "COUNT", "MESSAGE"];

impl Cells {
    fn of(stored: &StoredEvent, now: Timestamp) -> Self {
        let since = now.unix_nanos().saturating_sub(stored.last_timestamp.unix_nanos());
        let object = format!("{}/{}", stored.object_kind.to_ascii_lowercase(), stored.object_name);
        Self([
            escape_bytes(stored.namespace.as_bytes()),
            human_duration(since),
            escape_bytes(stored.event_type.as_bytes()),
            escape_bytes(stored.reason.as_bytes()),
            escape_bytes(object.as_bytes()),
            stored.count.to_string(),
            escape_bytes(stored.message.as_bytes()),
        ])
    }
}

fn print_text(
    reader: &JournalReader,
    query: &Query,
    with_namespace: bool,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<EventsSummary, EventsError> {
    let first = usize::from(!with_namespace);
    // Two passes over one snapshot: the first measures the columns, the second prints, so
    // the output is aligned without holding the rows in memory.
    reader.snapshot(|reader| {
        let mut widths = HEADERS.map(|header| header.chars().count());
        reader.scan(query, |stored| {
            let cells = Cells::of(&stored, now);
            for (width, cell) in widths.iter_mut().zip(&cells.0) {
                *width = (*width).max(cell.chars().count());
            }
            Ok::<_, EventsError>(())
        })?;
        let mut summary = EventsSummary::default();
        let mut header_written = false;
        reader.scan(query, |stored| {
            if !header_written {
                write_row(out, &HEADERS.map(str::to_owned)[first..], &widths[first..])?;
                header_written = true;
            }
            write_row(out, &Cells::of(&stored, now).0[first..], &widths[first..])?;
            summary.printed += 1;
            Ok::<_, EventsError>(())
        })?;
        Ok(summary)
    })
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
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{
        recorder::{EventSpec, EventType, ObjectReference},
        sinks::journal::{
            EventContext, Journal, JournalConfig,
            tests::{TempDir, UID, at, exit_records, pod, recorder, write},
        },
    };

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: EventsArgs,
    }

    fn args(extra: &[&str], dir: &TempDir) -> EventsArgs {
        let mut argv = vec!["collector", "--state-dir", dir.path().to_str().unwrap()];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    fn output(extra: &[&str], dir: &TempDir, now: Timestamp) -> String {
        let args = args(extra, dir);
        let reader = JournalReader::open(&args.state_dir).unwrap();
        let mut out = Vec::new();
        print(&reader, &args, now, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// An OOM kill in shop/web-0 repeated once, then a node OOM: the kubelet's own shapes.
    fn journal(dir: &TempDir) {
        let mut journal = Journal::open(dir.path(), JournalConfig::default()).unwrap();
        let mut rec = recorder();
        let records = exit_records(4242);
        let ctx = EventContext { container: None, records: &records };
        let oom = || {
            EventSpec::new(pod("shop", "web-0"), EventType::Warning, "OOMKilling", "Container app: OOM killed python3")
        };
        for secs in [0, 600] {
            journal.record(&write(&mut rec, oom(), at(secs)), &ctx, at(secs)).unwrap();
        }
        let node = EventSpec::new(
            ObjectReference::node("node-1"),
            EventType::Warning,
            "SystemOOM",
            "System OOM encountered, victim process: dd, pid: 7",
        );
        journal.record(&write(&mut rec, node, at(3590)), &EventContext::NONE, at(3590)).unwrap();
    }

    #[test]
    fn text_output_looks_like_kubectl_get_events() {
        let dir = TempDir::new("text");
        journal(&dir);
        assert_eq!(
            output(&[], &dir, at(3600)),
            "NAMESPACE   LAST SEEN   TYPE      REASON       OBJECT        COUNT   MESSAGE\n\
             shop        50m         Warning   OOMKilling   pod/web-0     2       Container app: OOM killed python3\n\
             default     10s         Warning   SystemOOM    node/node-1   1       System OOM encountered, victim process: dd, pid: 7\n"
        );
        // With a namespace the NAMESPACE column goes, as with kubectl -n.
        assert_eq!(
            output(&["-n", "shop"], &dir, at(3600)),
            "LAST SEEN   TYPE      REASON       OBJECT      COUNT   MESSAGE\n\
             50m         Warning   OOMKilling   pod/web-0   2       Container app: OOM killed python3\n"
        );
        assert_eq!(output(&["--reason", "Nope"], &dir, at(3600)), "");
    }

    #[test]
    fn filters_and_limit_reach_the_query() {
        let dir = TempDir::new("filters");
        journal(&dir);
        let reasons = |extra: &[&str]| -> Vec<String> {
            output(&[extra, &["--format", "json"]].concat(), &dir, at(3600))
                .lines()
                .map(|line| {
                    let event: Value = serde_json::from_str(line).unwrap();
                    event["reason"].as_str().unwrap().to_owned()
                })
                .collect()
        };
        assert_eq!(reasons(&[]), ["OOMKilling", "SystemOOM"]);
        assert_eq!(reasons(&["--pod", "web-0"]), ["OOMKilling"]);
        assert_eq!(reasons(&["--reason", "SystemOOM"]), ["SystemOOM"]);
        assert_eq!(reasons(&["--since", "30m"]), ["SystemOOM"]);
        assert_eq!(reasons(&["--since", "51m"]), ["OOMKilling", "SystemOOM"]);
        assert_eq!(reasons(&["--limit", "1"]), ["SystemOOM"]);
        assert_eq!(reasons(&["-n", "default"]), ["SystemOOM"]);
    }

    #[test]
    fn json_lines_carry_the_event_and_the_journal_record() {
        let dir = TempDir::new("json");
        journal(&dir);
        let text = output(&["--format", "json", "--pod", "web-0"], &dir, at(3600));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1);
        let event: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(event["count"], 2);
        assert_eq!(event["lastTimestamp"], "2026-11-28T10:50:10Z");
        assert_eq!(event["involvedObject"]["uid"], UID);
        assert_eq!(
            event["journal"],
            json!({
                "container": "app",
                "node": "node-1",
                "records": exit_records(4242),
                "storedAt": "2026-11-28T10:50:10.000000000Z",
            })
        );
    }

    #[test]
    fn hostile_strings_are_escaped_in_text_and_exact_in_json() {
        let dir = TempDir::new("hostile");
        let hostile = "a\nb\r\x1b[2J\x1b]0;x\x07\u{85}\0\\n \u{fffd}z";
        {
            let mut journal = Journal::open(dir.path(), JournalConfig::default()).unwrap();
            let spec = EventSpec::new(
                ObjectReference::pod("shop", "web\n0", UID),
                EventType::Warning,
                "OOM\x1bKilling",
                hostile,
            );
            let w = write(&mut recorder(), spec, at(0));
            journal.record(&w, &EventContext::NONE, at(0)).unwrap();
        }
        let text = output(&["-n", "shop"], &dir, at(5));
        assert_eq!(
            text,
            "LAST SEEN   TYPE      REASON           OBJECT         COUNT   MESSAGE\n\
             5s          Warning   OOM\\x1bKilling   pod/web\\x0a0   1       \
             a\\x0ab\\x0d\\x1b[2J\\x1b]0;x\\x07\\xc2\\x85\\x00\\\\n \u{fffd}z\n"
        );
        assert_eq!(text.lines().count(), 2);
        assert!(!text.contains('\x1b'));
        let json = output(&["--format", "json"], &dir, at(5));
        assert_eq!(json.lines().count(), 1);
        let event: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(event["message"].as_str(), Some(hostile));
        assert_eq!(event["reason"].as_str(), Some("OOM\x1bKilling"));
        assert_eq!(event["involvedObject"]["name"].as_str(), Some("web\n0"));
    }

    #[test]
    fn a_missing_journal_names_the_path() {
        let dir = TempDir::new("missing");
        let err = run(args(&[], &dir)).unwrap_err();
        let path = dir.path().join("journal.db");
        assert!(matches!(&err, EventsError::NoJournal { path: p, .. } if *p == path), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "no event journal at {}: the collector daemon has not written one yet (is it \
                 running with --state-dir {}?)",
                path.display(),
                dir.path().display()
            )
        );
    }

    #[test]
    fn since_parses_durations() {
        let secs = |text| parse_since(text).unwrap().as_secs();
        assert_eq!(secs("30s"), 30);
        assert_eq!(secs("15m"), 900);
        assert_eq!(secs("2h"), 7200);
        assert_eq!(secs("1d"), 86_400);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("0s"), 0);
        assert_eq!(secs("007m"), 420);
        for (bad, problem) in [
            ("", "it is empty"),
            ("2", "missing unit"),
            ("2x", "unknown unit"),
            ("2H", "unknown unit"),
            ("h", "expected a number"),
            ("-5m", "expected a number"),
            ("1.5h", "unknown unit"),
            (" 5m", "expected a number"),
            ("5m ", "expected a number"),
            ("2hh", "expected a number"),
            ("99999999999999999999s", "number too large"),
            ("999999999999999999d", "number too large"),
            ("5\u{0}m", "unknown unit"),
        ] {
            let err = parse_since(bad).unwrap_err();
            assert!(
                matches!(&err, EventsError::InvalidDuration { input, problem: p }
                    if input == bad && *p == problem),
                "{bad:?}: {err:?}"
            );
        }
        assert_eq!(
            parse_since("2x").unwrap_err().to_string(),
            "invalid duration \"2x\": unknown unit (use a number and a unit s, m, h or d, e.g. \
             30s, 15m, 2h, 1d)"
        );
    }

    #[test]
    fn usage_errors_exit_with_code_2_and_name_the_input() {
        for argv in
            [&["collector", "--since", "2x"][..], &["collector", "--limit", "0"], &["collector", "--format", "yaml"]]
        {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
            assert!(err.to_string().contains(argv[2]), "{err}");
        }
        let args = Cli::try_parse_from(["collector"]).unwrap().args;
        assert_eq!(args.state_dir, PathBuf::from("/var/lib/collector"));
        assert_eq!(args.format, Format::Text);
    }

    #[test]
    fn last_seen_matches_kubectl_human_duration() {
        let s = |secs: i64| human_duration(secs * 1_000_000_000);
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (49 * 3600, "2d1h"),
            (8 * 86_400, "8d"),
            (2 * 365 * 86_400, "2y"),
            (2 * 365 * 86_400 + 86_400, "2y1d"),
            (8 * 365 * 86_400, "8y"),
        ];
        for (secs, want) in cases {
            assert_eq!(s(secs), want, "{secs}");
        }
    }
}
