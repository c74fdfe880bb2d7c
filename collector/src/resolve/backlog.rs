//! Records that wait for a walk of the cgroup tree. A record from a cgroup the registry does not
//! know (its creation was not seen: the ring was full, or it predates a lost report) asks for
//! the tree to be re-read on the walker's thread and waits; every record after it waits too, so
//! that the cgroup changes they carry reach the registry in the kernel's order. The thread that
//! drains the ring goes on reading meanwhile.

use std::time::Instant;

use collector_common::{PATH_CAP, kind};

use super::RecordResolver;
use crate::{
    cgroup::Resolver,
    decode::KernelRecord,
    record::{Record, sent_by_process},
};

/// Records held while a walk runs, at most this many (about 2 MiB): past it the loop waits for
/// the walk, as it did when walks ran on it, and the ring holds what comes meanwhile.
pub const BACKLOG_CAP: usize = 4096;

impl RecordResolver {
    /// Resolves `kernel` now, or holds it (and all that follows) until the walk it needs.
    pub fn push(&mut self, kernel: KernelRecord, now: Instant, emit: &mut impl FnMut(Record)) {
        if self.backlog.is_empty() && !needs_walk(&mut self.cgroups, &kernel, now) {
            self.resolve(&kernel, now, emit);
            return;
        }
        self.backlog.push_back(kernel);
        if self.backlog.len() >= BACKLOG_CAP {
            self.cgroups.walk_finished(true);
            self.release_backlog(emit, false);
        }
    }

    /// Takes a finished walk and resolves what waited for it; the event loop calls this when
    /// the walker's [`crate::cgroup::Resolver::walk_done`] is notified.
    pub fn walk_finished(&mut self, emit: &mut impl FnMut(Record)) {
        if self.cgroups.walk_finished(false) {
            self.release_backlog(emit, false);
        }
    }

    /// Waits for a running walk and resolves every held record (at shutdown).
    pub(super) fn flush_backlog(&mut self, emit: &mut impl FnMut(Record)) {
        self.cgroups.walk_finished(true);
        self.release_backlog(emit, true);
    }

    /// Resolves held records in order, up to one that needs another walk (unless `all`).
    fn release_backlog(&mut self, emit: &mut impl FnMut(Record), all: bool) {
        // Read once: the walk just ended, and the records are resolved together.
        let now = Instant::now();
        while let Some(kernel) = self.backlog.front() {
            if !all && needs_walk(&mut self.cgroups, kernel, now) {
                break;
            }
            if let Some(kernel) = self.backlog.pop_front() {
                self.resolve(&kernel, now, emit);
            }
        }
        // A storm's backlog is megabytes: give it back once it is worked off.
        if self.backlog.is_empty() && self.backlog.capacity() > 64 {
            self.backlog.shrink_to(64);
        }
    }
}

/// Whether a cgroup `kernel` names is unknown and a walk (now running) may find it.
fn needs_walk(cgroups: &mut Resolver, kernel: &KernelRecord, now: Instant) -> bool {
    let ids = cgroup_ids(kernel);
    if ids == [0, 0] {
        return false;
    }
    ids.into_iter().any(|id| id != 0 && !cgroups.knows(id, now)) && cgroups.want_walk(now)
}

