//! Node-health events: hung tasks, kernel problems, filesystem, block and memory errors, and
//! containers stalling on memory, CPU or I/O.
//!
//! | what happened                                           | reason          | type    | object      |
//! |---------------------------------------------------------|-----------------|---------|-------------|
//! | the hung-task detector reported a task (`hung_task`)    | TaskHung        | Warning | Pod, else Node |
//! | a kernel log line matched a node-problem rule           | the rule's      | Warning | Node        |
//! | ext4 reported an error (`fs_error`)                     | FilesystemError | Warning | Node, and the Pod that met it |
//! | a block request failed (`io_error`)                     | IOError         | Warning | Node        |
//! | a memory controller or a machine check (`hw_error`)     | HardwareError   | Warning | Node        |
//! | a container stalled on memory beyond the threshold      | MemoryPressure  | Warning | Pod         |
//! | ... on CPU, on I/O (when `pressure_resources` asks)     | CPUPressure, IOPressure | Warning | Pod |
//!
//! A kernel log rule whose problem a probe reports better gives no event while that probe is
//! attached ([`EventOptions::probed_reasons`]): the hung-task probe names the pod, the kernel's
//! own "blocked for more than" line does not. A pressure record that says the stall cleared gives
//! no event: the record is in the journal and the stream, and the next episode gives a new event.

use super::{EventOptions, message, pod_reference};
use crate::{
    record::{FsError, HungTask, HwError, IoError, KernelLog, Pressure, PressureResource, PressureState},
    recorder::{EventSpec, EventType, ObjectReference},
};

use message::Container;

/// Reason of a task the hung-task detector reported, on its Pod or the Node.
pub const REASON_TASK_HUNG: &str = "TaskHung";
/// Reason of a filesystem error, on the Node and the Pod whose process met it.
pub const REASON_FILESYSTEM_ERROR: &str = "FilesystemError";
/// Reason of a failed block request, on the Node (NPD's spelling).
pub const REASON_IO_ERROR: &str = "IOError";
/// Reason of a memory controller's hardware error, on the Node.
pub const REASON_HARDWARE_ERROR: &str = "HardwareError";
/// Reason of a container stalling on memory, on the Pod.
pub const REASON_MEMORY_PRESSURE: &str = "MemoryPressure";
/// A container stalled on CPU.
pub const REASON_CPU_PRESSURE: &str = "CPUPressure";
/// A container stalled on block I/O.
pub const REASON_IO_PRESSURE: &str = "IOPressure";

pub(super) fn hung_task(hung: &HungTask, options: &EventOptions) -> Vec<EventSpec> {
    if let Some(pod) = pod_reference(&hung.identity) {
        let text = hung.describe(&format!(" of {}", Container::of(&hung.identity).noun()));
        return vec![EventSpec::new(pod, EventType::Warning, REASON_TASK_HUNG, message::finish(text))];
    }
    node(options, REASON_TASK_HUNG, hung.describe(""))
}

pub(super) fn kernel_log(log: &KernelLog, options: &EventOptions) -> Vec<EventSpec> {
    let Some(reason) = &log.reason else { return Vec::new() };
    if options.probed_reasons.iter().any(|probed| probed == reason) {
        return Vec::new();
    }
    node(options, reason, log.line.clone())
}

pub(super) fn fs_error(error: &FsError, options: &EventOptions) -> Vec<EventSpec> {
    let what = format!(
        "{} error on {} in {} (line {}), met by process {} ({})",
        error.filesystem, error.device, error.function, error.line, error.pid, error.comm
    );
    let mut events = node(options, REASON_FILESYSTEM_ERROR, what.clone());
    if let Some(pod) = pod_reference(&error.identity) {
        let container = Container::of(&error.identity);
        let text = format!("{what} of {}", container.noun());
        events.push(EventSpec::new(pod, EventType::Warning, REASON_FILESYSTEM_ERROR, message::finish(text)));
    }
    events
}

pub(super) fn io_error(error: &IoError, options: &EventOptions) -> Vec<EventSpec> {
    let text = format!(
        "I/O error on {}: {} on a {} request at sector {}",
        error.device, error.error, error.rwbs, error.sector
    );
    node(options, REASON_IO_ERROR, text)
}

pub(super) fn hw_error(error: &HwError, options: &EventOptions) -> Vec<EventSpec> {
    let plural = if error.count == 1 { "" } else { "s" };
    let location = if error.label.is_empty() { String::new() } else { format!(" on {}", error.label) };
    let text =
        format!("{} {} {}{plural}{location}: {}", error.count, error.severity, error.source.noun(), error.message);
    node(options, REASON_HARDWARE_ERROR, text)
}

