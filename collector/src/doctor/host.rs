//! The kernel side: capabilities, kernel release, BTF, tracefs and the bpf()
//! syscall. The daemon cannot run when one of these fails (except the
//! release, which only warns).

use std::{
    io::{self, Read as _},
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use super::Check;
use crate::{
    escape::escape_bytes,
    probe::{
        TRACEPOINTS,
        btf::{BAD_MAGIC, Btf, BtfError, MAGIC, VMLINUX_BTF},
        layout,
        preflight::{self, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, PreflightError},
        tracefs::{DEFAULT_MOUNT, Tracefs, TracefsError},
    },
};

/// Where a pod gets the capabilities it lacks.
const ADD_CAPABILITY: &str = "securityContext.capabilities.add";

/// What the kernel-side checks found.
pub(super) struct Host {
    pub(super) checks: Vec<Check>,
    pub(super) release: Option<String>,
}

/// Runs the kernel-side checks; `parse_btf` as [`super::Inputs::parse_btf`].
pub(super) fn check(parse_btf: bool) -> Host {
    let caps = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| preflight::effective_caps(&status));
    // What `uname -r` prints, without uname(2)'s fixed-size C buffers.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|text| text.trim().to_owned());
    let checks = vec![
        capabilities(caps),
        kernel(release.as_deref()),
        btf(Path::new(VMLINUX_BTF), parse_btf),
        tracefs(),
        bpf(create_map()),
    ];
    Host { checks, release }
}

/// CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN in place of either, as the kernel allows.
pub(super) fn capabilities(caps: Option<u64>) -> Check {
    const NAME: &str = "capabilities";
    let Some(caps) = caps else {
        return Check::fail(
            NAME,
            "cannot read CapEff in /proc/self/status, so the capabilities are unknown",
            "run the collector with /proc mounted",
        )
        .blocking(PreflightError::NotPermitted);
    };
    let has = |cap: u32| caps & (1 << cap) != 0;
    let sys_admin = has(CAP_SYS_ADMIN);
    let (bpf, perfmon) = (has(CAP_BPF) || sys_admin, has(CAP_PERFMON) || sys_admin);
    let missing = match (bpf, perfmon) {
        (true, true) => {
            let mut held = Vec::new();
            let mut replaced = Vec::new();
            for (cap, name) in [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")] {
                if has(cap) {
                    held.push(name.to_owned());
                } else {
                    replaced.push(name);
                }
            }
            if !replaced.is_empty() {
                held.push(format!("CAP_SYS_ADMIN (in place of {})", replaced.join(" and ")));
            }
            return Check::ok(NAME, held.join(", "));
        }
        (false, true) => {
            "missing capability CAP_BPF: creating BPF maps and loading BPF programs (bpf()) fail without it"
        }
        (true, false) => {
            "missing capability CAP_PERFMON: attaching tracepoints (perf_event_open) and reading kernel memory fail \
             without it"
        }
        (false, false) => {
            "missing capabilities CAP_BPF and CAP_PERFMON: loading BPF programs (bpf()) and attaching them to \
             tracepoints (perf_event_open) fail without them"
        }
    };
    let fix =
        if bpf || perfmon { format!("add it to {ADD_CAPABILITY}") } else { format!("add both to {ADD_CAPABILITY}") };
    Check::fail(NAME, missing, fix).blocking(PreflightError::NotPermitted)
}

/// The release, `uname -r`; one older than 5.8 works only with backports.
pub(super) fn kernel(release: Option<&str>) -> Check {
    const NAME: &str = "kernel";
    let Some(release) = release else {
        return Check::warn(
            NAME,
            "cannot read the kernel release (/proc/sys/kernel/osrelease)",
            "run the collector with /proc mounted",
        );
    };
    match version(release) {
        Some(version) if version < (5, 8) => Check::warn(
            NAME,
            format!(
                "{release} is older than 5.8: the BPF ring buffer and BTF the probes need came in 5.8, so it works \
                 only where the distribution backported them"
            ),
            "use a kernel 5.8 or newer",
        ),
        _ => Check::ok(NAME, release),
    }
}

