//! End-to-end decisions of the recorder on virtual time.

use std::time::Duration;

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::telemetry::Metrics;

const T0: i64 = 1_795_862_410; // 2026-11-28T10:40:10Z

fn at(secs_after_t0: u64) -> Timestamp {
    Timestamp::from_unix_secs(T0).saturating_add(Duration::from_secs(secs_after_t0))
}

fn recorder() -> Recorder {
    Recorder::new(RecorderConfig::new("collector", "node-1")).unwrap()
}

/// A recorder counting into fresh metrics.
fn counted(config: RecorderConfig) -> (Recorder, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new("test"));
    (Recorder::new(config).unwrap().with_metrics(Arc::clone(&metrics)), metrics)
}

/// The value of the sample `series` (`name{labels}`, or a bare name) in the exposition.
fn sample(metrics: &Metrics, series: &str) -> u64 {
    let text = metrics.encode().unwrap();
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
}

fn pod() -> ObjectReference {
    ObjectReference::pod("shop", "web-0", "1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        .with_field_path("spec.containers{app}")
}

fn oom(message: &str) -> EventSpec {
    EventSpec::new(pod(), EventType::Warning, "OOMKilled", message)
}

fn post(decision: Decision) -> Event {
    match decision {
        Decision::Write(Write::Post(event)) => event,
        other => panic!("expected a POST, got {other:?}"),
    }
}

fn patch(decision: Decision) -> (String, String, Value, Event) {
    match decision {
        Decision::Write(Write::Patch { name, namespace, body, event }) => (name, namespace, body, event),
        other => panic!("expected a PATCH, got {other:?}"),
    }
}

#[test]
fn post_body_json_shape() {
    let mut rec = recorder();
    let event = post(rec.record(oom("Container app was OOM killed"), at(0)));
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": {"name": "web-0.18ec2f58d586e400", "namespace": "shop"},
            "involvedObject": {
                "kind": "Pod",
                "namespace": "shop",
                "name": "web-0",
                "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                "apiVersion": "v1",
                "fieldPath": "spec.containers{app}"
            },
            "reason": "OOMKilled",
            "message": "Container app was OOM killed",
            "source": {"component": "collector", "host": "node-1"},
            "firstTimestamp": "2026-11-28T10:40:10Z",
            "lastTimestamp": "2026-11-28T10:40:10Z",
            "count": 1,
            "type": "Warning",
            "eventTime": null,
            "reportingComponent": "collector",
            "reportingInstance": "node-1"
        })
    );
}

#[test]
fn node_events_go_to_default_namespace() {
    let mut rec = recorder();
    let spec = EventSpec::new(
        ObjectReference::node("node-1"),
        EventType::Warning,
        "SystemOOM",
        "System OOM encountered, victim process: stress, pid: 4242",
    );
    let event = post(rec.record(spec, at(0)));
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["metadata"], json!({"name": "node-1.18ec2f58d586e400", "namespace": "default"}));
    assert_eq!(json["involvedObject"], json!({"kind": "Node", "name": "node-1", "uid": "node-1"}));
}

#[test]
fn three_identical_events_post_then_patch_twice() {
    let mut rec = recorder();
    let first = post(rec.record(oom("killed"), at(0)));
    assert_eq!(first.metadata.name, "web-0.18ec2f58d586e400");
    assert_eq!(first.count, 1);

    let (name, namespace, body, event) = patch(rec.record(oom("killed"), at(5)));
    assert_eq!(name, "web-0.18ec2f58d586e400");
    assert_eq!(namespace, "shop");
    assert_eq!(body, json!({"count": 2, "lastTimestamp": "2026-11-28T10:40:15Z", "message": "killed"}));
    assert_eq!(event.metadata.name, first.metadata.name);
    assert_eq!(event.first_timestamp, at(0));
    assert_eq!(event.last_timestamp, at(5));
    assert_eq!(event.count, 2);

    let (name, _, body, event) = patch(rec.record(oom("killed"), at(70)));
    assert_eq!(name, "web-0.18ec2f58d586e400");
    assert_eq!(body, json!({"count": 3, "lastTimestamp": "2026-11-28T10:41:20Z", "message": "killed"}));
    assert_eq!(event.first_timestamp, at(0));
    assert_eq!(event.count, 3);
    // The exact bytes, for a sink that sends the body as is.
    assert_eq!(
        serde_json::to_string(&body).unwrap(),
        r#"{"count":3,"lastTimestamp":"2026-11-28T10:41:20Z","message":"killed"}"#
    );
}

#[test]
fn field_path_splits_dedup_but_not_aggregation_or_spam() {
    let mut rec = recorder();
    post(rec.record(oom("killed"), at(0)));
    let other =
        EventSpec::new(pod().with_field_path("spec.containers{sidecar}"), EventType::Warning, "OOMKilled", "killed");
    let event = post(rec.record(other, at(0)));
    assert_eq!(event.involved_object.field_path, "spec.containers{sidecar}");
}

