//! The host's cgroup hierarchies as the kubelet sees them: where pod cgroups live,
//! where their memory limit goes, and how test pods' cgroup dirs are removed.
//!
//! Hybrid hosts (v1 controllers plus a controller-less cgroup2 at
//! `/sys/fs/cgroup/unified`) keep memory limits in v1; pure v2 hosts in `memory.max`.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

/// Lock file serialising the removal of shared ancestors (`/kubepods/burstable`,
/// `/kubepods`) with pod and container creation, across threads and test processes
/// (nextest runs each test in its own), so one test's cleanup never removes a parent
/// that runc is about to create a child in for a test running in parallel.
const KUBEPODS_LOCK: &str = "/tmp/ctrd.kubepods.lock";

/// A held `flock` on [`KUBEPODS_LOCK`]; released when dropped.
#[derive(Debug)]
pub(crate) struct KubepodsLock {
    _file: Option<fs::File>,
}

impl KubepodsLock {
    /// Shared for creators of cgroups, exclusive for the remover of ancestors. Locking
    /// is best effort: without the lock file the worst case is a rare failed RunPodSandbox.
    pub(crate) fn acquire(exclusive: bool) -> Self {
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(KUBEPODS_LOCK).ok();
        if let Some(f) = &file {
            let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
            // SAFETY: flock(2) on an fd this File owns; blocks until granted.
            unsafe {
                libc::flock(f.as_raw_fd(), op);
            }
        }
        Self { _file: file }
    }
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mountpoint: PathBuf,
    /// 1 for a v1 hierarchy, 2 for cgroup2.
    pub version: u8,
    /// v1 controllers bound to it (`memory`, `name=systemd`, ...); empty for cgroup2.
    pub controllers: Vec<String>,
}

impl Hierarchy {
    /// The directory of `cgroup` (an absolute cgroup path like `/kubepods/pod1`) in this hierarchy.
    pub fn dir(&self, cgroup: &str) -> PathBuf {
        self.mountpoint.join(cgroup.trim_start_matches('/'))
    }
}

/// Every cgroup hierarchy mounted in this mount namespace, each once.
pub fn hierarchies() -> Result<Vec<Hierarchy>> {
    let text = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// v1 mount options that are not controllers.
const NON_CONTROLLER_OPTIONS: &[&str] =
    &["rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode", "favordynmods"];

fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut seen_devices = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(device), Some(root), Some(mountpoint), Some(fstype), Some(superopts)) =
            (left.get(2), left.get(3), left.get(4), right.first(), right.get(2))
        else {
            continue;
        };
        let version = match *fstype {
            "cgroup" => 1,
            "cgroup2" => 2,
            _ => continue,
        };
        // A bind mount of a sub-tree, or a second mount of the same hierarchy, adds nothing.
        if *root != "/" || seen_devices.contains(device) {
            continue;
        }
        seen_devices.push(*device);
        let controllers = if version == 1 {
            superopts
                .split(',')
                .filter(|o| !NON_CONTROLLER_OPTIONS.contains(o))
                .filter(|o| !o.contains('=') || o.starts_with("name="))
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        out.push(Hierarchy { mountpoint: PathBuf::from(unescape_octal(mountpoint)), version, controllers });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = bytes.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(oct), 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where memory limits live on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryController {
    /// A v1 memory hierarchy at this mountpoint (`memory.limit_in_bytes`).
    V1(PathBuf),
    /// The cgroup2 tree at this mountpoint with the memory controller (`memory.max`).
    V2(PathBuf),
}

/// Finds the memory controller: a v1 `memory` hierarchy wins (hybrid hosts), else cgroup2.
pub fn memory_controller() -> Result<MemoryController> {
    let all = hierarchies()?;
    if let Some(h) = all.iter().find(|h| h.version == 1 && h.controllers.iter().any(|c| c == "memory")) {
        return Ok(MemoryController::V1(h.mountpoint.clone()));
    }
    let v2 = all.iter().find(|h| h.version == 2).ok_or_else(|| anyhow!("no memory cgroup hierarchy mounted"))?;
    let controllers =
        fs::read_to_string(v2.mountpoint.join("cgroup.controllers")).context("reading cgroup.controllers")?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        bail!("cgroup2 at {} has no memory controller", v2.mountpoint.display());
    }
    Ok(MemoryController::V2(v2.mountpoint.clone()))
}

