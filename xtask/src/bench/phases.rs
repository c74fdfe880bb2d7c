//! User-space throughput, kernel overhead and per-program cost; the notes under the table.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Bins, Plan,
    proc::{Cgroups, Collector, Stdout, Sysctl, forkloop},
    report::{Row, duration_ns, median, thousands},
};

/// What the table's figures mean, printed under it.
pub(super) const NOTES: &str = "\
Notes:
- `forkloop fork` (tests/src/bin/forkloop.rs) calls `fork()` and the child `_exit(0)` at once (no exec), \
then `waitpid()`; `forkloop thread` starts a thread with a 64 KiB stack and joins it. Workers are threads of \
one loop process.
- Kernel overhead: the same loops with `collector trace --format json > /dev/null` running (every exit on the \
node is traced and printed) and without it, alternating A/B and B/A per round; the ratio is the median of the \
per-round ratios (min-max in brackets). Throughput includes the collector's competition for the same cores and \
swings with any other load on the machine; operations per CPU second (getrusage of the loop and its reaped \
children, whose exits run the probes) hardly does, and isolates the kernel-side cost.
- Per-program cost: the kernel's own statistics (`kernel.bpf_stats_enabled=1`, restored afterwards), \
run_time_ns / run_cnt from /proc/PID/fdinfo, while forkloop runs fork, thread and cgroup mkdir/rmdir loads. The \
statistics add two clock reads to every run, so these means are slightly high.
- Storm: `forkloop fork` with one worker per CPU in a container cgroup (`/kubepods/besteffort/pod<uid>/<id>`, \
among 100 pods of 10 containers made for the run), traced by `collector trace --cgroup <it> --type exit \
--format json`; delivered = records whose ppid is the loop, lost = the collector's `exits lost`. The accounting \
check also counts the loop processes' own exits, which happen in the same cgroup. The stalled runs stop the \
collector (SIGSTOP) for 1 s of every 2 s: the ring must hold a stall's worth of records; an exit record takes \
72 bytes of ring (64 and the ring's 8-byte header; 136 for an exit that carries the signal that ended it).
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

pub(super) fn secs(value: f64) -> String {
    format!("{value}")
}

/// User-space throughput: `cargo bench -p collector --bench pipeline`.
pub(super) fn pipeline(root: &Path, plan: &Plan) -> Result<Vec<Row>> {
    let args = ["bench", "--package", "collector", "--bench", "pipeline", "--", "--secs", &secs(plan.pipeline)];
    eprintln!("xtask: cargo {}", args.join(" "));
    let output = crate::cargo_command()
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
    // Per load: (ops/s, ops per CPU second) of each round.
    let mut detached: Vec<Vec<(f64, f64)>> = vec![Vec::new(); loads.len()];
    let mut attached: Vec<Vec<(f64, f64)>> = vec![Vec::new(); loads.len()];
    let mut peak_rss = 0;
    for round in 0..plan.rounds {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for with_collector in order {
            eprintln!(
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
                let run = forkloop(&bins.forkloop, &load.args)?;
                let runs = if with_collector { &mut attached } else { &mut detached };
                runs[i].push((run.rate(), run.per_cpu_sec()));
            }
            if let Some(collector) = collector {
                peak_rss = peak_rss.max(collector.status_bytes("VmHWM")?);
                collector.stop()?;
            }
        }
    }
    let mut rows = Vec::new();
    for (i, load) in loads.iter().enumerate() {
        let command = format!(
            "`target/release/forkloop {}` alone, then beside `target/release/collector trace --format json > /dev/null`",
            load.args.join(" ")
        );
        let pick = |runs: &[(f64, f64)], cpu: bool| -> Vec<f64> {
            runs.iter().map(|(rate, per_cpu)| if cpu { *per_cpu } else { *rate }).collect()
        };
        for cpu in [false, true] {
            let (with, without) = (pick(&attached[i], cpu), pick(&detached[i], cpu));
            let ratios: Vec<f64> = with.iter().zip(&without).map(|(a, d)| a / d).collect();
            let (min, max) = ratios.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
            let (what, unit) = if cpu {
                ("operations per CPU second of the loop and its children", "/CPU-s")
            } else {
                ("throughput", "/s")
            };
            rows.push(
                Row::new(
                    format!("{}: {what}, with / without the collector", load.label),
                    format!("{:.3} ({min:.3}-{max:.3}, {} rounds)", median(&ratios), ratios.len()),
                    format!(
                        "{}{unit} without, {}{unit} with (medians)",
                        thousands(median(&without)),
                        thousands(median(&with))
                    ),
                )
                .goal("≥ 0.97")
                .command(command.clone()),
            );
        }
    }
    let rate = |i: usize| median(&detached[i].iter().map(|(rate, _)| *rate).collect::<Vec<_>>());
    Ok(Overhead { rows, fork1_rate: rate(0), fork_all_rate: rate(1), thread_rate: rate(2), peak_rss })
}

/// Run time and count of each of the collector's programs, by name.
pub(super) type ProgStats = BTreeMap<String, (u64, u64)>;

