//! Storm, cost and latency: exits in a container cgroup, traced with several ring sizes.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{
    Bins, Plan,
    phases::{Overhead, secs, strings},
    proc::{Cgroups, Collector, LoopRun, Stdout, forkloop, signal},
    report::{Row, duration_ns, mib, percentile, thousands},
};

/// The storm's rows, by section.
pub(super) struct Storm {
    pub loss: Vec<Row>,
    pub cost: Vec<Row>,
    pub latency: Vec<Row>,
}

/// How long the collector is stopped at a time in the stalled storms (and then runs as long).
const STALL: Duration = Duration::from_secs(1);
/// Bytes an exit record takes in the ring: the 64-byte `ExitRecord` (a storm's processes exit by
/// themselves, so none carries a signal) and the ring's 8-byte header.
const EXIT_RECORD_BYTES: f64 = 72.0;

/// What one storm run saw.
struct StormRun {
    ring: u32,
    stalled: bool,
    loop_run: LoopRun,
    delivered: u64,
    /// Exits in the storm's cgroup: the loops' children and the loops themselves.
    exits_in_cgroup: u64,
    /// Records of those exits delivered.
    delivered_in_cgroup: u64,
    exits_lost: u64,
    cpu: Duration,
    peak_rss: u64,
    rss: u64,
    storm_latency: Vec<i64>,
    paced_latency: Vec<i64>,
}

/// Pods of containers made for the storm, so the collector knows a node's worth of cgroups.
const PODS: usize = 100;
const CONTAINERS_PER_POD: usize = 10;

