use super::*;

fn scrape(metrics: &Metrics) -> String {
    metrics.encode().unwrap()
}

fn samples<'a>(exposition: &'a str, family: &str) -> Vec<&'a str> {
    exposition.lines().filter(|line| !line.starts_with('#') && line.starts_with(family)).collect()
}

const POD: ContainerRef<'static> =
    ContainerRef { namespace: "shop", pod: "cart-7d9f", pod_uid: "1b4e-1", container: "app" };

#[test]
fn fresh_metrics_have_help_and_type_for_every_family() {
    let out = scrape(&Metrics::new("0.1.0"));
    for (family, kind) in [
        ("collector_build", "info"),
        ("collector_kernel_records", "counter"),
        ("collector_kernel_records_lost", "counter"),
        ("collector_kernel_field_read_failures", "counter"),
        ("collector_records_malformed", "counter"),
        ("collector_records_unresolved", "counter"),
        ("collector_events_dropped", "counter"),
        ("collector_api_retries", "counter"),
        ("collector_api_writes_deferred", "counter"),
        ("collector_cgroup_cache_lookups", "counter"),
        ("collector_cgroup_cache_evictions", "counter"),
        ("collector_cgroup_tree_walks", "counter"),
        ("collector_cgroup_cache_tombstones_expired", "counter"),
        ("collector_container_oom_kills", "counter"),
        ("collector_container_nonzero_exits", "counter"),
        ("collector_container_series_dropped", "counter"),
        ("collector_journal_appends", "counter"),
        ("collector_journal_append_errors", "counter"),
        ("collector_journal_pruned", "counter"),
        ("collector_journal_size_bytes", "gauge"),
        ("collector_journal_outbox_pending", "gauge"),
    ] {
        assert!(
            out.contains(&format!("\n# TYPE {family} {kind}\n"))
                || out.starts_with(&format!("# TYPE {family} {kind}\n")),
            "no TYPE for {family} in:\n{out}"
        );
        assert!(out.contains(&format!("# HELP {family} ")), "no HELP for {family}");
    }
    assert!(out.contains("\ncollector_build_info{version=\"0.1.0\"} 1\n"));
    assert!(out.contains("\ncollector_kernel_records_lost_total{type=\"exit\"} 0\n"));
    assert!(out.contains("\ncollector_records_malformed_total 0\n"));
    assert!(out.contains("\n# UNIT collector_journal_size_bytes bytes\n"));
    assert!(out.contains("\ncollector_kernel_records_total{type=\"cgroup_attach\"} 0\n"));
    assert!(out.contains("\ncollector_events_dropped_total{cause=\"queue_full\"} 0\n"));
    assert!(out.contains("\ncollector_journal_pruned_total{reason=\"max_bytes\"} 0\n"));
    // Families with open label values appear with their first series.
    assert!(!out.contains("collector_events_total"));
    assert!(!out.contains("collector_api_requests_total"));
    assert!(out.ends_with("# EOF\n"));
}

