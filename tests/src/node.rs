//! Node-level fixtures for the node-health tests: a loop-mounted ext4 that can be frozen, a
//! sysctl set for one test, and lines written to the kernel log. Each is a guard that puts the
//! node back as it was, also when the test fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::daemon::{StateDir, node_conditions};

/// Runs a command, failing with its stderr.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("{program} {}: {}: {}", args.join(" "), output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// An ext4 filesystem in a file, loop-mounted; unmounted (thawed first) and removed on drop.
pub struct LoopFs {
    image: PathBuf,
    mount: PathBuf,
    frozen: bool,
}

impl LoopFs {
    /// Makes a `megabytes` ext4 image named after `name` and mounts it.
    pub fn new(name: &str, megabytes: u64) -> Result<Self> {
        let base = std::env::temp_dir().join(format!("collector-{name}-{}", std::process::id()));
        let (image, mount) = (base.with_extension("img"), base.with_extension("mnt"));
        let file = fs::File::create(&image).with_context(|| format!("creating {}", image.display()))?;
        file.set_len(megabytes << 20)?;
        fs::create_dir_all(&mount)?;
        let fs = Self { image, mount, frozen: false };
        run("mkfs.ext4", &["-q", "-F", &fs.image.display().to_string()])?;
        run("mount", &["-o", "loop", &fs.image.display().to_string(), &fs.mount.display().to_string()])?;
        Ok(fs)
    }

    /// A filesystem whose directory `/d` names a file whose inode was cleared (`debugfs clri`),
    /// mounted `errors=remount-ro`: the first lookup of `/d/f` is an ext4 error, and the kernel
    /// remounts it read-only. It also holds `inner.img`, 4 MiB, for a loop device whose writes
    /// fail once the filesystem is read-only.
    pub fn corrupted(name: &str) -> Result<Self> {
        let fs = Self::new(name, 16)?;
        fs::create_dir(fs.mount.join("d"))?;
        fs::write(fs.mount.join("d/f"), "row\n")?;
        fs::File::create(fs.mount.join("inner.img"))?.set_len(4 << 20)?;
        let (image, mount) = (fs.image.display().to_string(), fs.mount.display().to_string());
        run("umount", &[&mount])?;
        run("debugfs", &["-w", "-R", "clri d/f", &image])?;
        run("mount", &["-o", "loop,errors=remount-ro", &image, &mount])?;
        Ok(fs)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// `fsfreeze --freeze` (busybox takes only the long option): writers block in the kernel
    /// (state D) until [`Self::thaw`].
    pub fn freeze(&mut self) -> Result<()> {
        run("fsfreeze", &["--freeze", &self.mount.display().to_string()])?;
        self.frozen = true;
        Ok(())
    }

    /// `fsfreeze --unfreeze`.
    pub fn thaw(&mut self) -> Result<()> {
        if self.frozen {
            run("fsfreeze", &["--unfreeze", &self.mount.display().to_string()])?;
            self.frozen = false;
        }
        Ok(())
    }

    /// The loop device behind the mount (`loop3`), from the mount table (no findmnt in the VM).
    pub fn device(&self) -> Result<String> {
        let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
        let mount = self.mount.display().to_string();
        mounts
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(_, rest)| rest.split(' ').next() == Some(mount.as_str()))
            .find_map(|(source, _)| source.strip_prefix("/dev/"))
            .map(str::to_owned)
            .with_context(|| format!("no /dev source is mounted at {mount}"))
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if let Err(err) = self.thaw() {
            eprintln!("cleanup: {err:#}");
        }
        if let Err(err) = run("umount", &["-l", &self.mount.display().to_string()]) {
            eprintln!("cleanup: {err:#}");
        }
        let _ = fs::remove_dir(&self.mount);
        let _ = fs::remove_file(&self.image);
    }
}

/// A loop device over a file, detached on drop.
pub struct LoopDevice {
    device: String,
}

impl LoopDevice {
    /// `losetup -f --show --direct-io=on FILE`: its writes go straight to the file's blocks, so
    /// they fail when its filesystem cannot take them, whatever the kernel caches (6.1 would
    /// otherwise accept them into the page cache and fail only the writeback).
    pub fn attach(file: &Path) -> Result<Self> {
        let output = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(file)
            .output()
            .context("cannot run losetup")?;
        if !output.status.success() {
            bail!("losetup {}: {}", file.display(), String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(Self { device: String::from_utf8_lossy(&output.stdout).trim().to_owned() })
    }

    /// The device's path, `/dev/loop4`.
    pub fn path(&self) -> &str {
        &self.device
    }

    /// One direct 4 KiB write at sector 0, which fails when the backing file's filesystem is
    /// read-only; whether it failed.
    pub fn write_fails(&self) -> Result<bool> {
        let status = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k", "count=1", "oflag=direct", "status=none"])
            .arg(format!("of={}", self.device))
            .stderr(std::process::Stdio::null())
            .status()?;
        Ok(!status.success())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(err) = run("losetup", &["-d", &self.device]) {
            eprintln!("cleanup: {err:#}");
        }
    }
}

/// A sysctl (`/proc/sys/...`) set for the life of the guard, then restored.
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    /// Sets `name` (`kernel.hung_task_timeout_secs`) to `value`.
    pub fn set(name: &str, value: &str) -> Result<Self> {
        let path = Path::new("/proc/sys").join(name.replace('.', "/"));
        let old = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))?;
        Ok(Self { path, old: old.trim().to_owned() })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(err) = fs::write(&self.path, &self.old) {
            eprintln!("cleanup: cannot restore {} to {}: {err}", self.path.display(), self.old);
        }
    }
}

/// Writes `line` to the kernel log at level `level` (`2` critical, `3` error), as a driver's
/// printk would appear: the `printk/console` tracepoint sees it.
pub fn kmsg(level: u8, line: &str) -> Result<()> {
    fs::write("/dev/kmsg", format!("<{level}>{line}\n")).context("writing /dev/kmsg")
}

/// The line number and the `PID (comm)` in `ext4 error on DEVICE in ext4_lookup (line N), met by
/// process PID (comm)`, the FilesystemError message for a lookup of a cleared inode; none if
/// `message` says anything else.
pub fn ext4_lookup_error<'a>(message: &'a str, device: &str) -> Option<(u32, &'a str)> {
    let rest = message.strip_prefix(&format!("ext4 error on {device} in ext4_lookup (line "))?;
    let (line, process) = rest.split_once("), met by process ")?;
    Some((line.parse().ok()?, process))
}

/// The events about the Node `test-node` (the daemon harness's node) with `reason`.
pub fn node_events<'a>(events: &'a [Value], reason: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["involvedObject"]["kind"] == "Node" && e["involvedObject"]["name"] == "test-node")
        .filter(|e| e["reason"] == reason)
        .collect()
}

/// The node condition `kind` as `collector events --conditions` shows it, once its status is
/// `status` (`True`, `False`).
pub fn wait_condition(state: &StateDir, kind: &str, status: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let conditions = node_conditions(state.path())?;
        if let Some(found) = conditions.iter().find(|c| c["type"] == kind && c["status"] == status) {
            return Ok(found.clone());
        }
        if Instant::now() > deadline {
            bail!("{kind} did not become {status} within {timeout:?}: {conditions:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
