use super::*;
use crate::{
    clock::Timestamp,
    escape::escape_bytes,
    record::{CgroupChange, PodStop, Process, Signal},
    recorder::{MAX_MESSAGE_BYTES, TRUNCATION_MARKER},
};

const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn options() -> EventOptions {
    EventOptions { node_name: "node-1".to_owned(), probed_reasons: Vec::new() }
}

fn identity() -> Identity {
    Identity {
        container_id: Some(CID.to_owned()),
        pod_uid: Some(UID.to_owned()),
        pod_name: Some("web-0".to_owned()),
        namespace: Some("shop".to_owned()),
        container_name: Some("app".to_owned()),
        init_container: Some(false),
        pod_labels: None,
        owner: None,
        sandbox: false,
    }
}

fn app() -> ObjectReference {
    ObjectReference::pod("shop", "web-0", UID).with_field_path("spec.containers{app}")
}

fn exit(main: Option<bool>, exit_code: u32, signal: Option<u32>) -> Exit {
    Exit {
        time: Timestamp(1_795_862_410_123_456_789),
        pid: 4300,
        ppid: 4200,
        comm: "worker".to_owned(),
        exit_code,
        signal,
        core_dumped: false,
        cgroup_id: 5678,
        cgroup_path: Some(format!("/kubepods/burstable/pod{UID}/{CID}")),
        oom_killed: false,
        sender: None,
        identity: identity(),
        main_process: main,
        stop: None,
        stop_request: None,
    }
}

fn sender(pid: u32, comm: &str) -> Option<Process> {
    Some(Process { pid, comm: comm.to_owned(), exe: None, cgroup_path: None })
}

fn oom(scope: Option<OomScope>, main: Option<bool>) -> OomKill {
    let (oom_cgroup_path, memory_limit_bytes) = match scope {
        Some(OomScope::Container) => (Some(format!("/kubepods/burstable/pod{UID}/{CID}")), Some(32 << 20)),
        Some(OomScope::Pod) => (Some(format!("/kubepods/burstable/pod{UID}")), Some(64 << 20)),
        Some(OomScope::Cgroup) => (Some("/kubepods".to_owned()), Some(1 << 30)),
        Some(OomScope::Node) | None => (None, None),
    };
    OomKill {
        time: Timestamp(1_795_862_410_123_456_789),
        pid: 4242,
        comm: Some("dd".to_owned()),
        cgroup_id: Some(5678),
        cgroup_path: Some(format!("/kubepods/burstable/pod{UID}/{CID}")),
        total_vm_kb: Some(70_000),
        anon_rss_kb: Some(31_744),
        file_rss_kb: Some(0),
        shmem_rss_kb: Some(0),
        oom_score_adj: Some(999),
        trigger_pid: 4242,
        trigger_comm: "dd".to_owned(),
        oom_cgroup_path,
        memory_limit_bytes,
        scope_known: true,
        identity: identity(),
        main_process: main,
        scope,
    }
}

fn one(record: Record, options: &EventOptions) -> EventSpec {
    let mut events = events_for(&record, options);
    assert_eq!(events.len(), 1, "{events:?}");
    events.remove(0)
}

fn warning(object: ObjectReference, reason: &str, message: &str) -> EventSpec {
    EventSpec::new(object, EventType::Warning, reason, message)
}

#[test]
fn oom_kill_of_a_child_under_the_container_limit_is_oomkilling_on_the_pod() {
    assert_eq!(
        one(Record::OomKill(Box::new(oom(Some(OomScope::Container), Some(false)))), &options()),
        warning(
            app(),
            "OOMKilling",
            "Memory cgroup out of memory: killed process 4242 (dd), a child of container app; container limit 32Mi; \
             anon-rss 31744kB"
        )
    );
}

