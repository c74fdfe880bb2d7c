//! TEST DOUBLE for the Kubernetes API server: a loopback HTTP/1.1 server on
//! `127.0.0.1:0`, because no API server can be installed on the machines that
//! run these tests.
//!
//! It behaves like the API server for the core/v1 Events calls the sink makes
//! (POST creates, POST of an existing name is 409 AlreadyExists, PATCH of a
//! missing name is 404 NotFound), records every request it receives, and can be
//! scripted to misbehave: answer N×503, 429 with `Retry-After`, answer slowly,
//! or stop listening altogether (connections refused) and come back on the same
//! port. [`TestApi::kubeconfig`] writes a kubeconfig that points a real
//! `kube::Client` at it, so tests exercise kube's own HTTP stack.
//!
//! It also answers `GET /version` and SelfSubjectAccessReviews (allowed,
//! unless [`TestApi::deny`] said otherwise), for `collector doctor`'s checks, and
//! a PATCH of a Node's status (the node conditions) with 200, keeping nothing.
//!
//! It is no model of the API server beyond that: no auth, no resourceVersion,
//! no field validation, and PATCH is a shallow merge of top-level keys.
//!
//! A crate of its own, a dev-dependency of the collector and a dependency of the end-to-end
//! tests: never part of the daemon. Clients are built by the caller from
//! [`TestApi::kubeconfig`], the way the code under test builds them.
#![expect(
    clippy::expect_used,
    reason = "a test double: failing to bind or write its kubeconfig is a failure of the test using it"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// One request as the double received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// `POST`, `PATCH`, ...
    pub method: String,
    /// The request target, e.g. `/api/v1/namespaces/default/events`.
    pub path: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body parsed as JSON (`Null` when empty or not JSON).
    pub body: Value,
    /// The status code the double answered (or was about to answer).
    pub status: u16,
}

/// A scripted answer, applied to the next `times` requests it matches.
#[derive(Clone, Debug)]
pub struct Rule {
    method: Option<&'static str>,
    path_contains: Option<String>,
    status: Option<u16>,
    retry_after: Option<u64>,
    delay: Duration,
    times: usize,
}

impl Rule {
    /// Answer with `status` (forever, until limited by [`Rule::times`]).
    pub fn status(status: u16) -> Self {
        Self {
            method: None,
            path_contains: None,
            status: Some(status),
            retry_after: None,
            delay: Duration::ZERO,
            times: usize::MAX,
        }
    }

    /// Behave normally, but only after `delay`.
    pub fn slow(delay: Duration) -> Self {
        Self { status: None, delay, ..Self::status(0) }
    }

    /// Only for requests with this method.
    pub fn on(mut self, method: &'static str) -> Self {
        self.method = Some(method);
        self
    }

    /// Only for requests whose path or body contains this text.
    pub fn matching(mut self, text: &str) -> Self {
        self.path_contains = Some(text.to_owned());
        self
    }

    /// Apply to this many matching requests only.
    pub fn times(mut self, times: usize) -> Self {
        self.times = times;
        self
    }

    /// Send `Retry-After: secs` with the answer.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    fn matches(&self, method: &str, path: &str, body: &str) -> bool {
        self.times > 0
            && self.method.is_none_or(|m| m == method)
            && self.path_contains.as_deref().is_none_or(|t| path.contains(t) || body.contains(t))
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    rules: Vec<Rule>,
    /// Stored events by (namespace, name).
    events: HashMap<(String, String), Value>,
    /// (verb, resource) pairs a SelfSubjectAccessReview is denied.
    denied: Vec<(String, String)>,
}

/// The running double. Dropping it stops it.
pub struct TestApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: Option<JoinHandle<()>>,
    kubeconfig: Option<PathBuf>,
}

impl TestApi {
    /// Listen on a fresh loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let accept = Some(tokio::spawn(accept_loop(listener, Arc::clone(&state))));
        Self { addr, state, accept, kubeconfig: None }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Write a kubeconfig (no auth, plain HTTP) pointing at the double and return its path.
    pub fn kubeconfig(&mut self) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("collector-test-api-{}-{}.yaml", std::process::id(), self.addr.port()));
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\n\
             contexts:\n- name: double\n  context:\n    cluster: double\n    user: nobody\n    namespace: default\n\
             current-context: double\nusers:\n- name: nobody\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(&path, yaml).expect("write kubeconfig");
        self.kubeconfig = Some(path.clone());
        path
    }

    /// Add a scripted answer; earlier rules win.
    pub fn script(&self, rule: Rule) {
        lock(&self.state).rules.push(rule);
    }

    /// Answer SelfSubjectAccessReviews of `verb` on `resource` with `allowed: false`.
    pub fn deny(&self, verb: &str, resource: &str) {
        lock(&self.state).denied.push((verb.to_owned(), resource.to_owned()));
    }

    /// Drop all scripted answers.
    pub fn clear_script(&self) {
        lock(&self.state).rules.clear();
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// The stored event, if any.
    pub fn stored(&self, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.state).events.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Forget a stored event, as the API server does when its TTL expires.
    pub fn forget(&self, namespace: &str, name: &str) {
        lock(&self.state).events.remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Stop listening and close every open connection: new connections are refused.
    pub async fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
    }

    /// Listen again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.expect("rebind the same port");
        self.accept = Some(tokio::spawn(accept_loop(listener, Arc::clone(&self.state))));
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        if let Some(path) = self.kubeconfig.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Owns the listener and every connection: aborting it closes them all.
async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve(stream, Arc::clone(&state)));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serve keep-alive HTTP/1.1 requests on one connection until it closes.
async fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    while let Some(request) = read_request(&mut read).await {
        let (status, headers, body, delay) = answer(&state, &request);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            reason(status),
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        if write.write_all(head.as_bytes()).await.is_err() || write.write_all(&body).await.is_err() {
            return;
        }
        if request.close {
            return;
        }
    }
}

