//! `collector doctor`, and the same checks when `collector run` starts: as root
//! every check the probes need passes; without CAP_PERFMON (and CAP_SYS_ADMIN,
//! which would stand in for it) both name the missing capability and exit 1.
#![expect(clippy::unwrap_used, reason = "the helpers are test steps: a failure fails the test")]

use std::process::{Command, Output};

use collector_tests::{collector::binary, daemon::StateDir, privileged};
use serde_json::Value;

/// Every check, in order, on a machine without a cluster.
const CHECKS: [&str; 8] = ["capabilities", "kernel", "btf", "tracefs", "bpf", "cgroups", "cri", "api"];

/// The line `collector doctor` prints when CAP_PERFMON is missing.
const NO_PERFMON: &str = "FAIL capabilities  missing capability CAP_PERFMON: attaching tracepoints (perf_event_open) \
                          and reading kernel memory fail without it  fix: add it to securityContext.capabilities.add";

/// `collector ARGS` with nothing from this shell's environment that would change what it checks:
/// no cluster, no configuration file, the default log level. With `drop_caps`, under
/// `setpriv` (util-linux, always installed) without CAP_PERFMON and CAP_SYS_ADMIN.
fn collector(args: &[&str], drop_caps: bool) -> Output {
    let mut command = if drop_caps {
        let mut setpriv = Command::new("setpriv");
        setpriv.args(["--inh-caps=-perfmon,-sys_admin", "--bounding-set=-perfmon,-sys_admin", "--"]);
        setpriv.arg(binary().unwrap());
        setpriv
    } else {
        Command::new(binary().unwrap())
    };
    // A node name of its own: the qemu VM's hostname, "(none)", is no valid one.
    command
        .args(args)
        .env("COLLECTOR_LOG", "warn")
        .env("NODE_NAME", "doctor-test")
        .env_remove("KUBERNETES_SERVICE_HOST");
    for name in ["COLLECTOR_CONFIG", "COLLECTOR_KUBECONFIG", "COLLECTOR_CRI_SOCKET"] {
        command.env_remove(name);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The check lines of a text report: status, name, the rest.
fn checks(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .take_while(|line| !line.is_empty())
        .map(|line| {
            let (status, rest) = line.split_once(' ').unwrap();
            let (name, rest) = rest.trim_start().split_once("  ").unwrap();
            (status.to_owned(), name.to_owned(), rest.trim_start().to_owned())
        })
        .collect()
}

#[test]
fn as_root_every_check_the_probes_need_passes() {
    if !privileged("as_root_every_check_the_probes_need_passes") {
        return;
    }
    let output = collector(&["doctor"], false);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let found = checks(&stdout);
    let names: Vec<&str> = found.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names, CHECKS, "{stdout}");
    for (status, name, detail) in &found[..5] {
        assert_eq!(status, "ok", "{name}: {detail}\n{stdout}");
    }
    assert_eq!(found[0].2, "CAP_BPF, CAP_PERFMON");
    assert!(stdout.contains("\nkernel   ") && stdout.contains("\ncgroups  ") && stdout.contains("\nruntime  "));
    assert!(stdout.lines().last().unwrap().starts_with("0 failed, "), "{stdout}");

    let output = collector(&["doctor", "--format", "json"], false);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], true);
    let names: Vec<&str> = report["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, CHECKS);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(report["kernel"], release.trim());
}

#[test]
fn without_cap_perfmon_doctor_names_it_and_exits_1() {
    if !privileged("without_cap_perfmon_doctor_names_it_and_exits_1") {
        return;
    }
    let output = collector(&["doctor", "--cri-socket", "none"], true);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.lines().any(|line| line == NO_PERFMON), "{stdout}");
    let found = checks(&stdout);
    let bpf = found.iter().find(|(_, name, _)| name == "bpf").unwrap();
    assert_eq!(bpf.0, "ok", "CAP_BPF alone creates maps: {stdout}");
}

#[test]
fn without_cap_perfmon_the_daemon_stops_before_loading_and_names_it() {
    if !privileged("without_cap_perfmon_the_daemon_stops_before_loading_and_names_it") {
        return;
    }
    let state = StateDir::new("doctor-no-perfmon").unwrap();
    let state = state.path().to_str().unwrap();
    let args = ["run", "--sink", "stdout", "--cri-socket", "none", "--state-dir", state];
    let output = collector(&[&args[..], &["--metrics-addr", "127.0.0.1:0", "--node-name", "test-node"]].concat(), true);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("collector: running"), "never ready: {stderr}");
    // Not a terminal: the log is JSON, one object per line, as a DaemonSet's log collector reads it.
    let error = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR line: {stderr}"));
    assert_eq!(
        error["message"],
        "capabilities: missing capability CAP_PERFMON: attaching tracepoints (perf_event_open) and reading kernel \
         memory fail without it; fix: add it to securityContext.capabilities.add"
    );
    assert_eq!(error["target"], "collector::doctor");
    assert!(
        stderr.ends_with(
            "collector: not permitted to load BPF programs: run as root, or grant CAP_BPF and CAP_PERFMON\n"
        ),
        "the error the probes' own check gave: {stderr}"
    );
}