/// The cgroups resolving `kernel` looks up in the registry (0: none).
fn cgroup_ids(kernel: &KernelRecord) -> [u64; 2] {
    match kernel {
        KernelRecord::Exit(exit, signal) => [exit.cgroup_id, signal.map_or(0, |signal| signal.sender_cgroup_id)],
        KernelRecord::OomKill(oom) => [oom.trigger_cgroup_id, 0],
        KernelRecord::Signal(signal) if sent_by_process(signal.info.code) => [signal.info.sender_cgroup_id, 0],
        KernelRecord::Signal(_) => [0, 0],
        // Only a path the kernel cut is looked up; a whole one is taken as it is.
        KernelRecord::CgroupMkdir(change) | KernelRecord::CgroupRmdir(change) | KernelRecord::CgroupAttach(change) => {
            [if change.path_len as usize >= PATH_CAP { change.cgroup_id } else { 0 }, 0]
        }
        KernelRecord::Health(health) => match health.header.kind {
            kind::HUNG_TASK | kind::FS_ERROR => [health.cgroup_id, 0],
            _ => [0, 0],
        },
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::MetadataExt as _,
        path::PathBuf,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::cgroup::{CgroupTree, registry::RegistryConfig};

    /// A directory tree standing in for cgroupfs, removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("collector-backlog-{name}-{}", std::process::id()));
            std::fs::create_dir_all(dir.join("known")).unwrap();
            Self(dir)
        }

        fn ino(&self, path: &str) -> u64 {
            std::fs::metadata(self.0.join(path)).unwrap().ino()
        }

        /// A resolver over this tree that has walked it once, and `late` created after that
        /// walk, once a new walk may start.
        fn resolver_missing_late(&self) -> RecordResolver {
            let cgroups = Resolver::new(CgroupTree::at(&self.0), RegistryConfig::default()).unwrap();
            std::fs::create_dir(self.0.join("late")).unwrap();
            // Past the 20 ms between walks (a walk of three directories takes microseconds).
            std::thread::sleep(Duration::from_millis(50));
            RecordResolver::new(cgroups, CgroupTree::at(&self.0))
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn exit(pid: u32, cgroup_id: u64) -> KernelRecord {
        let mut exit = crate::decode::tests::exit_record();
        exit.pid = pid;
        exit.cgroup_id = cgroup_id;
        KernelRecord::Exit(exit, None)
    }

    /// (pid, cgroup path) of each exit emitted.
    fn exits(records: &[Record]) -> Vec<(u32, Option<String>)> {
        records
            .iter()
            .filter_map(|record| match record {
                Record::Exit(exit) => Some((exit.pid, exit.cgroup_path.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_record_from_an_unknown_cgroup_waits_for_the_walk_and_those_after_it_too() {
        let tree = Tree::new("wait");
        let mut resolver = tree.resolver_missing_late();
        let mut out = Vec::new();
        resolver.push(exit(1, tree.ino("late")), Instant::now(), &mut |record| out.push(record));
        resolver.push(exit(2, tree.ino("known")), Instant::now(), &mut |record| out.push(record));
        assert_eq!(exits(&out), [], "both wait: the second is known, but comes after the first");
        assert_eq!(resolver.backlog.len(), 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !resolver.backlog.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            resolver.walk_finished(&mut |record| out.push(record));
        }
        assert_eq!(exits(&out), [(1, Some("/late".to_owned())), (2, Some("/known".to_owned()))]);
        // Too soon for another walk: a cgroup nobody can find does not hold records back.
        resolver.push(exit(3, u64::MAX), Instant::now(), &mut |record| out.push(record));
        assert_eq!(exits(&out)[2..], [(3, None)]);
        assert_eq!(resolver.backlog.len(), 0);
    }

    #[test]
    fn shutdown_waits_for_the_running_walk() {
        let tree = Tree::new("flush");
        let mut resolver = tree.resolver_missing_late();
        let mut out = Vec::new();
        resolver.push(exit(1, tree.ino("late")), Instant::now(), &mut |record| out.push(record));
        resolver.flush(&mut |record| out.push(record));
        assert_eq!(exits(&out), [(1, Some("/late".to_owned()))]);
    }

    #[test]
    fn a_full_backlog_waits_for_the_walk_rather_than_grow() {
        let tree = Tree::new("full");
        let mut resolver = tree.resolver_missing_late();
        let mut out = Vec::new();
        resolver.push(exit(1, tree.ino("late")), Instant::now(), &mut |record| out.push(record));
        let known = tree.ino("known");
        for pid in 2..=u32::try_from(BACKLOG_CAP).unwrap() {
            resolver.push(exit(pid, known), Instant::now(), &mut |record| out.push(record));
        }
        assert_eq!(resolver.backlog.len(), 0);
        let exits = exits(&out);
        assert_eq!(exits.len(), BACKLOG_CAP);
        assert_eq!(exits[0], (1, Some("/late".to_owned())));
        assert!(exits.iter().enumerate().all(|(at, (pid, _))| *pid as usize == at + 1), "in order");
    }
}
