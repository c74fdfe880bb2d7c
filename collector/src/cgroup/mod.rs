//! cgroup resolver: cgroup ids to paths and pod identities.
//!
//! The kernel reports a cgroup as the inode number of its directory. The v2
//! tree is found from the mount table: at `/sys/fs/cgroup` on pure v2 hosts,
//! at `/sys/fs/cgroup/unified` on hybrid ones, where memory limits (and so the
//! cgroup an OOM kill names) live in the v1 memory hierarchy instead.

pub mod layout;
pub mod registry;
mod walker;

use std::{
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio::sync::Notify;

use self::{
    registry::{Entry, Registry, RegistryConfig, RegistryError, RegistryStats},
    walker::{Walk, Walker},
};
use crate::escape::escape_bytes;

/// A miss re-reads the tree at most this often, so a storm of records from
/// unknown cgroups cannot turn into a storm of directory walks.
const RESCAN_INTERVAL: Duration = Duration::from_millis(20);
/// After a walk, the next waits at least this many times as long as it took: records wait for
/// a walk, and a big tree (1,000 cgroups: about 15 ms here) must not hold them back for more
/// than a fifth of the time.
const RESCAN_PAUSE_PER_WALK: u32 = 4;

/// Reads a cgroup file opened with [`CgroupTree::open`] again, from its start, into `buf`.
/// cgroupfs writes the file afresh for a read at offset 0, so one descriptor serves every
/// reading without the path lookup an open costs (a fifth of the pressure sampler's time).
/// A read shorter than the buffer is the whole file: the kernel writes these files whole.
pub fn reread(file: &std::fs::File, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    buf.clear();
    let mut chunk = [0_u8; 4096];
    loop {
        let read = file.read_at(&mut chunk, buf.len() as u64)?;
        buf.extend_from_slice(chunk.get(..read).unwrap_or_default());
        if read < chunk.len() {
            return Ok(());
        }
    }
}

/// When the tree may be walked again after a walk that ended at `end` and took `took`.
fn next_walk(end: Instant, took: Duration) -> Instant {
    end + RESCAN_INTERVAL.max(took.saturating_mul(RESCAN_PAUSE_PER_WALK))
}

/// Errors finding the cgroup v2 tree.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// No memory controller hierarchy is mounted.
    #[error("no cgroup memory controller is mounted (neither a v1 memory hierarchy nor cgroup2)")]
    NoMemory,
    /// No cgroup2 file system is mounted.
    #[error("no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/self/mountinfo)")]
    NoV2,
    /// The mount table could not be read.
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] std::io::Error),
    /// The registry's configuration is invalid.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The thread that walks the tree could not start.
    #[error("cannot start the cgroup walker thread")]
    Walker(#[source] std::io::Error),
}

/// The cgroup at `path` and each of its ancestors, deepest first, up to the root (`/`):
/// `/a/b`, `/a`, `/`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path.trim_end_matches('/'));
    std::iter::from_fn(move || {
        let path = next?;
        next = if path.is_empty() { None } else { path.rfind('/').map(|cut| &path[..cut]) };
        Some(if path.is_empty() { "/" } else { path })
    })
}

/// Where a cgroup hierarchy is mounted.
#[derive(Clone, Debug)]
pub struct CgroupTree {
    root: PathBuf,
}

impl CgroupTree {
    /// Finds the v2 tree in this process's mount table.
    pub fn discover() -> Result<Self, CgroupError> {
        let table = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
        crate::mountinfo::find_fstype(&table, "cgroup2").map(|root| Self { root }).ok_or(CgroupError::NoV2)
    }

    /// Finds the tree that holds memory limits: the v1 memory hierarchy where
    /// one is mounted (hybrid hosts), else the v2 tree.
    pub fn discover_memory() -> Result<Self, CgroupError> {
        let table = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
        crate::mountinfo::find_v1_controller(&table, "memory")
            .or_else(|| crate::mountinfo::find_fstype(&table, "cgroup2"))
            .map(|root| Self { root })
            .ok_or(CgroupError::NoMemory)
    }

    /// The path of cgroup `id` among the cgroup at `path` (relative to this tree) and its
    /// ancestors, deepest first. The memory cgroup whose limit an OOM kill hit is always the
    /// allocating task's own or an ancestor (runtimes use the same path in every hierarchy), so
    /// a few `stat`s find it where a walk of the whole tree would stall the event loop.
    pub fn find_among_ancestors(&self, path: &str, id: u64) -> Option<String> {
        ancestors(path)
            .find(|here| std::fs::metadata(self.root.join(here.trim_start_matches('/'))).is_ok_and(|m| m.ino() == id))
            .map(str::to_owned)
    }

