//! Kernel probe: loads the embedded eBPF object into this kernel, with the
//! offsets of this kernel, and attaches its programs.

pub mod btf;
pub mod layout;
pub mod preflight;
pub mod tracefs;

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, CgroupArray, MapData, MapError, PerCpuArray, RingBuf},
    programs::{FEntry, Program, ProgramError},
};
use std::os::fd::AsRawFd as _;

use aya_log::EbpfLogger;
use collector_common::{Settings, counter};
use thiserror::Error;

use self::{btf::Btf, tracefs::Tracefs};

/// The kernel programs, built by `build.rs` from `collector-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector"));

/// The tracepoints the probes attach to: (category, name, program).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sched", "sched_process_exit", "sched_process_exit"),
    ("signal", "signal_generate", "signal_generate"),
    ("oom", "mark_victim", "mark_victim"),
    ("cgroup", "cgroup_mkdir", "cgroup_mkdir"),
    ("cgroup", "cgroup_rmdir", "cgroup_rmdir"),
    ("cgroup", "cgroup_attach_task", "cgroup_attach_task"),
];

/// The node-health probes, attached when asked for and where this kernel has them:
/// (name, category, tracepoint). `sched_process_hang` is raw: its task pointer names the cgroup.
pub const HEALTH_PROBES: &[(&str, &str, &str)] = &[
    ("sched_process_hang", "sched", "sched_process_hang"),
    ("console", "printk", "console"),
    ("ext4_error", "ext4", "ext4_error"),
    ("block_rq_error", "block", "block_rq_error"),
    ("mc_event", "ras", "mc_event"),
    ("mce_record", "mce", "mce_record"),
];

/// Each CPU sends a node-health record of one kind at most this often once its burst is spent.
const HEALTH_REFILL: std::time::Duration = std::time::Duration::from_millis(10);

/// How many node-health records of one kind a CPU may send at once: a kernel log storm of this
/// many lines arrives whole.
const HEALTH_BURST: u32 = 2048;

/// The kernel always wakes the reader once this fraction of the ring is unread.
const WAKEUP_FRACTION: u32 = 8;

/// The kernel function whose entry names the cgroup an OOM kill happened in
/// (`oom_kill_process`, which also knows the victim, is static and refuses fentry).
const OOM_KILL_FUNCTION: &str = "out_of_memory";

/// Errors loading or attaching the probes.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// The environment lacks a privilege or kernel feature.
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    /// Kernel BTF could not give an offset.
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    /// tracefs is missing or a tracepoint format is unreadable.
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    /// The ring buffer size is not a power of two multiple of the page size.
    #[error("ring buffer size {0} is not a power of two of at least 4096 bytes")]
    RingSize(u32),
    /// The BPF syscall is not available.
    #[error("the kernel has no BPF syscall (it needs CONFIG_BPF_SYSCALL=y): {0}")]
    BpfDisabled(#[source] EbpfError),
    /// The object failed to load.
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] EbpfError),
    /// A program failed to load or attach.
    #[error("program {program} failed to load or attach to {tracepoint}: {source}")]
    Program {
        /// The program.
        program: &'static str,
        /// Where it was to be attached.
        tracepoint: String,
        /// Why it failed (a verifier log, or an attach error).
        #[source]
        source: ProgramError,
    },
    /// A map the object must have is missing or of the wrong type.
    #[error("eBPF map {name} is missing or malformed: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// Why it could not be used.
        #[source]
        source: MapError,
    },
    /// The cgroup to filter on could not be opened.
    #[error("cannot open cgroup directory {path} to filter on: {source}")]
    CgroupFilter {
        /// The directory.
        path: std::path::PathBuf,
        /// Why it could not be opened.
        #[source]
        source: std::io::Error,
    },
    /// A tracepoint lacks a field the probes cannot do without.
    #[error("tracepoint {tracepoint} has no field {field} on this kernel")]
    MissingField {
        /// The tracepoint.
        tracepoint: &'static str,
        /// The field.
        field: &'static str,
    },
    /// The kernel-side logger could not start.
    #[error("cannot start the eBPF logger: {0}")]
    Logger(#[source] aya_log::Error),
}

/// Options for loading the probes.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Report only tasks in this cgroup v2 directory's subtree; filtered in
    /// the kernel, so the rest of the node cannot fill the ring buffer.
    pub cgroup_subtree: Option<std::path::PathBuf>,
    /// Whether to emit a record for every fatal signal (exits name their
    /// sender either way).
    pub emit_signals: bool,
    /// Whether to attach the node-health probes ([`HEALTH_PROBES`]).
    pub health: bool,
    /// How the exit probe reads the current task's fields.
    pub kernel_reads: KernelReads,
}

