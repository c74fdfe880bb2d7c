//! Records shared by the collector's kernel programs and its user-space daemon.
//!
//! Every type here is `#[repr(C)]`, `Copy` and free of implicit padding, so the
//! bytes the kernel writes into the ring buffer are exactly the bytes user space
//! reads. Padding is spelled out as `_pad` fields: the kernel must zero them, and
//! a layout change shows up as a failed `size_of` assertion below, not as garbage.
#![no_std]

/// Length of a kernel task name (`TASK_COMM_LEN`), NUL padded.
pub const COMM_LEN: usize = 16;

/// Marks an offset that the running kernel does not have (a field missing from
/// an older kernel's tracepoint, say), so the kernel program takes its fallback.
pub const ABSENT: u32 = u32::MAX;

/// Default size of the ring buffer in bytes: 7710 exit records (128 bytes and
/// the ring's 8-byte header each) between two reader wake-ups.
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;

/// Bytes of a cgroup path carried in a record; longer paths are cut and flagged.
pub const PATH_CAP: usize = 512;

/// Bytes of an executable's file name carried in a signal record, NUL padded;
/// longer names are cut. Enough for `containerd-shim-runc-v2`, which `comm` cuts at 15.
pub const EXE_LEN: usize = 32;

pub mod time;

/// The kind of a record, the first field of every record.
pub mod kind {
    /// A process (thread group) ended: [`super::ExitRecord`].
    pub const EXIT: u32 = 1;
    /// The OOM killer chose a victim: [`super::OomRecord`].
    pub const OOM_KILL: u32 = 2;
    /// A signal that can end a process was generated: [`super::SignalRecord`].
    pub const SIGNAL: u32 = 3;
    /// A cgroup v2 directory was created: [`super::CgroupRecord`].
    pub const CGROUP_MKDIR: u32 = 4;
    /// A cgroup v2 directory was removed: [`super::CgroupRecord`].
    pub const CGROUP_RMDIR: u32 = 5;
    /// A process was moved into a cgroup v2 directory: [`super::CgroupRecord`].
    pub const CGROUP_ATTACH: u32 = 6;
    /// The kernel's hung-task detector found a task blocked too long: [`super::HealthRecord`].
    pub const HUNG_TASK: u32 = 7;
    /// The kernel logged a line (`printk/console`): [`super::HealthRecord`].
    pub const KERNEL_LOG: u32 = 8;
    /// ext4 reported a filesystem error: [`super::HealthRecord`].
    pub const FS_ERROR: u32 = 9;
    /// A block request failed: [`super::HealthRecord`].
    pub const IO_ERROR: u32 = 10;
    /// A memory controller (`ras/mc_event`) or a CPU's machine-check bank (`mce/mce_record`)
    /// reported a hardware error: [`super::HealthRecord`], its `source` says which.
    pub const HW_ERROR: u32 = 11;
    /// The highest kind.
    pub const LAST: u32 = HW_ERROR;
}

/// Which tracepoint a `HW_ERROR` [`HealthRecord`] came from.
pub mod hw_source {
    /// `ras/mc_event`: an EDAC memory controller driver; `dev` is unused.
    pub const MC_EVENT: u32 = 0;
    /// `mce/mce_record`: a machine check logged by a CPU bank; `dev` is the CPU.
    pub const MCE: u32 = 1;
}

/// Bytes of text a [`HealthRecord`] carries (a kernel log line, a function name); longer is cut.
pub const TEXT_CAP: usize = 256;

/// Bytes of a [`HealthRecord`]'s detail (a block request's `rwbs`, a DIMM label); longer is cut.
pub const DETAIL_LEN: usize = 32;

/// Bits of [`ExitRecord::flags`].
pub mod exit_flags {
    /// The OOM killer chose this process (`signal->oom_mm` was set).
    pub const OOM_VICTIM: u32 = 1;
    /// The record is a [`super::SignaledExit`]: the last fatal signal generated for the process
    /// follows the exit.
    pub const SIGNAL_KNOWN: u32 = 2;
    /// The process is pid 1 of a pid namespace below the root: a container's main process.
    pub const NS_INIT: u32 = 4;
}

/// Bits of [`OomRecord::flags`].
pub mod oom_flags {
    /// `scope` was filled by the `out_of_memory` probe.
    pub const SCOPE_KNOWN: u32 = 1;
    /// The OOM was a memory cgroup's: `scope.memcg_id` and `scope.limit_pages` are set.
    pub const MEMCG: u32 = 2;
    /// The tracepoint carried memory figures (kernels 6.9+, 6.1.130+).
    pub const STATS: u32 = 4;
}

