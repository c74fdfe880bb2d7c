//! `sched/sched_process_exit`: one record per process, not per thread.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_boot_ns,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use collector_common::{ABSENT, COMM_LEN, ExitRecord, Header, counter, kind};

use crate::{EVENTS, LAYOUT, count, filtered_out, read_field};

/// Fires once per exiting thread; emits a record only for the thread that ends its group.
#[tracepoint]
fn sched_process_exit(ctx: TracePointContext) -> u32 {
    match try_sched_process_exit(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sched_process_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let layout = LAYOUT.load();
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;

    if filtered_out() {
        return Ok(0);
    }
    // A thread storm must not reach user space: keep the exit that ends the group.
    if layout.exit_group_dead == ABSENT {
        // Older kernels do not say; the leader's exit stands for the group.
        if tid != tgid {
            return Ok(0);
        }
    } else {
        let ctx_ptr = ctx.as_ptr().cast::<u8>().cast_const();
        // SAFETY: the offset comes from this tracepoint's format file.
        let group_dead: u8 =
            unsafe { read_field(ctx_ptr, layout.exit_group_dead) }.map_err(|_| 1u32)?;
        if group_dead == 0 {
            return Ok(0);
        }
    }

    // SAFETY: a helper with no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mut failed = false;
    // SAFETY: `task` is the current task_struct; offsets come from the kernel's BTF.
    let exit_status: i32 =
        unsafe { read_field(task, layout.task_exit_code) }.unwrap_or_else(|_| {
            failed = true;
            0
        });
    // SAFETY: as above; real_parent is never null for a task that is exiting.
    let ppid = unsafe { read_field::<*const u8>(task, layout.task_real_parent) }
        .and_then(|parent| unsafe { read_field::<u32>(parent, layout.task_tgid) })
        .unwrap_or_else(|_| {
            failed = true;
            0
        });
    // The leader's name names the process; a worker thread may have renamed itself.
    // SAFETY: as above.
    let comm = unsafe { read_field::<*const u8>(task, layout.task_group_leader) }
        .and_then(|leader| unsafe { read_field::<[u8; COMM_LEN]>(leader, layout.task_comm) })
        .unwrap_or_else(|_| {
            failed = true;
            [0; COMM_LEN]
        });
    if failed {
        count(counter::READ_FAILED);
        warn!(
            ctx,
            "sched_process_exit: a task field could not be read for pid {}", tgid
        );
    }

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
    };
    match EVENTS.reserve::<ExitRecord>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(0);
        }
        None => count(counter::RING_FULL),
    }
    Ok(0)
}