#[test]
fn oom_kill_messages_name_the_role_and_the_limit_hit() {
    let message = |oom: OomKill| one(Record::OomKill(Box::new(oom)), &options()).message;
    assert_eq!(
        message(oom(Some(OomScope::Pod), Some(true))),
        "Memory cgroup out of memory: killed process 4242 (dd), the main process of container app; pod limit 64Mi; \
         anon-rss 31744kB"
    );
    assert_eq!(
        message(oom(Some(OomScope::Cgroup), None)),
        "Memory cgroup out of memory: killed process 4242 (dd) in container app; limit 1Gi of cgroup /kubepods; \
         anon-rss 31744kB"
    );
    // A kernel before 6.9 gives neither the name nor the sizes; the scope is unknown.
    let mut bare = oom(None, Some(true));
    bare.comm = None;
    bare.anon_rss_kb = None;
    assert_eq!(message(bare), "Out of memory: killed process 4242, the main process of container app");
    let mut odd_limit = oom(Some(OomScope::Container), Some(false));
    odd_limit.memory_limit_bytes = Some(100_000_000);
    assert_eq!(
        message(odd_limit),
        "Memory cgroup out of memory: killed process 4242 (dd), a child of container app; container limit \
         100000000; anon-rss 31744kB"
    );
}

#[test]
fn system_oom_gives_a_node_event_then_the_pod_event() {
    let events = events_for(&Record::OomKill(Box::new(oom(Some(OomScope::Node), Some(false)))), &options());
    assert_eq!(
        events,
        [
            warning(
                ObjectReference::node("node-1"),
                "SystemOOM",
                "System OOM encountered, victim process: dd, pid: 4242"
            ),
            warning(
                app(),
                "OOMKilling",
                "System OOM: killed process 4242 (dd), a child of container app; anon-rss 31744kB"
            ),
        ]
    );
}

#[test]
fn system_oom_outside_pods_is_on_the_node_only() {
    let mut outside = oom(Some(OomScope::Node), None);
    outside.identity = Identity::default();
    outside.comm = None;
    assert_eq!(
        events_for(&Record::OomKill(Box::new(outside.clone())), &options()),
        [warning(ObjectReference::node("node-1"), "SystemOOM", "System OOM encountered")]
    );
    // No node name, no Node event.
    let no_node = EventOptions { node_name: String::new(), probed_reasons: Vec::new() };
    assert_eq!(events_for(&Record::OomKill(Box::new(outside)), &no_node), []);
}

#[test]
fn cgroup_oom_outside_pods_gives_nothing() {
    let mut outside = oom(Some(OomScope::Cgroup), None);
    outside.identity = Identity::default();
    assert_eq!(events_for(&Record::OomKill(Box::new(outside)), &options()), []);
}

#[test]
fn exits_of_oom_victims_give_nothing() {
    for main in [Some(true), Some(false), None] {
        let mut victim = exit(main, 137, Some(9));
        victim.oom_killed = true;
        assert_eq!(events_for(&Record::Exit(Box::new(victim)), &options()), [], "main {main:?}");
    }
}

#[test]
fn main_process_killed_by_a_sender_is_container_exited() {
    let mut killed = exit(Some(true), 137, Some(9));
    killed.sender = sender(812, "kubelet");
    assert_eq!(
        one(Record::Exit(Box::new(killed)), &options()),
        warning(app(), "ContainerExited", "Container app exited with code 137: SIGKILL from pid 812 (kubelet)")
    );
}

#[test]
fn main_process_failing_is_container_exited() {
    assert_eq!(
        one(Record::Exit(Box::new(exit(Some(true), 1, None))), &options()),
        warning(app(), "ContainerExited", "Container app exited with code 1")
    );
    let mut segv = exit(Some(true), 139, Some(11));
    segv.core_dumped = true;
    assert_eq!(
        one(Record::Exit(Box::new(segv)), &options()),
        warning(app(), "ContainerExited", "Container app exited with code 139: SIGSEGV (core dumped)")
    );
    // abort() sends SIGABRT to itself: no "from".
    let mut abort = exit(Some(true), 134, Some(6));
    abort.sender = sender(4300, "worker");
    assert_eq!(one(Record::Exit(Box::new(abort)), &options()).message, "Container app exited with code 134: SIGABRT");
}

