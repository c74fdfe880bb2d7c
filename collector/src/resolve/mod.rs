//! Resolver and correlator: kernel records to records with wall time,
//! decoded statuses, escaped names and cgroup paths. It keeps the cgroup
//! registry current from the kernel's own mkdir and rmdir reports, joins
//! an OOM kill with its victim's exit, which names the victim's cgroup, and
//! tells a stop the container runtime was asked for ([`stop`]) from a failure.

mod backlog;
mod health;
pub mod stop;

pub use self::{
    backlog::BACKLOG_CAP,
    health::{device_name, errno_name, hw_severity},
};

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use collector_common::{CgroupRecord, ExitRecord, OomRecord, PATH_CAP, SignalInfo, exit_flags, oom_flags};

use self::stop::StopTracker;

use crate::{
    cgroup::{CgroupTree, Resolver},
    clock::BootClock,
    decode::KernelRecord,
    escape::{c_str, escape_bytes},
    health::kmsg::Patterns,
    record::{
        CgroupAttach, CgroupChange, Exit, ExitStatus, Identity, OomKill, OomScope, Process, Record, Signal,
        SignalResult, sent_by_process, signal_name,
    },
};

/// How long an OOM kill waits for its victim's exit (the victim is already
/// SIGKILLed; it exits within milliseconds unless stuck in the kernel).
pub const OOM_EXIT_WAIT: Duration = Duration::from_secs(2);

/// OOM kills waiting for their victim's exit, and victims' exits waiting for
/// their OOM kill (on another CPU the victim can exit before the report).
const PENDING_CAP: usize = 256;

/// Turns kernel records into [`Record`]s.
#[derive(Debug)]
pub struct RecordResolver {
    clock: BootClock,
    cgroups: Resolver,
    /// The hierarchy memory limits live in: OOM kills name cgroups there.
    memory: CgroupTree,
    page_size: u64,
    /// OOM kills waiting for their victim's exit, and signals whose target was
    /// gone before its cgroup could be read, waiting for the target's exit.
    waiting: VecDeque<(Instant, Record)>,
    /// Exits of OOM victims seen before their OOM record: (pid, cgroup id, path, comm).
    early_victims: VecDeque<(Instant, Exit)>,
    /// The container runtime's signals, until the exits they asked for.
    stops: StopTracker,
    /// What happened since the daemon last took the counts.
    counts: ResolveCounts,
    /// The node-problem rules kernel log lines are matched against.
    kernel_log: Patterns,
    /// Records waiting for a walk of the cgroup tree ([`backlog`]).
    backlog: VecDeque<KernelRecord>,
    /// When the record being resolved was read: one clock read per record serves every
    /// registry lookup it needs.
    now: Instant,
}

/// Things the resolver worked around, counted as they happen and taken by the daemon after each
/// record (`collector_cgroup_paths_truncated_total`, `collector_records_unjoined_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolveCounts {
    /// cgroup paths cut by the kernel, resolved from the tree instead.
    pub truncated_paths: u64,
    /// OOM kills and signals sent out without the exit they waited for.
    pub unjoined: u64,
}

impl RecordResolver {
    /// A resolver over `cgroups`, naming OOM cgroups from the `memory` tree.
    pub fn new(cgroups: Resolver, memory: CgroupTree) -> Self {
        // SAFETY: sysconf has no preconditions.
        let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        Self {
            clock: BootClock::now(),
            cgroups,
            memory,
            page_size,
            waiting: VecDeque::new(),
            early_victims: VecDeque::new(),
            stops: StopTracker::default(),
            counts: ResolveCounts::default(),
            kernel_log: Patterns::new(),
            backlog: VecDeque::new(),
            now: Instant::now(),
        }
    }

    /// Re-reads the boot-to-wall clock offset (it moves with NTP steps and suspend).
    pub fn refresh_clock(&mut self) {
        self.clock = self.clock.refreshed();
    }

    /// What was counted since the last call, and zero from now on.
    pub const fn take_counts(&mut self) -> ResolveCounts {
        std::mem::replace(&mut self.counts, ResolveCounts { truncated_paths: 0, unjoined: 0 })
    }