pub(super) fn pressure(pressure: &Pressure) -> Vec<EventSpec> {
    if pressure.state != PressureState::Stalled {
        return Vec::new();
    }
    let Some(pod) = pod_reference(&pressure.identity) else { return Vec::new() };
    let container = Container::of(&pressure.identity);
    let mut text = format!(
        "{} stalled on {} {}% of the last {} s",
        container.subject(),
        pressure.resource.noun(),
        pressure.percent(),
        message::seconds_of_ms(pressure.window_ms)
    );
    if let Some(limit) = pressure.memory_limit_bytes {
        text.push_str(&format!("; limit {}", message::quantity(limit)));
    }
    if let Some(usage) = pressure.memory_usage_bytes {
        text.push_str(&format!(", usage {}", mebibytes(usage)));
    }
    if let Some(millicores) = pressure.cpu_limit_millicores {
        text.push_str(&format!("; limit {}", cpu_quantity(millicores)));
    }
    let reason = match pressure.resource {
        PressureResource::Memory => REASON_MEMORY_PRESSURE,
        PressureResource::Cpu => REASON_CPU_PRESSURE,
        PressureResource::Io => REASON_IO_PRESSURE,
    };
    vec![EventSpec::new(pod, EventType::Warning, reason, message::finish(text))]
}

/// Millicores as a pod spec writes them: `2` for whole CPUs, else `500m`.
fn cpu_quantity(millicores: u64) -> String {
    if millicores.is_multiple_of(1000) { (millicores / 1000).to_string() } else { format!("{millicores}m") }
}

/// Bytes as mebibytes to one decimal (`63.1Mi`): a usage is never a round number.
fn mebibytes(bytes: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "a usage to one decimal")]
    let mib = bytes as f64 / f64::from(1u32 << 20);
    format!("{mib:.1}Mi")
}

