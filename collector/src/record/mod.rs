//! The records `collector trace` prints: kernel records with wall time, exit
//! status decoded and cgroup paths resolved.

mod health;

use serde::{Deserialize, Serialize};

pub use self::health::{
    FsError, HungTask, HwError, HwSource, IoError, KernelLog, Pressure, PressureResource, PressureState,
};
use crate::clock::Timestamp;

/// A resolved record, serialised with a `type` tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A process ended.
    Exit(Box<Exit>),
    /// The OOM killer chose a victim.
    OomKill(Box<OomKill>),
    /// A signal that can end a process was generated.
    Signal(Box<Signal>),
    /// A cgroup v2 directory was created.
    CgroupMkdir(Box<CgroupChange>),
    /// A cgroup v2 directory was removed.
    CgroupRmdir(Box<CgroupChange>),
    /// A process was moved into a cgroup v2 directory.
    CgroupAttach(Box<CgroupAttach>),
    /// The hung-task detector found a task blocked too long.
    HungTask(Box<HungTask>),
    /// The kernel logged a line.
    KernelLog(Box<KernelLog>),
    /// A filesystem reported an error.
    FsError(Box<FsError>),
    /// A block request failed.
    IoError(Box<IoError>),
    /// A memory controller reported a hardware error.
    HwError(Box<HwError>),
    /// A container began or stopped stalling on memory, CPU or I/O.
    Pressure(Box<Pressure>),
}

impl Record {
    /// The record's type, as `--type` names it.
    pub const fn kind(&self) -> RecordType {
        match self {
            Self::Exit(_) => RecordType::Exit,
            Self::OomKill(_) => RecordType::OomKill,
            Self::Signal(_) => RecordType::Signal,
            Self::CgroupMkdir(_) => RecordType::CgroupMkdir,
            Self::CgroupRmdir(_) => RecordType::CgroupRmdir,
            Self::CgroupAttach(_) => RecordType::CgroupAttach,
            Self::HungTask(_) => RecordType::HungTask,
            Self::KernelLog(_) => RecordType::KernelLog,
            Self::FsError(_) => RecordType::FsError,
            Self::IoError(_) => RecordType::IoError,
            Self::HwError(_) => RecordType::HwError,
            Self::Pressure(_) => RecordType::Pressure,
        }
    }

