//! Stops the container runtime was asked for. When the kubelet stops a container it calls CRI
//! `StopContainer`: the runtime sends the stop signal, then SIGKILL once the grace period is
//! over. A death that follows the runtime's own signals is a requested stop, not a failure; one
//! that needed the SIGKILL tells that the process does not shut down within its grace period.
//!
//! The runtime is known by its executable's file name (from the kernel's `mm->exe_file`, not the
//! 15-byte `comm` a process may set to anything) and by running outside every container: a
//! process in a container can name its executable `runc` too.

use std::collections::{HashMap, VecDeque};

use crate::record::{Exit, Process, Signal, Stop, StopRequest};

/// SIGKILL, which ends a grace period.
const SIGKILL: u32 = 9;

/// Executable file names of the OCI runtimes and the monitors that signal containers.
const RUNTIME_EXES: [&str; 5] = ["runc", "crun", "youki", "runsc", "conmon"];
/// containerd's shims: `containerd-shim`, `containerd-shim-runc-v2`, `containerd-shim-kata-v2`.
const SHIM_PREFIX: &str = "containerd-shim";

/// Stop requests remembered at most; a process stopped on request exits within its grace
/// period, so this bounds only the requests whose exit was never seen. The oldest go first.
pub const STOP_REQUESTS_CAP: usize = 4096;

/// Whether `exe` is the file name of a container runtime's executable.
pub fn is_runtime_exe(exe: &str) -> bool {
    RUNTIME_EXES.contains(&exe) || exe.starts_with(SHIM_PREFIX)
}

/// Whether `sender` is the container runtime: a runtime's executable, in a known cgroup that is
/// no container's (the runtime's own, or a pod's own for CRI-O's `conmon`).
pub fn is_runtime(sender: &Process) -> bool {
    sender.exe.as_deref().is_some_and(is_runtime_exe)
        && sender
            .cgroup_path
            .as_deref()
            .is_some_and(|path| crate::cgroup::layout::parse(path).is_none_or(|at| at.container_id.is_none()))
}

/// The runtime's signals to each process, until that process exits.
#[derive(Debug, Default)]
pub struct StopTracker {
    pending: HashMap<u32, Pending>,
    /// Insertion order, for eviction; entries whose process has exited are skipped.
    order: VecDeque<(u32, u64)>,
    next: u64,
    /// Requests forgotten because [`STOP_REQUESTS_CAP`] were pending.
    pub evicted: u64,
}

#[derive(Debug)]
struct Pending {
    request: StopRequest,
    /// The runtime process that sent the last signal (the SIGKILL comes from another `runc`).
    last_sender: Process,
    seq: u64,
}

impl StopTracker {
    /// Notes a signal; only the runtime's count.
    pub fn signal(&mut self, signal: &Signal) {
        let Some(sender) = signal.sender.as_ref().filter(|sender| is_runtime(sender)) else {
            return;
        };
        if let Some(pending) = self.pending.get_mut(&signal.target_pid) {
            if signal.signal == SIGKILL && pending.request.signal != SIGKILL && pending.request.kill_time.is_none() {
                pending.request.kill_time = Some(signal.time);
            }
            pending.last_sender = sender.clone();
            return;
        }
        if self.pending.len() >= STOP_REQUESTS_CAP {
            self.evict_oldest();
        }
        let seq = self.next;
        self.next += 1;
        let request = StopRequest {
            time: signal.time,
            signal: signal.signal,
            signal_name: signal.signal_name.clone(),
            ignored: signal.result == crate::record::SignalResult::Ignored,
            kill_time: None,
            sender: sender.clone(),
            // The identity stage fills it from the pod.
            pod_stop: None,
            kubelet_message: None,
            probe_message: None,
        };
        self.pending.insert(signal.target_pid, Pending { request, last_sender: sender.clone(), seq });
        self.order.push_back((signal.target_pid, seq));
        if self.order.len() > 2 * STOP_REQUESTS_CAP {
            let pending = &self.pending;
            self.order.retain(|(pid, seq)| pending.get(pid).is_some_and(|p| p.seq == *seq));
        }
    }