#[test]
fn tenth_similar_event_is_posted_combined_eleventh_patches_it() {
    let (mut rec, metrics) = counted(RecorderConfig::new("collector", "node-1"));
    for i in 1..=9 {
        let event = post(rec.record(oom(&format!("process {i} killed")), at(i)));
        assert_eq!(event.message, format!("process {i} killed"));
    }
    let combined = post(rec.record(oom("process 10 killed"), at(10)));
    assert_eq!(combined.message, "(combined from similar events): process 10 killed");
    assert_eq!(combined.metadata.name, event_name("web-0", at(10)));
    assert_eq!(combined.count, 1);
    assert_eq!(combined.first_timestamp, at(10));
    // client-go's aggregate copy carries no reporting pair.
    assert_eq!(combined.reporting_component, "");
    assert_eq!(combined.reporting_instance, "");
    assert_eq!(combined.source.component, "collector");
    assert_eq!(combined.involved_object, pod());

    let (name, _, body, event) = patch(rec.record(oom("process 11 killed"), at(11)));
    assert_eq!(name, combined.metadata.name);
    assert_eq!(
        body,
        json!({
            "count": 2,
            "lastTimestamp": "2026-11-28T10:40:21Z",
            "message": "(combined from similar events): process 11 killed"
        })
    );
    assert_eq!(event.first_timestamp, at(10));

    // A message still in the aggregation set is not combined: it dedups on its own key.
    let (name, _, body, _) = patch(rec.record(oom("process 5 killed"), at(12)));
    assert_eq!(name, event_name("web-0", at(5)));
    assert_eq!(body["count"], 2);

    assert_eq!(sample(&metrics, "collector_recorder_aggregations_total"), 2);
}

#[test]
fn similar_events_spread_over_more_than_600s_are_not_combined() {
    let mut rec = recorder();
    for i in 0..9 {
        post(rec.record(oom(&format!("m{i}")), at(i)));
    }
    let event = post(rec.record(oom("m9"), at(8 + 601)));
    assert_eq!(event.message, "m9");
}

#[test]
fn spam_filter_lets_25_through_then_one_per_300s() {
    let mut rec = recorder();
    let decisions: Vec<Decision> = (0..30).map(|_| rec.record(oom("killed"), at(0))).collect();
    let written = decisions.iter().filter(|d| matches!(d, Decision::Write(_))).count();
    assert_eq!(written, 25);
    assert!(matches!(decisions[0], Decision::Write(Write::Post(_))));
    assert!(decisions[25..].iter().all(|d| *d == Decision::SpamFiltered));

    assert_eq!(rec.record(oom("killed"), at(299)), Decision::SpamFiltered);
    // The dedup log counted the dropped repeats too (client-go filters after observing): this
    // is occurrence 32.
    let (_, _, body, _) = patch(rec.record(oom("killed"), at(300)));
    assert_eq!(body["count"], 32);
    assert_eq!(rec.record(oom("killed"), at(300)), Decision::SpamFiltered);
}

#[test]
fn spam_bucket_is_shared_across_reasons_and_types_of_one_object() {
    let mut rec = recorder();
    for i in 0..25 {
        let spec = EventSpec::new(pod(), EventType::Normal, format!("Reason{i}"), "x");
        assert!(matches!(rec.record(spec, at(0)), Decision::Write(_)));
    }
    assert_eq!(rec.record(oom("killed"), at(0)), Decision::SpamFiltered);
    let other_pod =
        EventSpec::new(ObjectReference::pod("shop", "web-1", "uid-2"), EventType::Warning, "OOMKilled", "killed");
    post(rec.record(other_pod, at(0)));
}

#[test]
fn dropped_post_then_repeat_patches_and_404_reposts_same_event() {
    let mut config = RecorderConfig::new("collector", "node-1");
    config.spam_burst = 1;
    let mut rec = Recorder::new(config).unwrap();
    post(rec.record(oom("first"), at(0)));
    // The POST of "killed" is dropped, but the dedup log remembers it under this name.
    assert_eq!(rec.record(oom("killed"), at(1)), Decision::SpamFiltered);
    let Decision::Write(write) = rec.record(oom("killed"), at(301)) else { panic!("a PATCH") };
    let (name, _, body, event) = patch(Decision::Write(write.clone()));
    assert_eq!(name, event_name("web-0", at(1)));
    assert_eq!(body["count"], 2);

    // The API server never saw it: 404, so the sink POSTs the very same event, as client-go's
    // recordEvent does (ApiWrite::as_repost).
    let repost = crate::sinks::ApiWrite::try_from(&write).unwrap().as_repost();
    assert_eq!(repost.verb, crate::sinks::Verb::Post);
    assert_eq!(repost.name, name);
    assert_eq!(repost.body, serde_json::to_value(&event).unwrap());
    assert_eq!((&repost.body["count"], &repost.body["firstTimestamp"]), (&json!(2), &json!("2026-11-28T10:40:11Z")));
    assert_eq!(repost.body["lastTimestamp"], "2026-11-28T10:45:11Z");
}

