//! Property tests of event messages: whatever bytes a process, container or cgroup is named
//! with, a message is exactly the documented sentence with those names escaped, at most
//! [`MAX_MESSAGE_BYTES`], and free of control characters.

use proptest::{collection::vec, option, prelude::*, sample::select};

use super::{
    message::{finish, quantity, scrub},
    *,
};
use crate::{
    clock::Timestamp,
    escape::{
        c_str, escape_bytes,
        tests::{nasty_bytes, unescape},
    },
    record::{Process, signal_name},
    recorder::{MAX_MESSAGE_BYTES, TRUNCATION_MARKER},
};

const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A kernel task name: up to 15 bytes (16 with the NUL), sometimes more, any bytes.
fn comm_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![4 => nasty_bytes(0..=16), 1 => nasty_bytes(0..400)]
}

/// Text as a runtime or a cgroup path gives it: any Unicode, controls included, sometimes long.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,20}",
        2 => any::<String>(),
        1 => vec(select(vec!['\n', '\r', '\u{1b}', '\u{7}', '\u{85}', '\u{9b}', '\\', 'é', '🦀', 'a']), 0..40)
            .prop_map(String::from_iter),
        1 => "[a-zé]{500,1500}",
    ]
}

fn signal() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 1..=31_u32, 1 => any::<u32>()]
}

fn identity(container_name: Option<String>) -> Identity {
    Identity {
        container_id: Some(CID.to_owned()),
        pod_uid: Some(UID.to_owned()),
        pod_name: Some("web-0".to_owned()),
        namespace: Some("shop".to_owned()),
        container_name,
        init_container: Some(false),
        pod_labels: None,
        owner: None,
        sandbox: false,
    }
}

/// The process name as the resolver stores it: cut at the NUL, escaped.
fn resolved(comm: &[u8]) -> String {
    escape_bytes(c_str(comm))
}

/// How a message names the container (`container app`, or the short id when the name is empty).
fn noun(name: &str) -> String {
    if name.is_empty() {
        format!("container {}", &CID[..12])
    } else {
        format!("container {}", escape_bytes(name.as_bytes()))
    }
}

/// ` (name)` for a non-empty process name.
fn in_parens(comm: &str) -> String {
    if comm.is_empty() { String::new() } else { format!(" ({comm})") }
}

/// No control character, as chars or raw bytes; the length cap holds.
fn check_message(message: &str) -> Result<(), TestCaseError> {
    prop_assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes", message.len());
    prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
    prop_assert!(!message.bytes().any(|b| b < 0x20 || b == 0x7f), "{:?}", message);
    Ok(())
}

/// Parses [`quantity`]'s output back to bytes.
fn parse_quantity(text: &str) -> Option<u64> {
    let suffixes = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40), ("Pi", 50), ("Ei", 60)];
    for (suffix, shift) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            let n: u64 = number.parse().ok()?;
            return n.checked_mul(1 << shift);
        }
    }
    text.parse().ok()
}

