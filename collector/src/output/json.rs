//! The exit record's JSON line, written field by field.
//!
//! Exits are nearly all of what `collector trace` prints under load, and serde_json spent
//! a fifth of the collector's CPU there scanning each of a record's twenty keys for bytes
//! to escape, a byte at a time, through small writes. Here the keys are constants, values
//! that need no escaping are copied, and the rest (odd strings, and the nested values an
//! exit rarely has: its sender, owner and stop request) go through serde_json. The bytes
//! are serde's own, field for field: `tests` compares them, and the destructuring below
//! stops the build when `Exit` or `Identity` gains a field this file does not write.

use crate::record::{Exit, Identity, Record};

/// Appends `record` as `collector trace --format json` prints it, without the newline:
/// the one encoding of a record, for trace, the stream and webhooks alike.
pub fn write_record(record: &Record, out: &mut Vec<u8>) -> serde_json::Result<()> {
    match record {
        Record::Exit(exit) => write_exit(exit, out),
        other => serde_json::to_writer(out, other),
    }
}

/// Appends `exit` as serde_json would write `Record::Exit(exit)`, without the newline.
fn write_exit(exit: &Exit, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let Exit {
        time,
        pid,
        ppid,
        comm,
        exit_code,
        signal,
        core_dumped,
        cgroup_id,
        cgroup_path,
        oom_killed,
        sender,
        identity,
        main_process,
        stop,
        stop_request,
    } = exit;
    // Not printed (`#[serde(skip)]`): the init-container mark and the labels for filters.
    let Identity {
        container_id,
        pod_uid,
        pod_name,
        namespace,
        container_name,
        init_container: _,
        pod_labels: _,
        owner,
        sandbox,
    } = identity;
    out.extend_from_slice(b"{\"type\":\"exit\",\"time\":\"");
    out.extend_from_slice(&time.rfc3339_ascii());
    out.extend_from_slice(b"\",\"pid\":");
    number(out, *pid);
    out.extend_from_slice(b",\"ppid\":");
    number(out, *ppid);
    out.extend_from_slice(b",\"comm\":");
    string(out, comm)?;
    out.extend_from_slice(b",\"exit_code\":");
    number(out, *exit_code);
    out.extend_from_slice(b",\"signal\":");
    match signal {
        Some(signal) => number(out, *signal),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"core_dumped\":");
    boolean(out, *core_dumped);
    out.extend_from_slice(b",\"cgroup_id\":");
    number(out, *cgroup_id);
    out.extend_from_slice(b",\"cgroup_path\":");
    optional_string(out, cgroup_path.as_deref())?;
    out.extend_from_slice(b",\"oom_killed\":");
    boolean(out, *oom_killed);
    out.extend_from_slice(b",\"sender\":");
    serde_json::to_writer(&mut *out, sender)?;
    // The identity is flattened into the record.
    out.extend_from_slice(b",\"container_id\":");
    optional_string(out, container_id.as_deref())?;
    out.extend_from_slice(b",\"pod_uid\":");
    optional_string(out, pod_uid.as_deref())?;
    out.extend_from_slice(b",\"pod_name\":");
    optional_string(out, pod_name.as_deref())?;
    out.extend_from_slice(b",\"namespace\":");
    optional_string(out, namespace.as_deref())?;
    out.extend_from_slice(b",\"container_name\":");
    optional_string(out, container_name.as_deref())?;
    if let Some(owner) = owner {
        out.extend_from_slice(b",\"owner\":");
        serde_json::to_writer(&mut *out, owner)?;
    }
    if *sandbox {
        out.extend_from_slice(b",\"sandbox\":true");
    }
    out.extend_from_slice(b",\"main_process\":");
    match main_process {
        Some(main) => boolean(out, *main),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"stop\":");
    serde_json::to_writer(&mut *out, stop)?;
    out.extend_from_slice(b",\"stop_request\":");
    serde_json::to_writer(&mut *out, stop_request)?;
    out.push(b'}');
    Ok(())
}

