//! Journal behaviour on real files in temporary directories.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use serde_json::{Value, json};

use super::*;
use crate::{
    clock::Timestamp,
    recorder::{Decision, EventSpec, EventType, ObjectReference, Recorder, RecorderConfig},
    sinks::{ApiWrite, Verb},
};

pub(crate) const T0: i64 = 1_795_862_410; // 2026-11-28T10:40:10Z

pub(crate) fn at(secs_after_t0: i64) -> Timestamp {
    Timestamp::from_unix_secs(T0 + secs_after_t0)
}

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "collector-journal-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn db(&self) -> PathBuf {
        journal_path(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn recorder() -> Recorder {
    Recorder::new(RecorderConfig::new("collector", "node-1")).unwrap()
}

pub(crate) const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

pub(crate) fn pod(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference::pod(namespace, name, UID).with_field_path("spec.containers{app}")
}

pub(crate) fn write(rec: &mut Recorder, spec: EventSpec, now: Timestamp) -> ApiWrite {
    match rec.record(spec, now) {
        Decision::Write(write) => ApiWrite::try_from(&write).unwrap(),
        Decision::SpamFiltered => panic!("spam-filtered"),
    }
}

pub(crate) fn exit_records(pid: u32) -> Value {
    json!([{
        "type": "exit",
        "time": "2026-11-28T10:40:10.123456789Z",
        "pid": pid,
        "ppid": 4200,
        "comm": "python3",
        "exit_code": 137,
        "signal": 9,
        "core_dumped": false,
        "cgroup_id": 12_345,
        "cgroup_path": format!("/kubepods/burstable/pod{UID}/{}", "ab".repeat(32)),
    }])
}

fn oom(object: ObjectReference, message: &str) -> EventSpec {
    EventSpec::new(object, EventType::Warning, "OOMKilling", message)
}

fn open(dir: &TempDir) -> Journal {
    Journal::open(dir.path(), JournalConfig::default()).unwrap()
}

fn names(reader: &JournalReader, query: &Query) -> Vec<String> {
    let mut names = Vec::new();
    reader
        .scan(query, |event| {
            names.push(event.name);
            Ok::<_, JournalError>(())
        })
        .unwrap();
    names
}

fn all(reader: &JournalReader) -> Vec<StoredEvent> {
    let mut events = Vec::new();
    reader
        .scan(&Query::default(), |event| {
            events.push(event);
            Ok::<_, JournalError>(())
        })
        .unwrap();
    events
}

#[test]
fn stores_the_full_record_and_filters_exactly() {
    let dir = TempDir::new("filters");
    let mut journal = open(&dir);
    let mut rec = recorder();
    let records = exit_records(4242);
    let ctx = EventContext { container: None, records: &records };
    let specs = [
        (oom(pod("shop", "web-0"), "Container app: OOM killed python3"), 0),
        (EventSpec::new(pod("shop", "web-1"), EventType::Normal, "Exited", "exit 0"), 60),
        (oom(pod("billing", "web-0"), "Container app: OOM killed java"), 120),
        (
            EventSpec::new(
                ObjectReference::node("node-1"),
                EventType::Warning,
                "SystemOOM",
                "System OOM encountered, victim process: dd, pid: 7",
            ),
            3600,
        ),
    ];
    let mut writes = Vec::new();
    for (spec, secs) in specs {
        let write = write(&mut rec, spec, at(secs));
        let recorded = journal.record(&write, &ctx, at(secs + 1)).unwrap();
        assert_eq!(recorded.row, RowChange::Appended);
        writes.push(write);
    }
    let reader = JournalReader::open(dir.path()).unwrap();
    let name = |i: usize| writes[i].name.clone();

    assert_eq!(names(&reader, &Query::default()), [0, 1, 2, 3].map(name));
    let by_namespace = Query { namespace: Some("shop".into()), ..Query::default() };
    assert_eq!(names(&reader, &by_namespace), [0, 1].map(name));
    let by_pod = Query { pod: Some("web-0".into()), ..Query::default() };
    assert_eq!(names(&reader, &by_pod), [0, 2].map(name));
    let by_reason = Query { reason: Some("OOMKilling".into()), ..Query::default() };
    assert_eq!(names(&reader, &by_reason), [0, 2].map(name));
    let since = Query { since: Some(at(60)), ..Query::default() };
    assert_eq!(names(&reader, &since), [1, 2, 3].map(name));
    let combined = Query {
        namespace: Some("shop".into()),
        pod: Some("web-0".into()),
        reason: Some("OOMKilling".into()),
        since: Some(at(0)),
        limit: None,
    };
    assert_eq!(names(&reader, &combined), [name(0)]);
    let newest_two = Query { limit: Some(2), ..Query::default() };
    assert_eq!(names(&reader, &newest_two), [2, 3].map(name));
    let nothing = Query { namespace: Some("nope".into()), ..Query::default() };
    assert_eq!(names(&reader, &nothing), Vec::<String>::new());

    let events = all(&reader);
    let first = &events[0];
    assert_eq!(first.namespace, "shop");
    assert_eq!(first.reason, "OOMKilling");
    assert_eq!(first.event_type, "Warning");
    assert_eq!(first.message, "Container app: OOM killed python3");
    assert_eq!(first.object_kind, "Pod");
    assert_eq!(first.pod_name.as_deref(), Some("web-0"));
    assert_eq!(first.pod_uid.as_deref(), Some(UID));
    assert_eq!(first.container.as_deref(), Some("app"));
    assert_eq!(first.node.as_deref(), Some("node-1"));
    assert_eq!(first.count, 1);
    assert_eq!(first.first_timestamp, at(0));
    assert_eq!(first.last_timestamp, at(0));
    assert_eq!(first.stored_at, at(1));
    assert_eq!(serde_json::from_str::<Value>(&first.event).unwrap(), writes[0].event);
    assert_eq!(serde_json::from_str::<Value>(&first.records).unwrap(), records);
    let node = &events[3];
    assert_eq!(node.namespace, "default");
    assert_eq!(node.object_kind, "Node");
    assert_eq!(node.object_name, "node-1");
    assert_eq!(node.pod_name, None);
    assert_eq!(node.container, None);
}

#[test]
fn a_patch_updates_count_and_last_timestamp_in_place() {
    let dir = TempDir::new("patch");
    let mut journal = open(&dir);
    let mut rec = recorder();
    let spec = || oom(pod("shop", "web-0"), "Container app: OOM killed python3");
    let post = write(&mut rec, spec(), at(0));
    assert_eq!(post.verb, Verb::Post);
    journal.record(&post, &EventContext::NONE, at(0)).unwrap();
    let last_records = exit_records(99);
    for secs in [30, 90] {
        let patch = write(&mut rec, spec(), at(secs));
        assert_eq!(patch.verb, Verb::Patch);
        assert_eq!(patch.name, post.name);
        let ctx = EventContext { container: Some("app"), records: &last_records };
        let recorded = journal.record(&patch, &ctx, at(secs)).unwrap();
        assert_eq!(recorded.row, RowChange::Updated);
    }
    let reader = JournalReader::open(dir.path()).unwrap();
    let events = all(&reader);
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.name, post.name);
    assert_eq!(event.count, 3);
    assert_eq!(event.first_timestamp, at(0));
    assert_eq!(event.last_timestamp, at(90));
    assert_eq!(event.stored_at, at(90));
    let json: Value = serde_json::from_str(&event.event).unwrap();
    assert_eq!(json["count"], 3);
    assert_eq!(json["lastTimestamp"], "2026-11-28T10:41:40Z");
    assert_eq!(json["firstTimestamp"], "2026-11-28T10:40:10Z");
    assert_eq!(serde_json::from_str::<Value>(&event.records).unwrap(), last_records);
    // One row, updated twice; each of the three writes queued for the API server.
    assert_eq!(journal.outbox_len().unwrap(), 3);
    let verbs: Vec<_> = journal
        .outbox(10)
        .unwrap()
        .into_iter()
        .map(|pending| (pending.write.verb, pending.write.event["count"].clone()))
        .collect();
    assert_eq!(verbs, [(Verb::Post, json!(1)), (Verb::Patch, json!(2)), (Verb::Patch, json!(3))]);
}

