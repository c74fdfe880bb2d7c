//! `cargo xtask test-vm --kernel 6.1`: the privileged end-to-end tests on
//! the kernels that nodes actually run, not just on this machine's.
//!
//! It boots Debian's cloud kernel of that series under qemu with software
//! emulation (this machine's /dev/kvm is a nested one that cannot boot a stock
//! kernel), with an initramfs that holds everything: the collector, the test
//! binaries of `collector-tests`, their helper binaries, busybox, the shared
//! libraries, and a generated `/init` that mounts the kernel file systems
//! (pure cgroup v2 at /sys/fs/cgroup, tracefs, bpffs), runs every test binary
//! as root with `CI=true`, prints one `VM-VERDICT:` line on the serial console
//! and powers off. This side echoes the console, reads the verdict and fails
//! on FAIL, on no verdict, or on timeout.

mod assets;
mod initramfs;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use initramfs::{Archive, shell_quote};

/// Integration tests of `collector-tests` (by `[[test]]` name) that need
/// containerd, runc and an image, which the VM does not have: they run on the
/// host only, as do the `cluster_` tests, which need the test cluster. The
/// convention is a `cri_`, `containerd_` or `cluster_` prefix; the list
/// holds the ones named before the convention. Everything else runs in the VM.
const HOST_ONLY_PREFIXES: &[&str] = &["cri_", "containerd_", "cluster_"];
const HOST_ONLY_TESTS: &[&str] = &[];

/// Host binaries the VM holds, at their path there, from their path here (util-linux and
/// e2fsprogs, which `cargo xtask setup --tests` installs).
const HOST_TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/setpriv", "/usr/bin/setpriv"),
    ("/usr/sbin/losetup", "/usr/sbin/losetup"),
    ("/usr/sbin/mkfs.ext4", "/usr/sbin/mke2fs"),
    ("/usr/sbin/debugfs", "/usr/sbin/debugfs"),
];
/// Where the VM finds the kernel modules it loads at boot.
const MODULE_DIR: &str = "/lib/modules";
const VERDICT: &str = "VM-VERDICT: ";
const INIT_UP: &str = "VM-INIT: up";

/// What `cargo xtask test-vm` was asked for.
#[derive(Debug)]
pub(crate) struct Options {
    /// Kernel series (`6.1`, `6.12`) or exact Debian ABI (`6.1.0-47`).
    pub(crate) kernel: String,
    /// Bound on the VM's whole run.
    pub(crate) timeout: Duration,
    /// Passed to every test binary (a name filter, `--nocapture`, ...).
    pub(crate) args: Vec<String>,
}