#[test]
fn normal_exit_is_a_normal_event() {
    let ok = Record::Exit(Box::new(exit(Some(true), 0, None)));
    assert_eq!(
        one(ok, &options()),
        EventSpec::new(app(), EventType::Normal, "ContainerExited", "Container app exited with code 0")
    );
}

#[test]
fn init_container_exit_points_at_init_containers() {
    let mut init = exit(Some(true), 2, None);
    init.identity.container_name = Some("migrate".to_owned());
    init.identity.init_container = Some(true);
    assert_eq!(
        one(Record::Exit(Box::new(init)), &options()),
        warning(
            ObjectReference::pod("shop", "web-0", UID).with_field_path("spec.initContainers{migrate}"),
            "ContainerExited",
            "Container migrate exited with code 2"
        )
    );
}

#[test]
fn unknown_init_flag_means_a_regular_container_and_unknown_name_no_field_path() {
    let mut unknown = exit(Some(true), 1, None);
    unknown.identity.init_container = None;
    assert_eq!(one(Record::Exit(Box::new(unknown.clone())), &options()).involved_object, app());
    unknown.identity.container_name = None;
    assert_eq!(
        one(Record::Exit(Box::new(unknown)), &options()),
        warning(
            ObjectReference::pod("shop", "web-0", UID),
            "ContainerExited",
            "Container 0123456789ab exited with code 1"
        )
    );
}

#[test]
fn child_killed_by_a_crash_signal_is_process_crashed() {
    for (signal, name) in [(4, "SIGILL"), (5, "SIGTRAP"), (6, "SIGABRT"), (7, "SIGBUS"), (8, "SIGFPE"), (31, "SIGSYS")]
    {
        assert_eq!(
            one(Record::Exit(Box::new(exit(Some(false), 128 + signal, Some(signal)))), &options()),
            warning(app(), "ProcessCrashed", &format!("Process 4300 (worker) of container app crashed: {name}"))
        );
    }
    let mut segv = exit(Some(false), 139, Some(11));
    assert_eq!(
        one(Record::Exit(Box::new(segv.clone())), &options()),
        warning(app(), "ProcessCrashed", "Process 4300 (worker) of container app crashed: SIGSEGV")
    );
    segv.core_dumped = true;
    assert_eq!(
        one(Record::Exit(Box::new(segv)), &options()).message,
        "Process 4300 (worker) of container app crashed: SIGSEGV (core dumped)"
    );
}

#[test]
fn child_killed_by_another_process_is_process_killed() {
    let mut term = exit(Some(false), 143, Some(15));
    term.sender = sender(77, "kill");
    assert_eq!(
        one(Record::Exit(Box::new(term)), &options()),
        warning(
            app(),
            "ProcessKilled",
            "Process 4300 (worker) of container app was killed: SIGTERM from pid 77 (kill)"
        )
    );
    // A crash signal someone sent is a kill, not a crash.
    let mut sent_segv = exit(Some(false), 139, Some(11));
    sent_segv.sender = sender(77, "kill");
    assert_eq!(
        one(Record::Exit(Box::new(sent_segv)), &options()),
        warning(
            app(),
            "ProcessKilled",
            "Process 4300 (worker) of container app was killed: SIGSEGV from pid 77 (kill)"
        )
    );
}

#[test]
fn other_child_deaths_give_nothing() {
    // Exit codes of children, signals from the kernel, signals a process sent itself.
    let mut quiet = vec![exit(Some(false), 1, None), exit(Some(false), 0, None), exit(Some(false), 137, Some(9))];
    let mut own_term = exit(Some(false), 143, Some(15));
    own_term.sender = sender(4300, "worker");
    quiet.push(own_term);
    for exit in quiet {
        assert_eq!(events_for(&Record::Exit(Box::new(exit.clone())), &options()), [], "{exit:?}");
    }
}

