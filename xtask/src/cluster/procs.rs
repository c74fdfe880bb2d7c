//! Starting the cluster's processes in its network namespace, and stopping
//! them and everything they left (containers, cgroups, mounts) again.
//!
//! Each process is recorded in `<run>/pids/<name>`; a pid is only signalled
//! while its command line still names the binary, so a stale file after a
//! reboot never kills a stranger.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{Paths, net};

/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Starts `program args` inside the cluster's network namespace, detached
/// from this process (its own process group, so Ctrl-C on xtask leaves it
/// running), logging to `<logs>/<name>.log`.
pub(super) fn spawn(paths: &Paths, name: &str, program: &Path, args: &[String]) -> Result<Child> {
    let logs = paths.logs();
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join(format!("{name}.log"));
    let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let child = Command::new("nsenter")
        .arg(format!("--net={}", net::netns_path()))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating a log fd")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {name} ({})", program.display()))?;
    let pid = child.id();
    let pids = paths.pids();
    fs::create_dir_all(&pids).with_context(|| format!("creating {}", pids.display()))?;
    fs::write(pids.join(name), format!("{pid} {}\n", program.display())).context("recording a pid")?;
    Ok(child)
}

/// The recorded pid of `name`, if that process still runs the recorded program.
pub(super) fn running(paths: &Paths, name: &str) -> Option<i32> {
    let record = fs::read_to_string(paths.pids().join(name)).ok()?;
    let (pid, program) = record.trim().split_once(' ')?;
    let pid: i32 = pid.parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // argv[0], or an argument of the nsenter that is about to exec it.
    let runs_it = cmdline.split(|&b| b == 0).take(4).any(|arg| arg == program.as_bytes());
    (runs_it && alive(pid)).then_some(pid)
}

/// The last lines of a component's log, for error messages.
pub(super) fn log_tail(paths: &Paths, name: &str) -> String {
    let text = fs::read_to_string(paths.logs().join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    format!("last lines of {}:\n{tail}", paths.logs().join(format!("{name}.log")).display())
}

/// Stops `name` with SIGTERM, then SIGKILL after [`STOP_GRACE`].
pub(super) fn stop(paths: &Paths, name: &str) {
    if let Some(pid) = running(paths, name) {
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while alive(pid) && Instant::now() < deadline {
            sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            signal(pid, libc::SIGKILL);
        }
        wait_gone(pid);
    }
    let _ = fs::remove_file(paths.pids().join(name));
}

/// Kills every container the cluster's runc ran, removes their cgroups (and
/// the pod cgroups above them) in every hierarchy, and returns the pod network
/// namespaces they used, which the caller unmounts.
pub(super) fn kill_containers(paths: &Paths) -> Vec<PathBuf> {
    let mut netns = Vec::new();
    let mut cgroups = Vec::new();
    let Ok(entries) = fs::read_dir(paths.runc_root().join("k8s.io")) else { return netns };
    for entry in entries.flatten() {
        let Ok(state) = fs::read(entry.path().join("state.json")) else { continue };
        let Ok(state) = serde_json::from_slice::<serde_json::Value>(&state) else { continue };
        if let Some(map) = state.pointer("/cgroup_paths").and_then(|v| v.as_object()) {
            cgroups.extend(map.values().filter_map(|v| v.as_str()).map(PathBuf::from));
        }
        if let Some(namespaces) = state.pointer("/config/namespaces").and_then(|v| v.as_array()) {
            netns.extend(
                namespaces
                    .iter()
                    .filter(|ns| ns.get("type").and_then(|t| t.as_str()) == Some("NEWNET"))
                    .filter_map(|ns| ns.get("path").and_then(|p| p.as_str()))
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from),
            );
        }
    }
    // Three SIGKILL sweeps: a process forked between reading cgroup.procs and
    // the kill is caught by the next one.
    for _ in 0..3 {
        for cgroup in &cgroups {
            for pid in fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    signal(pid, libc::SIGKILL);
                }
            }
        }
        sleep(Duration::from_millis(100));
    }
    // Containers first, then their pod dirs, in every hierarchy.
    let mut dirs: Vec<PathBuf> =
        cgroups.iter().flat_map(|c| [c.clone(), c.parent().map(Path::to_path_buf).unwrap_or_default()]).collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for dir in dirs {
        if dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("pod") || dir.join("cgroup.procs").exists())
        {
            let _ = fs::remove_dir(&dir);
        }
    }
    netns
}

/// Removes the kubelet's QoS cgroups (`/kubepods/{burstable,besteffort}` and
/// `/kubepods`) in every hierarchy, where they are empty: rmdir fails on a
/// cgroup that still holds pods, such as the tests' own.
pub(super) fn remove_qos_cgroups() {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else { return };
    for hierarchy in hierarchies.flatten() {
        let kubepods = hierarchy.path().join("kubepods");
        for dir in [kubepods.join("burstable"), kubepods.join("besteffort"), kubepods] {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Kills processes whose command line contains `needle` (containerd's shims
/// name its socket).
pub(super) fn kill_matching(needle: &str) {
    let Ok(entries) = fs::read_dir("/proc") else { return };
    let me = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(needle)
            && let Ok(pid) = i32::try_from(pid)
        {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// Unmounts everything mounted at or below any of `roots` (deepest first;
/// lazily, so a busy mount cannot block `down`).
pub(super) fn unmount_below(roots: &[PathBuf]) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_octal)
        .filter(|point| roots.iter().any(|root| Path::new(point).starts_with(root)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for point in points {
        let _ = Command::new("umount").args(["--lazy", &point]).status();
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(n) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(n);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn alive(pid: i32) -> bool {
    // A zombie (our own unreaped child) counts as gone.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
}

fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_octal_escapes_are_decoded() {
        assert_eq!(unescape_octal(r"/run/a\040b\134c"), "/run/a b\\c");
        assert_eq!(unescape_octal("/plain"), "/plain");
        assert_eq!(unescape_octal(r"/ends\04"), r"/ends\04");
    }
}