pub(super) fn bpf_stats(bins: &Bins, pid: u32) -> Result<ProgStats> {
    let output = Command::new(&bins.bpfstats).arg(pid.to_string()).output().context("cannot run bpfstats")?;
    if !output.status.success() {
        bail!("bpfstats failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let mut stats = ProgStats::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("bpfstats said {line}"))?;
        let number = |key: &str| value.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let name = value.get("name").and_then(serde_json::Value::as_str).unwrap_or("?").to_owned();
        stats.insert(name, (number("run_time_ns"), number("run_cnt")));
    }
    Ok(stats)
}

/// Mean run time of `name` between two snapshots, as a table cell.
fn mean_between(before: &ProgStats, after: &ProgStats, name: &str) -> String {
    let (t0, c0) = before.get(name).copied().unwrap_or_default();
    let (t1, c1) = after.get(name).copied().unwrap_or_default();
    let (time, count) = (t1.saturating_sub(t0), c1.saturating_sub(c0));
    if count == 0 {
        return "not run by these loads".to_owned();
    }
    format!("{} per run ({} runs)", duration_ns(time as f64 / count as f64), thousands(count as f64))
}

/// Per-program cost: the kernel's BPF statistics, snapshotted around each load.
pub(super) fn program_cost(bins: &Bins, plan: &Plan, workers: usize, v2: &Path, base: &Overhead) -> Result<Vec<Row>> {
    eprintln!("xtask: bench: per-program cost");
    let sysctl = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let collector = Collector::start(&bins.collector, &["--format", "json"], Stdout::Null)?;
    let mut cgroups = Cgroups::new(v2.to_owned());
    let rel = format!("/collector-bench-{}", std::process::id());
    let dir = cgroups.create(&rel)?;
    let (seg, all) = (secs(plan.segment), workers.to_string());
    let dir_arg = dir.display().to_string();
    let start = bpf_stats(bins, collector.pid())?;
    forkloop(&bins.forkloop, &strings(&["fork", "--secs", &seg, "--workers", &all, "--cgroup", &dir_arg]))?;
    let forked = bpf_stats(bins, collector.pid())?;
    forkloop(&bins.forkloop, &strings(&["thread", "--secs", &seg, "--workers", &all]))?;
    let threaded = bpf_stats(bins, collector.pid())?;
    let churn = 200;
    for i in 0..churn {
        let child = cgroups.create(&format!("{rel}/c{i}"))?;
        cgroups.remove(&child)?;
    }
    let churned = bpf_stats(bins, collector.pid())?;
    // A kernel log storm from one writer: the first 2048 lines per CPU are sent, the rest stop at
    // the per-CPU rate limit, so the console probe's mean falls towards its cost when saturated.
    let lines = 20_000;
    for i in 0..lines {
        std::fs::write("/dev/kmsg", format!("<6>collector bench line {i}\n")).context("writing /dev/kmsg")?;
    }
    let end = bpf_stats(bins, collector.pid())?;
    collector.stop()?;
    drop(cgroups);
    drop(sysctl);

    let fork_ns = duration_ns(1e9 / base.fork1_rate);
    let thread_ns = duration_ns(1e9 * workers as f64 / base.thread_rate);
    let collector_cmd = "sysctl kernel.bpf_stats_enabled=1; target/release/collector trace --format json > /dev/null &";
    let fork_cmd = format!(
        "{collector_cmd} target/release/forkloop fork --secs {seg} --workers {all}; target/release/bpfstats $!"
    );
    let thread_cmd = format!(
        "{collector_cmd} target/release/forkloop thread --secs {seg} --workers {all}; target/release/bpfstats $!"
    );
    let churn_cmd = format!(
        "{collector_cmd} for i in $(seq {churn}); do mkdir X/c$i; rmdir X/c$i; done; target/release/bpfstats $!"
    );
    let kmsg_cmd = format!(
        "{collector_cmd} for i in $(seq {lines}); do echo \"<6>line $i\" > /dev/kmsg; done; target/release/bpfstats $!"
    );
    let mut rows = Vec::new();
    for name in end.keys() {
        let row = |load: &str, result: String, baseline: String| {
            Row::new(format!("BPF program `{name}`, {load}: mean run time"), result, baseline)
        };
        match name.as_str() {
            exit if exit.starts_with("sched_process_e") => {
                rows.push(
                    row(
                        "fork+exit load",
                        mean_between(&start, &forked, name),
                        format!("fork+exit+wait without the collector: {fork_ns} per process (1 worker)"),
                    )
                    .goal("< 1.7 µs (Falco's exit handler)")
                    .command(fork_cmd.clone()),
                );
                rows.push(
                    row(
                        "thread create+exit load",
                        mean_between(&forked, &threaded, name),
                        format!("thread create+exit without the collector: {thread_ns} per thread (per worker)"),
                    )
                    .goal("< 1.7 µs (Falco's exit handler)")
                    .command(thread_cmd.clone()),
                );
            }
            "signal_generate" => rows.push(
                row(
                    "fork+exit load (each child's SIGCHLD)",
                    mean_between(&start, &forked, name),
                    format!("fork+exit+wait without the collector: {fork_ns} per process"),
                )
                .command(fork_cmd.clone()),
            ),
            "cgroup_mkdir" | "cgroup_rmdir" => rows.push(
                row(
                    &format!("{churn} cgroup mkdir+rmdir"),
                    mean_between(&threaded, &churned, name),
                    "runs once per mkdir or rmdir of a cgroup".to_owned(),
                )
                .command(churn_cmd.clone()),
            ),
            "console" => {
                rows.push(
                    row(
                        "fork, thread and cgroup loads (a quiet kernel log)",
                        mean_between(&start, &churned, name),
                        "runs once per kernel log line, never on the hot paths".to_owned(),
                    )
                    .command(fork_cmd.clone()),
                );
                rows.push(
                    row(
                        &format!("{} kernel log lines from one writer (a storm)", thousands(f64::from(lines))),
                        mean_between(&churned, &end, name),
                        "2048 lines a CPU are sent, then one per 10 ms; the rest stop at a map lookup".to_owned(),
                    )
                    .command(kmsg_cmd.clone()),
                );
            }
            _ => rows.push(
                row(
                    "whole run",
                    mean_between(&start, &end, name),
                    "runs on this event only; counts include the rest of the node".to_owned(),
                )
                .command(fork_cmd.clone()),
            ),
        }
    }
    Ok(rows)
}

pub(super) fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}
