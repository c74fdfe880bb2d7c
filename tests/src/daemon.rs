//! A running `collector run` (the daemon), stopped (or killed) when the guard drops; its
//! state dir; and `collector events`, the journal's reader.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::collector::{ChildOutput, binary};

/// What the daemon prints on stderr once its probes, metadata and sinks are ready.
const READY_PREFIX: &str = "collector: running; metrics on http://";
/// Bound on the daemon coming up (probes load in well under a second; CI machines are slow).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a graceful stop: the daemon drains the ring buffer and flushes the journal.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A state directory under `/tmp`, removed with everything in it when dropped.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// A new empty directory named after `name`, this process and a sequence number.
    pub fn new(name: &str) -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "collector-state-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What the daemon printed, once it stopped.
#[derive(Debug)]
pub struct Stopped {
    /// Every JSON Event object the stdout sink printed, in order.
    pub events: Vec<Value>,
    /// Its standard error.
    pub stderr: String,
    /// How it exited.
    pub status: ExitStatus,
}

/// A `collector run` child process with the stdout sink in JSON.
pub struct Daemon {
    child: Child,
    metrics_addr: SocketAddr,
    output: ChildOutput,
}

impl Daemon {
    /// Starts `collector run ARGS` and waits for its ready line. ARGS should include
    /// `--sink stdout --format json`; pass `--metrics-addr 127.0.0.1:0` to get a free port,
    /// which [`Self::metrics_addr`] then reports.
    pub fn run(args: &[&str]) -> Result<Self> {
        Self::run_stalled(args, false)
    }