/// How the exit probe reads the current task's fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelReads {
    /// Plain loads that the verifier checks against the kernel's BTF, where the kernel has
    /// `bpf_get_current_task_btf` (5.11 and later); one `bpf_probe_read_kernel` call each before.
    #[default]
    Auto,
    /// One `bpf_probe_read_kernel` call per field on every kernel, as on 5.8 to 5.10: about a
    /// fifth more kernel time per exit, for a kernel whose verifier refuses the plain loads.
    Helper,
}

/// Counters the kernel programs keep, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Records lost because the ring buffer was full, by `collector_common::kind`.
    pub lost: [u64; counter::COUNT as usize],
    /// Records dropped over the node-health rate limit, by `collector_common::kind`.
    pub limited: [u64; collector_common::kind::LAST as usize + 1],
    /// Records sent with a field that could not be read.
    pub read_failed: u64,
}

impl KernelCounters {
    /// Records of every kind lost because the ring buffer was full.
    pub fn ring_full(&self) -> u64 {
        self.lost.iter().sum()
    }
}

/// The probes' ring buffer, and the flag by which the reader asks to be woken (`reader`).
pub struct Ring {
    /// Every record the probes send.
    pub records: RingBuf<MapData>,
    /// `READER_IDLE`: while it is set, the next submit wakes the reader and clears it.
    pub reader_idle: Array<MapData, u32>,
}

/// Loaded and attached probes. Dropping this detaches and unloads them.
pub struct Probes {
    /// Keeps the programs and their links alive.
    _ebpf: Ebpf,
    /// Must outlive the programs: they write to its map.
    logger: EbpfLogger<&'static dyn log::Log>,
    counters: PerCpuArray<MapData, u64>,
    /// What could not be attached on this kernel, and what that costs.
    missing: Vec<String>,
    /// Each node-health probe asked for, and whether it is attached.
    health: Vec<(&'static str, bool)>,
}

impl Probes {
    /// Checks the environment, loads the object with this kernel's layout, and attaches.
    pub fn load(config: &ProbeConfig) -> Result<(Self, Ring), ProbeError> {
        preflight::check()?;
        if config.ring_bytes < 4096 || !config.ring_bytes.is_power_of_two() {
            return Err(ProbeError::RingSize(config.ring_bytes));
        }
        let tracefs = Tracefs::find_or_mount()?;
        let mut layout = layout::kernel_layout(&Btf::from_kernel()?, &tracefs)?;
        if config.kernel_reads == KernelReads::Helper {
            layout.task_btf = 0;
        }
        if layout.task_btf == 0 {
            tracing::info!(
                "the exit probe reads task fields through bpf_probe_read_kernel ({}): about a fifth more kernel \
                 time per exit than plain loads",
                if config.kernel_reads == KernelReads::Helper {
                    "--kernel-reads helper"
                } else {
                    "the kernel has no bpf_get_current_task_btf, added in 5.11"
                }
            );
        }
        let settings = Settings {
            fatal_signals: crate::record::FATAL_SIGNALS,
            // The default (v2) hierarchy is always hierarchy 0.
            v2_hierarchy: 0,
            emit_signals: u32::from(config.emit_signals),
            wakeup_bytes: config.ring_bytes / WAKEUP_FRACTION,
            _pad: 0,
            health_refill_ns: u64::try_from(HEALTH_REFILL.as_nanos()).unwrap_or(u64::MAX),
            health_burst_ns: u64::try_from((HEALTH_REFILL * HEALTH_BURST).as_nanos()).unwrap_or(u64::MAX),
        };
        tracing::debug!("kernel layout: {layout:?}");

        let subtree = config
            .cgroup_subtree
            .as_ref()
            .map(|path| {
                std::fs::File::open(path).map_err(|source| ProbeError::CgroupFilter { path: path.clone(), source })
            })
            .transpose()?;
        let filter_by_cgroup = u32::from(subtree.is_some());
        let mut ebpf = EbpfLoader::new()
            .override_global("LAYOUT", &layout, true)
            .override_global("SETTINGS", &settings, true)
            .override_global("FILTER_BY_CGROUP", &filter_by_cgroup, true)
            .map_max_entries("EVENTS", config.ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(classify_load_error)?;
        let logger = EbpfLogger::init(&mut ebpf).map_err(ProbeError::Logger)?;
        if let Some(dir) = subtree {
            // The map takes its own reference to the cgroup; the fd may close.
            let map_error = |source| ProbeError::Map { name: "CGROUP_FILTER", source };
            let map = ebpf
                .map_mut("CGROUP_FILTER")
                .ok_or_else(|| map_error(MapError::InvalidName { name: "CGROUP_FILTER".to_owned() }))?;
            CgroupArray::try_from(map).and_then(|mut filter| filter.set(0, dir.as_raw_fd(), 0)).map_err(map_error)?;
        }
        for &(category, name, program) in TRACEPOINTS {
            attach_tracepoint(&mut ebpf, program, category, name).map_err(|source| ProbeError::Program {
                program,
                tracepoint: format!("{category}/{name}"),
                source,
            })?;
        }
        let mut missing = Vec::new();
        if let Err(err) = attach_fentry(&mut ebpf, OOM_KILL_FUNCTION) {
            missing.push(format!(
                "cannot attach to {OOM_KILL_FUNCTION} ({err}): the cgroup whose limit an OOM kill \
                 hit is inferred from the cgroup tree instead"
            ));
        }
        let mut health = Vec::new();
        if config.health {
            for &(program, category, name) in HEALTH_PROBES {
                match attach_health(&mut ebpf, &tracefs, program, category, name) {
                    Ok(()) => health.push((program, true)),
                    Err(err) => {
                        tracing::info!(
                            probe = program,
                            "node-health probe {program} not attached on this kernel: {}",
                            crate::chain(&err)
                        );
                        health.push((program, false));
                    }
                }
            }
        }
        let ring = Ring { records: take_map(&mut ebpf, "EVENTS")?, reader_idle: take_map(&mut ebpf, "READER_IDLE")? };
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        Ok((Self { _ebpf: ebpf, logger, counters, missing, health }, ring))
    }

    /// Reads the kernel-side counters.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let sum = |index: u32| -> Result<u64, ProbeError> {
            let values = self.counters.get(&index, 0).map_err(|source| ProbeError::Map { name: "COUNTERS", source })?;
            Ok(values.iter().sum())
        };
        let mut counters = KernelCounters { read_failed: sum(counter::READ_FAILED)?, ..Default::default() };
        for kind in 1..=collector_common::kind::LAST {
            counters.lost[kind as usize] = sum(counter::lost(kind))?;
        }
        for kind in collector_common::kind::HUNG_TASK..=collector_common::kind::LAST {
            counters.limited[kind as usize] = sum(counter::limited(kind))?;
        }
        Ok(counters)
    }

