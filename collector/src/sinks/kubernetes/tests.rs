//! The sink against the API server test double, through kube's real client.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::sinks::test_api::{Recorded, Rule, TestApi};

const FAST: SinkConfig = SinkConfig {
    request_timeout: Duration::from_millis(300),
    backoff: Backoff { base: Duration::from_millis(5), cap: Duration::from_millis(40) },
    max_attempts: 12,
    max_in_flight: 8,
};

const RUNNER: RunnerConfig = RunnerConfig { max_held: 64, max_per_name: 16, poll: Duration::from_millis(20) };

fn event(name: &str, count: u64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": { "name": name, "namespace": "default" },
        "involvedObject": { "kind": "Pod", "namespace": "default", "name": "web" },
        "reason": "OOMKilling", "message": "killed", "count": count,
        "firstTimestamp": "2025-01-01T00:00:00Z",
        "lastTimestamp": format!("2025-01-01T00:00:{count:02}Z"),
    })
}

fn post(name: &str) -> ApiWrite {
    ApiWrite {
        verb: Verb::Post,
        namespace: "default".into(),
        name: name.into(),
        body: event(name, 1),
        event: event(name, 1),
    }
}

fn patch(name: &str, count: u64) -> ApiWrite {
    let body = json!({ "count": count, "lastTimestamp": format!("2025-01-01T00:00:{count:02}Z") });
    ApiWrite { verb: Verb::Patch, namespace: "default".into(), name: name.into(), body, event: event(name, count) }
}

async fn sink(api: &mut TestApi, config: SinkConfig) -> Arc<KubeSink> {
    Arc::new(KubeSink::new(api.client().await, config))
}

/// (method, path, count) of each request, for compact sequence assertions.
fn summary(requests: &[Recorded]) -> Vec<(String, String, u64)> {
    requests.iter().map(|r| (r.method.clone(), r.path.clone(), r.body["count"].as_u64().unwrap_or(0))).collect()
}

async fn until(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a runner in the background until the returned sender is dropped or fired.
fn spawn_runner(
    sink: Arc<KubeSink>,
    config: RunnerConfig,
    outbox: Arc<MemoryOutbox>,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        Runner::new(sink, config)
            .run(&*outbox, async {
                let _ = stopped.await;
            })
            .await;
    });
    stop
}

#[tokio::test]
async fn a_burst_is_one_post_then_patches_in_order() {
    let mut api = TestApi::start().await;
    let sink = sink(&mut api, FAST).await;
    let outbox = Arc::new(MemoryOutbox::default());
    outbox.push(post("web.1"));
    outbox.push(patch("web.1", 2));
    outbox.push(patch("web.1", 3));
    let _stop = spawn_runner(Arc::clone(&sink), RUNNER, Arc::clone(&outbox));
    until("delivery", Duration::from_secs(5), || outbox.pending() == 0).await;

    let requests = api.requests();
    let events = "/api/v1/namespaces/default/events";
    assert_eq!(
        summary(&requests),
        [
            ("POST".into(), events.into(), 1),
            ("PATCH".into(), format!("{events}/web.1"), 2),
            ("PATCH".into(), format!("{events}/web.1"), 3),
        ]
    );
    assert_eq!(requests[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(requests[0].body, event("web.1", 1));
    assert_eq!(requests[1].content_type.as_deref(), Some("application/strategic-merge-patch+json"));
    assert_eq!(requests[2].body, json!({ "count": 3, "lastTimestamp": "2025-01-01T00:00:03Z" }));
    assert_eq!(api.stored("default", "web.1").map(|e| e["count"].clone()), Some(json!(3)));
    let outcomes: Vec<Outcome> = outbox.done().into_iter().map(|(_, o)| o).collect();
    assert_eq!(
        outcomes,
        [Outcome::Delivered { status: 201 }, Outcome::Delivered { status: 200 }, Outcome::Delivered { status: 200 }]
    );
    let stats = sink.stats();
    assert_eq!(stats.requests(Verb::Post, Reply::Status(201)), 1);
    assert_eq!(stats.requests(Verb::Patch, Reply::Status(200)), 2);
    assert_eq!((stats.delivered, stats.retries, stats.in_flight), (3, 0, 0));
}

#[tokio::test]
async fn server_errors_are_retried_then_delivered() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(503).times(3));
    let sink = sink(&mut api, FAST).await;
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 201 });
    let statuses: Vec<u16> = api.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 503, 201]);
    let stats = sink.stats();
    assert_eq!(stats.requests(Verb::Post, Reply::Status(503)), 3);
    assert_eq!((stats.retries, stats.delivered, stats.rejected), (3, 1, 0));
}