#[test]
fn unknown_main_process_is_treated_as_a_child() {
    assert_eq!(events_for(&Record::Exit(Box::new(exit(None, 1, None))), &options()), []);
    assert_eq!(events_for(&Record::Exit(Box::new(exit(None, 137, Some(9)))), &options()), []);
    assert_eq!(one(Record::Exit(Box::new(exit(None, 139, Some(11)))), &options()).reason, "ProcessCrashed");
}

#[test]
fn records_without_a_named_pod_give_no_pod_event() {
    let strip: [fn(&mut Identity); 4] =
        [|i| *i = Identity::default(), |i| i.pod_name = None, |i| i.namespace = None, |i| i.pod_uid = None];
    for strip in strip {
        let mut failed = exit(Some(true), 1, None);
        strip(&mut failed.identity);
        assert_eq!(events_for(&Record::Exit(Box::new(failed)), &options()), []);
        let mut killed = oom(Some(OomScope::Container), Some(true));
        strip(&mut killed.identity);
        assert_eq!(events_for(&Record::OomKill(Box::new(killed)), &options()), []);
    }
    // A pod name no API object can have.
    let mut odd = exit(Some(true), 1, None);
    odd.identity.pod_name = Some("web\n0".to_owned());
    assert_eq!(events_for(&Record::Exit(Box::new(odd)), &options()), []);
}

#[test]
fn sandbox_exits_give_nothing_but_its_oom_kills_do() {
    let mut pause = exit(Some(true), 2, None);
    pause.identity.sandbox = true;
    pause.identity.container_name = Some("POD".to_owned());
    assert_eq!(events_for(&Record::Exit(Box::new(pause.clone())), &options()), []);
    pause.main_process = Some(false);
    pause.signal = Some(11);
    assert_eq!(events_for(&Record::Exit(Box::new(pause)), &options()), []);

    let mut killed = oom(Some(OomScope::Pod), Some(true));
    killed.identity.sandbox = true;
    killed.identity.container_name = Some("POD".to_owned());
    killed.comm = Some("pause".to_owned());
    assert_eq!(
        one(Record::OomKill(Box::new(killed)), &options()),
        warning(
            ObjectReference::pod("shop", "web-0", UID),
            "OOMKilling",
            "Memory cgroup out of memory: killed process 4242 (pause), the main process of the pod sandbox; pod limit \
             64Mi; anon-rss 31744kB"
        )
    );
}

#[test]
fn signal_and_cgroup_records_give_nothing() {
    let signal = Record::Signal(Box::new(Signal {
        time: Timestamp(0),
        signal: 9,
        signal_name: "SIGKILL".to_owned(),
        code: 0,
        sender: sender(1, "init"),
        target_pid: 4300,
        target_comm: "worker".to_owned(),
        target_cgroup_path: None,
        identity: identity(),
        group: true,
        result: crate::record::SignalResult::Delivered,
    }));
    assert_eq!(events_for(&signal, &options()), []);
    let rmdir = Record::CgroupRmdir(Box::new(CgroupChange {
        time: Timestamp(0),
        cgroup_id: 1,
        cgroup_path: "/kubepods".to_owned(),
        identity: identity(),
    }));
    assert_eq!(events_for(&rmdir, &options()), []);
}

