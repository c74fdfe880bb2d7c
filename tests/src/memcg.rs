//! A cgroup with a memory limit, made the way container runtimes make one: the
//! same relative path in the cgroup v2 tree and, where a v1 memory hierarchy is
//! mounted (hybrid hosts), in that hierarchy too. Processes join both; the limit
//! goes where limits live (v1 `memory.limit_in_bytes`, else v2 `memory.max`).
//! Removed with its processes when the guard drops.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};

use crate::cgroupfs::{self, MemoryController};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One cgroup in the v2 tree and in the v1 memory hierarchy, if any.
#[derive(Debug)]
pub struct MemCgroup {
    rel: String,
    v2: PathBuf,
    /// The directory in the v1 memory hierarchy; `None` on pure v2 hosts.
    v1: Option<PathBuf>,
    id: u64,
}

impl MemCgroup {
    /// Creates `/collector-test-<name>-<pid>-<n>` at the top of the hierarchies.
    pub fn new(name: &str) -> Result<Self> {
        let rel = format!("/collector-test-{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        Self::create(rel)
    }

    /// Creates `<self>/<name>`. On pure v2 it first enables the memory controller
    /// for this cgroup's children, as the kubelet does for pod cgroups, so the
    /// child is a memory cgroup of its own.
    pub fn child(&self, name: &str) -> Result<Self> {
        if self.v1.is_none() {
            let control = self.v2.join("cgroup.subtree_control");
            fs::write(&control, "+memory").with_context(|| format!("enabling memory in {}", control.display()))?;
        }
        Self::create(format!("{}/{name}", self.rel))
    }

    fn create(rel: String) -> Result<Self> {
        let v2 = cgroupfs::v2_dir(&rel)?;
        let v1 = match cgroupfs::memory_controller()? {
            MemoryController::V1(root) => Some(root.join(rel.trim_start_matches('/'))),
            MemoryController::V2(_) => None,
        };
        fs::create_dir(&v2).with_context(|| format!("cannot create cgroup {}", v2.display()))?;
        // From here on the guard removes what exists.
        let made = Self { id: fs::metadata(&v2)?.ino(), rel, v2, v1 };
        if let Some(v1) = &made.v1 {
            fs::create_dir(v1).with_context(|| format!("cannot create cgroup {}", v1.display()))?;
        }
        Ok(made)
    }

    /// The path relative to the v2 root, as the collector prints it.
    pub fn path(&self) -> &str {
        &self.rel
    }

    /// The cgroup v2 id: the v2 directory's inode number.
    pub const fn id(&self) -> u64 {
        self.id
    }

    /// The v2 directory.
    pub fn dir(&self) -> &Path {
        &self.v2
    }

    /// Limits the memory of this cgroup and everything below it, without swap.
    pub fn set_memory_limit(&self, bytes: u64) -> Result<()> {
        let (file, swap) = match &self.v1 {
            Some(v1) => (v1.join("memory.limit_in_bytes"), v1.join("memory.memsw.limit_in_bytes")),
            None => (self.v2.join("memory.max"), self.v2.join("memory.swap.max")),
        };
        fs::write(&file, bytes.to_string()).with_context(|| format!("writing {}", file.display()))?;
        // Without swap accounting the file is absent and nothing can be swapped past the limit anyway.
        if swap.exists() {
            let value = if self.v1.is_some() { bytes.to_string() } else { "0".to_owned() };
            fs::write(&swap, value).with_context(|| format!("writing {}", swap.display()))?;
        }
        Ok(())
    }

    /// A command whose process joins this cgroup (in every hierarchy) before it execs,
    /// with core dumps off.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let mut dirs = vec![self.v2.as_path()];
        dirs.extend(self.v1.as_deref());
        crate::cgroup::command_in(program, &dirs)
    }

    /// Pids in the cgroup (v2).
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.v2.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills everything in the cgroup and removes its directories (children first
    /// must already be gone). Dropping the guard does the same.
    pub fn remove(mut self) -> Result<()> {
        self.remove_dirs()
    }

    fn remove_dirs(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in std::iter::once(self.v2.clone()).chain(self.v1.clone()) {
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() > deadline => bail!("cannot remove {}: {e}", dir.display()),
                    // Busy: processes still in it, or still exiting (they leave asynchronously).
                    Err(_) => {
                        for pid in self.pids() {
                            // SAFETY: kill has no memory-safety preconditions.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove_dirs() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Whether this kernel's `oom/mark_victim` reports the victim's memory (6.9+, 6.1.130+).
pub fn kernel_reports_victim_memory() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .filter_map(|dir| fs::read_to_string(format!("{dir}/events/oom/mark_victim/format")).ok())
        .any(|format| format.contains("total_vm"))
}

/// The victim memory fields of an `oom_kill` record, checked against what a
/// process that mapped `mapped` bytes in a cgroup limited to `limit` had: at
/// least that much mapped, some but at most the limit resident, the given
/// `oom_score_adj`. All null where the kernel does not report them.
pub fn victim_memory(record: &Value, mapped: u64, limit: u64, oom_score_adj: i64) -> Result<Value> {
    if !kernel_reports_victim_memory() {
        let fields = ["total_vm_kb", "anon_rss_kb", "file_rss_kb", "shmem_rss_kb", "oom_score_adj"];
        return Ok(fields.iter().map(|f| ((*f).to_owned(), Value::Null)).collect());
    }
    let kb = |field: &str| record[field].as_u64().with_context(|| format!("no {field} in {record}"));
    let (total_vm, anon) = (kb("total_vm_kb")?, kb("anon_rss_kb")?);
    let (file, shmem) = (kb("file_rss_kb")?, kb("shmem_rss_kb")?);
    ensure!(total_vm >= mapped >> 10, "total_vm_kb below the {mapped} bytes mapped: {record}");
    ensure!((1..=limit >> 10).contains(&anon), "anon_rss_kb not within the limit: {record}");
    // A binary run from an initramfs (tmpfs) counts as shared memory, not file.
    ensure!(file + shmem <= limit >> 10, "file_rss_kb + shmem_rss_kb above the limit: {record}");
    ensure!(record["oom_score_adj"] == oom_score_adj, "oom_score_adj not {oom_score_adj}: {record}");
    Ok(json!({
        "total_vm_kb": total_vm, "anon_rss_kb": anon, "file_rss_kb": file, "shmem_rss_kb": shmem,
        "oom_score_adj": oom_score_adj,
    }))
}