    /// The limit and usage of the memory cgroup at `path` (relative to this
    /// tree), in bytes; none without a finite limit. Reads v1's
    /// `memory.limit_in_bytes`/`memory.usage_in_bytes` or v2's `memory.max`/`memory.current`.
    pub fn memory_limit(&self, path: &str) -> Option<MemoryLimit> {
        let read = |file: &str| self.read(path, file);
        let number = |text: String| text.trim().parse::<u64>().ok();
        let (limit, usage) = match read("memory.limit_in_bytes") {
            Some(v1) => (number(v1)?, read("memory.usage_in_bytes").and_then(number)?),
            None => (read("memory.max").and_then(number)?, read("memory.current").and_then(number)?),
        };
        // v1 writes "no limit" as a huge page-aligned number; v2 as "max" (no number).
        (limit < UNLIMITED_V1).then_some(MemoryLimit { limit, usage })
    }

    /// The v2 cgroup at `path`'s CPU limit (`cpu.max`) in millicores; none when unlimited.
    pub fn cpu_limit_millicores(&self, path: &str) -> Option<u64> {
        parse_cpu_max(&self.read(path, "cpu.max")?)
    }

    /// The interface file `file` of the cgroup at `path` (relative to this tree); none if it
    /// cannot be read (the cgroup went away, or this kernel lacks the file).
    pub fn read(&self, path: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.file_path(path, file)).ok()
    }

    /// Opens a file of a cgroup for reading, to be read again with [`reread`].
    pub fn open(&self, path: &str, file: &str) -> std::io::Result<std::fs::File> {
        std::fs::File::open(self.file_path(path, file))
    }

    fn file_path(&self, path: &str, file: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/')).join(file)
    }

    /// The tree mounted at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every cgroup in the tree as (id, path relative to the root).
    ///
    /// Directories that vanish during the walk are skipped: containers come
    /// and go while we read.
    pub fn walk(&self) -> Vec<(u64, String)> {
        let mut found = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            found.push((meta.ino(), self.relative(&dir)));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        found
    }

    /// The escaped path of `dir` relative to the root, `/` for the root itself.
    fn relative(&self, dir: &Path) -> String {
        let rel = dir.strip_prefix(&self.root).unwrap_or(dir);
        format!("/{}", escape_bytes(rel.as_os_str().as_bytes()))
    }
}

/// `cpu.max` (`<quota> <period>` in µs, or `max <period>`) as millicores; none when unlimited.
fn parse_cpu_max(text: &str) -> Option<u64> {
    let mut fields = text.split_whitespace();
    let quota: u64 = fields.next()?.parse().ok()?;
    let period: u64 = fields.next()?.parse().ok().filter(|period| *period > 0)?;
    Some(quota.saturating_mul(1000) / period)
}

/// v1 reports an unlimited memory cgroup as `PAGE_COUNTER_MAX` pages, about 2^63 bytes.
const UNLIMITED_V1: u64 = 1 << 62;

/// A memory cgroup's limit and usage, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    /// `memory.max` or `memory.limit_in_bytes`.
    pub limit: u64,
    /// `memory.current` or `memory.usage_in_bytes`.
    pub usage: u64,
}

/// Resolves cgroup ids to paths and identities; an unknown id can ask for the tree to be
/// re-read, which happens on the walker's thread while the records that need it wait.
#[derive(Debug)]
pub struct Resolver {
    registry: Registry,
    walker: Walker,
    /// No walk on a miss before this.
    next_scan: Instant,
    /// Walks taken in.
    walks: u64,
}

impl Resolver {
    /// A resolver that has read the whole tree once (on the caller's thread: at start-up).
    pub fn new(tree: CgroupTree, config: RegistryConfig) -> Result<Self, CgroupError> {
        let started = Instant::now();
        let found = tree.walk();
        let walker = Walker::spawn(tree).map_err(CgroupError::Walker)?;
        let mut resolver = Self { registry: Registry::new(config)?, walker, next_scan: started, walks: 0 };
        resolver.apply(Walk { found, started, ended: Instant::now() });
        Ok(resolver)
    }

    fn apply(&mut self, walk: Walk) {
        let took = walk.ended.duration_since(walk.started);
        tracing::debug!("read the cgroup tree: {} cgroups in {took:?}", walk.found.len());
        for (id, path) in walk.found {
            self.registry.insert(id, &path, walk.started);
        }
        self.walks += 1;
        self.next_scan = next_walk(walk.ended, took);
    }

    /// Whether cgroup `id` is known at `now` (live, or removed less than the tombstone time
    /// ago); not counted as a lookup.
    pub fn knows(&self, id: u64, now: Instant) -> bool {
        self.registry.contains(id, now)
    }

    /// Asks for the tree to be re-read because an id is unknown. True while a walk is running,
    /// which the asker should wait for; false when it is too soon after the last one.
    pub fn want_walk(&mut self, now: Instant) -> bool {
        self.walker.in_flight() || (now >= self.next_scan && self.walker.start())
    }

    /// Takes a finished walk into the registry; with `block`, waits for the running one.
    /// True if a walk was taken (or the walker is gone), so what waited for it may go on.
    pub fn walk_finished(&mut self, block: bool) -> bool {
        if !self.walker.in_flight() {
            return false;
        }
        if let Some(walk) = self.walker.finished(block) {
            self.apply(walk);
        }
        !self.walker.in_flight()
    }

