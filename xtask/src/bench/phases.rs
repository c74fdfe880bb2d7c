//! The measurements, one function each.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Bins, Plan,
    proc::{Cgroups, Collector, LoopRun, Stdout, Sysctl, forkloop},
    report::{Row, duration_ns, median, mib, percentile, thousands},
};

/// What the table's figures mean, printed under it.
pub(super) const NOTES: &str = "\
Notes:
- `forkloop fork` (tests/src/bin/forkloop.rs) calls `fork()` and the child `_exit(0)` at once (no exec), \
then `waitpid()`; `forkloop thread` starts a thread with a 64 KiB stack and joins it. Workers are threads of \
one loop process.
- Kernel overhead: the same loops with `collector trace --format json > /dev/null` running (every exit on the \
node is traced and printed) and without it, alternating A/B and B/A per round; the ratio is the median of the \
per-round ratios (min-max in brackets). The collector competes for the same cores.
- Per-program cost: the kernel's own statistics (`kernel.bpf_stats_enabled=1`, restored afterwards), \
run_time_ns / run_cnt from /proc/PID/fdinfo, while forkloop runs fork, thread and cgroup mkdir/rmdir loads. The \
statistics add two clock reads to every run, so these means are slightly high.
- Storm: `forkloop fork` with one worker per CPU in a container cgroup (`/kubepods/besteffort/pod<uid>/<id>`, \
among 100 pods of 10 containers made for the run), traced by `collector trace --cgroup <it> --type exit \
--format json`; delivered = records whose ppid is the loop, lost = the collector's `exits lost`.
- Latency: the wall clock when the benchmark reads a record's line from the collector's stdout minus the \
record's `time` (the kernel's boot-time stamp converted to wall time by the collector). It spans ring buffer \
wake-up, decode, resolve, JSON, the collector's batch flush, the pipe and the benchmark's own read; both clocks \
are CLOCK_REALTIME on the same machine.
- The machine is shared and has 2 cores: figures move by a few per cent between runs.
";

/// The overhead rows, and baselines later measurements compare with.
pub(super) struct Overhead {
    pub rows: Vec<Row>,
    /// Median fork+exit+wait rate of one worker without the collector.
    pub fork1_rate: f64,
    /// Median fork rate of all workers without the collector.
    pub fork_all_rate: f64,
    /// Median thread create+join rate of all workers without the collector.
    pub thread_rate: f64,
    /// Largest VmHWM of the collector in these runs.
    pub peak_rss: u64,
}

/// The storm's rows, by section.
pub(super) struct Storm {
    pub loss: Vec<Row>,
    pub cost: Vec<Row>,
    pub latency: Vec<Row>,
}

fn secs(value: f64) -> String {
    format!("{value}")
}

/// User-space throughput: `cargo bench -p collector --bench pipeline`.
pub(super) fn pipeline(root: &Path, plan: &Plan) -> Result<Vec<Row>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args = ["bench", "--package", "collector", "--bench", "pipeline", "--", "--secs", &secs(plan.pipeline)];
    println!("xtask: cargo {}", args.join(" "));
    let output = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo bench")?;
    if !output.status.success() {
        bail!("cargo bench --bench pipeline failed ({})", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let stages: Vec<(String, f64)> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| Some((v.get("stage")?.as_str()?.to_owned(), v.get("per_sec")?.as_f64()?)))
        .collect();
    let Some((_, decode)) = stages.iter().find(|(stage, _)| stage == "decode") else {
        bail!("the pipeline benchmark printed no decode stage:\n{text}");
    };
    let command = format!("cargo bench -p collector --bench pipeline -- --secs {}", plan.pipeline);
    Ok(stages
        .iter()
        .filter(|(stage, _)| stage != "decode")
        .map(|(stage, rate)| {
            let row = Row::new(
                format!("{stage}, synthetic exits from 1,000 cgroups, one core"),
                format!("{} events/s", thousands(*rate)),
                format!("decode alone: {} records/s", thousands(*decode)),
            );
            let row = if stage.contains("JSON") { row.goal("≥ 1,000,000/s") } else { row };
            row.command(command.clone())
        })
        .collect())
}

/// One overhead loop: its label and forkloop arguments.
struct Load {
    label: String,
    args: Vec<String>,
}

