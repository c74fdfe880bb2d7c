//! Text and JSON output of records, for `collector trace`.

mod json;

pub use self::json::write_record;

use std::io::{self, Write};

use crate::{
    escape::escape_bytes,
    record::{Process, Record, Stop, signal_name},
};

/// How records are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One aligned line per record.
    Text,
    /// One JSON object per line.
    Json,
}

/// Writes records in one format.
pub struct Output<W: Write> {
    json: bool,
    out: W,
    /// One record's JSON line, built whole and written in one call.
    line: Vec<u8>,
}

impl<W: Write> Output<W> {
    /// An output in `format` (`Auto` must be resolved first; it means text).
    pub const fn new(format: Format, out: W) -> Self {
        Self { json: matches!(format, Format::Json), out, line: Vec::new() }
    }

    /// The column header, for text output.
    pub fn header(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        writeln!(
            self.out,
            "{:<30} {:<6} {:>7} {:>7} {:<16} {:>4} {:<8} WHERE",
            "TIME", "TYPE", "PID", "PPID", "COMM", "EXIT", "SIGNAL"
        )
    }

    /// Writes one record.
    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        if self.json {
            self.line.clear();
            write_record(record, &mut self.line)?;
            self.line.push(b'\n');
            return self.out.write_all(&self.line);
        }
        let line = Line::of(record);
        writeln!(
            self.out,
            "{:<30} {:<6} {:>7} {:>7} {:<16} {:>4} {:<8} {}{}",
            line.time, line.kind, line.pid, line.ppid, line.comm, line.exit, line.signal, line.cgroup, line.details
        )
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The writer, for tests.
    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// The columns of one text line.
struct Line {
    time: String,
    kind: &'static str,
    pid: String,
    ppid: String,
    comm: String,
    exit: String,
    signal: String,
    cgroup: String,
    details: String,
}

impl Line {
    fn of(record: &Record) -> Self {
        let dash = || "-".to_owned();
        // namespace/pod/container where the runtime named them, else the cgroup path.
        let identity = record.identity();
        let path = |p: Option<&str>| match (&identity.namespace, &identity.pod_name) {
            (Some(namespace), Some(pod)) => {
                let container = match (&identity.container_name, identity.sandbox) {
                    (Some(name), _) => name.as_str(),
                    (None, true) => "(sandbox)",
                    (None, false) => "?",
                };
                let name = |s: &str| escape_bytes(s.as_bytes());
                format!("{}/{}/{}", name(namespace), name(pod), name(container))
            }
            _ => p.unwrap_or("?").to_owned(),
        };
        match record {
            Record::Exit(exit) => {
                let mut details = String::new();
                if exit.core_dumped {
                    details.push_str(" (core dumped)");
                }
                if exit.oom_killed {
                    details.push_str(" [OOM killed]");
                }
                if let Some(sender) = &exit.sender {
                    details.push_str(&format!(" [sent by {}]", describe(sender)));
                }
                if let Some(request) = &exit.stop_request {
                    let how = match exit.stop {
                        Some(Stop::Requested) => "stop requested",
                        Some(Stop::GraceExceeded) => "grace period exceeded",
                        None => "ended during a requested stop",
                    };
                    let why = match &request.pod_stop {
                        Some(stop) => {
                            let state = if stop.deleted { "pod being deleted" } else { "pod being stopped" };
                            match &stop.reason {
                                Some(reason) => format!("; {state}: {}", escape_bytes(reason.as_bytes())),
                                None => format!("; {state}"),
                            }
                        }
                        None => String::new(),
                    };
                    let why = match (&request.kubelet_message, &request.probe_message) {
                        (Some(said), Some(probe)) => format!(
                            "{why}; kubelet: {} ({})",
                            escape_bytes(said.as_bytes()),
                            escape_bytes(probe.as_bytes())
                        ),
                        (Some(said), None) => format!("{why}; kubelet: {}", escape_bytes(said.as_bytes())),
                        (None, _) => why,
                    };
                    details.push_str(&format!(
                        " [{how}: {} by {}{why}]",
                        request.signal_name,
                        describe(&request.sender)
                    ));
                }
                Self {
                    time: exit.time.to_string(),
                    kind: "exit",
                    pid: exit.pid.to_string(),
                    ppid: exit.ppid.to_string(),
                    comm: exit.comm.clone(),
                    exit: exit.exit_code.to_string(),
                    signal: exit.signal.map_or_else(dash, signal_name),
                    cgroup: path(exit.cgroup_path.as_deref()),
                    details,
                }
            }
            Record::OomKill(oom) => {
                let limit = match (&oom.oom_cgroup_path, oom.memory_limit_bytes) {
                    (Some(at), Some(bytes)) => format!("limit {bytes} bytes hit at {at}"),
                    _ => "node out of memory".to_owned(),
                };
                let rss = oom.anon_rss_kb.map(|kb| format!("; anon-rss {kb}kB")).unwrap_or_default();
                Self {
                    time: oom.time.to_string(),
                    kind: "oom",
                    pid: oom.pid.to_string(),
                    ppid: dash(),
                    comm: oom.comm.clone().unwrap_or_else(dash),
                    exit: dash(),
                    signal: "SIGKILL".to_owned(),
                    cgroup: path(oom.cgroup_path.as_deref()),
                    details: format!(" [{limit}{rss}; allocation by {} ({})]", oom.trigger_pid, oom.trigger_comm),
                }
            }
            Record::Signal(signal) => Self {
                time: signal.time.to_string(),
                kind: "signal",
                pid: signal.target_pid.to_string(),
                ppid: dash(),
                comm: signal.target_comm.clone(),
                exit: dash(),
                signal: signal.signal_name.clone(),
                cgroup: path(signal.target_cgroup_path.as_deref()),
                details: match &signal.sender {
                    Some(sender) => format!(" [from {}; {}]", describe(sender), signal.result),
                    None => format!(" [from the kernel, code {}; {}]", signal.code, signal.result),
                },
            },
            Record::CgroupMkdir(change) | Record::CgroupRmdir(change) => Self {
                time: change.time.to_string(),
                kind: if matches!(record, Record::CgroupMkdir(_)) { "mkdir" } else { "rmdir" },
                pid: dash(),
                ppid: dash(),
                comm: dash(),
                exit: dash(),
                signal: dash(),
                cgroup: path(Some(&change.cgroup_path)),
                details: format!(" [id {}]", change.cgroup_id),
            },
            Record::CgroupAttach(attach) => Self {
                time: attach.time.to_string(),
                kind: "attach",
                pid: attach.pid.to_string(),
                ppid: dash(),
                comm: attach.comm.clone(),
                exit: dash(),
                signal: dash(),
                cgroup: path(Some(&attach.cgroup_path)),
                details: format!(" [id {}]", attach.cgroup_id),
            },
            Record::HungTask(hung) => {
                let blocked = hung.timeout_secs.map_or_else(String::new, |secs| format!(" for more than {secs} s"));
                let cgroup = path(hung.cgroup_path.as_deref());
                Self::other(hung.time, "hung", hung.pid, &hung.comm, cgroup, format!(" [blocked{blocked}]"))
            }
            Record::KernelLog(log) => {
                let problem = log.reason.as_ref().map_or_else(String::new, |reason| format!("{reason}: "));
                Self::other(log.time, "kmsg", log.pid, &log.comm, dash(), format!(" [{problem}{}]", log.line))
            }
            Record::FsError(error) => {
                let details =
                    format!(" [{} error on {} in {}:{}]", error.filesystem, error.device, error.function, error.line);
                Self::other(error.time, "fserror", error.pid, &error.comm, path(error.cgroup_path.as_deref()), details)
            }
            Record::IoError(error) => Self {
                details: format!(" [{} on {} ({}) at sector {}]", error.error, error.device, error.rwbs, error.sector),
                ..Self::other(error.time, "ioerror", 0, "-", dash(), String::new())
            },
            Record::HwError(error) => Self {
                details: format!(
                    " [{} {} {}(s) {}: {}]",
                    error.count,
                    error.severity,
                    error.source.noun(),
                    error.label,
                    error.message
                ),
                ..Self::other(error.time, "hwerror", 0, "-", dash(), String::new())
            },
            Record::Pressure(pressure) => {
                let state = match pressure.state {
                    crate::record::PressureState::Stalled => "stalled",
                    crate::record::PressureState::Cleared => "cleared",
                };
                let details = format!(
                    " [{state} on {} {}% of {} ms]",
                    pressure.resource.as_str(),
                    pressure.percent(),
                    pressure.window_ms
                );
                Self {
                    pid: dash(),
                    ..Self::other(pressure.time, "pressure", 0, "-", path(Some(&pressure.cgroup_path)), details)
                }
            }
        }
    }

