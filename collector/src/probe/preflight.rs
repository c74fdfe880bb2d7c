//! Checks made before loading, so that a missing privilege or kernel feature
//! is reported as one line that says how to fix it, not as a verifier dump.

use std::path::Path;

use thiserror::Error;

use super::btf::VMLINUX_BTF;

/// Stands in for [`CAP_BPF`] and [`CAP_PERFMON`], which split it in kernel 5.8.
pub const CAP_SYS_ADMIN: u32 = 21;
/// Needed to open perf events (tracepoint attachment) and read kernel memory from BPF.
pub const CAP_PERFMON: u32 = 38;
/// Needed to create BPF maps and load BPF programs.
pub const CAP_BPF: u32 = 39;

/// What the environment lacks.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PreflightError {
    /// The process may not load BPF programs.
    #[error("not permitted to load BPF programs: run as root, or grant CAP_BPF and CAP_PERFMON")]
    NotPermitted,
    /// The kernel does not publish BTF.
    #[error(
        "the kernel has no BTF ({VMLINUX_BTF} is missing): a kernel 5.8+ built with CONFIG_DEBUG_INFO_BTF=y is needed"
    )]
    NoBtf,
}

/// Checks privileges and BTF.
pub fn check() -> Result<(), PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !may_load_bpf(effective_caps(&status).unwrap_or(0)) {
        return Err(PreflightError::NotPermitted);
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

/// The `CapEff` mask of a `/proc/PID/status` text; `None` if it has none that parses.
pub fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Tracepoints with BPF need CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN on kernels before 5.8.
fn may_load_bpf(caps: u64) -> bool {
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_capability_mask() {
        let status = "Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t000000c000000000\n";
        assert_eq!(effective_caps(status), Some(0xc0_0000_0000));
        assert_eq!(effective_caps("Name:\tx\n"), None);
        assert_eq!(effective_caps("CapEff:\tnot-hex\n"), None);
    }

    #[test]
    fn needs_bpf_and_perfmon_or_sys_admin() {
        assert!(may_load_bpf((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(may_load_bpf(1 << CAP_SYS_ADMIN));
        assert!(!may_load_bpf(1 << CAP_BPF));
        assert!(!may_load_bpf(1 << CAP_PERFMON));
        assert!(!may_load_bpf(0));
    }
}