#[test]
fn hostile_process_names_stay_escaped() {
    // 15 bytes, the kernel's comm limit: newline, an ANSI clear-screen, a backslash.
    let raw = b"a\nb\x1b[2J\\zzzzzzz";
    assert_eq!(raw.len(), 15);
    let comm = escape_bytes(raw);
    assert_eq!(comm, "a\\x0ab\\x1b[2J\\\\zzzzzzz");
    let mut crashed = exit(Some(false), 139, Some(11));
    crashed.comm.clone_from(&comm);
    assert_eq!(
        one(Record::Exit(Box::new(crashed)), &options()).message,
        "Process 4300 (a\\x0ab\\x1b[2J\\\\zzzzzzz) of container app crashed: SIGSEGV"
    );
    let mut killed = exit(Some(true), 137, Some(9));
    killed.sender = sender(77, &comm);
    assert_eq!(
        one(Record::Exit(Box::new(killed)), &options()).message,
        "Container app exited with code 137: SIGKILL from pid 77 (a\\x0ab\\x1b[2J\\\\zzzzzzz)"
    );
    let mut node = oom(Some(OomScope::Node), Some(false));
    node.comm = Some(comm);
    let events = events_for(&Record::OomKill(Box::new(node)), &options());
    assert_eq!(events[0].message, "System OOM encountered, victim process: a\\x0ab\\x1b[2J\\\\zzzzzzz, pid: 4242");
    // A raw control character that slipped past the resolver is escaped here; runtime names too.
    let mut raw_comm = exit(Some(false), 139, Some(11));
    raw_comm.comm = "x\u{1b}]0;pwned\u{7}".to_owned();
    raw_comm.identity.container_name = Some("app\r".to_owned());
    let spec = one(Record::Exit(Box::new(raw_comm)), &options());
    assert_eq!(spec.message, "Process 4300 (x\\x1b]0;pwned\\x07) of container app\\x0d crashed: SIGSEGV");
    assert_eq!(spec.involved_object, ObjectReference::pod("shop", "web-0", UID));
}

#[test]
fn long_messages_are_cut_on_a_char_boundary() {
    let mut long = oom(Some(OomScope::Cgroup), Some(false));
    long.oom_cgroup_path = Some(format!("/{}", "é".repeat(2000)));
    let message = one(Record::OomKill(Box::new(long)), &options()).message;
    assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
    assert!(message.len() >= MAX_MESSAGE_BYTES - 4, "{}", message.len());
    assert!(message.starts_with(
        "Memory cgroup out of memory: killed process 4242 (dd), a child of container app; limit 1Gi of cgroup /éé"
    ));
    assert!(message.ends_with(&format!("é{TRUNCATION_MARKER}")));

    let mut named = exit(Some(true), 1, None);
    named.identity.container_name = Some("c".repeat(3000));
    let spec = one(Record::Exit(Box::new(named)), &options());
    assert_eq!(spec.message.len(), MAX_MESSAGE_BYTES);
    assert_eq!(spec.message, format!("Container {}{TRUNCATION_MARKER}", "c".repeat(MAX_MESSAGE_BYTES - 13)));
}

