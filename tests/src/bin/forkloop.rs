//! Load generator for `cargo xtask bench`: processes or threads that start and end as fast as they can.
//!
//! `forkloop fork --secs S [--workers W] [--cgroup DIR] [--rate R]`: W threads, each calling
//! `fork()` and `waitpid()` in a loop; the child calls `_exit(0)` at once (no exec, so the cost
//! measured is the kernel's process creation and exit, plus the probes). `--rate` paces a
//! single worker to R forks per second (for latency at light load).
//! `forkloop thread --secs S [--workers W]`: W threads, each starting a thread and joining it.
//!
//! With `--cgroup DIR` the whole process first moves into that cgroup v2 directory, so every
//! child is born there. Prints one JSON line when done: `{"ops":N,"secs":S,"cpu_secs":C,"pid":P}`,
//! where `ops` counts children reaped with exit status 0 (or threads joined) and `cpu_secs` is the
//! user and system time of the loop and its reaped children.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

#[derive(Debug)]
struct Options {
    threads: bool,
    secs: f64,
    workers: usize,
    cgroup: Option<String>,
    rate: Option<f64>,
}

fn parse() -> Result<Options> {
    let mut args = std::env::args().skip(1);
    let threads = match args.next().as_deref() {
        Some("fork") => false,
        Some("thread") => true,
        _ => bail!("usage: forkloop fork|thread --secs S [--workers W] [--cgroup DIR] [--rate R]"),
    };
    let mut options = Options { threads, secs: 1.0, workers: 1, cgroup: None, rate: None };
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--secs" => options.secs = value.parse().context("--secs")?,
            "--workers" => options.workers = value.parse().context("--workers")?,
            "--cgroup" => options.cgroup = Some(value),
            "--rate" => options.rate = Some(value.parse().context("--rate")?),
            other => bail!("unknown option {other}"),
        }
    }
    if options.workers == 0 || !options.secs.is_finite() || options.secs <= 0.0 {
        bail!("--workers must be at least 1 and --secs positive");
    }
    Ok(options)
}

fn main() -> Result<()> {
    let options = parse()?;
    if let Some(dir) = &options.cgroup {
        // "0" moves the writer's whole thread group; done before any worker thread exists.
        let procs = std::path::Path::new(dir).join("cgroup.procs");
        std::fs::write(&procs, "0").with_context(|| format!("cannot join {}", procs.display()))?;
    }
    let duration = Duration::from_secs_f64(options.secs);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..options.workers)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let (threads, rate) = (options.threads, options.rate);
            std::thread::spawn(move || if threads { thread_loop(&stop) } else { fork_loop(&stop, rate) })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut ops = 0_u64;
    for worker in workers {
        ops += worker.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    // The children's CPU time holds their exit, and so the probes that run in it.
    let cpu = cpu_secs(libc::RUSAGE_SELF) + cpu_secs(libc::RUSAGE_CHILDREN);
    println!("{{\"ops\":{ops},\"secs\":{secs:.6},\"cpu_secs\":{cpu:.6},\"pid\":{}}}", std::process::id());
    Ok(())
}

/// User plus system CPU seconds of `who` (this process, or its reaped children).
fn cpu_secs(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain data for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid out-pointer.
    if unsafe { libc::getrusage(who, &raw mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn fork_loop(stop: &AtomicBool, rate: Option<f64>) -> Result<u64> {
    let period = rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
    let start = Instant::now();
    let mut ops = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the child only calls `_exit`, which is async-signal-safe, so forking a
        // multi-threaded process is sound.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: `_exit` ends the child without running the parent's destructors or atexit hooks.
            unsafe { libc::_exit(0) };
        }
        if pid < 0 {
            let err = std::io::Error::last_os_error();
            // Out of pids or memory for a moment: back off instead of failing the run.
            if err.raw_os_error() == Some(libc::EAGAIN) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            return Err(err).context("fork failed");
        }
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        if unsafe { libc::waitpid(pid, &raw mut status, 0) } == pid && libc::WIFEXITED(status) {
            ops += 1;
        }
        if let Some(period) = period {
            let due = period.saturating_mul(u32::try_from(ops).unwrap_or(u32::MAX));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(ops)
}

fn thread_loop(stop: &AtomicBool) -> Result<u64> {
    let mut ops = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        // A small stack: the loop measures thread creation and exit, not page faults.
        let thread = std::thread::Builder::new().stack_size(64 << 10).spawn(|| ()).context("cannot start a thread")?;
        thread.join().map_err(|_| anyhow::anyhow!("a thread panicked"))?;
        ops += 1;
    }
    Ok(ops)
}
