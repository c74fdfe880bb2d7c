//! Node-health records: what the kernel says about the node beyond deaths (hung tasks, kernel
//! log lines, filesystem, block and memory errors) and how much containers stall on memory.

use serde::{Deserialize, Serialize};

use super::Identity;
use crate::clock::Timestamp;

/// The kernel's hung-task detector found a task blocked (state D) longer than
/// `kernel.hung_task_timeout_secs`; it reports it again each check while it stays blocked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HungTask {
    /// When the detector reported it.
    pub time: Timestamp,
    /// Process id (thread group) of the blocked task.
    pub pid: u32,
    /// The blocked thread.
    pub tid: u32,
    /// Its name, escaped.
    pub comm: String,
    /// Its cgroup v2 id; 0 where this kernel's layout could not say.
    pub cgroup_id: u64,
    /// Its cgroup v2 path; none if unknown.
    pub cgroup_path: Option<String>,
    /// `kernel.hung_task_timeout_secs` when it was reported: it was blocked at least this long.
    pub timeout_secs: Option<u64>,
    /// Its pod and container.
    #[serde(flatten)]
    pub identity: Identity,
}

impl HungTask {
    /// The one sentence the Event and the `KernelDeadlock` condition say, with `owner` (` of
    /// container db`, or nothing) after the process: `Process 4242 (postgres) of container db
    /// blocked for more than 120 s`, or `... is blocked` when the timeout is unknown.
    pub fn describe(&self, owner: &str) -> String {
        match self.timeout_secs {
            Some(secs) => format!("Process {} ({}){owner} blocked for more than {secs} s", self.pid, self.comm),
            None => format!("Process {} ({}){owner} is blocked", self.pid, self.comm),
        }
    }
}

/// A line the kernel logged (`printk`, `/dev/kmsg` writes too), and the node-problem rule it
/// matched, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelLog {
    /// When it was logged.
    pub time: Timestamp,
    /// The line, escaped, without its trailing newline.
    pub line: String,
    /// Whether the kernel's line was longer than the record carries.
    pub truncated: bool,
    /// The task that logged it (for a kernel thread's line, that thread).
    pub pid: u32,
    /// Its name, escaped.
    pub comm: String,
    /// The matched rule's reason (`KernelOops`, `TaskHung`, ...); none for an ordinary line.
    pub reason: Option<String>,
    /// The node condition the matched rule sets (`KernelDeadlock`, `ReadonlyFilesystem`).
    pub condition: Option<String>,
    /// Not about a pod.
    #[serde(skip)]
    pub identity: Identity,
}

/// A filesystem reported an error (`ext4_error`: corruption, or a failed metadata operation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsError {
    /// When.
    pub time: Timestamp,
    /// The device, by name (`loop0`, `nvme0n1p2`) or else `major:minor`.
    pub device: String,
    /// The filesystem.
    pub filesystem: String,
    /// The kernel function that reported it, and its line.
    pub function: String,
    /// The source line.
    pub line: u32,
    /// The task that met the error.
    pub pid: u32,
    /// Its name, escaped.
    pub comm: String,
    /// Its cgroup v2 path; none if unknown.
    pub cgroup_path: Option<String>,
    /// Its pod and container.
    #[serde(flatten)]
    pub identity: Identity,
}

/// A block request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoError {
    /// When it completed with the error.
    pub time: Timestamp,
    /// The device, by name or else `major:minor`.
    pub device: String,
    /// The request's first sector.
    pub sector: u64,
    /// The error, by name (`EIO`, `ENOSPC`, `ETIMEDOUT`).
    pub error: String,
    /// What the request was (`W` write, `R` read, `F` flush, `S` sync, ...).
    pub rwbs: String,
    /// Not about a pod: the task current at completion is seldom the one that asked.
    #[serde(skip)]
    pub identity: Identity,
}

/// A memory controller (EDAC, `ras/mc_event`) or a CPU's machine-check bank (`mce/mce_record`)
/// reported a hardware error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HwError {
    /// When.
    pub time: Timestamp,
    /// What reported it.
    #[serde(default)]
    pub source: HwSource,
    /// `corrected`, `uncorrected`, `deferred`, `fatal` or `info`.
    pub severity: String,
    /// How many errors the report stands for.
    pub count: u64,
    /// The driver's message, escaped; for a machine check, its CPU, bank and registers.
    pub message: String,
    /// The memory module's label, escaped; empty when unknown.
    pub label: String,
    /// Not about a pod.
    #[serde(skip)]
    pub identity: Identity,
}

