//! The exit probe against the floor: an empty program (`tests/src/bin/emptyprog.rs`, `r0 = 0;
//! exit`) attached to `sched_process_exit` as the collector's is (a raw tracepoint) and after it,
//! so the collector's runs first, as on a node with no other tracer. Both are timed by the kernel's BPF statistics in the
//! same run, at a light exit rate and at the machine's maximum; the ratio is what the exit probe
//! costs beyond what any program there costs.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Bins, Plan,
    phases::{ProgStats, bpf_stats, secs, strings},
    proc::{Collector, Stdout, Sysctl, forkloop},
    report::{Row, duration_ns, thousands},
};

/// The exit rate of the light load, as the issue measured it (a shell loop of `/bin/true`).
const LIGHT_RATE: u32 = 1500;
/// The collector's exit program, as the kernel names it (15 bytes).
const EXIT_PROGRAM: &str = "sched_process_e";

/// The empty program, attached until dropped.
struct Empty(Child);

impl Empty {
    fn attach(bins: &Bins) -> Result<Self> {
        let mut child = Command::new(&bins.emptyprog)
            .args(["--raw", "sched_process_exit"])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start emptyprog")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout pipe")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("emptyprog did not attach: {line:?}");
        }
        Ok(Self(child))
    }
}

impl Drop for Empty {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mean ns per run of `name` between two snapshots, and the runs.
fn mean(before: &ProgStats, after: &ProgStats, name: &str) -> Option<(f64, u64)> {
    let (t0, c0) = before.get(name).copied().unwrap_or_default();
    let (t1, c1) = after.get(name).copied().unwrap_or_default();
    let count = c1.checked_sub(c0).filter(|count| *count > 0)?;
    Some((t1.saturating_sub(t0) as f64 / count as f64, count))
}

/// The rows: the exit probe and the empty program at each load, and their ratio.
pub(super) fn exit_floor(bins: &Bins, plan: &Plan, workers: usize) -> Result<Vec<Row>> {
    eprintln!("xtask: bench: the exit probe against an empty program");
    let sysctl = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let collector = Collector::start(&bins.collector, &["--format", "json"], Stdout::Null)?;
    let empty = Empty::attach(bins)?;
    let seg = secs(plan.segment * 2.0);
    let loads = [
        (format!("~{} exits/s (1 worker, paced)", thousands(f64::from(LIGHT_RATE))), {
            strings(&["fork", "--secs", &seg, "--workers", "1", "--rate", &LIGHT_RATE.to_string()])
        }),
        (
            format!("the machine's maximum ({workers} workers)"),
            strings(&["fork", "--secs", &seg, "--workers", &workers.to_string()]),
        ),
    ];
    let mut rows = Vec::new();
    for (load, args) in loads {
        let (c0, e0) = (bpf_stats(bins, collector.pid())?, bpf_stats(bins, empty.0.id())?);
        forkloop(&bins.forkloop, &args)?;
        let (c1, e1) = (bpf_stats(bins, collector.pid())?, bpf_stats(bins, empty.0.id())?);
        let (probe, floor) = (mean(&c0, &c1, EXIT_PROGRAM), mean(&e0, &e1, "empty"));
        let result = match (probe, floor) {
            (Some((probe, runs)), Some((floor, _))) if floor > 0.0 => format!(
                "{:.1}× ({} vs {} per run, {} runs)",
                probe / floor,
                duration_ns(probe),
                duration_ns(floor),
                thousands(runs as f64)
            ),
            _ => "not measured: a program did not run".to_owned(),
        };
        rows.push(
            Row::new(
                format!("`sched_process_exit` against an empty program on the same tracepoint, {load}: ratio of mean run times"),
                result,
                "the empty program (`r0 = 0; exit`), attached after the collector's, in the same run".to_owned(),
            )
            .goal("≤ 8× (issue 17)")
            .command(format!(
                "sysctl kernel.bpf_stats_enabled=1; target/release/collector trace --format json > /dev/null & \
                 target/release/emptyprog --raw sched_process_exit & target/release/forkloop {}; \
                 target/release/bpfstats <each pid>",
                args.join(" ")
            )),
        );
    }
    drop(empty);
    collector.stop()?;
    drop(sysctl);
    Ok(rows)
}