#[test]
fn record_local_stores_without_enqueueing() {
    let dir = TempDir::new("local");
    let mut journal = open(&dir);
    let write = write(&mut recorder(), oom(pod("a", "b"), "m"), at(0));
    let recorded = journal.record_local(&write, &EventContext::NONE, at(0)).unwrap();
    assert_eq!(recorded, Recorded { row: RowChange::Appended, outbox_id: None });
    assert_eq!(journal.outbox_len().unwrap(), 0);
    assert_eq!(all(&JournalReader::open(dir.path()).unwrap()).len(), 1);
}

#[test]
fn outbox_is_fifo_and_survives_a_restart() {
    let dir = TempDir::new("outbox");
    let mut rec = recorder();
    let writes: Vec<ApiWrite> =
        (0..5).map(|i| write(&mut rec, oom(pod("shop", &format!("web-{i}")), "m"), at(i))).collect();
    let ids: Vec<i64> = {
        let mut journal = open(&dir);
        let ids = writes
            .iter()
            .enumerate()
            .map(|(i, w)| journal.record(w, &EventContext::NONE, at(i as i64)).unwrap())
            .map(|recorded| recorded.outbox_id.unwrap())
            .collect::<Vec<_>>();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
        assert_eq!(journal.outbox(2).unwrap().len(), 2);
        assert!(journal.mark_delivered(ids[1]).unwrap());
        assert!(!journal.mark_delivered(ids[1]).unwrap());
        ids
    };
    let mut journal = open(&dir);
    let pending = journal.outbox(100).unwrap();
    let expected: Vec<(i64, &ApiWrite, Timestamp)> =
        [0, 2, 3, 4].iter().map(|&i| (ids[i], &writes[i], at(i as i64))).collect();
    let got: Vec<(i64, &ApiWrite, Timestamp)> = pending.iter().map(|p| (p.id, &p.write, p.enqueued_at)).collect();
    assert_eq!(got, expected);
    assert_eq!(journal.outbox_len().unwrap(), 4);
    // Ids are never reused, even after the newest one was delivered.
    assert!(journal.mark_delivered(ids[4]).unwrap());
    let next = journal.enqueue(&writes[0], at(10)).unwrap();
    assert!(next > ids[4], "{next} <= {}", ids[4]);
}

