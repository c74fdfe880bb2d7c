//! `collector trace`: every record the kernel reports, filtered and printed.

use std::{
    collections::HashSet,
    io::{self, IsTerminal as _, Write},
};

use clap::{Args, ValueEnum};
use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cgroup::{CgroupError, Resolver, V2Tree, registry::RegistryConfig},
    clock::BootClock,
    decode::{KernelRecord, decode},
    escape::{c_str, escape_bytes},
    probe::{KernelCounters, ProbeConfig, ProbeError, Probes},
    reader::RingReader,
    record::{Exit, ExitStatus, Record, RecordType, signal_name},
};

/// Options of `collector trace`.
#[derive(Args, Clone, Debug)]
pub struct TraceArgs {
    /// Output format: `text` (aligned columns), `json` (one object per line), or
    /// `auto` (text on a terminal, json otherwise).
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Only records whose cgroup v2 path is PREFIX or lies below it (`/kubepods`
    /// matches `/kubepods/pod1`, not `/kubepods2`).
    #[arg(long, value_name = "PREFIX")]
    pub cgroup: Option<String>,
    /// Only these record types (comma separated). Default: all.
    #[arg(long = "type", value_enum, value_delimiter = ',', value_name = "TYPE")]
    pub types: Vec<RecordType>,
    /// Only these process ids (comma separated). Default: all.
    #[arg(long, value_delimiter = ',', value_name = "PID")]
    pub pid: Vec<u32>,
    /// Ring buffer size in bytes, a power of two of at least 4096.
    #[arg(long, value_name = "BYTES", default_value_t = collector_common::DEFAULT_RING_BYTES,
          value_parser = parse_ring_bytes)]
    pub ring_buffer_bytes: u32,
}

/// How records are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One aligned line per record.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_ring_bytes(value: &str) -> Result<u32, String> {
    let bytes: u32 = value.parse().map_err(|err| format!("{err}"))?;
    if bytes >= 4096 && bytes.is_power_of_two() {
        Ok(bytes)
    } else {
        Err(format!("{bytes} is not a power of two of at least 4096"))
    }
}

/// Errors of `collector trace`.
#[derive(Debug, Error)]
pub enum TraceError {
    /// The probes could not be loaded or attached.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The cgroup v2 tree could not be found.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Reading the ring buffer or writing output failed.
    #[error("I/O error while tracing: {0}")]
    Io(#[from] io::Error),
}

/// Counts of what the trace saw, printed when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Records decoded.
    pub records: u64,
    /// Ring buffer items that did not decode.
    pub malformed: u64,
    /// Records the filters left out.
    pub filtered: u64,
    /// Counters kept by the kernel programs.
    pub kernel: KernelCounters,
}

/// Which records to print.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    cgroup: Option<String>,
    types: HashSet<RecordType>,
    pids: HashSet<u32>,
}

impl Filter {
    /// The filter the arguments ask for.
    pub fn from_args(args: &TraceArgs) -> Self {
        Self {
            cgroup: args
                .cgroup
                .as_ref()
                .map(|p| p.trim_end_matches('/').to_owned()),
            types: args.types.iter().copied().collect(),
            pids: args.pid.iter().copied().collect(),
        }
    }

    /// Whether `record` passes.
    pub fn accepts(&self, record: &Record) -> bool {
        (self.types.is_empty() || self.types.contains(&record.kind()))
            && (self.pids.is_empty() || self.pids.contains(&record.pid()))
            && self.cgroup.as_ref().is_none_or(|prefix| {
                record.cgroup_path().is_some_and(|path| {
                    prefix.is_empty()
                        || path
                            .strip_prefix(prefix.as_str())
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                })
            })
    }
}

/// Writes records in one format.
pub struct Output<W: Write> {
    json: bool,
    out: W,
}

impl<W: Write> Output<W> {
    /// An output in `format` (`Auto` must be resolved first; it means text).
    pub const fn new(format: Format, out: W) -> Self {
        Self {
            json: matches!(format, Format::Json),
            out,
        }
    }