/// Random records of every shape: events_for never panics, and every event it makes is
/// well-formed.
#[test]
fn random_records_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let text = |rng: &mut fastrand::Rng| -> Option<String> {
        if rng.u8(..4) == 0 {
            return None;
        }
        let len = match rng.u8(..10) {
            0 => rng.usize(..3000),
            _ => rng.usize(..20),
        };
        let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        Some(match rng.u8(..3) {
            0 => escape_bytes(&bytes),
            1 => String::from_utf8_lossy(&bytes).into_owned(),
            _ => (0..len).map(|_| rng.alphanumeric()).collect(),
        })
    };
    let random_identity = |rng: &mut fastrand::Rng| Identity {
        container_id: text(rng),
        pod_uid: text(rng),
        pod_name: text(rng),
        namespace: text(rng),
        container_name: text(rng),
        init_container: [None, Some(true), Some(false)][rng.usize(..3)],
        pod_labels: None,
        owner: None,
        sandbox: rng.bool(),
    };
    let tri = |rng: &mut fastrand::Rng| [None, Some(true), Some(false)][rng.usize(..3)];
    let mut made = 0;
    for round in 0..10_000 {
        let record = if rng.bool() {
            let signal = [None, Some(rng.u32(..70))][rng.usize(..2)];
            Record::Exit(Box::new(Exit {
                time: Timestamp(rng.i64(..)),
                pid: rng.u32(..),
                ppid: rng.u32(..),
                comm: text(&mut rng).unwrap_or_default(),
                exit_code: rng.u32(..),
                signal,
                core_dumped: rng.bool(),
                cgroup_id: rng.u64(..),
                cgroup_path: text(&mut rng),
                oom_killed: rng.u8(..4) == 0,
                sender: rng.bool().then(|| Process {
                    exe: None,
                    pid: if rng.bool() { rng.u32(..) } else { 0 },
                    comm: text(&mut rng).unwrap_or_default(),
                    cgroup_path: text(&mut rng),
                }),
                identity: random_identity(&mut rng),
                main_process: tri(&mut rng),
                stop: None,
                stop_request: None,
            }))
        } else {
            let maybe_u64 = |rng: &mut fastrand::Rng| rng.bool().then(|| rng.u64(..) >> rng.u32(..64));
            Record::OomKill(Box::new(OomKill {
                time: Timestamp(rng.i64(..)),
                pid: rng.u32(..),
                comm: text(&mut rng),
                cgroup_id: maybe_u64(&mut rng),
                cgroup_path: text(&mut rng),
                total_vm_kb: maybe_u64(&mut rng),
                anon_rss_kb: maybe_u64(&mut rng),
                file_rss_kb: maybe_u64(&mut rng),
                shmem_rss_kb: maybe_u64(&mut rng),
                oom_score_adj: rng.bool().then(|| rng.i32(..)),
                trigger_pid: rng.u32(..),
                trigger_comm: text(&mut rng).unwrap_or_default(),
                oom_cgroup_path: text(&mut rng),
                memory_limit_bytes: maybe_u64(&mut rng),
                scope_known: rng.bool(),
                identity: random_identity(&mut rng),
                main_process: tri(&mut rng),
                scope: [
                    None,
                    Some(OomScope::Container),
                    Some(OomScope::Pod),
                    Some(OomScope::Node),
                    Some(OomScope::Cgroup),
                ][rng.usize(..5)],
            }))
        };
        let options = EventOptions { node_name: text(&mut rng).unwrap_or_default(), probed_reasons: Vec::new() };
        let events = events_for(&record, &options);
        assert!(events.len() <= 2, "round {round}: {events:?}");
        for event in events {
            made += 1;
            assert!(event.message.len() <= MAX_MESSAGE_BYTES, "round {round}");
            assert!(!event.message.chars().any(char::is_control), "round {round}: {:?}", event.message);
            assert!(
                ["OOMKilling", "SystemOOM", "ContainerExited", "ProcessCrashed", "ProcessKilled"]
                    .contains(&event.reason.as_str()),
                "round {round}"
            );
            let object = &event.involved_object;
            match object.kind.as_str() {
                "Pod" => assert!(
                    !object.name.is_empty() && !object.namespace.is_empty() && !object.uid.is_empty(),
                    "round {round}: {object:?}"
                ),
                "Node" => assert_eq!(object.name, options.node_name, "round {round}"),
                other => panic!("round {round}: kind {other}"),
            }
        }
    }
    // The loop must reach the rules, not only the early returns.
    assert!(made > 500, "{made}");
}

/// `exit` after the runtime's `signal` at 1.000 s (`ignored` by the kernel), killed at `kill_ms`.
fn stopped(mut exit: Exit, stop: Option<Stop>, signal: u32, ignored: bool, kill_ms: Option<i64>) -> Exit {
    let at = |ms: i64| Timestamp(1_795_862_400_000_000_000 + ms * 1_000_000);
    exit.time = at(kill_ms.map_or(1_400, |ms| ms + 1));
    exit.stop = stop;
    exit.stop_request = Some(crate::record::StopRequest {
        time: at(1_000),
        signal,
        signal_name: crate::record::signal_name(signal),
        ignored,
        kill_time: kill_ms.map(at),
        sender: Process { pid: 900, comm: "runc".into(), exe: Some("runc".into()), cgroup_path: Some("/".into()) },
        pod_stop: None,
        kubelet_message: None,
        probe_message: None,
    });
    exit
}