#[tokio::test]
async fn requests_and_retries_reach_the_metrics_as_they_happen() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(503).times(2));
    let metrics = Arc::new(Metrics::new("test"));
    let sink = KubeSink::new(api.client().await, FAST).with_metrics(Arc::clone(&metrics));
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 201 });
    let text = metrics.encode().unwrap();
    for line in [
        "collector_api_requests_total{verb=\"POST\",status=\"503\"} 2",
        "collector_api_requests_total{verb=\"POST\",status=\"201\"} 1",
        "collector_api_retries_total 2",
    ] {
        assert!(text.contains(&format!("\n{line}\n")), "no {line}:\n{text}");
    }
}

#[tokio::test]
async fn refused_connections_are_retried_until_the_server_is_back() {
    let mut api = TestApi::start().await;
    // Full jitter can make 12 fast tries last less than the 150 ms outage: allow
    // enough tries (each at most 40 ms apart) that giving up cannot come first.
    let sink = sink(&mut api, SinkConfig { max_attempts: 1000, ..FAST }).await;
    api.stop().await;
    let delivery = tokio::spawn({
        let sink = Arc::clone(&sink);
        async move { sink.deliver(post("web.1")).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    api.restart().await;
    assert_eq!(delivery.await.unwrap(), Outcome::Delivered { status: 201 });
    assert_eq!(api.requests().len(), 1);
    let stats = sink.stats();
    assert!(stats.requests(Verb::Post, Reply::Error) >= 1, "{stats:?}");
    assert_eq!(stats.retries, stats.requests(Verb::Post, Reply::Error));
}

#[tokio::test]
async fn a_patch_answered_404_is_reposted_with_the_whole_event() {
    let mut api = TestApi::start().await;
    let sink = sink(&mut api, FAST).await;
    assert_eq!(sink.deliver(patch("web.1", 7)).await, Outcome::Reposted);
    let requests = api.requests();
    assert_eq!(
        summary(&requests),
        [
            ("PATCH".into(), "/api/v1/namespaces/default/events/web.1".into(), 7),
            ("POST".into(), "/api/v1/namespaces/default/events".into(), 7),
        ]
    );
    assert_eq!(requests[0].status, 404);
    assert_eq!(requests[1].body, event("web.1", 7));
    assert_eq!(api.stored("default", "web.1"), Some(event("web.1", 7)));
    let stats = sink.stats();
    assert_eq!((stats.reposts, stats.delivered, stats.retries), (1, 1, 0));
}

#[tokio::test]
async fn an_expired_event_is_reposted_after_retried_patches() {
    let mut api = TestApi::start().await;
    let sink = sink(&mut api, FAST).await;
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 201 });
    api.forget("default", "web.1");
    api.script(Rule::status(503).on("PATCH").times(2));
    assert_eq!(sink.deliver(patch("web.1", 2)).await, Outcome::Reposted);
    let statuses: Vec<(String, u16)> = api.requests().iter().map(|r| (r.method.clone(), r.status)).collect();
    let expected = [("POST", 201), ("PATCH", 503), ("PATCH", 503), ("PATCH", 404), ("POST", 201)];
    assert_eq!(statuses, expected.map(|(m, s)| (m.to_owned(), s)));
    assert_eq!(api.stored("default", "web.1"), Some(event("web.1", 2)));
    assert_eq!((sink.stats().reposts, sink.stats().retries), (1, 2));
}

#[tokio::test]
async fn a_bad_request_is_not_retried() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(400));
    let sink = sink(&mut api, FAST).await;
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Rejected { status: 400 });
    assert_eq!(api.requests().len(), 1);
    let stats = sink.stats();
    assert_eq!((stats.rejected, stats.retries, stats.delivered), (1, 0, 0));
}

