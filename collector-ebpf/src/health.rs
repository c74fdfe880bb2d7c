//! Node health: the hung-task detector's reports, kernel log lines, and filesystem, block,
//! memory-controller and machine-check errors. These are rare on a healthy node and come in storms on a sick one
//! (a soft lockup prints hundreds of lines, a dying disk fails thousands of requests), so each
//! CPU sends at most a burst and then a steady trickle of each kind; user space matches and
//! counts them.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use collector_common::{COMM_LEN, HealthRecord, counter, hw_source, kind};

use crate::{
    EVENTS, HEALTH_BUDGET, SETTINGS, cgroup_id, count, layout, read_field, tp_data_loc, tp_field, wakeup_flags,
};

/// `sched_process_hang(struct task_struct *)`, raw: the record must name the hung task's cgroup,
/// and only the task pointer has it (the tracepoint's fields are its pid and name).
#[raw_tracepoint(tracepoint = "sched_process_hang")]
fn sched_process_hang(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_hang(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sched_process_hang(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let task: *const u8 = ctx.arg(0);
    emit(kind::HUNG_TASK, |record| {
        record.pid = read_field(task, layout!(task_tgid))?;
        record.tid = read_field(task, layout!(task_pid)).unwrap_or(record.pid);
        record.comm = read_field(task, layout!(task_comm)).unwrap_or([0; COMM_LEN]);
        record.cgroup_id = task_cgroup_id(task).unwrap_or_else(|_| {
            count(counter::READ_FAILED);
            0
        });
        Ok(())
    })
}

/// `printk/console`: every line the kernel logs, `/dev/kmsg` writes included.
#[tracepoint]
fn console(ctx: TracePointContext) -> u32 {
    match try_console(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_console(ctx: &TracePointContext) -> Result<u32, u32> {
    // The budget comes first: a storm costs one map lookup per line beyond it.
    if !within_budget(kind::KERNEL_LOG) {
        return Ok(0);
    }
    let layout = layout!(health);
    emit(kind::KERNEL_LOG, |record| {
        current(record);
        record.text_len = tp_data_loc(ctx, layout.console_msg, &mut record.text)?;
        Ok(())
    })
}

/// `ext4/ext4_error`: the filesystem found corruption or failed an operation.
#[tracepoint]
fn ext4_error(ctx: TracePointContext) -> u32 {
    match try_ext4_error(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_ext4_error(ctx: &TracePointContext) -> Result<u32, u32> {
    if !within_budget(kind::FS_ERROR) {
        return Ok(0);
    }
    let layout = layout!(health);
    emit(kind::FS_ERROR, |record| {
        current(record);
        record.dev = tp_field(ctx, layout.ext4_dev)?;
        record.value = u64::from(tp_field::<u32, _>(ctx, layout.ext4_line).unwrap_or(0));
        if let Ok(function) = tp_field::<*const u8, _>(ctx, layout.ext4_function)
            && !function.is_null()
        {
            // SAFETY: the kernel's fault-handling string copy; a bad pointer is an error.
            if let Ok(name) = unsafe { bpf_probe_read_kernel_str_bytes(function, &mut record.text) } {
                record.text_len = name.len() as u32;
            }
        }
        Ok(())
    })
}

/// `block/block_rq_error`: a block request completed with an error.
#[tracepoint]
fn block_rq_error(ctx: TracePointContext) -> u32 {
    match try_block_rq_error(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_block_rq_error(ctx: &TracePointContext) -> Result<u32, u32> {
    if !within_budget(kind::IO_ERROR) {
        return Ok(0);
    }
    let layout = layout!(health);
    emit(kind::IO_ERROR, |record| {
        current(record);
        record.dev = tp_field(ctx, layout.block_dev)?;
        record.value = tp_field(ctx, layout.block_sector).unwrap_or(0);
        record.code = tp_field(ctx, layout.block_error).unwrap_or(0);
        let rwbs: [u8; 10] = tp_field(ctx, layout.block_rwbs).unwrap_or([0; 10]);
        record.detail[..10].copy_from_slice(&rwbs);
        Ok(())
    })
}

/// `ras/mc_event`: a memory controller reported a (corrected or not) hardware error.
#[tracepoint]
fn mc_event(ctx: TracePointContext) -> u32 {
    match try_mc_event(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_mc_event(ctx: &TracePointContext) -> Result<u32, u32> {
    if !within_budget(kind::HW_ERROR) {
        return Ok(0);
    }
    let layout = layout!(health);
    emit(kind::HW_ERROR, |record| {
        current(record);
        record.code = tp_field::<u32, _>(ctx, layout.mc_error_type)? as i32;
        record.value = u64::from(tp_field::<u16, _>(ctx, layout.mc_error_count).unwrap_or(1));
        record.text_len = tp_data_loc(ctx, layout.mc_msg, &mut record.text).unwrap_or(0);
        let _ = tp_data_loc(ctx, layout.mc_label, &mut record.detail);
        Ok(())
    })
}

/// `mce/mce_record` (x86): a CPU's machine-check bank logged an error, corrected or not. The
/// kernel decodes and acts on it (poisoning a page, panicking); this only reports it.
#[tracepoint]
fn mce_record(ctx: TracePointContext) -> u32 {
    match try_mce_record(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_mce_record(ctx: &TracePointContext) -> Result<u32, u32> {
    if !within_budget(kind::HW_ERROR) {
        return Ok(0);
    }
    let layout = layout!(health);
    emit(kind::HW_ERROR, |record| {
        record.source = hw_source::MCE;
        record.value = tp_field(ctx, layout.mce_status)?;
        record.address = tp_field(ctx, layout.mce_addr).unwrap_or(0);
        record.code = i32::from(tp_field::<u8, _>(ctx, layout.mce_bank)?);
        record.dev = tp_field(ctx, layout.mce_cpu).unwrap_or(u32::MAX);
        Ok(())
    })
}

/// Whether this CPU may send one more record of `kind` now; counts it when not. A generic cell
/// rate: each record moves the slot's "due" time one refill interval on, and a record whose due
/// time is more than a burst ahead of now is dropped.
#[inline(always)]
fn within_budget(kind: u32) -> bool {
    let settings = SETTINGS.load();
    let Some(due) = HEALTH_BUDGET.get_ptr_mut(kind - kind::HUNG_TASK) else {
        return true;
    };
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let burst_ns = settings.health_burst_ns;
    // SAFETY: the map owns the slot; per-CPU maps are not shared between CPUs.
    unsafe {
        let next = if *due > now { *due } else { now };
        if next - now >= burst_ns {
            count(counter::limited(kind));
            return false;
        }
        *due = next + settings.health_refill_ns;
    }
    true
}

/// Reserves a zeroed record of `kind` in the ring, lets `fill` write it, and sends it; a full
/// ring counts it lost. Written in place: the record is most of the BPF stack.
#[inline(always)]
fn emit(kind: u32, fill: impl FnOnce(&mut HealthRecord) -> Result<(), i64>) -> Result<u32, u32> {
    let Some(mut entry) = EVENTS.reserve::<HealthRecord>(0) else {
        count(counter::lost(kind));
        return Ok(0);
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to the reserved, writable ring space of one HealthRecord; zeroing
    // it makes every field a value (the record is integers and byte arrays), so a reference is sound.
    let record = unsafe {
        core::ptr::write_bytes(record, 0, 1);
        &mut *record
    };
    record.header.kind = kind;
    // SAFETY: a helper with no preconditions.
    record.header.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    if fill(record).is_err() {
        entry.discard(0);
        return Err(1);
    }
    entry.submit(wakeup_flags());
    Ok(0)
}

/// Fills in the current task: who was running when the kernel reported it.
#[inline(always)]
fn current(record: &mut HealthRecord) {
    let pid_tgid = bpf_get_current_pid_tgid();
    record.pid = (pid_tgid >> 32) as u32;
    record.tid = pid_tgid as u32;
    // SAFETY: a helper with no preconditions.
    record.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    record.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
}

/// The v2 cgroup id of `task`: `task->cgroups->dfl_cgrp`'s kernfs id.
#[inline(always)]
fn task_cgroup_id(task: *const u8) -> Result<u64, i64> {
    let css_set = read_field::<*const u8>(task, layout!(task_cgroups))?;
    let cgroup = read_field::<*const u8>(css_set, layout!(css_set_dfl_cgrp))?;
    cgroup_id(cgroup)
}
