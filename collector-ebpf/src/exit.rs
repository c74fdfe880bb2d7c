//! `sched/sched_process_exit`: one record per process, not per thread, with
//! whether the OOM killer chose it and the last fatal signal sent to it.
//!
//! Attached raw: a classic tracepoint program first has the kernel fill the tracepoint's
//! record (a per-CPU perf buffer, the name copied, pid and priority), which the program never
//! reads; the raw one gets the tracepoint's arguments as they are.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use collector_common::{ABSENT, ExitRecord, Header, SignalInfo, SignaledExit, counter, exit_flags, kind};

use crate::{SIGNALS, count, current_task, filtered_out, layout, read_field, submit_in_place, task_field};

/// Fires once per exiting thread; emits a record only for the thread that ends its group.
/// `sched_process_exit(struct task_struct *p, bool group_dead)`; older kernels pass `p` alone.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
fn sched_process_exit(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_exit(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sched_process_exit(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;

    // A thread storm must not reach user space: keep the exit that ends the group.
    let last = if layout!(exit_group_dead) == ABSENT {
        // Older kernels do not say; the leader's exit stands for the group.
        tid == tgid
    } else {
        // The second argument: the verifier follows only this branch where the tracepoint
        // has it (`LAYOUT` is read-only), and an older kernel, whose tracepoint has one
        // argument, would refuse to attach a program that reads two.
        ctx.arg::<u64>(1) != 0
    };
    if !last {
        // A thread that dies alone leaves its pending signal, if any, in the map: removing it
        // was most of this path's cost, and the start time keeps the pid's next owner from it.
        return Ok(0);
    }
    if filtered_out() {
        return Ok(0);
    }

    let task = current_task();
    let mut failed = false;
    // Offsets in `task` (the current task_struct) come from the running kernel's BTF.
    let exit_status: i32 = task_field(task, layout!(task_exit_code)).unwrap_or_else(|_| {
        failed = true;
        0
    });
    // The sender matters only when a signal ended the process (user space names it only then),
    // and most processes exit by themselves: they skip the shared map and go out as a bare
    // 64-byte record. A signal one handled stays in the map until the LRU drops it; a later
    // death by signal always follows a new `signal_generate`, which replaces it.
    let signal = if exit_status & 0x7f != 0 { take_signal(task, tgid, tid) } else { None };
    let exit = Exit { tgid, tid, exit_status, task };
    // Written in place: a record built on the stack would be zeroed and copied again.
    let sent = match signal {
        // SAFETY: `submit_in_place` hands `fill` the reserved, writable ring buffer space of the
        // record it asked for; `fill` writes every field of the exit, and the signal is written.
        Some(info) => submit_in_place::<SignaledExit>(kind::EXIT, |record| unsafe {
            (*record).signal = info;
            fill(&raw mut (*record).exit, &exit, exit_flags::SIGNAL_KNOWN, &mut failed)
        }),
        // SAFETY: as above, for an ExitRecord.
        None => submit_in_place::<ExitRecord>(kind::EXIT, |record| unsafe { fill(record, &exit, 0, &mut failed) }),
    };
    // A record lost to a full ring is counted as lost, not also as a failed read.
    if sent && failed {
        count(counter::READ_FAILED);
        warn!(ctx, "sched_process_exit: a task field could not be read for pid {}", tgid);
    }
    Ok(0)
}

/// What the program knows of the exit before it reserves the record.
struct Exit {
    tgid: u32,
    tid: u32,
    exit_status: i32,
    /// The current task, read with [`task_field`].
    task: *const u8,
}

/// Writes every field of an exit record in place, reading the task's fields straight into it,
/// with its timestamp. A field that cannot be read is zero and sets `failed`.
///
/// # Safety
///
/// `record` must be valid for writes of a whole `ExitRecord` (reserved ring buffer space).
#[inline(always)]
unsafe fn fill(record: *mut ExitRecord, exit: &Exit, mut flags: u32, failed: &mut bool) {
    let Exit { tgid, tid, exit_status, task } = *exit;
    let ppid = task_field::<*const u8>(task, layout!(task_real_parent))
        .and_then(|parent| task_field::<u32>(parent, layout!(task_tgid)))
        .unwrap_or_else(|_| {
            *failed = true;
            0
        });
    // The leader's name names the process; a worker thread may have renamed itself. Most
    // processes are one thread: the exiting task is then the leader, one read fewer.
    let leader = if tid == tgid { Ok(task) } else { task_field::<*const u8>(task, layout!(task_group_leader)) };
    // mark_oom_victim() sets signal->oom_mm for the whole thread group.
    let oom_mm = task_field::<*const u8>(task, layout!(task_signal))
        .and_then(|sig| task_field::<u64>(sig, layout!(signal_oom_mm)))
        .unwrap_or(0);
    // The main process of a container is pid 1 in the container's own pid namespace.
    let ns_init = task_field::<*const u8>(task, layout!(task_thread_pid))
        .and_then(|pid| {
            let level = task_field::<u32>(pid, layout!(pid_level))?;
            if level == 0 || level > 32 || layout!(upid_size) == ABSENT || layout!(pid_numbers) == ABSENT {
                return Ok(false);
            }
            let nr_offset = layout!(pid_numbers) + level * layout!(upid_size);
            // A variable offset: the verifier allows no plain load there.
            Ok(read_field::<u32>(pid, nr_offset)? == 1)
        })
        .unwrap_or(false);

    let comm_offset = layout!(task_comm);
    if oom_mm != 0 {
        flags |= exit_flags::OOM_VICTIM;
    }
    if ns_init {
        flags |= exit_flags::NS_INIT;
    }
    // SAFETY: the caller vouches for `record`; every field is written before submit.
    unsafe {
        (*record).header = Header { kind: kind::EXIT, _pad: 0, boot_ns: bpf_ktime_get_boot_ns() };
        (*record).cgroup_id = bpf_get_current_cgroup_id();
        (*record).pid = tgid;
        (*record).ppid = ppid;
        (*record).tid = tid;
        (*record).exit_status = exit_status as u32;
        // Two 8-byte loads and stores: an array moved by value is copied byte by byte.
        let comm = (*record).comm.as_mut_ptr().cast::<u64>();
        let words = leader.and_then(|leader| {
            Ok((task_field::<u64>(leader, comm_offset)?, task_field::<u64>(leader, comm_offset.wrapping_add(8))?))
        });
        let (low, high) = words.unwrap_or_else(|_| {
            *failed = true;
            (0, 0)
        });
        core::ptr::write_volatile(comm, low);
        core::ptr::write_volatile(comm.add(1), high);
        (*record).flags = flags;
        (*record)._pad = 0;
    }
}

/// The last fatal signal for the process, from its leader or this thread, removed from the map.
/// A one-thread process is its own leader: one lookup, not two (each costs a hash and a walk
/// of the shared LRU map on every exit).
fn take_signal(task: *const u8, tgid: u32, tid: u32) -> Option<SignalInfo> {
    let start = |task: *const u8| task_field::<u64>(task, layout!(task_start_time)).unwrap_or(0);
    if tid == tgid {
        return take(tgid, start(task));
    }
    let leader = task_field::<*const u8>(task, layout!(task_group_leader)).map_or(0, start);
    let leader = take(tgid, leader);
    let thread = take(tid, start(task));
    leader.or(thread)
}

/// The signal remembered for `key`, removed; `None` if it was sent to an earlier task with
/// that pid (one that started at another time), which had died alone.
#[inline(always)]
fn take(key: u32, start_ns: u64) -> Option<SignalInfo> {
    // SAFETY: the value is copied out before the entry is removed.
    let pending = unsafe { SIGNALS.get(key) }.copied()?;
    let _ = SIGNALS.remove(key);
    (pending.target_start_ns == start_ns).then_some(pending.info)
}