#[tokio::test]
async fn already_exists_counts_as_delivered() {
    let mut api = TestApi::start().await;
    let sink = sink(&mut api, FAST).await;
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 201 });
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 409 });
    assert_eq!(api.requests().len(), 2);
    assert_eq!(sink.stats().retries, 0);
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(429).retry_after(1).times(1));
    let config =
        SinkConfig { backoff: Backoff { base: Duration::from_millis(5), cap: Duration::from_secs(5) }, ..FAST };
    let sink = sink(&mut api, config).await;
    let start = Instant::now();
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 201 });
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(sink.stats().requests(Verb::Post, Reply::Status(429)), 1);
}

#[tokio::test]
async fn a_slow_answer_times_out_and_the_retry_finds_the_event_created() {
    let mut api = TestApi::start().await;
    api.script(Rule::slow(Duration::from_secs(2)).times(1));
    let config = SinkConfig { request_timeout: Duration::from_millis(200), ..FAST };
    let sink = sink(&mut api, config).await;
    // The double handled the first POST but answered too late; the retry meets AlreadyExists.
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 409 });
    let stats = sink.stats();
    assert_eq!(stats.requests(Verb::Post, Reply::Error), 1);
    assert_eq!(stats.requests(Verb::Post, Reply::Status(409)), 1);
    assert_eq!(stats.retries, 1);
}

#[tokio::test]
async fn endless_server_errors_give_up_after_max_attempts() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(500));
    let sink = sink(&mut api, SinkConfig { max_attempts: 3, ..FAST }).await;
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::GaveUp { attempts: 3 });
    assert_eq!(api.requests().len(), 3);
    let stats = sink.stats();
    assert_eq!((stats.gave_up, stats.retries, stats.delivered), (1, 2, 0));
}

#[tokio::test]
async fn an_outage_loses_nothing_and_delivers_each_write_once_in_order() {
    let mut api = TestApi::start().await;
    // Small bounds so the outage exercises give-ups, skipped writes and new passes.
    let config = SinkConfig { max_attempts: 4, ..FAST };
    let sink = sink(&mut api, config).await;
    let runner = RunnerConfig { max_held: 4, max_per_name: 2, poll: Duration::from_millis(20) };
    let outbox = Arc::new(MemoryOutbox::default());
    api.stop().await;
    let names: Vec<String> = (0..5).map(|i| format!("pod-{i}.17f")).collect();
    for count in 1..=3 {
        for name in &names {
            outbox.push(if count == 1 { post(name) } else { patch(name, count) });
        }
    }
    let _stop = spawn_runner(Arc::clone(&sink), runner, Arc::clone(&outbox));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(outbox.pending(), 15, "nothing may be lost or marked done during the outage");
    assert!(sink.stats().gave_up > 0);
    api.restart().await;
    until("recovery", Duration::from_secs(10), || outbox.pending() == 0).await;

    let requests = api.requests();
    assert_eq!(requests.len(), 15, "{:?}", summary(&requests));
    for name in &names {
        let counts: Vec<(String, u64)> = requests
            .iter()
            .filter(|r| r.path.ends_with(name.as_str()) || r.body["metadata"]["name"] == json!(name))
            .map(|r| (r.method.clone(), r.body["count"].as_u64().unwrap_or(0)))
            .collect();
        assert_eq!(counts, [("POST".into(), 1), ("PATCH".into(), 2), ("PATCH".into(), 3)], "{name}");
    }
    assert!(requests.iter().all(|r| r.status < 300));
    assert!(outbox.largest_batch() <= 4);
    assert_eq!(sink.stats().in_flight, 0);
}