    /// Stop requests forgotten before their exit came ([`stop::STOP_REQUESTS_CAP`] were pending).
    pub const fn stops_evicted(&self) -> u64 {
        self.stops.evicted
    }

    /// The cgroup registry.
    pub const fn cgroups(&self) -> &Resolver {
        &self.cgroups
    }

    /// Resolves one kernel record into zero or more records, handed to `emit`
    /// in the order things happened: an OOM kill waits for its victim's exit,
    /// and a signal whose target is already gone waits for the target's exit,
    /// which names its cgroup. [`Self::push`] calls it once the cgroups it names are known.
    fn resolve(&mut self, kernel: &KernelRecord, now: Instant, emit: &mut impl FnMut(Record)) {
        self.now = now;
        let record = match kernel {
            KernelRecord::Exit(record, signal) => {
                let mut exit = self.exit(record, signal.as_ref());
                self.stops.exit(&mut exit, record.tid);
                self.join_exit(exit, now, emit);
                return;
            }
            KernelRecord::OomKill(oom) => {
                let mut oom = self.oom(oom);
                match self.early_victims.iter().position(|(_, exit)| exit.pid == oom.pid) {
                    Some(at) => {
                        if let Some((_, exit)) = self.early_victims.remove(at) {
                            self.fill_victim(&mut oom, &exit);
                        }
                    }
                    None => {
                        self.wait(now, Record::OomKill(Box::new(oom)), emit);
                        return;
                    }
                }
                Record::OomKill(Box::new(oom))
            }
            KernelRecord::Signal(record) => {
                let exe = c_str(&record.sender_exe);
                let signal = self.signal(record.header.boot_ns, &record.info, (!exe.is_empty()).then_some(exe));
                // Before the wait below: the exit the signal asked for may be next.
                self.stops.signal(&signal);
                if signal.target_cgroup_path.is_none() {
                    self.wait(now, Record::Signal(Box::new(signal)), emit);
                    return;
                }
                Record::Signal(Box::new(signal))
            }
            KernelRecord::CgroupMkdir(change) => {
                let change = self.change(change);
                self.cgroups.created(change.cgroup_id, &change.cgroup_path, now);
                Record::CgroupMkdir(Box::new(change))
            }
            KernelRecord::CgroupRmdir(change) => {
                let change = self.change(change);
                self.cgroups.removed(change.cgroup_id, &change.cgroup_path, now);
                Record::CgroupRmdir(Box::new(change))
            }
            KernelRecord::CgroupAttach(attach) => {
                let change = self.change(attach);
                Record::CgroupAttach(Box::new(CgroupAttach {
                    time: change.time,
                    pid: attach.pid,
                    comm: escape_bytes(c_str(&attach.comm)),
                    cgroup_id: change.cgroup_id,
                    cgroup_path: change.cgroup_path,
                    identity: change.identity,
                }))
            }
            KernelRecord::Health(health) => match self.health(health) {
                Some(record) => record,
                None => return,
            },
        };
        emit(record);
    }

    /// Sends out records whose exit did not come in time, and forgets old early exits.
    pub fn expire(&mut self, now: Instant, emit: &mut impl FnMut(Record)) {
        while self.waiting.front().is_some_and(|(at, _)| now.duration_since(*at) >= OOM_EXIT_WAIT) {
            self.emit_oldest(emit);
        }
        while self.early_victims.front().is_some_and(|(at, _)| now.duration_since(*at) >= OOM_EXIT_WAIT) {
            self.early_victims.pop_front();
        }
    }

    /// Sends out everything still waiting (at shutdown).
    pub fn flush(&mut self, emit: &mut impl FnMut(Record)) {
        self.flush_backlog(emit);
        while !self.waiting.is_empty() {
            self.emit_oldest(emit);
        }
    }

    /// Holds `record` until its process's exit, within a bounded queue.
    fn wait(&mut self, now: Instant, record: Record, emit: &mut impl FnMut(Record)) {
        if self.waiting.len() >= PENDING_CAP {
            self.emit_oldest(emit);
        }
        self.waiting.push_back((now, record));
    }

