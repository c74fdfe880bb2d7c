//! A running `collector trace`, stopped (or killed) when the guard drops.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The collector binary: `COLLECTOR_BIN`, or the one cargo built next to the tests.
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("COLLECTOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    // target/<profile>/deps/<test> -> target/<profile>/collector
    let exe = std::env::current_exe()?;
    let bin = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join("collector"));
    match bin {
        Some(bin) if bin.is_file() => Ok(bin),
        _ => bail!("the collector binary is not built: run `cargo xtask test` (or `cargo build -p collector`)"),
    }
}

/// What the collector printed, once it stopped.
#[derive(Debug)]
pub struct Stopped {
    /// Every JSON record it printed.
    pub records: Vec<Value>,
    /// Its standard error.
    pub stderr: String,
    /// How it exited.
    pub status: ExitStatus,
}

impl Stopped {
    /// A counter from the summary line (`records`, `lost`, `malformed`, `filtered`).
    pub fn summary(&self, name: &str) -> Result<u64> {
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("collector: stopped: "))
            .with_context(|| format!("no summary line in stderr:\n{}", self.stderr))?;
        // "collector: stopped: 5 records, 0 lost (ring buffer full), 0 malformed, ..."
        line.trim_start_matches("collector: stopped: ")
            .split(", ")
            .find_map(|part| {
                let (value, label) = part.split_once(' ')?;
                label.split(' ').next().filter(|l| *l == name).and(value.parse().ok())
            })
            .with_context(|| format!("no `{name}` in summary: {line}"))
    }
}

/// What a collector child prints, read by two threads: JSON lines on stdout, and stderr.
pub struct ChildOutput {
    json: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// While set, stdout is not read: the child's writes fill the pipe and then block.
    stalled: Arc<AtomicBool>,
}

impl ChildOutput {
    /// Starts reading `child`'s output. The rest of the first stderr line that
    /// starts with `ready` is sent on the returned channel.
    pub fn capture(child: &mut Child, ready: &'static str) -> Result<(Self, mpsc::Receiver<String>)> {
        Self::capture_stalled(child, ready, false)
    }

    /// [`Self::capture`], with stdout left unread until [`Self::resume_stdout`] if `stalled`.
    pub fn capture_stalled(
        child: &mut Child,
        ready: &'static str,
        stalled: bool,
    ) -> Result<(Self, mpsc::Receiver<String>)> {
        let json = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().context("no stdout")?;
        let sink = Arc::clone(&json);
        let stalled = Arc::new(AtomicBool::new(stalled));
        let wait = Arc::clone(&stalled);
        let stdout = std::thread::spawn(move || {
            while wait.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|err| Value::String(format!("NOT JSON ({err}): {line}")));
                sink.lock().map(|mut values| values.push(value)).ok();
            }
        });
        let text = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().context("no stderr")?;
        let sink = Arc::clone(&text);
        let stderr = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix(ready) {
                    let _ = ready_tx.send(rest.to_owned());
                }
                sink.lock().map(|mut text| text.push_str(&(line + "\n"))).ok();
            }
        });
        Ok((Self { json, stderr: text, threads: vec![stdout, stderr], stalled }, ready_rx))
    }

    /// Starts reading stdout after [`Self::capture_stalled`].
    pub fn resume_stdout(&self) {
        self.stalled.store(false, Ordering::Relaxed);
    }

    /// The JSON values printed so far.
    pub fn json(&self) -> Vec<Value> {
        self.json.lock().map(|values| values.clone()).unwrap_or_default()
    }

    /// Standard error so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|text| text.clone()).unwrap_or_default()
    }

    /// Waits until the child closed its output (after it exited).
    pub fn join(&mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A `collector trace --format json` child process.
pub struct Collector {
    child: Child,
    output: ChildOutput,
}

impl Collector {
    /// Starts `collector trace --format json ARGS` and waits until its probes are attached.
    pub fn trace(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(binary()?)
            .args(["--log-format", "text", "trace", "--format", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the collector")?;
        let (output, ready_rx) = ChildOutput::capture(&mut child, "collector: tracing")?;
        let mut collector = Self { child, output };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = collector.child.kill();
            let _ = collector.child.wait();
            bail!("the collector did not become ready in 30 s; stderr:\n{}", collector.output.stderr());
        }
        Ok(collector)
    }

    /// The collector's pid.
    pub fn pid(&self) -> i32 {
        self.child.id().cast_signed()
    }

    /// Waits until `done` holds for the records printed so far.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.output.json();
            if done(&records) {
                return Ok(records);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?}; records so far:\n{records:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGINT and collects everything it printed.
    pub fn stop(mut self) -> Result<Stopped> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid(), libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("the collector did not stop within 30 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.output.join();
        Ok(Stopped { records: self.output.json(), stderr: self.output.stderr(), status })
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
