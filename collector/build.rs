//! Builds the kernel programs (`collector-ebpf`) with aya-build so the binary can embed them.
//!
//! The eBPF target needs a toolchain with the standard library's source and
//! `bpf-linker`; `cargo xtask setup` installs both. The choice of toolchain is
//! made here, not in xtask, so that a plain `cargo build -p collector` works.

use std::{env, path::Path, process::Command};

use anyhow::{Context as _, anyhow, bail};

/// The rustup toolchain that `cargo xtask setup` links from Debian's rustc-web.
const LINKED_TOOLCHAIN: &str = "collector-ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=COLLECTOR_EBPF_TOOLCHAIN");
    let toolchain = pick_toolchain()?;
    if toolchain == LINKED_TOOLCHAIN {
        // A stable compiler: build-std needs RUSTC_BOOTSTRAP, which aya-build
        // reads from this process's environment and passes on to cargo.
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    if which("bpf-linker").is_none() {
        bail!("bpf-linker is not on PATH: run `cargo xtask setup` to install it");
    }
    // Read when the script runs, not when it was compiled: two checkouts may share a target dir.
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR is not set")?;
    let root_dir = format!("{manifest_dir}/../collector-ebpf");
    let package = aya_build::Package { name: "collector-ebpf", root_dir: &root_dir, ..Default::default() };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
        .context("building the kernel programs failed (run `cargo xtask setup` if the toolchain is missing)")
}

/// An explicit choice, else the linked Debian toolchain, else a nightly with rust-src.
fn pick_toolchain() -> anyhow::Result<String> {
    if let Ok(explicit) = env::var("COLLECTOR_EBPF_TOOLCHAIN") {
        return Ok(explicit);
    }
    for candidate in [LINKED_TOOLCHAIN, "nightly"] {
        if has_rust_src(candidate) {
            return Ok(candidate.to_owned());
        }
    }
    Err(anyhow!(
        "no toolchain can build the eBPF programs (need `{LINKED_TOOLCHAIN}` or a nightly with rust-src): \
         run `cargo xtask setup`"
    ))
}

/// Whether `rustup run TOOLCHAIN` has the core library's source, which build-std needs.
fn has_rust_src(toolchain: &str) -> bool {
    let Ok(output) = Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]).output() else {
        return false;
    };
    if !output.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&output.stdout);
    Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core/Cargo.toml").is_file()
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    env::var_os("PATH")
        .and_then(|paths| env::split_paths(&paths).map(|dir| dir.join(program)).find(|candidate| candidate.is_file()))
}