#[test]
fn drop_expired_counts_what_it_dropped() {
    let dir = TempDir::new("expire");
    let mut journal = open(&dir);
    let w = write(&mut recorder(), oom(pod("a", "b"), "m"), at(0));
    for secs in [0, 1800, 3600, 3660] {
        journal.enqueue(&w, at(secs)).unwrap();
    }
    // At +90 min the cutoff is +30 min; a write enqueued exactly at the cutoff is kept.
    assert_eq!(journal.drop_expired(DEFAULT_OUTBOX_MAX_AGE, at(5400)).unwrap(), 1);
    assert_eq!(journal.drop_expired(DEFAULT_OUTBOX_MAX_AGE, at(5401)).unwrap(), 1);
    assert_eq!(journal.drop_expired(DEFAULT_OUTBOX_MAX_AGE, at(5401)).unwrap(), 0);
    let left: Vec<Timestamp> = journal.outbox(10).unwrap().into_iter().map(|p| p.enqueued_at).collect();
    assert_eq!(left, [at(3600), at(3660)]);
}

#[test]
fn prune_by_age_deletes_events_older_than_max_age() {
    let dir = TempDir::new("age");
    let mut journal = open(&dir);
    let mut rec = recorder();
    // The default max age is a day: older goes, exactly a day stays.
    let day = 86_400;
    for (i, secs) in [-2 * day, -day - 1, -day, -day / 2, 0].into_iter().enumerate() {
        let w = write(&mut rec, oom(pod("a", &format!("p{i}")), "m"), at(secs));
        journal.record(&w, &EventContext::NONE, at(secs)).unwrap();
    }
    let pruned = journal.prune(at(0)).unwrap();
    assert_eq!(pruned, Pruned { events_by_age: 2, ..Pruned::default() });
    let reader = JournalReader::open(dir.path()).unwrap();
    let pods: Vec<_> = all(&reader).into_iter().map(|e| e.object_name).collect();
    assert_eq!(pods, ["p2", "p3", "p4"]);
}

