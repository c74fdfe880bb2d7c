//! Node-health kernel records to records: names for devices, errors and severities, the hung
//! task's pod, and the node-problem rule a kernel log line matches.

use collector_common::{HealthRecord, TEXT_CAP, kind};

use super::RecordResolver;
use crate::{
    escape::{c_str, escape_bytes},
    record::{FsError, HungTask, HwError, IoError, KernelLog, Record},
};

impl RecordResolver {
    /// The record a node-health report becomes; none for a kind this build does not know.
    pub(super) fn health(&mut self, health: &HealthRecord) -> Option<Record> {
        let time = self.clock.wall(health.header.boot_ns);
        let comm = escape_bytes(c_str(&health.comm));
        Some(match health.header.kind {
            kind::HUNG_TASK => {
                let (cgroup_path, identity) = self.place(health.cgroup_id);
                Record::HungTask(HungTask {
                    time,
                    pid: health.pid,
                    tid: health.tid,
                    comm,
                    cgroup_id: health.cgroup_id,
                    cgroup_path,
                    timeout_secs: hung_task_timeout(),
                    identity,
                })
            }
            kind::KERNEL_LOG => {
                let text = c_str(&health.text);
                let text = text.strip_suffix(b"\n").unwrap_or(text);
                let line = escape_bytes(text);
                let rule = self.kernel_log.classify(&line);
                Record::KernelLog(KernelLog {
                    time,
                    truncated: health.text_len as usize >= TEXT_CAP,
                    line,
                    pid: health.pid,
                    comm,
                    reason: rule.map(|rule| rule.reason.to_owned()),
                    condition: rule.and_then(|rule| rule.condition).map(str::to_owned),
                    identity: crate::record::Identity::default(),
                })
            }
            kind::FS_ERROR => {
                let (cgroup_path, identity) = self.place(health.cgroup_id);
                Record::FsError(FsError {
                    time,
                    device: device_name(health.dev),
                    filesystem: "ext4".to_owned(),
                    function: escape_bytes(c_str(&health.text)),
                    line: u32::try_from(health.value).unwrap_or(u32::MAX),
                    pid: health.pid,
                    comm,
                    cgroup_path,
                    identity,
                })
            }
            kind::IO_ERROR => Record::IoError(IoError {
                time,
                device: device_name(health.dev),
                sector: health.value,
                error: errno_name(health.code),
                rwbs: escape_bytes(c_str(&health.detail)),
                identity: crate::record::Identity::default(),
            }),
            kind::HW_ERROR => Record::HwError(HwError {
                time,
                severity: hw_severity(health.code).to_owned(),
                count: health.value,
                message: escape_bytes(c_str(&health.text)),
                label: escape_bytes(c_str(&health.detail)),
                identity: crate::record::Identity::default(),
            }),
            _ => return None,
        })
    }
}

/// `kernel.hung_task_timeout_secs` now; none where the kernel has no hung-task detector.
fn hung_task_timeout() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/hung_task_timeout_secs").ok()?.trim().parse().ok()
}

/// A block device by its kernel name (`/sys/dev/block/M:m` links to it), else `M:m`. The kernel
/// encodes `dev_t` as `major << 20 | minor` in tracepoints.
pub fn device_name(dev: u32) -> String {
    let (major, minor) = (dev >> 20, dev & ((1 << 20) - 1));
    let number = format!("{major}:{minor}");
    std::fs::read_link(format!("/sys/dev/block/{number}"))
        .ok()
        .and_then(|target| target.file_name().map(|name| escape_bytes(name.as_encoded_bytes())))
        .unwrap_or(number)
}

/// The name of a negative errno as block completions report it (`blk_status_to_errno`).
pub fn errno_name(code: i32) -> String {
    let name = match -code {
        libc::EIO => "EIO",
        libc::ENOSPC => "ENOSPC",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENOLINK => "ENOLINK",
        libc::EREMOTEIO => "EREMOTEIO",
        libc::EBADE => "EBADE",
        libc::ENODATA => "ENODATA",
        libc::EILSEQ => "EILSEQ",
        libc::ENOMEM => "ENOMEM",
        libc::EAGAIN => "EAGAIN",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENXIO => "ENXIO",
        libc::EBUSY => "EBUSY",
        libc::EPROTO => "EPROTO",
        libc::ENODEV => "ENODEV",
        _ => return format!("errno {code}"),
    };
    name.to_owned()
}

/// `enum hw_event_mc_err_type`, as `ras/mc_event` reports it.
pub const fn hw_severity(code: i32) -> &'static str {
    match code {
        0 => "corrected",
        1 => "uncorrected",
        2 => "deferred",
        3 => "fatal",
        _ => "info",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_errors_and_severities_as_the_kernel_does() {
        assert_eq!(errno_name(-5), "EIO");
        assert_eq!(errno_name(-110), "ETIMEDOUT");
        assert_eq!(errno_name(-4095), "errno -4095");
        assert_eq!(hw_severity(0), "corrected");
        assert_eq!(hw_severity(3), "fatal");
        assert_eq!(hw_severity(4), "info");
    }

    #[test]
    fn a_device_without_a_sysfs_entry_is_named_by_its_numbers() {
        // 4095:1048575 is no device on any machine.
        assert_eq!(device_name((4095 << 20) | 1_048_575), "4095:1048575");
    }
}
