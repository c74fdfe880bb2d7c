//! `signal/signal_generate`: remembers the last signal that can end each
//! target, so its exit record can name the sender; optionally reports it.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use collector_common::{COMM_LEN, EXE_LEN, Header, SignalInfo, SignalRecord, kind};

use crate::{SETTINGS, SIGNALS, layout, read_field, submit, tp_field};

/// Fires for every signal generated; keeps only those that can end a process.
#[tracepoint]
fn signal_generate(ctx: TracePointContext) -> u32 {
    match try_signal_generate(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_signal_generate(ctx: &TracePointContext) -> Result<u32, u32> {
    let layout = layout!(signal);
    let settings = SETTINGS.load();
    let sig: u32 = tp_field(ctx, layout.sig).map_err(|_| 1u32)?;
    // SIGCHLD and friends are most of all signals and never end a process.
    if sig >= 64 || settings.fatal_signals & (1u64 << sig) == 0 {
        return Ok(0);
    }
    let info = SignalInfo {
        // SAFETY: a helper with no preconditions.
        sender_cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        sig,
        code: tp_field(ctx, layout.code).unwrap_or(0),
        sender_pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        target_pid: tp_field(ctx, layout.pid).map_err(|_| 1u32)?,
        group: tp_field(ctx, layout.group).unwrap_or(0),
        result: tp_field(ctx, layout.result).unwrap_or(0),
        sender_comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        target_comm: tp_field(ctx, layout.comm).unwrap_or([0; COMM_LEN]),
    };
    let _ = SIGNALS.insert(info.target_pid, info, 0);
    if settings.emit_signals != 0 {
        let record = SignalRecord {
            header: Header {
                kind: kind::SIGNAL,
                _pad: 0,
                // SAFETY: a helper with no preconditions.
                boot_ns: unsafe { bpf_ktime_get_boot_ns() },
            },
            info,
            sender_exe: sender_exe(),
        };
        submit(record, kind::SIGNAL, record.header.boot_ns);
    }
    Ok(0)
}

/// The file name of the current task's executable, NUL padded; empty for a
/// kernel thread or where this kernel's layout is unknown. Only fatal signals
/// get here, so the four reads cost nothing on the hot paths.
#[inline(always)]
fn sender_exe() -> [u8; EXE_LEN] {
    let mut exe = [0u8; EXE_LEN];
    // SAFETY: a helper with no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let name = read_field::<*const u8>(task, layout!(task_mm))
        .and_then(|mm| read_field::<*const u8>(mm, layout!(mm_exe_file)))
        .and_then(|file| read_field::<*const u8>(file, layout!(file_dentry)))
        .and_then(|dentry| read_field::<*const u8>(dentry, layout!(dentry_name)));
    if let Ok(name) = name
        && !name.is_null()
    {
        // SAFETY: the kernel's fault-handling string copy; a bad pointer is an error.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut exe) };
    }
    exe
}