/// A Warning on this node; none without a node name.
fn node(options: &EventOptions, reason: &str, text: String) -> Vec<EventSpec> {
    if options.node_name.is_empty() {
        return Vec::new();
    }
    vec![EventSpec::new(ObjectReference::node(&options.node_name), EventType::Warning, reason, message::finish(text))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::Timestamp, events::events_for, record::HwSource, record::Identity, record::Record};

    fn options() -> EventOptions {
        EventOptions { node_name: "node-1".to_owned(), probed_reasons: Vec::new() }
    }

    fn in_pod() -> Identity {
        Identity {
            container_id: Some("c".repeat(64)),
            pod_uid: Some("0b5c0c5e-2d6f-4e57-8b4e-6c1d2f3a4b5c".to_owned()),
            pod_name: Some("pg-0".to_owned()),
            namespace: Some("db".to_owned()),
            container_name: Some("postgres".to_owned()),
            ..Identity::default()
        }
    }

    fn hung(identity: Identity) -> Record {
        Record::HungTask(Box::new(HungTask {
            time: Timestamp(0),
            pid: 4242,
            tid: 4243,
            comm: "postgres".to_owned(),
            cgroup_id: 1,
            cgroup_path: None,
            timeout_secs: Some(120),
            identity,
        }))
    }

    fn one(record: &Record, options: &EventOptions) -> (String, String, String, EventType, String) {
        let events = events_for(record, options);
        assert_eq!(events.len(), 1, "{events:?}");
        let event = &events[0];
        (
            event.involved_object.kind.clone(),
            event.involved_object.name.clone(),
            event.reason.clone(),
            event.event_type,
            event.message.clone(),
        )
    }

    #[test]
    fn a_hung_task_of_a_pod_is_on_the_pod_else_on_the_node() {
        let (kind, name, reason, event_type, text) = one(&hung(in_pod()), &options());
        assert_eq!(
            (kind.as_str(), name.as_str(), reason.as_str(), event_type),
            ("Pod", "pg-0", "TaskHung", EventType::Warning)
        );
        assert_eq!(text, "Process 4242 (postgres) of container postgres blocked for more than 120 s");
        let (kind, name, _, _, text) = one(&hung(Identity::default()), &options());
        assert_eq!((kind.as_str(), name.as_str()), ("Node", "node-1"));
        assert_eq!(text, "Process 4242 (postgres) blocked for more than 120 s");
    }

    fn log(line: &str, reason: Option<&str>) -> Record {
        Record::KernelLog(Box::new(KernelLog {
            time: Timestamp(0),
            line: line.to_owned(),
            truncated: false,
            pid: 1,
            comm: "swapper/0".to_owned(),
            reason: reason.map(str::to_owned),
            condition: None,
            identity: Identity::default(),
        }))
    }

    #[test]
    fn a_matched_kernel_line_is_a_node_warning_unless_a_probe_says_it_better() {
        let line = "BUG: soft lockup - CPU#1 stuck for 23s! [test:123]";
        let (kind, _, reason, _, text) = one(&log(line, Some("SoftLockup")), &options());
        assert_eq!((kind.as_str(), reason.as_str(), text.as_str()), ("Node", "SoftLockup", line));
        assert!(events_for(&log("e1000: eth0 NIC Link is Up", None), &options()).is_empty());
        let probed = EventOptions { probed_reasons: vec!["TaskHung".to_owned()], ..options() };
        let hung_line = "INFO: task dd:42 blocked for more than 2 seconds.";
        assert!(events_for(&log(hung_line, Some("TaskHung")), &probed).is_empty());
        assert_eq!(events_for(&log(hung_line, Some("TaskHung")), &options()).len(), 1);
    }

    #[test]
    fn errors_say_device_and_cause() {
        let io = Record::IoError(Box::new(IoError {
            time: Timestamp(0),
            device: "sdb".to_owned(),
            sector: 2048,
            error: "EIO".to_owned(),
            rwbs: "W".to_owned(),
            identity: Identity::default(),
        }));
        assert_eq!(one(&io, &options()).4, "I/O error on sdb: EIO on a W request at sector 2048");
        let hw = Record::HwError(Box::new(HwError {
            time: Timestamp(0),
            source: HwSource::MemoryController,
            severity: "corrected".to_owned(),
            count: 2,
            message: "memory read error".to_owned(),
            label: "DIMM_A1".to_owned(),
            identity: Identity::default(),
        }));
        assert_eq!(one(&hw, &options()).4, "2 corrected memory errors on DIMM_A1: memory read error");
        let mce = Record::HwError(Box::new(HwError {
            time: Timestamp(0),
            source: HwSource::MachineCheck,
            severity: "uncorrected".to_owned(),
            count: 1,
            message: "CPU 0 bank 2, MCi_STATUS 0xb000000000000150".to_owned(),
            label: String::new(),
            identity: Identity::default(),
        }));
        let (kind, _, reason, event_type, message) = one(&mce, &options());
        assert_eq!(
            (kind.as_str(), reason.as_str(), event_type, message.as_str()),
            (
                "Node",
                "HardwareError",
                EventType::Warning,
                "1 uncorrected machine check: CPU 0 bank 2, MCi_STATUS 0xb000000000000150"
            )
        );
        let fs = Record::FsError(Box::new(FsError {
            time: Timestamp(0),
            device: "loop3".to_owned(),
            filesystem: "ext4".to_owned(),
            function: "ext4_lookup".to_owned(),
            line: 1855,
            pid: 42,
            comm: "ls".to_owned(),
            cgroup_path: None,
            identity: in_pod(),
        }));
        let events = events_for(&fs, &options());
        let said: Vec<(&str, &str)> =
            events.iter().map(|e| (e.involved_object.kind.as_str(), e.message.as_str())).collect();
        assert_eq!(
            said,
            [
                ("Node", "ext4 error on loop3 in ext4_lookup (line 1855), met by process 42 (ls)"),
                ("Pod", "ext4 error on loop3 in ext4_lookup (line 1855), met by process 42 (ls) of container postgres"),
            ]
        );
    }

    #[test]
    fn memory_pressure_names_the_share_the_window_the_limit_and_the_usage() {
        let stalled = Pressure {
            time: Timestamp(0),
            resource: PressureResource::Memory,
            state: PressureState::Stalled,
            stalled_us: 2_300_000,
            window_ms: 10_000,
            cgroup_path: "/kubepods/pod/c".to_owned(),
            memory_limit_bytes: Some(64 << 20),
            memory_usage_bytes: Some(66_165_555),
            cpu_limit_millicores: None,
            identity: in_pod(),
        };
        let (kind, _, reason, _, text) = one(&Record::Pressure(Box::new(stalled.clone())), &options());
        assert_eq!((kind.as_str(), reason.as_str()), ("Pod", "MemoryPressure"));
        assert_eq!(text, "Container postgres stalled on memory 23% of the last 10 s; limit 64Mi, usage 63.1Mi");
        let cleared = Pressure { state: PressureState::Cleared, ..stalled };
        assert!(events_for(&Record::Pressure(Box::new(cleared)), &options()).is_empty());
    }

    #[test]
    fn cpu_and_io_pressure_have_their_own_reasons_and_cpu_names_its_limit() {
        let cpu = Pressure {
            time: Timestamp(0),
            resource: PressureResource::Cpu,
            state: PressureState::Stalled,
            stalled_us: 8_700_000,
            window_ms: 10_004,
            cgroup_path: "/kubepods/pod/c".to_owned(),
            memory_limit_bytes: None,
            memory_usage_bytes: None,
            cpu_limit_millicores: Some(500),
            identity: in_pod(),
        };
        let (_, _, reason, _, text) = one(&Record::Pressure(Box::new(cpu.clone())), &options());
        assert_eq!(reason, "CPUPressure");
        assert_eq!(text, "Container postgres stalled on CPU 87% of the last 10 s; limit 500m");
        let two = Pressure { cpu_limit_millicores: Some(2000), ..cpu.clone() };
        assert!(one(&Record::Pressure(Box::new(two)), &options()).4.ends_with("; limit 2"));
        let io = Pressure { resource: PressureResource::Io, cpu_limit_millicores: None, ..cpu };
        let (_, _, reason, _, text) = one(&Record::Pressure(Box::new(io)), &options());
        assert_eq!(reason, "IOPressure");
        assert_eq!(text, "Container postgres stalled on I/O 87% of the last 10 s");
    }
}