    fn emit_oldest(&mut self, emit: &mut impl FnMut(Record)) {
        if let Some((_, mut record)) = self.waiting.pop_front() {
            self.counts.unjoined += 1;
            if let Record::OomKill(oom) = &mut record
                && let Some(at) = &oom.oom_cgroup_path
            {
                oom.scope = Some(scope_of(at, &oom.identity));
            }
            emit(record);
        }
    }

    /// Completes an OOM kill with what its victim's exit record knows.
    fn fill_victim(&self, oom: &mut OomKill, exit: &Exit) {
        oom.cgroup_id = Some(exit.cgroup_id);
        oom.cgroup_path.clone_from(&exit.cgroup_path);
        oom.identity = exit.identity.clone();
        oom.main_process = exit.main_process;
        if oom.comm.is_none() {
            oom.comm = Some(exit.comm.clone());
        }
        // The trigger's cgroup could not tell: try the victim's, if it still exists.
        if !oom.scope_known
            && oom.oom_cgroup_path.is_none()
            && oom.scope.is_none()
            && let Some(path) = &exit.cgroup_path
        {
            self.apply_inference(oom, path);
        }
        if let Some(at) = &oom.oom_cgroup_path {
            oom.scope = Some(scope_of(at, &oom.identity));
        }
    }

    /// An exit: completes what waited for it (its OOM kill, signals to it), then goes out itself.
    fn join_exit(&mut self, exit: Exit, now: Instant, emit: &mut impl FnMut(Record)) {
        let mut joined_oom = false;
        let mut at = 0;
        while at < self.waiting.len() {
            let waits_for_this = match &self.waiting[at].1 {
                Record::OomKill(oom) => exit.oom_killed && oom.pid == exit.pid,
                Record::Signal(signal) => signal.target_pid == exit.pid,
                _ => false,
            };
            if !waits_for_this {
                at += 1;
                continue;
            }
            if let Some((_, mut record)) = self.waiting.remove(at) {
                match &mut record {
                    Record::OomKill(oom) => {
                        self.fill_victim(oom, &exit);
                        joined_oom = true;
                    }
                    Record::Signal(signal) => {
                        signal.target_cgroup_path.clone_from(&exit.cgroup_path);
                        signal.identity = exit.identity.clone();
                    }
                    _ => {}
                }
                emit(record);
            }
        }
        if exit.oom_killed && !joined_oom {
            // On another CPU the victim can exit before its OOM kill is reported.
            if self.early_victims.len() >= PENDING_CAP {
                self.early_victims.pop_front();
            }
            self.early_victims.push_back((now, exit.clone()));
        }
        emit(Record::Exit(Box::new(exit)));
    }

    fn path(&mut self, id: u64) -> Option<String> {
        self.cgroups.path(id, self.now).map(str::to_owned)
    }

    /// The path of cgroup `id` and the pod and container its path names.
    fn place(&mut self, id: u64) -> (Option<String>, Identity) {
        match self.cgroups.get(id, self.now) {
            Some(entry) => (Some(entry.path.clone()), identity_of(entry.identity.as_ref())),
            None => (None, Identity::default()),
        }
    }

    fn exit(&mut self, exit: &ExitRecord, signal: Option<&SignalInfo>) -> Exit {
        let status = ExitStatus::from_raw(exit.exit_status);
        // The last fatal signal names the sender only if it is the one that killed.
        let sender = match (status.signal, signal) {
            (Some(sig), Some(info)) if info.sig == sig => self.sender(info, None),
            _ => None,
        };
        let (cgroup_path, identity) = self.place(exit.cgroup_id);
        Exit {
            time: self.clock.wall(exit.header.boot_ns),
            pid: exit.pid,
            ppid: exit.ppid,
            comm: escape_bytes(c_str(&exit.comm)),
            exit_code: status.code,
            signal: status.signal,
            core_dumped: status.core_dumped,
            cgroup_id: exit.cgroup_id,
            cgroup_path,
            oom_killed: exit.flags & exit_flags::OOM_VICTIM != 0,
            sender,
            // Pid 1 of a pid namespace below the root is a container's main process.
            main_process: identity.container_id.is_some().then_some(exit.flags & exit_flags::NS_INIT != 0),
            identity,
            stop: None,
            stop_request: None,
        }
    }

