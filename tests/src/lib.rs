//! Harness for the privileged end-to-end tests: real probes in this kernel,
//! real cgroups, real processes. Every resource is an RAII guard, so a failed
//! assertion still removes what the test made.

#![expect(clippy::print_stderr, reason = "a test harness reports skips and cleanup failures on stderr")]

pub mod cgroup;
pub mod cgroupfs;
pub mod cluster;
pub mod collector;
pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod exposition;
pub mod hostile;
pub mod image;
pub mod kubelet;
pub mod memcg;
pub mod node;
pub mod webhook;

/// Whether privileged tests can run. Without root they are skipped on a
/// developer's machine, but in CI (`CI` set) that is a failure, never a skip.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    let missing = match (root, btf) {
        (true, true) => return true,
        (false, _) => "root (loading BPF programs and creating cgroups needs it)",
        (true, false) => "kernel BTF at /sys/kernel/btf/vmlinux",
    };
    assert!(std::env::var_os("CI").is_none(), "{test}: CI must run privileged tests, but this machine lacks {missing}");
    eprintln!("{test}: skipped: needs {missing}");
    false
}

/// Says that `test` asserted only what this kernel has: the feature is missing here (`why`),
/// and another CI step, on a kernel that has it, runs the rest.
pub fn not_on_this_kernel(test: &str, why: &str) {
    eprintln!("{test}: not run on this kernel: {why}");
}

/// Whether `sched_process_exit` says which exit ends the group (`group_dead`: 6.18 here, not 6.1
/// or 6.12). Without it the leader's exit stands for the process (README, "Lost on older kernels").
pub fn exit_tracepoint_has_group_dead() -> std::io::Result<bool> {
    let format = std::fs::read_to_string("/sys/kernel/tracing/events/sched/sched_process_exit/format")?;
    Ok(format.contains(" group_dead;"))
}

/// Forks `count` children that exit at once, one after another, and reaps each: host process
/// exits as fast as one core makes them, for load.
pub fn fork_exits(count: u64) -> std::io::Result<()> {
    for _ in 0..count {
        // SAFETY: the child calls only _exit, which is async-signal-safe.
        match unsafe { libc::fork() } {
            // SAFETY: _exit ends the child at once, touching nothing of the parent's state.
            0 => unsafe { libc::_exit(0) },
            // SAFETY: waits for the child just forked.
            pid if pid > 0 => unsafe {
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            },
            _ => return Err(std::io::Error::last_os_error()),
        }
    }
    Ok(())
}