/// Strings rich in multi-byte characters, around the cap.
fn long_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zé🦀\u{800}]{0,40}", "[a-zé🦀\u{800}]{1000,1100}", "[a-zé🦀\u{800}]{300,600}", any::<String>(),]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    /// A process of a container dies of a signal: with a sender other than itself it was killed,
    /// else a crash signal made it crash. The message is exactly the documented sentence with
    /// both process names escaped, and the names read back to the kernel's bytes.
    #[test]
    fn process_deaths_name_both_processes_exactly(
        pid in any::<u32>(),
        comm in comm_bytes(),
        signal in signal(),
        core_dumped in any::<bool>(),
        sender in option::of((any::<u32>(), comm_bytes())),
        container_name in text(),
    ) {
        let sender = sender.map(|(sender_pid, comm)| Process {
            pid: sender_pid,
            comm: resolved(&comm),
            exe: None,
            cgroup_path: None,
        });
        let exit = Exit {
            time: Timestamp(0),
            pid,
            ppid: 1,
            comm: resolved(&comm),
            exit_code: 128 + (signal & 0x7f),
            signal: Some(signal),
            core_dumped,
            cgroup_id: 1,
            cgroup_path: None,
            oom_killed: false,
            sender: sender.clone(),
            identity: identity(Some(container_name.clone())),
            main_process: Some(false),
            stop: None,
            stop_request: None,
        };
        let events = events_for(&Record::Exit(Box::new(exit.clone())), &EventOptions::default());
        let head = format!("Process {pid}{} of {}", in_parens(&exit.comm), noun(&container_name));
        let core = if core_dumped { " (core dumped)" } else { "" };
        let want = match &sender {
            Some(sender) if sender.pid != pid => Some((
                REASON_PROCESS_KILLED,
                format!("{head} was killed: {} from pid {}{}{core}", signal_name(signal), sender.pid, in_parens(&sender.comm)),
            )),
            _ if is_crash_signal(signal) => {
                Some((REASON_PROCESS_CRASHED, format!("{head} crashed: {}{core}", signal_name(signal))))
            }
            _ => None,
        };
        let got: Vec<(&str, &str)> = events.iter().map(|e| (e.reason.as_str(), e.message.as_str())).collect();
        let want_message = want.map(|(reason, message)| (reason, finish(message)));
        let want: Vec<(&str, &str)> = want_message.iter().map(|(r, m)| (*r, m.as_str())).collect();
        prop_assert_eq!(got, want);
        for event in &events {
            check_message(&event.message)?;
            // When it fits, the escaped name is in the message and reads back to the kernel's bytes.
            if event.message.len() < MAX_MESSAGE_BYTES - TRUNCATION_MARKER.len() && !exit.comm.is_empty() {
                let named = format!("Process {pid} ({}) of ", exit.comm);
                prop_assert!(event.message.contains(&named), "{:?}", event.message);
                prop_assert_eq!(unescape(&exit.comm), Some(c_str(&comm).to_vec()));
            }
        }
    }

    /// A container's main process ends: `Container NAME exited with code N`, then the signal,
    /// its sender and a core dump when there are; a Warning unless it exited 0.
    #[test]
    fn container_exits_are_the_documented_sentence(
        pid in any::<u32>(),
        exit_code in prop_oneof![Just(0_u32), 1..=255_u32, any::<u32>()],
        signal in option::of(signal()),
        core_dumped in any::<bool>(),
        sender in option::of((prop_oneof![Just(7_u32), any::<u32>()], comm_bytes())),
        container_name in text(),
    ) {
        let sender = sender.map(|(sender_pid, comm)| Process { pid: sender_pid, comm: resolved(&comm), exe: None, cgroup_path: None });
        let exit = Exit {
            time: Timestamp(0),
            pid: if sender.as_ref().is_some_and(|s| s.pid == 7) { 7 } else { pid },
            ppid: 1,
            comm: "main".to_owned(),
            exit_code,
            signal,
            core_dumped,
            cgroup_id: 1,
            cgroup_path: None,
            oom_killed: false,
            sender: sender.clone(),
            identity: identity(Some(container_name.clone())),
            main_process: Some(true),
            stop: None,
            stop_request: None,
        };
        let options = EventOptions { node_name: "node-1".to_owned(), probed_reasons: Vec::new() };
        let events = events_for(&Record::Exit(Box::new(exit.clone())), &options);
        let noun = noun(&container_name);
        let mut want = format!("C{} exited with code {exit_code}", &noun[1..]);
        if let Some(signal) = signal {
            want.push_str(&format!(": {}", signal_name(signal)));
            if let Some(sender) = sender.as_ref().filter(|s| s.pid != exit.pid) {
                want.push_str(&format!(" from pid {}{}", sender.pid, in_parens(&sender.comm)));
            }
            if core_dumped {
                want.push_str(" (core dumped)");
            }
        }
        let event_type = if exit_code != 0 || signal.is_some() { EventType::Warning } else { EventType::Normal };
        let got: Vec<_> = events.iter().map(|e| (e.event_type, e.reason.as_str(), e.message.clone())).collect();
        let want = vec![(event_type, REASON_CONTAINER_EXITED, finish(want))];
        prop_assert_eq!(got, want);
        for event in &events {
            check_message(&event.message)?;
        }
    }

    /// An OOM kill under a cgroup limit: the victim's name, the limit as a Kubernetes quantity
    /// and the cgroup path, escaped; a node-wide one also gives the kubelet's SystemOOM sentence.
    #[test]
    fn oom_kills_are_the_documented_sentence(
        pid in 1..u32::MAX,
        comm in comm_bytes(),
        path in prop_oneof![nasty_bytes(0..64), nasty_bytes(0..600)],
        limit in any::<u64>(),
        anon_rss_kb in option::of(any::<u64>()),
        node_wide in any::<bool>(),
    ) {
        let comm = resolved(&comm);
        let path = escape_bytes(&path);
        let oom = OomKill {
            time: Timestamp(0),
            pid,
            comm: Some(comm.clone()),
            cgroup_id: None,
            cgroup_path: None,
            total_vm_kb: None,
            anon_rss_kb,
            file_rss_kb: None,
            shmem_rss_kb: None,
            oom_score_adj: None,
            trigger_pid: pid,
            trigger_comm: comm.clone(),
            oom_cgroup_path: Some(path.clone()),
            memory_limit_bytes: Some(limit),
            scope_known: true,
            identity: identity(Some("app".to_owned())),
            main_process: Some(false),
            scope: Some(if node_wide { OomScope::Node } else { OomScope::Cgroup }),
        };
        let options = EventOptions { node_name: "node-1".to_owned(), probed_reasons: Vec::new() };
        let events = events_for(&Record::OomKill(Box::new(oom)), &options);
        let rss = anon_rss_kb.map(|kb| format!("; anon-rss {kb}kB")).unwrap_or_default();
        let mut want = Vec::new();
        if node_wide {
            let system = if comm.is_empty() {
                "System OOM encountered".to_owned()
            } else {
                finish(format!("System OOM encountered, victim process: {comm}, pid: {pid}"))
            };
            want.push((REASON_SYSTEM_OOM, system));
            let pod = format!("System OOM: killed process {pid}{}, a child of container app{rss}", in_parens(&comm));
            want.push((REASON_OOM_KILLING, finish(pod)));
        } else {
            let pod = format!(
                "Memory cgroup out of memory: killed process {pid}{}, a child of container app; limit {} of cgroup {path}{rss}",
                in_parens(&comm),
                quantity(limit),
            );
            want.push((REASON_OOM_KILLING, finish(pod)));
        }
        let got: Vec<_> = events.iter().map(|e| (e.reason.as_str(), e.message.clone())).collect();
        prop_assert_eq!(got, want);
        for event in &events {
            check_message(&event.message)?;
        }
    }

    /// Raw, unescaped text in every field (as if the resolver had let a control character
    /// through), any numbers: no panic, and every message keeps the cap and has no controls.
    #[test]
    fn hostile_records_give_clean_messages(
        comm in text(),
        sender_comm in text(),
        name in option::of(text()),
        container_id in option::of(text()),
        path in option::of(text()),
        (pid, sender_pid, exit_code, limit) in any::<(u32, u32, u32, u64)>(),
        signal in option::of(any::<u32>()),
        main_process in option::of(any::<bool>()),
        scope in option::of(select(vec![OomScope::Container, OomScope::Pod, OomScope::Node, OomScope::Cgroup])),
        sandbox in any::<bool>(),
    ) {
        let mut identity = identity(name);
        identity.container_id = container_id;
        identity.sandbox = sandbox;
        let exit = Exit {
            time: Timestamp(0),
            pid,
            ppid: 1,
            comm: comm.clone(),
            exit_code,
            signal,
            core_dumped: exit_code & 1 == 1,
            cgroup_id: 1,
            cgroup_path: path.clone(),
            oom_killed: false,
            sender: Some(Process { pid: sender_pid, comm: sender_comm.clone(), exe: None, cgroup_path: path.clone() }),
            identity: identity.clone(),
            main_process,
            stop: None,
            stop_request: None,
        };
        let oom = OomKill {
            time: Timestamp(0),
            pid,
            comm: Some(comm),
            cgroup_id: None,
            cgroup_path: path.clone(),
            total_vm_kb: None,
            anon_rss_kb: Some(limit),
            file_rss_kb: None,
            shmem_rss_kb: None,
            oom_score_adj: None,
            trigger_pid: sender_pid,
            trigger_comm: sender_comm,
            oom_cgroup_path: path,
            memory_limit_bytes: (limit & 1 == 1).then_some(limit),
            scope_known: false,
            identity,
            main_process,
            scope,
        };
        let options = EventOptions { node_name: "node-1".to_owned(), probed_reasons: Vec::new() };
        for record in [Record::Exit(Box::new(exit)), Record::OomKill(Box::new(oom))] {
            for event in events_for(&record, &options) {
                check_message(&event.message)?;
            }
        }
    }

    /// `finish` keeps a message that fits and otherwise cuts it at the last char boundary that
    /// leaves room for the marker: exactly, not merely within the cap.
    #[test]
    fn finish_cuts_exactly_at_the_last_char_boundary(message in long_text()) {
        let got = finish(message.clone());
        if message.len() <= MAX_MESSAGE_BYTES {
            prop_assert_eq!(got, message);
        } else {
            let room = MAX_MESSAGE_BYTES - TRUNCATION_MARKER.len();
            let cut = (0..=room).rev().find(|&i| message.is_char_boundary(i)).unwrap();
            prop_assert!(cut + 4 > room);
            prop_assert_eq!(got, format!("{}{TRUNCATION_MARKER}", &message[..cut]));
        }
    }

    /// `scrub` removes every control character, leaves `escape_bytes` output alone (no double
    /// escaping), and for text without backslashes is undone by unescaping.
    #[test]
    fn scrub_escapes_controls_once(text in text(), bytes in nasty_bytes(0..48)) {
        let scrubbed = scrub(&text);
        prop_assert!(!scrubbed.chars().any(char::is_control), "{:?}", scrubbed);
        if !text.contains('\\') {
            prop_assert_eq!(unescape(&scrubbed), Some(text.as_bytes().to_vec()));
        }
        let escaped = escape_bytes(&bytes);
        prop_assert_eq!(scrub(&escaped), escaped.as_str());
    }

    /// A memory limit prints as a Kubernetes quantity that reads back to the same byte count,
    /// with the largest binary suffix that divides it.
    #[test]
    fn quantities_read_back(bytes in prop_oneof![any::<u64>(), (any::<u16>(), 0..64_u32).prop_map(|(n, s)| u64::from(n) << s)]) {
        let printed = quantity(bytes);
        prop_assert_eq!(parse_quantity(&printed), Some(bytes), "{}", printed);
        let number: u64 = printed.trim_end_matches(char::is_alphabetic).parse().unwrap();
        prop_assert!(bytes == 0 || printed.ends_with("Ei") || !number.is_multiple_of(1024), "{}", printed);
    }
}
