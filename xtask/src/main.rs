//! `cargo xtask`: sets up the machine, then runs, tests or lints the collector.
//!
//! It orchestrates; it does not build. `collector/build.rs` builds the kernel
//! programs, cargo builds everything else.
#![expect(
    clippy::print_stderr,
    reason = "xtask reports its progress on stderr, so that stdout carries only what a task produces \
              (`cargo xtask run -- trace --format json | jq .`)"
)]

mod bench;
mod cluster;
mod command;
mod image;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Set up, run, test and lint the collector")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; prints each step).
    Setup {
        /// Also install what the tests need (containerd, runc, busybox-static).
        #[arg(long)]
        tests: bool,
    },
    /// Build the collector in release mode and run it as root: `cargo xtask run -- trace`.
    Run {
        /// Arguments for the collector (default: `trace`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the collector's OCI image without a container engine: target/image/collector.tar,
    /// named docker.io/local/collector:<version> (the Dockerfile builds the same image with one).
    Image {
        /// Tag the image TAG instead of the collector's version (e.g. a second image for a rollout).
        #[arg(long, value_name = "TAG")]
        tag: Option<String>,
        /// Also import the image into the `k8s.io` namespace of the containerd at this socket.
        #[arg(long, value_name = "SOCKET")]
        import: Option<PathBuf>,
    },
    /// A real single-node Kubernetes for tests (built from the Go module proxy): `up` or `down`.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Run every test: unit tests and the privileged end-to-end tests.
    Test {
        /// Arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the privileged end-to-end tests in a VM booted with another kernel (qemu, no KVM needed).
    TestVm {
        /// Kernel series to boot, from Debian's cloud kernels: `6.1`, `6.12`, or an exact `6.1.0-47`.
        #[arg(long, default_value = "6.1")]
        kernel: String,
        /// Give up (and stop the VM) after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Arguments for every test binary (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure what the collector costs and whether it loses records (root); writes target/bench/results.md.
    Bench {
        /// Short runs: about 10 s of storm and fewer A/B rounds.
        #[arg(long)]
        quick: bool,
        /// Seconds of the main storm (default 60, or 10 with --quick).
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
    },
    /// `cargo fmt --check`, `cargo clippy --all-targets -- -D warnings`, and clippy on the kernel programs.
    Lint,
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Build (cached) and start etcd, the control plane, a kubelet and containerd; returns once the node is Ready.
    Up,
    /// Stop everything `up` started and remove its state (also after a failed `up`).
    Down,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Setup { tests } => setup::run(tests),
        Task::Run { args } => {
            let bin = build_release(&root)?;
            let args = if args.is_empty() { vec!["trace".to_owned()] } else { args };
            let status =
                Command::new(&bin).args(&args).status().with_context(|| format!("cannot run {}", bin.display()))?;
            // The collector's own exit code (2 for usage errors) passes through.
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Image { tag, import } => {
            let built = image::build(&root, tag.as_deref())?;
            if let Some(address) = import {
                image::import(&address, &built.tarball, &built.name)?;
            }
            // Last, alone on its line, for scripts.
            println!("{}", built.name);
            Ok(())
        }
        Task::Cluster { action: ClusterAction::Up } => cluster::up(&root),
        Task::Cluster { action: ClusterAction::Down } => cluster::down(&root),
        Task::Test { args } => {
            setup::ensure(true)?;
            // The end-to-end tests run the collector binary, which cargo only
            // builds for its own package's tests.
            cargo(&root, &["build", "--package", "collector", "--bins"])?;
            // The cluster's kubelet removes pod cgroups under /kubepods that it
            // did not make, where the other end-to-end tests run their
            // containers: those run with no cluster, then the cluster tests.
            let was_up = cluster::is_up(&root);
            if was_up {
                eprintln!(
                    "xtask: stopping the test cluster while the other tests run (its kubelet would remove their pods)"
                );
            }
            cluster::down(&root)?;
            // The kernel programs only build for the bpf target (build.rs does that).
            // --no-fail-fast: one run shows every failing test binary, not the first.
            let mut test = vec![
                "test",
                "--no-fail-fast",
                "--workspace",
                "--exclude",
                "collector-ebpf",
                "--exclude",
                CLUSTER_TESTS,
            ];
            test.extend(args.iter().map(String::as_str));
            let tested = cargo(&root, &test);
            let on_cluster = cluster::up(&root).and_then(|()| {
                let mut test = vec!["test", "--no-fail-fast", "--package", CLUSTER_TESTS];
                test.extend(args.iter().map(String::as_str));
                let kubeconfig = cluster::Paths::new(&root).kubeconfig();
                cargo_with_env(&root, &test, &[("COLLECTOR_TEST_KUBECONFIG", kubeconfig.as_os_str())])
            });
            let stopped = if was_up { Ok(()) } else { cluster::down(&root) };
            tested.and(on_cluster).and(stopped)
        }
        Task::TestVm { kernel, timeout, args } => {
            setup::ensure(true)?;
            vm::run(&root, &vm::Options { kernel, timeout: std::time::Duration::from_secs(timeout), args })
        }
        Task::Bench { quick, duration } => {
            setup::ensure(false)?;
            bench::run(&root, &bench::Options { quick, duration })
        }
        Task::Lint => {
            setup::ensure(false)?;
            cargo(&root, &["fmt", "--all", "--check"])?;
            cargo(
                &root,
                &["clippy", "--workspace", "--exclude", "collector-ebpf", "--all-targets", "--", "-D", "warnings"],
            )?;
            // The kernel programs, for their own target, as aya's clippy.sh does.
            setup::ensure_kernel_clippy()?;
            let target_dir = root.join("target/ebpf-clippy");
            eprintln!("xtask: clippy on collector-ebpf (bpfel-unknown-none)");
            command::run(
                Command::new("rustup")
                    .args(["run", setup::kernel_toolchain(), "cargo", "clippy", "--package", "collector-ebpf"])
                    .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
                    .arg(&target_dir)
                    .args(["--", "-D", "warnings"])
                    // build-std needs unstable flags on the stable-channel toolchain Debian ships.
                    .env("RUSTC_BOOTSTRAP", "1")
                    .current_dir(&root),
            )
        }
    }
}

/// The package of the tests that need the test cluster.
const CLUSTER_TESTS: &str = "collector-cluster-tests";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Sets up what the build needs if anything is missing, builds the collector
/// in release mode, and gives the binary's path (for `run` and `image`).
fn build_release(root: &Path) -> Result<PathBuf> {
    setup::ensure(false)?;
    // Nothing of the build on stdout: `cargo xtask run -- trace --format json | jq .`.
    cargo(root, &["build", "--release", "--package", "collector"])?;
    Ok(root.join("target/release/collector"))
}

/// A cargo command without the variables `cargo run` set for xtask itself.
///
/// Cargo compares a build script's `rerun-if-env-changed` variables with its own environment:
/// ring's build script names `CARGO_MANIFEST_DIR`, which is unset for `cargo build` but
/// `/work/.../xtask` under `cargo xtask`, so each alternately rebuilt ring, rustls, kube and the
/// collector (3 minutes of release build, for nothing).
pub(crate) fn cargo_command() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_by_cargo_run = ["CARGO_PKG_", "CARGO_MANIFEST_"].iter().any(|prefix| name.starts_with(prefix))
            || ["CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&name);
        if set_by_cargo_run {
            command.env_remove(name);
        }
    }
    command
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    cargo_with_env(root, args, &[])
}

fn cargo_with_env(root: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut command = cargo_command();
    command.args(args).envs(env.iter().copied()).current_dir(root);
    // A build prints nothing the caller consumes; tests print their results, which stay on stdout.
    if args.first() == Some(&"build") {
        command.stdout(std::io::stderr());
    }
    let status = command.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_runs_without_the_variables_cargo_run_set_for_xtask() {
        // `cargo test` sets these for this process as `cargo xtask` sets them for xtask.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some() && std::env::var_os("CARGO_PKG_NAME").is_some());
        let command = cargo_command();
        let removed: Vec<&std::ffi::OsStr> =
            command.get_envs().filter(|(_, value)| value.is_none()).map(|(name, _)| name).collect();
        for name in ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_PKG_NAME", "CARGO_PKG_VERSION"] {
            assert!(removed.contains(&std::ffi::OsStr::new(name)), "{name} is passed on: {removed:?}");
        }
        // What configures cargo itself stays.
        assert!(!removed.iter().any(|name| *name == "CARGO_HOME" || *name == "CARGO_TARGET_DIR"), "{removed:?}");
    }
}
