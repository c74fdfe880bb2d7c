//! Unit tests of the records and the shared sample the output tests use.

use super::*;

#[test]
fn decodes_normal_exits() {
    assert_eq!(ExitStatus::from_raw(0), ExitStatus { code: 0, signal: None, core_dumped: false });
    assert_eq!(ExitStatus::from_raw(7 << 8), ExitStatus { code: 7, signal: None, core_dumped: false });
    assert_eq!(ExitStatus::from_raw(255 << 8), ExitStatus { code: 255, signal: None, core_dumped: false });
}

#[test]
fn decodes_deaths_by_signal_the_kubelet_way() {
    assert_eq!(ExitStatus::from_raw(9), ExitStatus { code: 137, signal: Some(9), core_dumped: false });
    assert_eq!(ExitStatus::from_raw(6 | 0x80), ExitStatus { code: 134, signal: Some(6), core_dumped: true });
    assert_eq!(ExitStatus::from_raw(11 | 0x80), ExitStatus { code: 139, signal: Some(11), core_dumped: true });
}

#[test]
fn names_signals() {
    assert_eq!(signal_name(9), "SIGKILL");
    assert_eq!(signal_name(31), "SIGSYS");
    assert_eq!(signal_name(34), "SIG34");
    assert_eq!(signal_name(0), "SIG0");
}

/// The exit record the documented JSON line shows, for tests here and of its writers.
pub(crate) fn sample_exit() -> Exit {
    Exit {
        time: Timestamp(1_795_862_410_123_456_789),
        pid: 4242,
        ppid: 4200,
        comm: "sh".into(),
        exit_code: 7,
        signal: None,
        core_dumped: false,
        cgroup_id: 5678,
        cgroup_path: Some("/some/cgroup".into()),
        oom_killed: false,
        sender: None,
        identity: Identity::default(),
        main_process: None,
        stop: None,
        stop_request: None,
    }
}

#[test]
fn serialises_exit_records_with_the_documented_fields() {
    let record = Record::Exit(Box::new(sample_exit()));
    assert_eq!(
        serde_json::to_string(&record).unwrap(),
        r#"{"type":"exit","time":"2026-11-28T10:40:10.123456789Z","pid":4242,"ppid":4200,"comm":"sh","exit_code":7,"signal":null,"core_dumped":false,"cgroup_id":5678,"cgroup_path":"/some/cgroup","oom_killed":false,"sender":null,"container_id":null,"pod_uid":null,"pod_name":null,"namespace":null,"container_name":null,"main_process":null,"stop":null,"stop_request":null}"#
    );
}

#[test]
fn records_read_back_as_they_were_for_trace_from() {
    let identity = Identity {
        container_id: Some("c".repeat(64)),
        pod_uid: Some("u1".into()),
        pod_name: Some("web-0".into()),
        namespace: Some("shop".into()),
        container_name: None,
        init_container: None,
        pod_labels: None,
        owner: Some(Owner { kind: "StatefulSet".into(), name: "web".into() }),
        sandbox: true,
    };
    let records = [
        Record::Exit(Box::new(Exit {
            time: Timestamp(-5),
            pid: 1,
            ppid: 0,
            comm: "pause".into(),
            exit_code: 137,
            signal: Some(9),
            core_dumped: false,
            cgroup_id: 5,
            cgroup_path: Some("/k".into()),
            oom_killed: false,
            sender: Some(Process { pid: 9, comm: "runc".into(), exe: Some("runc".into()), cgroup_path: None }),
            identity: identity.clone(),
            main_process: Some(true),
            stop: Some(Stop::GraceExceeded),
            stop_request: None,
        })),
        Record::Signal(Box::new(Signal {
            time: Timestamp(1_795_862_410_123_456_789),
            signal: 15,
            signal_name: "SIGTERM".into(),
            code: 0,
            sender: None,
            target_pid: 3,
            target_comm: "sh".into(),
            target_cgroup_path: None,
            identity,
            group: true,
            result: SignalResult::Ignored,
        })),
    ];
    for record in records {
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), record, "{json}");
    }
}

#[test]
fn fatal_signals_leave_out_those_that_cannot_end_a_process() {
    for sig in [1, 2, 3, 6, 9, 11, 13, 15, 31] {
        assert_ne!(FATAL_SIGNALS & (1 << sig), 0, "signal {sig}");
    }
    for sig in [0, 17, 18, 19, 20, 21, 22, 23, 28, 32, 63] {
        assert_eq!(FATAL_SIGNALS & (1 << sig), 0, "signal {sig}");
    }
}

#[test]
fn only_kill_sigqueue_and_tkill_name_a_sending_process() {
    assert!(sent_by_process(0) && sent_by_process(-1) && sent_by_process(-6));
    assert!(!sent_by_process(0x80) && !sent_by_process(1) && !sent_by_process(-2));
}
