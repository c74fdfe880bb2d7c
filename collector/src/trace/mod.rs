//! `collector trace`: every record the kernel reports, filtered and printed; with `--from`, the
//! records of a running daemon's stream instead, printed the same way without loading probes.

mod from;

use std::{
    collections::HashSet,
    io::{self, IsTerminal as _, Write},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use thiserror::Error;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};

use crate::{
    cgroup::{CgroupError, CgroupTree, Resolver, registry::RegistryConfig},
    config::{ConfigProblem, HumanDuration},
    decode::decode,
    escape::escape_bytes,
    filter::Filters,
    identify::Identifier,
    metadata::{CriSocket, MetadataCache, MetadataConfig, MetadataError},
    output::{Format, Output},
    probe::{KernelCounters, KernelReads, ProbeConfig, ProbeError, Probes},
    reader::RingReader,
    record::{Record, RecordType},
    resolve::RecordResolver,
};

/// Bytes of output held until a batch ends: a storm's batch (10 ms of the ring: about 60
/// exit records, 25 KiB, at 6,000 exits a second) goes out in one write to the pipe, which
/// wakes its reader once, rather than one write per 8 KiB.
const STDOUT_BUFFER: usize = 64 * 1024;

/// Options of `collector trace`.
#[derive(Args, Clone, Debug)]
pub struct TraceArgs {
    /// Output format: `text` (aligned columns), `json` (one object per line), or
    /// `auto` (text on a terminal, json otherwise).
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Only records whose cgroup v2 path is PREFIX or lies below it (`/kubepods`
    /// matches `/kubepods/pod1`, not `/kubepods2`). For signals, the target's cgroup.
    /// PREFIX is the path as on disk, not as records show it escaped.
    #[arg(long, value_name = "PREFIX")]
    pub cgroup: Option<String>,
    /// Only these record types (comma separated): exit, oom_kill, signal,
    /// cgroup_mkdir, cgroup_rmdir, cgroup_attach, hung_task, kernel_log, fs_error,
    /// io_error, hw_error (pressure comes from the daemon's stream only). Default: all.
    #[arg(long = "type", value_enum, value_delimiter = ',', value_name = "TYPE")]
    pub types: Vec<RecordType>,
    /// Only these process ids (comma separated). Default: all.
    #[arg(long, value_delimiter = ',', value_name = "PID")]
    pub pid: Vec<u32>,
    /// Only records of pods in this namespace.
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only records of this pod (by name).
    #[arg(long, value_name = "NAME")]
    pub pod: Option<String>,
    /// Only records of containers with this name.
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// Only records of processes in containers.
    #[arg(long)]
    pub containers_only: bool,
    /// Ring buffer size in bytes, a power of two of at least 4096.
    #[arg(long, value_name = "BYTES", default_value_t = collector_common::DEFAULT_RING_BYTES,
          value_parser = parse_ring_bytes)]
    pub ring_buffer_bytes: u32,
    /// How the exit probe reads kernel fields: `auto` (plain loads checked against the
    /// kernel's BTF, from 5.11) or `helper` (a `bpf_probe_read_kernel` call each, as on 5.8 to
    /// 5.10, for a kernel whose verifier refuses the loads).
    #[arg(long, value_name = "HOW", default_value = "auto")]
    pub kernel_reads: KernelReads,
    /// The container runtime's CRI socket for pod and container names: `auto`
    /// (containerd's, then CRI-O's, if present), `none`, or a path.
    #[arg(long, value_name = "PATH", default_value = "auto", value_parser = parse_cri_socket)]
    pub cri_socket: CriSocket,
    /// How long a record may wait for its container's names before it is printed without them.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_wait)]
    pub metadata_wait: HumanDuration,
    /// Apply the `[[filters]]` rules of this configuration file to the records, as the stream
    /// does: a record passes unless a drop rule matches it (or keep rules exist and none does);
    /// `reason` and `type` conditions never match a record on its own.
    #[arg(long, value_name = "FILE")]
    pub filters: Option<PathBuf>,
    /// Print a running daemon's records from its stream socket (`collector run
    /// --stream-socket`) instead of loading probes: needs only access to the socket.
    #[arg(long, value_name = "SOCKET")]
    pub from: Option<PathBuf>,
}

fn parse_cri_socket(value: &str) -> Result<CriSocket, String> {
    value.parse().map_err(|err: std::convert::Infallible| err.to_string())
}

fn parse_wait(value: &str) -> Result<HumanDuration, String> {
    let wait: HumanDuration = value.parse().map_err(|err| format!("{err}"))?;
    if wait.0 > Duration::from_secs(60) { Err(format!("{value} is more than 1m")) } else { Ok(wait) }
}

