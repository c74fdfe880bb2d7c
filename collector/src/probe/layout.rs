//! The offsets of this kernel that the programs read at, from its BTF and
//! its tracepoint format files.

use collector_common::{ABSENT, CgroupLayout, HealthLayout, Layout, VictimLayout};

use super::{
    ProbeError,
    btf::Btf,
    tracefs::{Format, Tracefs},
};

/// Reads every offset the kernel programs need.
pub fn kernel_layout(btf: &Btf, tracefs: &Tracefs) -> Result<Layout, ProbeError> {
    let task = |member| btf.member_offset("task_struct", member);
    let exit = tracefs.format("sched", "sched_process_exit")?;
    let victim = tracefs.format("oom", "mark_victim")?;
    let mkdir = tracefs.format("cgroup", "cgroup_mkdir")?;
    let attach = tracefs.format("cgroup", "cgroup_attach_task")?;
    // Only the OOM scope needs these; a kernel without them still traces exits.
    let optional = |strukt: &str, member: &str| btf.member_offset(strukt, member).unwrap_or(ABSENT);
    let nested = |outer: [&str; 2], inner: [&str; 2]| {
        let (a, b) = (optional(outer[0], outer[1]), optional(inner[0], inner[1]));
        if a == ABSENT || b == ABSENT { ABSENT } else { a + b }
    };
    Ok(Layout {
        task_tgid: task("tgid")?,
        task_real_parent: task("real_parent")?,
        task_group_leader: task("group_leader")?,
        task_exit_code: task("exit_code")?,
        task_comm: task("comm")?,
        exit_group_dead: offset(&exit, "group_dead"),
        task_signal: task("signal")?,
        signal_oom_mm: optional("signal_struct", "oom_mm"),
        cgroup_kn: btf.member_offset("cgroup", "kn")?,
        kernfs_node_id: btf.member_offset("kernfs_node", "id")?,
        oom_control_memcg: optional("oom_control", "memcg"),
        mem_cgroup_cgroup: nested(["mem_cgroup", "css"], ["cgroup_subsys_state", "cgroup"]),
        mem_cgroup_max: nested(["mem_cgroup", "memory"], ["page_counter", "max"]),
        task_thread_pid: optional("task_struct", "thread_pid"),
        pid_level: optional("pid", "level"),
        pid_numbers: optional("pid", "numbers"),
        // struct upid { int nr; struct pid_namespace *ns; }: ns is its last member, a pointer.
        upid_size: match optional("upid", "ns") {
            ABSENT => ABSENT,
            ns => ns + 8,
        },
        // Only the signal probe's sender executable needs these: without them it stays empty.
        task_mm: optional("task_struct", "mm"),
        mm_exe_file: optional("mm_struct", "exe_file"),
        file_dentry: nested(["file", "f_path"], ["path", "dentry"]),
        dentry_name: nested(["dentry", "d_name"], ["qstr", "name"]),
        victim: VictimLayout {
            pid: required(&victim, "oom/mark_victim", "pid")?,
            comm: offset(&victim, "comm"),
            total_vm: offset(&victim, "total_vm"),
            anon_rss: offset(&victim, "anon_rss"),
            file_rss: offset(&victim, "file_rss"),
            shmem_rss: offset(&victim, "shmem_rss"),
            oom_score_adj: offset(&victim, "oom_score_adj"),
            _pad: 0,
        },
        // The signal probe reads its target's pid, name and start time, and the siginfo's code.
        task_start_time: task("start_time")?,
        siginfo_code: optional("kernel_siginfo", "si_code"),
        mkdir: CgroupLayout {
            root: required(&mkdir, "cgroup/cgroup_mkdir", "root")?,
            level: offset(&mkdir, "level"),
            id: required(&mkdir, "cgroup/cgroup_mkdir", "id")?,
            path: required(&mkdir, "cgroup/cgroup_mkdir", "path")?,
            pid: ABSENT,
            comm: ABSENT,
        },
        attach: CgroupLayout {
            root: required(&attach, "cgroup/cgroup_attach_task", "dst_root")?,
            level: offset(&attach, "dst_level"),
            id: required(&attach, "cgroup/cgroup_attach_task", "dst_id")?,
            path: required(&attach, "cgroup/cgroup_attach_task", "dst_path")?,
            pid: offset(&attach, "pid"),
            comm: offset(&attach, "comm"),
        },
        task_pid: task("pid")?,
        // Only the hung-task probe needs these: without them its records have no cgroup.
        task_cgroups: optional("task_struct", "cgroups"),
        css_set_dfl_cgrp: optional("css_set", "dfl_cgrp"),
        task_btf: u32::from(plain_task_loads(btf)),
        health: health_layout(tracefs),
    })
}

/// Whether the exit probe can read task fields by plain loads: the kernel has
/// `bpf_get_current_task_btf` (5.11 and later), whose pointer the verifier checks against BTF.
pub fn plain_task_loads(btf: &Btf) -> bool {
    btf.has_enumerator("bpf_func_id", "BPF_FUNC_get_current_task_btf")
}

/// The node-health tracepoints' fields; a tracepoint this kernel lacks leaves its offsets
/// absent, and its probe is not attached.
fn health_layout(tracefs: &Tracefs) -> HealthLayout {
    let format = |category, name| tracefs.format(category, name).unwrap_or_default();
    let (console, ext4, block, mc, mce) = (
        format("printk", "console"),
        format("ext4", "ext4_error"),
        format("block", "block_rq_error"),
        format("ras", "mc_event"),
        format("mce", "mce_record"),
    );
    HealthLayout {
        console_msg: offset(&console, "msg"),
        ext4_dev: offset(&ext4, "dev"),
        ext4_function: offset(&ext4, "function"),
        ext4_line: offset(&ext4, "line"),
        block_dev: offset(&block, "dev"),
        block_sector: offset(&block, "sector"),
        block_error: offset(&block, "error"),
        block_rwbs: offset(&block, "rwbs"),
        mc_error_type: offset(&mc, "error_type"),
        mc_msg: offset(&mc, "msg"),
        mc_label: offset(&mc, "label"),
        mc_error_count: offset(&mc, "error_count"),
        mce_status: offset(&mce, "status"),
        mce_addr: offset(&mce, "addr"),
        mce_bank: offset(&mce, "bank"),
        mce_cpu: offset(&mce, "cpu"),
    }
}

fn offset(format: &Format, field: &str) -> u32 {
    format.field(field).map_or(ABSENT, |f| f.offset)
}

fn required(format: &Format, tracepoint: &'static str, field: &'static str) -> Result<u32, ProbeError> {
    format.field(field).map(|f| f.offset).ok_or(ProbeError::MissingField { tracepoint, field })
}
