//! Handlers run on their own threads behind their own queues: a stdout nobody reads stalls only
//! the stdout handler, while the journal keeps every death, the kernel loses nothing and the
//! daemon still stops on time.

use std::time::{Duration, Instant};

use collector_tests::containerd::Containerd;
use collector_tests::daemon::{Daemon, StateDir, journal_occurrences, samples};
use collector_tests::kubelet::{ContainerSpec, PodSpec};
use collector_tests::privileged;

const CRASHES: usize = 40;
const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn a_stalled_stdout_delays_neither_the_journal_nor_the_kernel_side() {
    if !privileged("a_stalled_stdout_delays_neither_the_journal_nor_the_kernel_side") {
        return;
    }
    let containerd = Containerd::start().unwrap();
    let state = StateDir::new("stalled-stdout").unwrap();
    let spec = PodSpec { name: "web-0".to_owned(), namespace: "shop".to_owned(), ..PodSpec::unique("web") };
    let pod = containerd.cri().run_pod(spec).unwrap();
    let socket = containerd.address().display().to_string();
    // Nothing reads the daemon's stdout, a one-page pipe: a few events fill it.
    let daemon = Daemon::start_stalled(&state, &["stdout", "journal"], &socket, &[], true).unwrap();
    let script = format!("i=0; while [ $i -lt {CRASHES} ]; do sh -c 'kill -SEGV $$' & i=$((i+1)); done; wait");
    let app = containerd.cri().create_and_start(&pod, ContainerSpec::shell("app", &script)).unwrap();
    assert_eq!(containerd.cri().wait_exit(&app, TIMEOUT).unwrap(), 0);

    // The journal has every crash, and the shell's exit 0 after them, while stdout is still blocked.
    let deadline = Instant::now() + TIMEOUT;
    let mut occurrences = journal_occurrences(state.path(), &["--pod", "web-0"]).unwrap();
    while occurrences.len() < CRASHES + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        occurrences = journal_occurrences(state.path(), &["--pod", "web-0"]).unwrap();
    }
    let reasons: Vec<&str> = occurrences.iter().filter_map(|o| o["reason"].as_str()).collect();
    assert_eq!(reasons.len(), CRASHES + 1, "{}", daemon.stderr());
    assert_eq!(reasons.iter().filter(|r| **r == "ProcessCrashed").count(), CRASHES, "{reasons:?}");
    assert_eq!(reasons.last(), Some(&"ContainerExited"), "{reasons:?}");
    assert!(daemon.events().is_empty(), "stdout was read: {:?}", daemon.events());
    let metrics = daemon.metrics().unwrap();
    for lost in samples(&metrics, "collector_kernel_records_lost_total") {
        assert!(lost.ends_with(" 0"), "{lost}\n{metrics}");
    }

    // Stopping does not wait for a pipe nobody reads, and says so.
    let started = Instant::now();
    let stopped = daemon.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(
        stopped.stderr.contains("collector: the stdout handler did not finish its queue within 500ms"),
        "{}",
        stopped.stderr
    );
    // What stdout got before and after: at most client-go's burst of writes, in order.
    assert!(stopped.events.len() <= 25, "{:#?}", stopped.events);
}