/// Parses a ring buffer size: a power of two of at least one page.
pub fn parse_ring_bytes(value: &str) -> Result<u32, String> {
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
    /// The cgroup trees could not be found.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The container runtime's metadata source could not start.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The ring buffer's reader could not start.
    #[error(transparent)]
    Reader(#[from] crate::reader::ReaderError),
    /// Reading the ring buffer or writing output failed.
    #[error("I/O error while tracing: {0}")]
    Io(#[from] io::Error),
    /// The `--filters` file has problems.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Filters(Vec<ConfigProblem>),
    /// The daemon's stream socket cannot be reached.
    #[error("cannot connect to the stream at {}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The daemon refused the subscription.
    #[error("the daemon refused the subscription: {reason}")]
    Refused {
        /// What the daemon said.
        reason: String,
    },
    /// The daemon said something that is not the stream protocol.
    #[error("not a collector stream: {line:?}")]
    Protocol {
        /// The first line it sent (cut to 200 bytes).
        line: String,
    },
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
    /// Whether the records came from a daemon's stream (`--from`): the kernel's counters are
    /// then the daemon's, in its /metrics.
    pub from_stream: bool,
}

/// Which records to print.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    cgroup: Option<String>,
    types: HashSet<RecordType>,
    pids: HashSet<u32>,
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
    containers_only: bool,
    /// The operator's rules (`--filters`).
    rules: Filters,
}

impl Filter {
    /// The filter the arguments ask for.
    pub fn from_args(args: &TraceArgs) -> Self {
        Self {
            // Records show paths escaped; the prefix names a directory as it is on disk.
            cgroup: args.cgroup.as_ref().map(|p| escape_bytes(p.trim_end_matches('/').as_bytes())),
            types: args.types.iter().copied().collect(),
            pids: args.pid.iter().copied().collect(),
            namespace: args.namespace.clone(),
            pod: args.pod.clone(),
            container: args.container.clone(),
            containers_only: args.containers_only,
            rules: Filters::default(),
        }
    }

    /// The filter with the operator's `rules` too.
    #[must_use]
    pub fn with_rules(mut self, rules: Filters) -> Self {
        self.rules = rules;
        self
    }

    /// Whether records of `kind` can pass at all.
    pub fn wants(&self, kind: RecordType) -> bool {
        self.types.is_empty() || self.types.contains(&kind)
    }

    /// Whether `record` passes.
    pub fn accepts(&self, record: &Record) -> bool {
        let identity = record.identity();
        let matches = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
        self.wants(record.kind())
            && self.rules.pass_record(record, std::iter::empty())
            && (!self.containers_only || identity.container_id.is_some())
            && matches(&self.namespace, &identity.namespace)
            && matches(&self.pod, &identity.pod_name)
            && matches(&self.container, &identity.container_name)
            && (self.pids.is_empty() || record.pid().is_some_and(|pid| self.pids.contains(&pid)))
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

/// Kernel records to printed records.
pub struct Pipeline<W: Write> {
    resolver: RecordResolver,
    identifier: Identifier,
    filter: Filter,
    output: Output<W>,
    stats: TraceStats,
    /// The first write error; later records are dropped.
    failed: Option<io::Error>,
}

impl<W: Write> Pipeline<W> {
    /// A pipeline that prints to `output`.
    pub fn new(resolver: RecordResolver, identifier: Identifier, filter: Filter, output: Output<W>) -> Self {
        Self { resolver, identifier, filter, output, stats: TraceStats::default(), failed: None }
    }

    /// Decodes, resolves, filters and prints one ring buffer item.
    pub fn handle(&mut self, bytes: &[u8]) {
        let kernel = match decode(bytes) {
            Ok(kernel) => kernel,
            Err(err) => {
                self.stats.malformed += 1;
                tracing::debug!("skipped a ring buffer item: {err}");
                return;
            }
        };
        self.stats.records += 1;
        // Resolved even when filtered out: cgroup records keep the registry current.
        let now = Instant::now();
        let identifier = &mut self.identifier;
        self.resolver.push(kernel, now, &mut |record| identifier.push(record, now));
        self.release(now, false);
    }

    /// Resolves the records that waited for a walk of the cgroup tree, once it has finished.
    pub fn walk_finished(&mut self) {
        let now = Instant::now();
        let identifier = &mut self.identifier;
        self.resolver.walk_finished(&mut |record| identifier.push(record, now));
        self.release(now, false);
    }

    /// Notified when a walk of the cgroup tree finishes.
    pub fn walk_done(&self) -> Arc<Notify> {
        self.resolver.cgroups().walk_done()
    }

    /// Prints the records that are named or have waited long enough.
    fn release(&mut self, now: Instant, flush: bool) {
        while let Some(record) = self.identifier.pop_ready(now, flush) {
            print(&self.filter, &mut self.output, &mut self.stats, &mut self.failed, &record);
        }
    }

    /// How long the loop may sleep before the next housekeeping pass.
    pub fn next_wakeup(&self) -> Duration {
        self.identifier.next_wakeup(Instant::now())
    }

    /// Flushes output after a batch and re-reads the clock offset; fails once writing has failed.
    pub fn end_batch(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let identifier = &mut self.identifier;
        self.resolver.expire(now, &mut |record| identifier.push(record, now));
        self.release(now, false);
        self.resolver.refresh_clock();
        if let Some(err) = self.failed.take() {
            return Err(err);
        }
        self.output.flush()
    }

    /// Prints whatever still waits for a partner record (at shutdown).
    pub fn flush(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let identifier = &mut self.identifier;
        self.resolver.flush(&mut |record| identifier.push(record, now));
        self.release(now, true);
        self.end_batch()
    }

    /// Records that went out without the names they should have had.
    pub const fn unresolved(&self) -> u64 {
        self.identifier.unresolved
    }

    /// What the pipeline has counted.
    pub const fn stats(&self) -> TraceStats {
        self.stats
    }
}

fn print<W: Write>(
    filter: &Filter,
    output: &mut Output<W>,
    stats: &mut TraceStats,
    failed: &mut Option<io::Error>,
    record: &Record,
) {
    if !filter.accepts(record) {
        stats.filtered += 1;
        return;
    }
    if failed.is_none()
        && let Err(err) = output.write(record)
    {
        *failed = Some(err);
    }
}

/// Runs `collector trace` on `runtime`, on a local task set as the daemon does; a plain
/// function for the same reason as `daemon::run_on`.
pub fn run_on(runtime: &tokio::runtime::Runtime, args: TraceArgs) -> Result<TraceStats, TraceError> {
    runtime.block_on(tokio::task::LocalSet::new().run_until(run(args)))
}

/// Runs `collector trace` until SIGINT or SIGTERM, then flushes and reports.
pub async fn run(args: TraceArgs) -> Result<TraceStats, TraceError> {
    let format = match args.format {
        Format::Auto if io::stdout().is_terminal() => Format::Text,
        Format::Auto => Format::Json,
        other => other,
    };
    let rules = match &args.filters {
        Some(file) => Filters::new(crate::config::reload_filters(file).map_err(TraceError::Filters)?),
        None => Filters::default(),
    };
    if let Some(socket) = &args.from {
        return from::run(&args, socket, format, rules).await;
    }
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let tree = CgroupTree::discover()?;
    // A prefix that names an existing directory is filtered in the kernel too.
    let cgroup_subtree =
        args.cgroup.as_ref().map(|prefix| tree.root().join(prefix.trim_start_matches('/'))).filter(|dir| dir.is_dir());
    let filter = Filter::from_args(&args).with_rules(rules);
    let resolver = RecordResolver::new(Resolver::new(tree, RegistryConfig::default())?, CgroupTree::discover_memory()?);
    let config = ProbeConfig {
        ring_bytes: args.ring_buffer_bytes,
        cgroup_subtree,
        // Exits need them too: the runtime's signals tell a requested stop (`stop`).
        emit_signals: filter.wants(RecordType::Signal) || filter.wants(RecordType::Exit),
        health: [
            RecordType::HungTask,
            RecordType::KernelLog,
            RecordType::FsError,
            RecordType::IoError,
            RecordType::HwError,
        ]
        .into_iter()
        .any(|kind| filter.wants(kind)),
        kernel_reads: args.kernel_reads,
    };
    let metadata = match args.cri_socket {
        CriSocket::Off => None,
        cri => Some(MetadataCache::start(MetadataConfig { cri, kube: None, ..MetadataConfig::default() }).await?),
    };
    let identifier = Identifier::new(metadata, args.metadata_wait.0);
    let (mut probes, ring) = Probes::load(&config)?;
    let mut reader = RingReader::new(ring)?;
    let mut output = Output::new(format, io::BufWriter::with_capacity(STDOUT_BUFFER, io::stdout().lock()));
    output.header()?;
    let mut pipeline = Pipeline::new(resolver, identifier, filter, output);
    pipeline.end_batch()?;
    for missing in probes.missing() {
        tracing::warn!("{missing}");
    }
    // Tests and scripts wait for this line before causing events.
    writeln!(io::stderr(), "collector: tracing; SIGINT or SIGTERM stops")?;

    let walk_done = pipeline.walk_done();
    let result = loop {
        let wait = pipeline.next_wakeup();
        tokio::select! {
            batch = reader.next_batch(|bytes| pipeline.handle(bytes)) => {
                probes.flush_logs();
                if let Err(err) = batch.and_then(|_| pipeline.end_batch()) {
                    break Err(err);
                }
            }
            () = walk_done.notified() => {
                pipeline.walk_finished();
                if let Err(err) = pipeline.end_batch() {
                    break Err(err);
                }
            }
            // An OOM kill whose victim never exits, or a record still waiting
            // for its container's names, must still go out.
            () = tokio::time::sleep(wait) => {
                if let Err(err) = pipeline.end_batch() {
                    break Err(err);
                }
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    // Whatever the kernel submitted before the signal is still printed.
    reader.drain_now(|bytes| pipeline.handle(bytes));
    let flushed = pipeline.flush();
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
    use crate::{
        clock::Timestamp,
        record::{Exit, tests::sample_exit},
    };

    fn exit(pid: u32, path: Option<&str>) -> Record {
        Record::Exit(Box::new(Exit {
            time: Timestamp(0),
            pid,
            ppid: 1,
            exit_code: 0,
            cgroup_id: 7,
            cgroup_path: path.map(str::to_owned),
            ..sample_exit()
        }))
    }

    /// The arguments of a bare `collector trace --format json`.
    pub(super) fn args() -> TraceArgs {
        TraceArgs {
            format: Format::Json,
            cgroup: None,
            types: Vec::new(),
            pid: Vec::new(),
            namespace: None,
            pod: None,
            container: None,
            containers_only: false,
            ring_buffer_bytes: 4096,
            kernel_reads: KernelReads::Auto,
            cri_socket: CriSocket::Off,
            metadata_wait: HumanDuration(Duration::from_secs(2)),
            filters: None,
            from: None,
        }
    }

    fn filter(cgroup: Option<&str>, types: &[RecordType], pids: &[u32]) -> Filter {
        Filter::from_args(&TraceArgs {
            cgroup: cgroup.map(str::to_owned),
            types: types.to_vec(),
            pid: pids.to_vec(),
            ..args()
        })
    }

    #[test]
    fn cgroup_prefix_matches_whole_components() {
        let f = filter(Some("/kubepods/"), &[], &[]);
        assert!(f.accepts(&exit(1, Some("/kubepods"))));
        assert!(f.accepts(&exit(1, Some("/kubepods/pod1/c"))));
        assert!(!f.accepts(&exit(1, Some("/kubepods2"))));
        assert!(!f.accepts(&exit(1, None)));
        assert!(filter(Some("/"), &[], &[]).accepts(&exit(1, Some("/x"))));
    }

    #[test]
    fn cgroup_prefix_is_the_raw_path_and_matches_the_escaped_one() {
        // A directory named `a\b<ESC>` shows as `/a\\b\x1b` in records.
        let f = filter(Some("/a\\b\u{1b}"), &[], &[]);
        assert!(f.accepts(&exit(1, Some("/a\\\\b\\x1b/c"))));
        assert!(!f.accepts(&exit(1, Some("/a\\b\u{1b}"))));
    }

    #[test]
    fn the_operators_rules_apply_to_records_as_on_the_stream() {
        let rules = |line: &str| Filters::new(crate::filter::parse::subscription(line).unwrap());
        let in_container = |name: &str| {
            let mut record = exit(1, Some("/k"));
            if let Record::Exit(exit) = &mut record {
                exit.identity.container_name = Some(name.to_owned());
            }
            record
        };
        let quiet = filter(None, &[], &[]).with_rules(rules(
            r#"filters = [{ name = "quiet", action = "drop", match = { container = "*-sidecar" } }]"#,
        ));
        assert!(!quiet.accepts(&in_container("istio-sidecar")));
        assert!(quiet.accepts(&in_container("app")));
        // A reason belongs to an event: a keep rule on one keeps no bare record.
        let exits = filter(None, &[], &[]).with_rules(rules(
            r#"filters = [{ name = "exits", action = "keep", match = { reason = "ContainerExited" } }]"#,
        ));
        assert!(!exits.accepts(&in_container("app")));
    }

    #[test]
    fn pid_and_type_filters_keep_only_what_is_listed() {
        let f = filter(None, &[], &[4, 5]);
        assert!(f.accepts(&exit(4, None)));
        assert!(!f.accepts(&exit(6, None)));
        let f = filter(None, &[RecordType::OomKill], &[]);
        assert!(!f.accepts(&exit(4, None)));
        assert!(f.wants(RecordType::OomKill) && !f.wants(RecordType::Signal));
        assert!(filter(None, &[], &[]).wants(RecordType::Signal));
    }

    #[test]
    fn ring_size_must_be_a_power_of_two_page_multiple() {
        assert_eq!(parse_ring_bytes("4096"), Ok(4096));
        assert_eq!(parse_ring_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_ring_bytes("5000"), Err("5000 is not a power of two of at least 4096".to_owned()));
        assert_eq!(parse_ring_bytes("2048"), Err("2048 is not a power of two of at least 4096".to_owned()));
        assert!(parse_ring_bytes("x").is_err());
    }
}
