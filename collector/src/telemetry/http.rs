//! The telemetry endpoint: `/metrics`, `/healthz` and `/readyz` over HTTP/1.1.
//!
//! A deliberately small responder rather than a general server: it reads one
//! request head (GET or HEAD), answers, and closes the connection. Prometheus
//! scrapes and kubelet probes need nothing more, and everything a client can
//! hold is bounded: the size of the head, the time to send it, the time to
//! take the answer, and the number of connections at once.

use std::{
    future::Future,
    net::SocketAddr,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};

use super::{Metrics, TelemetryError};

/// The content type of `/metrics`: OpenMetrics text 1.0.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The largest request head accepted; larger ones get 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request head; slower ones get 408.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the answer before it is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 16;

/// Whether the daemon is ready (probes attached, journal open and storing): `/readyz` answers
/// 200 only then.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    journal_failing: Arc<AtomicBool>,
}

impl Readiness {
    /// A flag that starts as not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets or clears readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Records whether the journal's last store failed: the daemon then reports deaths but
    /// cannot keep them, which an operator must see.
    pub fn set_journal_failing(&self, failing: bool) {
        self.journal_failing.store(failing, Ordering::Release);
    }

    /// Whether the daemon is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.journal_failing.load(Ordering::Acquire)
    }

    /// Why it is not ready, for `/readyz`.
    fn reason(&self) -> &'static str {
        if self.journal_failing.load(Ordering::Acquire) {
            "not ready: the journal cannot store events (see collector_journal_append_errors_total and the log)\n"
        } else {
            "not ready\n"
        }
    }
}

