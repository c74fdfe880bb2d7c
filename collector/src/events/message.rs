//! Event messages: one sentence answering "why did it die", escaped and cut to the API's limit.

use std::{borrow::Cow, fmt::Write as _};

use crate::{
    clock::Timestamp,
    escape::escape_bytes,
    record::{Exit, Identity, OomKill, OomScope, PodStop, Process, StopRequest, signal_name},
    recorder::{MAX_MESSAGE_BYTES, TRUNCATION_MARKER},
};

/// Length of a container id as `crictl ps` shows it.
const SHORT_ID_CHARS: usize = 12;

/// How a message names the container a process belonged to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Container {
    /// By its name in the pod spec, escaped.
    Named(String),
    /// By the start of its runtime id, escaped, when the name is unknown.
    Id(String),
    /// The pod's sandbox (pause) container.
    Sandbox,
    /// Neither name nor id is known (a process in the pod's cgroup but no container's).
    Unknown,
}

impl Container {
    /// The container of a record's identity.
    pub(super) fn of(identity: &Identity) -> Self {
        if identity.sandbox {
            return Self::Sandbox;
        }
        match (&identity.container_name, &identity.container_id) {
            (Some(name), _) if !name.is_empty() => Self::Named(escape_bytes(name.as_bytes())),
            (_, Some(id)) if !id.is_empty() => {
                Self::Id(escape_bytes(id.as_bytes()).chars().take(SHORT_ID_CHARS).collect())
            }
            _ => Self::Unknown,
        }
    }

    /// The noun phrase, e.g. `container app`.
    pub(super) fn noun(&self) -> Cow<'_, str> {
        match self {
            Self::Named(name) | Self::Id(name) => Cow::Owned(format!("container {name}")),
            Self::Sandbox => Cow::Borrowed("the pod sandbox"),
            Self::Unknown => Cow::Borrowed("an unknown container"),
        }
    }

    /// The noun phrase starting a sentence, e.g. `Container app`.
    pub(super) fn subject(&self) -> String {
        let noun = self.noun();
        let mut chars = noun.chars();
        chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
    }
}

/// OOMKilling on the Pod: `Memory cgroup out of memory: killed process 4242 (dd), a child of
/// container app; container limit 32Mi; anon-rss 31744kB`.
pub(super) fn oom_killing(oom: &OomKill, container: &Container) -> String {
    let memcg = match oom.scope {
        Some(OomScope::Container | OomScope::Pod | OomScope::Cgroup) => true,
        Some(OomScope::Node) => false,
        None => oom.oom_cgroup_path.is_some() || oom.memory_limit_bytes.is_some(),
    };
    let mut out = String::from(match oom.scope {
        Some(OomScope::Node) => "System OOM",
        _ if memcg => "Memory cgroup out of memory",
        _ => "Out of memory",
    });
    let _ = write!(out, ": killed process {}", oom.pid);
    if let Some(comm) = oom.comm.as_deref().filter(|comm| !comm.is_empty()) {
        let _ = write!(out, " ({})", scrub(comm));
    }
    let _ = match oom.main_process {
        Some(true) => write!(out, ", the main process of {}", container.noun()),
        Some(false) => write!(out, ", a child of {}", container.noun()),
        None => write!(out, " in {}", container.noun()),
    };
    let limit = oom.memory_limit_bytes.map(quantity);
    match (oom.scope, limit) {
        (Some(OomScope::Node), _) => {}
        (Some(OomScope::Container), Some(limit)) => push(&mut out, &["; container limit ", &limit]),
        (Some(OomScope::Container), None) => out.push_str("; container limit reached"),
        (Some(OomScope::Pod), Some(limit)) => push(&mut out, &["; pod limit ", &limit]),
        (Some(OomScope::Pod), None) => out.push_str("; pod limit reached"),
        (Some(OomScope::Cgroup) | None, limit) => match (limit, oom.oom_cgroup_path.as_deref()) {
            (Some(limit), Some(path)) => push(&mut out, &["; limit ", &limit, " of cgroup ", &scrub(path)]),
            (Some(limit), None) => push(&mut out, &["; cgroup limit ", &limit]),
            (None, Some(path)) => push(&mut out, &["; limit of cgroup ", &scrub(path), " reached"]),
            (None, None) if memcg => out.push_str("; cgroup limit reached"),
            (None, None) => {}
        },
    }
    if let Some(kb) = oom.anon_rss_kb {
        let _ = write!(out, "; anon-rss {kb}kB");
    }
    finish(out)
}

