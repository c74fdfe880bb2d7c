//! The sink against the API server test double, through kube's real client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use api_double::{Recorded, Rule, TestApi};

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

/// A client for the double, built as the daemon builds one: through [`connect`] and a kubeconfig,
/// so kube's own retries stay off.
pub(crate) async fn client(api: &mut TestApi) -> kube::Client {
    match connect(Some(&api.kubeconfig())).await {
        Ok(Cluster::Api(client)) => client,
        Ok(Cluster::NoCluster) => panic!("the double's kubeconfig gives no cluster"),
        Err(err) => panic!("the double's kubeconfig gives no client: {err}"),
    }
}

/// A sink for the double, counting into metrics of its own.
async fn sink(api: &mut TestApi, config: SinkConfig) -> (Arc<KubeSink>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new("test"));
    (Arc::new(KubeSink::new(client(api).await, config).with_metrics(Arc::clone(&metrics))), metrics)
}

/// What the sink counted, as /metrics shows it.
#[derive(Debug)]
struct Counts {
    text: String,
}

impl Counts {
    fn of(metrics: &Metrics) -> Self {
        Self { text: metrics.encode().unwrap() }
    }

    fn value(&self, series: &str) -> u64 {
        self.text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
    }

    /// Requests with this verb and status (`201`, or `error` for no answer).
    fn requests(&self, verb: Verb, status: &str) -> u64 {
        self.value(&format!("collector_api_requests_total{{verb=\"{}\",status=\"{status}\"}}", verb.as_str()))
    }

    fn retries(&self) -> u64 {
        self.value("collector_api_retries_total")
    }

    fn reposts(&self) -> u64 {
        self.value("collector_api_reposts_total")
    }

    fn rejected(&self) -> u64 {
        self.value("collector_events_dropped_total{cause=\"rejected\"}")
    }

    fn deferred(&self) -> u64 {
        self.value("collector_api_writes_deferred_total")
    }

    fn in_flight(&self) -> u64 {
        self.value("collector_api_requests_in_flight")
    }
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
    let (sink, metrics) = sink(&mut api, FAST).await;
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
    let stats = Counts::of(&metrics);
    assert_eq!(stats.requests(Verb::Post, "201"), 1);
    assert_eq!(stats.requests(Verb::Patch, "200"), 2);
    assert_eq!((stats.retries(), stats.in_flight()), (0, 0));
}

#[tokio::test]
async fn server_errors_are_retried_then_delivered() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(503).times(3));
    let (sink, metrics) = sink(&mut api, FAST).await;
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 201 });
    let statuses: Vec<u16> = api.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 503, 201]);
    let stats = Counts::of(&metrics);
    assert_eq!(stats.requests(Verb::Post, "503"), 3);
    assert_eq!((stats.retries(), stats.rejected()), (3, 0));
}

#[tokio::test]
async fn requests_and_retries_reach_the_metrics_as_they_happen() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(503).times(2));
    let metrics = Arc::new(Metrics::new("test"));
    let sink = KubeSink::new(client(&mut api).await, FAST).with_metrics(Arc::clone(&metrics));
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
    let (sink, metrics) = sink(&mut api, SinkConfig { max_attempts: 1000, ..FAST }).await;
    api.stop().await;
    let delivery = tokio::spawn({
        let sink = Arc::clone(&sink);
        async move { sink.deliver(post("web.1")).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    api.restart().await;
    assert_eq!(delivery.await.unwrap(), Outcome::Delivered { status: 201 });
    assert_eq!(api.requests().len(), 1);
    let stats = Counts::of(&metrics);
    assert!(stats.requests(Verb::Post, "error") >= 1, "{stats:?}");
    assert_eq!(stats.retries(), stats.requests(Verb::Post, "error"));
}

#[tokio::test]
async fn a_patch_answered_404_is_reposted_with_the_whole_event() {
    let mut api = TestApi::start().await;
    let (sink, metrics) = sink(&mut api, FAST).await;
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
    let stats = Counts::of(&metrics);
    assert_eq!((stats.reposts(), stats.retries()), (1, 0));
}

#[tokio::test]
async fn an_expired_event_is_reposted_after_retried_patches() {
    let mut api = TestApi::start().await;
    let (sink, metrics) = sink(&mut api, FAST).await;
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 201 });
    api.forget("default", "web.1");
    api.script(Rule::status(503).on("PATCH").times(2));
    assert_eq!(sink.deliver(patch("web.1", 2)).await, Outcome::Reposted);
    let statuses: Vec<(String, u16)> = api.requests().iter().map(|r| (r.method.clone(), r.status)).collect();
    let expected = [("POST", 201), ("PATCH", 503), ("PATCH", 503), ("PATCH", 404), ("POST", 201)];
    assert_eq!(statuses, expected.map(|(m, s)| (m.to_owned(), s)));
    assert_eq!(api.stored("default", "web.1"), Some(event("web.1", 2)));
    assert_eq!((Counts::of(&metrics).reposts(), Counts::of(&metrics).retries()), (1, 2));
}

