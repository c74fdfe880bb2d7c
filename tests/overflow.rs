//! A full ring buffer loses records, and every lost record is counted:
//! exits received + exits counted as lost = exits caused, exactly; in `collector trace`'s
//! summary and in the daemon's /metrics.
#![expect(clippy::unwrap_used, clippy::panic, reason = "the helpers are test steps: a failure fails the test")]

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use collector::clock::Timestamp;
use collector_tests::{
    cgroup::CgroupDir,
    collector::Collector,
    daemon::{Daemon, StateDir},
    exposition, privileged,
};

/// Exit records a 4096-byte ring holds (64 bytes and an 8-byte header each: these processes
/// exit by themselves, so no signal rides along).
const RING_EXITS: u64 = 4096 / 72;
/// How long a record may sit unread in the daemon's ring on a quiet ring (the reader's poll
/// interval, `collector::reader::POLL_INTERVAL`, with room for a slow machine).
const SETTLE: Duration = Duration::from_millis(100);

/// One test at a time: the daemon's test counts the node's exits, the other test's among them.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn every_record_is_received_or_counted_as_lost() {
    if !privileged("every_record_is_received_or_counted_as_lost") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let cgroup = CgroupDir::new("overflow").unwrap();
    // 4096 bytes hold RING_EXITS (56) exit records; the loop below makes 601 exits while the
    // collector is stopped and cannot read.
    let collector =
        Collector::trace(&["--cgroup", cgroup.path(), "--type", "exit", "--ring-buffer-bytes", "4096"]).unwrap();
    cgroup.exits_while_stopped(collector.pid(), || {}).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    // Other records (cgroup changes anywhere on the node) share the ring, so
    // losses are counted by type.
    let received = stopped.records.len() as u64;
    let lost = stopped.summary("exits").unwrap();
    assert_eq!(received + lost, 601, "received {received} + lost {lost}\n{}", stopped.stderr);
    assert!(lost >= 601 - RING_EXITS, "the buffer holds at most {RING_EXITS} records, yet only {lost} were lost");
    assert!(stopped.summary("lost").unwrap() >= lost, "the total counts every type");
    assert!(stopped.records.iter().all(|r| r["type"] == "exit" && r["cgroup_path"] == cgroup.path()));
}

/// Processes exiting every 20 ms, as on a busy node, until dropped.
struct Busy {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Busy {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let _ = std::process::Command::new("/bin/true").status();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The sample of `name` with exactly `labels` in a checked exposition.
fn metric(daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> u64 {
    let samples = exposition::parse(&daemon.metrics().unwrap()).unwrap();
    let value = exposition::value(&samples, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?}"));
    // Counters are whole numbers, exactly representable far beyond any count here.
    value as u64
}

/// The daemon watches the whole node, and other processes on it exit too, so "produced" is
/// this test's exits plus the node's. A reference `collector trace` with a large ring, started
/// before the daemon and stopped after the last scrape, sees every exit on the node: those of
/// others between the daemon's attach and the scrape are the rest of "produced". The two
/// boundaries are fuzzy by a few milliseconds (when exactly the daemon attached; records not
/// yet read at the scrape), so the node's share is known within [exits surely inside, exits
/// possibly inside]: on a quiet node (CI) both are the same and the equation is exact.
#[test]
fn the_daemon_counts_every_lost_exit_in_metrics() {
    if !privileged("the_daemon_counts_every_lost_exit_in_metrics") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let cgroup = CgroupDir::new("overflow-daemon").unwrap();
    let reference =
        Collector::trace(&["--type", "exit", "--cri-socket", "none", "--ring-buffer-bytes", "16777216"]).unwrap();
    let state = StateDir::new("overflow").unwrap();
    let start = Timestamp::now();
    let daemon = Daemon::start(&state, &["stdout"], "none", &["--ring-buffer-bytes", "4096"]).unwrap();
    let ready = Timestamp::now();
    cgroup.exits_while_stopped(daemon.pid(), || {}).unwrap();

    // Losses stop once the daemon reads again; wait until the copied kernel counter shows them,
    // on a busy node: a process exits every 20 ms, so the daemon always has records to read.
    let busy = Busy::start();
    let lost_exit = [("type", "exit")];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lost = 0;
    while lost < 601 - RING_EXITS {
        assert!(Instant::now() < deadline, "lost exits stuck at {lost} in /metrics:\n{}", daemon.metrics().unwrap());
        std::thread::sleep(Duration::from_millis(50));
        lost = metric(&daemon, "collector_kernel_records_lost_total", &lost_exit);
    }
    drop(busy);
    // The ring drained: let the reader catch up, then read both counters in one scrape.
    std::thread::sleep(Duration::from_millis(300));
    let scrape_start = Timestamp::now();
    let samples = exposition::parse(&daemon.metrics().unwrap()).unwrap();
    let scrape_end = Timestamp::now();
    std::thread::sleep(Duration::from_millis(300));
    let reference = reference.stop().unwrap();
    assert!(reference.status.success(), "{}", reference.stderr);
    assert_eq!(reference.summary("lost").unwrap(), 0, "the reference saw every exit");
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let count = |name: &str| exposition::value(&samples, name, &lost_exit).unwrap() as u64;
    let (delivered, lost) = (count("collector_kernel_records_total"), count("collector_kernel_records_lost_total"));
    let produced_here =
        reference.records.iter().filter(|r| r["cgroup_path"] == cgroup.path() && r["type"] == "exit").count() as u64;
    assert_eq!(produced_here, 601, "the reference saw the test's exits");
    // Others' exits: surely inside the daemon's window, or possibly inside it.
    let others = |from: &Timestamp, to: &Timestamp| {
        let (from, to) = (from.to_string(), to.to_string());
        reference
            .records
            .iter()
            .filter(|r| r["cgroup_path"] != cgroup.path())
            .filter(|r| r["time"].as_str().is_some_and(|t| from.as_str() <= t && t <= to.as_str()))
            .count() as u64
    };
    // Records produced within the reader's poll interval before the scrape may be unread.
    let surely_read = Timestamp(scrape_start.0 - i64::try_from(SETTLE.as_nanos()).unwrap());
    let (least, most) = (others(&ready, &surely_read), others(&start, &scrape_end));
    let node = (delivered + lost)
        .checked_sub(produced_here)
        .unwrap_or_else(|| panic!("delivered {delivered} + lost {lost} < the test's {produced_here} exits"));
    assert!(
        least <= node && node <= most,
        "delivered {delivered} + lost {lost} = {produced_here} of this test + {node} of the node, but the node \
         made between {least} and {most}"
    );
    // The ring holds RING_EXITS exit records: all but those of the test's exits were lost,
    // more than eight times what the ring holds (601 - 30 = 571 >= 8 * 30).
    const { assert!(601 - RING_EXITS >= 8 * RING_EXITS) };
    assert!(lost >= 601 - RING_EXITS, "lost {lost}");
    let total_lost: u64 =
        samples.iter().filter(|s| s.name == "collector_kernel_records_lost_total").map(|s| s.value as u64).sum();
    assert!(total_lost >= lost, "the other types' losses add to the exits'");
}
