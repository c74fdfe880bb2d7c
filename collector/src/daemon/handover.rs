//! Handing the node over from one daemon to the next during a rolling update.
//!
//! The DaemonSet starts the new pod before it stops the old one (`maxSurge`),
//! so that no death goes unseen; for that overlap both daemons see every
//! record. They share the state dir (a hostPath) and agree there on who reports
//! what, so that a death is reported once:
//!
//! - A running daemon holds an exclusive `flock` on `<state>/daemon.lock`.
//! - A daemon that starts while the lock is held (its probes already attached)
//!   writes `<state>/handover` with the takeover time B and its name, and
//!   reports only records from B on.
//! - The lock holder reads that file before it reports a record (deaths are
//!   rare, so one small read each is cheap) and, once a newer daemon has taken
//!   over, reports only records before B + [`CLOCK_SLACK`]. The two daemons
//!   convert the same kernel timestamp to wall time with offsets taken at
//!   slightly different moments; the slack makes the boundary overlap by a
//!   little rather than leave a gap, so a death right at B may be reported
//!   twice but never by neither.
//! - When the old daemon exits its lock goes with it, and the new one takes it.
//!
//! A daemon that starts with the lock free (the first, or after a crash)
//! reports everything and ignores a handover file older than itself.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use crate::clock::Timestamp;

/// How far the two daemons' wall-time conversions may disagree.
pub(super) const CLOCK_SLACK_NS: i64 = 1_000_000;

const LOCK_FILE: &str = "daemon.lock";
const HANDOVER_FILE: &str = "handover";

/// This daemon's side of the handover.
#[derive(Debug)]
pub(super) struct Handover {
    lock: File,
    holds_lock: bool,
    dir: PathBuf,
    /// This daemon's name in the handover file: `<hostname> <pid>`.
    me: String,
    started: Timestamp,
    /// Set when this daemon took over from a running one: it reports records from here on.
    from: Option<Timestamp>,
}

/// Whether a record is this daemon's to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// This daemon reports it.
    Me,
    /// The daemon this one took over from reports it (before the takeover).
    Predecessor,
    /// The daemon that took over from this one reports it.
    Successor,
}

impl Handover {
    /// Takes the lock, or (when another daemon holds it) takes over from now on.
    /// Call once the probes are attached, so that nothing from the takeover on is unseen.
    pub(super) fn start(dir: &Path, me: String, now: Timestamp) -> io::Result<Self> {
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE))?;
        let mut handover = Self { lock, holds_lock: false, dir: dir.to_owned(), me, started: now, from: None };
        handover.holds_lock = handover.try_lock()?;
        if !handover.holds_lock {
            // Another daemon runs: from now on the records are ours.
            let tmp = dir.join(format!("{HANDOVER_FILE}.{}", std::process::id()));
            fs::write(&tmp, format!("{} {}\n", now.0, handover.me))?;
            fs::rename(&tmp, dir.join(HANDOVER_FILE))?;
            handover.from = Some(now);
        }
        Ok(handover)
    }

    /// Whether this daemon took over from a running one.
    pub(super) const fn took_over(&self) -> bool {
        self.from.is_some()
    }

    /// Takes the lock once the previous daemon has let it go; whether this daemon holds it.
    pub(super) fn poll(&mut self) -> bool {
        if !self.holds_lock {
            self.holds_lock = self.try_lock().unwrap_or(false);
        }
        self.holds_lock
    }

    /// Who reports a record of this time.
    pub(super) fn owner(&self, time: Timestamp) -> Owner {
        if self.from.is_some_and(|from| time < from) {
            return Owner::Predecessor;
        }
        match self.successor_since() {
            Some(since) if time.0 >= since.0.saturating_add(CLOCK_SLACK_NS) => Owner::Successor,
            _ => Owner::Me,
        }
    }

    /// The takeover time of a daemon that started after this one, if one has.
    fn successor_since(&self) -> Option<Timestamp> {
        let text = fs::read_to_string(self.dir.join(HANDOVER_FILE)).ok()?;
        let (since, who) = text.trim_end().split_once(' ')?;
        let since = Timestamp(since.parse().ok()?);
        (who != self.me && since > self.started).then_some(since)
    }

    fn try_lock(&self) -> io::Result<bool> {
        // SAFETY: flock(2) on a descriptor this struct owns; no memory is shared.
        let rc = unsafe { libc::flock(self.lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(err) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("collector-handover-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_first_daemon_reports_everything() {
        let dir = dir("first");
        let mut first = Handover::start(&dir, "a 1".into(), Timestamp(1_000)).unwrap();
        assert!(!first.took_over());
        assert!(first.poll());
        assert_eq!(first.owner(Timestamp(0)), Owner::Me);
        assert_eq!(first.owner(Timestamp(i64::MAX)), Owner::Me);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_second_daemon_takes_over_at_its_start_with_an_overlap_not_a_gap() {
        let dir = dir("second");
        let old = Handover::start(&dir, "old 1".into(), Timestamp(1_000)).unwrap();
        let b = 5_000_000_000;
        let mut new = Handover::start(&dir, "new 2".into(), Timestamp(b)).unwrap();
        assert!(new.took_over());
        assert!(!new.poll(), "the old daemon still holds the lock");
        // Before B: the old daemon's; from B on: the new one's.
        assert_eq!(new.owner(Timestamp(b - 1)), Owner::Predecessor);
        assert_eq!(new.owner(Timestamp(b)), Owner::Me);
        assert_eq!(old.owner(Timestamp(b - 1)), Owner::Me);
        // The old one keeps what falls within the slack: reported twice, never lost.
        assert_eq!(old.owner(Timestamp(b + CLOCK_SLACK_NS - 1)), Owner::Me);
        assert_eq!(old.owner(Timestamp(b + CLOCK_SLACK_NS)), Owner::Successor);
        // The old daemon exits; the new one takes the lock and reports everything after.
        drop(old);
        assert!(new.poll());
        assert_eq!(new.owner(Timestamp(b + 1)), Owner::Me);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_handover_file_older_than_the_daemon_is_ignored() {
        let dir = dir("stale");
        fs::write(dir.join(HANDOVER_FILE), "500 someone 9\n").unwrap();
        let first = Handover::start(&dir, "a 1".into(), Timestamp(1_000)).unwrap();
        assert_eq!(first.owner(Timestamp(2_000_000_000)), Owner::Me);
        // A garbled file is no successor either.
        fs::write(dir.join(HANDOVER_FILE), "not a time\n").unwrap();
        assert_eq!(first.owner(Timestamp(2_000_000_000)), Owner::Me);
        fs::remove_dir_all(dir).unwrap();
    }
}