#[test]
fn a_main_process_that_outlived_its_grace_period_is_grace_period_exceeded() {
    let mut killed = stopped(exit(Some(true), 137, Some(9)), Some(Stop::GraceExceeded), 15, true, Some(3_000));
    killed.sender = sender(901, "runc");
    assert_eq!(
        one(Record::Exit(Box::new(killed.clone())), &options()),
        warning(
            app(),
            "GracePeriodExceeded",
            "Container app did not exit within 2 s of SIGTERM and was killed (SIGKILL from the runtime); it ignores \
             SIGTERM"
        )
    );
    // A handler that did not finish in time: no "ignores".
    let mut slow = killed.clone();
    slow.stop_request.as_mut().unwrap().ignored = false;
    assert_eq!(
        one(Record::Exit(Box::new(slow)), &options()).message,
        "Container app did not exit within 2 s of SIGTERM and was killed (SIGKILL from the runtime)"
    );
}

#[test]
fn a_stop_says_why_the_pod_was_being_stopped_when_the_api_said_so() {
    let mut killed = stopped(exit(Some(true), 137, Some(9)), Some(Stop::GraceExceeded), 15, true, Some(3_000));
    killed.sender = sender(901, "runc");
    let with = |deleted: bool, reason: Option<&str>, message: Option<&str>| {
        let mut exit = killed.clone();
        exit.stop_request.as_mut().unwrap().pod_stop =
            Some(PodStop { deleted, reason: reason.map(Into::into), message: message.map(Into::into) });
        one(Record::Exit(Box::new(exit)), &options()).message
    };
    let head = "Container app did not exit within 2 s of SIGTERM and was killed (SIGKILL from the runtime); it ignores \
                SIGTERM; the pod was being";
    assert_eq!(with(true, None, None), format!("{head} deleted"));
    assert_eq!(
        with(true, Some("EvictionByEvictionAPI"), Some("Eviction API: evicting")),
        format!("{head} deleted (EvictionByEvictionAPI: Eviction API: evicting)")
    );
    assert_eq!(
        with(false, Some("TerminationByKubelet"), Some("The node was low on resource: memory.\n")),
        format!("{head} stopped (TerminationByKubelet: The node was low on resource: memory.\\x0a)")
    );
    assert_eq!(with(true, Some("DeletionByPodGC"), None), format!("{head} deleted (DeletionByPodGC)"));
    // The Normal event for a polite stop says it too.
    let mut polite = stopped(exit(Some(true), 143, None), Some(Stop::Requested), 15, false, None);
    polite.stop_request.as_mut().unwrap().pod_stop = Some(PodStop { deleted: true, reason: None, message: None });
    assert_eq!(
        one(Record::Exit(Box::new(polite)), &options()).message,
        "Container app stopped on request: exited with code 143, 0.4 s after SIGTERM; the pod was being deleted"
    );
}