#[tokio::test]
async fn a_failing_event_does_not_hold_up_the_others() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(503).matching("stuck"));
    let sink = sink(&mut api, SinkConfig { max_attempts: 1000, ..FAST }).await;
    let outbox = Arc::new(MemoryOutbox::default());
    outbox.push(post("stuck.1"));
    outbox.push(patch("stuck.1", 2));
    for i in 0..6 {
        outbox.push(post(&format!("ok-{i}.1")));
    }
    let _stop = spawn_runner(Arc::clone(&sink), RUNNER, Arc::clone(&outbox));
    until("the healthy events", Duration::from_secs(2), || outbox.pending() == 2).await;
    let stuck_patches =
        |api: &TestApi| api.requests().iter().filter(|r| r.method == "PATCH").map(|r| r.status).collect::<Vec<_>>();
    assert!(stuck_patches(&api).is_empty(), "a PATCH overtook its POST");
    assert!(sink.stats().retries >= 1);

    api.clear_script();
    until("the failing event", Duration::from_secs(2), || outbox.pending() == 0).await;
    assert_eq!(stuck_patches(&api), [200]);
    assert_eq!(api.stored("default", "stuck.1").map(|e| e["count"].clone()), Some(json!(2)));
}

#[tokio::test]
async fn requests_in_flight_stay_bounded() {
    let mut api = TestApi::start().await;
    api.script(Rule::slow(Duration::from_millis(100)));
    let sink = sink(&mut api, SinkConfig { max_in_flight: 2, ..FAST }).await;
    let deliveries: Vec<_> = (0..6)
        .map(|i| {
            let sink = Arc::clone(&sink);
            tokio::spawn(async move { sink.deliver(post(&format!("web.{i}"))).await })
        })
        .collect();
    let mut most = 0;
    while deliveries.iter().any(|d| !d.is_finished()) {
        most = most.max(sink.stats().in_flight);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for delivery in deliveries {
        assert_eq!(delivery.await.unwrap(), Outcome::Delivered { status: 201 });
    }
    assert_eq!(most, 2);
    assert_eq!(api.requests().len(), 6);
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn dry_run_prints_one_line_per_request() {
    let out = Shared::default();
    let sink = KubeSink::dry_run(Box::new(out.clone()), FAST);
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Printed);
    assert_eq!(sink.deliver(patch("web.1", 2)).await, Outcome::Printed);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        format!("POST /api/v1/namespaces/default/events {}", serde_json::to_string(&event("web.1", 1)).unwrap())
    );
    assert!(lines[0].starts_with(r#"POST /api/v1/namespaces/default/events {"apiVersion":"v1","#), "{}", lines[0]);
    assert_eq!(
        lines[1],
        r#"PATCH /api/v1/namespaces/default/events/web.1 {"count":2,"lastTimestamp":"2025-01-01T00:00:02Z"}"#
    );
    assert_eq!(sink.stats().printed, 2);
}

#[tokio::test]
async fn an_invalid_name_is_rejected_without_a_request() {
    let mut api = TestApi::start().await;
    let sink = sink(&mut api, FAST).await;
    assert_eq!(sink.deliver(patch("bad name", 2)).await, Outcome::Rejected { status: 0 });
    assert!(api.requests().is_empty());
}

#[tokio::test]
async fn without_kubeconfig_or_service_account_there_is_no_cluster() {
    assert!(matches!(connect_with(None, false).await, Ok(Cluster::NoCluster)));
    let missing = Path::new("/nonexistent/kubeconfig");
    assert!(matches!(connect_with(Some(missing), false).await, Err(Error::Kubeconfig { .. })));
}

#[tokio::test]
async fn an_https_cluster_gets_a_rustls_client() {
    // Proves the TLS stack (rustls + ring, no OpenSSL) initialises; the port is closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let path = std::env::temp_dir().join(format!("collector-https-{}-{port}.yaml", std::process::id()));
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
         users:\n- name: u\n  user:\n    token: abc\n"
    );
    std::fs::write(&path, yaml).unwrap();
    let cluster = connect_with(Some(&path), false).await;
    std::fs::remove_file(&path).unwrap();
    let Ok(Cluster::Api(client)) = cluster else { panic!("no client for an https kubeconfig") };
    let sink = KubeSink::new(client, SinkConfig { max_attempts: 2, ..FAST });
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::GaveUp { attempts: 2 });
    assert_eq!(sink.stats().requests(Verb::Post, Reply::Error), 2);
}