    /// Each node-health probe asked for, and whether this kernel let it attach.
    pub fn health(&self) -> &[(&'static str, bool)] {
        &self.health
    }

    /// What this kernel could not attach, one sentence each.
    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    /// Forwards the kernel programs' log lines to the `log` crate.
    pub fn flush_logs(&mut self) {
        self.logger.flush();
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map =
        ebpf.take_map(name).ok_or(ProbeError::Map { name, source: MapError::InvalidName { name: name.to_owned() } })?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// Loads and attaches one node-health program; fails where the kernel lacks its tracepoint.
fn attach_health(
    ebpf: &mut Ebpf,
    tracefs: &Tracefs,
    program: &'static str,
    category: &str,
    name: &str,
) -> Result<(), ProbeError> {
    let tracepoint = format!("{category}/{name}");
    let fail = |source| ProbeError::Program { program, tracepoint: tracepoint.clone(), source };
    // A missing tracepoint fails here with the path, rather than as a bare ENOENT at attach.
    tracefs.format(category, name)?;
    attach_tracepoint(ebpf, program, category, name).map_err(fail)
}

/// Loads `program` and attaches it to `category/name`: raw (the tracepoint's arguments, no
/// record built for it) where the program was written as a raw tracepoint program.
fn attach_tracepoint(ebpf: &mut Ebpf, program: &str, category: &str, name: &str) -> Result<(), ProgramError> {
    match ebpf.program_mut(program) {
        Some(Program::RawTracePoint(raw)) => {
            raw.load()?;
            raw.attach(name)?;
        }
        Some(Program::TracePoint(classic)) => {
            classic.load()?;
            classic.attach(category, name)?;
        }
        _ => return Err(ProgramError::UnexpectedProgramType),
    }
    Ok(())
}

/// Loads and attaches an fentry program named after the function it traces.
fn attach_fentry(ebpf: &mut Ebpf, function: &str) -> Result<(), ProgramError> {
    let btf = aya::Btf::from_sys_fs().map_err(ProgramError::Btf)?;
    let program: &mut FEntry = ebpf.program_mut(function).ok_or(ProgramError::UnexpectedProgramType)?.try_into()?;
    program.load(function, &btf)?;
    program.attach().map(|_| ())
}

/// Names the common causes of a failed load instead of a bare errno.
fn classify_load_error(err: EbpfError) -> ProbeError {
    let errno = match &err {
        EbpfError::MapError(MapError::CreateError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    };
    match errno {
        Some(libc::ENOSYS) => ProbeError::BpfDisabled(err),
        Some(libc::EPERM) => ProbeError::Preflight(preflight::PreflightError::NotPermitted),
        _ => ProbeError::Load(err),
    }
}
