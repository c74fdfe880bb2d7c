//! Node health caused for real outside containers: lines in node-problem-detector's formats
//! written to `/dev/kmsg`, a task hung on a frozen ext4, a corrupt ext4 and a block device whose
//! writes fail become the Node Events and conditions NPD would set, and a storm of log lines one
//! Event with an exact count. Needs no container runtime, so it runs in the 6.1 VM too
//! (`cri_node_health.rs` has the same faults in pods).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use collector_tests::daemon::{Daemon, StateDir, journal_summary, node_conditions, sample};
use collector_tests::node::{LoopDevice, LoopFs, Sysctl, ext4_lookup_error, kmsg, node_events, wait_condition};
use collector_tests::{not_on_this_kernel, privileged};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Held by every test here: each daemon sees every hung task and kernel line, and the kernel-log
/// test asserts that `KernelDeadlock` and `ReadonlyFilesystem` start False.
static NODE_WIDE: Mutex<()> = Mutex::new(());

#[test]
fn kernel_log_problems_become_node_events_and_conditions_and_a_storm_one_event_with_exact_counts() {
    if !privileged("kernel_log_problems_become_node_events_and_conditions_and_a_storm_one_event_with_exact_counts") {
        return;
    }
    let _node = NODE_WIDE.lock().unwrap_or_else(PoisonError::into_inner);
    let state = StateDir::new("kmsg").unwrap();
    let daemon = Daemon::start(&state, &["stdout", "journal"], "none", &["--condition-clear-after", "3s"]).unwrap();
    // Each probe is attached exactly where this kernel has its tracepoint (ext4's only once
    // the module is loaded, `ras` only with CONFIG_RAS).
    let metrics = daemon.metrics().unwrap();
    let events = Path::new("/sys/kernel/tracing/events");
    for (probe, tracepoint) in [
        ("sched_process_hang", "sched/sched_process_hang"),
        ("console", "printk/console"),
        ("ext4_error", "ext4/ext4_error"),
        ("block_rq_error", "block/block_rq_error"),
        ("mc_event", "ras/mc_event"),
        ("mce_record", "mce/mce_record"),
    ] {
        let present = u64::from(events.join(tracepoint).is_dir());
        assert_eq!(sample(&metrics, "collector_probe_attached", &format!("probe=\"{probe}\"")), present, "{metrics}");
    }
    assert_eq!(sample(&metrics, "collector_probe_attached", "probe=\"console\""), 1, "{metrics}");
    // NPD's conditions, False with NPD's reasons, and ours.
    let conditions = node_conditions(state.path()).unwrap();
    let calm: Vec<(&str, &str)> =
        conditions.iter().map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap())).collect();
    assert_eq!(
        calm.iter().map(|(kind, _)| *kind).collect::<Vec<_>>(),
        ["KernelDeadlock", "XfsShutdown", "CperHardwareErrorFatal", "ReadonlyFilesystem", "FrequentContainerOOM"]
    );
    assert_eq!(calm[0], ("KernelDeadlock", "False"));
    assert_eq!(
        &calm[1..],
        [
            ("XfsShutdown", "False"),
            ("CperHardwareErrorFatal", "False"),
            ("ReadonlyFilesystem", "False"),
            ("FrequentContainerOOM", "False")
        ]
    );
    let readonly_calm = conditions.iter().find(|c| c["type"] == "ReadonlyFilesystem").unwrap();
    assert_eq!(
        (&readonly_calm["reason"], &readonly_calm["message"]),
        (&"FilesystemIsNotReadOnly".into(), &"Filesystem is not read-only".into())
    );

    // One line in each of NPD's formats, with this test's pid so no other line matches.
    let pid = std::process::id();
    let oops = format!("BUG: unable to handle kernel NULL pointer dereference at 00000000000{pid}");
    let lockup = format!("BUG: soft lockup - CPU#1 stuck for 23s! [collector-test:{pid}]");
    let readonly = format!("EXT4-fs (loop{pid}): Remounting filesystem read-only");
    for line in [&oops, &lockup, &readonly] {
        kmsg(2, line).unwrap();
    }
    let events = daemon
        .wait_for(TIMEOUT, |events| {
            [("KernelOops", &oops), ("SoftLockup", &lockup), ("FilesystemIsReadOnly", &readonly)]
                .iter()
                .all(|(reason, line)| node_events(events, reason).iter().any(|e| e["message"] == line.as_str()))
        })
        .unwrap();
    for reason in ["KernelOops", "SoftLockup", "FilesystemIsReadOnly"] {
        let event = node_events(&events, reason)[0];
        assert_eq!((&event["type"], &event["involvedObject"]["uid"]), (&"Warning".into(), &"test-node".into()));
    }
    let readonly_condition = wait_condition(&state, "ReadonlyFilesystem", "True", TIMEOUT).unwrap();
    assert_eq!(readonly_condition["reason"], "FilesystemIsReadOnly");
    assert_eq!(readonly_condition["message"], readonly.as_str());
    // A one-off fault: the condition clears once nothing has said it again for 3 s.
    wait_condition(&state, "ReadonlyFilesystem", "False", TIMEOUT).unwrap();

    // A storm: 1000 identical lines are one Event (aggregated, spam-filtered), counted exactly.
    let storm = format!("BUG: soft lockup - CPU#0 stuck for 22s! [storm:{pid}]");
    for _ in 0..1000 {
        kmsg(2, &storm).unwrap();
    }
    daemon.wait_metric("collector_kernel_problems_total", "reason=\"SoftLockup\"", 1001, TIMEOUT).unwrap();
    let metrics = daemon.metrics().unwrap();
    assert_eq!(sample(&metrics, "collector_kernel_records_rate_limited_total", "type=\"kernel_log\""), 0, "{metrics}");
    let stopped = daemon.stop().unwrap();
    let storm_events: Vec<&Value> =
        node_events(&stopped.events, "SoftLockup").into_iter().filter(|e| e["message"] == storm.as_str()).collect();
    let names: std::collections::BTreeSet<&str> =
        storm_events.iter().map(|e| e["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 1, "one Event object for the storm: {names:?}");
    assert!(!storm_events.is_empty() && storm_events.len() <= 25, "client-go's burst: {}", storm_events.len());
    let summary = journal_summary(state.path(), &["--reason", "SoftLockup"]).unwrap();
    let counted: u64 = summary.iter().map(|row| row["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, 1001, "{summary:#?}");
}

#[test]
fn a_task_hung_on_a_frozen_filesystem_is_a_node_event_and_sets_kernel_deadlock_until_released() {
    if !privileged("a_task_hung_on_a_frozen_filesystem_is_a_node_event_and_sets_kernel_deadlock_until_released") {
        return;
    }
    let _node = NODE_WIDE.lock().unwrap_or_else(PoisonError::into_inner);
    let _timeout = Sysctl::set("kernel.hung_task_timeout_secs", "2").unwrap();
    let mut volume = LoopFs::new("hung-node", 16).unwrap();
    let state = StateDir::new("hung-node").unwrap();
    let daemon = Daemon::start(&state, &["stdout", "journal"], "none", &["--condition-clear-after", "3s"]).unwrap();
    volume.freeze().unwrap();
    let table = volume.path().join("table");
    let mut writer = Command::new("sh").arg("-c").arg(format!("echo row > {}", table.display())).spawn().unwrap();
    let expected = format!("Process {} (sh) blocked for more than 2 s", writer.id());

    // Not in a pod: the Event is the Node's, and the condition says the same.
    let events = daemon
        .wait_for(TIMEOUT, |events| node_events(events, "TaskHung").iter().any(|e| e["message"] == expected.as_str()))
        .unwrap();
    let event = node_events(&events, "TaskHung").into_iter().find(|e| e["message"] == expected.as_str()).unwrap();
    assert_eq!((&event["type"], &event["involvedObject"]["uid"]), (&"Warning".into(), &"test-node".into()));
    let deadlock = wait_condition(&state, "KernelDeadlock", "True", TIMEOUT).unwrap();
    assert_eq!((&deadlock["reason"], &deadlock["message"]), (&"TaskHung".into(), &expected.as_str().into()));

    // Released: the write completes, and the condition clears 3 s after the last report.
    volume.thaw().unwrap();
    let released = Instant::now();
    assert!(writer.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&table).unwrap(), "row\n");
    wait_condition(&state, "KernelDeadlock", "False", TIMEOUT).unwrap();
    assert!(released.elapsed() >= Duration::from_secs(2), "cleared before the clear time: {:?}", released.elapsed());
    let metrics = daemon.metrics().unwrap();
    assert!(sample(&metrics, "collector_kernel_records_total", "type=\"hung_task\"") >= 1, "{metrics}");
}

#[test]
fn a_corrupt_filesystem_is_a_filesystem_error_on_the_node_and_sets_readonly_filesystem() {
    if !privileged("a_corrupt_filesystem_is_a_filesystem_error_on_the_node_and_sets_readonly_filesystem") {
        return;
    }
    let _node = NODE_WIDE.lock().unwrap_or_else(PoisonError::into_inner);
    let volume = LoopFs::corrupted("fserror-node").unwrap();
    let device = volume.device().unwrap();
    let state = StateDir::new("fserror-node").unwrap();
    let daemon = Daemon::start(&state, &["stdout", "journal"], "none", &[]).unwrap();
    // Looking up the file whose inode was cleared is the ext4 error.
    let ls =
        Command::new("ls").arg("-l").arg(volume.path().join("d")).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    let mut ls = ls.unwrap();
    let ls_pid = ls.id();
    assert!(!ls.wait().unwrap().success(), "ls of the corrupt directory succeeded");
    let events = daemon
        .wait_for(TIMEOUT, |events| {
            node_events(events, "FilesystemError")
                .iter()
                .any(|e| e["message"].as_str().is_some_and(|m| ext4_lookup_error(m, &device).is_some()))
        })
        .unwrap();
    let errors = node_events(&events, "FilesystemError");
    let message = errors[0]["message"].as_str().unwrap();
    let (_, process) = ext4_lookup_error(message, &device).unwrap_or_else(|| panic!("{message}"));
    assert_eq!(process, format!("{ls_pid} (ls)"), "{message}");
    assert_eq!(errors[0]["type"], "Warning");
    // The kernel's own "EXT4-fs error" line adds no event: the probe's says more.
    assert!(node_events(&events, "Ext4Error").is_empty(), "{events:#?}");
    let readonly = wait_condition(&state, "ReadonlyFilesystem", "True", TIMEOUT).unwrap();
    assert_eq!(readonly["reason"], "FilesystemIsReadOnly");
    assert_eq!(readonly["message"], format!("EXT4-fs ({device}): Remounting filesystem read-only").as_str());
}

#[test]
fn a_failed_block_write_is_an_io_error_on_the_node() {
    if !privileged("a_failed_block_write_is_an_io_error_on_the_node") {
        return;
    }
    let _node = NODE_WIDE.lock().unwrap_or_else(PoisonError::into_inner);
    let outer = LoopFs::corrupted("ioerror").unwrap();
    let inner = LoopDevice::attach(&outer.path().join("inner.img")).unwrap();
    let device = inner.path().strip_prefix("/dev/").unwrap().to_owned();
    let state = StateDir::new("ioerror").unwrap();
    let daemon = Daemon::start(&state, &["stdout", "journal"], "none", &[]).unwrap();
    // The backing file's filesystem goes read-only on its first error: the loop device's
    // writes then fail in the block layer.
    assert!(std::fs::read_dir(outer.path().join("d")).unwrap().all(|entry| entry.unwrap().metadata().is_err()));
    assert!(inner.write_fails().unwrap(), "a write to {} succeeded", inner.path());
    let expected = format!("I/O error on {device}: EIO on a WS request at sector 0");
    let events = daemon
        .wait_for(TIMEOUT, |events| node_events(events, "IOError").iter().any(|e| e["message"] == expected.as_str()))
        .unwrap();
    let event = node_events(&events, "IOError").into_iter().find(|e| e["message"] == expected.as_str()).unwrap();
    assert_eq!(event["type"], "Warning");
    let metrics = daemon.metrics().unwrap();
    assert!(sample(&metrics, "collector_kernel_records_total", "type=\"io_error\"") >= 1, "{metrics}");
}

/// x86 machine checks, injected in software through `mce-inject` (which runs only the kernel's
/// logging and decoding, so nothing is poisoned and nothing panics). This host's kernel and
/// Debian 12's 6.1 cloud kernel have no machine checks at all; `cargo xtask test-vm --kernel 6.12`
/// loads the injector and runs this (`.ci/run` does).
#[test]
fn a_machine_check_is_a_hardware_error_on_the_node_with_its_severity_cpu_bank_and_registers() {
    if !privileged("a_machine_check_is_a_hardware_error_on_the_node_with_its_severity_cpu_bank_and_registers") {
        return;
    }
    let _node = NODE_WIDE.lock().unwrap_or_else(PoisonError::into_inner);
    if !Path::new("/sys/kernel/tracing/events/mce/mce_record").is_dir() {
        // The kernel-log test asserts that the probe is then reported as not attached.
        not_on_this_kernel(
            "a_machine_check_is_a_hardware_error_on_the_node_with_its_severity_cpu_bank_and_registers",
            "no mce/mce_record (CONFIG_X86_MCE); `cargo xtask test-vm --kernel 6.12` runs it",
        );
        return;
    }
    let inject = Path::new("/sys/kernel/debug/mce-inject");
    assert!(
        inject.is_dir(),
        "the kernel has machine checks but no {}: load mce-inject (CONFIG_X86_MCE_INJECT) with debugfs mounted",
        inject.display()
    );
    let state = StateDir::new("mce").unwrap();
    let daemon = Daemon::start(&state, &["stdout", "journal"], "none", &[]).unwrap();
    let write = |file: &str, value: &str| {
        std::fs::write(inject.join(file), value).unwrap_or_else(|err| panic!("mce-inject/{file} <- {value}: {err}"));
    };
    // The kernel drops the last byte written, taking it for the newline.
    write("flags", "sw\n");
    // A corrected memory-controller error with a valid address; writing the bank injects it.
    write("status", "0x9400000000000090");
    write("addr", "0x12345000");
    write("bank", "1");
    // An uncorrected one without an address (so the kernel does not go looking for the page).
    write("status", "0xb000000000000150");
    write("bank", "2");
    let expected = [
        "1 corrected machine check: CPU 0 bank 1, MCi_STATUS 0x9400000000000090, MCi_ADDR 0x12345000",
        "1 uncorrected machine check: CPU 0 bank 2, MCi_STATUS 0xb000000000000150",
    ];
    let events = daemon.wait_for(TIMEOUT, |events| node_events(events, "HardwareError").len() >= 2).unwrap();
    let said: Vec<(&str, &str)> = node_events(&events, "HardwareError")
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    assert_eq!(said, expected.map(|message| ("Warning", message)));
    let metrics = daemon.metrics().unwrap();
    assert_eq!(sample(&metrics, "collector_probe_attached", "probe=\"mce_record\""), 1, "{metrics}");
    assert_eq!(sample(&metrics, "collector_kernel_records_total", "type=\"hw_error\""), 2, "{metrics}");
}
