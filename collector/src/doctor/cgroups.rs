//! The cgroup tree: how cgroups are mounted (v2, hybrid, v1), where the v2
//! tree is, and whether it is the host's whole tree, as the resolver needs
//! (paths are read relative to the mount point, and must be the kubelet's).

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::Check;
use crate::{escape::escape_bytes, mountinfo};

/// The inode number of the root directory of every cgroup hierarchy (kernfs
/// numbers its root first); a mount of a subtree, or a cgroup namespace's own
/// mount, shows another.
const ROOT_INODE: u64 = 1;

/// How cgroups are mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// cgroup v2 alone (the unified hierarchy).
    V2,
    /// v1 controllers beside a cgroup2 tree (`/sys/fs/cgroup/unified` with systemd).
    Hybrid,
    /// v1 only: the collector cannot run.
    V1,
    /// No cgroup file system at all.
    None,
}

impl CgroupMode {
    /// `v2`, `hybrid`, `v1` or `none`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::Hybrid => "hybrid",
            Self::V1 => "v1",
            Self::None => "none",
        }
    }
}

/// The cgroup mounts of a mount table.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Mounts {
    mode: CgroupMode,
    /// The first cgroup2 mount.
    v2: Option<PathBuf>,
    /// The v1 hierarchy with the memory controller, where memory limits live on hybrid hosts.
    memory_v1: Option<PathBuf>,
}

/// Finds the cgroup mounts in a `/proc/self/mountinfo` text.
pub(super) fn mounts(table: &str) -> Mounts {
    let v2 = mountinfo::find_fstype(table, "cgroup2");
    let v1 = mountinfo::find_fstype(table, "cgroup").is_some();
    let mode = match (v2.is_some(), v1) {
        (true, false) => CgroupMode::V2,
        (true, true) => CgroupMode::Hybrid,
        (false, true) => CgroupMode::V1,
        (false, false) => CgroupMode::None,
    };
    Mounts { mode, v2, memory_v1: mountinfo::find_v1_controller(table, "memory") }
}

/// What the mounted trees look like.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Tree {
    /// The inode number of the cgroup2 mount's root directory.
    v2_inode: Option<u64>,
    /// The same for the v1 memory hierarchy.
    memory_inode: Option<u64>,
    /// This process's v2 cgroup (`0::` in `/proc/self/cgroup`), and whether it is under the v2 mount.
    own: Option<(String, bool)>,
    /// Whether the v2 root has the kubelet's `kubepods` or `kubepods.slice`.
    kubepods: bool,
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|meta| meta.ino())
}

fn read_tree(mounts: &Mounts) -> Tree {
    let Some(v2) = &mounts.v2 else {
        return Tree { memory_inode: mounts.memory_v1.as_deref().and_then(inode), ..Tree::default() };
    };
    let own = std::fs::read("/proc/self/cgroup").ok().and_then(|text| {
        let line = text.split(|&b| b == b'\n').find_map(|line| line.strip_prefix(b"0::"))?;
        let path = Path::new(OsStr::from_bytes(line));
        let found = v2.join(path.strip_prefix("/").unwrap_or(path)).is_dir();
        Some((escape_bytes(line), found))
    });
    Tree {
        v2_inode: inode(v2),
        memory_inode: mounts.memory_v1.as_deref().and_then(inode),
        own,
        kubepods: v2.join("kubepods").is_dir() || v2.join("kubepods.slice").is_dir(),
    }
}

/// The cgroup check and the mode it found.
pub(super) struct Cgroups {
    pub(super) mode: Option<CgroupMode>,
    pub(super) check: Check,
}

/// Reads this process's mount table and the trees it names.
pub(super) fn check() -> Cgroups {
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(table) => {
            let mounts = mounts(&table);
            Cgroups { mode: Some(mounts.mode), check: verdict(&mounts, &read_tree(&mounts)) }
        }
        Err(err) => Cgroups {
            mode: None,
            check: Check::warn(NAME, format!("cannot read /proc/self/mountinfo: {err}"), "run with /proc mounted"),
        },
    }
}

const NAME: &str = "cgroups";
const MOUNT_HOST_TREE: &str = "mount the host's /sys/fs/cgroup into the pod (hostPath)";

fn shown(path: &Path) -> String {
    escape_bytes(path.as_os_str().as_encoded_bytes())
}