/// Kernel overhead: each loop with and without the collector, interleaved.
pub(super) fn overhead(bins: &Bins, plan: &Plan, workers: usize) -> Result<Overhead> {
    let seg = secs(plan.segment);
    let load = |label: String, args: &[&str]| Load { label, args: args.iter().map(|a| (*a).to_owned()).collect() };
    let all = workers.to_string();
    let loads = [
        load("fork+exit, 1 worker".to_owned(), &["fork", "--secs", &seg, "--workers", "1"]),
        load(format!("fork+exit, {workers} workers"), &["fork", "--secs", &seg, "--workers", &all]),
        load(format!("thread create+exit, {workers} workers"), &["thread", "--secs", &seg, "--workers", &all]),
    ];
    let mut detached = vec![Vec::new(); loads.len()];
    let mut attached = vec![Vec::new(); loads.len()];
    let mut peak_rss = 0;
    for round in 0..plan.rounds {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for with_collector in order {
            println!(
                "xtask: bench: overhead round {}/{}, collector {}",
                round + 1,
                plan.rounds,
                if with_collector { "attached" } else { "detached" }
            );
            let collector = if with_collector {
                Some(Collector::start(&bins.collector, &["--format", "json"], Stdout::Null)?)
            } else {
                None
            };
            for (i, load) in loads.iter().enumerate() {
                let rate = forkloop(&bins.forkloop, &load.args)?.rate();
                let runs = if with_collector { &mut attached } else { &mut detached };
                runs[i].push(rate);
            }
            if let Some(collector) = collector {
                peak_rss = peak_rss.max(collector.status_bytes("VmHWM")?);
                collector.stop()?;
            }
        }
    }
    let mut rows = Vec::new();
    for (i, load) in loads.iter().enumerate() {
        let ratios: Vec<f64> = attached[i].iter().zip(&detached[i]).map(|(a, d)| a / d).collect();
        let (min, max) = ratios.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        rows.push(
            Row::new(
                format!("{}: throughput with / without the collector", load.label),
                format!("{:.3} ({min:.3}-{max:.3}, {} rounds)", median(&ratios), ratios.len()),
                format!(
                    "{}/s without, {}/s with (medians)",
                    thousands(median(&detached[i])),
                    thousands(median(&attached[i]))
                ),
            )
            .goal("≥ 0.97")
            .command(format!(
                "target/release/forkloop {} # with and without `target/release/collector trace --format json > /dev/null`",
                load.args.join(" ")
            )),
        );
    }
    Ok(Overhead {
        rows,
        fork1_rate: median(&detached[0]),
        fork_all_rate: median(&detached[1]),
        thread_rate: median(&detached[2]),
        peak_rss,
    })
}