/// `(major, minor)` of a release such as `6.1.0-13-amd64`.
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// BTF at `path` exists, is readable and is BTF; with `parse`, it parses and the detail says how
/// the exit probe will read task fields on this kernel.
pub(super) fn btf(path: &Path, parse: bool) -> Check {
    const NAME: &str = "btf";
    let shown = escape_bytes(path.as_os_str().as_encoded_bytes());
    // The header alone for the daemon's start-up check; the probe loader parses it anyway.
    let mut magic = [0; 2];
    let read = std::fs::File::open(path).and_then(|mut file| {
        let size = file.metadata()?.len();
        file.read_exact(&mut magic)?;
        Ok(size)
    });
    match read {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Check::fail(
            NAME,
            format!("{shown} is missing: the kernel has no BTF"),
            "use a kernel 5.8+ built with CONFIG_DEBUG_INFO_BTF=y; in a pod, mount the host's /sys/kernel/btf \
             (hostPath)",
        )
        .blocking(PreflightError::NoBtf),
        Err(source) => Check::fail(
            NAME,
            format!("cannot read {shown}: {source}"),
            "run as uid 0 with the host's /sys/kernel/btf mounted (hostPath)",
        )
        .blocking(BtfError::Read { path: path.display().to_string(), source }),
        Ok(_) if magic != MAGIC.to_le_bytes() => Check::fail(
            NAME,
            format!("{shown} is not little-endian BTF"),
            "use the kernel's own /sys/kernel/btf (hostPath)",
        )
        .blocking(BtfError::Malformed(BAD_MAGIC)),
        Ok(size) if !parse => Check::ok(NAME, format!("{shown} readable ({} KiB)", size.div_ceil(1024))),
        Ok(size) => match Btf::from_file(path) {
            Err(err) => Check::fail(
                NAME,
                format!("{shown} cannot be parsed: {err}"),
                "use the kernel's own /sys/kernel/btf (hostPath)",
            )
            .blocking(err),
            Ok(btf) => {
                let reads = if layout::plain_task_loads(&btf) {
                    "the exit probe reads task fields by plain loads"
                } else {
                    "the exit probe reads task fields through bpf_probe_read_kernel (no bpf_get_current_task_btf \
                     before 5.11): about a fifth more kernel time per exit"
                };
                Check::ok(NAME, format!("{shown} readable ({} KiB); {reads}", size.div_ceil(1024)))
            }
        },
    }
}

/// tracefs is mounted (or can be, as `collector run` would) and the formats of the
/// tracepoints the probes attach to are readable.
fn tracefs() -> Check {
    const NAME: &str = "tracefs";
    let (tracefs, mounted_now) = match Tracefs::find() {
        Some(found) => (found, false),
        None => match Tracefs::find_or_mount() {
            Ok(mounted) => (mounted, true),
            Err(err) => {
                let reason = match &err {
                    TracefsError::Mount { source } => source.to_string(),
                    other => other.to_string(),
                };
                return Check::fail(
                    NAME,
                    format!("not mounted, and mounting it at {DEFAULT_MOUNT} failed: {reason}"),
                    format!(
                        "mount the host's {DEFAULT_MOUNT} into the pod (hostPath), or run `mount -t tracefs tracefs \
                         {DEFAULT_MOUNT}` on the host"
                    ),
                )
                .blocking(err);
            }
        },
    };
    let root = escape_bytes(tracefs.root().as_os_str().as_encoded_bytes());
    let mut errors = TRACEPOINTS.iter().filter_map(|&(category, name, _)| tracefs.format(category, name).err());
    match errors.next() {
        Some(first) => {
            let more = errors.count();
            let more = if more == 0 { String::new() } else { format!(" (and {more} more)") };
            Check::fail(
                NAME,
                format!("{}{more}", escape_bytes(first.to_string().as_bytes())),
                format!(
                    "run as uid 0 with the host's {DEFAULT_MOUNT} mounted (hostPath); a tracepoint that does not \
                     exist needs a newer kernel"
                ),
            )
            .blocking(first)
        }
        None => {
            let how = if mounted_now { " (mounted it)" } else { "" };
            Check::ok(NAME, format!("{root}{how}: the formats of {} tracepoints are readable", TRACEPOINTS.len()))
        }
    }
}

