//! The processes and kernel state a benchmark run makes, each behind a guard that undoes it.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

use collector_common::time::parse_rfc3339;

/// Where the collector's stdout goes.
pub(super) enum Stdout {
    /// `> /dev/null`.
    Null,
    /// Read line by line: each record's ppid and its latency (read time minus record time).
    Records,
}

/// One record as the benchmark saw it arrive.
#[derive(Clone, Copy, Debug)]
pub(super) struct Arrival {
    /// The record's `pid` (0 if absent).
    pub pid: u32,
    /// The record's `ppid` (0 if absent).
    pub ppid: u32,
    /// Wall clock when the line was read minus the record's `time`, in nanoseconds.
    pub latency_ns: i64,
}

/// A running `collector trace`, killed on drop if it was not stopped.
pub(super) struct Collector {
    child: Child,
    stderr: Arc<Mutex<String>>,
    threads: Vec<JoinHandle<()>>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
}

impl Collector {
    /// Starts `collector trace ARGS` and waits for its "tracing" line.
    pub(super) fn start(bin: &Path, args: &[&str], stdout: Stdout) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg("trace")
            .args(args)
            .stdout(match stdout {
                Stdout::Null => Stdio::null(),
                Stdout::Records => Stdio::piped(),
            })
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::new();
        let pipe = child.stderr.take().context("no stderr pipe")?;
        let text = Arc::clone(&stderr);
        threads.push(std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.starts_with("collector: tracing") {
                    let _ = ready_tx.send(());
                }
                if let Ok(mut text) = text.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        }));
        if let Some(pipe) = child.stdout.take() {
            let sink = Arc::clone(&arrivals);
            threads.push(std::thread::spawn(move || read_records(pipe, &sink)));
        }
        let mut collector = Self { child, stderr, threads, arrivals };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = collector.child.kill();
            let _ = collector.child.wait();
            bail!("the collector did not start tracing within 60 s; stderr:\n{}", collector.stderr_text());
        }
        Ok(collector)
    }

    /// Its pid.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many records have arrived so far.
    pub(super) fn arrived(&self) -> usize {
        self.arrivals.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// CPU time it has used so far (user + system, all threads).
    pub(super) fn cpu(&self) -> Result<Duration> {
        cpu_of(self.pid())
    }

    /// A `kB` field of `/proc/PID/status` (`VmHWM`, `VmRSS`), in bytes.
    pub(super) fn status_bytes(&self, field: &str) -> Result<u64> {
        status_bytes_of(self.pid(), field)
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Sends SIGINT, waits for the exit, and returns what it printed.
    pub(super) fn stop(mut self) -> Result<Stopped> {
        signal(self.pid(), "INT")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("the collector did not stop within 60 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let stderr = self.stderr_text();
        if !status.success() {
            bail!("the collector failed ({status}); stderr:\n{stderr}");
        }
        let arrivals = std::mem::take(&mut *self.arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        Ok(Stopped { stderr, arrivals })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_records(pipe: std::process::ChildStdout, sink: &Mutex<Vec<Arrival>>) {
    // A hand-rolled scan, not a JSON parse: the reader shares two cores with the storm it measures.
    let mut reader = BufReader::with_capacity(1 << 16, pipe);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(0));
        let time = field(&line, "\"time\":\"").and_then(|t| parse_rfc3339(t.split('"').next()?));
        let number = |key: &str| {
            field(&line, key).and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()).unwrap_or(0)
        };
        let arrival = Arrival {
            pid: number("\"pid\":"),
            ppid: number("\"ppid\":"),
            latency_ns: time.map_or(i64::MIN, |t| now - t),
        };
        if let Ok(mut sink) = sink.lock() {
            sink.push(arrival);
        }
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.find(key).map(|at| &line[at + key.len()..])
}

/// What a stopped collector printed.
pub(super) struct Stopped {
    /// Its standard error, with the summary line.
    pub stderr: String,
    /// Every record line it printed, in order.
    pub arrivals: Vec<Arrival>,
}

impl Stopped {
    /// A counter from `collector: stopped: 5 records, 0 lost (ring buffer full), 0 exits lost, ...`.
    pub(super) fn summary(&self, label: &str) -> Result<u64> {
        let line = self
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("collector: stopped: "))
            .with_context(|| format!("no summary line in the collector's stderr:\n{}", self.stderr))?;
        line.split(", ")
            .find_map(|part| {
                let (value, rest) = part.split_once(' ')?;
                rest.starts_with(label).then(|| value.parse().ok())?
            })
            .with_context(|| format!("no `{label}` in the summary: {line}"))
    }
}

/// Sends a signal by name with kill(1): xtask has no libc.
pub(super) fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill").args(["-s", name, &pid.to_string()]).status().context("cannot run kill")?;
    if !status.success() {
        bail!("kill -s {name} {pid} failed ({status})");
    }
    Ok(())
}

/// The result of one `forkloop` run.
#[derive(Clone, Copy, Debug)]
pub(super) struct LoopRun {
    /// Children reaped (or threads joined).
    pub ops: u64,
    /// Seconds it ran.
    pub secs: f64,
    /// CPU seconds of the loop and its children (their exits, and the probes in them, included).
    pub cpu_secs: f64,
    /// Its pid: the ppid of every child it forked.
    pub pid: u32,
}

impl LoopRun {
    /// Operations per second.
    pub(super) fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// Operations per CPU second: unlike the rate, hardly moved by other work on the machine.
    pub(super) fn per_cpu_sec(&self) -> f64 {
        self.ops as f64 / self.cpu_secs.max(1e-6)
    }
}

/// Runs `forkloop ARGS` to completion (it is killed if the benchmark stops early).
pub(super) fn forkloop(bin: &Path, args: &[String]) -> Result<LoopRun> {
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let guard = KillOnDrop(Some(child));
    let output = guard.wait_output()?;
    if !output.status.success() {
        bail!("forkloop {} failed ({})", args.join(" "), output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value =
        serde_json::from_str(text.trim()).with_context(|| format!("forkloop said {text}"))?;
    let number =
        |key: &str| value.get(key).and_then(serde_json::Value::as_f64).with_context(|| format!("forkloop said {text}"));
    Ok(LoopRun {
        ops: number("ops")? as u64,
        secs: number("secs")?,
        cpu_secs: number("cpu_secs")?,
        pid: number("pid")? as u32,
    })
}

struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn wait_output(mut self) -> Result<std::process::Output> {
        let child = self.0.take().context("no child")?;
        Ok(child.wait_with_output()?)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `sysctl NAME=VALUE` for the guard's lifetime; the old value comes back on drop.
pub(super) struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    /// Sets `/proc/sys/<name with / for .>` to `value`.
    pub(super) fn set(name: &str, value: &str) -> Result<Self> {
        let path = Path::new("/proc/sys").join(name.replace('.', "/"));
        let old = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        std::fs::write(&path, value).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { path, old: old.trim().to_owned() })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if std::fs::write(&self.path, &self.old).is_err() {
            println!("warning: could not restore {} to {}", self.path.display(), self.old);
        }
    }
}

/// cgroup directories made by the benchmark, removed deepest first on drop. Directories that
/// already existed (a shared `/kubepods`) are used but never removed.
pub(super) struct Cgroups {
    root: PathBuf,
    created: Vec<PathBuf>,
}

impl Cgroups {
    /// Nothing yet, under the cgroup v2 mount `root`.
    pub(super) fn new(root: PathBuf) -> Self {
        Self { root, created: Vec::new() }
    }

    /// Creates `rel` (relative to the v2 root) and any missing parents; returns its directory.
    pub(super) fn create(&mut self, rel: &str) -> Result<PathBuf> {
        let mut dir = self.root.clone();
        for component in rel.split('/').filter(|c| !c.is_empty()) {
            dir.push(component);
            match std::fs::create_dir(&dir) {
                Ok(()) => self.created.push(dir.clone()),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(err).with_context(|| format!("cannot create cgroup {}", dir.display())),
            }
        }
        Ok(dir)
    }

    /// Removes `dir` now (it must have been created by [`Self::create`]).
    pub(super) fn remove(&mut self, dir: &Path) -> Result<()> {
        remove_cgroup(dir)?;
        self.created.retain(|d| d != dir);
        Ok(())
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.created.drain(..).rev() {
            if let Err(err) = remove_cgroup(&dir) {
                println!("warning: {err:#}");
            }
        }
    }
}

/// Removes a cgroup directory once its last exiting process has left it.
fn remove_cgroup(dir: &Path) -> Result<()> {
    for _ in 0..500 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    bail!(
        "could not remove cgroup {} (processes: {})",
        dir.display(),
        procs.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// CPU time process `pid` has used so far (user + system, all threads), from `/proc/PID/stat`.
pub(super) fn cpu_of(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised name: state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("malformed /proc/PID/stat");
    // USER_HZ is 100 on every Linux architecture the collector runs on.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// A `kB` field of `/proc/PID/status` (`VmHWM`, `VmRSS`) of process `pid`, in bytes.
pub(super) fn status_bytes_of(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