#[test]
fn prune_by_size_deletes_oldest_first_until_it_fits() {
    let dir = TempDir::new("size");
    let max_bytes = 512 * 1024;
    let config = JournalConfig { max_bytes, ..JournalConfig::default() };
    let mut journal = Journal::open(dir.path(), config).unwrap();
    let mut rec = recorder();
    let records = exit_records(1);
    let ctx = EventContext { container: None, records: &records };
    let total = 1500;
    for i in 0..total {
        let message = format!("{i:04} {}", "x".repeat(900));
        let w = write(&mut rec, oom(pod("a", &format!("p{i}")), &message), at(i));
        journal.record_local(&w, &ctx, at(i)).unwrap();
    }
    assert!(journal.used_bytes().unwrap() > 3 * max_bytes);
    let pruned = journal.prune(at(total)).unwrap();
    assert_eq!((pruned.by_age, pruned.by_size, pruned.events_by_age), (0, 0, 0));
    let used = journal.used_bytes().unwrap();
    assert!(used <= max_bytes, "{used} > {max_bytes}");
    let reader = JournalReader::open(dir.path()).unwrap();
    let left = all(&reader);
    assert_eq!(pruned.events_by_size, total as u64 - left.len() as u64);
    // Not far below the bound: whole batches are not overshooting.
    assert!(used > max_bytes * 3 / 4, "{used}");
    // The survivors are exactly the newest ones.
    let first_left = total as usize - left.len();
    let pods: Vec<String> = left.into_iter().map(|e| e.object_name).collect();
    let expected: Vec<String> = (first_left..total as usize).map(|i| format!("p{i}")).collect();
    assert_eq!(pods, expected);
    // Freed pages went back to the file system.
    journal.conn_checkpoint();
    let file = fs::metadata(dir.db()).unwrap().len();
    assert!(file <= max_bytes + 64 * 1024, "file {file}");
}

#[test]
fn readers_work_while_the_writer_holds_the_journal() {
    let dir = TempDir::new("readers");
    let mut journal = open(&dir);
    let mut rec = recorder();
    let first = write(&mut rec, oom(pod("a", "one"), "m"), at(0));
    journal.record(&first, &EventContext::NONE, at(0)).unwrap();
    let reader = JournalReader::open(dir.path()).unwrap();
    let second = write(&mut rec, oom(pod("a", "two"), "m"), at(1));
    reader
        .snapshot(|reader| {
            assert_eq!(names(reader, &Query::default()), [first.name.as_str()]);
            // The writer is not blocked by the open read snapshot...
            journal.record(&second, &EventContext::NONE, at(1)).unwrap();
            // ...and the snapshot does not see its commit.
            assert_eq!(names(reader, &Query::default()), [first.name.as_str()]);
            Ok::<_, JournalError>(())
        })
        .unwrap();
    assert_eq!(names(&reader, &Query::default()), [first.name.clone(), second.name.clone()]);
}

#[test]
fn hostile_strings_come_back_byte_identical() {
    let dir = TempDir::new("hostile");
    let mut journal = open(&dir);
    let hostile = "line1\nline2\r\x1b[2J\x1b]0;pwned\x07 \u{202e}evil\u{fffd}\u{85}\0\\x41 \"q\"";
    let object = ObjectReference::pod("shop", "web-0\nfake", UID);
    let w = write(&mut recorder(), EventSpec::new(object, EventType::Warning, "OOM\x1bKilling", hostile), at(0));
    let records = json!([{"comm": hostile}]);
    let ctx = EventContext { container: Some(hostile), records: &records };
    journal.record(&w, &ctx, at(0)).unwrap();
    let reader = JournalReader::open(dir.path()).unwrap();
    let event = all(&reader).remove(0);
    assert_eq!(event.message, hostile);
    assert_eq!(event.reason, "OOM\x1bKilling");
    assert_eq!(event.pod_name.as_deref(), Some("web-0\nfake"));
    assert_eq!(event.container.as_deref(), Some(hostile));
    let json: Value = serde_json::from_str(&event.event).unwrap();
    assert_eq!(json["message"].as_str(), Some(hostile));
    let records: Value = serde_json::from_str(&event.records).unwrap();
    assert_eq!(records[0]["comm"].as_str(), Some(hostile));
    let pending = journal.outbox(1).unwrap().remove(0);
    assert_eq!(pending.write, w);
}

