//! The collector's kernel programs.
//!
//! They do as little as possible: read a few fields, drop what would flood user
//! space (non-final thread exits, signals that cannot end a process, v1 cgroup
//! events), and hand fixed-size records to user space through one ring buffer.
//! Every struct offset comes from user space through the `LAYOUT` global, read
//! from the running kernel's BTF and tracefs at load time.
#![no_std]
#![no_main]

mod cgroup;
mod exit;
mod health;
mod oom;
mod signal;

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::bpf_get_current_task_btf,
    },
    macros::map,
    maps::{Array, CgroupArray, LruHashMap, PerCpuArray, RingBuf},
};
use collector_common::{ABSENT, DEFAULT_RING_BYTES, Layout, OomScope, Settings, SignalInfo, counter, kind};

/// Records for user space. User space sets the real size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per-CPU drop and failure counters, indexed by `collector_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Non-zero while the reader sleeps without a timer (it found the ring empty for a while): the
/// next submit wakes it and clears this. User space sets it; see `collector::reader`.
#[map]
static READER_IDLE: Array<u32> = Array::with_max_entries(1, 0);

/// The last fatal signal generated for each target thread, until its process exits or the LRU
/// drops it. A thread that dies alone leaves its entry: the start time keeps a later task with
/// the same pid from taking it, which costs less than a removal on every thread exit.
#[map]
static SIGNALS: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(16384, 0);

/// A fatal signal waiting for its target's exit.
#[derive(Clone, Copy)]
#[repr(C)]
struct Pending {
    /// The signal as the exit record carries it.
    info: SignalInfo,
    /// `task_struct.start_time` of the target (monotonic ns); 0 where it could not be read.
    target_start_ns: u64,
}

/// What `out_of_memory` learned, by thread, until `mark_victim` in that thread reports the victim.
#[map]
static OOM_SCOPES: LruHashMap<u32, OomScope> = LruHashMap::with_max_entries(256, 0);

/// Per CPU and node-health kind (`kind - HUNG_TASK`): when the next record is due, for the rate limit.
#[map]
static HEALTH_BUDGET: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::LAST - kind::HUNG_TASK + 1, 0);

/// Offsets of the running kernel, written by user space before load.
#[unsafe(no_mangle)]
static LAYOUT: Global<Layout> = Global::new(Layout::UNSET);

/// Choices of user space, written before load.
#[unsafe(no_mangle)]
static SETTINGS: Global<Settings> = Global::new(Settings::DEFAULT);

/// One field of a `Global` set by the loader, read where it lies. `Global::load` copies the
/// whole struct (for [`LAYOUT`], about 250 bytes: a load and a stack store per offset, some
/// sixty) on every run, for the few fields a program uses; volatile, as `load` is, so the
/// loader's value is read, not the default.
macro_rules! global_field {
    ($global:path, $ty:ty, $($field:tt)+) => {
        // SAFETY: `Global` is `repr(transparent)` over a value the loader initialised.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*core::ptr::addr_of!($global).cast::<$ty>()).$($field)+)) }
    };
}
pub(crate) use global_field;

/// One field of [`LAYOUT`] (nested ones too: `layout!(victim.pid)`).
macro_rules! layout {
    ($($field:tt)+) => {
        crate::global_field!(crate::LAYOUT, collector_common::Layout, $($field)+)
    };
}
pub(crate) use layout;

/// One field of [`SETTINGS`].
macro_rules! setting {
    ($field:ident) => {
        crate::global_field!(crate::SETTINGS, collector_common::Settings, $field)
    };
}
pub(crate) use setting;

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

/// `bpf_ringbuf_query`: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// `bpf_ringbuf_submit`: do not wake the reader.
const BPF_RB_NO_WAKEUP: u64 = 1;
/// `bpf_ringbuf_submit`: wake the reader even if it is behind.
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Hands a record to user space, or counts it as lost (by kind) when the ring is full.
#[inline(always)]
fn submit<T: 'static>(record: T, kind: u32) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(wakeup_flags());
        }
        None => count(counter::lost(kind)),
    }
}

/// Reserves a `T` in the ring and lets `fill` write every field of it in place, then sends it
/// as [`submit`] does; a full ring counts it lost (by kind) before `fill` runs. Returns whether
/// the record went out.
#[inline(always)]
fn submit_in_place<T: 'static>(kind: u32, fill: impl FnOnce(*mut T)) -> bool {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count(counter::lost(kind));
        return false;
    };
    fill(entry.as_mut_ptr());
    entry.submit(wakeup_flags());
    true
}

