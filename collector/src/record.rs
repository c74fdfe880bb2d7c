//! The records `collector trace` prints: kernel records with wall time, exit
//! status decoded and cgroup paths resolved.

use serde::Serialize;

use crate::clock::Timestamp;

/// A resolved record, serialised with a `type` tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A process ended.
    Exit(Exit),
}

impl Record {
    /// The record's type, as `--type` names it.
    pub const fn kind(&self) -> RecordType {
        match self {
            Self::Exit(_) => RecordType::Exit,
        }
    }

    /// The process the record is about.
    pub const fn pid(&self) -> u32 {
        match self {
            Self::Exit(exit) => exit.pid,
        }
    }

    /// The record's cgroup v2 path, if known.
    pub fn cgroup_path(&self) -> Option<&str> {
        match self {
            Self::Exit(exit) => exit.cgroup_path.as_deref(),
        }
    }
}

/// The types of record, for filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum RecordType {
    /// A process ended.
    Exit,
}

/// A process (thread group) ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exit {
    /// When it ended.
    pub time: Timestamp,
    /// Process id.
    pub pid: u32,
    /// Parent's process id.
    pub ppid: u32,
    /// Process name, escaped (see `escape`).
    pub comm: String,
    /// The exit status for a normal exit, 128 + N for a death by signal N.
    pub exit_code: u32,
    /// The signal that killed it; none for a normal exit.
    pub signal: Option<u32>,
    /// Whether it dumped core.
    pub core_dumped: bool,
    /// cgroup v2 id (the cgroup directory's inode number).
    pub cgroup_id: u64,
    /// cgroup v2 path relative to the v2 root, `/` for the root; none if unknown.
    pub cgroup_path: Option<String>,
}

/// An exit status decoded the way the kubelet reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// 0-255 for an exit, 128 + signal for a death by signal.
    pub code: u32,
    /// The fatal signal, if any.
    pub signal: Option<u32>,
    /// Whether a core was dumped.
    pub core_dumped: bool,
}

impl ExitStatus {
    /// Decodes `task_struct.exit_code` (`status << 8 | core 0x80 | signal`).
    pub const fn from_raw(raw: u32) -> Self {
        let signal = raw & 0x7f;
        let core_dumped = raw & 0x80 != 0;
        if signal == 0 {
            Self {
                code: (raw >> 8) & 0xff,
                signal: None,
                core_dumped,
            }
        } else {
            Self {
                code: 128 + signal,
                signal: Some(signal),
                core_dumped,
            }
        }
    }
}

/// The conventional name of a signal number (`SIGKILL`), or `SIG<n>`.
pub fn signal_name(signal: u32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match NAMES.get(signal as usize) {
        Some(name) if !name.is_empty() => (*name).to_owned(),
        _ => format!("SIG{signal}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_normal_exits() {
        assert_eq!(
            ExitStatus::from_raw(0),
            ExitStatus {
                code: 0,
                signal: None,
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_raw(7 << 8),
            ExitStatus {
                code: 7,
                signal: None,
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_raw(255 << 8),
            ExitStatus {
                code: 255,
                signal: None,
                core_dumped: false
            }
        );
    }

    #[test]
    fn decodes_deaths_by_signal_the_kubelet_way() {
        assert_eq!(
            ExitStatus::from_raw(9),
            ExitStatus {
                code: 137,
                signal: Some(9),
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_raw(6 | 0x80),
            ExitStatus {
                code: 134,
                signal: Some(6),
                core_dumped: true
            }
        );
        assert_eq!(
            ExitStatus::from_raw(11 | 0x80),
            ExitStatus {
                code: 139,
                signal: Some(11),
                core_dumped: true
            }
        );
    }

    #[test]
    fn names_signals() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(31), "SIGSYS");
        assert_eq!(signal_name(34), "SIG34");
        assert_eq!(signal_name(0), "SIG0");
    }

    #[test]
    fn serialises_exit_records_with_the_documented_fields() {
        let record = Record::Exit(Exit {
            time: Timestamp(1_795_862_410_123_456_789),
            pid: 4242,
            ppid: 4200,
            comm: "sh".into(),
            exit_code: 7,
            signal: None,
            core_dumped: false,
            cgroup_id: 5678,
            cgroup_path: Some("/some/cgroup".into()),
        });
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"type":"exit","time":"2026-11-28T10:40:10.123456789Z","pid":4242,"ppid":4200,"comm":"sh","exit_code":7,"signal":null,"core_dumped":false,"cgroup_id":5678,"cgroup_path":"/some/cgroup"}"#
        );
    }
}
