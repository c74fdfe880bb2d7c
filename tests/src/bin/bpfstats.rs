//! For `cargo xtask bench`: the kernel's run statistics of the BPF programs a process holds.
//!
//! `bpfstats PID` prints one JSON line per BPF program that PID has open:
//! `{"id":N,"name":"...","run_time_ns":N,"run_cnt":N}`. The counts come from
//! `/proc/PID/fdinfo` and only grow while `kernel.bpf_stats_enabled` is 1; the name (which
//! fdinfo lacks) from `BPF_OBJ_GET_INFO_BY_FD` on a descriptor opened by the program's id.

use std::{collections::BTreeMap, os::fd::FromRawFd as _};

use anyhow::{Context as _, Result, bail};

/// One program's counters.
#[derive(Debug, Default)]
struct Stats {
    run_time_ns: u64,
    run_cnt: u64,
}

fn main() -> Result<()> {
    let Some(pid) = std::env::args().nth(1) else {
        bail!("usage: bpfstats PID");
    };
    let mut programs = BTreeMap::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        // Descriptors close while we read: skip what vanished.
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok())
        };
        // Program descriptors carry run counters; link descriptors name a prog_id too, but no counters.
        if let (Some(id), Some(run_cnt)) = (field("prog_id"), field("run_cnt")) {
            programs.insert(id, Stats { run_time_ns: field("run_time_ns").unwrap_or(0), run_cnt });
        }
    }
    for (id, stats) in programs {
        let name = u32::try_from(id).ok().and_then(program_name).unwrap_or_default();
        let line =
            serde_json::json!({"id": id, "name": name, "run_time_ns": stats.run_time_ns, "run_cnt": stats.run_cnt});
        println!("{line}");
    }
    Ok(())
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `struct bpf_prog_info` up to and including `name[16]` (offset 64).
const INFO_LEN: usize = 80;
const NAME_OFFSET: usize = 64;

/// The name the kernel keeps for program `id` (at most 15 bytes of the function's name).
fn program_name(id: u32) -> Option<String> {
    // union bpf_attr for BPF_PROG_GET_FD_BY_ID: prog_id, next_id, open_flags.
    let mut attr = [0_u32; 4];
    attr[0] = id;
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, attr.as_mut_ptr(), size_of_val(&attr)) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut info = [0_u8; INFO_LEN];
    // union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: bpf_fd, info_len, info (u64 pointer).
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd)).ok()?,
        info_len: INFO_LEN as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` points at `info`, which is writable for `info_len` bytes.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &raw mut attr, size_of::<InfoAttr>()) };
    if ret != 0 {
        return None;
    }
    let name = &info[NAME_OFFSET..INFO_LEN];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}