/// Whether this submit wakes the reader: when it sleeps without a timer (the first record after
/// a quiet spell), or when the ring is filling. Otherwise the reader is polling and finds the
/// record within its period: a wake-up (an irq_work, a self-IPI) costs more than the rest of
/// the exit probe.
#[inline(always)]
fn wakeup_flags() -> u64 {
    if let Some(idle) = READER_IDLE.get_ptr_mut(0) {
        // SAFETY: the map owns the slot. CPUs racing here all write the same zero, and a wake-up
        // too many is harmless.
        unsafe {
            if core::ptr::read_volatile(idle) != 0 {
                core::ptr::write_volatile(idle, 0);
                return BPF_RB_FORCE_WAKEUP;
            }
        }
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= u64::from(setting!(wakeup_bytes)) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Types for which any bytes are a value: what [`read_field`] may copy out of kernel memory.
///
/// # Safety
///
/// Only for integers, raw pointers and arrays of them: no `bool`, no enum, no reference.
unsafe trait Plain {}
// SAFETY: integers, raw pointers and byte arrays take any bit pattern.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for i32 {}
// SAFETY: as above.
unsafe impl Plain for i16 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}
// SAFETY: as above.
unsafe impl Plain for *const u8 {}
// SAFETY: as above.
unsafe impl<const N: usize> Plain for [u8; N] {}

/// Reads a `T` at `base + offset` in kernel memory; `ABSENT` offsets, NULL and
/// unreadable addresses fail. Safe for any `base`: the read goes through the
/// kernel's fault-handling copy, never a plain load.
#[inline(always)]
fn read_field<T: Plain>(base: *const u8, offset: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel copies with the kernel's fault handling (a bad
    // address is an error, not a fault), and any bytes are a `T: Plain`.
    unsafe { bpf_probe_read_kernel(field_addr(base, offset)?.cast::<T>()) }.map_err(i64::from)
}

/// The current task: a BTF pointer where the kernel has `bpf_get_current_task_btf`, whose
/// fields [`task_field`] then reads with plain loads.
#[inline(always)]
fn current_task() -> *const u8 {
    if layout!(task_btf) != 0 {
        // SAFETY: a helper with no preconditions.
        unsafe { bpf_get_current_task_btf() }.cast::<u8>().cast_const()
    } else {
        // SAFETY: as above.
        unsafe { bpf_get_current_task() as *const u8 }
    }
}

/// A field of [`current_task`], or of an object reached from it by pointers read with this:
/// a plain load where the kernel allows it, else a helper call. `task_btf` is a constant to
/// the verifier, which checks only the branch taken: a kernel without
/// `bpf_get_current_task_btf` never sees its call or a plain load.
#[inline(always)]
fn task_field<T: Plain>(base: *const u8, offset: u32) -> Result<T, i64> {
    if layout!(task_btf) != 0 { btf_field(base, offset) } else { read_field(base, offset) }
}

/// Reads a `T` at `base + offset` with a plain load, where `base` is a BTF pointer: the current
/// task from `bpf_get_current_task_btf`, or a pointer field read from one this way. The verifier
/// checks the access against the kernel's BTF (the offset is a constant to it: `LAYOUT` lies in
/// frozen read-only data) and the JIT turns a faulting load into zero, which therefore is not
/// counted as a failed read (the current task's fields and the pointers from it do not fault).
/// A field costs one instruction instead of a [`read_field`] helper call, of which the exit
/// probe made ten.
#[inline(always)]
fn btf_field<T: Plain>(base: *const u8, offset: u32) -> Result<T, i64> {
    let addr = field_addr(base, offset)?;
    // SAFETY: the verifier loads this program only if `addr` is a field of at least
    // `size_of::<T>()` bytes in a BTF-typed kernel object; a fault reads as zero, and any bytes
    // are a `T: Plain`. Volatile, so that the load keeps the field's size.
    Ok(unsafe { core::ptr::read_volatile(addr.cast::<T>()) })
}

/// `base + offset`; an error for an `ABSENT` offset or a NULL base.
#[inline(always)]
fn field_addr(base: *const u8, offset: u32) -> Result<*const u8, i64> {
    if offset == ABSENT || base.is_null() {
        return Err(-1);
    }
    Ok(base.wrapping_add(offset as usize))
}

/// Reads a tracepoint field of type `T` at `offset` in the record.
#[inline(always)]
fn tp_field<T: Plain, C: aya_ebpf::EbpfContext>(ctx: &C, offset: u32) -> Result<T, i64> {
    // The offset comes from this tracepoint's format file.
    read_field(ctx.as_ptr().cast::<u8>().cast_const(), offset)
}

/// Copies a tracepoint's `__data_loc` string at `loc_offset` into `dest`;
/// returns the string's full length (which may exceed `dest`).
#[inline(always)]
fn tp_data_loc<C: aya_ebpf::EbpfContext>(ctx: &C, loc_offset: u32, dest: &mut [u8]) -> Result<u32, i64> {
    let loc: u32 = tp_field(ctx, loc_offset)?;
    // The low half is the offset in the record, the high half the length with its NUL.
    let (offset, len) = (loc & 0xffff, loc >> 16);
    let src = ctx.as_ptr().cast::<u8>().cast_const().wrapping_add(offset as usize);
    // SAFETY: the kernel wrote a NUL-terminated string of `len` bytes there.
    let copied = unsafe { bpf_probe_read_kernel_str_bytes(src, dest) }.map_err(i64::from)?;
    Ok((copied.len() as u32).max(len.saturating_sub(1)))
}

/// The id of a `struct cgroup` at `cgroup`: its kernfs node's id (the directory's inode).
#[inline(always)]
fn cgroup_id(cgroup: *const u8) -> Result<u64, i64> {
    let kn = read_field::<*const u8>(cgroup, layout!(cgroup_kn))?;
    read_field::<u64>(kn, layout!(kernfs_node_id))
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
