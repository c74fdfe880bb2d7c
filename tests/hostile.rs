//! Hostile input: processes whose names hold newlines, quotes, ANSI escapes, invalid UTF-8
//! and the full 15 bytes, in cgroups with odd characters in their names. Every output stays
//! well-formed and escaped the one documented way (`collector::escape`): printable UTF-8 as
//! it is, `\` as `\\`, control characters and bytes that are not UTF-8 as `\xNN` per byte.
//! Needs no containerd, so it also runs in the VM.
#![expect(clippy::unwrap_used, clippy::panic, reason = "the helpers are test steps: a failure fails the test")]

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    os::unix::ffi::OsStrExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use collector_tests::{
    cgroup::{CgroupDir, command_in},
    collector::{Collector, binary},
    daemon::{Daemon, StateDir, journal_events},
    exposition,
    hostile::{CGROUP_NAMES, MIX, NAMES, hex},
    privileged,
};
use serde_json::Value;

const NAMER: &str = env!("CARGO_BIN_EXE_namer");

/// A cgroup v2 directory with a name that is not UTF-8, below a `CgroupDir`; removed on drop
/// (before its parent, which is declared first).
struct RawChild {
    dir: PathBuf,
}

impl RawChild {
    fn new(parent: &CgroupDir, name: &[u8]) -> Self {
        let dir = parent.dir().join(OsStr::from_bytes(name));
        std::fs::create_dir(&dir).unwrap();
        Self { dir }
    }
}

impl Drop for RawChild {
    fn drop(&mut self) {
        for _ in 0..200 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs `namer NAME exit CODE` in `cgroup_dirs` to its end; returns its pid.
fn run_named(cmd: &mut Command, name: &[u8], code: u8) -> u32 {
    let mut child = cmd.args([hex(name), "exit".to_owned(), code.to_string()]).spawn().unwrap();
    let pid = child.id();
    assert_eq!(child.wait().unwrap().code(), Some(i32::from(code)), "namer {:?}", String::from_utf8_lossy(name));
    pid
}

/// A `collector trace --format text` child whose stdout goes to a file, so its bytes are kept
/// exactly as printed.
struct TextTrace {
    child: Child,
    out: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl TextTrace {
    fn start(args: &[&str]) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let out = std::env::temp_dir().join(format!(
            "collector-hostile-text-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&out).unwrap();
        let mut child = Command::new(binary().unwrap())
            .args(["trace", "--format", "text"])
            .args(args)
            .stdout(file)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("collector: tracing") {
                    let _ = ready_tx.send(());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let trace = Self { child, out, stderr: text };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("the text collector did not become ready: {}", trace.stderr.lock().unwrap());
        }
        trace
    }

    /// Stops it with SIGINT and returns its stdout, byte for byte.
    fn stop(mut self) -> Vec<u8> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id().cast_signed(), libc::SIGINT) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "text collector: {status}\n{}", self.stderr.lock().unwrap());
        std::fs::read(&self.out).unwrap()
    }
}

impl Drop for TextTrace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// Text output is lines of UTF-8 with no control character but the line ends (no escape
/// sequence can reach a terminal), a header, then one line per record.
fn check_text(out: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(out).unwrap_or_else(|err| panic!("text output is not UTF-8: {err}"));
    assert!(text.ends_with('\n'), "{text}");
    for c in text.chars() {
        assert!(c == '\n' || !c.is_control(), "raw control character {c:?} in text output:\n{text}");
    }
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines[0].starts_with("TIME "), "header first: {text}");
    lines
}

/// The text line of an exit, after the 30-column time and its space.
fn text_exit(pid: u32, comm: &str, code: u8, cgroup: &str) -> String {
    format!("{:<6} {:>7} {:>7} {:<16} {:>4} {:<8} {}", "exit", pid, std::process::id(), comm, code, "-", cgroup)
}

/// The one text line of `pid`, without its time.
fn text_line_of(lines: &[String], pid: u32) -> String {
    let mine: Vec<&String> = lines
        .iter()
        .filter(|l| l.get(31..).is_some_and(|rest| rest.split_whitespace().nth(1) == Some(&pid.to_string())))
        .collect();
    assert_eq!(mine.len(), 1, "one text line for pid {pid}: {lines:#?}");
    mine[0][31..].to_owned()
}