/// Builds, boots, runs the tests in the VM and fails unless they all pass.
pub(crate) fn run(root: &Path, options: &Options) -> Result<()> {
    let start = Instant::now();
    let cache = assets::cache_dir();
    let kernel = assets::kernel(&cache, &options.kernel)?;
    let (qemu, qemu_version) = assets::qemu(&cache)?;
    let fetched = start.elapsed();
    eprintln!("xtask test-vm: kernel {} ({}), {qemu_version}", kernel.package, kernel.image.display());

    let collector = build_collector(root)?;
    let built = build_tests(root)?;
    let built_at = start.elapsed();
    if built.tests.is_empty() {
        bail!("collector-tests has no integration test that can run in a VM");
    }

    // Next to the build output: target/<profile>/vm/.
    let work = collector.parent().context("the collector binary has no parent directory")?.join("vm");
    let initrd = work.join(format!("initramfs-{}.cpio", options.kernel));
    let stage = work.join(format!("stage-{}", options.kernel));
    let size = assemble(&stage, &collector, &built, &kernel.modules, &options.args)?.write(&initrd)?;
    std::fs::remove_dir_all(&stage).ok();
    let assembled_at = start.elapsed();
    eprintln!(
        "xtask test-vm: initramfs {} ({:.1} MB, {} test binaries: {})",
        initrd.display(),
        size as f64 / 1e6,
        built.tests.len(),
        built.tests.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
    );

    let log = work.join(format!("serial-{}.log", options.kernel));
    let boot = || -> Result<Outcome> {
        let mut cmd = qemu.command()?;
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1G"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-monitor", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(&kernel.image)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"]);
        watch(cmd, options.timeout, &log)
    };
    let mut outcome = boot()?;
    if outcome.died_booting() {
        // Under software emulation a guest kernel has died, rarely, before /init
        // (6.12: an int3 trap in sched_clock_cpu while patching its static keys):
        // no test ran, so one more boot says nothing about the tests. A second
        // death, or any death after /init started, fails the run.
        let first = work.join(format!("serial-{}-first-boot.log", options.kernel));
        std::fs::rename(&log, &first).ok();
        eprintln!(
            "xtask test-vm: kernel {}: the guest died before /init ran (console: {}); booting once more",
            kernel.package,
            first.display()
        );
        outcome = boot()?;
    }
    let total = start.elapsed();

    eprintln!(
        "xtask test-vm: fetch {:.1} s, build {:.1} s, initramfs {:.1} s, boot {}, tests in VM {:.1} s, total {:.1} s; console log: {}",
        fetched.as_secs_f64(),
        (built_at - fetched).as_secs_f64(),
        (assembled_at - built_at).as_secs_f64(),
        outcome.boot.map_or_else(|| "?".to_owned(), |b| format!("{:.1} s", b.as_secs_f64())),
        outcome.ran.as_secs_f64() - outcome.boot.unwrap_or_default().as_secs_f64(),
        total.as_secs_f64(),
        log.display()
    );
    // The plain closing line CI reads, for the tests that ran inside the VM.
    println!("test-vm: {} passed, {} failed", outcome.passed, outcome.failed);
    match outcome.verdict.as_deref() {
        Some(v) if v.starts_with("PASS") && outcome.failed == 0 && outcome.passed > 0 => {
            eprintln!("xtask test-vm: kernel {}: PASS", kernel.package);
            Ok(())
        }
        Some(v) if v.starts_with("PASS") => bail!(
            "kernel {}: the test binaries exited 0 but reported {} passed, {} failed",
            kernel.package,
            outcome.passed,
            outcome.failed
        ),
        Some(v) => bail!("kernel {}: {v}", kernel.package),
        None if outcome.timed_out => bail!(
            "kernel {}: no verdict within {} s (qemu killed); see {}",
            kernel.package,
            options.timeout.as_secs(),
            log.display()
        ),
        None => bail!(
            "kernel {}: the VM stopped without a verdict (kernel panic or init died); see {}",
            kernel.package,
            log.display()
        ),
    }
}

/// One integration test binary of `collector-tests`.
#[derive(Debug)]
struct TestBinary {
    name: String,
    path: PathBuf,
    /// cargo runs tests in their package's directory; so does the VM.
    manifest_dir: PathBuf,
}

#[derive(Debug, Default)]
struct Built {
    tests: Vec<TestBinary>,
    /// The package's binaries (`victim`), at the paths the tests baked in.
    helpers: Vec<PathBuf>,
}

fn build_collector(root: &Path) -> Result<PathBuf> {
    let messages = cargo_json(root, &["build", "--package", "collector", "--bins"])?;
    messages
        .iter()
        .filter(|m| m["target"]["name"] == "collector")
        .find_map(|m| m["executable"].as_str())
        .map(PathBuf::from)
        .context("cargo built no collector binary")
}