/// SystemOOM on the Node, worded as the kubelet's (`System OOM encountered, victim process: dd,
/// pid: 4242`), which also leaves out the victim when its name or pid is unknown.
pub(super) fn system_oom(oom: &OomKill) -> String {
    match oom.comm.as_deref().filter(|comm| !comm.is_empty() && oom.pid != 0) {
        Some(comm) => finish(format!("System OOM encountered, victim process: {}, pid: {}", scrub(comm), oom.pid)),
        None => "System OOM encountered".to_owned(),
    }
}

/// ContainerExited: `Container app exited with code 137: SIGKILL from pid 812 (kubelet)`.
pub(super) fn container_exited(exit: &Exit, container: &Container) -> String {
    let mut out = format!("{} exited with code {}", container.subject(), exit.exit_code);
    if let Some(signal) = exit.signal {
        push(&mut out, &[": ", &signal_name(signal)]);
        if let Some(sender) = exit.sender.as_ref().filter(|sender| sender.pid != exit.pid) {
            push_sender(&mut out, sender);
        }
        push_core(&mut out, exit);
    }
    finish(out)
}

/// GracePeriodExceeded: `Container sidecar did not exit within 2 s of SIGTERM and was killed
/// (SIGKILL from the runtime); it ignores SIGTERM; the pod was being deleted`.
pub(super) fn grace_period_exceeded(exit: &Exit, request: &StopRequest, container: &Container) -> String {
    let grace = request.kill_time.unwrap_or(exit.time);
    let mut out = format!(
        "{} did not exit within {} s of {} and was killed (SIGKILL from the runtime)",
        container.subject(),
        grace_seconds(request.time, grace),
        request.signal_name
    );
    if request.ignored {
        push(&mut out, &["; it ignores ", &request.signal_name]);
    }
    push_pod_stop(&mut out, request.pod_stop.as_ref());
    push_kubelet(&mut out, request);
    finish(out)
}

/// Why the pod was stopped, as the API server said: `; the pod was being deleted
/// (EvictionByEvictionAPI: Eviction API: evicting)`; nothing for a container restarted in a
/// running pod.
fn push_pod_stop(out: &mut String, stop: Option<&PodStop>) {
    let Some(stop) = stop else {
        return;
    };
    // The kubelet's own node-pressure eviction stops the pod without deleting it.
    push(out, &[if stop.deleted { "; the pod was being deleted" } else { "; the pod was being stopped" }]);
    match (&stop.reason, &stop.message) {
        (Some(reason), Some(message)) => push(out, &[" (", &scrub(reason), ": ", &scrub(message), ")"]),
        (Some(reason), None) => push(out, &[" (", &scrub(reason), ")"]),
        (None, _) => {}
    }
}

/// Why the kubelet stopped the container, in its words, and what the failed probe got: `; the
/// kubelet said "Container app failed liveness probe, will be restarted" after "Liveness probe
/// failed: HTTP probe failed with statuscode: 500"`.
fn push_kubelet(out: &mut String, request: &StopRequest) {
    if let Some(said) = &request.kubelet_message {
        push(out, &["; the kubelet said \"", &scrub(said), "\""]);
        if let Some(probe) = &request.probe_message {
            push(out, &[" after \"", &scrub(probe), "\""]);
        }
    }
}

/// ContainerStopped (StoppedByProbe when the kubelet stopped it for a failed probe):
/// `Container app stopped on request: exited with code 143, 0.4 s after SIGTERM`.
pub(super) fn container_stopped(exit: &Exit, request: &StopRequest, container: &Container) -> String {
    let mut out = format!("{} stopped on request: exited with code {}", container.subject(), exit.exit_code);
    if let Some(signal) = exit.signal {
        push(&mut out, &[" (", &signal_name(signal), ")"]);
    }
    push(&mut out, &[", ", &seconds(request.time, exit.time), " s after ", &request.signal_name]);
    push_pod_stop(&mut out, request.pod_stop.as_ref());
    push_kubelet(&mut out, request);
    finish(out)
}