/// Runs the storms and returns their rows.
pub(super) fn storm(bins: &Bins, plan: &Plan, workers: usize, v2: &Path, base: &Overhead) -> Result<Storm> {
    let mut cgroups = Cgroups::new(v2.to_owned());
    let pid = std::process::id();
    let mut storm_cgroup = None;
    for pod in 0..PODS {
        for container in 0..CONTAINERS_PER_POD {
            let rel = format!(
                "/kubepods/besteffort/podbe0c0000-0000-4000-8000-{pid:06x}{pod:06x}/{:064x}",
                pod * CONTAINERS_PER_POD + container + 1
            );
            let dir = cgroups.create(&rel)?;
            storm_cgroup.get_or_insert((rel, dir));
        }
    }
    let (rel, dir) = storm_cgroup.context("no storm cgroup")?;
    let known = count_dirs(v2);
    // The pods are made up: no runtime knows them, so asking one would only make records wait.
    let no_cri = supports(&bins.collector, "--cri-socket");
    let storm = Target { rel: &rel, dir: &dir, no_cri };
    let default_ring = 1_u32 << 20;
    let main = storm_run(bins, &storm, default_ring, plan.storm, workers, Some(plan.paced), false)?;
    let mut runs = vec![main];
    // This machine's storm never outruns an attentive reader, even with a one-page ring; what the
    // ring size buys is how long the reader may stall (descheduled, swapped, paused) without loss.
    for ring in [default_ring, 1 << 18, 1 << 16, 1 << 12] {
        runs.push(storm_run(bins, &storm, ring, plan.small_ring, workers, None, true)?);
    }
    // The storm's pods are unknown to any runtime, so its deaths become no events: the row
    // shows the reader keeps pace with every handler registered and stalled. tests/cri_webhooks.rs
    // has real deaths reach a hung webhook while the kernel loses nothing.
    let daemon = super::daemon::stalled_handlers(bins, &dir, plan.small_ring, workers)?;
    drop(cgroups);

    let collector_cmd = |ring: u32, stalled: bool| {
        format!(
            "target/release/collector trace --cgroup {rel} --type exit --format json --ring-buffer-bytes {ring}{} & \
             target/release/forkloop fork --secs {} --workers {workers} --cgroup {}{}",
            if no_cri { " --cri-socket none" } else { "" },
            if stalled { plan.small_ring } else { plan.storm },
            dir.display(),
            if stalled { " # with kill -STOP / -CONT of the collector each second" } else { "" }
        )
    };
    let mut loss = Vec::new();
    for run in &runs {
        let caused = run.loop_run.ops;
        // Every exit in the cgroup: the children, and each loop process's own.
        let accounted = run.delivered_in_cgroup + run.exits_lost == run.exits_in_cgroup;
        let stalls =
            if run.stalled { format!(", reader stopped {STALL:?} in every {:?}", STALL * 2) } else { String::new() };
        let capacity = f64::from(run.ring) / EXIT_RECORD_BYTES;
        let row = Row::new(
            format!(
                "storm, {} ring, {} s, {workers} workers{stalls}: exits delivered / caused",
                kib(run.ring),
                run.loop_run.secs.round()
            ),
            format!(
                "{:.3} % ({} / {}), {} exits lost; every exit in the cgroup delivered or counted lost: {}",
                100.0 * run.delivered as f64 / caused.max(1) as f64,
                thousands(run.delivered as f64),
                thousands(caused as f64),
                thousands(run.exits_lost as f64),
                if accounted { "yes" } else { "NO" }
            ),
            format!(
                "{} exits/s caused ({} without the collector); the ring holds {} exit records, {:.2} s of this storm",
                thousands(run.loop_run.rate()),
                thousands(base.fork_all_rate),
                thousands(capacity.floor()),
                capacity / run.loop_run.rate().max(1.0)
            ),
        )
        .command(collector_cmd(run.ring, run.stalled));
        loss.push(if run.ring == default_ring && !run.stalled {
            row.goal("100 %, 0 lost (default ring)")
        } else {
            row
        });
    }
    loss.push(daemon.lost);

    let main = &runs[0];
    let caused = main.loop_run.ops.max(1) as f64;
    let trace_per_1000 = duration_ns(main.cpu.as_secs_f64() * 1e9 / caused * 1000.0);
    let cost = vec![
        Row::new(
            "collector CPU per 1,000 exits (storm, 1 MiB ring)",
            format!("{trace_per_1000} ({:.2} s of CPU for {} exits)", main.cpu.as_secs_f64(), thousands(caused)),
            format!("1,000 fork+exit+wait without the collector: {}", duration_ns(1e12 / base.fork1_rate)),
        )
        .command(collector_cmd(default_ring, false)),
        Row::new(
            format!(
                "collector peak RSS (VmHWM), {PODS} pods and {} containers' cgroups known ({known} in the v2 tree)",
                PODS * CONTAINERS_PER_POD
            ),
            format!("{} (VmRSS {} at the end)", mib(main.peak_rss), mib(main.rss)),
            format!("{} in the overhead runs, without the benchmark's cgroups", mib(base.peak_rss)),
        )
        .goal("< 32 MiB")
        .command(collector_cmd(default_ring, false)),
        // What a node pays for the DaemonSet: every handler on, one of them stalled.
        Row::new(
            format!(
                "daemon (`collector run`) CPU per 1,000 exits, journal on and a stalled webhook, {workers} workers"
            ),
            format!(
                "{} beyond its idle rate ({:.2} s of CPU for {} exits); idle: {} of CPU a second ({:.1} % of a core)",
                duration_ns(daemon.cpu.as_secs_f64() * 1e9 / daemon.caused.max(1) as f64 * 1000.0),
                daemon.cpu.as_secs_f64(),
                thousands(daemon.caused as f64),
                duration_ns(daemon.idle_per_sec.as_secs_f64() * 1e9),
                daemon.idle_per_sec.as_secs_f64() * 100.0
            ),
            format!(
                "`collector trace` in the storm above: {trace_per_1000}; the DaemonSet's CPU request: {}",
                super::daemon::daemonset_request("cpu")
            ),
        )
        .command(daemon.command.clone()),
        Row::new(
            "daemon (`collector run`) peak RSS (VmHWM), the same run",
            format!("{} (VmRSS {} at the end)", mib(daemon.peak_rss), mib(daemon.rss)),
            format!("`collector trace` in the storm above: {}", mib(main.peak_rss)),
        )
        .goal(format!("< {} (the DaemonSet's memory request)", super::daemon::daemonset_request("memory")))
        .command(daemon.command),
    ];
    let latency_row = |label: String, latencies: &[i64], baseline: String| {
        let mut values = latencies.to_vec();
        let p50 = percentile(&mut values, 50.0).unwrap_or(0);
        let p99 = percentile(&mut values, 99.0).unwrap_or(0);
        let row = Row::new(
            label,
            format!(
                "p50 {}, p99 {} ({} records)",
                duration_ns(p50 as f64),
                duration_ns(p99 as f64),
                thousands(values.len() as f64)
            ),
            baseline,
        );
        (row, p50, p99)
    };
    let (paced, p50, p99) = latency_row(
        "kernel timestamp → line read from stdout, 200 exits/s".to_owned(),
        &main.paced_latency,
        "none: the light-load reference for the storm below".to_owned(),
    );
    let paced = paced.command(format!(
        "target/release/forkloop fork --secs {} --rate 200 --cgroup {} # while the collector runs",
        plan.paced,
        dir.display()
    ));
    let (storm_latency, _, _) = latency_row(
        format!("kernel timestamp → line read from stdout, storm ({} exits/s)", thousands(main.loop_run.rate())),
        &main.storm_latency,
        format!("at 200 exits/s: p50 {}, p99 {}", duration_ns(p50 as f64), duration_ns(p99 as f64)),
    );
    let latency = vec![paced, storm_latency.command(collector_cmd(default_ring, false))];
    Ok(Storm { loss, cost, latency })
}

