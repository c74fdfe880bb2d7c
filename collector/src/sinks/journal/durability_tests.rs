//! The file itself: a daemon killed mid-write, damaged and foreign files, pragmas, and what
//! durability costs.

use std::{
    process::{Command, Stdio},
    thread::sleep,
    time::Instant,
};

use super::*;

const CHILD_ENV: &str = "COLLECTOR_JOURNAL_CRASH_DIR";

fn filler(i: i64) -> String {
    format!("Container app: OOM killed python3 (pid {i}) {}", "x".repeat(200))
}

/// Runs only as the child of `sigkill_mid_write_recovers`: writes until killed.
#[test]
#[ignore = "child process of sigkill_mid_write_recovers"]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut journal = Journal::open(&dir, JournalConfig::default()).unwrap();
    let mut rec = recorder();
    let records = exit_records(1);
    let ctx = EventContext { container: None, records: &records };
    for i in 0_i64.. {
        let w = write(&mut rec, oom(pod("a", &format!("p{i}")), &filler(i)), at(i));
        journal.record(&w, &ctx, at(i)).unwrap();
        if i == 200 {
            fs::write(dir.join("ready"), b"").unwrap();
        }
    }
}

#[test]
fn sigkill_mid_write_recovers() {
    let dir = TempDir::new("crash");
    let module = module_path!().split_once("::").unwrap().1;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([&format!("{module}::crash_child_writer"), "--exact", "--ignored", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("ready").exists() {
        assert!(Instant::now() < deadline, "the child never got going");
        assert!(child.try_wait().unwrap().is_none(), "the child exited");
        sleep(Duration::from_millis(10));
    }
    sleep(Duration::from_millis(200));
    child.kill().unwrap(); // SIGKILL, in the middle of a stream of transactions
    child.wait().unwrap();
    let wal = dir.db().with_extension("db-wal");
    assert!(fs::metadata(&wal).unwrap().len() > 0, "nothing left to recover");

    // A reader first: it has to recover the WAL index without write access.
    let reader = JournalReader::open(dir.path()).unwrap();
    let events = all(&reader);
    assert!(events.len() > 200, "{}", events.len());
    drop(reader);

    let mut journal = open(&dir);
    let pending = journal.outbox(usize::MAX).unwrap();
    // Each event and its outbox entry were one transaction: both survived or neither did.
    assert_eq!(pending.len(), events.len());
    for (i, (event, pending)) in events.iter().zip(&pending).enumerate() {
        assert_eq!(event.object_name, format!("p{i}"));
        assert_eq!(event.message, filler(i as i64));
        assert_eq!(pending.id, i as i64 + 1);
        assert_eq!(pending.write.name, event.name);
    }
    let next = write(&mut recorder(), oom(pod("a", "after"), "m"), at(-1));
    journal.record(&next, &EventContext::NONE, at(0)).unwrap();
    let check: String = journal.conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn missing_and_empty_files_are_told_apart_from_corrupt_ones() {
    let dir = TempDir::new("missing");
    let err = JournalReader::open(dir.path()).err().unwrap();
    assert!(matches!(&err, JournalError::Missing { path } if *path == dir.db()), "{err:?}");
    fs::write(dir.db(), b"").unwrap();
    let err = JournalReader::open(dir.path()).err().unwrap();
    assert!(matches!(err, JournalError::Empty { .. }), "{err:?}");
    // The writer takes an empty file as a new journal.
    drop(open(&dir));
    assert_eq!(all(&JournalReader::open(dir.path()).unwrap()).len(), 0);
}

#[test]
fn garbage_and_truncated_files_give_an_error_naming_the_file() {
    let dir = TempDir::new("garbage");
    fs::write(dir.db(), "this is not a database, just text\n".repeat(200)).unwrap();
    for err in [
        Journal::open(dir.path(), JournalConfig::default()).err().unwrap(),
        JournalReader::open(dir.path()).err().unwrap(),
    ] {
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&dir.db().display().to_string()), "{text}");
        assert!(text.contains("file is not a database"), "{text}");
    }

    let dir = TempDir::new("truncated");
    {
        let mut journal = open(&dir);
        let mut rec = recorder();
        for i in 0..400 {
            let w = write(&mut rec, oom(pod("a", &format!("p{i}")), &"m".repeat(500)), at(i));
            journal.record(&w, &EventContext::NONE, at(i)).unwrap();
        }
    }
    let len = fs::metadata(dir.db()).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(dir.db()).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let err = Journal::open(dir.path(), JournalConfig::default()).err().unwrap();
    assert!(matches!(err, JournalError::Corrupt { .. } | JournalError::IntegrityCheck { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.db().display().to_string()), "{err}");
    // A reader notices when it opens the file or reaches the missing pages.
    let err = match JournalReader::open(dir.path()) {
        Err(err) => err,
        Ok(reader) => reader.scan(&Query::default(), |_| Ok::<_, JournalError>(())).unwrap_err(),
    };
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.db().display().to_string()), "{err}");
}

#[test]
fn foreign_databases_are_refused_untouched() {
    let dir = TempDir::new("foreign");
    {
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch("CREATE TABLE songs (title TEXT); INSERT INTO songs VALUES ('x');").unwrap();
    }
    let before = fs::read(dir.db()).unwrap();
    let err = Journal::open(dir.path(), JournalConfig::default()).err().unwrap();
    assert!(matches!(err, JournalError::Foreign { application_id: 0, .. }), "{err:?}");
    assert!(err.to_string().contains("not a collector event journal"), "{err}");
    assert_eq!(fs::read(dir.db()).unwrap(), before);
    let err = JournalReader::open(dir.path()).err().unwrap();
    assert!(matches!(err, JournalError::Foreign { .. }), "{err:?}");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = TempDir::new("schema");
    drop(open(&dir));
    {
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute("UPDATE schema_version SET version = 3", []).unwrap();
    }
    let err = Journal::open(dir.path(), JournalConfig::default()).err().unwrap();
    assert!(matches!(err, JournalError::UnsupportedSchema { found: 3, .. }), "{err:?}");
    let err = JournalReader::open(dir.path()).err().unwrap();
    assert!(matches!(err, JournalError::UnsupportedSchema { found: 3, .. }), "{err:?}");
}