    /// Says whether and how `exit` (of the thread `tid`) ended a requested stop, and names the
    /// runtime's executable in its sender. `stop_request` stays set even when another signal
    /// (a crash while shutting down) ended it instead.
    pub fn exit(&mut self, exit: &mut Exit, tid: u32) {
        let Some(pending) = self.pending.remove(&exit.pid).or_else(|| self.pending.remove(&tid)) else {
            return;
        };
        exit.stop = match exit.signal {
            // It exited on its own, whatever the code: Java's 143 is a clean stop.
            None => Some(Stop::Requested),
            Some(SIGKILL) if pending.request.kill_time.is_some() => Some(Stop::GraceExceeded),
            Some(sig) if sig == pending.request.signal => Some(Stop::Requested),
            // Another signal ended it (a crash while shutting down): a failure, not the stop.
            Some(_) => None,
        };
        if let Some(sender) = exit.sender.as_mut().filter(|sender| sender.exe.is_none()) {
            for known in [&pending.last_sender, &pending.request.sender] {
                if known.pid == sender.pid {
                    sender.exe.clone_from(&known.exe);
                }
            }
        }
        exit.stop_request = Some(pending.request);
    }

    /// Requests waiting for their process's exit.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn evict_oldest(&mut self) {
        while let Some((pid, seq)) = self.order.pop_front() {
            if self.pending.get(&pid).is_some_and(|p| p.seq == seq) {
                self.pending.remove(&pid);
                self.evicted += 1;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Timestamp,
        record::{Identity, SignalResult},
    };

    const POD: &str = "/kubepods/besteffort/pod0b7c8e22-6c4e-4b8e-9d1e-1f2a3b4c5d6e";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn sender(pid: u32, exe: Option<&str>, cgroup: Option<&str>) -> Process {
        Process { pid, comm: "runc".into(), exe: exe.map(str::to_owned), cgroup_path: cgroup.map(str::to_owned) }
    }

    fn runc(pid: u32) -> Process {
        sender(pid, Some("runc"), Some("/system.slice/containerd.service"))
    }

    fn signal(secs: i64, sig: u32, target: u32, from: Process, result: SignalResult) -> Signal {
        Signal {
            time: Timestamp(secs * 1_000_000_000),
            signal: sig,
            signal_name: crate::record::signal_name(sig),
            code: 0,
            sender: Some(from),
            target_pid: target,
            target_comm: "sleep".into(),
            target_cgroup_path: None,
            identity: Identity::default(),
            group: true,
            result,
        }
    }

    fn exit(pid: u32, signal: Option<u32>, code: u32, sender: Option<Process>) -> Exit {
        Exit {
            time: Timestamp(0),
            pid,
            ppid: 1,
            comm: "sleep".into(),
            exit_code: code,
            signal,
            core_dumped: false,
            cgroup_id: 1,
            cgroup_path: None,
            oom_killed: false,
            sender,
            identity: Identity::default(),
            main_process: Some(true),
            stop: None,
            stop_request: None,
        }
    }

    #[test]
    fn runtimes_are_known_by_executable_and_a_cgroup_outside_containers() {
        assert!(is_runtime(&runc(1)));
        assert!(is_runtime(&sender(1, Some("containerd-shim-runc-v2"), Some("/"))));
        // CRI-O's conmon runs in the pod's cgroup, in no container's.
        assert!(is_runtime(&sender(1, Some("conmon"), Some(&format!("{POD}/crio-conmon-{CID}")))));
        // A process in a container may call its executable anything.
        assert!(!is_runtime(&sender(1, Some("runc"), Some(&format!("{POD}/{CID}")))));
        // The name alone is not enough.
        assert!(!is_runtime(&sender(1, None, Some("/"))));
        assert!(!is_runtime(&sender(1, Some("runc"), None)));
        assert!(!is_runtime(&sender(1, Some("kill"), Some("/"))));
        assert!(!is_runtime(&sender(1, Some("runc2"), Some("/"))));
    }

    #[test]
    fn a_stop_signal_then_an_exit_is_a_requested_stop() {
        let mut tracker = StopTracker::default();
        tracker.signal(&signal(10, 15, 42, runc(7), SignalResult::Delivered));
        let mut died = exit(42, None, 143, None);
        tracker.exit(&mut died, 42);
        assert_eq!(died.stop, Some(Stop::Requested));
        let request = died.stop_request.unwrap();
        assert_eq!((request.signal, request.signal_name.as_str(), request.ignored), (15, "SIGTERM", false));
        assert_eq!((request.time, request.kill_time), (Timestamp(10_000_000_000), None));
        assert_eq!(request.sender, runc(7));
        assert_eq!(tracker.pending(), 0);
    }

    #[test]
    fn an_ignored_stop_signal_then_the_runtimes_sigkill_is_grace_exceeded() {
        let mut tracker = StopTracker::default();
        tracker.signal(&signal(10, 15, 42, runc(7), SignalResult::Ignored));
        tracker.signal(&signal(12, 9, 42, runc(8), SignalResult::Delivered));
        let mut died = exit(42, Some(9), 137, Some(sender(8, None, Some("/system.slice/containerd.service"))));
        tracker.exit(&mut died, 42);
        assert_eq!(died.stop, Some(Stop::GraceExceeded));
        let request = died.stop_request.unwrap();
        assert!(request.ignored);
        assert_eq!(request.kill_time, Some(Timestamp(12_000_000_000)));
        // The exit's sender is the second runc: its executable comes from that signal.
        assert_eq!(died.sender, Some(runc(8)));
    }

    #[test]
    fn a_crash_while_stopping_is_not_the_stop() {
        let mut tracker = StopTracker::default();
        tracker.signal(&signal(10, 15, 42, runc(7), SignalResult::Delivered));
        let mut died = exit(42, Some(11), 139, None);
        tracker.exit(&mut died, 42);
        assert_eq!(died.stop, None);
        assert_eq!(died.stop_request.map(|r| r.signal), Some(15));
    }

    #[test]
    fn a_sigkill_alone_is_a_requested_stop_with_no_grace() {
        let mut tracker = StopTracker::default();
        tracker.signal(&signal(10, 9, 42, runc(7), SignalResult::Delivered));
        let mut died = exit(42, Some(9), 137, Some(runc(7)));
        tracker.exit(&mut died, 42);
        assert_eq!(died.stop, Some(Stop::Requested));
    }

    #[test]
    fn signals_from_others_and_exits_of_others_are_not_stops() {
        let mut tracker = StopTracker::default();
        tracker.signal(&signal(10, 15, 42, sender(5, Some("kill"), Some("/")), SignalResult::Delivered));
        let mut died = exit(42, Some(15), 143, None);
        tracker.exit(&mut died, 42);
        assert_eq!((died.stop, died.stop_request), (None, None));
        tracker.signal(&signal(10, 15, 43, runc(7), SignalResult::Delivered));
        let mut other = exit(44, None, 0, None);
        tracker.exit(&mut other, 44);
        assert_eq!(other.stop, None);
        assert_eq!(tracker.pending(), 1);
    }

    #[test]
    fn a_stop_of_a_thread_is_found_by_its_id() {
        let mut tracker = StopTracker::default();
        tracker.signal(&signal(10, 15, 43, runc(7), SignalResult::Delivered));
        let mut died = exit(42, Some(15), 143, None);
        tracker.exit(&mut died, 43);
        assert_eq!(died.stop, Some(Stop::Requested));
    }

    #[test]
    fn the_oldest_requests_go_first_and_are_counted() {
        let mut tracker = StopTracker::default();
        let cap = u32::try_from(STOP_REQUESTS_CAP).unwrap();
        for pid in 0..cap + 10 {
            tracker.signal(&signal(1, 15, pid, runc(7), SignalResult::Delivered));
            if pid % 3 == 0 && pid > cap {
                // Exits keep the order queue from growing without bound.
                let mut died = exit(pid, None, 0, None);
                tracker.exit(&mut died, pid);
            }
        }
        // 4106 requests, 3 of them ended by an exit: the other 4103 fill the 4096 places.
        assert_eq!(tracker.pending(), STOP_REQUESTS_CAP);
        assert_eq!(tracker.evicted, 7);
        let mut first = exit(0, None, 0, None);
        tracker.exit(&mut first, 0);
        assert_eq!(first.stop, None);
        let mut last = exit(cap + 9, None, 0, None);
        tracker.exit(&mut last, cap + 9);
        assert_eq!(last.stop, Some(Stop::Requested));
        assert!(tracker.order.len() <= 2 * STOP_REQUESTS_CAP);
    }
}
