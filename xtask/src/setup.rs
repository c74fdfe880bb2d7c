//! `cargo xtask setup`: the kernel-side toolchain and the test dependencies.
//!
//! The usual aya set-up (a rustup nightly with rust-src, and bpf-linker) is
//! used where it exists. Otherwise, on Debian and Ubuntu, the route checked in
//! `shared/reference.md`: Debian's rustc-web with its standard-library source,
//! linked as a rustup toolchain, and bpf-linker built against Debian's LLVM 22.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

/// The rustup toolchain name that `collector/build.rs` looks for first.
const LINKED_TOOLCHAIN: &str = "collector-ebpf";
const BPF_LINKER_VERSION: &str = "0.13.0";
const TOOLCHAIN_PACKAGES: &[&str] =
    &["rustc-web", "cargo-web", "rust-web-src", "llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];
/// Clippy for the kernel toolchain, for `cargo xtask lint`.
const CLIPPY_PACKAGES: &[&str] = &["rust-web-clippy"];
/// protoc builds the collector's CRI API client (k8s-cri).
const PROTOC_PACKAGES: &[&str] = &["protobuf-compiler"];
/// What the end-to-end tests run: a real containerd with runc, a busybox
/// image built from Debian's static busybox, and, for the test cluster, the
/// CNI plugins (bridge, host-local, loopback) and iproute2 for its network
/// namespace.
const TEST_PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "busybox-static",
    "containernetworking-plugins",
    "iproute2",
    "e2fsprogs",
    "util-linux",
    "xz-utils",
];
/// The node-health tests make, freeze and corrupt loop-mounted ext4 images; `xz` unpacks the
/// VM kernels' compressed modules.
const TEST_COMMANDS: &[&str] =
    &["containerd", "ctr", "runc", "busybox", "ip", "nsenter", "mkfs.ext4", "debugfs", "fsfreeze", "findmnt", "xz"];
/// The CNI plugins' directory in Debian's package.
const CNI_BRIDGE: &str = "/usr/lib/cni/bridge";

/// Installs whatever is missing, saying what it does.
pub(crate) fn run(tests: bool) -> Result<()> {
    let mut apt_updated = false;
    if has_kernel_toolchain() {
        step("eBPF toolchain: present");
    } else {
        require_debian(TOOLCHAIN_PACKAGES)?;
        step("eBPF toolchain: installing Debian's rustc-web, its library source and LLVM 22");
        apt_install(TOOLCHAIN_PACKAGES, &mut apt_updated)?;
        if !toolchain_has_src(LINKED_TOOLCHAIN) {
            step(&format!("eBPF toolchain: linking /usr as rustup toolchain `{LINKED_TOOLCHAIN}`"));
            crate::command::run(Command::new("rustup").args(["toolchain", "link", LINKED_TOOLCHAIN, "/usr"]))?;
        }
    }
    if bpf_linker_works() {
        step("bpf-linker: present");
    } else {
        require_debian(TOOLCHAIN_PACKAGES)?;
        apt_install(TOOLCHAIN_PACKAGES, &mut apt_updated)?;
        step(&format!("bpf-linker: building {BPF_LINKER_VERSION} against LLVM 22 (about 90 s)"));
        let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
        crate::command::run(
            crate::cargo_command()
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                .env("PATH", path),
        )?;
    }
    if on_path("protoc") {
        step("protoc: present");
    } else {
        require_debian(PROTOC_PACKAGES)?;
        step("protoc: installing protobuf-compiler (the CRI API client is generated at build time)");
        apt_install(PROTOC_PACKAGES, &mut apt_updated)?;
    }
    if tests {
        if has_test_dependencies() {
            step("test dependencies (containerd, runc, busybox, CNI plugins, iproute2): present");
        } else {
            require_debian(TEST_PACKAGES)?;
            step(&format!("test dependencies: installing {}", TEST_PACKAGES.join(", ")));
            apt_install(TEST_PACKAGES, &mut apt_updated)?;
        }
        // Not Debian packages on Debian 12: the machine must bring them.
        crate::cluster::which_go()?;
        if !on_path("kubectl") {
            bail!("kubectl is missing: install kubectl 1.32 or newer (it drives the test cluster)");
        }
        step("go, kubectl: present");
    }
    step("setup complete");
    Ok(())
}

/// The rustup toolchain that builds (and lints) the kernel programs, as `collector/build.rs` picks it.
pub(crate) fn kernel_toolchain() -> &'static str {
    if toolchain_has_src(LINKED_TOOLCHAIN) { LINKED_TOOLCHAIN } else { "nightly" }
}

/// Makes sure the kernel toolchain has clippy: Debian's rustc-web ships it separately.
pub(crate) fn ensure_kernel_clippy() -> Result<()> {
    let toolchain = kernel_toolchain();
    let works = |toolchain: &str| {
        Command::new("rustup")
            .args(["run", toolchain, "cargo", "clippy", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(toolchain) {
        return Ok(());
    }
    if toolchain != LINKED_TOOLCHAIN {
        bail!("the {toolchain} toolchain has no clippy: `rustup component add clippy --toolchain {toolchain}`");
    }
    require_debian(CLIPPY_PACKAGES)?;
    step("kernel toolchain: installing Debian's clippy for rustc-web (lints the kernel programs)");
    let mut updated = false;
    apt_install(CLIPPY_PACKAGES, &mut updated)
}

/// Runs setup only if something is missing, so that `run` and `test` work on a fresh machine.
pub(crate) fn ensure(tests: bool) -> Result<()> {
    let ready = has_kernel_toolchain()
        && bpf_linker_works()
        && on_path("protoc")
        && (!tests || (has_test_dependencies() && crate::cluster::which_go().is_ok() && on_path("kubectl")));
    if ready { Ok(()) } else { run(tests) }
}

fn has_test_dependencies() -> bool {
    TEST_COMMANDS.iter().all(|c| on_path(c)) && Path::new(CNI_BRIDGE).is_file()
}

fn step(message: &str) {
    eprintln!("xtask setup: {message}");
}

fn has_kernel_toolchain() -> bool {
    toolchain_has_src(LINKED_TOOLCHAIN) || toolchain_has_src("nightly")
}

/// Whether `rustup run TOOLCHAIN` has the core library's source, which build-std needs.
fn toolchain_has_src(toolchain: &str) -> bool {
    let Ok(output) = Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&output.stdout);
    output.status.success() && Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core/Cargo.toml").is_file()
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn on_path(program: &str) -> bool {
    crate::command::which(program).is_some()
}

/// Stops with the exact list of what to install where apt cannot do it.
fn require_debian(packages: &[&str]) -> Result<()> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let debian_like = os.lines().any(|line| {
        let line = line.trim_matches('"');
        matches!(line.split_once('='), Some(("ID" | "ID_LIKE", value)) if value.trim_matches('"').split(' ').any(|v| v == "debian" || v == "ubuntu"))
    });
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if debian_like && root {
        return Ok(());
    }
    bail!(
        "cannot install the build dependencies here (automatic set-up needs Debian or Ubuntu, as root). Install:\n\
         - a rustup nightly with rust-src: `rustup toolchain install nightly --component rust-src`\n\
         - bpf-linker: `cargo install bpf-linker`\n\
         - for the tests, the packages: {}",
        packages.join(" ")
    )
}

fn apt_install(packages: &[&str], updated: &mut bool) -> Result<()> {
    if !*updated {
        crate::command::run(Command::new("apt-get").args(["update", "-q"]))?;
        *updated = true;
    }
    crate::command::run(
        Command::new("apt-get").args(["install", "-y", "-q"]).args(packages).env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