struct Request {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
    close: bool,
}

async fn read_request(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Request> {
    let mut line = String::new();
    if read.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let (mut length, mut chunked, mut close, mut content_type) = (0usize, false, false, None);
    loop {
        line.clear();
        if read.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().ok()?,
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "content-type" => content_type = Some(value.to_owned()),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            read.read_line(&mut line).await.ok()?;
            let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            read.read_exact(&mut chunk).await.ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        read.read_exact(&mut body).await.ok()?;
    }
    Some(Request { method, path, content_type, body, close })
}

type Answer = (u16, Vec<(&'static str, String)>, Vec<u8>, Duration);

/// Record the request and decide the answer: a scripted rule, else Events API behaviour.
fn answer(state: &Mutex<State>, request: &Request) -> Answer {
    let mut state = lock(state);
    let text = String::from_utf8_lossy(&request.body).into_owned();
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let mut delay = Duration::ZERO;
    let mut scripted = None;
    if let Some(rule) = state.rules.iter_mut().find(|r| r.matches(&request.method, &request.path, &text)) {
        rule.times -= 1;
        delay = rule.delay;
        scripted = rule.status.map(|status| (status, rule.retry_after));
    }
    let (status, headers, reply) = match scripted {
        Some((status, retry_after)) => {
            let headers = retry_after.map(|s| ("retry-after", s.to_string())).into_iter().collect();
            (status, headers, status_body(status, "Scripted", "scripted by the test"))
        }
        None => {
            let path = request.path.split('?').next().unwrap_or_default();
            let (status, reply) = match (request.method.as_str(), path) {
                ("GET", "/version") => (200, version()),
                ("POST", ACCESS_REVIEWS) => (201, access_review(&state.denied, &body)),
                _ => events_api(&mut state.events, &request.method, path, &body),
            };
            (status, Vec::new(), reply)
        }
    };
    state.requests.push(Recorded {
        method: request.method.clone(),
        path: request.path.clone(),
        content_type: request.content_type.clone(),
        body,
        status,
    });
    (status, headers, reply.to_string().into_bytes(), delay)
}

fn events_api(events: &mut HashMap<(String, String), Value>, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", ["api", "v1", "namespaces", ns, "events"]) => {
            let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str) else {
                return (400, status_body(400, "BadRequest", "metadata.name is required"));
            };
            let key = ((*ns).to_owned(), name.to_owned());
            if events.contains_key(&key) {
                return (409, status_body(409, "AlreadyExists", "events already exists"));
            }
            events.insert(key, body.clone());
            (201, body.clone())
        }
        ("PATCH", ["api", "v1", "namespaces", ns, "events", name]) => {
            match events.get_mut(&((*ns).to_owned(), (*name).to_owned())) {
                Some(stored) => {
                    if let (Some(stored), Some(patch)) = (stored.as_object_mut(), body.as_object()) {
                        for (k, v) in patch {
                            stored.insert(k.clone(), v.clone());
                        }
                    }
                    (200, stored.clone())
                }
                None => (404, status_body(404, "NotFound", "events not found")),
            }
        }
        // The node conditions' strategic merge patch; the Node is not kept, only answered.
        ("PATCH", ["api", "v1", "nodes", name, "status"]) => {
            (200, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": body["status"]}))
        }
        _ => (404, status_body(404, "NotFound", "the server could not find the requested resource")),
    }
}

const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// `GET /version` of a made-up 1.33 server.
fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-test", "gitCommit": "0", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
    })
}

/// The review with its status: allowed unless its verb and resource were denied.
fn access_review(denied: &[(String, String)], body: &Value) -> Value {
    let attribute = |name: &str| body.pointer(&format!("/spec/resourceAttributes/{name}")).and_then(Value::as_str);
    let (verb, resource) = (attribute("verb").unwrap_or_default(), attribute("resource").unwrap_or_default());
    let deny = denied.iter().any(|(v, r)| v == verb && r == resource);
    let mut review = body.clone();
    review["status"] =
        if deny { json!({"allowed": false, "reason": "denied by the test"}) } else { json!({"allowed": true}) };
    review
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
