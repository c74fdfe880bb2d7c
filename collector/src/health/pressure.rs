//! Pressure per container, from PSI: how long some task of the container waited for memory
//! (reclaim, refaults of its page cache, swap-in), and, when configured, for CPU or block I/O. A
//! container that stalls on memory is usually an OOM kill a few seconds or minutes away, and a
//! slow one before that; one that stalls on CPU (its limit, or more threads than it may run)
//! answers slowly, and its liveness probe may be what kills it.
//!
//! The sampler reads each container's `<resource>.pressure` (`some ... total=<µs>`) once a second on
//! a thread of its own and compares it with the reading one window earlier. It reads, never
//! writes: a PSI trigger (a `memory.pressure` write, then `poll(POLLPRI)`) would need the cgroup
//! tree writable, which the DaemonSet mounts read-only. Each file stays open (one descriptor per
//! container and resource) and is read again from its start, which costs no path lookup: with
//! 1,000 containers, about 20 ms of CPU a second. Reading measures any window, not only
//! multiples of 2 s.
//!
//! A container starts an episode (`stalled`) when its stall over the window reaches the
//! threshold, and ends it (`cleared`) when the stall falls under half the threshold, so one that
//! hovers at the threshold does not flap.

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    time::{Duration, Instant},
};

use crate::{
    cgroup::{CgroupTree, layout, reread},
    clock::Timestamp,
    record::{Identity, Pressure, PressureResource, PressureState, Record},
};

/// How the sampler decides.
#[derive(Clone, Debug, PartialEq)]
pub struct PressureConfig {
    /// What is read; nothing means the sampler does not run.
    pub resources: Vec<PressureResource>,
    /// Percent of the window some task of the container stalled, at which an episode starts.
    pub threshold_percent: f64,
    /// The window the stall is measured over.
    pub window: Duration,
    /// How often each container's pressure is read.
    pub interval: Duration,
    /// How often the tree is walked for new containers.
    pub rescan: Duration,
    /// How many pressure files may stay open between readings; beyond it, one is opened per reading.
    pub open_files: usize,
}

impl Default for PressureConfig {
    /// The configuration's defaults (`[node_health]`), read each second, new containers found
    /// every 5 s.
    fn default() -> Self {
        Self {
            resources: crate::config::DEFAULT_PRESSURE_RESOURCES.to_vec(),
            threshold_percent: crate::config::DEFAULT_PRESSURE_THRESHOLD.value(),
            window: crate::config::DEFAULT_PRESSURE_WINDOW.0,
            interval: Duration::from_secs(1),
            rescan: Duration::from_secs(5),
            open_files: DEFAULT_OPEN_FILES,
        }
    }
}

/// Half the usual soft limit on open files (1,024), for a process that does not know its own.
pub const DEFAULT_OPEN_FILES: usize = 512;

/// `some total=` of a `*.pressure` file, in microseconds.
pub fn parse_some_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("some "))?;
    line.split_whitespace().find_map(|field| field.strip_prefix("total=")).and_then(|total| total.parse().ok())
}

/// One container's resource being watched.
#[derive(Debug)]
struct Watched {
    identity: Identity,
    /// Readings, oldest first, covering a little more than the window.
    samples: VecDeque<(Instant, u64)>,
    stalled: bool,
    /// Seen in the last walk.
    seen: bool,
}

/// A container's cgroup path and what is read of it.
pub type Key = (String, PressureResource);

/// Episodes of pressure per container and resource; fed readings, it says when one starts or ends.
#[derive(Debug)]
pub struct PressureTracker {
    config: PressureConfig,
    watched: HashMap<Key, Watched>,
}

/// What a reading changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Started or ended.
    pub state: PressureState,
    /// Microseconds stalled over `window`.
    pub stalled_us: u64,
    /// The span measured.
    pub window: Duration,
}

impl PressureTracker {
    /// A tracker with nothing watched.
    pub fn new(config: PressureConfig) -> Self {
        Self { config, watched: HashMap::new() }
    }