fn kib(bytes: u32) -> String {
    if bytes >= 1 << 20 { format!("{} MiB", bytes >> 20) } else { format!("{} KiB", bytes >> 10) }
}

/// The cgroup a storm runs in.
struct Target<'a> {
    /// Relative to the v2 root.
    rel: &'a str,
    dir: &'a Path,
    /// Whether to pass `--cri-socket none`.
    no_cri: bool,
}

/// Whether `collector trace` has an option (it gains them as the project grows).
fn supports(collector: &Path, option: &str) -> bool {
    Command::new(collector)
        .args(["trace", "--help"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(option))
}

fn storm_run(
    bins: &Bins,
    target: &Target<'_>,
    ring: u32,
    duration: f64,
    workers: usize,
    paced: Option<f64>,
    stalled: bool,
) -> Result<StormRun> {
    eprintln!("xtask: bench: storm, {} ring, {duration} s{}", kib(ring), if stalled { ", reader stalls" } else { "" });
    let ring_arg = ring.to_string();
    let mut args = vec!["--cgroup", target.rel, "--type", "exit", "--format", "json", "--ring-buffer-bytes", &ring_arg];
    if target.no_cri {
        args.extend(["--cri-socket", "none"]);
    }
    let collector = Collector::start(&bins.collector, &args, Stdout::Records)?;
    let dir_arg = target.dir.display().to_string();
    let paced_run = match paced {
        Some(secs) => Some(forkloop(
            &bins.forkloop,
            &strings(&["fork", "--secs", &self::secs(secs), "--rate", "200", "--cgroup", &dir_arg]),
        )?),
        None => None,
    };
    settle(&collector);
    let cpu_before = collector.cpu()?;
    let all = workers.to_string();
    let staller = stalled.then(|| Staller::start(collector.pid()));
    let loop_run = forkloop(
        &bins.forkloop,
        &strings(&["fork", "--secs", &secs(duration), "--workers", &all, "--cgroup", &dir_arg]),
    );
    // The collector runs again before anything else can fail.
    if let Some(staller) = staller {
        staller.finish()?;
    }
    let loop_run = loop_run?;
    settle(&collector);
    let cpu = collector.cpu()?.saturating_sub(cpu_before);
    let peak_rss = collector.status_bytes("VmHWM")?;
    let rss = collector.status_bytes("VmRSS")?;
    let stopped = collector.stop()?;
    let exits_lost = stopped.summary("exits lost")?;
    let of = |pid: u32| -> Vec<i64> {
        stopped.arrivals.iter().filter(|a| a.ppid == pid).map(|a| a.latency_ns).filter(|l| *l != i64::MIN).collect()
    };
    let storm_latency = of(loop_run.pid);
    let delivered = stopped.arrivals.iter().filter(|a| a.ppid == loop_run.pid).count() as u64;
    let paced_latency = paced_run.map(|run| of(run.pid)).unwrap_or_default();
    let loops: Vec<&LoopRun> = paced_run.iter().chain([&loop_run]).collect();
    let exits_in_cgroup = loops.iter().map(|run| run.ops + 1).sum();
    let delivered_in_cgroup =
        stopped.arrivals.iter().filter(|a| loops.iter().any(|run| a.ppid == run.pid || a.pid == run.pid)).count()
            as u64;
    Ok(StormRun {
        ring,
        stalled,
        loop_run,
        delivered,
        exits_in_cgroup,
        delivered_in_cgroup,
        exits_lost,
        cpu,
        peak_rss,
        rss,
        storm_latency,
        paced_latency,
    })
}

/// Stops and continues the collector in turns, [`STALL`] each, from another thread.
struct Staller {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Staller {
    fn start(pid: u32) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(STALL);
                signal(pid, "STOP")?;
                std::thread::sleep(STALL);
                signal(pid, "CONT")?;
            }
            Ok(())
        });
        Self { done, thread }
    }

    /// Stops stalling; the collector is left running.
    fn finish(self) -> Result<()> {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the staller thread panicked"))?
    }
}

/// Waits until the collector has printed nothing new for half a second (at most a minute).
fn settle(collector: &Collector) {
    let mut seen = collector.arrived();
    for _ in 0..120 {
        std::thread::sleep(Duration::from_millis(500));
        let now = collector.arrived();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// Directories in the tree at `root`, itself included.
fn count_dirs(root: &Path) -> usize {
    let mut stack: Vec<PathBuf> = vec![root.to_owned()];
    let mut count = 0;
    while let Some(dir) = stack.pop() {
        count += 1;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    count
}