#[test]
fn a_stop_for_a_failed_probe_is_a_warning_that_quotes_the_kubelet() {
    let with = |exit: &Exit, said: &str| {
        let mut exit = exit.clone();
        exit.stop_request.as_mut().unwrap().kubelet_message = Some(said.into());
        one(Record::Exit(Box::new(exit)), &options())
    };
    let polite = stopped(exit(Some(true), 143, None), Some(Stop::Requested), 15, false, None);
    let stopped_on_request = "Container app stopped on request: exited with code 143, 0.4 s after SIGTERM";
    for probe in ["liveness", "startup"] {
        let said = format!("Container app failed {probe} probe, will be restarted");
        assert_eq!(
            with(&polite, &said),
            warning(app(), "StoppedByProbe", &format!("{stopped_on_request}; the kubelet said \"{said}\""))
        );
    }
    // Any other reason the kubelet gives stays a requested stop, quoted.
    let changed = with(&polite, "Container app definition changed, will be restarted");
    assert_eq!(
        (changed.event_type, changed.reason.as_str(), changed.message.as_str()),
        (
            EventType::Normal,
            "ContainerStopped",
            "Container app stopped on request: exited with code 143, 0.4 s after SIGTERM; the kubelet said \
             \"Container app definition changed, will be restarted\""
        )
    );
    // What the probe got comes after the kubelet's word.
    let mut probed = polite.clone();
    let request = probed.stop_request.as_mut().unwrap();
    request.kubelet_message = Some("Container app failed liveness probe, will be restarted".into());
    request.probe_message = Some("Liveness probe failed: HTTP probe failed with statuscode: 500".into());
    assert_eq!(
        one(Record::Exit(Box::new(probed)), &options()).message,
        format!(
            "{stopped_on_request}; the kubelet said \"Container app failed liveness probe, will be restarted\" after \
             \"Liveness probe failed: HTTP probe failed with statuscode: 500\""
        )
    );
    // A probe failure whose container outlived its grace period is that, with the kubelet's word.
    let mut killed = stopped(exit(Some(true), 137, Some(9)), Some(Stop::GraceExceeded), 15, true, Some(3_000));
    killed.sender = sender(901, "runc");
    assert_eq!(
        with(&killed, "Container app failed liveness probe, will be restarted\n"),
        warning(
            app(),
            "GracePeriodExceeded",
            "Container app did not exit within 2 s of SIGTERM and was killed (SIGKILL from the runtime); it ignores \
             SIGTERM; the kubelet said \"Container app failed liveness probe, will be restarted\\x0a\""
        )
    );
}

#[test]
fn a_requested_stop_is_no_warning_but_a_normal_container_stopped() {
    // Java's convention: exit 143 on SIGTERM.
    let java = stopped(exit(Some(true), 143, None), Some(Stop::Requested), 15, false, None);
    assert_eq!(
        one(Record::Exit(Box::new(java)), &options()),
        EventSpec::new(
            app(),
            EventType::Normal,
            "ContainerStopped",
            "Container app stopped on request: exited with code 143, 0.4 s after SIGTERM"
        )
    );
    let by_signal = stopped(exit(Some(true), 143, Some(15)), Some(Stop::Requested), 15, false, None);
    assert_eq!(
        one(Record::Exit(Box::new(by_signal)), &options()).message,
        "Container app stopped on request: exited with code 143 (SIGTERM), 0.4 s after SIGTERM"
    );
    // The runtime's SIGKILL with no grace (sandbox stop) is a requested stop too.
    let mut sigkill = stopped(exit(Some(true), 137, Some(9)), Some(Stop::Requested), 9, false, None);
    sigkill.sender = sender(900, "runc");
    assert_eq!(
        one(Record::Exit(Box::new(sigkill)), &options()),
        EventSpec::new(
            app(),
            EventType::Normal,
            "ContainerStopped",
            "Container app stopped on request: exited with code 137 (SIGKILL), 0.4 s after SIGKILL"
        )
    );
}

#[test]
fn other_processes_the_runtime_ends_give_nothing() {
    for (code, signal) in [(137, 9), (143, 15)] {
        let mut child = stopped(exit(Some(false), code, Some(signal)), Some(Stop::Requested), signal, false, None);
        child.sender = sender(900, "runc");
        assert_eq!(events_for(&Record::Exit(Box::new(child)), &options()), [], "{signal}");
    }
    let mut unknown = stopped(exit(None, 137, Some(9)), Some(Stop::GraceExceeded), 15, false, Some(3_000));
    unknown.sender = sender(901, "runc");
    assert_eq!(events_for(&Record::Exit(Box::new(unknown)), &options()), []);
}

#[test]
fn a_crash_during_a_requested_stop_is_still_a_failure() {
    let crash = stopped(exit(Some(true), 139, Some(11)), None, 15, false, None);
    assert_eq!(
        one(Record::Exit(Box::new(crash)), &options()),
        warning(app(), "ContainerExited", "Container app exited with code 139: SIGSEGV")
    );
}