    /// The process that sent a signal, with its executable's name where the kernel gave it.
    fn sender(&mut self, info: &SignalInfo, exe: Option<&[u8]>) -> Option<Process> {
        sent_by_process(info.code).then(|| Process {
            pid: info.sender_pid,
            comm: escape_bytes(c_str(&info.sender_comm)),
            exe: exe.map(escape_bytes),
            cgroup_path: self.path(info.sender_cgroup_id),
        })
    }

    fn oom(&mut self, oom: &OomRecord) -> OomKill {
        let stats = oom.flags & oom_flags::STATS != 0;
        let memcg = (oom.flags & oom_flags::MEMCG != 0).then_some(&oom.scope);
        let victim_comm = c_str(&oom.victim_comm);
        let trigger_path = self.path(oom.trigger_cgroup_id);
        let mut record = OomKill {
            time: self.clock.wall(oom.header.boot_ns),
            pid: oom.victim_pid,
            comm: (!victim_comm.is_empty()).then(|| escape_bytes(victim_comm)),
            // Filled from the victim's exit record.
            cgroup_id: None,
            cgroup_path: None,
            scope_known: oom.flags & oom_flags::SCOPE_KNOWN != 0,
            total_vm_kb: stats.then_some(oom.total_vm_kb),
            anon_rss_kb: stats.then_some(oom.anon_rss_kb),
            file_rss_kb: stats.then_some(oom.file_rss_kb),
            shmem_rss_kb: stats.then_some(oom.shmem_rss_kb),
            oom_score_adj: stats.then_some(oom.oom_score_adj),
            trigger_pid: oom.trigger_pid,
            trigger_comm: escape_bytes(c_str(&oom.trigger_comm)),
            oom_cgroup_path: memcg.and_then(|s| self.memory.find_among_ancestors(trigger_path.as_deref()?, s.memcg_id)),
            memory_limit_bytes: memcg.map(|s| s.limit_pages.saturating_mul(self.page_size)),
            identity: Identity::default(),
            main_process: None,
            scope: (oom.flags & oom_flags::SCOPE_KNOWN != 0 && oom.flags & oom_flags::MEMCG == 0)
                .then_some(OomScope::Node),
        };
        // The victim itself ran out: its cgroup is known now, before its exit
        // (which may come late on a loaded node) completes the record.
        if record.trigger_pid == record.pid {
            let (path, identity) = self.place(oom.trigger_cgroup_id);
            record.cgroup_id = Some(oom.trigger_cgroup_id);
            record.cgroup_path = path;
            record.identity = identity;
        }
        // Without the kernel's word, infer now, while the cgroups still exist: the
        // task whose allocation failed sits in the cgroup whose limit was hit.
        if !record.scope_known
            && let Some(path) = trigger_path
        {
            self.apply_inference(&mut record, &path);
        }
        record
    }

    /// Sets the OOM cgroup, limit and (node-wide) scope that the memory hierarchy suggests.
    fn apply_inference(&self, oom: &mut OomKill, path: &str) {
        match infer_oom_cgroup(&self.memory, path) {
            Inferred::Limit { path, limit } => {
                oom.oom_cgroup_path = Some(path);
                oom.memory_limit_bytes = Some(limit);
            }
            Inferred::NoLimit => oom.scope = Some(OomScope::Node),
            Inferred::Unknown => {}
        }
    }