    /// The process the record is about, if any.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Exit(exit) => Some(exit.pid),
            Self::OomKill(oom) => Some(oom.pid),
            Self::Signal(signal) => Some(signal.target_pid),
            Self::CgroupAttach(attach) => Some(attach.pid),
            Self::HungTask(hung) => Some(hung.pid),
            Self::FsError(error) => Some(error.pid),
            Self::CgroupMkdir(_)
            | Self::CgroupRmdir(_)
            | Self::KernelLog(_)
            | Self::IoError(_)
            | Self::HwError(_)
            | Self::Pressure(_) => None,
        }
    }

    /// When the kernel reported it, as wall time.
    pub fn time(&self) -> Timestamp {
        match self {
            Self::Exit(exit) => exit.time,
            Self::OomKill(oom) => oom.time,
            Self::Signal(signal) => signal.time,
            Self::CgroupMkdir(change) | Self::CgroupRmdir(change) => change.time,
            Self::CgroupAttach(attach) => attach.time,
            Self::HungTask(hung) => hung.time,
            Self::KernelLog(log) => log.time,
            Self::FsError(error) => error.time,
            Self::IoError(error) => error.time,
            Self::HwError(error) => error.time,
            Self::Pressure(pressure) => pressure.time,
        }
    }

    /// The pod and container the record is about.
    pub fn identity(&self) -> &Identity {
        match self {
            Self::Exit(exit) => &exit.identity,
            Self::OomKill(oom) => &oom.identity,
            Self::Signal(signal) => &signal.identity,
            Self::CgroupMkdir(change) | Self::CgroupRmdir(change) => &change.identity,
            Self::CgroupAttach(attach) => &attach.identity,
            Self::HungTask(hung) => &hung.identity,
            Self::KernelLog(log) => &log.identity,
            Self::FsError(error) => &error.identity,
            Self::IoError(error) => &error.identity,
            Self::HwError(error) => &error.identity,
            Self::Pressure(pressure) => &pressure.identity,
        }
    }

    /// The pod and container the record is about, to fill in.
    pub fn identity_mut(&mut self) -> &mut Identity {
        match self {
            Self::Exit(exit) => &mut exit.identity,
            Self::OomKill(oom) => &mut oom.identity,
            Self::Signal(signal) => &mut signal.identity,
            Self::CgroupMkdir(change) | Self::CgroupRmdir(change) => &mut change.identity,
            Self::CgroupAttach(attach) => &mut attach.identity,
            Self::HungTask(hung) => &mut hung.identity,
            Self::KernelLog(log) => &mut log.identity,
            Self::FsError(error) => &mut error.identity,
            Self::IoError(error) => &mut error.identity,
            Self::HwError(error) => &mut error.identity,
            Self::Pressure(pressure) => &mut pressure.identity,
        }
    }

    /// The cgroup v2 path the record is about (a signal's target's), if known.
    pub fn cgroup_path(&self) -> Option<&str> {
        match self {
            Self::Exit(exit) => exit.cgroup_path.as_deref(),
            Self::OomKill(oom) => oom.cgroup_path.as_deref(),
            Self::Signal(signal) => signal.target_cgroup_path.as_deref(),
            Self::CgroupMkdir(change) | Self::CgroupRmdir(change) => Some(&change.cgroup_path),
            Self::CgroupAttach(attach) => Some(&attach.cgroup_path),
            Self::HungTask(hung) => hung.cgroup_path.as_deref(),
            Self::FsError(error) => error.cgroup_path.as_deref(),
            Self::Pressure(pressure) => Some(&pressure.cgroup_path),
            Self::KernelLog(_) | Self::IoError(_) | Self::HwError(_) => None,
        }
    }
}

/// The types of record, for filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum RecordType {
    /// A process ended.
    Exit,
    /// The OOM killer chose a victim.
    OomKill,
    /// A signal that can end a process was generated.
    Signal,
    /// A cgroup was created.
    CgroupMkdir,
    /// A cgroup was removed.
    CgroupRmdir,
    /// A process moved into a cgroup.
    CgroupAttach,
    /// The hung-task detector found a task blocked too long.
    HungTask,
    /// The kernel logged a line.
    KernelLog,
    /// A filesystem reported an error.
    FsError,
    /// A block request failed.
    IoError,
    /// A memory controller reported a hardware error.
    HwError,
    /// A container began or stopped stalling on memory, CPU or I/O.
    Pressure,
}

/// Which pod and container a record belongs to; every field is null where unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The container's id (64 hex), from the cgroup path or the runtime.
    pub container_id: Option<String>,
    /// The pod's uid, from the cgroup path or the runtime.
    pub pod_uid: Option<String>,
    /// The pod's name (runtime or API server).
    pub pod_name: Option<String>,
    /// The pod's namespace (runtime or API server).
    pub namespace: Option<String>,
    /// The container's name in the pod spec (runtime or API server).
    pub container_name: Option<String>,
    /// Whether the container is an init container, where known (API server).
    #[serde(skip)]
    pub init_container: Option<bool>,
    /// The pod's labels (the runtime's sandbox, or the API server's pod), for filter rules;
    /// not printed.
    #[serde(skip)]
    pub pod_labels: Option<std::collections::BTreeMap<String, String>>,
    /// The pod's controller (API server); shown only when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Whether the container is the pod sandbox ("pause"); shown only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
}

impl Identity {
    /// Whether the record belongs to a container of a pod.
    pub const fn in_pod(&self) -> bool {
        self.pod_uid.is_some()
    }
}

