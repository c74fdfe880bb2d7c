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

/// Default size of the ring buffer in bytes: 16384 exit records, enough for
/// a fork storm on a busy node between two reader wake-ups.
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;

/// The kind of a record, the first field of every record.
pub mod kind {
    /// A process (thread group) ended: [`super::ExitRecord`].
    pub const EXIT: u32 = 1;
}

/// Index of the per-CPU counters in the `COUNTERS` map.
pub mod counter {
    /// Records the kernel could not reserve in a full ring buffer.
    pub const RING_FULL: u32 = 0;
    /// Kernel memory reads that failed (a record went out with zeroes).
    pub const READ_FAILED: u32 = 1;
    /// How many counters there are.
    pub const COUNT: u32 = 2;
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
    /// `sched_process_exit`'s `group_dead`, or [`ABSENT`] where the tracepoint lacks it (6.1).
    pub exit_group_dead: u32,
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
    };
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with no implicit
    // padding (checked by the size assertions below); any bit pattern is valid.
    unsafe impl aya::Pod for super::Layout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExitRecord {}
}

// A change that introduces implicit padding changes these sizes.
const _: () = assert!(size_of::<Header>() == 16);
const _: () = assert!(size_of::<ExitRecord>() == 56);
const _: () = assert!(size_of::<Layout>() == 24);