    /// Notified each time a walk finishes: the event loop then calls [`Self::walk_finished`].
    pub fn walk_done(&self) -> Arc<Notify> {
        self.walker.done()
    }

    /// The cgroup `id`, if it exists or was removed less than the tombstone time before `now`.
    pub fn get(&mut self, id: u64, now: Instant) -> Option<&Entry> {
        self.registry.get(id, now)
    }

    /// The path of cgroup `id`, if known at `now`.
    pub fn path(&mut self, id: u64, now: Instant) -> Option<&str> {
        self.get(id, now).map(|entry| entry.path.as_str())
    }

    /// Records a cgroup the kernel reported created.
    pub fn created(&mut self, id: u64, path: &str, now: Instant) {
        self.registry.insert(id, path, now);
    }

    /// Records a cgroup the kernel reported removed: it stays resolvable for the tombstone time.
    pub fn removed(&mut self, id: u64, path: &str, now: Instant) {
        // One created and removed between two reads is still worth a tombstone.
        if self.registry.get(id, now).is_none() {
            self.registry.insert(id, path, now);
        }
        self.registry.remove(id, now);
    }

    /// Lookup, hit, miss, eviction and walk counts.
    pub fn stats(&self) -> RegistryStats {
        RegistryStats { walks: self.walks, ..self.registry.stats() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reread_sees_the_file_as_it_is_now_however_long() {
        let path = std::env::temp_dir().join(format!("collector-reread-{}", std::process::id()));
        std::fs::write(&path, "some avg10=0.00 total=1\n").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut buf = Vec::new();
        reread(&file, &mut buf).unwrap();
        assert_eq!(buf, b"some avg10=0.00 total=1\n");
        let long = "x".repeat(4096 * 2 + 17);
        std::fs::write(&path, &long).unwrap();
        reread(&file, &mut buf).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(buf, long.as_bytes());
    }

    #[test]
    fn a_slow_walk_waits_four_times_as_long_before_the_next() {
        let end = Instant::now();
        assert_eq!(next_walk(end, Duration::from_millis(1)), end + RESCAN_INTERVAL);
        assert_eq!(next_walk(end, Duration::from_millis(15)), end + Duration::from_millis(60));
    }

    #[test]
    fn reads_cpu_max_as_millicores() {
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(500));
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2000));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("10000 0\n"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn walks_a_tree_with_inode_ids_and_escaped_relative_paths() {
        let dir = std::env::temp_dir().join(format!("collector-walk-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::create_dir_all(dir.join("odd\nname")).unwrap();
        let tree = CgroupTree::at(&dir);
        let mut found = tree.walk();
        found.sort_by(|x, y| x.1.cmp(&y.1));
        let ino = |p: &str| std::fs::metadata(dir.join(p)).unwrap().ino();
        assert_eq!(
            found,
            vec![
                (std::fs::metadata(&dir).unwrap().ino(), "/".to_owned()),
                (ino("a"), "/a".to_owned()),
                (ino("a/b"), "/a/b".to_owned()),
                (ino("odd\nname"), "/odd\\x0aname".to_owned()),
            ]
        );
        assert_eq!(ancestors("/a/b/").collect::<Vec<_>>(), ["/a/b", "/a", "/"]);
        assert_eq!(ancestors("/").collect::<Vec<_>>(), ["/"]);
        // The memory cgroup of an OOM kill, among the allocating task's ancestors.
        assert_eq!(tree.find_among_ancestors("/a/b", ino("a")), Some("/a".to_owned()));
        assert_eq!(tree.find_among_ancestors("/a/b/", ino("a/b")), Some("/a/b".to_owned()));
        assert_eq!(tree.find_among_ancestors("/a/b", ino("")), Some("/".to_owned()));
        assert_eq!(tree.find_among_ancestors("/a/b", ino("odd\nname")), None, "not an ancestor");
        assert_eq!(tree.find_among_ancestors("/gone/b", ino("a")), None);
        let mut resolver = Resolver::new(tree, RegistryConfig::default()).unwrap();
        assert_eq!(resolver.path(ino("a/b"), Instant::now()), Some("/a/b"));
        std::fs::create_dir(dir.join("late")).unwrap();
        assert!(!resolver.knows(ino("late"), Instant::now()));
        assert!(!resolver.want_walk(Instant::now()), "too soon after the first walk");
        std::thread::sleep(resolver.next_scan.saturating_duration_since(Instant::now()));
        assert!(resolver.want_walk(Instant::now()));
        assert!(resolver.walker.in_flight());
        assert!(resolver.walk_finished(true));
        assert!(!resolver.walker.in_flight());
        assert_eq!(resolver.path(ino("late"), Instant::now()), Some("/late"), "the walk re-read the tree");
        assert_eq!(resolver.path(u64::MAX, Instant::now()), None);
        assert_eq!(resolver.stats().misses, 1, "only u64::MAX missed: knows() is not a lookup");
        assert_eq!(resolver.stats().walks, 2, "at start-up, and the one asked for");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
