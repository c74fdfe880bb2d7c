//! Turns resolved records into kubelet-style Event specs: which deaths deserve an Event, about
//! which object, of which type and reason. Pure and synchronous; the [`recorder`](crate::recorder)
//! correlates the specs and the sinks deliver them.
//!
//! | what happened                                                      | reason          | type    | object |
//! |--------------------------------------------------------------------|-----------------|---------|--------|
//! | the OOM killer killed a process of a pod (`oom_kill` record)       | OOMKilling      | Warning | Pod    |
//! | ... with no memory limit hit (scope Node)                          | SystemOOM       | Warning | Node ¹ |
//! | a container's main process ended with a non-zero code or a signal  | ContainerExited | Warning | Pod    |
//! | a container's main process exited 0                                | ContainerExited | Normal ² | Pod   |
//! | ... outlived the runtime's stop signal and was killed by it        | GracePeriodExceeded | Warning | Pod |
//! | ... ended after the runtime's stop signal                          | ContainerStopped | Normal ² | Pod  |
//! | ... the same, the kubelet having said a liveness or startup probe failed | StoppedByProbe | Warning | Pod |
//! | another process was killed by a signal another process sent        | ProcessKilled   | Warning | Pod    |
//! | another process died of a crash signal it was not sent             | ProcessCrashed  | Warning | Pod    |
//! | node health (hung tasks, kernel problems, I/O, memory pressure)    | see [`health`]  | Warning | Node, Pod |
//!
//! ¹ first, then OOMKilling on the Pod if the victim is in one.
//! ² every one is kept in the node's journal; the daemon sends them to the API server only with
//! `emit_normal_exits`, so that the journal has every death and the API server only failures.
//!
//! A stop the kubelet asked for (`Exit::stop`, see [`crate::resolve::stop`]) is not a failure:
//! the main process's end gives no Warning unless it needed the runtime's SIGKILL, whatever its
//! exit code (Java exits 143 on SIGTERM), and the other processes the runtime ends give nothing.
//! A failed liveness or startup probe is the exception: the kubelet asked, but because the
//! container failed (its `Killing` Event says so, [`crate::record::StopRequest::kubelet_message`]).
//!
//! Decisions the table leaves open:
//! - One death gives one event: the exit record of an OOM victim gives none, its `oom_kill` record
//!   does. Signal and cgroup records give none: the exit record that follows tells the outcome.
//! - A Pod event needs the pod's namespace, name and uid. A record whose pod uid is known but whose
//!   name or namespace is not (the cgroup path alone names only the uid) gives no Pod event; nor
//!   does one whose name, namespace or uid would need escaping: no API object is named so.
//! - `fieldPath` is `spec.initContainers{NAME}` when the container is known to be an init
//!   container, `spec.containers{NAME}` otherwise (also when that is unknown, the common case), and
//!   absent when the name is unknown, needs escaping, or the container is the sandbox.
//! - The sandbox (pause) container's exits give no event: its main process ends when the pod goes
//!   away, and nothing else runs in it. An OOM kill in it still gives OOMKilling, without fieldPath.
//! - An exit whose `main_process` is unknown (`None`) is treated as not the main process: only the
//!   ProcessKilled and ProcessCrashed rules apply, so an unknown role never claims a container
//!   ended.
//! - A signal the process sent itself (`abort()` raises SIGABRT with `tgkill`) counts as not sent
//!   by another process: SIGABRT is then a crash. A crash signal sent by another process (`kill
//!   -SEGV`) is a kill, not a crash: the sender is the better answer to "why did it die".
//! - SystemOOM needs a node name; with an empty `node_name` only the Pod event is made.

mod health;
mod message;

pub use self::health::{
    REASON_CPU_PRESSURE, REASON_FILESYSTEM_ERROR, REASON_HARDWARE_ERROR, REASON_IO_ERROR, REASON_IO_PRESSURE,
    REASON_MEMORY_PRESSURE, REASON_TASK_HUNG,
};

use crate::{
    escape::escape_bytes,
    record::{Exit, Identity, OomKill, OomScope, Record, Stop},
    recorder::{EventSpec, EventType, ObjectReference},
};

use message::Container;

/// Reason of an OOM kill of a pod's process, on the Pod.
pub const REASON_OOM_KILLING: &str = "OOMKilling";
/// Reason of a node-wide OOM kill, on the Node (the kubelet's reason).
pub const REASON_SYSTEM_OOM: &str = "SystemOOM";
/// Reason of the end of a container's main process, on the Pod.
pub const REASON_CONTAINER_EXITED: &str = "ContainerExited";
/// Reason of a death of another process of a container by a crash signal, on the Pod.
pub const REASON_PROCESS_CRASHED: &str = "ProcessCrashed";
/// Reason of a death of another process of a container by a signal another process sent, on the Pod.
pub const REASON_PROCESS_KILLED: &str = "ProcessKilled";
/// Reason of a main process that outlived the runtime's stop signal and was killed, on the Pod.
pub const REASON_GRACE_PERIOD_EXCEEDED: &str = "GracePeriodExceeded";
/// Reason of a main process that ended on the runtime's stop signal, on the Pod (Normal).
pub const REASON_CONTAINER_STOPPED: &str = "ContainerStopped";
/// Reason of a main process that ended on the runtime's stop signal after the kubelet's liveness
/// or startup probe of its container failed, on the Pod (Warning).
pub const REASON_STOPPED_BY_PROBE: &str = "StoppedByProbe";