#[test]
fn malformed_events_are_refused_and_counted() {
    let dir = TempDir::new("malformed");
    let mut journal = open(&dir);
    let mut w = write(&mut recorder(), oom(pod("a", "b"), "m"), at(0));
    w.event["lastTimestamp"] = json!("yesterday");
    let err = journal.record(&w, &EventContext::NONE, at(0)).unwrap_err();
    assert!(matches!(err, JournalError::MalformedEvent { field: "lastTimestamp", .. }), "{err:?}");
    assert_eq!(journal.outbox_len().unwrap(), 0);
}

impl Journal {
    fn conn_checkpoint(&self) {
        self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
}

#[path = "durability_tests.rs"]
mod durability;

/// Every occurrence of `n` OOM kills of one container, one second apart from `start`, the
/// spam filter's rejections included.
fn storm(journal: &mut Journal, rec: &mut Recorder, start: i64, n: i64, message: &str) -> (u64, u64) {
    let (mut written, mut filtered) = (0, 0);
    for i in 0..n {
        let records = exit_records(u32::try_from(i).unwrap());
        let spec = oom(pod("shop", "web-0"), &format!("{message} {i}"));
        let context = EventContext { container: Some("app"), records: &records };
        let occurrence = Occurrence { time: at(start + i), spec: &spec, context };
        let write = match rec.record(spec.clone(), at(start + i)) {
            Decision::Write(write) => Some(ApiWrite::try_from(&write).unwrap()),
            Decision::SpamFiltered => None,
        };
        let recorded = journal.record_occurrence(&occurrence, write.as_ref(), true, at(start + i)).unwrap();
        assert_eq!(recorded.is_some(), write.is_some());
        if write.is_some() { written += 1 } else { filtered += 1 }
    }
    (written, filtered)
}

#[test]
fn every_occurrence_is_kept_while_the_spam_filter_caps_the_writes() {
    let dir = TempDir::new("storm");
    let mut journal = open(&dir);
    let (written, filtered) = storm(&mut journal, &mut recorder(), 0, 60, "killed");
    assert_eq!((written, filtered), (25, 35));
    assert_eq!(journal.outbox_len().unwrap(), 25);
    let reader = JournalReader::open(dir.path()).unwrap();
    let mut outcomes = Vec::new();
    reader
        .scan_occurrences(&Query::default(), |o| {
            outcomes.push((o.api, o.event_name.is_some()));
            Ok::<_, JournalError>(())
        })
        .unwrap();
    assert_eq!(outcomes.len(), 60);
    assert!(outcomes[..25].iter().all(|o| *o == ("queued".to_owned(), true)), "{outcomes:?}");
    assert!(outcomes[25..].iter().all(|o| *o == ("spam_filtered".to_owned(), false)), "{outcomes:?}");
    let summary = reader.summary(&Query::default()).unwrap();
    assert_eq!(summary.iter().map(|row| (row.count, row.spam_filtered)).collect::<Vec<_>>(), [(60, 35)]);
}

#[test]
fn prune_removes_old_occurrences_and_counts_them() {
    let dir = TempDir::new("prune-occurrences");
    let mut journal = open(&dir);
    let day = 86_400;
    storm(&mut journal, &mut recorder(), -2 * day, 5, "old");
    storm(&mut journal, &mut recorder(), 0, 3, "new");
    let pruned = journal.prune(at(10)).unwrap();
    assert_eq!(pruned, Pruned { by_age: 5, events_by_age: 5, ..Pruned::default() });
    let reader = JournalReader::open(dir.path()).unwrap();
    assert_eq!(reader.summary(&Query::default()).unwrap()[0].count, 3);
}