    fn signal(&mut self, boot_ns: u64, info: &SignalInfo, exe: Option<&[u8]>) -> Signal {
        let target_cgroup_path = proc_cgroup(info.target_pid);
        let target_cgroup_path_identity =
            identity_of(target_cgroup_path.as_deref().and_then(crate::cgroup::layout::parse).as_ref());
        Signal {
            time: self.clock.wall(boot_ns),
            signal: info.sig,
            signal_name: signal_name(info.sig),
            code: info.code,
            sender: self.sender(info, exe),
            target_pid: info.target_pid,
            target_comm: escape_bytes(c_str(&info.target_comm)),
            target_cgroup_path,
            identity: target_cgroup_path_identity,
            group: info.group != 0,
            result: SignalResult::from_code(info.result),
        }
    }

    fn change(&mut self, change: &CgroupRecord) -> CgroupChange {
        let len = change.path_len as usize;
        let cgroup_path = if len < PATH_CAP {
            escape_bytes(&change.path[..len])
        } else {
            // The kernel cut the path: the directory itself has the whole name.
            self.counts.truncated_paths += 1;
            self.path(change.cgroup_id).unwrap_or_else(|| escape_bytes(c_str(&change.path)))
        };
        let identity = identity_of(crate::cgroup::layout::parse(&cgroup_path).as_ref());
        CgroupChange {
            time: self.clock.wall(change.header.boot_ns),
            cgroup_id: change.cgroup_id,
            cgroup_path,
            identity,
        }
    }
}

/// The cgroup whose limit an OOM kill in `victim_path` hit, inferred where the
/// kernel could not say: of the victim's cgroup and its ancestors in the
/// memory hierarchy (runtimes use the same path in every hierarchy), the one
/// with a limit and the least headroom. Killing the victim freed the same
/// pages at every level, so the order of headroom survives the kill.
pub fn infer_oom_cgroup(memory: &CgroupTree, victim_path: &str) -> Inferred {
    // A cgroup already removed (the container ended) says nothing: that is not a node OOM.
    if !memory.root().join(victim_path.trim_start_matches('/')).is_dir() {
        return Inferred::Unknown;
    }
    let mut best: Option<(String, u64, u64)> = None;
    for here in crate::cgroup::ancestors(victim_path) {
        if let Some(limit) = memory.memory_limit(here) {
            let headroom = limit.limit.saturating_sub(limit.usage);
            // Nearest first: a tie goes to the deeper cgroup.
            if best.as_ref().is_none_or(|(_, _, least)| headroom < *least) {
                best = Some((here.to_owned(), limit.limit, headroom));
            }
        }
    }
    best.map_or(Inferred::NoLimit, |(path, limit, _)| Inferred::Limit { path, limit })
}

/// Where [`infer_oom_cgroup`] finds the limit an OOM kill hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inferred {
    /// This cgroup's limit, in bytes.
    Limit {
        /// The cgroup, relative to the memory hierarchy's root.
        path: String,
        /// Its limit.
        limit: u64,
    },
    /// No level has a limit: the node ran out of memory.
    NoLimit,
    /// The cgroup is gone; nothing can be said.
    Unknown,
}

/// The record identity of a parsed cgroup path.
fn identity_of(parsed: Option<&crate::cgroup::layout::Identity>) -> Identity {
    parsed.map_or_else(Identity::default, |parsed| Identity {
        container_id: parsed.container_id.clone(),
        pod_uid: parsed.pod_uid.clone(),
        ..Identity::default()
    })
}

/// Whether the cgroup at `path` (whose limit was hit) is the victim's container, its pod, or another cgroup.
fn scope_of(path: &str, victim: &Identity) -> OomScope {
    match crate::cgroup::layout::parse(path) {
        Some(at) if at.container_id.is_some() && at.container_id == victim.container_id => OomScope::Container,
        Some(at) if at.container_id.is_none() && at.pod_uid.is_some() && at.pod_uid == victim.pod_uid => OomScope::Pod,
        _ => OomScope::Cgroup,
    }
}

/// The v2 cgroup path of a live process, from `/proc/PID/cgroup`'s `0::` line.
fn proc_cgroup(pid: u32) -> Option<String> {
    let text = std::fs::read(format!("/proc/{pid}/cgroup")).ok()?;
    text.split(|&b| b == b'\n').find_map(|line| line.strip_prefix(b"0::").map(escape_bytes))
}