#[tokio::test]
async fn a_bad_request_is_not_retried() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(400));
    let (sink, metrics) = sink(&mut api, FAST).await;
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Rejected { status: 400 });
    assert_eq!(api.requests().len(), 1);
    let stats = Counts::of(&metrics);
    assert_eq!((stats.rejected(), stats.retries()), (1, 0));
}

#[tokio::test]
async fn already_exists_counts_as_delivered() {
    let mut api = TestApi::start().await;
    let (sink, metrics) = sink(&mut api, FAST).await;
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 201 });
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 409 });
    assert_eq!(api.requests().len(), 2);
    assert_eq!(Counts::of(&metrics).retries(), 0);
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(429).retry_after(1).times(1));
    let config =
        SinkConfig { backoff: Backoff { base: Duration::from_millis(5), cap: Duration::from_secs(5) }, ..FAST };
    let (sink, metrics) = sink(&mut api, config).await;
    let start = Instant::now();
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 201 });
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(Counts::of(&metrics).requests(Verb::Post, "429"), 1);
}

#[tokio::test]
async fn a_slow_answer_times_out_and_the_retry_finds_the_event_created() {
    let mut api = TestApi::start().await;
    api.script(Rule::slow(Duration::from_secs(2)).times(1));
    let config = SinkConfig { request_timeout: Duration::from_millis(200), ..FAST };
    let (sink, metrics) = sink(&mut api, config).await;
    // The double handled the first POST but answered too late; the retry meets AlreadyExists.
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::Delivered { status: 409 });
    let stats = Counts::of(&metrics);
    assert_eq!(stats.requests(Verb::Post, "error"), 1);
    assert_eq!(stats.requests(Verb::Post, "409"), 1);
    assert_eq!(stats.retries(), 1);
}

#[tokio::test]
async fn endless_server_errors_give_up_after_max_attempts() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(500));
    let (sink, metrics) = sink(&mut api, SinkConfig { max_attempts: 3, ..FAST }).await;
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::GaveUp { attempts: 3 });
    assert_eq!(api.requests().len(), 3);
    let stats = Counts::of(&metrics);
    assert_eq!((stats.deferred(), stats.retries()), (1, 2));
}

#[tokio::test]
async fn an_outage_loses_nothing_and_delivers_each_write_once_in_order() {
    let mut api = TestApi::start().await;
    // Small bounds so the outage exercises give-ups, skipped writes and new passes.
    let config = SinkConfig { max_attempts: 4, ..FAST };
    let (sink, metrics) = sink(&mut api, config).await;
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
    assert!(Counts::of(&metrics).deferred() > 0);
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
    assert_eq!(Counts::of(&metrics).in_flight(), 0);
}

