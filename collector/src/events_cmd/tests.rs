use clap::Parser;

use super::*;
use crate::{
    recorder::{EventSpec, EventType, ObjectReference},
    sinks::journal::{
        EventContext, Journal, JournalConfig, Occurrence,
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
    let oom =
        || EventSpec::new(pod("shop", "web-0"), EventType::Warning, "OOMKilling", "Container app: OOM killed python3");
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
fn api_output_looks_like_kubectl_get_events() {
    let dir = TempDir::new("text");
    journal(&dir);
    assert_eq!(
        output(&["--api"], &dir, at(3600)),
        "NAMESPACE   LAST SEEN   TYPE      REASON       OBJECT        COUNT   MESSAGE\n\
         shop        50m         Warning   OOMKilling   pod/web-0     2       Container app: OOM killed python3\n\
         default     10s         Warning   SystemOOM    node/node-1   1       System OOM encountered, victim process: dd, pid: 7\n"
    );
    // With a namespace the NAMESPACE column goes, as with kubectl -n.
    assert_eq!(
        output(&["--api", "-n", "shop"], &dir, at(3600)),
        "LAST SEEN   TYPE      REASON       OBJECT      COUNT   MESSAGE\n\
         50m         Warning   OOMKilling   pod/web-0   2       Container app: OOM killed python3\n"
    );
    assert_eq!(output(&["--api", "--reason", "Nope"], &dir, at(3600)), "");
}

#[test]
fn filters_and_limit_reach_the_query() {
    let dir = TempDir::new("filters");
    journal(&dir);
    let reasons = |extra: &[&str]| -> Vec<String> {
        output(&[extra, &["--api", "--format", "json"]].concat(), &dir, at(3600))
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
    let text = output(&["--api", "--format", "json", "--pod", "web-0"], &dir, at(3600));
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
        let spec =
            EventSpec::new(ObjectReference::pod("shop", "web\n0", UID), EventType::Warning, "OOM\x1bKilling", hostile);
        let w = write(&mut recorder(), spec, at(0));
        journal.record(&w, &EventContext::NONE, at(0)).unwrap();
    }
    let text = output(&["--api", "-n", "shop"], &dir, at(5));
    assert_eq!(
        text,
        "LAST SEEN   TYPE      REASON           OBJECT         COUNT   MESSAGE\n\
         5s          Warning   OOM\\x1bKilling   pod/web\\x0a0   1       \
         a\\x0ab\\x0d\\x1b[2J\\x1b]0;x\\x07\\xc2\\x85\\x00\\\\n \u{fffd}z\n"
    );
    assert_eq!(text.lines().count(), 2);
    assert!(!text.contains('\x1b'));
    let json = output(&["--api", "--format", "json"], &dir, at(5));
    assert_eq!(json.lines().count(), 1);
    let event: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(event["message"].as_str(), Some(hostile));
    assert_eq!(event["reason"].as_str(), Some("OOM\x1bKilling"));
    assert_eq!(event["involvedObject"]["name"].as_str(), Some("web\n0"));
}

/// Three OOM kills of shop/web-0's app, the third kept from the API server by the spam
/// filter, and a node OOM; as the daemon stores them.
fn occurrences(dir: &TempDir) {
    let mut journal = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    let mut rec = recorder();
    let oom = |pid: u32| {
        EventSpec::new(pod("shop", "web-0"), EventType::Warning, "OOMKilling", format!("killed process {pid}"))
    };
    for (secs, pid, spam) in [(0, 7, false), (60, 8, false), (61, 9, true)] {
        let records = exit_records(pid);
        let spec = oom(pid);
        let context = EventContext { container: Some("app"), records: &records };
        let occurrence = Occurrence { time: at(secs), spec: &spec, context };
        let write = (!spam).then(|| write(&mut rec, spec.clone(), at(secs)));
        journal.record_occurrence(&occurrence, write.as_ref(), true, at(secs)).unwrap();
    }
    let node = EventSpec::new(ObjectReference::node("node-1"), EventType::Warning, "SystemOOM", "System OOM");
    let occurrence = Occurrence { time: at(90), spec: &node, context: EventContext::NONE };
    journal.record_occurrence(&occurrence, Some(&write(&mut rec, node.clone(), at(90))), false, at(90)).unwrap();
}

#[test]
fn every_occurrence_is_listed_once_with_what_became_of_it() {
    let dir = TempDir::new("occurrences");
    occurrences(&dir);
    assert_eq!(
        output(&[], &dir, at(100)),
        "NAMESPACE   SEEN   TYPE      REASON       OBJECT        API             MESSAGE\n\
         shop        100s   Warning   OOMKilling   pod/web-0     queued          killed process 7\n\
         shop        40s    Warning   OOMKilling   pod/web-0     queued          killed process 8\n\
         shop        39s    Warning   OOMKilling   pod/web-0     spam_filtered   killed process 9\n\
         default     10s    Warning   SystemOOM    node/node-1   local           System OOM\n"
    );
    // The API events: two, the third kill having been filtered.
    assert_eq!(
        output(&["--api", "-n", "shop"], &dir, at(100)),
        "LAST SEEN   TYPE      REASON       OBJECT      COUNT   MESSAGE\n\
         100s        Warning   OOMKilling   pod/web-0   1       killed process 7\n\
         40s         Warning   OOMKilling   pod/web-0   1       killed process 8\n"
    );
    let lines: Vec<Value> = output(&["--format", "json", "--pod", "web-0", "--limit", "1"], &dir, at(100))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines,
        [json!({
            "time": "2026-11-28T10:41:11.000000000Z",
            "namespace": "shop",
            "involvedObject": {
                "kind": "Pod", "namespace": "shop", "name": "web-0", "uid": UID, "apiVersion": "v1",
                "fieldPath": "spec.containers{app}",
            },
            "type": "Warning", "reason": "OOMKilling", "message": "killed process 9", "container": "app",
            "api": {"outcome": "spam_filtered", "event": null},
            "records": exit_records(9),
            "storedAt": "2026-11-28T10:41:11.000000000Z",
        })]
    );
}

#[test]
fn the_summary_counts_every_occurrence_exactly() {
    let dir = TempDir::new("summary");
    occurrences(&dir);
    assert_eq!(
        output(&["--summary"], &dir, at(100)),
        "NAMESPACE   OBJECT        CONTAINER   REASON       TYPE      COUNT   SPAM FILTERED   FIRST   LAST\n\
         default     node/node-1   -           SystemOOM    Warning   1       0               10s     10s\n\
         shop        pod/web-0     app         OOMKilling   Warning   3       1               100s    39s\n"
    );
    let json = output(&["--summary", "--format", "json", "--since", "50s"], &dir, at(100));
    assert_eq!(
        json.lines().map(|line| serde_json::from_str(line).unwrap()).collect::<Vec<Value>>(),
        [
            json!({"namespace": "default", "object": {"kind": "Node", "name": "node-1"}, "container": null,
                   "reason": "SystemOOM", "type": "Warning", "count": 1, "spamFiltered": 0,
                   "first": "2026-11-28T10:41:40.000000000Z", "last": "2026-11-28T10:41:40.000000000Z"}),
            json!({"namespace": "shop", "object": {"kind": "Pod", "name": "web-0"}, "container": "app",
                   "reason": "OOMKilling", "type": "Warning", "count": 2, "spamFiltered": 1,
                   "first": "2026-11-28T10:41:10.000000000Z", "last": "2026-11-28T10:41:11.000000000Z"}),
        ]
    );
    let err = Cli::try_parse_from(["collector", "--summary", "--api"]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
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

#[test]
fn conditions_print_as_describe_node_shows_them_or_say_none_were_saved() {
    use crate::health::conditions::NodeCondition;
    let dir = TempDir::new("conditions");
    let none = conditions::print(&args(&["--conditions"], &dir), at(0), &mut Vec::new()).unwrap_err();
    assert_eq!(
        none.to_string(),
        format!(
            "no node conditions in {}: the collector daemon has not run with this --state-dir yet",
            dir.path().display()
        )
    );
    let saved = [
        NodeCondition {
            kind: "KernelDeadlock".to_owned(),
            status: true,
            reason: "TaskHung".to_owned(),
            message: "Process 42 (dd) blocked for more than 2 s".to_owned(),
            last_transition: at(0),
        },
        NodeCondition {
            kind: "ReadonlyFilesystem".to_owned(),
            status: false,
            reason: "FilesystemIsNotReadOnly".to_owned(),
            message: "Filesystem is not read-only".to_owned(),
            last_transition: at(0),
        },
    ];
    std::fs::write(dir.path().join("node-conditions.json"), serde_json::to_vec(&saved).unwrap()).unwrap();
    let mut text = Vec::new();
    conditions::print(&args(&["--conditions"], &dir), at(300), &mut text).unwrap();
    assert_eq!(
        String::from_utf8(text).unwrap(),
        "CONDITION            STATUS   REASON                    SINCE   MESSAGE\n\
         KernelDeadlock       True     TaskHung                  5m      Process 42 (dd) blocked for more than 2 s\n\
         ReadonlyFilesystem   False    FilesystemIsNotReadOnly   5m      Filesystem is not read-only\n"
    );
    let mut json = Vec::new();
    conditions::print(&args(&["--conditions", "--format", "json"], &dir), at(300), &mut json).unwrap();
    let first: Value = serde_json::from_str(String::from_utf8(json).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "KernelDeadlock");
    assert_eq!(first["status"], "True");
    assert_eq!(first["reason"], "TaskHung");
}