#[test]
fn a_version_1_journal_is_upgraded_by_the_daemon_and_keeps_its_events() {
    let dir = TempDir::new("v1");
    {
        let mut journal = open(&dir);
        let mut rec = recorder();
        let spec = EventSpec::new(pod("shop", "web-0"), EventType::Warning, "OOMKilling", "m");
        journal.record(&write(&mut rec, spec, at(0)), &EventContext::NONE, at(0)).unwrap();
    }
    {
        // What version 1 had: no occurrences table.
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch("DROP TABLE occurrences; UPDATE schema_version SET version = 1").unwrap();
    }
    let err = JournalReader::open(dir.path()).err().unwrap();
    assert!(matches!(err, JournalError::OldSchema { found: 1, .. }), "{err:?}");
    assert!(
        err.to_string()
            .ends_with("has schema version 1; the collector daemon of this version upgrades it to 2 when it starts"),
        "{err}"
    );
    drop(open(&dir));
    let reader = JournalReader::open(dir.path()).unwrap();
    let mut reasons = Vec::new();
    reader
        .scan(&Query::default(), |event| {
            reasons.push(event.reason);
            Ok::<_, JournalError>(())
        })
        .unwrap();
    assert_eq!(reasons, ["OOMKilling"]);
}

#[test]
fn the_journal_uses_wal_and_normal_sync() {
    let dir = TempDir::new("pragmas");
    let journal = open(&dir);
    let mode: String = journal.conn.pragma_query_value(None, "journal_mode", |row| row.get(0)).unwrap();
    let sync: i64 = journal.conn.pragma_query_value(None, "synchronous", |row| row.get(0)).unwrap();
    let auto_vacuum: i64 = journal.conn.pragma_query_value(None, "auto_vacuum", |row| row.get(0)).unwrap();
    assert_eq!((mode.as_str(), sync, auto_vacuum), ("wal", 1, 2));
}

/// `cargo test --release -- --ignored --nocapture measure_`: insert rate and size.
#[test]
#[ignore = "measurement, prints numbers"]
fn measure_insert_rate_and_size() {
    for sync in ["NORMAL", "FULL"] {
        let dir = TempDir::new("measure");
        let mut journal = open(&dir);
        journal.conn.pragma_update(None, "synchronous", sync).unwrap();
        let mut rec = recorder();
        let records = exit_records(4242);
        let ctx = EventContext { container: Some("app"), records: &records };
        let n = 5000_i64;
        let writes: Vec<ApiWrite> = (0..n)
            .map(|i| {
                let message = format!(
                    "Memory cgroup out of memory: Killed process {i} (python3) total-vm:1234567kB, \
                     anon-rss:204800kB, file-rss:1024kB, shmem-rss:0kB, UID:1000 pgtables:512kB \
                     oom_score_adj:999"
                );
                write(&mut rec, oom(pod("shop", &format!("web-{i}")), &message), at(i))
            })
            .collect();
        let started = Instant::now();
        for (i, w) in writes.iter().enumerate() {
            journal.record(w, &ctx, at(i as i64)).unwrap();
        }
        let elapsed = started.elapsed();
        let used = journal.used_bytes().unwrap();
        let event_json = serde_json::to_string(&writes[0].event).unwrap().len();
        println!(
            "synchronous={sync}: {n} record() in {elapsed:?} = {:.0}/s; {} bytes per 1000 events \
             (event JSON {event_json} B, records JSON {} B)",
            n as f64 / elapsed.as_secs_f64(),
            used * 1000 / n as u64,
            records.to_string().len(),
        );
        let started = Instant::now();
        let patch_spec = || oom(pod("shop", "web-0"), "repeat");
        let mut config = RecorderConfig::new("collector", "node-1");
        config.spam_burst = u32::MAX;
        let mut rec = Recorder::new(config).unwrap();
        for i in 0..n {
            let w = write(&mut rec, patch_spec(), at(n + i));
            journal.record(&w, &ctx, at(n + i)).unwrap();
        }
        println!("  {n} repeats (1 POST then PATCHes): {:?}", started.elapsed());
        let started = Instant::now();
        let pending = journal.outbox(100).unwrap();
        for p in &pending {
            journal.mark_delivered(p.id).unwrap();
        }
        println!("  outbox(100) + 100 mark_delivered: {:?}", started.elapsed());
        while !journal.outbox(1000).unwrap().is_empty() {
            let pending = journal.outbox(1000).unwrap();
            for p in &pending {
                journal.mark_delivered(p.id).unwrap();
            }
        }
        journal.prune(at(2 * n)).unwrap();
        println!(
            "  with the outbox delivered: {} bytes per 1000 events",
            journal.used_bytes().unwrap() * 1000 / (n as u64 + 1)
        );
        let started = Instant::now();
        let reader = JournalReader::open(dir.path()).unwrap();
        let count = reader.scan(&Query::default(), |_| Ok::<_, JournalError>(())).unwrap();
        println!("  scan of {count} rows: {:?}", started.elapsed());
        drop(journal);
        let started = Instant::now();
        drop(open(&dir));
        println!("  reopen (quick_check) of {} bytes: {:?}", used, started.elapsed());
    }
}