/// The one JSON record of `pid`.
fn json_record_of(records: &[Value], pid: u32) -> &Value {
    let mine: Vec<&Value> = records.iter().filter(|r| r["pid"] == pid).collect();
    assert_eq!(mine.len(), 1, "one record for pid {pid}: {records:#?}");
    mine[0]
}

#[test]
fn hostile_process_names_are_escaped_in_json_and_text() {
    if !privileged("hostile_process_names_are_escaped_in_json_and_text") {
        return;
    }
    let cgroup = CgroupDir::new("hostile-names").unwrap();
    let filter = ["--cgroup", cgroup.path(), "--type", "exit", "--cri-socket", "none"];
    let json = Collector::trace(&filter).unwrap();
    let text = TextTrace::start(&filter);
    let pids: Vec<u32> = NAMES
        .iter()
        .zip(10_u8..)
        .map(|(name, code)| run_named(&mut cgroup.command(NAMER).unwrap(), name.raw, code))
        .collect();
    json.wait_for(Duration::from_secs(10), |records| records.len() >= NAMES.len()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopped = json.stop().unwrap();
    let out = text.stop();

    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(stopped.summary("lost").unwrap(), 0);
    assert_eq!(stopped.summary("malformed").unwrap(), 0);
    // Each stdout line parsed as JSON (the harness keeps a line that does not as a string).
    assert_eq!(stopped.records.len(), NAMES.len(), "{:#?}", stopped.records);
    for ((name, code), pid) in NAMES.iter().zip(10_u8..).zip(&pids) {
        let record = json_record_of(&stopped.records, *pid);
        assert_eq!(record["comm"], name.shown, "{record}");
        assert_eq!(record["cgroup_path"], cgroup.path());
        assert_eq!(record["exit_code"], code);
        assert_eq!(record["ppid"], std::process::id());
    }

    let lines = check_text(&out);
    assert_eq!(lines.len(), 1 + NAMES.len(), "a header and one line per exit: {lines:#?}");
    for ((name, code), pid) in NAMES.iter().zip(10_u8..).zip(&pids) {
        assert_eq!(text_line_of(&lines, *pid), text_exit(*pid, name.shown, code, cgroup.path()));
    }
}

#[test]
fn odd_cgroup_names_are_escaped_in_json_and_text() {
    if !privileged("odd_cgroup_names_are_escaped_in_json_and_text") {
        return;
    }
    // /proc/PID/cgroup is one line per hierarchy: the kernel refuses a newline in a name.
    let refused = CgroupDir::new("new\nline").unwrap_err();
    let errno = refused.chain().find_map(|e| e.downcast_ref::<std::io::Error>()).and_then(std::io::Error::raw_os_error);
    assert_eq!(errno, Some(libc::EINVAL), "{refused:#}");

    let cgroups: Vec<(CgroupDir, String)> = CGROUP_NAMES
        .iter()
        .map(|(raw, shown)| {
            let dir = CgroupDir::new(raw).unwrap();
            let path = dir.path().replace(raw, shown);
            (dir, path)
        })
        .collect();
    let parent = CgroupDir::new("raw-parent").unwrap();
    let raw = RawChild::new(&parent, b"inv\xff\xfe\x1b");
    let raw_path = format!("{}/inv\\xff\\xfe\\x1b", parent.path());

    // Unfiltered (the whole node's exits): every line any process makes must stay well-formed.
    let json = Collector::trace(&["--type", "exit", "--cri-socket", "none"]).unwrap();
    let text = TextTrace::start(&["--type", "exit", "--cri-socket", "none"]);
    let name = MIX.raw;
    let mut runs: Vec<(u32, String)> = cgroups
        .iter()
        .map(|(dir, shown)| (run_named(&mut dir.command(NAMER).unwrap(), name, 3), shown.clone()))
        .collect();
    runs.push((run_named(&mut command_in(NAMER, &[&raw.dir]).unwrap(), name, 3), raw_path));
    json.wait_for(Duration::from_secs(10), |records| {
        runs.iter().all(|(pid, _)| records.iter().any(|r| r["pid"] == *pid))
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopped = json.stop().unwrap();
    let out = text.stop();

    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(stopped.summary("malformed").unwrap(), 0);
    for record in &stopped.records {
        assert!(record.is_object(), "every line is a JSON object: {record}");
    }
    let lines = check_text(&out);
    for (pid, shown) in &runs {
        let record = json_record_of(&stopped.records, *pid);
        assert_eq!(record["cgroup_path"], shown.as_str(), "{record}");
        assert_eq!(record["comm"], MIX.shown);
        assert_eq!(text_line_of(&lines, *pid), text_exit(*pid, MIX.shown, 3, shown));
    }
}

#[test]
fn trace_filters_odd_cgroup_paths_as_the_kernel_names_them() {
    if !privileged("trace_filters_odd_cgroup_paths_as_the_kernel_names_them") {
        return;
    }
    // `--cgroup` takes the directory's real name; records show it escaped.
    let cgroup = CgroupDir::new("filter back\\slash esc\x1b tab\t").unwrap();
    let shown = cgroup.path().replace('\\', "\\\\").replace('\x1b', "\\x1b").replace('\t', "\\x09");
    let json = Collector::trace(&["--cgroup", cgroup.path(), "--type", "exit", "--cri-socket", "none"]).unwrap();
    let pid = run_named(&mut cgroup.command(NAMER).unwrap(), b"filtered", 4);
    json.wait_for(Duration::from_secs(10), |records| !records.is_empty()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopped = json.stop().unwrap();
    assert_eq!(stopped.records.len(), 1, "{:#?}\n{}", stopped.records, stopped.stderr);
    assert_eq!(stopped.records[0]["pid"], pid);
    assert_eq!(stopped.records[0]["cgroup_path"], shown.as_str());
}

/// `collector_kernel_records_total{type="exit"}` from a checked exposition.
fn delivered_exits(daemon: &Daemon) -> f64 {
    let samples = exposition::parse(&daemon.metrics().unwrap()).unwrap();
    exposition::value(&samples, "collector_kernel_records_total", &[("type", "exit")]).unwrap()
}

#[test]
fn hostile_names_and_paths_keep_the_daemons_outputs_well_formed() {
    if !privileged("hostile_names_and_paths_keep_the_daemons_outputs_well_formed") {
        return;
    }
    let state = StateDir::new("hostile").unwrap();
    let daemon = Daemon::start(&state, &["stdout", "journal"], "none", &[]).unwrap();
    let before = delivered_exits(&daemon);
    let cgroups: Vec<CgroupDir> = CGROUP_NAMES.iter().map(|(raw, _)| CgroupDir::new(raw).unwrap()).collect();
    let mut runs = 0;
    for (dir, name) in cgroups.iter().zip(NAMES.iter().cycle()) {
        run_named(&mut dir.command(NAMER).unwrap(), name.raw, 1);
        // A crash and a kill too: the kinds of death that give Events in a pod.
        let status = dir.command(NAMER).unwrap().args([hex(name.raw).as_str(), "segv"]).status().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGSEGV));
        let mut waiting =
            dir.command(NAMER).unwrap().args([hex(name.raw).as_str(), "wait"]).stdout(Stdio::piped()).spawn().unwrap();
        let mut named = String::new();
        BufReader::new(waiting.stdout.take().unwrap()).read_line(&mut named).unwrap();
        waiting.kill().unwrap();
        waiting.wait().unwrap();
        runs += 3;
    }
    // The daemon counts every exit it read (the node's too): wait until ours are in.
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered_exits(&daemon) < before + f64::from(runs) {
        assert!(Instant::now() < deadline, "the daemon did not read {runs} exits:\n{}", daemon.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every line of the exposition is a well-formed comment or sample (parse checks).
    let samples = exposition::parse(&daemon.metrics().unwrap()).unwrap();
    assert_eq!(exposition::value(&samples, "collector_records_malformed_total", &[]), Some(0.0));

    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    // A bare cgroup names no pod: these deaths give no Event (cri_hostile covers pods). The
    // stdout sink printed nothing that is not a JSON object, and the journal reads back.
    for event in &stopped.events {
        assert!(event.is_object(), "stdout sink printed a line that is not JSON: {event}");
    }
    assert_eq!(stopped.events, Vec::<Value>::new(), "no Event without a pod");
    assert_eq!(journal_events(state.path(), &[]).unwrap(), Vec::<Value>::new());
    for line in stopped.stderr.lines() {
        assert!(!line.chars().any(char::is_control), "raw control character in the daemon's log: {line:?}");
    }
}
