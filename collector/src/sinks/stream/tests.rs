use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    time::Duration,
};

use serde_json::Value;

use super::*;
use crate::{
    clock::Timestamp,
    record::{CgroupChange, Identity, Record},
    recorder::{Decision, EventSpec, EventType, ObjectReference, Recorder, RecorderConfig},
    sinks::handler::{Decided, Delivery},
};

fn record(path: &str, namespace: &str) -> Record {
    Record::CgroupMkdir(Box::new(CgroupChange {
        time: Timestamp(1),
        cgroup_id: 7,
        cgroup_path: path.into(),
        identity: Identity { namespace: Some(namespace.to_owned()), ..Identity::default() },
    }))
}

fn with_event(record: Record, reason: &str) -> Dispatch {
    let mut recorder = Recorder::new(RecorderConfig::new("collector", "node-1")).unwrap();
    let spec = EventSpec::new(ObjectReference::pod("shop", "web-0", "u1"), EventType::Warning, reason, "m");
    let Decision::Write(write) = recorder.record(spec.clone(), Timestamp::from_unix_secs(1)) else {
        panic!("expected a write");
    };
    Dispatch::new(record, vec![Decided { spec, delivery: Delivery::Write(write) }])
}

/// The test's socket directory, removed when the test ends, however it ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fields drop in order: the server closes its socket before the directory goes.
struct Setup {
    server: StreamServer,
    handler: StreamHandler,
    metrics: Arc<Metrics>,
    _dir: TempDir,
}

fn setup(name: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("collector-stream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let metrics = Arc::new(Metrics::new("test"));
    let clients = Clients::new(Arc::clone(&metrics));
    let server = StreamServer::bind(&dir.join("s.sock"), clients.clone()).unwrap();
    Setup { server, handler: StreamHandler::new(clients), metrics, _dir: TempDir(dir) }
}

fn subscribe(server: &StreamServer, line: &str) -> BufReader<UnixStream> {
    let mut stream = UnixStream::connect(server.path()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(stream, "{line}").unwrap();
    BufReader::new(stream)
}

fn next(reader: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or(Value::Null)
}

fn wait_clients(handler: &StreamHandler, count: usize) {
    let mut now = 0;
    for _ in 0..2000 {
        now = handler.clients.list.lock().unwrap().len();
        if now == count {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{now} clients after 10 s, not {count}");
}

#[test]
fn each_client_gets_exactly_what_its_rules_pass() {
    let mut setup = setup("filters");
    let mode = std::fs::metadata(setup.server.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut all = subscribe(&setup.server, "");
    let mut shop =
        subscribe(&setup.server, r#"filters = [{ name = "shop", action = "keep", match = { namespace = "shop" } }]"#);
    let mut exits = subscribe(
        &setup.server,
        r#"filters = [{ name = "exits", action = "keep", match = { reason = "ContainerExited" } }]"#,
    );
    assert_eq!(next(&mut all), serde_json::json!({"subscribed": {"rules": 0}}));
    assert_eq!(next(&mut shop), serde_json::json!({"subscribed": {"rules": 1}}));
    assert_eq!(next(&mut exits), serde_json::json!({"subscribed": {"rules": 1}}));
    wait_clients(&setup.handler, 3);
    assert!(setup.handler.clients.active.load(Ordering::Relaxed));

    setup.handler.handle(&Dispatch::new(record("/a", "dev"), Vec::new()));
    setup.handler.handle(&with_event(record("/b", "shop"), "OOMKilling"));
    setup.handler.handle(&with_event(record("/c", "dev"), "ContainerExited"));

    let paths = |reader: &mut BufReader<UnixStream>, lines: usize| -> Vec<String> {
        (0..lines)
            .map(|_| {
                let line = next(reader);
                match (&line["record"], &line["event"]) {
                    (record, Value::Null) => format!("record {}", record["cgroup_path"].as_str().unwrap()),
                    (_, event) => format!("event {}", event["reason"].as_str().unwrap()),
                }
            })
            .collect()
    };
    assert_eq!(
        paths(&mut all, 5),
        ["record /a", "record /b", "event OOMKilling", "record /c", "event ContainerExited"]
    );
    assert_eq!(paths(&mut shop, 2), ["record /b", "event OOMKilling"]);
    // A record without events has no reason: a reason rule does not keep it.
    assert_eq!(paths(&mut exits, 2), ["record /c", "event ContainerExited"]);
    let text = setup.metrics.encode().unwrap();
    assert!(text.contains("\ncollector_stream_clients 3\n"), "{text}");
    assert!(text.contains("\ncollector_stream_lines_total 9\n"), "{text}");
}

#[test]
fn a_bad_subscription_is_answered_with_its_problem_and_closed() {
    let setup = setup("bad");
    let mut client = subscribe(&setup.server, r#"filters = [{ name = "x", action = "mute", match = { pod = "p" } }]"#);
    assert_eq!(
        next(&mut client),
        serde_json::json!({"error": "\"x\": `action`: expected \"drop\" or \"keep\", found \"mute\""})
    );
    let mut rest = String::new();
    assert_eq!(client.read_line(&mut rest).unwrap(), 0, "closed after the error");
    let mut client = subscribe(&setup.server, "pods = 1");
    assert_eq!(
        next(&mut client),
        serde_json::json!({"error": "subscription: unknown key `pods` (expected filters = [...])"})
    );
    let text = setup.metrics.encode().unwrap();
    assert!(text.contains("\ncollector_stream_clients_cut_total{cause=\"bad_filter\"} 2\n"), "{text}");
}

#[test]
fn a_client_that_does_not_read_is_cut_off_and_the_others_go_on() {
    let mut setup = setup("slow");
    let stalled = subscribe(&setup.server, "");
    let mut reading = subscribe(&setup.server, "");
    wait_clients(&setup.handler, 2);
    // The stalled client reads nothing: its socket buffer, then its queue of CLIENT_QUEUE
    // lines fill, and it is cut off. The other keeps reading on a thread.
    const LINES: usize = 3 * CLIENT_QUEUE;
    let reader = std::thread::spawn(move || {
        let mut count = 0;
        let mut line = String::new();
        while reading.read_line(&mut line).is_ok_and(|n| n > 0) {
            count += 1;
            line.clear();
            if count == LINES + 1 {
                break;
            }
        }
        // Still connected: it is the client that stays.
        (count, reading)
    });
    let big = "x".repeat(1000);
    for n in 0..LINES {
        setup.handler.handle(&Dispatch::new(record(&big, "dev"), Vec::new()));
        // Let the reading client keep up; the stalled one never will.
        if n % 256 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let (count, _reading) = reader.join().unwrap();
    assert_eq!(count, LINES + 1, "the subscribed line and every record");
    wait_clients(&setup.handler, 1);
    let text = setup.metrics.encode().unwrap();
    assert!(text.contains("\ncollector_stream_clients_cut_total{cause=\"slow\"} 1\n"), "{text}");
    drop(stalled);
}
