//! A full ring buffer loses records, and every lost record is counted:
//! exits received + exits counted as lost = exits caused, exactly.

use std::time::Duration;

use collector_tests::{cgroup::CgroupDir, collector::Collector, privileged};

#[test]
fn every_record_is_received_or_counted_as_lost() {
    if !privileged("every_record_is_received_or_counted_as_lost") {
        return;
    }
    let cgroup = CgroupDir::new("overflow").unwrap();
    // 4096 bytes hold 30 exit records (128 bytes and an 8-byte header each);
    // the loop below makes 601 exits while the collector is stopped and cannot read.
    let collector =
        Collector::trace(&["--cgroup", cgroup.path(), "--type", "exit", "--ring-buffer-bytes", "4096"]).unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(collector.pid(), libc::SIGSTOP) };
    let status = cgroup
        .command("sh")
        .unwrap()
        .args(["-c", "i=0; while [ $i -lt 600 ]; do /bin/true; i=$((i+1)); done"])
        .status()
        .unwrap();
    assert!(status.success());
    // SAFETY: as above.
    unsafe { libc::kill(collector.pid(), libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(300));
    let stopped = collector.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    // Other records (cgroup changes anywhere on the node) share the ring, so
    // losses are counted by type.
    let received = stopped.records.len() as u64;
    let lost = stopped.summary("exits").unwrap();
    assert_eq!(received + lost, 601, "received {received} + lost {lost}\n{}", stopped.stderr);
    assert!(lost >= 601 - 30, "the buffer holds at most 30 records, yet only {lost} were lost");
    assert!(stopped.summary("lost").unwrap() >= lost, "the total counts every type");
    assert!(stopped.records.iter().all(|r| r["type"] == "exit" && r["cgroup_path"] == cgroup.path()));
}
