//! A full ring buffer loses records, and every lost record is counted:
//! received + counted as lost = exits caused, exactly.

use std::time::Duration;

use collector_tests::{cgroup::CgroupDir, collector::Collector, privileged};

#[test]
fn every_record_is_received_or_counted_as_lost() {
    if !privileged("every_record_is_received_or_counted_as_lost") {
        return;
    }
    let cgroup = CgroupDir::new("overflow").unwrap();
    // 4096 bytes hold 64 exit records; the loop below makes 601 exits, over
    // nine times that, while the collector is stopped and cannot read.
    let collector =
        Collector::trace(&["--cgroup", cgroup.path(), "--ring-buffer-bytes", "4096"]).unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(collector.pid(), libc::SIGSTOP) };
    let status = cgroup
        .command("sh")
        .unwrap()
        .args([
            "-c",
            "i=0; while [ $i -lt 600 ]; do /bin/true; i=$((i+1)); done",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    // SAFETY: as above.
    unsafe { libc::kill(collector.pid(), libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(300));
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let received = stopped.summary("records").unwrap();
    let lost = stopped.summary("lost").unwrap();
    assert_eq!(received + lost, 601, "received {received} + lost {lost}");
    assert!(
        lost >= 601 - 64,
        "the buffer holds at most 64 records, yet only {lost} were lost"
    );
    assert_eq!(
        stopped.records.len() as u64,
        received,
        "every received record is printed"
    );
    assert!(
        stopped
            .records
            .iter()
            .all(|r| r["cgroup_path"] == cgroup.path())
    );
}