#[test]
fn counters_show_exact_values() {
    let metrics = Metrics::new("0.1.0");
    metrics.kernel_record(KernelRecordType::Exit);
    metrics.kernel_record(KernelRecordType::CgroupMkdir);
    metrics.kernel_record(KernelRecordType::Exit);
    metrics.record_malformed();
    metrics.record_unresolved();
    metrics.record_unresolved();
    metrics.cgroup_paths_truncated(3);
    metrics.records_unjoined(0);
    metrics.event_emitted("OOMKilling", EventType::Warning);
    metrics.event_dropped(DropCause::SpamFilter);
    metrics.event_dropped(DropCause::Expired);
    metrics.api_write_deferred();
    metrics.api_write_deferred();
    metrics.api_request("PATCH", ApiStatus::Code(404));
    metrics.api_request("POST", ApiStatus::NoResponse);
    metrics.api_retry();
    metrics.journal_appended();
    metrics.journal_append_failed();
    metrics.journal_pruned(PruneReason::MaxAge, 12);
    metrics.set_journal_size(4096);
    metrics.set_outbox_pending(3);
    metrics.set_kernel_counters([(KernelRecordType::Exit, 5)], 0);
    metrics.set_kernel_counters([(KernelRecordType::Exit, 9), (KernelRecordType::CgroupAttach, 4)], 2);
    let out = scrape(&metrics);
    let mut kernel = samples(&out, "collector_kernel_records_total");
    kernel.sort_unstable();
    assert_eq!(
        kernel,
        [
            "collector_kernel_records_total{type=\"cgroup_attach\"} 0",
            "collector_kernel_records_total{type=\"cgroup_mkdir\"} 1",
            "collector_kernel_records_total{type=\"cgroup_rmdir\"} 0",
            "collector_kernel_records_total{type=\"exit\"} 2",
            "collector_kernel_records_total{type=\"fs_error\"} 0",
            "collector_kernel_records_total{type=\"hung_task\"} 0",
            "collector_kernel_records_total{type=\"hw_error\"} 0",
            "collector_kernel_records_total{type=\"io_error\"} 0",
            "collector_kernel_records_total{type=\"kernel_log\"} 0",
            "collector_kernel_records_total{type=\"oom_kill\"} 0",
            "collector_kernel_records_total{type=\"signal\"} 0",
        ]
    );
    let mut dropped = samples(&out, "collector_events_dropped_total");
    dropped.sort_unstable();
    assert_eq!(
        dropped,
        [
            "collector_events_dropped_total{cause=\"expired\"} 1",
            "collector_events_dropped_total{cause=\"filtered\"} 0",
            "collector_events_dropped_total{cause=\"queue_full\"} 0",
            "collector_events_dropped_total{cause=\"rejected\"} 0",
            "collector_events_dropped_total{cause=\"spam_filter\"} 1",
            "collector_events_dropped_total{cause=\"suppressed\"} 0",
        ]
    );
    for line in [
        "collector_kernel_records_lost_total{type=\"exit\"} 9",
        "collector_kernel_records_lost_total{type=\"cgroup_attach\"} 4",
        "collector_kernel_records_lost_total{type=\"signal\"} 0",
        "collector_kernel_field_read_failures_total 2",
        "collector_api_writes_deferred_total 2",
        "collector_records_malformed_total 1",
        "collector_records_unresolved_total 2",
        "collector_cgroup_paths_truncated_total 3",
        "collector_records_unjoined_total 0",
        "collector_events_total{reason=\"OOMKilling\",type=\"Warning\"} 1",
        "collector_api_requests_total{verb=\"PATCH\",status=\"404\"} 1",
        "collector_api_requests_total{verb=\"POST\",status=\"error\"} 1",
        "collector_api_retries_total 1",
        "collector_journal_appends_total 1",
        "collector_journal_append_errors_total 1",
        "collector_journal_pruned_total{reason=\"max_age\"} 12",
        "collector_journal_size_bytes 4096",
        "collector_journal_outbox_pending 3",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn label_values_with_quotes_backslashes_and_newlines_stay_on_one_line() {
    let metrics = Metrics::new("1.0\"\n");
    let hostile = ContainerRef { namespace: "ns", pod: "p\"o\\d", pod_uid: "u", container: "c\nfake_metric 1\r\t" };
    metrics.container_oom_kill(&hostile);
    metrics.event_emitted("Re\"ason\\\n", EventType::Normal);
    let out = scrape(&metrics);
    assert_eq!(
        samples(&out, "collector_container_oom_kills_total"),
        ["collector_container_oom_kills_total{namespace=\"ns\",pod=\"p\\\"o\\\\d\",\
          container=\"c\\nfake_metric 1\r\t\"} 1"]
    );
    assert!(out.contains("\ncollector_events_total{reason=\"Re\\\"ason\\\\\\n\",type=\"Normal\"} 1\n"));
    assert!(out.contains("\ncollector_build_info{version=\"1.0\\\"\\n\"} 1\n"));
    // The injected newline did not start a sample of its own.
    assert!(!out.lines().any(|line| line.starts_with("fake_metric")));
}

#[test]
fn removing_a_pod_removes_all_its_series_and_only_its() {
    let metrics = Metrics::new("0.1.0");
    let sidecar = ContainerRef { container: "proxy", ..POD };
    let other = ContainerRef { pod: "cart-other", pod_uid: "9", ..POD };
    metrics.container_oom_kill(&POD);
    metrics.container_nonzero_exit(&POD);
    metrics.container_nonzero_exit(&POD);
    metrics.container_nonzero_exit(&sidecar);
    metrics.container_oom_kill(&other);
    let out = scrape(&metrics);
    assert_eq!(
        samples(&out, "collector_container_oom_kills_total"),
        [
            "collector_container_oom_kills_total{namespace=\"shop\",pod=\"cart-7d9f\",container=\"app\"} 1",
            "collector_container_oom_kills_total{namespace=\"shop\",pod=\"cart-other\",container=\"app\"} 1",
        ]
    );
    assert_eq!(
        samples(&out, "collector_container_nonzero_exits_total"),
        [
            "collector_container_nonzero_exits_total{namespace=\"shop\",pod=\"cart-7d9f\",container=\"app\"} 2",
            "collector_container_nonzero_exits_total{namespace=\"shop\",pod=\"cart-7d9f\",container=\"proxy\"} 1",
        ]
    );

    assert!(metrics.remove_pod("shop", "cart-7d9f", "1b4e-1"));
    assert!(!metrics.remove_pod("shop", "cart-7d9f", "1b4e-1"));
    let out = scrape(&metrics);
    assert_eq!(
        samples(&out, "collector_container_oom_kills_total"),
        ["collector_container_oom_kills_total{namespace=\"shop\",pod=\"cart-other\",container=\"app\"} 1"]
    );
    assert!(samples(&out, "collector_container_nonzero_exits_total").is_empty());
    // The family's HELP and TYPE stay when it has no series.
    assert!(out.contains("# TYPE collector_container_nonzero_exits counter\n"));
}

#[test]
fn a_reused_pod_name_keeps_its_series_when_the_old_pods_tombstone_expires() {
    let metrics = Metrics::new("0.1.0");
    metrics.container_oom_kill(&POD);
    let successor = ContainerRef { pod_uid: "1b4e-2", ..POD };
    metrics.container_oom_kill(&successor);
    assert!(!metrics.remove_pod("shop", "cart-7d9f", "1b4e-1"));
    assert_eq!(
        samples(&scrape(&metrics), "collector_container_oom_kills_total"),
        ["collector_container_oom_kills_total{namespace=\"shop\",pod=\"cart-7d9f\",container=\"app\"} 2"]
    );
    assert!(metrics.remove_pod("shop", "cart-7d9f", "1b4e-2"));
}

#[test]
fn pods_beyond_the_cap_are_counted_not_stored() {
    let metrics = Metrics::new("0.1.0");
    let names: Vec<String> = (0..=MAX_PODS_WITH_SERIES).map(|i| format!("p{i}")).collect();
    for name in &names {
        metrics.container_oom_kill(&ContainerRef { pod: name, ..POD });
    }
    // An existing pod still counts.
    metrics.container_oom_kill(&ContainerRef { pod: "p0", ..POD });
    let out = scrape(&metrics);
    assert_eq!(samples(&out, "collector_container_oom_kills_total").len(), MAX_PODS_WITH_SERIES);
    assert!(out.contains("\ncollector_container_series_dropped_total 1\n"));
}

#[test]
fn cache_counters_show_the_latest_totals() {
    use crate::{cgroup::registry::RegistryStats, metadata::MetadataStats};
    let metrics = Metrics::new("0.1.0");
    // No metadata cache (`--cri-socket none`): its families are absent, not zero.
    assert!(!scrape(&metrics).contains("collector_metadata_"));
    let cgroups = RegistryStats {
        lookups: 9,
        hits: 7,
        misses: 2,
        evictions: 3,
        tombstones_expired: 4,
        walks: 5,
        ..Default::default()
    };
    metrics.set_cgroup_cache(RegistryStats { hits: 1, ..cgroups });
    metrics.set_cgroup_cache(cgroups);
    metrics.set_metadata_cache(MetadataStats {
        hits: 11,
        misses: 5,
        refreshes: 6,
        cri_errors: 1,
        kube_errors: 2,
        dropped: 8,
        kubelet_said: 3,
        kubelet_silent: 1,
        kubelet_skipped: 9,
        pods: 100,
        containers: 250,
        ..Default::default()
    });
    let out = scrape(&metrics);
    for line in [
        "collector_cgroup_cache_lookups_total{result=\"hit\"} 7",
        "collector_cgroup_cache_lookups_total{result=\"miss\"} 2",
        "collector_cgroup_cache_evictions_total 3",
        "collector_cgroup_cache_tombstones_expired_total 4",
        "collector_cgroup_tree_walks_total 5",
        "collector_metadata_lookups_total{result=\"hit\"} 11",
        "collector_metadata_lookups_total{result=\"miss\"} 5",
        "collector_metadata_refreshes_total 6",
        "collector_metadata_errors_total{source=\"cri\"} 1",
        "collector_metadata_errors_total{source=\"kube\"} 2",
        "collector_metadata_evictions_total 8",
        "collector_metadata_kubelet_stops_total{result=\"said\"} 3",
        "collector_metadata_kubelet_stops_total{result=\"silent\"} 1",
        "collector_metadata_kubelet_stops_total{result=\"skipped\"} 9",
        "collector_metadata_entries{kind=\"pod\"} 100",
        "collector_metadata_entries{kind=\"container\"} 250",
    ] {
        assert!(out.contains(&format!("\n{line}\n")), "missing {line}:\n{out}");
    }
    assert!(out.contains("# TYPE collector_metadata_entries gauge\n"), "{out}");
}

#[test]
fn label_spellings_are_stable() {
    let kinds: Vec<&str> = KernelRecordType::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "exit",
            "oom_kill",
            "signal",
            "cgroup_mkdir",
            "cgroup_rmdir",
            "cgroup_attach",
            "hung_task",
            "kernel_log",
            "fs_error",
            "io_error",
            "hw_error"
        ]
    );
    let causes: Vec<&str> = DropCause::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(causes, ["spam_filter", "queue_full", "filtered", "suppressed", "rejected", "expired"]);
}