/// Index of the per-CPU counters in the `COUNTERS` map.
pub mod counter {
    /// Kernel memory reads that failed (a record went out with zeroes).
    pub const READ_FAILED: u32 = 0;
    /// Records of `kind` the kernel could not reserve in a full ring buffer.
    pub const fn lost(kind: u32) -> u32 {
        kind
    }
    /// Records of `kind` the kernel dropped over its rate limit (node-health kinds only).
    pub const fn limited(kind: u32) -> u32 {
        super::kind::LAST + 1 + kind
    }
    /// How many counters there are: `READ_FAILED` at 0, then one per kind lost, then one per kind limited.
    pub const COUNT: u32 = 2 * (super::kind::LAST + 1);
}

/// Starts every record: what it is and when it happened.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// One of the [`kind`] constants.
    pub kind: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// `CLOCK_BOOTTIME` in nanoseconds (`bpf_ktime_get_boot_ns`).
    pub boot_ns: u64,
}

/// A process ended: sent once per thread group, when its last thread exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    /// `kind::EXIT`.
    pub header: Header,
    /// cgroup v2 id (the inode of the cgroup directory) of the exiting task.
    pub cgroup_id: u64,
    /// Process id (the thread group id).
    pub pid: u32,
    /// Thread group id of the real parent.
    pub ppid: u32,
    /// Thread id of the task whose exit ended the group.
    pub tid: u32,
    /// `task_struct.exit_code`: `status << 8 | signal`, `0x80` = core dumped.
    pub exit_status: u32,
    /// Name of the thread group leader, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// [`exit_flags`] bits.
    pub flags: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
}

/// An exit that a signal ended, with that signal as `signal/signal_generate` saw it
/// (`exit_flags::SIGNAL_KNOWN`). Most processes exit by themselves: their record is the bare
/// 64-byte [`ExitRecord`], which fills half the ring and half the cache lines this one would.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignaledExit {
    /// The exit, its flags with `SIGNAL_KNOWN`.
    pub exit: ExitRecord,
    /// The last fatal signal generated for the process.
    pub signal: SignalInfo,
}

/// A fatal signal as `signal/signal_generate` saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalInfo {
    /// cgroup v2 id of the sending task (the one current when it was generated).
    pub sender_cgroup_id: u64,
    /// Signal number.
    pub sig: u32,
    /// `si_code`: <= 0 for a process's kill/tgkill/sigqueue, > 0 or `SI_KERNEL` (0x80) for the kernel.
    pub code: i32,
    /// Thread group id of the sending task.
    pub sender_pid: u32,
    /// Thread id of the target.
    pub target_pid: u32,
    /// Non-zero when sent to the whole process rather than one thread.
    pub group: u32,
    /// `TRACE_SIGNAL_*`: 0 delivered, 1 ignored, 2 already pending, 3 overflow, 4 lose info.
    pub result: u32,
    /// Name of the sending task.
    pub sender_comm: [u8; COMM_LEN],
    /// Name of the target task.
    pub target_comm: [u8; COMM_LEN],
}

/// A fatal signal was generated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalRecord {
    /// `kind::SIGNAL`.
    pub header: Header,
    /// The signal.
    pub info: SignalInfo,
    /// The file name of the sending task's executable (`mm->exe_file`), NUL
    /// padded; empty for kernel threads. Tells a container runtime (`runc`,
    /// `containerd-shim-runc-v2`) from a process that merely took its name.
    pub sender_exe: [u8; EXE_LEN],
}

/// What `out_of_memory` knows on entry: which cgroup's limit was hit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomScope {
    /// Id of the memory cgroup whose limit was hit (its directory's inode in
    /// the memory controller's hierarchy: v1 on hybrid hosts); 0 for a node-wide OOM.
    pub memcg_id: u64,
    /// That cgroup's limit in pages (`memory.max`/`memory.limit_in_bytes`).
    pub limit_pages: u64,
}

/// The OOM killer chose a victim.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomRecord {
    /// `kind::OOM_KILL`.
    pub header: Header,
    /// Victim's process id.
    pub victim_pid: u32,
    /// [`oom_flags`] bits.
    pub flags: u32,
    /// Victim's virtual memory, kB (with `STATS`).
    pub total_vm_kb: u64,
    /// Victim's anonymous RSS, kB (with `STATS`).
    pub anon_rss_kb: u64,
    /// Victim's file RSS, kB (with `STATS`).
    pub file_rss_kb: u64,
    /// Victim's shared-memory RSS, kB (with `STATS`).
    pub shmem_rss_kb: u64,
    /// Victim's `oom_score_adj` (with `STATS`).
    pub oom_score_adj: i32,
    /// Thread group id of the task whose allocation ran out.
    pub trigger_pid: u32,
    /// cgroup v2 id of that task.
    pub trigger_cgroup_id: u64,
    /// Name of that task.
    pub trigger_comm: [u8; COMM_LEN],
    /// Victim's name (`comm` of the tracepoint, 6.9+), NUL padded; empty before.
    pub victim_comm: [u8; COMM_LEN],
    /// From `out_of_memory` (with `SCOPE_KNOWN`).
    pub scope: OomScope,
}