/// What the mounts and trees mean for the collector. Doubts are warnings: the
/// daemon runs, but may name cgroups by paths that are not the host's.
pub(super) fn verdict(mounts: &Mounts, tree: &Tree) -> Check {
    let v2 = match (&mounts.v2, mounts.mode) {
        (Some(v2), _) => v2,
        (None, CgroupMode::V1) => {
            return Check::fail(
                NAME,
                "cgroup v1 only (no cgroup2 mount): the collector needs cgroup v2, alone or beside v1",
                "boot the node with cgroup v2 (systemd.unified_cgroup_hierarchy=1) or the hybrid layout",
            );
        }
        (None, _) => return Check::fail(NAME, "no cgroup file system is mounted", MOUNT_HOST_TREE),
    };
    let mut doubts = Vec::new();
    if let Some(ino) = tree.v2_inode.filter(|&ino| ino != ROOT_INODE) {
        doubts.push(format!(
            "the cgroup2 mount at {} is not the hierarchy's root (inode {ino}, not {ROOT_INODE}): a subtree or a \
             cgroup namespace's view, so its paths are not the host's",
            shown(v2)
        ));
    }
    if let (Some(memory), Some(ino)) = (&mounts.memory_v1, tree.memory_inode.filter(|&ino| ino != ROOT_INODE)) {
        doubts.push(format!(
            "the v1 memory hierarchy at {} is not its root (inode {ino}, not {ROOT_INODE}), so OOM limits may be \
             misread",
            shown(memory)
        ));
    }
    if let Some((own, false)) = &tree.own {
        doubts.push(format!(
            "this process's cgroup {own} (from /proc/self/cgroup) is not under {}: the tree is not the one this \
             process lives in",
            shown(v2)
        ));
    }
    if !doubts.is_empty() {
        return Check::warn(NAME, doubts.join("; "), MOUNT_HOST_TREE);
    }
    let layout = match (mounts.mode, &mounts.memory_v1) {
        (CgroupMode::Hybrid, Some(memory)) => {
            format!("hybrid: cgroup2 at {}, memory controller at {}", shown(v2), shown(memory))
        }
        (mode, _) => format!("{}: cgroup2 at {}", mode.name(), shown(v2)),
    };
    let kubepods = if tree.kubepods { "; kubepods found" } else { "" };
    Check::ok(NAME, format!("{layout}; the host's tree{kubepods}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    /// This project's machine: systemd's hybrid layout.
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    /// Debian 12 and every recent distribution: cgroup2 alone.
    const V2: &str = "\
25 21 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    /// An old node booted with the legacy layout.
    const V1: &str = "\
25 21 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:5 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
";
    const NONE: &str = "22 1 0:21 / / rw - ext4 /dev/vda1 rw\n";

    fn host_tree() -> Tree {
        Tree {
            v2_inode: Some(1),
            memory_inode: Some(1),
            own: Some(("/kubepods.slice/x.scope".to_owned(), true)),
            kubepods: true,
        }
    }

    #[test]
    fn modes_from_the_mount_table() {
        let hybrid = mounts(HYBRID);
        assert_eq!(hybrid.mode, CgroupMode::Hybrid);
        assert_eq!(hybrid.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(hybrid.memory_v1.as_deref(), Some(Path::new("/sys/fs/cgroup/memory")));
        let v2 = mounts(V2);
        assert_eq!(
            (v2.mode, v2.v2.as_deref(), v2.memory_v1),
            (CgroupMode::V2, Some(Path::new("/sys/fs/cgroup")), None)
        );
        assert_eq!(mounts(V1).mode, CgroupMode::V1);
        assert_eq!(mounts(V1).v2, None);
        assert_eq!(mounts(NONE).mode, CgroupMode::None);
    }

    #[test]
    fn the_hosts_tree_is_ok() {
        let check = verdict(&mounts(HYBRID), &host_tree());
        assert_eq!(check.status, Status::Ok);
        assert_eq!(
            check.detail,
            "hybrid: cgroup2 at /sys/fs/cgroup/unified, memory controller at /sys/fs/cgroup/memory; the host's tree; \
             kubepods found"
        );
        let v2 = verdict(&mounts(V2), &Tree { memory_inode: None, kubepods: false, ..host_tree() });
        assert_eq!(v2.detail, "v2: cgroup2 at /sys/fs/cgroup; the host's tree");
    }

    #[test]
    fn no_v2_tree_fails() {
        let v1 = verdict(&mounts(V1), &Tree::default());
        assert_eq!(v1.status, Status::Fail);
        assert_eq!(
            v1.problem_line(),
            "cgroups: cgroup v1 only (no cgroup2 mount): the collector needs cgroup v2, alone or beside v1; fix: \
             boot the node with cgroup v2 (systemd.unified_cgroup_hierarchy=1) or the hybrid layout"
        );
        assert_eq!(
            verdict(&mounts(NONE), &Tree::default()).problem_line(),
            "cgroups: no cgroup file system is mounted; fix: mount the host's /sys/fs/cgroup into the pod (hostPath)"
        );
        assert!(!v1.blocks_startup(), "the cgroup resolver reports it when the daemon starts");
    }

    #[test]
    fn a_tree_that_may_not_be_the_hosts_is_a_warning() {
        let namespaced = Tree { v2_inode: Some(4026), own: Some(("/".to_owned(), true)), ..host_tree() };
        let check = verdict(&mounts(V2), &namespaced);
        assert_eq!(check.status, Status::Warn);
        assert_eq!(
            check.problem_line(),
            "cgroups: the cgroup2 mount at /sys/fs/cgroup is not the hierarchy's root (inode 4026, not 1): a subtree \
             or a cgroup namespace's view, so its paths are not the host's; fix: mount the host's /sys/fs/cgroup \
             into the pod (hostPath)"
        );
        let elsewhere =
            Tree { own: Some(("/user.slice/a.scope".to_owned(), false)), memory_inode: Some(7), ..host_tree() };
        assert_eq!(
            verdict(&mounts(HYBRID), &elsewhere).detail,
            "the v1 memory hierarchy at /sys/fs/cgroup/memory is not its root (inode 7, not 1), so OOM limits may be \
             misread; this process's cgroup /user.slice/a.scope (from /proc/self/cgroup) is not under \
             /sys/fs/cgroup/unified: the tree is not the one this process lives in"
        );
    }
}
