//! A process with a name chosen byte by byte, for the hostile-name tests.
//!
//! `namer HEX exit CODE`: set this process's name (`/proc/PID/comm`, the kernel's `comm`) to
//! the bytes HEX spells, then exit with CODE.
//! `namer HEX segv`: set the name, then die by SIGSEGV from a real fault.
//! `namer HEX wait`: set the name, print `named` on stdout, then sleep until killed.
//!
//! The kernel keeps at most 15 bytes of a name (`TASK_COMM_LEN` - 1) and cuts longer ones.
//! Exits 100 on bad arguments and 101 if the name cannot be set.

use std::{io::Write as _, process::ExitCode, time::Duration};

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn set_name(name: &[u8]) -> bool {
    // PR_SET_NAME reads up to 16 bytes and cuts at 15; pad so it never reads past the buffer.
    let mut buf = [0_u8; 17];
    let len = name.len().min(16);
    buf[..len].copy_from_slice(&name[..len]);
    // SAFETY: `buf` is NUL-terminated and outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) == 0 }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first().and_then(|h| hex(h)).filter(|n| !n.contains(&0)) else {
        return ExitCode::from(100);
    };
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    if !set_name(&name) {
        return ExitCode::from(101);
    }
    match rest.as_slice() {
        ["exit", code] => code.parse::<u8>().map_or(ExitCode::from(100), ExitCode::from),
        ["segv"] => {
            // SAFETY: none; the point is the fault.
            #[expect(clippy::zero_ptr, reason = "the test wants a real SIGSEGV")]
            unsafe {
                std::ptr::write_volatile(0 as *mut u8, 1);
            }
            ExitCode::from(101)
        }
        ["wait"] => {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "named").and_then(|()| out.flush());
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        _ => ExitCode::from(100),
    }
}