/// A pod's controller, from its `ownerReferences`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// e.g. `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`, `Node`.
    pub kind: String,
    /// The owner's name.
    pub name: String,
}

/// Why a pod was being stopped, as its API object said when its container stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStop {
    /// Whether the pod was being deleted (`metadata.deletionTimestamp` was set).
    pub deleted: bool,
    /// The reason of the pod's `DisruptionTarget` condition (`EvictionByEvictionAPI`,
    /// `PreemptionByScheduler`, `DeletionByTaintManager`, `DeletionByPodGC`,
    /// `TerminationByKubelet`); none for a plain deletion.
    pub reason: Option<String>,
    /// That condition's message (`Eviction API: evicting`), as the API server has it.
    pub message: Option<String>,
}

/// Where the memory limit an OOM kill hit sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OomScope {
    /// The victim's container's own limit.
    Container,
    /// The pod's limit (the container has none, or a larger one).
    Pod,
    /// The node ran out of memory: no cgroup limit was hit.
    Node,
    /// A limit on a cgroup that is neither a container nor a pod (e.g. a systemd slice).
    Cgroup,
}

/// A process (thread group) ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// When it ended.
    pub time: Timestamp,
    /// Process id.
    pub pid: u32,
    /// Parent's process id.
    pub ppid: u32,
    /// Process name, escaped (see `escape`).
    pub comm: String,
    /// The exit status for a normal exit, 128 + N for a death by signal N.
    pub exit_code: u32,
    /// The signal that killed it; none for a normal exit.
    pub signal: Option<u32>,
    /// Whether it dumped core.
    pub core_dumped: bool,
    /// cgroup v2 id (the cgroup directory's inode number).
    pub cgroup_id: u64,
    /// cgroup v2 path relative to the v2 root, `/` for the root; none if unknown.
    pub cgroup_path: Option<String>,
    /// Whether the OOM killer chose it.
    pub oom_killed: bool,
    /// The process that sent the fatal signal; none for a normal exit, or when
    /// the kernel raised it (a fault, the OOM killer) or it is unknown.
    pub sender: Option<Process>,
    /// Its pod and container.
    #[serde(flatten)]
    pub identity: Identity,
    /// Whether it was its container's main process; none outside containers or when unknown.
    pub main_process: Option<bool>,
    /// Whether the container runtime was asked to stop it: `requested` when it
    /// ended after the runtime's stop signal (or the runtime's SIGKILL alone),
    /// `grace_exceeded` when the runtime had to follow its stop signal with
    /// SIGKILL; none when the runtime signalled it not at all.
    pub stop: Option<Stop>,
    /// The runtime's first signal to it, when `stop` is set.
    pub stop_request: Option<StopRequest>,
}

/// How a stop the container runtime was asked for ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// It ended after the runtime's stop signal, without needing a later SIGKILL.
    Requested,
    /// It outlived the stop signal and the runtime killed it with SIGKILL.
    GraceExceeded,
}

/// The container runtime's signals to a process it was asked to stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    /// When the runtime sent its first signal.
    pub time: Timestamp,
    /// That signal: SIGTERM, the image's STOPSIGNAL, or SIGKILL for a stop with no grace.
    pub signal: u32,
    /// Its name.
    pub signal_name: String,
    /// Whether the kernel ignored it: the process has no handler for it and its
    /// default action does nothing here (a container's PID 1), or it set SIG_IGN.
    pub ignored: bool,
    /// When the runtime followed it with SIGKILL, if it did.
    pub kill_time: Option<Timestamp>,
    /// The runtime process that sent the first signal.
    pub sender: Process,
    /// Why the pod was being stopped, where the API server said so; none for a
    /// container the kubelet stopped while its pod lives on (a restart), or
    /// without the pod watch.
    #[serde(default)]
    pub pod_stop: Option<PodStop>,
    /// Why the kubelet stopped the container, in its own words: the message of its `Killing`
    /// Event (`Container app failed liveness probe, will be restarted`), read from the API
    /// server for a container stopped while its pod was not; none without the API, or when
    /// that Event did not arrive in time.
    #[serde(default)]
    pub kubelet_message: Option<String>,
    /// For a failed probe, what the probe got: the message of the kubelet's last `Unhealthy`
    /// Event of that probe before the stop (`Liveness probe failed: HTTP probe failed with
    /// statuscode: 500`).
    #[serde(default)]
    pub probe_message: Option<String>,
}