/// `union bpf_attr` for BPF_MAP_CREATE, up to the fields this check sets; the
/// kernel zero-fills the rest.
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// Creates a one-entry BPF array map and closes it: the least the probes need of bpf().
fn create_map() -> io::Result<()> {
    let attr = MapCreate { map_type: BPF_MAP_TYPE_ARRAY, key_size: 4, value_size: 4, max_entries: 1, map_flags: 0 };
    // SAFETY: `attr` is a valid prefix of `union bpf_attr` for BPF_MAP_CREATE and
    // lives for the call; the kernel reads exactly the size given.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, std::ptr::from_ref(&attr), size_of::<MapCreate>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: bpf() just returned this descriptor; nothing else owns it. Dropping closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// What creating a BPF map says about bpf().
pub(super) fn bpf(created: io::Result<()>) -> Check {
    const NAME: &str = "bpf";
    let err = match created {
        Ok(()) => return Check::ok(NAME, "bpf() created and freed a BPF array map"),
        Err(err) => err,
    };
    match err.raw_os_error() {
        Some(libc::EPERM) => Check::fail(
            NAME,
            "bpf() refused to create a map (EPERM): it needs CAP_BPF (or CAP_SYS_ADMIN), a seccomp profile that \
             allows bpf(), and before kernel 5.11 a large enough RLIMIT_MEMLOCK",
            format!("add CAP_BPF to {ADD_CAPABILITY}; if it is there, allow bpf() in the pod's seccompProfile"),
        )
        .blocking(PreflightError::NotPermitted),
        Some(libc::ENOSYS) => Check::fail(
            NAME,
            "the kernel has no bpf() syscall (ENOSYS)",
            "use a kernel built with CONFIG_BPF_SYSCALL=y",
        )
        .blocking(super::DoctorError::NoBpfSyscall(err)),
        _ => Check::fail(
            NAME,
            format!("bpf() failed to create a map: {err}"),
            "see the kernel log (dmesg); before kernel 5.11, raise RLIMIT_MEMLOCK",
        )
        .blocking(super::DoctorError::Bpf(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    const BPF: u64 = 1 << CAP_BPF;
    const PERFMON: u64 = 1 << CAP_PERFMON;
    const SYS_ADMIN: u64 = 1 << CAP_SYS_ADMIN;

    fn line(check: &Check) -> String {
        check.problem_line()
    }

    #[test]
    fn capeff_of_root_and_of_a_least_privilege_pod() {
        // Root on this project's machine (all but CAP_SYS_RESOURCE), and CAP_BPF + CAP_PERFMON alone.
        let root = preflight::effective_caps("CapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n");
        assert_eq!(capabilities(root).detail, "CAP_BPF, CAP_PERFMON");
        let pod = preflight::effective_caps("CapEff:\t000000c000000000\n");
        assert_eq!(pod, Some(BPF | PERFMON));
        assert_eq!(capabilities(pod).status, Status::Ok);
    }

    #[test]
    fn cap_sys_admin_stands_in_for_either() {
        assert_eq!(capabilities(Some(SYS_ADMIN)).detail, "CAP_SYS_ADMIN (in place of CAP_BPF and CAP_PERFMON)");
        assert_eq!(capabilities(Some(SYS_ADMIN | BPF)).detail, "CAP_BPF, CAP_SYS_ADMIN (in place of CAP_PERFMON)");
    }

    #[test]
    fn a_missing_capability_is_named_with_its_fix() {
        let check = capabilities(Some(BPF));
        assert_eq!(check.status, Status::Fail);
        assert!(check.blocks_startup());
        assert_eq!(
            line(&check),
            "capabilities: missing capability CAP_PERFMON: attaching tracepoints (perf_event_open) and reading \
             kernel memory fail without it; fix: add it to securityContext.capabilities.add"
        );
        assert_eq!(
            line(&capabilities(Some(PERFMON))),
            "capabilities: missing capability CAP_BPF: creating BPF maps and loading BPF programs (bpf()) fail \
             without it; fix: add it to securityContext.capabilities.add"
        );
        assert_eq!(
            line(&capabilities(Some(0))),
            "capabilities: missing capabilities CAP_BPF and CAP_PERFMON: loading BPF programs (bpf()) and attaching \
             them to tracepoints (perf_event_open) fail without them; fix: add both to \
             securityContext.capabilities.add"
        );
        assert_eq!(capabilities(None).status, Status::Fail);
    }

    #[test]
    fn kernel_release_and_age() {
        assert_eq!(version("6.1.0-13-amd64"), Some((6, 1)));
        assert_eq!(version("5.8"), Some((5, 8)));
        assert_eq!(version("4.18.0-553.el8_10.x86_64"), Some((4, 18)));
        assert_eq!(version("x"), None);
        assert_eq!(kernel(Some("6.18.44-fc-v1252")).detail, "6.18.44-fc-v1252");
        assert_eq!(kernel(Some("5.8.0")).status, Status::Ok);
        let old = kernel(Some("5.4.0-150-generic"));
        assert_eq!(old.status, Status::Warn);
        assert!(!old.blocks_startup());
        assert_eq!(kernel(None).status, Status::Warn);
    }

    #[test]
    fn btf_missing_keeps_the_existing_error() {
        let check = btf(Path::new("/nonexistent/vmlinux"), true);
        assert_eq!(
            line(&check),
            "btf: /nonexistent/vmlinux is missing: the kernel has no BTF; fix: use a kernel 5.8+ built with \
             CONFIG_DEBUG_INFO_BTF=y; in a pod, mount the host's /sys/kernel/btf (hostPath)"
        );
        assert_eq!(
            check.into_blocker_text(),
            "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing): a kernel 5.8+ built with \
             CONFIG_DEBUG_INFO_BTF=y is needed"
        );
    }

    #[test]
    fn btf_that_is_not_btf_fails() {
        let path = std::env::temp_dir().join(format!("collector-doctor-btf-{}", std::process::id()));
        std::fs::write(&path, b"ELF").unwrap();
        let check = btf(&path, true);
        assert_eq!(check.detail, format!("{} is not little-endian BTF", path.display()));
        // BTF without bpf_func_id's BPF_FUNC_get_current_task_btf, as on 5.8 to 5.10.
        std::fs::write(&path, crate::probe::btf::tests::sample()).unwrap();
        let check = btf(&path, true);
        assert_eq!(
            check.detail,
            format!(
                "{} readable (1 KiB); the exit probe reads task fields through bpf_probe_read_kernel (no \
                 bpf_get_current_task_btf before 5.11): about a fifth more kernel time per exit",
                path.display()
            )
        );
        assert_eq!(check.status, Status::Ok);
        std::fs::write(&path, [0x9f, 0xeb, 1, 0]).unwrap();
        let check = btf(&path, true);
        assert_eq!(
            line(&check),
            format!(
                "btf: {} cannot be parsed: kernel BTF is malformed: header cut short; fix: use the kernel's own \
                 /sys/kernel/btf (hostPath)",
                path.display()
            )
        );
        assert!(check.blocks_startup());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn btf_of_this_kernel_says_the_exit_probe_uses_plain_loads() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() && std::env::var_os("CI").is_none() {
            // A developer's machine may lack BTF; CI machines never do.
            return;
        }
        let kib = std::fs::metadata(path).unwrap().len().div_ceil(1024);
        // Every kernel the project tests on (6.1, 6.18) has bpf_get_current_task_btf.
        assert_eq!(
            btf(path, true).detail,
            format!("{VMLINUX_BTF} readable ({kib} KiB); the exit probe reads task fields by plain loads")
        );
        // The daemon's start-up check reads it but leaves the parse to the probe loader.
        assert_eq!(btf(path, false).detail, format!("{VMLINUX_BTF} readable ({kib} KiB)"));
    }

    #[test]
    fn bpf_errors_name_their_cause() {
        assert_eq!(bpf(Ok(())).status, Status::Ok);
        let eperm = bpf(Err(io::Error::from_raw_os_error(libc::EPERM)));
        assert_eq!(
            eperm.into_blocker_text(),
            "not permitted to load BPF programs: run as root, or grant CAP_BPF and CAP_PERFMON"
        );
        let enosys = bpf(Err(io::Error::from_raw_os_error(libc::ENOSYS)));
        assert_eq!(
            line(&enosys),
            "bpf: the kernel has no bpf() syscall (ENOSYS); fix: use a kernel built with CONFIG_BPF_SYSCALL=y"
        );
        assert_eq!(
            enosys.into_blocker_text(),
            "the kernel has no BPF syscall (it needs CONFIG_BPF_SYSCALL=y): Function not implemented (os error 38)"
        );
        let other = bpf(Err(io::Error::from_raw_os_error(libc::EINVAL)));
        assert_eq!(other.detail, "bpf() failed to create a map: Invalid argument (os error 22)");
    }

    impl Check {
        fn into_blocker_text(self) -> String {
            self.blocker.map(|err| err.to_string()).unwrap_or_default()
        }
    }
}