fn build_tests(root: &Path) -> Result<Built> {
    // The same package selection as `cargo xtask test`, so that features
    // unify the same way and what it built is reused, not rebuilt.
    let messages = cargo_json(root, &["test", "--workspace", "--exclude", "collector-ebpf", "--no-run"])?;
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
    let manifest = canonical(&root.join("tests/Cargo.toml"));
    let mut built = Built::default();
    for m in messages {
        let (Some(exe), Some(name)) = (m["executable"].as_str(), m["target"]["name"].as_str()) else {
            continue;
        };
        if m["manifest_path"].as_str().map(|p| canonical(Path::new(p))) != Some(manifest.clone()) {
            continue;
        }
        let kinds = m["target"]["kind"].as_array().cloned().unwrap_or_default();
        let is = |kind: &str| kinds.iter().any(|k| k == kind);
        if is("bin") {
            built.helpers.push(PathBuf::from(exe));
        } else if is("test") && m["profile"]["test"] == true {
            if HOST_ONLY_TESTS.contains(&name) || HOST_ONLY_PREFIXES.iter().any(|p| name.starts_with(p)) {
                eprintln!("xtask test-vm: {name}: host only (needs containerd), not run in the VM");
                continue;
            }
            built.tests.push(TestBinary {
                name: name.to_owned(),
                path: PathBuf::from(exe),
                manifest_dir: root.join("tests"),
            });
        }
        // The library's own unit tests start containerd: host only.
    }
    built.tests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(built)
}

/// Runs cargo with JSON messages on stdout (diagnostics still rendered on stderr).
fn cargo_json(root: &Path, args: &[&str]) -> Result<Vec<Value>> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let output = crate::cargo_command()
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!("cargo {} failed ({})", args.join(" "), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .collect())
}

/// Everything the VM holds, at its host path.
/// `stage` holds the stripped copies of the binaries until the archive is written.
fn assemble(stage: &Path, collector: &Path, built: &Built, modules: &[PathBuf], args: &[String]) -> Result<Archive> {
    if stage.exists() {
        std::fs::remove_dir_all(stage)?;
    }
    std::fs::create_dir_all(stage)?;
    let mut archive = Archive::new();
    let mut binaries: Vec<&Path> = vec![collector];
    binaries.extend(built.helpers.iter().map(PathBuf::as_path));
    binaries.extend(built.tests.iter().map(|t| t.path.as_path()));
    let mut libraries = Vec::new();
    for (index, binary) in binaries.iter().enumerate() {
        archive.file(binary, &initramfs::stripped(binary, stage, index))?;
        libraries.extend(crate::command::shared_libraries(binary)?);
    }

    // util-linux's setpriv (busybox's lacks --bounding-set): the tests drop capabilities with it.
    // e2fsprogs and losetup (busybox's lack ext4, debugfs and `--show`): the node-health tests
    // make, corrupt and loop-mount ext4 images.
    for (path, source) in HOST_TOOLS {
        let source = Path::new(source);
        archive
            .file(path, source)
            .with_context(|| format!("{} is missing (`cargo xtask setup --tests`)", source.display()))?;
        libraries.extend(crate::command::shared_libraries(source)?);
    }
    archive.file("/etc/mke2fs.conf", Path::new("/etc/mke2fs.conf"))?;
    for module in modules {
        let name = module.file_name().context("a module without a name")?;
        archive.file(Path::new(MODULE_DIR).join(name), module)?;
    }

    // busybox is the shell, sleep, true, mount and poweroff the tests and /init call.
    let busybox = crate::command::which("busybox")
        .context("busybox is not installed (`cargo xtask setup --tests` installs busybox-static)")?;
    archive.file("/bin/busybox", &busybox)?;
    libraries.extend(crate::command::shared_libraries(&busybox)?);
    let applets = Command::new(&busybox).arg("--list-full").output().context("cannot run busybox --list-full")?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        let path = Path::new("/").join(applet.trim());
        if !archive.contains(&path) {
            archive.symlink(path, "/bin/busybox");
        }
    }
    for library in libraries {
        // The loader and libc are regular files there, whatever symlinks lead to them here.
        archive.file(&library, &library)?;
    }
    for test in &built.tests {
        archive.dir(&test.manifest_dir, 0o755);
    }
    archive.text("/init", init_script(collector, &built.tests, args), 0o755);
    Ok(archive)
}