impl StopRequest {
    /// Whether the kubelet stopped the container because a liveness or startup probe failed:
    /// a failure, though asked for.
    pub fn probe_failed(&self) -> bool {
        self.kubelet_message
            .as_deref()
            .is_some_and(|m| m.contains(" failed liveness probe") || m.contains(" failed startup probe"))
    }
}

/// A process named as the sender of a signal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Process name, escaped.
    pub comm: String,
    /// The file name of its executable, escaped (`runc`, `containerd-shim-runc-v2`);
    /// none when unknown (a kernel thread, or a signal record that was not seen).
    pub exe: Option<String>,
    /// Its cgroup v2 path; none if unknown.
    pub cgroup_path: Option<String>,
}

/// The OOM killer chose a victim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomKill {
    /// When the victim was chosen.
    pub time: Timestamp,
    /// The victim's process id.
    pub pid: u32,
    /// The victim's name, escaped; none if this kernel cannot say.
    pub comm: Option<String>,
    /// The victim's cgroup v2 id; none if this kernel cannot say.
    pub cgroup_id: Option<u64>,
    /// The victim's cgroup v2 path; none if unknown.
    pub cgroup_path: Option<String>,
    /// Victim's virtual memory in kB (none before kernel 6.9 / 6.1.130).
    pub total_vm_kb: Option<u64>,
    /// Victim's anonymous RSS in kB (as above).
    pub anon_rss_kb: Option<u64>,
    /// Victim's file RSS in kB (as above).
    pub file_rss_kb: Option<u64>,
    /// Victim's shared memory RSS in kB (as above).
    pub shmem_rss_kb: Option<u64>,
    /// Victim's `oom_score_adj` (as above).
    pub oom_score_adj: Option<i32>,
    /// The task whose allocation ran out of memory.
    pub trigger_pid: u32,
    /// Its name, escaped.
    pub trigger_comm: String,
    /// The cgroup whose memory limit was hit (in the memory controller's
    /// hierarchy); none for a node-wide OOM or when unknown.
    pub oom_cgroup_path: Option<String>,
    /// That cgroup's limit in bytes; none for a node-wide OOM or when unknown.
    pub memory_limit_bytes: Option<u64>,
    /// Whether the kernel named that cgroup (`out_of_memory` probe); if not,
    /// it was inferred from the cgroup tree.
    #[serde(skip)]
    pub scope_known: bool,
    /// The victim's pod and container.
    #[serde(flatten)]
    pub identity: Identity,
    /// Whether the victim was its container's main process; none when unknown.
    pub main_process: Option<bool>,
    /// Where the limit that was hit sits; none when unknown.
    pub scope: Option<OomScope>,
}

/// A signal that can end a process was generated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// When it was generated.
    pub time: Timestamp,
    /// The signal number.
    pub signal: u32,
    /// Its name (`SIGKILL`).
    pub signal_name: String,
    /// `si_code`: 0 kill, -1 sigqueue, -6 tkill/tgkill, 128 the kernel, > 0 a fault.
    pub code: i32,
    /// The sending process; none when the kernel raised it.
    pub sender: Option<Process>,
    /// The target thread.
    pub target_pid: u32,
    /// The target's name, escaped.
    pub target_comm: String,
    /// The target's cgroup v2 path, read when the record arrived; none if it was gone.
    pub target_cgroup_path: Option<String>,
    /// The target's pod and container.
    #[serde(flatten)]
    pub identity: Identity,
    /// Whether it was sent to the whole process rather than one thread.
    pub group: bool,
    /// `delivered`, `ignored`, `already_pending`, `overflow_fail` or `lose_info`.
    pub result: SignalResult,
}

