//! A process for the end-to-end tests to end in particular ways.
//!
//! `victim threads N CODE`: start N threads, then exit with CODE while they run.
//! `victim leader-first CODE`: the main thread ends first; a thread named `worker` then exits
//! the process with CODE, so the task that ends the group is not its leader.
//! `victim thread-signal leader-ends|leader-stays`: a thread named `worker` ends the process by
//! sending itself SIGUSR1, so the signal's target is not the leader; the leader has ended by
//! then (as in `leader-first`), or is asleep.
//! `victim signal-a-lone-thread`: with SIGUSR1 ignored, send it to a thread, let that thread end
//! alone, print its id and exit 0: a fatal signal pending for a tid whose task is gone.
//! `victim abort`: die by SIGABRT.
//! `victim segv`: die by SIGSEGV from a real fault.

use std::{process::ExitCode, time::Duration};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["threads", n, code] => {
            let (Ok(n), Ok(code)) = (n.parse::<usize>(), code.parse::<u8>()) else {
                return ExitCode::from(100);
            };
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            for _ in 0..n {
                let ready = ready_tx.clone();
                std::thread::spawn(move || {
                    let _ = ready.send(());
                    loop {
                        std::thread::sleep(Duration::from_secs(60));
                    }
                });
            }
            for _ in 0..n {
                let _ = ready_rx.recv();
            }
            // exit_group with every thread still alive.
            std::process::exit(i32::from(code));
        }
        ["leader-first", code] => {
            let Ok(code) = code.parse::<i32>() else {
                return ExitCode::from(100);
            };
            let worker = std::thread::Builder::new().name("worker".to_owned()).spawn(move || {
                // Long enough for the leader to be gone.
                std::thread::sleep(Duration::from_millis(200));
                // `_exit`: the runtime's exit path aborts once the main thread is gone.
                // SAFETY: ends the process at once; nothing is left to flush.
                unsafe { libc::_exit(code) }
            });
            if worker.is_err() {
                return ExitCode::from(101);
            }
            end_main_thread()
        }
        ["thread-signal", leader @ ("leader-ends" | "leader-stays")] => {
            let worker = std::thread::Builder::new().name("worker".to_owned()).spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                // SAFETY: signals this thread; SIGUSR1's default action ends the process.
                unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), libc::SIGUSR1) };
                std::thread::sleep(Duration::from_secs(10));
            });
            if worker.is_err() {
                return ExitCode::from(101);
            }
            if *leader == "leader-ends" {
                return end_main_thread();
            }
            std::thread::sleep(Duration::from_secs(10));
            ExitCode::from(102)
        }
        ["signal-a-lone-thread"] => {
            // SAFETY: sets a signal's disposition to ignored; no handler runs.
            unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                // SAFETY: no preconditions.
                let _ = tid_tx.send(unsafe { libc::gettid() });
                let _ = go_rx.recv();
            });
            let Ok(tid) = tid_rx.recv() else {
                return ExitCode::from(101);
            };
            // SAFETY: signals a thread of this process; the signal is ignored.
            if unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) } != 0 {
                return ExitCode::from(102);
            }
            drop(go_tx);
            if thread.join().is_err() {
                return ExitCode::from(103);
            }
            println!("{tid}");
            ExitCode::SUCCESS
        }
        ["abort"] => std::process::abort(),
        ["segv"] => {
            // SAFETY: none; the point is the fault.
            #[expect(clippy::zero_ptr, reason = "the test wants a real SIGSEGV")]
            unsafe {
                std::ptr::write_volatile(0 as *mut u8, 1);
            }
            ExitCode::from(101)
        }
        _ => ExitCode::from(100),
    }
}

/// Ends the main thread alone, leaving the process to its other threads; returns only if the
/// kernel refused. The raw `exit` ends only this thread, without `pthread_exit`'s unwinding,
/// which Rust frames do not allow.
fn end_main_thread() -> ExitCode {
    // SAFETY: the other threads own nothing on this thread's stack.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    ExitCode::from(102)
}