fn number(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn boolean(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

fn optional_string(out: &mut Vec<u8>, value: Option<&str>) -> serde_json::Result<()> {
    match value {
        Some(value) => string(out, value),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

/// A JSON string: copied between quotes when nothing in it needs escaping (escaped names,
/// paths and ids: nearly always), else written by serde_json.
fn string(out: &mut Vec<u8>, value: &str) -> serde_json::Result<()> {
    // serde_json escapes exactly these: the quote, the backslash and the C0 controls.
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(&mut *out, value)
    }
}

#[cfg(test)]
mod tests {
    use proptest::{option, prelude::*};

    use super::*;
    use crate::{
        clock::Timestamp,
        record::{Owner, PodStop, Process, Stop, StopRequest, tests::sample_exit},
    };

    fn serde(exit: &Exit) -> String {
        serde_json::to_string(&Record::Exit(Box::new(exit.clone()))).unwrap()
    }

    fn ours(exit: &Exit) -> String {
        let mut out = Vec::new();
        write_exit(exit, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_documented_exit_line_is_written_as_serde_writes_it() {
        assert_eq!(ours(&sample_exit()), serde(&sample_exit()));
    }

    #[test]
    fn every_field_set_is_written_as_serde_writes_it() {
        let sender = Process {
            pid: 99,
            comm: "containerd-shim".into(),
            exe: Some("containerd-shim-runc-v2".into()),
            cgroup_path: None,
        };
        let exit = Exit {
            signal: Some(9),
            exit_code: 137,
            core_dumped: true,
            oom_killed: true,
            cgroup_id: u64::MAX,
            pid: u32::MAX,
            comm: "a \"quoted\"\\name\n\u{1}\u{7f}é🦀".into(),
            sender: Some(sender.clone()),
            identity: Identity {
                container_id: Some("0123456789abcdef".into()),
                pod_uid: Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427".into()),
                pod_name: Some("web-0".into()),
                namespace: Some("shop".into()),
                container_name: Some("app".into()),
                init_container: Some(true),
                pod_labels: Some([("app".to_owned(), "web".to_owned())].into()),
                owner: Some(Owner { kind: "StatefulSet".into(), name: "web".into() }),
                sandbox: true,
            },
            main_process: Some(true),
            stop: Some(Stop::GraceExceeded),
            stop_request: Some(StopRequest {
                time: Timestamp(1),
                signal: 15,
                signal_name: "SIGTERM".into(),
                ignored: true,
                kill_time: Some(Timestamp(2)),
                sender,
                pod_stop: Some(PodStop {
                    deleted: true,
                    reason: Some("EvictionByEvictionAPI".into()),
                    message: Some("Eviction API: evicting".into()),
                }),
                kubelet_message: Some("Container app failed liveness probe, will be restarted".into()),
                probe_message: Some("Liveness probe failed: not alive".into()),
            }),
            ..sample_exit()
        };
        assert_eq!(ours(&exit), serde(&exit));
        let sandbox_only = Exit {
            identity: Identity { sandbox: true, ..Identity::default() },
            main_process: Some(false),
            stop: Some(Stop::Requested),
            ..sample_exit()
        };
        assert_eq!(ours(&sandbox_only), serde(&sandbox_only));
    }

    proptest! {
        #[test]
        fn any_exit_is_written_as_serde_writes_it(
            comm in any::<String>(),
            path in option::of(any::<String>()),
            names in proptest::collection::vec(option::of("\\PC{0,12}|[\"\\\\\\x00-\\x1f]{0,4}"), 5),
            numbers in any::<(u32, u32, u32, u64, i64)>(),
            flags in any::<(bool, bool, bool, Option<bool>)>(),
            signal in option::of(any::<u32>()),
        ) {
            let (pid, ppid, exit_code, cgroup_id, nanos) = numbers;
            let (core_dumped, oom_killed, sandbox, main_process) = flags;
            let mut names = names.into_iter();
            let mut name = || names.next().flatten();
            let exit = Exit {
                time: Timestamp(nanos),
                pid,
                ppid,
                comm,
                exit_code,
                signal,
                core_dumped,
                cgroup_id,
                cgroup_path: path,
                oom_killed,
                sender: None,
                identity: Identity {
                    container_id: name(),
                    pod_uid: name(),
                    pod_name: name(),
                    namespace: name(),
                    container_name: name(),
                    sandbox,
                    ..Identity::default()
                },
                main_process,
                stop: None,
                stop_request: None,
            };
            prop_assert_eq!(ours(&exit), serde(&exit));
        }
    }
}
