//! `signal/signal_generate`: remembers the last signal that can end each
//! target, so its exit record can name the sender; optionally reports it.
//!
//! Attached raw, like the exit probe: every process exit sends its parent a `SIGCHLD`, so this
//! runs once per exit too, and a classic tracepoint would first have the kernel build a record
//! (the target's name copied, the siginfo read) for a program that drops the signal at once.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes,
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use collector_common::{COMM_LEN, EXE_LEN, Header, SignalInfo, SignalRecord, kind};

use crate::{Pending, SIGNALS, layout, read_field, setting, submit};

/// `SEND_SIG_NOINFO`: no siginfo, sent as if from user space; the tracepoint says `SI_USER` (0).
const SEND_SIG_NOINFO: u64 = 0;
/// `SEND_SIG_PRIV`: no siginfo, sent by the kernel; the tracepoint says `SI_KERNEL`.
const SEND_SIG_PRIV: u64 = 1;
/// `SI_KERNEL`.
const SI_KERNEL: i32 = 0x80;

/// Fires for every signal generated; keeps only those that can end a process.
/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)`.
#[raw_tracepoint(tracepoint = "signal_generate")]
fn signal_generate(ctx: RawTracePointContext) -> u32 {
    match try_signal_generate(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_signal_generate(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let sig = ctx.arg::<u64>(0) as u32;
    // SIGCHLD and friends are most of all signals and never end a process.
    if sig >= 64 || setting!(fatal_signals) & (1u64 << sig) == 0 {
        return Ok(0);
    }
    let siginfo = ctx.arg::<u64>(1);
    let target = ctx.arg::<u64>(2) as *const u8;
    let info = SignalInfo {
        // SAFETY: a helper with no preconditions.
        sender_cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        sig,
        code: match siginfo {
            SEND_SIG_NOINFO => 0,
            SEND_SIG_PRIV => SI_KERNEL,
            info => read_field(info as *const u8, layout!(siginfo_code)).unwrap_or(0),
        },
        sender_pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        target_pid: read_field(target, layout!(task_pid)).map_err(|_| 1u32)?,
        group: ctx.arg::<u64>(3) as u32,
        result: ctx.arg::<u64>(4) as u32,
        sender_comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        target_comm: read_field(target, layout!(task_comm)).unwrap_or([0; COMM_LEN]),
    };
    // The target's start time tells its exit from that of a later task given the same pid.
    let target_start_ns = read_field(target, layout!(task_start_time)).unwrap_or(0);
    let _ = SIGNALS.insert(info.target_pid, Pending { info, target_start_ns }, 0);
    if setting!(emit_signals) != 0 {
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
        submit(record, kind::SIGNAL);
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
