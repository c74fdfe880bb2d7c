//! The collector's kernel programs.
//!
//! They do as little as possible: read a few fields, drop what would flood user
//! space (non-final thread exits), and hand fixed-size records to user space
//! through one ring buffer. Every struct offset comes from user space through
//! the `LAYOUT` global, read from the running kernel's BTF at load time.
#![no_std]
#![no_main]

mod exit;

use aya_ebpf::{
    Global,
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{CgroupArray, PerCpuArray, RingBuf},
};
use collector_common::{ABSENT, DEFAULT_RING_BYTES, Layout, counter};

/// Records for user space. User space sets the real size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per-CPU drop and failure counters, indexed by `collector_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Offsets of the running kernel, written by user space before load.
#[unsafe(no_mangle)]
static LAYOUT: Global<Layout> = Global::new(Layout::UNSET);

/// Non-zero when user space asked for one subtree only (`--cgroup`): then
/// tasks outside the cgroup in slot 0 of `CGROUP_FILTER` never reach the ring.
#[unsafe(no_mangle)]
static FILTER_BY_CGROUP: Global<u32> = Global::new(0);

/// The cgroup whose subtree is traced when `FILTER_BY_CGROUP` is set.
#[map]
static CGROUP_FILTER: CgroupArray = CgroupArray::with_max_entries(1, 0);

/// Whether the current task is outside the traced subtree.
#[inline(always)]
fn filtered_out() -> bool {
    FILTER_BY_CGROUP.load() != 0 && !matches!(CGROUP_FILTER.current_task_under_cgroup(0), Ok(true))
}

/// Adds one to a per-CPU counter; per-CPU slots need no atomics.
#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the map owns the slot; per-CPU maps are not shared between CPUs.
        unsafe { *slot += 1 };
    }
}

/// Reads a `T` at `base + offset` in kernel memory; `ABSENT` offsets fail.
///
/// # Safety
/// `base` must be a kernel pointer to a structure that has a `T` at `offset`.
#[inline(always)]
unsafe fn read_field<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    if offset == ABSENT || base.is_null() {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error.
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()) }.map_err(i64::from)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any reachable panic, so this is never entered.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
