//! Node-health kernel records to records: names for devices, errors and severities, the hung
//! task's pod, and the node-problem rule a kernel log line matches.

use collector_common::{HealthRecord, TEXT_CAP, hw_source, kind};

use super::RecordResolver;
use crate::{
    escape::{c_str, escape_bytes},
    record::{FsError, HungTask, HwError, HwSource, IoError, KernelLog, Record},
};

impl RecordResolver {
    /// The record a node-health report becomes; none for a kind this build does not know.
    pub(super) fn health(&mut self, health: &HealthRecord) -> Option<Record> {
        let time = self.clock.wall(health.header.boot_ns);
        let comm = escape_bytes(c_str(&health.comm));
        Some(match health.header.kind {
            kind::HUNG_TASK => {
                let (cgroup_path, identity) = self.place(health.cgroup_id);
                Record::HungTask(Box::new(HungTask {
                    time,
                    pid: health.pid,
                    tid: health.tid,
                    comm,
                    cgroup_id: health.cgroup_id,
                    cgroup_path,
                    timeout_secs: hung_task_timeout(),
                    identity,
                }))
            }
            kind::KERNEL_LOG => {
                let text = c_str(&health.text);
                let text = text.strip_suffix(b"\n").unwrap_or(text);
                let line = escape_bytes(text);
                let rule = self.kernel_log.classify(&line);
                Record::KernelLog(Box::new(KernelLog {
                    time,
                    truncated: health.text_len as usize >= TEXT_CAP,
                    line,
                    pid: health.pid,
                    comm,
                    reason: rule.map(|rule| rule.reason.to_owned()),
                    condition: rule.and_then(|rule| rule.condition).map(str::to_owned),
                    identity: crate::record::Identity::default(),
                }))
            }
            kind::FS_ERROR => {
                let (cgroup_path, identity) = self.place(health.cgroup_id);
                Record::FsError(Box::new(FsError {
                    time,
                    device: device_name(health.dev),
                    filesystem: "ext4".to_owned(),
                    function: escape_bytes(c_str(&health.text)),
                    line: u32::try_from(health.value).unwrap_or(u32::MAX),
                    pid: health.pid,
                    comm,
                    cgroup_path,
                    identity,
                }))
            }
            kind::IO_ERROR => Record::IoError(Box::new(IoError {
                time,
                device: device_name(health.dev),
                sector: health.value,
                error: errno_name(health.code),
                rwbs: escape_bytes(c_str(&health.detail)),
                identity: crate::record::Identity::default(),
            })),
            kind::HW_ERROR if health.source == hw_source::MCE => Record::HwError(Box::new(HwError {
                time,
                source: HwSource::MachineCheck,
                severity: mce_severity(health.value).to_owned(),
                count: 1,
                message: machine_check(health.dev, health.code, health.value, health.address),
                label: String::new(),
                identity: crate::record::Identity::default(),
            })),
            kind::HW_ERROR => Record::HwError(Box::new(HwError {
                time,
                source: HwSource::MemoryController,
                severity: hw_severity(health.code).to_owned(),
                count: health.value,
                message: escape_bytes(c_str(&health.text)),
                label: escape_bytes(c_str(&health.detail)),
                identity: crate::record::Identity::default(),
            })),
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

/// `MCi_STATUS` bits (Intel SDM vol. 3B, 16.3.2.2; AMD's are the same).
const MCI_STATUS_UC: u64 = 1 << 61;
const MCI_STATUS_ADDRV: u64 = 1 << 58;
const MCI_STATUS_PCC: u64 = 1 << 57;

/// A machine check's severity from its status: processor context corrupt is fatal (the kernel
/// panics on it when the CPU raised it), uncorrected is uncorrected, the rest was corrected.
const fn mce_severity(status: u64) -> &'static str {
    if status & MCI_STATUS_PCC != 0 {
        "fatal"
    } else if status & MCI_STATUS_UC != 0 {
        "uncorrected"
    } else {
        "corrected"
    }
}

/// Where a machine check was logged and its registers; the address only where the status says
/// it is valid. The raw status is what `mcelog`, `rasdaemon` and vendor tools decode.
fn machine_check(cpu: u32, bank: i32, status: u64, address: u64) -> String {
    let mut text = format!("CPU {cpu} bank {bank}, MCi_STATUS 0x{status:016x}");
    if status & MCI_STATUS_ADDRV != 0 {
        text.push_str(&format!(", MCi_ADDR 0x{address:x}"));
    }
    text
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
    fn machine_checks_are_graded_and_located_from_their_status() {
        // Valid, enabled, address valid: corrected, as the kernel's CMCI reports it.
        assert_eq!(mce_severity(0x9400_0000_0000_0090), "corrected");
        assert_eq!(
            machine_check(1, 4, 0x9400_0000_0000_0090, 0x1234_5000),
            "CPU 1 bank 4, MCi_STATUS 0x9400000000000090, MCi_ADDR 0x12345000"
        );
        // Uncorrected, no address: the address register is not shown.
        assert_eq!(mce_severity(0xb000_0000_0000_0150), "uncorrected");
        assert_eq!(machine_check(0, 2, 0xb000_0000_0000_0150, 0xdead), "CPU 0 bank 2, MCi_STATUS 0xb000000000000150");
        // Processor context corrupt: fatal whatever else is set.
        assert_eq!(mce_severity(0xb200_0000_0000_0150), "fatal");
    }

    #[test]
    fn a_device_without_a_sysfs_entry_is_named_by_its_numbers() {
        // 4095:1048575 is no device on any machine.
        assert_eq!(device_name((4095 << 20) | 1_048_575), "4095:1048575");
    }
}