    /// Starts watching each configured resource of the container cgroup at `path` (no-op if
    /// watched); marks it seen.
    pub fn watch(&mut self, path: &str, identity: &Identity) {
        for &resource in &self.config.resources {
            self.watched
                .entry((path.to_owned(), resource))
                .or_insert_with(|| Watched {
                    identity: identity.clone(),
                    samples: VecDeque::new(),
                    stalled: false,
                    seen: true,
                })
                .seen = true;
        }
    }

    /// Forgets containers not seen since the last call; returns those that were stalled, so
    /// their episodes can be ended.
    pub fn sweep(&mut self) -> Vec<(Key, Identity)> {
        let mut ended = Vec::new();
        self.watched.retain(|key, watched| {
            let keep = std::mem::replace(&mut watched.seen, false);
            if !keep && watched.stalled {
                ended.push((key.clone(), watched.identity.clone()));
            }
            keep
        });
        ended
    }

    /// Whether `key` is watched.
    pub fn watches(&self, key: &Key) -> bool {
        self.watched.contains_key(key)
    }

    /// What is watched.
    pub fn keys(&self) -> Vec<Key> {
        self.watched.keys().cloned().collect()
    }

    /// Records a reading of `key`'s `some total` at `now`; a transition when an episode starts or ends.
    pub fn observe(&mut self, key: &Key, total_us: u64, now: Instant) -> Option<(Transition, Identity)> {
        let config = &self.config;
        let watched = self.watched.get_mut(key)?;
        watched.samples.push_back((now, total_us));
        // Keep the newest reading at least a window old as the base, and nothing older.
        while watched.samples.len() > 2 && watched.samples.get(1).is_some_and(|(at, _)| now - *at >= config.window) {
            watched.samples.pop_front();
        }
        let &(since, base) = watched.samples.front()?;
        let span = now - since;
        // Not a whole window yet: too early to say.
        if span < config.window {
            return None;
        }
        let stalled_us = total_us.saturating_sub(base);
        #[expect(clippy::cast_precision_loss, reason = "a percentage")]
        let percent = stalled_us as f64 / span.as_micros() as f64 * 100.0;
        let state = if !watched.stalled && percent >= config.threshold_percent {
            PressureState::Stalled
        } else if watched.stalled && percent < config.threshold_percent / 2.0 {
            PressureState::Cleared
        } else {
            return None;
        };
        watched.stalled = state == PressureState::Stalled;
        Some((Transition { state, stalled_us, window: span }, watched.identity.clone()))
    }
}

/// Reads the pressure of every container on the node and sends a record for each episode's
/// start and end, until `send` fails (the daemon stopped). Runs on a thread of its own.
pub fn run(
    config: PressureConfig,
    v2: &CgroupTree,
    memory: &CgroupTree,
    mut send: impl FnMut(Record) -> bool,
    mut read_error: impl FnMut(),
) {
    let (interval, rescan, budget) = (config.interval, config.rescan, config.open_files);
    let mut tracker = PressureTracker::new(config);
    let mut last_walk: Option<Instant> = None;
    // Each container's pressure file stays open, within the budget: reading it again costs no
    // path lookup.
    let mut files = OpenFiles { held: HashMap::new(), budget };
    let mut buf = Vec::new();
    loop {
        let now = Instant::now();
        if last_walk.is_none_or(|at| now - at >= rescan) {
            last_walk = Some(now);
            for (_, path) in v2.walk() {
                if let Some(parsed) = layout::parse(&path)
                    && parsed.container_id.is_some()
                {
                    let identity =
                        Identity { container_id: parsed.container_id, pod_uid: parsed.pod_uid, ..Identity::default() };
                    tracker.watch(&path, &identity);
                }
            }
            for (key, identity) in tracker.sweep() {
                let transition = Transition { state: PressureState::Cleared, stalled_us: 0, window: Duration::ZERO };
                if !send(record(&key, transition, identity, v2, memory)) {
                    return;
                }
            }
            // A container gone since the last walk closes its files.
            files.held.retain(|key, _| tracker.watches(key));
        }
        for key in tracker.keys() {
            let Some(total) = read_total(v2, &mut files, &key, &mut buf) else {
                read_error();
                continue;
            };
            if let Some((transition, identity)) = tracker.observe(&key, total, Instant::now())
                && !send(record(&key, transition, identity, v2, memory))
            {
                return;
            }
        }
        std::thread::sleep(interval.saturating_sub(now.elapsed()));
    }
}