#[test]
fn dedup_eviction_at_capacity_posts_the_repeat_again() {
    let mut config = RecorderConfig::new("collector", "node-1");
    config.cache_capacity = 2;
    let (mut rec, metrics) = counted(config);
    post(rec.record(oom("a"), at(0)));
    post(rec.record(oom("b"), at(1)));
    patch(rec.record(oom("a"), at(2))); // "a" is now the most recent
    post(rec.record(oom("c"), at(3))); // evicts "b"
    patch(rec.record(oom("a"), at(4)));
    let again = post(rec.record(oom("b"), at(5)));
    assert_eq!(again.metadata.name, event_name("web-0", at(5)));
    assert_eq!(again.count, 1);
    assert_eq!(again.first_timestamp, at(5));

    let evictions =
        |cache: &str| sample(&metrics, &format!("collector_recorder_cache_evictions_total{{cache=\"{cache}\"}}"));
    assert_eq!(evictions("dedup_log"), 2); // "b" by "c", then "c" by "b"
    assert_eq!(evictions("spam_filter"), 0);
    assert_eq!(evictions("aggregator"), 0);
}

#[test]
fn long_message_and_reason_are_cut_on_char_boundaries() {
    let (mut rec, metrics) = counted(RecorderConfig::new("collector", "node-1"));
    let spec = EventSpec::new(pod(), EventType::Warning, "é".repeat(100), "é".repeat(1000));
    let event = post(rec.record(spec, at(0)));
    assert_eq!(event.reason, "é".repeat(64));
    assert_eq!(event.message.len(), 1023);
    assert_eq!(event.message, format!("{}...", "é".repeat(510)));
    let truncated = |field: &str| sample(&metrics, &format!("collector_recorder_truncated_total{{field=\"{field}\"}}"));
    assert_eq!((truncated("message"), truncated("reason")), (1, 1));
}

#[test]
fn combined_message_stays_within_limit() {
    let mut config = RecorderConfig::new("collector", "node-1");
    config.aggregate_max_events = 1;
    let mut rec = Recorder::new(config).unwrap();
    let event = post(rec.record(oom(&"x".repeat(5000)), at(0)));
    assert_eq!(event.message.len(), MAX_MESSAGE_BYTES);
    assert!(event.message.starts_with(COMBINED_PREFIX));
    assert!(event.message.ends_with("x..."));
}

#[test]
fn hostile_input_never_panics() {
    let mut rec = recorder();
    let weird = [String::new(), "\0\u{1b}[31m\r\n\t".to_owned(), "😀".repeat(600), "\u{10FFFF}".repeat(2000)];
    let times = [
        Timestamp::from_unix_nanos(i64::MAX),
        Timestamp::from_unix_nanos(i64::MIN),
        Timestamp::from_unix_nanos(0),
        Timestamp::from_unix_nanos(-1),
    ];
    for (i, text) in weird.iter().enumerate() {
        for (j, now) in times.iter().enumerate() {
            let object = ObjectReference {
                kind: text.clone(),
                namespace: text.clone(),
                name: text.clone(),
                uid: text.clone(),
                api_version: text.clone(),
                field_path: text.clone(),
            };
            let spec = EventSpec::new(object, EventType::Normal, text.clone(), text.clone());
            if let Decision::Write(write) = rec.record(spec, *now) {
                let event = write.event();
                assert!(event.message.len() <= MAX_MESSAGE_BYTES, "{i} {j}");
                assert!(event.reason.len() <= MAX_REASON_BYTES, "{i} {j}");
                serde_json::to_string(event).unwrap();
            }
        }
    }
}

#[test]
fn empty_message_patch_omits_message_like_client_go() {
    let mut rec = recorder();
    post(rec.record(oom(""), at(0)));
    let (_, _, body, _) = patch(rec.record(oom(""), at(1)));
    assert_eq!(body, json!({"count": 2, "lastTimestamp": "2026-11-28T10:40:11Z"}));
}

#[test]
fn invalid_configs_are_rejected() {
    let base = RecorderConfig::new("collector", "node-1");
    let cases = [
        (RecorderConfig { cache_capacity: 0, ..base.clone() }, RecorderError::ZeroCacheCapacity),
        (RecorderConfig { spam_burst: 0, ..base.clone() }, RecorderError::ZeroSpamBurst),
        (RecorderConfig { spam_refill: Duration::ZERO, ..base.clone() }, RecorderError::ZeroSpamRefill),
        (RecorderConfig { aggregate_max_events: 0, ..base.clone() }, RecorderError::ZeroAggregateMaxEvents),
    ];
    for (config, error) in cases {
        assert_eq!(Recorder::new(config).err(), Some(error));
    }
    assert_eq!(base.cache_capacity, 4096);
    assert_eq!(base.spam_burst, 25);
    assert_eq!(base.spam_refill, Duration::from_secs(300));
    assert_eq!(base.aggregate_max_events, 10);
    assert_eq!(base.aggregate_interval, Duration::from_secs(600));
}

#[test]
fn recorder_can_move_between_tasks() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Recorder>();
    assert_send::<Decision>();
}