/// What reported a hardware error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HwSource {
    /// An EDAC memory controller driver (`ras/mc_event`).
    #[default]
    MemoryController,
    /// A CPU's machine-check architecture (`mce/mce_record`, x86).
    MachineCheck,
}

impl HwSource {
    /// What one report is called in messages: `memory error`, `machine check`.
    pub const fn noun(self) -> &'static str {
        match self {
            Self::MemoryController => "memory error",
            Self::MachineCheck => "machine check",
        }
    }
}

/// What a pressure record says: a container began to stall, or stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PressureState {
    /// Its tasks stalled on the resource more than the threshold over the window.
    Stalled,
    /// The stall fell back under the threshold.
    Cleared,
}

/// What a container's tasks stalled on, as PSI measures it in the cgroup's `<resource>.pressure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PressureResource {
    /// Reclaim, refaults of its page cache, swap-in: usually an OOM kill on the way.
    Memory,
    /// Runnable but not running: more threads than CPU, or its CPU limit.
    Cpu,
    /// Waiting for block I/O.
    Io,
}

impl PressureResource {
    /// Every resource, in the order they are read.
    pub const ALL: [Self; 3] = [Self::Memory, Self::Cpu, Self::Io];

    /// The configuration's and the metrics' name: `memory`, `cpu`, `io`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Cpu => "cpu",
            Self::Io => "io",
        }
    }

    /// The cgroup v2 file PSI reports it in.
    pub const fn file(self) -> &'static str {
        match self {
            Self::Memory => "memory.pressure",
            Self::Cpu => "cpu.pressure",
            Self::Io => "io.pressure",
        }
    }

    /// As an Event's message names it: `memory`, `CPU`, `I/O`.
    pub const fn noun(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Cpu => "CPU",
            Self::Io => "I/O",
        }
    }

    /// The resource of a configuration name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|resource| resource.as_str() == name)
    }
}

/// A container began or stopped stalling on memory, CPU or I/O (PSI: the time some of its tasks
/// waited for the resource).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pressure {
    /// When it was measured.
    pub time: Timestamp,
    /// What it stalled on.
    pub resource: PressureResource,
    /// Began or stopped.
    pub state: PressureState,
    /// Microseconds some task of the container stalled over the window (`some total` delta).
    pub stalled_us: u64,
    /// The window measured, in milliseconds.
    pub window_ms: u64,
    /// The container's cgroup v2 path.
    pub cgroup_path: String,
    /// Its memory limit in bytes; none when unlimited or unknown.
    pub memory_limit_bytes: Option<u64>,
    /// Its memory use in bytes when measured; none when unknown.
    pub memory_usage_bytes: Option<u64>,
    /// `cpu` only: its CPU limit in millicores (`cpu.max`); none when unlimited or unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_millicores: Option<u64>,
    /// Its pod and container.
    #[serde(flatten)]
    pub identity: Identity,
}

impl Pressure {
    /// The stall as a percentage of the window, to one decimal.
    pub fn percent(&self) -> f64 {
        if self.window_ms == 0 {
            return 0.0;
        }
        #[expect(clippy::cast_precision_loss, reason = "a percentage to one decimal")]
        let percent = self.stalled_us as f64 / (self.window_ms as f64 * 10.0);
        (percent * 10.0).round() / 10.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_task_is_described_once_for_the_event_and_the_condition() {
        let hung = HungTask {
            time: Timestamp(0),
            pid: 42,
            tid: 43,
            comm: "dd".to_owned(),
            cgroup_id: 0,
            cgroup_path: None,
            timeout_secs: Some(2),
            identity: Identity::default(),
        };
        assert_eq!(hung.describe(""), "Process 42 (dd) blocked for more than 2 s");
        assert_eq!(hung.describe(" of container app"), "Process 42 (dd) of container app blocked for more than 2 s");
        let unknown = HungTask { timeout_secs: None, ..hung };
        assert_eq!(unknown.describe(""), "Process 42 (dd) is blocked");
    }
}
