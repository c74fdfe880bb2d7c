//! `cargo xtask bench`: what the collector costs and whether it loses anything, measured on this
//! machine, each figure next to a baseline from the same run. Prints one markdown table and writes
//! it to `target/bench/results.md`. Nothing here asserts on timing: it fails only when something
//! breaks (the collector does not start, a cgroup cannot be made).

mod breakdown;
mod daemon;
mod floor;
mod phases;
mod proc;
mod report;
mod storm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use self::report::Row;

/// Options of `cargo xtask bench`.
#[derive(Debug)]
pub(crate) struct Options {
    /// Short runs (about 10 s of storm, fewer rounds).
    pub quick: bool,
    /// Seconds of the main storm (default 60, or 10 with `quick`).
    pub duration: Option<u64>,
}

/// How long each part runs.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// A/B rounds of the overhead loops.
    rounds: usize,
    /// Seconds of each overhead loop, and of the loads of the per-program run.
    segment: f64,
    /// Seconds of the main storm (default ring).
    storm: f64,
    /// Seconds of each storm with a smaller ring.
    small_ring: f64,
    /// Seconds of the light, paced load for latency.
    paced: f64,
    /// Seconds of each user-space pipeline stage.
    pipeline: f64,
}

impl Plan {
    fn new(options: &Options) -> Self {
        let (rounds, segment, storm, small_ring, paced, pipeline) =
            if options.quick { (3, 1.0, 10, 3.0, 3.0, 1.0) } else { (5, 2.0, 60, 10.0, 5.0, 3.0) };
        let storm = options.duration.unwrap_or(storm).max(1) as f64;
        Self { rounds, segment, storm, small_ring, paced, pipeline }
    }
}

/// The binaries the benchmark runs.
struct Bins {
    collector: PathBuf,
    forkloop: PathBuf,
    bpfstats: PathBuf,
    emptyprog: PathBuf,
}

/// Runs every measurement and writes the table.
pub(crate) fn run(root: &Path, options: &Options) -> Result<()> {
    ensure_root()?;
    let plan = Plan::new(options);
    super::cargo(
        root,
        &[
            "build",
            "--release",
            "--package",
            "collector",
            "--package",
            "collector-tests",
            "--bin",
            "collector",
            "--bin",
            "forkloop",
            "--bin",
            "bpfstats",
            "--bin",
            "emptyprog",
        ],
    )?;
    let release = target_dir(root).join("release");
    let bins = Bins {
        collector: release.join("collector"),
        forkloop: release.join("forkloop"),
        bpfstats: release.join("bpfstats"),
        emptyprog: release.join("emptyprog"),
    };
    let v2 = v2_root()?;
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    eprintln!("xtask: bench: {plan:?}, {workers} workers for the storm");

    let pipeline = phases::pipeline(root, &plan)?;
    let overhead = phases::overhead(&bins, &plan, workers)?;
    let mut programs = phases::program_cost(&bins, &plan, workers, &v2, &overhead)?;
    programs.extend(floor::exit_floor(&bins, &plan, workers)?);
    programs.extend(breakdown::exit_breakdown(&bins, &plan, workers)?);
    let storm = storm::storm(&bins, &plan, workers, &v2, &overhead)?;

    let sections: [(&str, &[Row]); 6] = [
        ("Kernel overhead", &overhead.rows),
        ("Per-program cost", &programs),
        ("Storm", &storm.loss),
        ("User-space throughput", &pipeline),
        ("Cost", &storm.cost),
        ("Latency", &storm.latency),
    ];
    let mut rows = Vec::new();
    for (section, section_rows) in sections {
        rows.push(Row::new(format!("**{section}**"), "", ""));
        rows.extend(section_rows.iter().cloned());
    }
    let text = format!("{}\n{}\n{}", machine(), report::table(&rows), phases::NOTES);
    println!("\n{text}");
    let out = target_dir(root).join("bench");
    std::fs::create_dir_all(&out)?;
    let file = out.join("results.md");
    std::fs::write(&file, &text).with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!("xtask: bench: wrote {}", file.display());
    Ok(())
}

fn ensure_root() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    if uid != Some("0") {
        bail!("cargo xtask bench needs root: it loads BPF programs, makes cgroups and sets kernel.bpf_stats_enabled");
    }
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// The cgroup v2 mount point (`/sys/fs/cgroup/unified` on hybrid hosts).
fn v2_root() -> Result<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    table
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            (fs.split_whitespace().next() == Some("cgroup2"))
                .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 file system is mounted")
}

/// When and where the figures were taken.
fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned()));
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let memory = read("/proc/meminfo").lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let load = read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    format!(
        "Measured {date} on {} CPUs ({}), {} MiB of memory, kernel {}; load average {load} when the table was \
         written (other work on the machine shares the cores).\n",
        cpus,
        cpu.unwrap_or_else(|| "unknown CPU".to_owned()),
        memory.and_then(|kb| kb.parse::<u64>().ok()).map_or(0, |kb| kb / 1024),
        read("/proc/sys/kernel/osrelease").trim(),
    )
}