/// A grace period as measured from the stop signal to the SIGKILL: whole seconds, cut down, from
/// one second up (grace periods are whole seconds and the runtime's SIGKILL comes a few
/// milliseconds late, so this is the configured one); tenths below.
fn grace_seconds(from: Timestamp, to: Timestamp) -> String {
    let nanos = to.0.saturating_sub(from.0).max(0);
    if nanos >= 1_000_000_000 { (nanos / 1_000_000_000).to_string() } else { format!("0.{}", nanos / 100_000_000) }
}

/// The time from `from` to `to` in seconds with one decimal, `.0` left out: `2`, `0.4`.
fn seconds(from: Timestamp, to: Timestamp) -> String {
    let ms = u64::try_from(to.0.saturating_sub(from.0) / 1_000_000).unwrap_or(0);
    seconds_of_ms(ms)
}

/// Milliseconds as seconds rounded to a tenth, the decimal dropped when it is zero (`2`, `2.1`).
pub(super) fn seconds_of_ms(ms: u64) -> String {
    let tenths = ms.saturating_add(50) / 100;
    if tenths.is_multiple_of(10) { (tenths / 10).to_string() } else { format!("{}.{}", tenths / 10, tenths % 10) }
}

/// ProcessCrashed: `Process 4300 (worker) of container app crashed: SIGSEGV (core dumped)`.
pub(super) fn process_crashed(exit: &Exit, container: &Container) -> String {
    let mut out = process(exit, container);
    out.push_str(" crashed");
    if let Some(signal) = exit.signal {
        push(&mut out, &[": ", &signal_name(signal)]);
        push_core(&mut out, exit);
    }
    finish(out)
}

/// ProcessKilled: `Process 4300 (worker) of container app was killed: SIGTERM from pid 77 (kill)`.
pub(super) fn process_killed(exit: &Exit, container: &Container) -> String {
    let mut out = process(exit, container);
    out.push_str(" was killed");
    if let Some(signal) = exit.signal {
        push(&mut out, &[": ", &signal_name(signal)]);
    }
    if let Some(sender) = &exit.sender {
        push_sender(&mut out, sender);
    }
    push_core(&mut out, exit);
    finish(out)
}

/// `Process 4300 (worker) of container app`.
fn process(exit: &Exit, container: &Container) -> String {
    let mut out = format!("Process {}", exit.pid);
    if !exit.comm.is_empty() {
        push(&mut out, &[" (", &scrub(&exit.comm), ")"]);
    }
    push(&mut out, &[" of ", &container.noun()]);
    out
}

fn push_sender(out: &mut String, sender: &Process) {
    let _ = write!(out, " from pid {}", sender.pid);
    if !sender.comm.is_empty() {
        push(out, &[" (", &scrub(&sender.comm), ")"]);
    }
}

fn push_core(out: &mut String, exit: &Exit) {
    if exit.core_dumped {
        out.push_str(" (core dumped)");
    }
}

fn push(out: &mut String, parts: &[&str]) {
    for part in parts {
        out.push_str(part);
    }
}

