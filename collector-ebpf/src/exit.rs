//! `sched/sched_process_exit`: one record per process, not per thread, with
//! whether the OOM killer chose it and the last fatal signal sent to it.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use collector_common::{ABSENT, COMM_LEN, ExitRecord, Header, SignalInfo, counter, exit_flags, kind};

use crate::{SIGNALS, count, filtered_out, layout, read_field, submit, tp_field};

/// Fires once per exiting thread; emits a record only for the thread that ends its group.
#[tracepoint]
fn sched_process_exit(ctx: TracePointContext) -> u32 {
    match try_sched_process_exit(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sched_process_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;

    // A thread storm must not reach user space: keep the exit that ends the group.
    let last = if layout!(exit_group_dead) == ABSENT {
        // Older kernels do not say; the leader's exit stands for the group.
        tid == tgid
    } else {
        tp_field::<u8, _>(ctx, layout!(exit_group_dead)).map_err(|_| 1u32)? != 0
    };
    if !last {
        // A thread that dies alone takes its pending signal with it.
        let _ = SIGNALS.remove(tid);
        return Ok(0);
    }
    if filtered_out() {
        return Ok(0);
    }

    // SAFETY: a helper with no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mut failed = false;
    // Offsets in `task` (the current task_struct) come from the running kernel's BTF.
    let exit_status: i32 = read_field(task, layout!(task_exit_code)).unwrap_or_else(|_| {
        failed = true;
        0
    });
    // The sender matters only when a signal ended the process (user space names it only
    // then), and most processes exit by themselves: they skip the shared map. A signal one
    // handled stays there until the LRU drops it; a later death by signal always follows a
    // new `signal_generate`, which replaces it.
    let signal = if exit_status & 0x7f != 0 { take_signal(tgid, tid) } else { None };
    let ppid = read_field::<*const u8>(task, layout!(task_real_parent))
        .and_then(|parent| read_field::<u32>(parent, layout!(task_tgid)))
        .unwrap_or_else(|_| {
            failed = true;
            0
        });
    // The leader's name names the process; a worker thread may have renamed itself. Most
    // processes are one thread: the exiting task is then the leader, one read fewer.
    let leader = if tid == tgid { Ok(task) } else { read_field::<*const u8>(task, layout!(task_group_leader)) };
    let comm =
        leader.and_then(|leader| read_field::<[u8; COMM_LEN]>(leader, layout!(task_comm))).unwrap_or_else(|_| {
            failed = true;
            [0; COMM_LEN]
        });
    // mark_oom_victim() sets signal->oom_mm for the whole thread group.
    let oom_mm = read_field::<*const u8>(task, layout!(task_signal))
        .and_then(|sig| read_field::<u64>(sig, layout!(signal_oom_mm)))
        .unwrap_or(0);
    // The main process of a container is pid 1 in the container's own pid namespace.
    let ns_init = read_field::<*const u8>(task, layout!(task_thread_pid))
        .and_then(|pid| {
            let level = read_field::<u32>(pid, layout!(pid_level))?;
            if level == 0 || level > 32 || layout!(upid_size) == ABSENT || layout!(pid_numbers) == ABSENT {
                return Ok(false);
            }
            let nr_offset = layout!(pid_numbers) + level * layout!(upid_size);
            Ok(read_field::<u32>(pid, nr_offset)? == 1)
        })
        .unwrap_or(false);
    if failed {
        count(counter::READ_FAILED);
        warn!(ctx, "sched_process_exit: a task field could not be read for pid {}", tgid);
    }

    let mut flags = 0;
    if oom_mm != 0 {
        flags |= exit_flags::OOM_VICTIM;
    }
    if ns_init {
        flags |= exit_flags::NS_INIT;
    }
    let signal = match signal {
        Some(info) => {
            flags |= exit_flags::SIGNAL_KNOWN;
            info
        }
        None => SignalInfo::NONE,
    };
    let record = ExitRecord {
        header: Header {
            kind: kind::EXIT,
            _pad: 0,
            // SAFETY: a helper with no preconditions.
            boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        },
        // SAFETY: a helper with no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: tgid,
        ppid,
        tid,
        exit_status: exit_status as u32,
        comm,
        flags,
        _pad: 0,
        signal,
    };
    submit(record, kind::EXIT, record.header.boot_ns);
    Ok(0)
}

/// The last fatal signal for the process, from its leader or this thread, removed from the map.
/// A one-thread process is its own leader: one lookup, not two (each costs a hash and a walk
/// of the shared LRU map on every exit).
fn take_signal(tgid: u32, tid: u32) -> Option<SignalInfo> {
    let leader = take(tgid);
    if tid == tgid {
        return leader;
    }
    let thread = take(tid);
    leader.or(thread)
}

/// The signal remembered for `key`, removed.
#[inline(always)]
fn take(key: u32) -> Option<SignalInfo> {
    // SAFETY: the value is copied out before the entry is removed.
    let info = unsafe { SIGNALS.get(key) }.copied()?;
    let _ = SIGNALS.remove(key);
    Some(info)
}