/// Per-program cost: the kernel's BPF statistics while loads run.
pub(super) fn program_cost(bins: &Bins, plan: &Plan, workers: usize, v2: &Path, base: &Overhead) -> Result<Vec<Row>> {
    println!("xtask: bench: per-program cost");
    let stats = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let collector = Collector::start(&bins.collector, &["--format", "json"], Stdout::Null)?;
    let mut cgroups = Cgroups::new(v2.to_owned());
    let rel = format!("/collector-bench-{}", std::process::id());
    let dir = cgroups.create(&rel)?;
    let (seg, all) = (secs(plan.segment), workers.to_string());
    let dir_arg = dir.display().to_string();
    forkloop(&bins.forkloop, &strings(&["fork", "--secs", &seg, "--workers", &all, "--cgroup", &dir_arg]))?;
    forkloop(&bins.forkloop, &strings(&["thread", "--secs", &seg, "--workers", &all]))?;
    let churn = 200;
    for i in 0..churn {
        let child = cgroups.create(&format!("{rel}/c{i}"))?;
        cgroups.remove(&child)?;
    }
    let output =
        Command::new(&bins.bpfstats).arg(collector.pid().to_string()).output().context("cannot run bpfstats")?;
    if !output.status.success() {
        bail!("bpfstats failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    collector.stop()?;
    drop(cgroups);
    drop(stats);

    let fork_ns = 1e9 / base.fork1_rate;
    let thread_ns = 1e9 * workers as f64 / base.thread_rate;
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("bpfstats said {line}"))?;
        let name = value.get("name").and_then(serde_json::Value::as_str).unwrap_or("?").to_owned();
        let number = |key: &str| value.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let (time, count) = (number("run_time_ns"), number("run_cnt"));
        let result = if count == 0 {
            "not run by these loads".to_owned()
        } else {
            format!("{} per run ({} runs)", duration_ns(time as f64 / count as f64), thousands(count as f64))
        };
        let baseline = match name.as_str() {
            "sched_process_e" | "sched_process_exit" | "signal_generate" => {
                format!("fork+exit+wait without the collector: {} per process (1 worker)", duration_ns(fork_ns))
            }
            "cgroup_attach_t" | "cgroup_attach_task" => "runs once per cgroup.procs write".to_owned(),
            "cgroup_mkdir" | "cgroup_rmdir" => format!("runs once per mkdir/rmdir ({churn} of each made)"),
            _ => {
                format!("thread create+exit without the collector: {} per thread (per worker)", duration_ns(thread_ns))
            }
        };
        rows.push(
            Row::new(format!("BPF program `{name}`: mean run time"), result, baseline)
                .goal(if name.starts_with("sched_process") { "< 1.7 µs (Falco)" } else { "" })
                .command(format!(
                    "sysctl kernel.bpf_stats_enabled=1; target/release/collector trace --format json > /dev/null & \
                     target/release/forkloop fork --secs {seg} --workers {all}; target/release/bpfstats $!"
                )),
        );
    }
    Ok(rows)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// What one storm run saw.
struct StormRun {
    ring: u32,
    loop_run: LoopRun,
    delivered: u64,
    exits_lost: u64,
    cpu: Duration,
    peak_rss: u64,
    storm_latency: Vec<i64>,
    paced_latency: Vec<i64>,
}

/// Pods of containers made for the storm, so the collector knows a node's worth of cgroups.
const PODS: usize = 100;
const CONTAINERS_PER_POD: usize = 10;

/// Storm, cost and latency: exits in a container cgroup, traced with several ring sizes.
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
    let main = storm_run(bins, &storm, default_ring, plan.storm, workers, Some(plan.paced))?;
    let mut runs = vec![main];
    for ring in [1_u32 << 18, 1 << 16, 1 << 14, 1 << 12] {
        runs.push(storm_run(bins, &storm, ring, plan.small_ring, workers, None)?);
    }
    drop(cgroups);

    let collector_cmd = |ring: u32| {
        format!(
            "target/release/collector trace --cgroup {rel} --type exit --format json --ring-buffer-bytes {ring}{} & \
             target/release/forkloop fork --secs {} --workers {workers} --cgroup {}",
            if no_cri { " --cri-socket none" } else { "" },
            if ring == default_ring { plan.storm } else { plan.small_ring },
            dir.display()
        )
    };
    let mut loss = Vec::new();
    for run in &runs {
        let caused = run.loop_run.ops;
        let accounted = run.delivered + run.exits_lost == caused;
        let row = Row::new(
            format!(
                "storm, {} ring, {} s, {workers} workers: exits delivered / caused",
                kib(run.ring),
                run.loop_run.secs.round()
            ),
            format!(
                "{:.3} % ({} / {}), {} exits lost, delivered + lost = caused: {}",
                100.0 * run.delivered as f64 / caused.max(1) as f64,
                thousands(run.delivered as f64),
                thousands(caused as f64),
                thousands(run.exits_lost as f64),
                if accounted { "yes" } else { "NO" }
            ),
            format!(
                "{} exits/s caused; {} exits/s without the collector",
                thousands(run.loop_run.rate()),
                thousands(base.fork_all_rate)
            ),
        )
        .command(collector_cmd(run.ring));
        loss.push(if run.ring == default_ring { row.goal("100 %, 0 lost (default ring)") } else { row });
    }

    let main = &runs[0];
    let caused = main.loop_run.ops.max(1) as f64;
    let cost = vec![
        Row::new(
            "collector CPU per 1,000 exits (storm, 1 MiB ring)",
            format!(
                "{} ({:.2} s of CPU for {} exits)",
                duration_ns(main.cpu.as_secs_f64() * 1e9 / caused * 1000.0),
                main.cpu.as_secs_f64(),
                thousands(caused)
            ),
            format!("1,000 fork+exit+wait without the collector: {}", duration_ns(1e12 / base.fork1_rate)),
        )
        .command(collector_cmd(default_ring)),
        Row::new(
            format!(
                "collector peak RSS (VmHWM), {PODS} pods and {} containers' cgroups known ({known} in the v2 tree)",
                PODS * CONTAINERS_PER_POD
            ),
            mib(main.peak_rss),
            format!("{} in the overhead runs, without the benchmark's cgroups", mib(base.peak_rss)),
        )
        .goal("< 32 MiB")
        .command(collector_cmd(default_ring)),
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
    let latency = vec![paced, storm_latency.command(collector_cmd(default_ring))];
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
) -> Result<StormRun> {
    println!("xtask: bench: storm, {} ring, {duration} s", kib(ring));
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
    let loop_run = forkloop(
        &bins.forkloop,
        &strings(&["fork", "--secs", &secs(duration), "--workers", &all, "--cgroup", &dir_arg]),
    )?;
    settle(&collector);
    let cpu = collector.cpu()?.saturating_sub(cpu_before);
    let peak_rss = collector.status_bytes("VmHWM")?;
    let stopped = collector.stop()?;
    let exits_lost = stopped.summary("exits lost")?;
    let of = |pid: u32| -> Vec<i64> {
        stopped.arrivals.iter().filter(|a| a.ppid == pid).map(|a| a.latency_ns).filter(|l| *l != i64::MIN).collect()
    };
    let storm_latency = of(loop_run.pid);
    let delivered = stopped.arrivals.iter().filter(|a| a.ppid == loop_run.pid).count() as u64;
    let paced_latency = paced_run.map(|run| of(run.pid)).unwrap_or_default();
    Ok(StormRun { ring, loop_run, delivered, exits_lost, cpu, peak_rss, storm_latency, paced_latency })
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