    /// The column header, for text output.
    pub fn header(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        writeln!(
            self.out,
            "{:<30} {:<6} {:>7} {:>7} {:<16} {:>4} {:<8} CGROUP",
            "TIME", "TYPE", "PID", "PPID", "COMM", "EXIT", "SIGNAL"
        )
    }

    /// Writes one record.
    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, record)?;
            return writeln!(self.out);
        }
        match record {
            Record::Exit(exit) => {
                let signal = exit.signal.map_or_else(|| "-".to_owned(), signal_name);
                let core = if exit.core_dumped {
                    " (core dumped)"
                } else {
                    ""
                };
                writeln!(
                    self.out,
                    "{:<30} {:<6} {:>7} {:>7} {:<16} {:>4} {:<8} {}{core}",
                    exit.time.to_string(),
                    "exit",
                    exit.pid,
                    exit.ppid,
                    exit.comm,
                    exit.exit_code,
                    signal,
                    exit.cgroup_path.as_deref().unwrap_or("?"),
                )
            }
        }
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Kernel records to printed records.
pub struct Pipeline<W: Write> {
    clock: BootClock,
    resolver: Resolver,
    filter: Filter,
    output: Output<W>,
    stats: TraceStats,
    /// The first write error; later records are dropped.
    failed: Option<io::Error>,
}

impl<W: Write> Pipeline<W> {
    /// A pipeline that prints to `output`.
    pub fn new(resolver: Resolver, filter: Filter, output: Output<W>) -> Self {
        Self {
            clock: BootClock::now(),
            resolver,
            filter,
            output,
            stats: TraceStats::default(),
            failed: None,
        }
    }

    /// Decodes, resolves, filters and prints one ring buffer item.
    pub fn handle(&mut self, bytes: &[u8]) {
        let kernel = match decode(bytes) {
            Ok(kernel) => kernel,
            Err(err) => {
                self.stats.malformed += 1;
                log::debug!("skipped a ring buffer item: {err}");
                return;
            }
        };
        self.stats.records += 1;
        let record = self.resolve(kernel);
        if !self.filter.accepts(&record) {
            self.stats.filtered += 1;
            return;
        }
        if self.failed.is_none()
            && let Err(err) = self.output.write(&record)
        {
            self.failed = Some(err);
        }
    }

    fn resolve(&mut self, kernel: KernelRecord) -> Record {
        match kernel {
            KernelRecord::Exit(exit) => {
                let status = ExitStatus::from_raw(exit.exit_status);
                Record::Exit(Exit {
                    time: self.clock.wall(exit.header.boot_ns),
                    pid: exit.pid,
                    ppid: exit.ppid,
                    comm: escape_bytes(c_str(&exit.comm)),
                    exit_code: status.code,
                    signal: status.signal,
                    core_dumped: status.core_dumped,
                    cgroup_id: exit.cgroup_id,
                    cgroup_path: self.resolver.path(exit.cgroup_id).map(str::to_owned),
                })
            }
        }
    }

    /// Flushes output after a batch and re-reads the clock offset; fails once writing has failed.
    pub fn end_batch(&mut self) -> io::Result<()> {
        self.clock = BootClock::now();
        if let Some(err) = self.failed.take() {
            return Err(err);
        }
        self.output.flush()
    }

    /// What the pipeline has counted.
    pub const fn stats(&self) -> TraceStats {
        self.stats
    }
}

