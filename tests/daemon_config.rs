//! Bad configuration and environment: each gives one clear error that names
//! the input, and the right exit code (2 for configuration, 1 for the
//! environment), never a panic.
#![expect(clippy::unwrap_used, reason = "the helpers are test steps: a failure fails the test")]

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use collector_tests::{collector::binary, privileged};

/// A temporary directory, removed (and unmounted) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("collector-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Ok(path) = CString::new(self.0.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path; failing (nothing mounted) is fine.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(binary().unwrap())
        .arg("run")
        .args(["--metrics-addr", "127.0.0.1:0", "--node-name", "test-node"])
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_problem_in_a_config_file_is_reported_at_once() {
    let dir = TempDir::new("bad-config");
    let file = dir.0.join("collector.toml");
    std::fs::write(&file, "sinks = [\"stdout\"]\nmetadata_wait = \"soon\"\nfavourite_colour = \"blue\"\n").unwrap();
    let output = run(&["--config", file.to_str().unwrap(), "--ring-buffer-bytes", "5000"], &dir.0);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    let shown = file.display();
    assert_eq!(
        text,
        format!(
            "collector: {shown}:2: metadata_wait: invalid duration \"soon\": expected a number followed by a unit, \
             such as 2s or 1h30m\n\
             collector: {shown}:3: unknown key `favourite_colour`\n\
             collector: --ring-buffer-bytes: ring buffer size 5000 is not a power of two of at least 4096 (and at \
             most 2GiB)\n"
        )
    );
}

#[test]
fn a_read_only_state_dir_is_named() {
    if !privileged("a_read_only_state_dir_is_named") {
        return;
    }
    let dir = TempDir::new("ro-state");
    let path = CString::new(dir.0.as_os_str().as_encoded_bytes()).unwrap();
    let tmpfs = CString::new("tmpfs").unwrap();
    // SAFETY: valid NUL-terminated strings; a read-only tmpfs over the directory.
    let rc = unsafe { libc::mount(tmpfs.as_ptr(), path.as_ptr(), tmpfs.as_ptr(), libc::MS_RDONLY, std::ptr::null()) };
    assert_eq!(rc, 0, "mount a read-only tmpfs: {}", std::io::Error::last_os_error());
    let state = dir.0.join("state");
    let output = run(&["--sink", "journal", "--state-dir", state.to_str().unwrap(), "--cri-socket", "none"], &dir.0);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("cannot open the journal in {}", state.display())), "{text}");
    assert!(text.contains("Read-only file system"), "says why: {text}");
}

#[test]
fn a_missing_cri_socket_is_named() {
    if !privileged("a_missing_cri_socket_is_named") {
        return;
    }
    let dir = TempDir::new("no-cri");
    let socket = dir.0.join("nowhere.sock");
    let state = dir.0.join("state");
    let output = run(
        &["--sink", "stdout", "--state-dir", state.to_str().unwrap(), "--cri-socket", socket.to_str().unwrap()],
        &dir.0,
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains(&socket.display().to_string()), "names the socket: {text}");
}

#[test]
fn a_missing_kubeconfig_is_named() {
    let dir = TempDir::new("no-kubeconfig");
    let kubeconfig = dir.0.join("kubeconfig");
    let output = run(&["--kubeconfig", kubeconfig.to_str().unwrap(), "--cri-socket", "none"], &dir.0);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains(&kubeconfig.display().to_string()), "names the file: {text}");
}

#[test]
fn a_metrics_address_in_use_is_named_with_the_reason() {
    if !privileged("a_metrics_address_in_use_is_named_with_the_reason") {
        return;
    }
    let dir = TempDir::new("addr-in-use");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let state = dir.0.join("state");
    let output = Command::new(binary().unwrap())
        .args(["run", "--node-name", "test-node", "--sink", "stdout", "--cri-socket", "none"])
        .args(["--metrics-addr", &addr, "--state-dir", state.to_str().unwrap()])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    // The whole cause, not just what failed.
    assert!(
        text.lines().any(|line| line
            == format!("collector: cannot listen on {addr} for metrics: Address already in use (os error 98)")),
        "{text}"
    );
}
