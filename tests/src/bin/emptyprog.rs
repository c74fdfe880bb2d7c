//! For `cargo xtask bench`: the floor a tracepoint program costs. `emptyprog CATEGORY/NAME`
//! attaches a BPF program that only returns 0 (`r0 = 0; exit`, named `empty`) to that
//! tracepoint (`emptyprog --raw NAME`: as a raw tracepoint program, as the collector's exit
//! probe is), prints `ready`, and keeps it attached until killed. `bpfstats PID` then reports
//! its run time beside the collector's programs on the same tracepoint, in the same run: what the
//! kernel spends calling any program there, before the program does anything.

use std::{
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
/// `_IO('$', 0)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// `PERF_SAMPLE_RAW`.
const SAMPLE_RAW: u64 = 1 << 10;
/// `PERF_FLAG_FD_CLOEXEC`.
const FD_CLOEXEC: libc::c_ulong = 1 << 3;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let _attached = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--raw", name] => attach_raw(name)?,
        [tracepoint] if !tracepoint.starts_with('-') => attach(tracepoint)?,
        _ => bail!("usage: emptyprog CATEGORY/NAME | emptyprog --raw NAME (e.g. sched/sched_process_exit)"),
    };
    println!("ready");
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Attaches the empty program to the raw tracepoint `name`; attached while the fds are open.
fn attach_raw(name: &str) -> Result<Vec<OwnedFd>> {
    let program = load(BPF_PROG_TYPE_RAW_TRACEPOINT)?;
    let name_c = std::ffi::CString::new(name).context("a tracepoint name has no NUL")?;
    // union bpf_attr for BPF_RAW_TRACEPOINT_OPEN: name (u64 pointer), prog_fd (u32).
    let mut attr = [0_u8; 16];
    attr[0..8].copy_from_slice(&(name_c.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&program.as_raw_fd().to_ne_bytes());
    // SAFETY: `attr` is a zero-padded bpf_attr whose pointer outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_RAW_TRACEPOINT_OPEN, attr.as_mut_ptr(), attr.len()) };
    let link = owned(fd).with_context(|| format!("cannot attach to the raw tracepoint {name}"))?;
    Ok(vec![program, link])
}

/// Attaches the empty program to `tracepoint` (`CATEGORY/NAME`); attached while the fds are open.
fn attach(tracepoint: &str) -> Result<Vec<OwnedFd>> {
    let id_path = format!("/sys/kernel/tracing/events/{tracepoint}/id");
    let id: u64 = std::fs::read_to_string(&id_path)
        .with_context(|| format!("reading {id_path}"))?
        .trim()
        .parse()
        .with_context(|| format!("{id_path} is not a number"))?;
    let program = load(BPF_PROG_TYPE_TRACEPOINT)?;
    let event = open_tracepoint(id)?;
    // SAFETY: ioctls on a perf event descriptor this process owns, with integer arguments.
    let attached = unsafe {
        libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, program.as_raw_fd()) == 0
            && libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) == 0
    };
    if !attached {
        bail!("cannot attach to {tracepoint}: {}", std::io::Error::last_os_error());
    }
    Ok(vec![program, event])
}

/// Loads `r0 = 0; exit` as a program of `prog_type` named `empty`.
fn load(prog_type: u32) -> Result<OwnedFd> {
    // BPF_MOV64_IMM(BPF_REG_0, 0) and BPF_EXIT_INSN(), 8 bytes each.
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD, up to prog_name (offset 48, 16 bytes).
    let mut attr = [0_u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&2_u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..53].copy_from_slice(b"empty");
    // SAFETY: `attr` is a zero-padded bpf_attr whose pointers outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_mut_ptr(), attr.len()) };
    owned(fd).context("BPF_PROG_LOAD of the empty program")
}

/// A perf event on tracepoint `id`, CPU 0: a BPF program on it runs for the event on every CPU.
fn open_tracepoint(id: u64) -> Result<OwnedFd> {
    // struct perf_event_attr (PERF_ATTR_SIZE_VER5, 112 bytes): type, size, config, sample_period,
    // sample_type.
    let mut attr = [0_u8; 112];
    attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&112_u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&id.to_ne_bytes());
    attr[16..24].copy_from_slice(&1_u64.to_ne_bytes());
    attr[24..32].copy_from_slice(&SAMPLE_RAW.to_ne_bytes());
    // SAFETY: `attr` is a zero-padded perf_event_attr of the size it says.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_mut_ptr(), -1, 0, -1, FD_CLOEXEC) };
    owned(fd).context("perf_event_open of the tracepoint")
}

fn owned(fd: libc::c_long) -> Result<OwnedFd> {
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0).ok_or_else(std::io::Error::last_os_error)?;
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