    /// [`Self::run`]; if `stalled`, nothing reads the daemon's stdout, a pipe of one page,
    /// until [`Self::resume_stdout`]: a handful of events fill it and its writes block.
    pub fn run_stalled(args: &[&str], stalled: bool) -> Result<Self> {
        let mut child = Command::new(binary()?)
            // Tests read the log: text, whatever stderr is.
            .args(["--log-format", "text", "run"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start `collector run`")?;
        if stalled && let Some(stdout) = &child.stdout {
            use std::os::fd::AsRawFd as _;
            // SAFETY: fcntl on a pipe this process owns; no memory is passed.
            let size = unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
            if size < 0 {
                bail!("cannot shrink the daemon's stdout pipe: {}", std::io::Error::last_os_error());
            }
        }
        let (output, ready_rx) = ChildOutput::capture_stalled(&mut child, READY_PREFIX, stalled)?;
        let mut daemon = Self { child, metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)), output };
        let addr = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(rest) => rest.split('/').next().unwrap_or_default().to_owned(),
            Err(_) => {
                let _ = daemon.child.kill();
                let _ = daemon.child.wait();
                bail!("`collector run` did not become ready in {READY_TIMEOUT:?}; stderr:\n{}", daemon.stderr());
            }
        };
        daemon.metrics_addr = addr.parse().with_context(|| format!("metrics address {addr:?} in the ready line"))?;
        Ok(daemon)
    }

    /// Starts the daemon as most tests want it: events as JSON to `sinks` (`stdout` among
    /// them), its journal in `state`, metrics on a free loopback port, node `test-node`, names
    /// from `cri_socket` (`none`: no runtime); then `extra` flags.
    pub fn start(state: &StateDir, sinks: &[&str], cri_socket: &str, extra: &[&str]) -> Result<Self> {
        Self::start_stalled(state, sinks, cri_socket, extra, false)
    }

    /// [`Self::start`], with stdout stalled as [`Self::run_stalled`] says if `stalled`.
    pub fn start_stalled(
        state: &StateDir,
        sinks: &[&str],
        cri_socket: &str,
        extra: &[&str],
        stalled: bool,
    ) -> Result<Self> {
        let stream = state.path().join("stream.sock").display().to_string();
        let state = state.path().display().to_string();
        let mut args = Vec::new();
        for sink in sinks {
            args.extend(["--sink", sink]);
        }
        args.extend(["--format", "json", "--state-dir", &state, "--metrics-addr", "127.0.0.1:0"]);
        // Each daemon its own stream, so tests running side by side do not take each other's.
        args.extend(["--stream-socket", &stream]);
        args.extend(["--node-name", "test-node", "--cri-socket", cri_socket]);
        args.extend(extra);
        Self::run_stalled(&args, stalled)
    }

    /// Starts reading a stalled daemon's stdout.
    pub fn resume_stdout(&self) {
        self.output.resume_stdout();
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.id().cast_signed()
    }

    /// Where /metrics is served.
    pub const fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// What the daemon printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.output.stderr()
    }

    /// The Event objects printed so far.
    pub fn events(&self) -> Vec<Value> {
        self.output.json()
    }

    /// Waits until `done` holds for the events printed so far.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events();
            if done(&events) {
                return Ok(events);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?}; events so far:\n{events:#?}\nstderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The body of `GET /metrics` (Prometheus text format), over a plain TCP connection.
    pub fn metrics(&self) -> Result<String> {
        http_get(self.metrics_addr, "/metrics")
    }

    /// Waits until the sample `metric{labels}` reads `value`.
    pub fn wait_metric(&self, metric: &str, labels: &str, value: u64, timeout: Duration) -> Result<()> {
        let want = format!("{metric}{{{labels}}} {value}");
        let deadline = Instant::now() + timeout;
        loop {
            let metrics = self.metrics()?;
            if samples(&metrics, metric).contains(&want.as_str()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no {want} after {timeout:?}:\n{metrics}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and collects everything it printed.
    pub fn stop(mut self) -> Result<Stopped> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("`collector run` did not stop within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // A stalled stdout is read now, to its end.
        self.output.resume_stdout();
        self.output.join();
        Ok(Stopped { events: self.events(), stderr: self.stderr(), status })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET path` on `addr` with HTTP/1.0 semantics (`Connection: close`); the body of a 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response).with_context(|| format!("reading GET {path} from {addr}"))?;
    let (head, body) = response.split_once("\r\n\r\n").with_context(|| format!("no HTTP header end:\n{response}"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {status}\n{body}");
    }
    if head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked")) {
        return dechunk(body);
    }
    Ok(body.to_owned())
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("truncated chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).context("truncated chunk")?;
        out.push_str(chunk);
        body = rest.get(size..).and_then(|r| r.strip_prefix("\r\n")).context("chunk without CRLF")?;
    }
}

/// The samples of metric `name` in a Prometheus text exposition, as whole lines
/// (`name{labels} value`), in the order served.
pub fn samples<'a>(exposition: &'a str, name: &str) -> Vec<&'a str> {
    exposition
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .collect()
}

/// The value of the one sample of `name` with exactly `labels` (`reason="x"`), or 0 if there is
/// none (a counter not yet incremented) or it is not a whole number.
pub fn sample(exposition: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{{{labels}}} ");
    exposition.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// `collector events --api --format json --state-dir DIR ARGS`: the events as written to the API
/// server (aggregated, deduplicated, spam-filtered), one object each.
pub fn journal_events(state_dir: &Path, args: &[&str]) -> Result<Vec<Value>> {
    journal(state_dir, &[&["--api"], args].concat())
}

/// `collector events --format json ARGS`: every occurrence (each event the kernel caused,
/// before the spam filter), one JSON object each.
pub fn journal_occurrences(state_dir: &Path, args: &[&str]) -> Result<Vec<Value>> {
    journal(state_dir, args)
}

/// `collector events --summary --format json ARGS`: counts per object, container and reason.
pub fn journal_summary(state_dir: &Path, args: &[&str]) -> Result<Vec<Value>> {
    journal(state_dir, &[&["--summary"], args].concat())
}

/// `collector events --conditions --format json`: the node conditions the daemon last saved.
pub fn node_conditions(state_dir: &Path) -> Result<Vec<Value>> {
    journal(state_dir, &["--conditions"])
}

fn journal(state_dir: &Path, args: &[&str]) -> Result<Vec<Value>> {
    let output = Command::new(binary()?)
        .args(["events", "--format", "json", "--state-dir"])
        .arg(state_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `collector events`")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("`collector events` failed ({}): {}{stdout}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("`collector events` printed {line:?}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("5\r\nhello\r\n7;x=y\r\n world\n\r\n0\r\n\r\n").unwrap(), "hello world\n");
        assert!(dechunk("5\r\nhel").is_err());
        assert!(dechunk("zz\r\n").is_err());
    }

    #[test]
    fn samples_match_the_whole_metric_name() {
        let text = "# TYPE a counter\na_total{x=\"1\"} 2\na_total 3\na_total_created 4\nb_total{} 5\n";
        assert_eq!(samples(text, "a_total"), ["a_total{x=\"1\"} 2", "a_total 3"]);
        assert!(samples(text, "a").is_empty());
    }
}