/// A cgroup v2 directory was created or removed, or a process moved into one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupRecord {
    /// `kind::CGROUP_MKDIR`, `CGROUP_RMDIR` or `CGROUP_ATTACH`.
    pub header: Header,
    /// The cgroup's id (its v2 directory's inode number).
    pub cgroup_id: u64,
    /// Depth below the root (the root is 0).
    pub level: u32,
    /// The moved process (attach only).
    pub pid: u32,
    /// Bytes of `path` used; more than [`PATH_CAP`] means it was cut.
    pub path_len: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// Name of the moved process (attach only).
    pub comm: [u8; COMM_LEN],
    /// The path relative to the v2 root, not NUL terminated.
    pub path: [u8; PATH_CAP],
}

/// A node-health report: a hung task, a kernel log line, a filesystem, block or memory error.
/// One layout serves all five kinds; each says which fields it fills.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthRecord {
    /// `kind::HUNG_TASK`, `KERNEL_LOG`, `FS_ERROR`, `IO_ERROR` or `HW_ERROR`.
    pub header: Header,
    /// cgroup v2 id of the hung task, or of the task current when the others were reported.
    pub cgroup_id: u64,
    /// `IO_ERROR`: the first sector; `FS_ERROR`: the source line; `HW_ERROR`: the error count,
    /// or a machine check's `MCi_STATUS`.
    pub value: u64,
    /// `HW_ERROR` from a machine check: `MCi_ADDR`.
    pub address: u64,
    /// Thread group id of the hung task, or of the current task.
    pub pid: u32,
    /// Thread id of the same task.
    pub tid: u32,
    /// `FS_ERROR`, `IO_ERROR`: the device, as the kernel encodes `dev_t` (major << 20 | minor).
    pub dev: u32,
    /// `IO_ERROR`: the negative errno; `HW_ERROR`: the error type (0 corrected .. 3 info), or a
    /// machine check's bank.
    pub code: i32,
    /// Name of the hung task, or of the current task, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// Bytes of `text` the kernel had; more than [`TEXT_CAP`] means it was cut.
    pub text_len: u32,
    /// `HW_ERROR`: which tracepoint, [`hw_source::MC_EVENT`] or [`hw_source::MCE`].
    pub source: u32,
    /// `KERNEL_LOG`: the line; `FS_ERROR`: the kernel function; `HW_ERROR`: the message. NUL padded.
    pub text: [u8; TEXT_CAP],
    /// `IO_ERROR`: the request's `rwbs`; `HW_ERROR`: the DIMM label. NUL padded.
    pub detail: [u8; DETAIL_LEN],
}

/// Choices user space makes at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Bit N set: signal N can end a process and is worth recording.
    pub fatal_signals: u64,
    /// The v2 hierarchy's id in `cgroup_*` tracepoints (0); others are v1's.
    pub v2_hierarchy: u32,
    /// Non-zero: emit [`SignalRecord`]s (the exit probe uses them either way).
    pub emit_signals: u32,
    /// Unread bytes in the ring at which a submit always wakes the reader.
    pub wakeup_bytes: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// Node-health records: each CPU sends at most one per this many nanoseconds of each
    /// kind, after a burst; the rest are counted (`counter::limited`). A soft lockup prints
    /// hundreds of lines; a dying disk fails thousands of requests.
    pub health_refill_ns: u64,
    /// The burst, as `health_refill_ns` times the records it holds (multiplied in user space:
    /// BPF has no 128-bit multiply for an overflow check).
    pub health_burst_ns: u64,
}

