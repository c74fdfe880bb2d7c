//! A fresh cgroup v2 directory for one test, removed when the guard drops.

use std::{
    ffi::CString,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The cgroup v2 mount point, from the mount table (hybrid hosts mount it at
/// /sys/fs/cgroup/unified).
pub fn v2_root() -> Result<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    collector::mountinfo::find_fstype(&table, "cgroup2").context("no cgroup2 mount in /proc/self/mountinfo")
}

/// A cgroup v2 directory that exists for the guard's lifetime.
#[derive(Debug)]
pub struct CgroupDir {
    dir: PathBuf,
    rel: String,
    id: u64,
}

impl CgroupDir {
    /// Creates `/collector-test-<name>-<pid>-<n>` under the v2 root.
    pub fn new(name: &str) -> Result<Self> {
        let root = v2_root()?;
        let rel = format!("/collector-test-{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = root.join(rel.trim_start_matches('/'));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create cgroup {}", dir.display()))?;
        let id = std::fs::metadata(&dir)?.ino();
        Ok(Self { dir, rel, id })
    }

    /// The path relative to the v2 root, as the collector prints it.
    pub fn path(&self) -> &str {
        &self.rel
    }

    /// The cgroup id: the directory's inode number.
    pub const fn id(&self) -> u64 {
        self.id
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A command whose process joins this cgroup before it execs.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        command_in(program, &[&self.dir])
    }

    /// Pids still in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Makes 601 exits in this cgroup (a shell and the 600 children it waits for) while process
    /// `pid` is stopped and cannot read its ring buffer, then runs `meanwhile`, then resumes
    /// `pid`: enough to fill a small ring before whatever `meanwhile` causes.
    pub fn exits_while_stopped<T>(&self, pid: i32, meanwhile: impl FnOnce() -> T) -> Result<T> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let status = self
            .command("sh")
            .map(|mut sh| sh.args(["-c", "i=0; while [ $i -lt 600 ]; do /bin/true; i=$((i+1)); done"]).status());
        let result = meanwhile();
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let status = status?.context("cannot run the exit loop")?;
        if !status.success() {
            bail!("the exit loop failed: {status}");
        }
        Ok(result)
    }

    /// Kills everything in the cgroup and waits until it is empty.
    pub fn kill_all(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if Instant::now() > deadline {
                bail!("cgroup {} did not empty", self.dir.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        let _ = self.kill_all();
        // Exiting processes leave the cgroup asynchronously: retry briefly.
        for _ in 0..200 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("warning: could not remove cgroup {}", self.dir.display());
    }
}

/// A command whose process, after fork and before exec, joins every cgroup in
/// `dirs` (one per hierarchy) and turns core dumps off, so that tests can
/// assert `core_dumped: false`.
pub fn command_in(program: impl AsRef<std::ffi::OsStr>, dirs: &[&Path]) -> Result<Command> {
    let files = dirs
        .iter()
        .map(|dir| CString::new(dir.join("cgroup.procs").into_os_string().into_encoded_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cmd = Command::new(program);
    // SAFETY: the closure only makes async-signal-safe calls (open, write,
    // close, setrlimit) on memory allocated before fork.
    unsafe {
        cmd.pre_exec(move || {
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &raw const no_core);
            for file in &files {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}