/// A cgroup was created or removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupChange {
    /// When.
    pub time: Timestamp,
    /// Its id: what `cgroup_id` is in other records.
    pub cgroup_id: u64,
    /// Its path relative to the v2 root, escaped.
    pub cgroup_path: String,
    /// The pod and container it belongs to.
    #[serde(flatten)]
    pub identity: Identity,
}

/// A process was moved into a cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupAttach {
    /// When.
    pub time: Timestamp,
    /// The process moved.
    pub pid: u32,
    /// Its name, escaped.
    pub comm: String,
    /// The destination's id.
    pub cgroup_id: u64,
    /// The destination's path relative to the v2 root, escaped.
    pub cgroup_path: String,
    /// The pod and container it belongs to.
    #[serde(flatten)]
    pub identity: Identity,
}

/// Whether a `si_code` means a process sent the signal (kill, sigqueue, tkill).
pub const fn sent_by_process(code: i32) -> bool {
    matches!(code, 0 | -1 | -6)
}

/// What became of a generated signal (`TRACE_SIGNAL_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalResult {
    /// Queued for the target.
    Delivered,
    /// The target ignores it (a handler of SIG_IGN, or PID 1 of a namespace without a handler).
    Ignored,
    /// The same signal was already pending.
    AlreadyPending,
    /// The queue of real-time signals was full.
    OverflowFail,
    /// Queued without its sender's details.
    LoseInfo,
    /// A code this build does not know.
    #[serde(other)]
    Unknown,
}

impl SignalResult {
    /// From the tracepoint's `result` code.
    pub const fn from_code(result: u32) -> Self {
        match result {
            0 => Self::Delivered,
            1 => Self::Ignored,
            2 => Self::AlreadyPending,
            3 => Self::OverflowFail,
            4 => Self::LoseInfo,
            _ => Self::Unknown,
        }
    }

    /// The name records use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Ignored => "ignored",
            Self::AlreadyPending => "already_pending",
            Self::OverflowFail => "overflow_fail",
            Self::LoseInfo => "lose_info",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for SignalResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Signals whose default action ends a process: everything but SIGCHLD,
/// SIGCONT, the stop signals, SIGURG and SIGWINCH. Bit N is signal N.
pub const FATAL_SIGNALS: u64 = {
    let mut mask = 0u64;
    let mut sig = 1;
    while sig < 32 {
        if !matches!(sig, 17..=23 | 28) {
            mask |= 1 << sig;
        }
        sig += 1;
    }
    mask
};

/// An exit status decoded the way the kubelet reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// 0-255 for an exit, 128 + signal for a death by signal.
    pub code: u32,
    /// The fatal signal, if any.
    pub signal: Option<u32>,
    /// Whether a core was dumped.
    pub core_dumped: bool,
}

impl ExitStatus {
    /// Decodes `task_struct.exit_code` (`status << 8 | core 0x80 | signal`).
    pub const fn from_raw(raw: u32) -> Self {
        let signal = raw & 0x7f;
        let core_dumped = raw & 0x80 != 0;
        if signal == 0 {
            Self { code: (raw >> 8) & 0xff, signal: None, core_dumped }
        } else {
            Self { code: 128 + signal, signal: Some(signal), core_dumped }
        }
    }
}

/// The conventional name of a signal number (`SIGKILL`), or `SIG<n>`.
pub fn signal_name(signal: u32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match NAMES.get(signal as usize) {
        Some(name) if !name.is_empty() => (*name).to_owned(),
        _ => format!("SIG{signal}"),
    }
}

#[cfg(test)]
pub(crate) mod tests;