/// The pressure files kept open, and how many may be.
struct OpenFiles {
    held: HashMap<Key, File>,
    budget: usize,
}

/// The `some total=` of `key`'s pressure file, opened on its first reading and kept open while
/// the budget allows; a file that fails to read is closed, to be opened afresh next time.
fn read_total(v2: &CgroupTree, files: &mut OpenFiles, key: &Key, buf: &mut Vec<u8>) -> Option<u64> {
    let read = match files.held.get(key) {
        Some(file) => reread(file, buf),
        None => {
            let file = v2.open(&key.0, key.1.file()).ok()?;
            let read = reread(&file, buf);
            if read.is_ok() && files.held.len() < files.budget {
                files.held.insert(key.clone(), file);
            }
            read
        }
    };
    if read.is_err() {
        files.held.remove(key);
        return None;
    }
    parse_some_total(std::str::from_utf8(buf).ok()?)
}

fn record(key: &Key, transition: Transition, identity: Identity, v2: &CgroupTree, memory: &CgroupTree) -> Record {
    let (path, resource) = key;
    let limit = (*resource == PressureResource::Memory).then(|| memory.memory_limit(path)).flatten();
    let cpu_limit_millicores = (*resource == PressureResource::Cpu).then(|| v2.cpu_limit_millicores(path)).flatten();
    Record::Pressure(Box::new(Pressure {
        time: Timestamp::now(),
        resource: *resource,
        state: transition.state,
        stalled_us: transition.stalled_us,
        window_ms: u64::try_from(transition.window.as_millis()).unwrap_or(u64::MAX),
        cgroup_path: path.clone(),
        memory_limit_bytes: limit.map(|limit| limit.limit),
        memory_usage_bytes: limit.map(|limit| limit.usage),
        cpu_limit_millicores,
        identity,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_kept_open_up_to_the_budget_and_read_afresh_each_time() {
        let root = crate::sinks::journal::tests::TempDir::new("pressure");
        let write = |container: &str, total: u64| {
            let dir = root.path().join(container);
            std::fs::create_dir_all(&dir).unwrap();
            let text = format!("some avg10=0.00 avg60=0.00 avg300=0.00 total={total}\nfull total=0\n");
            std::fs::write(dir.join("memory.pressure"), text).unwrap();
        };
        write("a", 10);
        write("b", 20);
        let tree = CgroupTree::at(root.path());
        let mut files = OpenFiles { held: HashMap::new(), budget: 1 };
        let (a, b) = (("/a".to_owned(), PressureResource::Memory), ("/b".to_owned(), PressureResource::Memory));
        let mut buf = Vec::new();
        assert_eq!(read_total(&tree, &mut files, &a, &mut buf), Some(10));
        assert_eq!(read_total(&tree, &mut files, &b, &mut buf), Some(20));
        assert_eq!(files.held.keys().collect::<Vec<_>>(), [&a], "one file within the budget");
        write("a", 11);
        write("b", 21);
        assert_eq!(read_total(&tree, &mut files, &a, &mut buf), Some(11), "the held file, read again");
        assert_eq!(read_total(&tree, &mut files, &b, &mut buf), Some(21), "opened again beyond the budget");
        assert_eq!(read_total(&tree, &mut files, &("/gone".to_owned(), PressureResource::Memory), &mut buf), None);
    }

    const PSI: &str =
        "some avg10=1.50 avg60=0.40 avg300=0.09 total=2831117\nfull avg10=1.10 avg60=0.30 avg300=0.07 total=2100000\n";

    #[test]
    fn each_configured_resource_is_its_own_episode() {
        let config = PressureConfig {
            resources: vec![PressureResource::Memory, PressureResource::Cpu],
            threshold_percent: 10.0,
            window: Duration::from_secs(2),
            ..Default::default()
        };
        let mut tracker = PressureTracker::new(config);
        tracker.watch("/kubepods/pod1/c1", &Identity::default());
        let mut keys = tracker.keys();
        keys.sort_by_key(|(_, resource)| resource.as_str());
        let cpu = ("/kubepods/pod1/c1".to_owned(), PressureResource::Cpu);
        let memory = ("/kubepods/pod1/c1".to_owned(), PressureResource::Memory);
        assert_eq!(keys, [cpu.clone(), memory.clone()]);
        let t0 = Instant::now();
        // CPU stalls half of the window, memory not at all: only CPU starts an episode.
        assert_eq!(tracker.observe(&cpu, 0, t0), None);
        assert_eq!(tracker.observe(&memory, 0, t0), None);
        let at = t0 + Duration::from_secs(2);
        assert_eq!(tracker.observe(&cpu, 1_000_000, at).map(|(t, _)| t.state), Some(PressureState::Stalled));
        assert_eq!(tracker.observe(&memory, 0, at), None);
    }

    #[test]
    fn reads_some_total() {
        assert_eq!(parse_some_total(PSI), Some(2_831_117));
        assert_eq!(parse_some_total("full avg10=0.00 total=5\n"), None);
        assert_eq!(parse_some_total(""), None);
    }

    fn tracker() -> (PressureTracker, Instant) {
        let config = PressureConfig { threshold_percent: 10.0, window: Duration::from_secs(10), ..Default::default() };
        let mut tracker = PressureTracker::new(config);
        tracker.watch("/kubepods/pod1/c1", &Identity::default());
        (tracker, Instant::now())
    }

    #[test]
    fn an_episode_starts_at_the_threshold_over_a_whole_window_and_ends_under_half() {
        let (mut tracker, t0) = tracker();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let path = &("/kubepods/pod1/c1".to_owned(), PressureResource::Memory);
        // 5% a second for ten seconds: under the threshold.
        for s in 0..=10 {
            assert_eq!(tracker.observe(path, s * 50_000, at(s)), None);
        }
        // Then 20% a second: the window over seconds 4..14 holds 1.1 s of stall, 11%.
        let mut total = 500_000;
        let mut started = None;
        for s in 11..=20 {
            total += 200_000;
            if let Some((transition, _)) = tracker.observe(path, total, at(s)) {
                started.get_or_insert((s, transition));
            }
        }
        let (second, transition) = started.expect("an episode starts");
        assert_eq!(second, 14);
        assert_eq!(transition.state, PressureState::Stalled);
        assert_eq!(transition.window, Duration::from_secs(10));
        assert_eq!(transition.stalled_us, 1_100_000);
        // Calm again: the window over seconds 18..28 holds 0.4 s, under half the threshold.
        let mut ended = None;
        for s in 21..=40 {
            if let Some((transition, _)) = tracker.observe(path, total, at(s)) {
                ended.get_or_insert((s, transition.state));
            }
        }
        assert_eq!(ended, Some((28, PressureState::Cleared)));
    }

    #[test]
    fn a_container_gone_while_stalled_ends_its_episode() {
        let (mut tracker, t0) = tracker();
        let path = &("/kubepods/pod1/c1".to_owned(), PressureResource::Memory);
        assert_eq!(tracker.observe(path, 0, t0), None);
        let started = tracker.observe(path, 5_000_000, t0 + Duration::from_secs(10));
        assert_eq!(started.map(|(t, _)| t.state), Some(PressureState::Stalled));
        assert!(tracker.sweep().is_empty(), "seen since watch: kept");
        assert_eq!(tracker.sweep().len(), 1, "not seen again: gone, and it was stalled");
        assert!(tracker.keys().is_empty());
    }
}