/// Where the fields the probes read sit in this kernel's structures.
///
/// User space fills this from the kernel's BTF and tracefs format files at load
/// time: nothing of the build machine's kernel is baked into the object.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.real_parent`.
    pub task_real_parent: u32,
    /// `task_struct.group_leader`.
    pub task_group_leader: u32,
    /// `task_struct.exit_code`.
    pub task_exit_code: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `sched_process_exit`'s `group_dead` in its format, or [`ABSENT`] where the tracepoint lacks it
    /// (6.1); the raw exit probe reads it as the second argument only where it is present.
    pub exit_group_dead: u32,
    /// `task_struct.signal`.
    pub task_signal: u32,
    /// `signal_struct.oom_mm`.
    pub signal_oom_mm: u32,
    /// `cgroup.kn`.
    pub cgroup_kn: u32,
    /// `kernfs_node.id`.
    pub kernfs_node_id: u32,
    /// `oom_control.memcg`.
    pub oom_control_memcg: u32,

    /// `mem_cgroup.css` + `cgroup_subsys_state.cgroup`: the memcg's cgroup pointer.
    pub mem_cgroup_cgroup: u32,
    /// `mem_cgroup.memory` + `page_counter.max`: the memcg's limit in pages.
    pub mem_cgroup_max: u32,
    /// `task_struct.thread_pid`.
    pub task_thread_pid: u32,
    /// `pid.level`: the depth of the task's pid namespace.
    pub pid_level: u32,
    /// `pid.numbers`: one `upid` per level.
    pub pid_numbers: u32,
    /// The size of `struct upid`.
    pub upid_size: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `mm_struct.exe_file`.
    pub mm_exe_file: u32,
    /// `file.f_path` + `path.dentry`: the executable's dentry pointer.
    pub file_dentry: u32,
    /// `dentry.d_name` + `qstr.name`: the pointer to its file name.
    pub dentry_name: u32,
    /// `oom/mark_victim` fields; all but `pid` are [`ABSENT`] before 6.9 (and 6.1.130).
    pub victim: VictimLayout,
    /// `task_struct.start_time`: tells a task from a later one given the same pid.
    pub task_start_time: u32,
    /// `kernel_siginfo.si_code`.
    pub siginfo_code: u32,
    /// `cgroup/cgroup_mkdir` fields (`cgroup_rmdir` has the same).
    pub mkdir: CgroupLayout,
    /// `cgroup/cgroup_attach_task` fields.
    pub attach: CgroupLayout,
    /// `task_struct.pid`: the thread id.
    pub task_pid: u32,
    /// `task_struct.cgroups`: the task's `css_set`.
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`: its cgroup in the v2 hierarchy.
    pub css_set_dfl_cgrp: u32,
    /// 1 where the programs may call `bpf_get_current_task_btf` (5.11 and later) and read the
    /// current task's fields with plain loads the verifier checks against BTF; 0 where they
    /// read each through `bpf_probe_read_kernel`.
    pub task_btf: u32,
    /// Fields of the node-health tracepoints; [`ABSENT`] where this kernel lacks one.
    pub health: HealthLayout,
}

/// Field offsets of the node-health tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthLayout {
    /// `printk/console`: `msg` (`__data_loc`).
    pub console_msg: u32,
    /// `ext4/ext4_error`: `dev`.
    pub ext4_dev: u32,
    /// `ext4/ext4_error`: `function` (a `const char *`).
    pub ext4_function: u32,
    /// `ext4/ext4_error`: `line`.
    pub ext4_line: u32,
    /// `block/block_rq_error`: `dev`.
    pub block_dev: u32,
    /// `block/block_rq_error`: `sector`.
    pub block_sector: u32,
    /// `block/block_rq_error`: `error`.
    pub block_error: u32,
    /// `block/block_rq_error`: `rwbs` (inline).
    pub block_rwbs: u32,
    /// `ras/mc_event`: `error_type`.
    pub mc_error_type: u32,
    /// `ras/mc_event`: `msg` (`__data_loc`).
    pub mc_msg: u32,
    /// `ras/mc_event`: `label` (`__data_loc`).
    pub mc_label: u32,
    /// `ras/mc_event`: `error_count` (a u16).
    pub mc_error_count: u32,
    /// `mce/mce_record`: `status` (`MCi_STATUS`, a u64).
    pub mce_status: u32,
    /// `mce/mce_record`: `addr` (`MCi_ADDR`, a u64).
    pub mce_addr: u32,
    /// `mce/mce_record`: `bank` (a u8).
    pub mce_bank: u32,
    /// `mce/mce_record`: `cpu` (a u32).
    pub mce_cpu: u32,
}

impl HealthLayout {
    /// Every offset absent.
    pub const UNSET: Self = Self {
        console_msg: ABSENT,
        ext4_dev: ABSENT,
        ext4_function: ABSENT,
        ext4_line: ABSENT,
        block_dev: ABSENT,
        block_sector: ABSENT,
        block_error: ABSENT,
        block_rwbs: ABSENT,
        mc_error_type: ABSENT,
        mc_msg: ABSENT,
        mc_label: ABSENT,
        mc_error_count: ABSENT,
        mce_status: ABSENT,
        mce_addr: ABSENT,
        mce_bank: ABSENT,
        mce_cpu: ABSENT,
    };
}

/// Field offsets of `oom/mark_victim`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VictimLayout {
    /// `pid`.
    pub pid: u32,
    /// `comm` (`__data_loc`).
    pub comm: u32,
    /// `total_vm`.
    pub total_vm: u32,
    /// `anon_rss`.
    pub anon_rss: u32,
    /// `file_rss`.
    pub file_rss: u32,
    /// `shmem_rss`.
    pub shmem_rss: u32,
    /// `oom_score_adj` (a short).
    pub oom_score_adj: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Field offsets of the `cgroup/*` tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLayout {
    /// `root` or `dst_root`: the hierarchy id.
    pub root: u32,
    /// `level` or `dst_level`.
    pub level: u32,
    /// `id` or `dst_id`.
    pub id: u32,
    /// `path` or `dst_path` (`__data_loc`).
    pub path: u32,
    /// `pid` (attach only).
    pub pid: u32,
    /// `comm` (attach only, `__data_loc`).
    pub comm: u32,
}

impl VictimLayout {
    /// Every offset absent.
    pub const UNSET: Self = Self {
        pid: ABSENT,
        comm: ABSENT,
        total_vm: ABSENT,
        anon_rss: ABSENT,
        file_rss: ABSENT,
        shmem_rss: ABSENT,
        oom_score_adj: ABSENT,
        _pad: 0,
    };
}

impl CgroupLayout {
    /// Every offset absent.
    pub const UNSET: Self = Self { root: ABSENT, level: ABSENT, id: ABSENT, path: ABSENT, pid: ABSENT, comm: ABSENT };
}

impl Layout {
    /// Every offset absent: the kernel programs refuse to run on this.
    pub const UNSET: Self = Self {
        task_tgid: ABSENT,
        task_real_parent: ABSENT,
        task_group_leader: ABSENT,
        task_exit_code: ABSENT,
        task_comm: ABSENT,
        exit_group_dead: ABSENT,
        task_signal: ABSENT,
        signal_oom_mm: ABSENT,
        cgroup_kn: ABSENT,
        kernfs_node_id: ABSENT,
        oom_control_memcg: ABSENT,
        mem_cgroup_cgroup: ABSENT,
        mem_cgroup_max: ABSENT,
        task_thread_pid: ABSENT,
        pid_level: ABSENT,
        pid_numbers: ABSENT,
        upid_size: ABSENT,
        task_mm: ABSENT,
        mm_exe_file: ABSENT,
        file_dentry: ABSENT,
        dentry_name: ABSENT,
        victim: VictimLayout::UNSET,
        task_start_time: ABSENT,
        siginfo_code: ABSENT,
        mkdir: CgroupLayout::UNSET,
        attach: CgroupLayout::UNSET,
        task_pid: ABSENT,
        task_cgroups: ABSENT,
        css_set_dfl_cgrp: ABSENT,
        task_btf: 0,
        health: HealthLayout::UNSET,
    };
}

impl Settings {
    /// Nothing recorded beyond exits.
    pub const DEFAULT: Self = Self {
        fatal_signals: 0,
        v2_hierarchy: 0,
        emit_signals: 0,
        wakeup_bytes: 0,
        _pad: 0,
        health_refill_ns: 0,
        health_burst_ns: 0,
    };
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with no implicit
    // padding (checked by the size assertions below); any bit pattern is valid.
    unsafe impl aya::Pod for super::Layout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
}

// A change that introduces implicit padding changes these sizes.
const _: () = assert!(size_of::<Header>() == 16);
const _: () = assert!(size_of::<SignalInfo>() == 64);
const _: () = assert!(size_of::<ExitRecord>() == 64);
const _: () = assert!(size_of::<SignaledExit>() == 128);
const _: () = assert!(size_of::<SignalRecord>() == 80 + EXE_LEN);
const _: () = assert!(size_of::<OomScope>() == 16);
const _: () = assert!(size_of::<OomRecord>() == 120);
const _: () = assert!(size_of::<CgroupRecord>() == 56 + PATH_CAP);
const _: () = assert!(size_of::<Settings>() == 40);
const _: () = assert!(size_of::<HealthRecord>() == 80 + TEXT_CAP + DETAIL_LEN);
const _: () = assert!(size_of::<Layout>() == 4 * (21 + 8 + 2 + 6 + 6 + 4 + 16));