/// PID 1 of the VM, run by busybox sh.
fn init_script(collector: &Path, tests: &[TestBinary], args: &[String]) -> String {
    let mut args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    if !args.iter().any(|a| a.contains("--test-threads")) {
        // One test at a time: emulation is slow, and the tests' own timeouts
        // are sized for a real CPU, not for tests competing for two emulated ones.
        args.push("--test-threads=1".to_owned());
    }
    let args = args.join(" ");
    let mut script = format!(
        r#"#!/bin/sh
# Generated by `cargo xtask test-vm`: PID 1 of the test VM.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root CI=true RUST_BACKTRACE=1 COLLECTOR_BIN={collector}
# Debian's kernels take fentry programs: tests/oom.rs then checks the out_of_memory probe attached.
export COLLECTOR_TEST_FENTRY_ALLOWED=1
fail() {{ echo "{VERDICT}FAIL $*"; sync; poweroff -f; echo o > /proc/sysrq-trigger; sleep 10; exit 1; }}
mnt() {{ mkdir -p "$3" && mount -t "$1" "$2" "$3" || fail "cannot mount $1 at $3"; }}
mnt proc proc /proc
mnt sysfs sysfs /sys
mnt devtmpfs devtmpfs /dev
mnt cgroup2 cgroup2 /sys/fs/cgroup
mnt tracefs tracefs /sys/kernel/tracing
mnt bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
for m in {modules}/*.ko; do [ -e "$m" ] && {{ insmod "$m" || fail "cannot load $m"; }}; done
# The daemon's tests serve metrics on 127.0.0.1: bring loopback up (busybox ip).
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up 2>/dev/null
# Controllers for the test cgroups (memory.max and memcg OOM kills), as on a pure v2 node.
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
done
echo "{INIT_UP}: kernel $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime) s, controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
[ -e /sys/kernel/btf/vmlinux ] || fail "the kernel has no BTF at /sys/kernel/btf/vmlinux"
for tp in sched/sched_process_exit oom/mark_victim signal/signal_generate cgroup/cgroup_attach_task; do
    f=/sys/kernel/tracing/events/$tp/format
    if [ -e $f ]; then
        echo "VM-INFO: $tp:$(grep -o 'field:[^;]*' $f | sed -n 's/field://;5,$p' | tr '\n' ',')"
    else
        echo "VM-INFO: $tp: missing"
    fi
done
ok=0
failed=""
"#,
        collector = shell_quote(&collector.to_string_lossy()),
        modules = MODULE_DIR,
    );
    for test in tests {
        script.push_str(&format!(
            "echo \"VM-TEST: {name}: start\"\n\
             (cd {dir} && {path} {args})\n\
             rc=$?\n\
             echo \"VM-TEST: {name}: exit status $rc\"\n\
             if [ $rc -eq 0 ]; then ok=$((ok+1)); else failed=\"$failed {name}\"; fi\n",
            name = test.name,
            dir = shell_quote(&test.manifest_dir.to_string_lossy()),
            path = shell_quote(&test.path.to_string_lossy()),
        ));
    }
    script.push_str(&format!(
        r#"if [ -z "$failed" ]; then
    echo "{VERDICT}PASS $ok test binaries"
else
    echo "{VERDICT}FAIL test binaries:$failed"
fi
sync
poweroff -f
echo o > /proc/sysrq-trigger
sleep 10
"#
    ));
    script
}

/// What the serial console said.
#[derive(Debug, Default)]
struct Outcome {
    verdict: Option<String>,
    passed: u64,
    failed: u64,
    /// From qemu's start to the first line of /init.
    boot: Option<Duration>,
    /// From qemu's start to its end.
    ran: Duration,
    timed_out: bool,
}

/// Runs qemu, echoes and logs its console, and stops it after `timeout`.
fn watch(mut cmd: Command, timeout: Duration, log: &Path) -> Result<Outcome> {
    eprintln!("xtask test-vm: {cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start qemu")?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
            line.clear();
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let mut file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut outcome = Outcome::default();
    let deadline = start + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                println!("{line}");
                writeln!(file, "{line}").ok();
                outcome.read(&line, start.elapsed());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                outcome.timed_out = true;
                // Only our own child, by its handle.
                child.kill().ok();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().context("cannot wait for qemu")?;
    reader.join().ok();
    outcome.ran = start.elapsed();
    if !outcome.timed_out && !status.success() {
        eprintln!("xtask test-vm: qemu exited with {status}");
    }
    Ok(outcome)
}

impl Outcome {
    /// Whether the guest stopped before its `/init` said it was up. A boot that
    /// hangs until the timeout is not retried: it has already cost the whole bound.
    const fn died_booting(&self) -> bool {
        !self.timed_out && self.boot.is_none() && self.verdict.is_none() && self.passed == 0 && self.failed == 0
    }

    fn read(&mut self, line: &str, at: Duration) {
        if line.starts_with(INIT_UP) && self.boot.is_none() {
            self.boot = Some(at);
        }
        if let Some(verdict) = line.strip_prefix(VERDICT) {
            self.verdict = Some(verdict.to_owned());
        }
        if let Some((passed, failed)) = libtest_result(line) {
            self.passed += passed;
            self.failed += failed;
        }
    }
}

/// `test result: ok. 5 passed; 0 failed; 0 ignored; ...` -> (5, 0).
fn libtest_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |label: &str| {
        rest.split(';').find_map(|part| {
            let (n, l) = part.trim().rsplit_once(' ')?;
            (l == label).then(|| n.rsplit(' ').next()?.parse().ok()).flatten()
        })
    };
    Some((count("passed")?, count("failed")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summary_lines_are_counted() {
        assert_eq!(
            libtest_result(
                "test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.02s"
            ),
            Some((5, 0))
        );
        assert_eq!(libtest_result("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured"), Some((3, 2)));
        assert_eq!(libtest_result("running 5 tests"), None);
    }

    #[test]
    fn the_verdict_and_boot_time_come_from_the_console() {
        let mut outcome = Outcome::default();
        outcome.read("[    0.000000] Linux version 6.1.0", Duration::from_secs(1));
        outcome.read("VM-INIT: up: kernel 6.1.0-56-cloud-amd64", Duration::from_secs(9));
        outcome.read("test result: ok. 5 passed; 0 failed; 0 ignored", Duration::from_secs(20));
        outcome.read("test result: ok. 1 passed; 0 failed; 0 ignored", Duration::from_secs(25));
        outcome.read("VM-VERDICT: PASS 2 test binaries", Duration::from_secs(26));
        assert_eq!(outcome.boot, Some(Duration::from_secs(9)));
        assert_eq!(outcome.verdict.as_deref(), Some("PASS 2 test binaries"));
        assert_eq!((outcome.passed, outcome.failed), (6, 0));
    }

    #[test]
    fn only_a_guest_that_died_before_init_is_booted_again() {
        let mut panicked = Outcome::default();
        panicked.read("[    0.084000] Kernel panic - not syncing: Attempted to kill the idle task!", Duration::ZERO);
        assert!(panicked.died_booting());
        let mut init_died = Outcome::default();
        init_died.read("VM-INIT: up: kernel 6.12.0", Duration::from_secs(9));
        assert!(!init_died.died_booting(), "a death after /init started may be a test's doing");
        let hung = Outcome { timed_out: true, ..Outcome::default() };
        assert!(!hung.died_booting(), "a hung boot has used the whole timeout");
    }

    #[test]
    fn init_runs_every_test_binary_one_thread_at_a_time() {
        let tests = [TestBinary {
            name: "exit".to_owned(),
            path: PathBuf::from("/w/target/debug/deps/exit-1234"),
            manifest_dir: PathBuf::from("/w/tests"),
        }];
        let script = init_script(Path::new("/w/target/debug/collector"), &tests, &[]);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("COLLECTOR_BIN='/w/target/debug/collector'\n"));
        assert!(script.contains("(cd '/w/tests' && '/w/target/debug/deps/exit-1234' --test-threads=1)\n"));
        assert!(script.contains("mnt cgroup2 cgroup2 /sys/fs/cgroup\n"));
        assert!(script.trim_end().ends_with("sleep 10"));
        let filtered = init_script(Path::new("/c"), &tests, &["--test-threads=2".to_owned(), "sig'kill".to_owned()]);
        assert!(filtered.contains(r"'/w/target/debug/deps/exit-1234' '--test-threads=2' 'sig'\''kill')"));
    }
}