/// Signals a process gets for its own fault: SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGSYS.
pub const CRASH_SIGNALS: [u32; 7] = [4, 5, 6, 7, 8, 11, 31];

/// What [`events_for`] needs to know beyond the record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventOptions {
    /// This node's name, for SystemOOM events on the Node; empty leaves them out.
    pub node_name: String,
    /// Reasons of kernel log rules that an attached probe reports better (`TaskHung` while the
    /// hung-task probe is attached): such lines give no event of their own.
    pub probed_reasons: Vec<String>,
}

/// The events a record gives: usually none or one; a node-wide OOM kill of a pod's process gives
/// SystemOOM on the Node, then OOMKilling on the Pod.
pub fn events_for(record: &Record, options: &EventOptions) -> Vec<EventSpec> {
    match record {
        Record::Exit(exit) => exit_event(exit).into_iter().collect(),
        Record::OomKill(oom) => oom_events(oom, options),
        Record::HungTask(hung) => health::hung_task(hung, options),
        Record::KernelLog(log) => health::kernel_log(log, options),
        Record::FsError(error) => health::fs_error(error, options),
        Record::IoError(error) => health::io_error(error, options),
        Record::HwError(error) => health::hw_error(error, options),
        Record::Pressure(pressure) => health::pressure(pressure),
        Record::Signal(_) | Record::CgroupMkdir(_) | Record::CgroupRmdir(_) | Record::CgroupAttach(_) => Vec::new(),
    }
}

/// Whether `signal` is one a process gets for its own fault.
pub fn is_crash_signal(signal: u32) -> bool {
    CRASH_SIGNALS.contains(&signal)
}

fn oom_events(oom: &OomKill, options: &EventOptions) -> Vec<EventSpec> {
    let mut events = Vec::new();
    if oom.scope == Some(OomScope::Node) && !options.node_name.is_empty() {
        events.push(EventSpec::new(
            ObjectReference::node(&options.node_name),
            EventType::Warning,
            REASON_SYSTEM_OOM,
            message::system_oom(oom),
        ));
    }
    if let Some(pod) = pod_reference(&oom.identity) {
        let container = Container::of(&oom.identity);
        events.push(EventSpec::new(pod, EventType::Warning, REASON_OOM_KILLING, message::oom_killing(oom, &container)));
    }
    events
}

fn exit_event(exit: &Exit) -> Option<EventSpec> {
    if exit.oom_killed || exit.identity.sandbox {
        return None;
    }
    let pod = pod_reference(&exit.identity)?;
    let container = Container::of(&exit.identity);
    if exit.main_process == Some(true) {
        match (exit.stop, &exit.stop_request) {
            (Some(Stop::GraceExceeded), Some(request)) => {
                let message = message::grace_period_exceeded(exit, request, &container);
                return Some(EventSpec::new(pod, EventType::Warning, REASON_GRACE_PERIOD_EXCEEDED, message));
            }
            // The kubelet asked, but because the container failed its probe: a failure.
            (Some(Stop::Requested), Some(request)) if request.probe_failed() => {
                let message = message::container_stopped(exit, request, &container);
                return Some(EventSpec::new(pod, EventType::Warning, REASON_STOPPED_BY_PROBE, message));
            }
            (Some(Stop::Requested), Some(request)) => {
                let message = message::container_stopped(exit, request, &container);
                return Some(EventSpec::new(pod, EventType::Normal, REASON_CONTAINER_STOPPED, message));
            }
            _ => {}
        }
        let event_type =
            if exit.exit_code != 0 || exit.signal.is_some() { EventType::Warning } else { EventType::Normal };
        return Some(EventSpec::new(
            pod,
            event_type,
            REASON_CONTAINER_EXITED,
            message::container_exited(exit, &container),
        ));
    }
    let signal = exit.signal?;
    // The runtime ended it on request (a shared pid namespace, or `kill --all` at sandbox stop).
    if exit.stop.is_some() {
        return None;
    }
    if exit.sender.as_ref().is_some_and(|sender| sender.pid != exit.pid) {
        Some(EventSpec::new(pod, EventType::Warning, REASON_PROCESS_KILLED, message::process_killed(exit, &container)))
    } else if is_crash_signal(signal) {
        Some(EventSpec::new(
            pod,
            EventType::Warning,
            REASON_PROCESS_CRASHED,
            message::process_crashed(exit, &container),
        ))
    } else {
        None
    }
}

/// The Pod the record belongs to, narrowed to its container where that is known.
fn pod_reference(identity: &Identity) -> Option<ObjectReference> {
    let uid = api_name(identity.pod_uid.as_deref())?;
    let name = api_name(identity.pod_name.as_deref())?;
    let namespace = api_name(identity.namespace.as_deref())?;
    let pod = ObjectReference::pod(namespace, name, uid);
    if identity.sandbox {
        return Some(pod);
    }
    Some(match api_name(identity.container_name.as_deref()) {
        Some(container) if identity.init_container == Some(true) => {
            pod.with_field_path(&format!("spec.initContainers{{{container}}}"))
        }
        Some(container) => pod.with_field_path(&format!("spec.containers{{{container}}}")),
        None => pod,
    })
}

/// A name usable in an object reference: known, not empty, and unchanged by escaping.
fn api_name(name: Option<&str>) -> Option<&str> {
    name.filter(|name| !name.is_empty() && escape_bytes(name.as_bytes()) == *name)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
