//! OOM kills: `out_of_memory` (fentry) knows which cgroup's limit was hit;
//! `oom/mark_victim` (tracepoint), which fires later in the same task, reports
//! the victim. The first leaves its findings for the second, which emits one
//! record. The victim's cgroup comes with its exit record.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{fentry, tracepoint},
    programs::{FEntryContext, TracePointContext},
};
use collector_common::{ABSENT, COMM_LEN, Header, OomRecord, OomScope, kind, oom_flags};

use crate::{OOM_SCOPES, cgroup_id, layout, read_field, submit, tp_data_loc, tp_field};

/// `bool out_of_memory(struct oom_control *oc)`: for a memcg OOM `oc->memcg` is set.
#[fentry(function = "out_of_memory")]
fn out_of_memory(ctx: FEntryContext) -> u32 {
    match try_out_of_memory(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_out_of_memory(ctx: &FEntryContext) -> Result<u32, u32> {
    let oc: *const u8 = ctx.arg(0);
    // Pointers from the function's arguments, offsets from BTF.
    // NULL for a node-wide OOM.
    let memcg = read_field::<*const u8>(oc, layout!(oom_control_memcg)).unwrap_or_default();
    let scope = if memcg.is_null() {
        OomScope { memcg_id: 0, limit_pages: 0 }
    } else {
        OomScope {
            memcg_id: read_field::<*const u8>(memcg, layout!(mem_cgroup_cgroup)).and_then(cgroup_id).unwrap_or(0),
            limit_pages: read_field::<u64>(memcg, layout!(mem_cgroup_max)).unwrap_or(0),
        }
    };
    // mark_victim fires in this same task; the thread id pairs them.
    let _ = OOM_SCOPES.insert(bpf_get_current_pid_tgid() as u32, scope, 0);
    Ok(0)
}

/// `oom/mark_victim`: the victim is chosen and about to be killed.
#[tracepoint]
fn mark_victim(ctx: TracePointContext) -> u32 {
    match try_mark_victim(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_mark_victim(ctx: &TracePointContext) -> Result<u32, u32> {
    let layout = layout!(victim);
    let victim_pid: u32 = tp_field(ctx, layout.pid).map_err(|_| 1u32)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let mut flags = 0;
    // SAFETY: the value is copied out before the entry is removed.
    let scope = match unsafe { OOM_SCOPES.get(tid) } {
        Some(scope) => {
            let scope = *scope;
            let _ = OOM_SCOPES.remove(tid);
            flags |= oom_flags::SCOPE_KNOWN;
            if scope.memcg_id != 0 {
                flags |= oom_flags::MEMCG;
            }
            scope
        }
        None => OomScope { memcg_id: 0, limit_pages: 0 },
    };
    let stats = layout.total_vm != ABSENT;
    if stats {
        flags |= oom_flags::STATS;
    }
    let kb = |offset| {
        if stats { tp_field::<u64, _>(ctx, offset).unwrap_or(0) } else { 0 }
    };
    let mut record = OomRecord {
        header: Header {
            kind: kind::OOM_KILL,
            _pad: 0,
            // SAFETY: a helper with no preconditions.
            boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        },
        victim_pid,
        flags,
        total_vm_kb: kb(layout.total_vm),
        anon_rss_kb: kb(layout.anon_rss),
        file_rss_kb: kb(layout.file_rss),
        shmem_rss_kb: kb(layout.shmem_rss),
        oom_score_adj: if stats { i32::from(tp_field::<i16, _>(ctx, layout.oom_score_adj).unwrap_or(0)) } else { 0 },
        // The task whose allocation hit the limit is the current one.
        trigger_pid: (pid_tgid >> 32) as u32,
        // SAFETY: a helper with no preconditions.
        trigger_cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        trigger_comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        victim_comm: [0; COMM_LEN],
        scope,
    };
    if layout.comm != ABSENT {
        let _ = tp_data_loc(ctx, layout.comm, &mut record.victim_comm);
    }
    submit(record, kind::OOM_KILL);
    Ok(0)
}