/// The cgroup2 directory of `cgroup` (`/sys/fs/cgroup/unified/...` on hybrid hosts).
pub fn v2_dir(cgroup: &str) -> Result<PathBuf> {
    hierarchies()?
        .into_iter()
        .find(|h| h.version == 2)
        .map(|h| h.dir(cgroup))
        .ok_or_else(|| anyhow!("no cgroup2 hierarchy mounted"))
}

/// Puts a memory limit on `cgroup` (e.g. a pod's cgroup parent), creating the directory
/// the way the kubelet does if runc has not yet.
pub fn set_memory_limit(cgroup: &str, bytes: u64) -> Result<()> {
    let (dir, file) = match memory_controller()? {
        MemoryController::V1(root) => (root.join(cgroup.trim_start_matches('/')), "memory.limit_in_bytes"),
        MemoryController::V2(root) => (root.join(cgroup.trim_start_matches('/')), "memory.max"),
    };
    {
        let _lock = KubepodsLock::acquire(false);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let path = dir.join(file);
    fs::write(&path, bytes.to_string()).with_context(|| format!("writing {}", path.display()))
}

/// The memory limit in force on `cgroup`; `None` when unlimited.
pub fn memory_limit(cgroup: &str) -> Result<Option<u64>> {
    let path = match memory_controller()? {
        MemoryController::V1(root) => root.join(cgroup.trim_start_matches('/')).join("memory.limit_in_bytes"),
        MemoryController::V2(root) => root.join(cgroup.trim_start_matches('/')).join("memory.max"),
    };
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    let v: u64 = text.parse().with_context(|| format!("parsing {}: {text:?}", path.display()))?;
    // v1 reports "unlimited" as the largest page-aligned i64.
    Ok((v < (i64::MAX as u64 & !0xfff)).then_some(v))
}

/// Removes `cgroup` and everything below it in every hierarchy, deepest first, with
/// `rmdir` only; processes still inside are SIGKILLed first. Then removes the empty
/// `/kubepods...` ancestors. Returns the paths it could not remove.
pub(crate) fn remove_pod_tree(cgroup: &str) -> Vec<String> {
    let mut failed = Vec::new();
    let Ok(all) = hierarchies() else {
        return vec![format!("{cgroup}: cannot read mountinfo")];
    };
    for h in &all {
        let top = h.dir(cgroup);
        if !top.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        // Children come after parents in `dirs`; remove in reverse.
        for dir in dirs.iter().rev() {
            if let Err(e) = rmdir_killing(dir) {
                failed.push(format!("{}: {e}", dir.display()));
            }
        }
        let _lock = KubepodsLock::acquire(true);
        let mut parent = Path::new(cgroup).parent();
        while let Some(p) = parent {
            let Some(s) = p.to_str() else { break };
            if !s.starts_with("/kubepods") {
                break;
            }
            // A parent still in use by another pod is left alone.
            match fs::remove_dir(h.dir(s)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(_) => break,
            }
            parent = p.parent();
        }
    }
    failed
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}

fn rmdir_killing(dir: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                kill_procs(dir);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn kill_procs(dir: &Path) {
    let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<libc::pid_t>().ok()) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 80 0:32 /kubepods /mnt/bind rw,relatime - cgroup cgroup rw,memory
91 80 0:39 / /mnt/with\\040space rw - cgroup cgroup rw,pids
";

    #[test]
    fn mountinfo_lists_each_hierarchy_once() {
        let hs = parse_mountinfo(HYBRID);
        let summary: Vec<(String, u8, Vec<String>)> =
            hs.iter().map(|h| (h.mountpoint.display().to_string(), h.version, h.controllers.clone())).collect();
        assert_eq!(
            summary,
            vec![
                ("/sys/fs/cgroup/cpu".into(), 1, vec!["cpu".into()]),
                ("/sys/fs/cgroup/memory".into(), 1, vec!["memory".into()]),
                ("/sys/fs/cgroup/systemd".into(), 1, vec!["name=systemd".into()]),
                ("/sys/fs/cgroup/unified".into(), 2, vec![]),
                ("/mnt/with space".into(), 1, vec!["pids".into()]),
            ]
        );
    }

    #[test]
    fn hierarchy_dir_joins_absolute_cgroup_paths() {
        let h = Hierarchy { mountpoint: "/sys/fs/cgroup/unified".into(), version: 2, controllers: vec![] };
        assert_eq!(h.dir("/kubepods/pod1/abc"), PathBuf::from("/sys/fs/cgroup/unified/kubepods/pod1/abc"));
    }
}