/// A byte count the way Kubernetes prints a quantity: the largest binary suffix that divides it
/// exactly (`32Mi`, `1Gi`), else plain bytes (`1000`).
pub(super) fn quantity(bytes: u64) -> String {
    const SUFFIXES: [(u32, &str); 6] = [(60, "Ei"), (50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")];
    if bytes != 0 {
        for (shift, suffix) in SUFFIXES {
            if bytes.trailing_zeros() >= shift {
                return format!("{}{suffix}", bytes >> shift);
            }
        }
    }
    bytes.to_string()
}

pub(super) use crate::escape::scrub;

/// Cuts a message to [`MAX_MESSAGE_BYTES`] on a char boundary, ending it with
/// [`TRUNCATION_MARKER`].
pub(super) fn finish(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES.saturating_sub(TRUNCATION_MARKER.len());
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(TRUNCATION_MARKER);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_have_one_decimal_and_drop_a_zero_one() {
        let at = |ms: i64| Timestamp(ms * 1_000_000);
        assert_eq!(seconds(at(1000), at(3000)), "2");
        assert_eq!(seconds(at(1000), at(3049)), "2");
        assert_eq!(seconds(at(1000), at(3050)), "2.1");
        assert_eq!(seconds(at(0), at(400)), "0.4");
        // A pressure window measured a millisecond or two long is still the whole second.
        assert_eq!(seconds_of_ms(4001), "4");
        assert_eq!(seconds_of_ms(4049), "4");
        assert_eq!(seconds_of_ms(4050), "4.1");
        assert_eq!(seconds_of_ms(10_000), "10");
        assert_eq!(seconds(at(0), at(0)), "0");
        assert_eq!(seconds(at(5000), at(0)), "0");
    }

    #[test]
    fn grace_periods_are_the_whole_seconds_before_the_kill() {
        let at = |ms: i64| Timestamp(ms * 1_000_000);
        assert_eq!(grace_seconds(at(1000), at(3000)), "2");
        assert_eq!(grace_seconds(at(1000), at(3999)), "2");
        assert_eq!(grace_seconds(at(0), at(30_020)), "30");
        assert_eq!(grace_seconds(at(0), at(950)), "0.9");
        assert_eq!(grace_seconds(at(0), at(0)), "0.0");
    }

    #[test]
    fn quantities_use_the_largest_exact_binary_suffix() {
        assert_eq!(quantity(0), "0");
        assert_eq!(quantity(1000), "1000");
        assert_eq!(quantity(1024), "1Ki");
        assert_eq!(quantity(1536), "1536");
        assert_eq!(quantity(33_554_432), "32Mi");
        assert_eq!(quantity(64 << 20), "64Mi");
        assert_eq!(quantity(1 << 30), "1Gi");
        assert_eq!(quantity(1536 << 20), "1536Mi");
        assert_eq!(quantity(3 << 40), "3Ti");
        assert_eq!(quantity(1 << 63), "8Ei");
        // Docker's 100M limit, rounded down to a page by the kernel.
        assert_eq!(quantity(99_999_744), "97656Ki");
        assert_eq!(quantity(100_000_000), "100000000");
        assert_eq!(quantity(u64::MAX), "18446744073709551615");
    }

    #[test]
    fn scrub_escapes_controls_but_not_backslashes() {
        assert_eq!(scrub("dd"), "dd");
        assert_eq!(scrub("\\x1b[2J"), "\\x1b[2J");
        assert_eq!(scrub("a\nb\u{1b}[2J\u{85}"), "a\\x0ab\\x1b[2J\\xc2\\x85");
    }

    #[test]
    fn finish_cuts_on_a_char_boundary_within_the_limit() {
        assert_eq!(finish("short".to_owned()), "short");
        let exact = "a".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(finish(exact.clone()), exact);
        let cut = finish("é".repeat(MAX_MESSAGE_BYTES));
        assert_eq!(cut.len(), MAX_MESSAGE_BYTES - 1);
        assert!(cut.ends_with("é..."));
        let cut = finish(format!("a{}", "é".repeat(MAX_MESSAGE_BYTES)));
        assert_eq!(cut.len(), MAX_MESSAGE_BYTES);
        assert!(cut.ends_with("é..."));
    }

    #[test]
    fn containers_are_named_by_name_then_short_id() {
        let mut identity = Identity {
            container_id: Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_owned()),
            ..Identity::default()
        };
        assert_eq!(Container::of(&identity).noun(), "container 0123456789ab");
        identity.container_name = Some("app\n".to_owned());
        assert_eq!(Container::of(&identity).subject(), "Container app\\x0a");
        identity.sandbox = true;
        assert_eq!(Container::of(&identity).noun(), "the pod sandbox");
        assert_eq!(Container::of(&Identity::default()).subject(), "An unknown container");
    }
}
