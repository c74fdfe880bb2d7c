//! Node health from the kernel log, caused for real: lines in node-problem-detector's formats
//! written to `/dev/kmsg` become the Node Events and conditions NPD would set, and a storm of
//! them one Event with an exact count. Needs no container runtime, so it runs in the 6.1 VM too.

use std::path::Path;
use std::time::Duration;

use collector_tests::daemon::{Daemon, StateDir, journal_summary, node_conditions, sample};
use collector_tests::node::{kmsg, node_events, wait_condition};
use collector_tests::privileged;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn kernel_log_problems_become_node_events_and_conditions_and_a_storm_one_event_with_exact_counts() {
    if !privileged("kernel_log_problems_become_node_events_and_conditions_and_a_storm_one_event_with_exact_counts") {
        return;
    }
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