/// A bound telemetry endpoint; [`MetricsServer::serve`] answers requests.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    /// [`READ_TIMEOUT`], shortened by tests.
    read_timeout: Duration,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port; see [`MetricsServer::local_addr`]).
    pub async fn bind(addr: SocketAddr, metrics: Arc<Metrics>, readiness: Readiness) -> Result<Self, TelemetryError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| TelemetryError::Bind { addr, source })?;
        Ok(Self { listener, metrics, readiness, read_timeout: READ_TIMEOUT })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr, TelemetryError> {
        self.listener.local_addr().map_err(TelemetryError::LocalAddr)
    }

    /// Answers requests until `shutdown` completes. Connections are served on
    /// spawned tasks, so this needs a tokio runtime (either flavour).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut shutdown = pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _peer)) => {
                    // Over the limit the connection is closed at once: answering
                    // would itself cost the time the limit is there to bound.
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        continue;
                    };
                    let metrics = Arc::clone(&self.metrics);
                    let readiness = self.readiness.clone();
                    let read_timeout = self.read_timeout;
                    tokio::spawn(async move {
                        answer(stream, &metrics, &readiness, read_timeout).await;
                        drop(slot);
                    });
                }
                Err(err) => {
                    // Typically EMFILE: back off rather than spin on a failing accept.
                    tracing::warn!("metrics endpoint: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// What went wrong reading a request head.
enum HeadError {
    /// The peer closed the connection or the read failed: nobody to answer.
    Gone,
    /// The head exceeded [`MAX_HEAD_BYTES`].
    TooLarge,
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, readiness: &Readiness, read_timeout: Duration) {
    let response = match timeout(read_timeout, read_head(&mut stream)).await {
        Err(_elapsed) => Response::text(408, "Request Timeout", "request timeout\n"),
        Ok(Err(HeadError::Gone)) => return,
        Ok(Err(HeadError::TooLarge)) => {
            Response::text(431, "Request Header Fields Too Large", "request head too large\n")
        }
        Ok(Ok(head)) => route(&head, metrics, readiness),
    };
    let written = timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response.to_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!("metrics endpoint: write failed: {err}"),
        Err(_elapsed) => tracing::debug!("metrics endpoint: client too slow to read the answer"),
    }
}

/// Reads up to the blank line that ends a request head.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0_u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await.map_err(|_err| HeadError::Gone)?;
        if read == 0 {
            return Err(HeadError::Gone);
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(chunk.get(..read).unwrap_or_default());
        if let Some(end) = head_end(&head, searched_from) {
            if end > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends (after `\r\n\r\n`, or `\n\n` from lax clients), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    tail.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at + 4)
        .or_else(|| tail.windows(2).position(|w| w == b"\n\n").map(|at| from + at + 2))
}

fn route(head: &[u8], metrics: &Metrics, readiness: &Readiness) -> Response {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "Bad Request", "bad request line\n");
    };
    if !version.starts_with(b"HTTP/1.") {
        return Response::text(505, "HTTP Version Not Supported", "only HTTP/1.x is served\n");
    }
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => {
            let mut response = Response::text(405, "Method Not Allowed", "use GET or HEAD\n");
            response.allow = true;
            return response;
        }
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let mut response = match path {
        b"/metrics" => match metrics.encode() {
            Ok(body) => Response {
                status: 200,
                reason: "OK",
                content_type: OPENMETRICS_CONTENT_TYPE,
                body: body.into_bytes(),
                head_only: false,
                allow: false,
            },
            Err(err) => {
                tracing::warn!("metrics endpoint: {err}");
                Response::text(500, "Internal Server Error", "cannot encode metrics\n")
            }
        },
        b"/healthz" => Response::text(200, "OK", "ok\n"),
        b"/readyz" if readiness.is_ready() => Response::text(200, "OK", "ready\n"),
        b"/readyz" => Response::text(503, "Service Unavailable", readiness.reason()),
        _ => Response::text(404, "Not Found", "not found: try /metrics, /healthz or /readyz\n"),
    };
    response.head_only = head_only;
    response
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    /// A HEAD request: the headers of the GET answer, without its body.
    head_only: bool,
    /// Add `Allow: GET, HEAD` (405 answers).
    allow: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            head_only: false,
            allow: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
             Connection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if self.allow {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server(ready: bool) -> (SocketAddr, Arc<Metrics>, Readiness) {
        let metrics = Arc::new(Metrics::new("1.2.3"));
        let readiness = Readiness::new();
        readiness.set_ready(ready);
        let mut server =
            MetricsServer::bind("127.0.0.1:0".parse().unwrap(), Arc::clone(&metrics), readiness.clone()).await.unwrap();
        server.read_timeout = Duration::from_millis(300);
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.serve(std::future::pending()));
        (addr, metrics, readiness)
    }

    /// Sends `request` raw and returns (status line, headers, body).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let (status, headers) = head.split_once("\r\n").unwrap();
        (status.to_owned(), headers.to_owned(), body.to_owned())
    }

    async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        exchange(addr, request.as_bytes()).await
    }

    #[tokio::test]
    async fn scrape_returns_openmetrics_with_exact_lines() {
        let (addr, metrics, _) = server(true).await;
        metrics.kernel_record(crate::telemetry::KernelRecordType::OomKill);
        metrics.kernel_record(crate::telemetry::KernelRecordType::OomKill);
        metrics.set_kernel_counters([(crate::telemetry::KernelRecordType::Exit, 7)], 1);
        metrics.api_request("POST", crate::telemetry::ApiStatus::Code(201));

        let (status, headers, body) = get(addr, "/metrics?x=1").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"));
        assert!(headers.contains(&format!("Content-Length: {}", body.len())));
        let lines: Vec<&str> = body.lines().collect();
        for expected in [
            "# HELP collector_kernel_records Records the kernel programs delivered, by record type.",
            "collector_kernel_records_total{type=\"exit\"} 0",
            "# TYPE collector_kernel_records counter",
            "collector_kernel_records_total{type=\"oom_kill\"} 2",
            "# TYPE collector_kernel_records_lost counter",
            "collector_kernel_records_lost_total{type=\"exit\"} 7",
            "collector_kernel_field_read_failures_total 1",
            "collector_api_requests_total{verb=\"POST\",status=\"201\"} 1",
            "collector_build_info{version=\"1.2.3\"} 1",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in:\n{body}");
        }
        assert_eq!(lines.last(), Some(&"# EOF"));
    }

    #[tokio::test]
    async fn readiness_flips() {
        let (addr, _, readiness) = server(false).await;
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 503 Service Unavailable", "not ready\n"));
        let (status, _, _) = get(addr, "/healthz").await;
        assert_eq!(status, "HTTP/1.1 200 OK");

        readiness.set_ready(true);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ready\n"));

        // A journal that fails to store makes the pod not ready, and says why.
        readiness.set_journal_failing(true);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            (
                "HTTP/1.1 503 Service Unavailable",
                "not ready: the journal cannot store events (see collector_journal_append_errors_total and the log)\n"
            )
        );
        readiness.set_journal_failing(false);
        assert_eq!(get(addr, "/readyz").await.0, "HTTP/1.1 200 OK");

        readiness.set_ready(false);
        let (status, _, _) = get(addr, "/readyz").await;
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    }

    #[tokio::test]
    async fn unknown_paths_methods_and_versions_are_refused() {
        let (addr, _, _) = server(true).await;
        assert_eq!(get(addr, "/").await.0, "HTTP/1.1 404 Not Found");
        assert_eq!(get(addr, "/metrics/").await.0, "HTTP/1.1 404 Not Found");
        let (status, headers, _) = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(headers.lines().any(|line| line == "Allow: GET, HEAD"));
        assert_eq!(exchange(addr, b"GET /metrics HTTP/2.0\r\n\r\n").await.0, "HTTP/1.1 505 HTTP Version Not Supported");
        assert_eq!(exchange(addr, b"garbage\r\n\r\n").await.0, "HTTP/1.1 400 Bad Request");
        assert_eq!(exchange(addr, b"GET /healthz HTTP/1.0\n\n").await.0, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn head_request_has_no_body() {
        let (addr, _, _) = server(true).await;
        let (status, headers, body) = exchange(addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("Content-Length: 3\r\n"));
        assert_eq!(body, "");
    }

    #[tokio::test]
    async fn huge_request_head_is_rejected() {
        let (addr, _, _) = server(true).await;
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        request.resize(request.len() + MAX_HEAD_BYTES, b'a');
        request.extend_from_slice(b"\r\n\r\n");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The server may close before taking all of it; only its answer matters.
        let _ = stream.write_all(&request).await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        let raw = String::from_utf8_lossy(&raw);
        assert!(raw.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{raw}");
    }

    #[tokio::test]
    async fn slow_client_times_out() {
        let (addr, _, _) = server(true).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let mut raw = Vec::new();
        let started = std::time::Instant::now();
        stream.read_to_end(&mut raw).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(String::from_utf8(raw).unwrap().starts_with("HTTP/1.1 408 Request Timeout\r\n"));
    }

    #[tokio::test]
    async fn stops_on_shutdown() {
        let metrics = Arc::new(Metrics::new("1"));
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), metrics, Readiness::new()).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        stop.send(()).unwrap();
        timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n", 0), None);
        assert_eq!(head_end(b"ab", 5), None);
    }
}
