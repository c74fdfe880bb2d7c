//! `cgroup/cgroup_mkdir`, `cgroup_rmdir` and `cgroup_attach_task` on the v2
//! hierarchy only: on hybrid hosts every v1 hierarchy fires them too.

use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, macros::tracepoint, programs::TracePointContext};
use collector_common::{ABSENT, CgroupLayout, CgroupRecord, counter, kind};

use crate::{EVENTS, count, layout, setting, tp_data_loc, tp_field, wakeup_flags};

/// A cgroup directory was created.
#[tracepoint]
fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let layout = layout!(mkdir);
    match emit(&ctx, &layout, kind::CGROUP_MKDIR) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// A cgroup directory was removed.
#[tracepoint]
fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    let layout = layout!(mkdir);
    match emit(&ctx, &layout, kind::CGROUP_RMDIR) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// A process was moved into a cgroup.
#[tracepoint]
fn cgroup_attach_task(ctx: TracePointContext) -> u32 {
    let layout = layout!(attach);
    match emit(&ctx, &layout, kind::CGROUP_ATTACH) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn emit(ctx: &TracePointContext, layout: &CgroupLayout, kind: u32) -> Result<u32, u32> {
    let root: i32 = tp_field(ctx, layout.root).map_err(|_| 1u32)?;
    if root as u32 != setting!(v2_hierarchy) {
        return Ok(0);
    }
    // Written in place: the record is larger than the BPF stack.
    let Some(mut entry) = EVENTS.reserve::<CgroupRecord>(0) else {
        count(counter::lost(kind));
        return Ok(0);
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to the reserved, writable ring buffer space of a
    // CgroupRecord; every field is written before submit.
    unsafe {
        (*record).header.kind = kind;
        (*record).header._pad = 0;
        (*record).header.boot_ns = bpf_ktime_get_boot_ns();
        (*record).cgroup_id = tp_field(ctx, layout.id).unwrap_or(0);
        (*record).level = tp_field::<i32, _>(ctx, layout.level).unwrap_or(0) as u32;
        (*record).pid = if layout.pid == ABSENT { 0 } else { tp_field(ctx, layout.pid).unwrap_or(0) };
        (*record)._pad = 0;
        (*record).comm = [0; 16];
        if layout.comm != ABSENT {
            let _ = tp_data_loc(ctx, layout.comm, &mut (*record).comm);
        }
        (*record).path_len = tp_data_loc(ctx, layout.path, &mut (*record).path).unwrap_or(0);
    }
    entry.submit(wakeup_flags());
    Ok(0)
}