    /// A line of a record with no exit status or signal; pid 0 prints as `-`.
    fn other(
        time: crate::clock::Timestamp,
        kind: &'static str,
        pid: u32,
        comm: &str,
        cgroup: String,
        details: String,
    ) -> Self {
        Self {
            time: time.to_string(),
            kind,
            pid: if pid == 0 { "-".to_owned() } else { pid.to_string() },
            ppid: "-".to_owned(),
            comm: comm.to_owned(),
            exit: "-".to_owned(),
            signal: "-".to_owned(),
            cgroup,
            details,
        }
    }
}

fn describe(process: &Process) -> String {
    format!("pid {} ({}) in {}", process.pid, process.comm, process.cgroup_path.as_deref().unwrap_or("?"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Timestamp,
        record::{Exit, Identity, OomKill, OomScope},
    };

    fn exit(pid: u32) -> Record {
        Record::Exit(Box::new(Exit {
            time: Timestamp(1_795_862_410_123_456_789),
            pid,
            ppid: 1,
            comm: "a\\x1b[2Jb".into(),
            exit_code: 137,
            signal: Some(9),
            core_dumped: false,
            cgroup_id: 7,
            cgroup_path: Some("/x".into()),
            oom_killed: false,
            sender: Some(Process { pid: 812, comm: "kill".into(), exe: None, cgroup_path: Some("/".into()) }),
            identity: Identity::default(),
            main_process: None,
            stop: None,
            stop_request: None,
        }))
    }

    #[test]
    fn text_output_is_one_aligned_line() {
        let mut out = Output::new(Format::Text, Vec::new());
        out.header().unwrap();
        out.write(&exit(4242)).unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        assert_eq!(
            text,
            "TIME                           TYPE       PID    PPID COMM             EXIT SIGNAL   WHERE\n\
             2026-11-28T10:40:10.123456789Z exit      4242       1 a\\x1b[2Jb         137 SIGKILL  /x \
             [sent by pid 812 (kill) in /]\n"
        );
    }

    #[test]
    fn pods_show_as_namespace_pod_container() {
        let mut record = exit(7);
        let identity = record.identity_mut();
        identity.namespace = Some("shop".into());
        identity.pod_name = Some("web-0".into());
        identity.container_name = Some("app\n".into());
        let mut out = Output::new(Format::Text, Vec::new());
        out.write(&record).unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        assert!(text.contains(" SIGKILL  shop/web-0/app\\x0a [sent by"), "{text}");
    }

    #[test]
    fn a_requested_stop_says_who_asked_and_why_the_pod_was_stopped() {
        let mut record = exit(7);
        let Record::Exit(stopped) = &mut record else { unreachable!() };
        stopped.stop = Some(Stop::GraceExceeded);
        stopped.stop_request = Some(crate::record::StopRequest {
            time: Timestamp(0),
            signal: 15,
            signal_name: "SIGTERM".into(),
            ignored: true,
            kill_time: None,
            sender: Process { pid: 900, comm: "runc".into(), exe: None, cgroup_path: Some("/".into()) },
            pod_stop: Some(crate::record::PodStop {
                deleted: true,
                reason: Some("Eviction\nByEvictionAPI".into()),
                message: Some("Eviction API: evicting".into()),
            }),
            kubelet_message: None,
            probe_message: None,
        });
        let mut out = Output::new(Format::Text, Vec::new());
        out.write(&record).unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        assert!(
            text.ends_with(
                " [grace period exceeded: SIGTERM by pid 900 (runc) in /; pod being deleted: Eviction\\x0aByEvictionAPI]\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_stop_the_kubelet_explained_says_what_it_said() {
        let mut record = exit(7);
        let Record::Exit(stopped) = &mut record else { unreachable!() };
        stopped.stop = Some(Stop::Requested);
        stopped.stop_request = Some(crate::record::StopRequest {
            time: Timestamp(0),
            signal: 15,
            signal_name: "SIGTERM".into(),
            ignored: false,
            kill_time: None,
            sender: Process { pid: 900, comm: "runc".into(), exe: None, cgroup_path: Some("/".into()) },
            pod_stop: None,
            kubelet_message: Some("Container app failed liveness probe, will be restarted\n".into()),
            probe_message: Some("Liveness probe failed: 500".into()),
        });
        let mut out = Output::new(Format::Text, Vec::new());
        out.write(&record).unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        assert!(
            text.ends_with(
                " [stop requested: SIGTERM by pid 900 (runc) in /; \
                 kubelet: Container app failed liveness probe, will be restarted\\x0a (Liveness probe failed: 500)]\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn oom_kills_say_which_limit_was_hit() {
        let mut out = Output::new(Format::Text, Vec::new());
        out.write(&Record::OomKill(Box::new(OomKill {
            time: Timestamp(0),
            pid: 10,
            comm: Some("dd".into()),
            cgroup_id: Some(5),
            cgroup_path: Some("/pod/c".into()),
            total_vm_kb: None,
            anon_rss_kb: Some(31744),
            file_rss_kb: None,
            shmem_rss_kb: None,
            oom_score_adj: None,
            trigger_pid: 10,
            trigger_comm: "dd".into(),
            oom_cgroup_path: Some("/pod".into()),
            memory_limit_bytes: Some(33_554_432),
            scope_known: true,
            identity: Identity::default(),
            main_process: None,
            scope: Some(OomScope::Cgroup),
        })))
        .unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        assert!(
            text.ends_with("oom         10       - dd                  - SIGKILL  /pod/c [limit 33554432 bytes hit at /pod; anon-rss 31744kB; allocation by 10 (dd)]\n"),
            "{text}"
        );
    }
}