/// Runs `collector trace` until SIGINT or SIGTERM, then flushes and reports.
pub async fn run(args: TraceArgs) -> Result<TraceStats, TraceError> {
    let format = match args.format {
        Format::Auto if io::stdout().is_terminal() => Format::Text,
        Format::Auto => Format::Json,
        other => other,
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let tree = V2Tree::discover()?;
    // A prefix that names an existing directory is filtered in the kernel too.
    let cgroup_subtree = args
        .cgroup
        .as_ref()
        .map(|prefix| tree.root().join(prefix.trim_start_matches('/')))
        .filter(|dir| dir.is_dir());
    let resolver = Resolver::new(tree, RegistryConfig::default())?;
    let config = ProbeConfig {
        ring_bytes: args.ring_buffer_bytes,
        cgroup_subtree,
    };
    let (mut probes, ring) = Probes::load(&config)?;
    let mut reader = RingReader::new(ring)?;
    let mut output = Output::new(format, io::BufWriter::new(io::stdout().lock()));
    output.header()?;
    let mut pipeline = Pipeline::new(resolver, Filter::from_args(&args), output);
    pipeline.end_batch()?;
    // Tests and scripts wait for this line before causing events.
    writeln!(io::stderr(), "collector: tracing; SIGINT or SIGTERM stops")?;

    let result = loop {
        tokio::select! {
            batch = reader.next_batch(|bytes| pipeline.handle(bytes)) => {
                probes.flush_logs();
                if let Err(err) = batch.and_then(|_| pipeline.end_batch()) {
                    break Err(err);
                }
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    // Whatever the kernel submitted before the signal is still printed.
    reader.drain_now(|bytes| pipeline.handle(bytes));
    let flushed = pipeline.end_batch();
    let mut stats = pipeline.stats();
    stats.kernel = probes.counters()?;
    drop(probes);
    match result.and(flushed) {
        Ok(()) => Ok(stats),
        // A closed pipe (`| head`) is a normal way to stop reading.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(stats),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    fn exit(pid: u32, path: Option<&str>) -> Record {
        Record::Exit(Exit {
            time: Timestamp(1_795_862_410_123_456_789),
            pid,
            ppid: 1,
            comm: "a\\x1b[2Jb".into(),
            exit_code: 137,
            signal: Some(9),
            core_dumped: false,
            cgroup_id: 7,
            cgroup_path: path.map(str::to_owned),
        })
    }

    fn filter(cgroup: Option<&str>, pids: &[u32]) -> Filter {
        Filter::from_args(&TraceArgs {
            format: Format::Json,
            cgroup: cgroup.map(str::to_owned),
            types: vec![RecordType::Exit],
            pid: pids.to_vec(),
            ring_buffer_bytes: 4096,
        })
    }

    #[test]
    fn cgroup_prefix_matches_whole_components() {
        let f = filter(Some("/kubepods/"), &[]);
        assert!(f.accepts(&exit(1, Some("/kubepods"))));
        assert!(f.accepts(&exit(1, Some("/kubepods/pod1/c"))));
        assert!(!f.accepts(&exit(1, Some("/kubepods2"))));
        assert!(!f.accepts(&exit(1, None)));
        assert!(filter(Some("/"), &[]).accepts(&exit(1, Some("/x"))));
    }

    #[test]
    fn pid_filter_keeps_only_listed_pids() {
        let f = filter(None, &[4, 5]);
        assert!(f.accepts(&exit(4, None)));
        assert!(!f.accepts(&exit(6, None)));
    }

    #[test]
    fn text_output_is_one_aligned_line() {
        let mut out = Output::new(Format::Text, Vec::new());
        out.header().unwrap();
        out.write(&exit(4242, Some("/x"))).unwrap();
        let text = String::from_utf8(out.out).unwrap();
        assert_eq!(
            text,
            "TIME                           TYPE       PID    PPID COMM             EXIT SIGNAL   CGROUP\n\
             2026-11-28T10:40:10.123456789Z exit      4242       1 a\\x1b[2Jb         137 SIGKILL  /x\n"
        );
    }

    #[test]
    fn ring_size_must_be_a_power_of_two_page_multiple() {
        assert_eq!(parse_ring_bytes("4096"), Ok(4096));
        assert_eq!(parse_ring_bytes("1048576"), Ok(1 << 20));
        assert_eq!(
            parse_ring_bytes("5000"),
            Err("5000 is not a power of two of at least 4096".to_owned())
        );
        assert_eq!(
            parse_ring_bytes("2048"),
            Err("2048 is not a power of two of at least 4096".to_owned())
        );
        assert!(parse_ring_bytes("x").is_err());
    }
}