#[tokio::test]
async fn a_failing_event_does_not_hold_up_the_others() {
    let mut api = TestApi::start().await;
    api.script(Rule::status(503).matching("stuck"));
    let (sink, metrics) = sink(&mut api, SinkConfig { max_attempts: 1000, ..FAST }).await;
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
    assert!(Counts::of(&metrics).retries() >= 1);

    api.clear_script();
    until("the failing event", Duration::from_secs(2), || outbox.pending() == 0).await;
    assert_eq!(stuck_patches(&api), [200]);
    assert_eq!(api.stored("default", "stuck.1").map(|e| e["count"].clone()), Some(json!(2)));
}

#[tokio::test]
async fn requests_in_flight_stay_bounded() {
    let mut api = TestApi::start().await;
    api.script(Rule::slow(Duration::from_millis(100)));
    let (sink, metrics) = sink(&mut api, SinkConfig { max_in_flight: 2, ..FAST }).await;
    let deliveries: Vec<_> = (0..6)
        .map(|i| {
            let sink = Arc::clone(&sink);
            tokio::spawn(async move { sink.deliver(post(&format!("web.{i}"))).await })
        })
        .collect();
    let mut most = 0;
    while deliveries.iter().any(|d| !d.is_finished()) {
        most = most.max(Counts::of(&metrics).in_flight());
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
}

#[tokio::test]
async fn an_invalid_name_is_rejected_without_a_request() {
    let mut api = TestApi::start().await;
    let (sink, metrics) = sink(&mut api, FAST).await;
    assert_eq!(sink.deliver(patch("bad name", 2)).await, Outcome::Rejected { status: 0 });
    assert!(api.requests().is_empty());
    assert_eq!(Counts::of(&metrics).rejected(), 1);
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
    let metrics = Arc::new(Metrics::new("test"));
    let sink = KubeSink::new(client, SinkConfig { max_attempts: 2, ..FAST }).with_metrics(Arc::clone(&metrics));
    assert_eq!(sink.deliver(post("web.1")).await, Outcome::GaveUp { attempts: 2 });
    assert_eq!(Counts::of(&metrics).requests(Verb::Post, "error"), 2);
}

/// An in-memory [`Outbox`] for these tests; unbounded, as the product has only the journal's.
#[derive(Debug, Default)]
pub(crate) struct MemoryOutbox(Mutex<Memory>);

#[derive(Debug, Default)]
struct Memory {
    next_id: i64,
    pending: BTreeMap<i64, ApiWrite>,
    done: Vec<(i64, Outcome)>,
    largest_batch: usize,
}

impl MemoryOutbox {
    fn lock(&self) -> MutexGuard<'_, Memory> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue a write; returns its id.
    pub(crate) fn push(&self, write: ApiWrite) -> i64 {
        let mut memory = self.lock();
        memory.next_id += 1;
        let id = memory.next_id;
        memory.pending.insert(id, write);
        id
    }

    /// Writes not yet done.
    pub(crate) fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Finished writes in the order they finished.
    pub(crate) fn done(&self) -> Vec<(i64, Outcome)> {
        self.lock().done.clone()
    }

    /// The largest batch ever handed out.
    pub(crate) fn largest_batch(&self) -> usize {
        self.lock().largest_batch
    }
}

impl Outbox for MemoryOutbox {
    type Error = Infallible;

    async fn next_batch(&self, after: Option<i64>, limit: usize) -> Result<Vec<(i64, ApiWrite)>, Infallible> {
        let mut memory = self.lock();
        let start = after.map_or(i64::MIN, |a| a.saturating_add(1));
        let batch: Vec<_> = memory.pending.range(start..).take(limit).map(|(id, w)| (*id, w.clone())).collect();
        memory.largest_batch = memory.largest_batch.max(batch.len());
        Ok(batch)
    }

    fn mark_done(&self, id: i64, outcome: Outcome) -> Result<(), Infallible> {
        let mut memory = self.lock();
        memory.pending.remove(&id);
        memory.done.push((id, outcome));
        Ok(())
    }
}
