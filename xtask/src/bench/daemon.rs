//! The daemon under a storm with every handler it can stall: the journal on, and a notify webhook
//! that accepts connections and never answers. What the kernel lost is read from its /metrics.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Bins,
    phases::{secs, strings},
    proc::{cpu_of, forkloop, signal, status_bytes_of},
    report::{Row, thousands},
};

/// How long the daemon's idle CPU is measured before the storm (its counter moves in 10 ms steps).
const IDLE: Duration = Duration::from_secs(3);
/// How long the daemon runs before that: longer than its first walk of the cgroup tree and
/// the pressure sampler's rescan period (5 s).
const WARM_UP: Duration = Duration::from_secs(6);

/// A loopback server that takes every connection and never answers: the stalled webhook.
fn hung_webhook() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind the stalled webhook")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        // Held open until the benchmark exits.
        let mut held = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            held.push(stream);
        }
    });
    Ok(addr)
}

/// `collector run`, stopped (SIGINT) and reaped on drop.
struct Daemon {
    child: Child,
    metrics: SocketAddr,
}

impl Daemon {
    fn start(bin: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} run", bin.display()))?;
        let pipe = child.stderr.take().context("no stderr pipe")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                // "collector: running; metrics on http://127.0.0.1:PORT/metrics; sinks journal"
                if let Some(rest) = line.strip_prefix("collector: running; metrics on http://") {
                    let _ = ready_tx.send(rest.split('/').next().unwrap_or_default().to_owned());
                }
            }
        });
        let mut daemon = Self { child, metrics: SocketAddr::from(([127, 0, 0, 1], 0)) };
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => daemon.metrics = addr.parse().with_context(|| format!("metrics address {addr:?}"))?,
            Err(_) => bail!("`collector run` did not become ready within 60 s"),
        }
        Ok(daemon)
    }

    /// A counter's value from /metrics.
    fn sample(&self, series: &str) -> Result<u64> {
        let mut stream = TcpStream::connect(self.metrics)?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
            .map(|value| value as u64)
            .with_context(|| format!("no {series} in /metrics"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = signal(self.child.id(), "INT");
        for _ in 0..300 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon under a storm while its handlers stall.
pub(super) struct DaemonRun {
    /// Its exit records lost.
    pub(super) lost: Row,
    /// CPU it used during the storm (user + system, all threads), beyond its idle rate.
    pub(super) cpu: Duration,
    /// CPU it used per second before the storm, with only the node's own exits.
    pub(super) idle_per_sec: Duration,
    /// Exits the storm caused.
    pub(super) caused: u64,
    /// VmHWM and VmRSS at the end, in bytes: what the DaemonSet's memory limit must cover.
    pub(super) peak_rss: u64,
    pub(super) rss: u64,
    /// How to reproduce it.
    pub(super) command: String,
}

/// Runs the daemon under a storm in `dir` with its handlers stalled.
pub(super) fn stalled_handlers(bins: &Bins, dir: &Path, seconds: f64, workers: usize) -> Result<DaemonRun> {
    eprintln!("xtask: bench: daemon with the journal and a stalled webhook, {seconds} s storm");
    let hook = hung_webhook()?;
    let state = std::env::temp_dir().join(format!("collector-bench-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let config = state.join("collector.toml");
    std::fs::write(
        &config,
        format!("[[webhooks]]\nname = \"stalled\"\nurl = \"http://{hook}/hook\"\ntimeout = \"30s\"\n"),
    )?;
    let (state_arg, config_arg) = (state.display().to_string(), config.display().to_string());
    let daemon = Daemon::start(
        &bins.collector,
        &[
            "--sink",
            "journal",
            "--state-dir",
            &state_arg,
            "--cri-socket",
            "none",
            "--metrics-addr",
            "127.0.0.1:0",
            "--stream-socket",
            "none",
            "--node-name",
            "bench",
            "--config",
            &config_arg,
        ],
    )?;
    let exits_before = daemon.sample("collector_kernel_records_total{type=\"exit\"}")?;
    let pid = daemon.child.id();
    // Its cost with nothing but the node's own work first, so the storm's share is its own:
    // timers, the pressure triggers and the cgroup registry cost something every second.
    // After its start-up work: the first pass opens every container's pressure files.
    std::thread::sleep(WARM_UP);
    let idle_start = (cpu_of(pid)?, std::time::Instant::now());
    std::thread::sleep(IDLE);
    let cpu_before = cpu_of(pid)?;
    let idle_per_sec = (cpu_before.saturating_sub(idle_start.0)).div_f64(idle_start.1.elapsed().as_secs_f64());
    let storm_start = std::time::Instant::now();
    let dir_arg = dir.display().to_string();
    let all = workers.to_string();
    let run = forkloop(
        &bins.forkloop,
        &strings(&["fork", "--secs", &secs(seconds), "--workers", &all, "--cgroup", &dir_arg]),
    )?;
    // The counters are copied from the kernel every 250 ms.
    std::thread::sleep(Duration::from_millis(600));
    let delivered = daemon.sample("collector_kernel_records_total{type=\"exit\"}")?.saturating_sub(exits_before);
    let lost = daemon.sample("collector_kernel_records_lost_total{type=\"exit\"}")?;
    let idle_share = idle_per_sec.mul_f64(storm_start.elapsed().as_secs_f64());
    let cpu = cpu_of(pid)?.saturating_sub(cpu_before).saturating_sub(idle_share);
    let (peak_rss, rss) = (status_bytes_of(pid, "VmHWM")?, status_bytes_of(pid, "VmRSS")?);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&state);
    let command = format!(
        "target/release/collector run --sink journal --cri-socket none --config hook.toml & target/release/forkloop \
         fork --secs {seconds} --workers {workers} --cgroup {dir_arg}"
    );
    let lost_row = Row::new(
        format!(
            "daemon (`collector run`), journal on and a notify webhook that never answers, {} s storm, {workers} \
             workers: exit records lost",
            seconds.round()
        ),
        format!("{} lost; {} exit records delivered", thousands(lost as f64), thousands(delivered as f64)),
        format!("{} exits caused by the storm", thousands(run.ops as f64)),
    )
    .goal("0 lost")
    .command(&command);
    Ok(DaemonRun { lost: lost_row, cpu, idle_per_sec, caused: run.ops, peak_rss, rss, command })
}

/// The DaemonSet's resource request (`cpu`, `memory`) as `deploy/daemonset.yaml` states it.
pub(super) fn daemonset_request(resource: &str) -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(manifest).unwrap_or_default();
    let key = format!("{resource}:");
    text.lines()
        .skip_while(|line| line.trim() != "requests:")
        .find_map(|line| line.trim().strip_prefix(&key).map(|value| value.trim().to_owned()))
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemonsets_requests_are_read_from_its_manifest() {
        assert!(daemonset_request("cpu").ends_with('m'), "{}", daemonset_request("cpu"));
        assert!(daemonset_request("memory").ends_with("Mi"), "{}", daemonset_request("memory"));
    }
}
