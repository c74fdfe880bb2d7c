//! The Kubernetes sink: delivers [`ApiWrite`]s to the API server through kube's client.
//!
//! Compared with client-go's event broadcaster (12 tries, 10 s apart, a queue
//! of 1000 dropped silently when full), a write here:
//! - is retried with exponential backoff and full jitter ([`Backoff`], 250 ms
//!   doubling to a 30 s cap; `Retry-After` honoured up to the cap) on
//!   connection errors, request timeouts, 429 and 5xx, at most
//!   [`SinkConfig::max_attempts`] times, then reported as [`Outcome::GaveUp`];
//! - is not retried on any other 4xx ([`Outcome::Rejected`]), except that a
//!   POST answered 409 AlreadyExists counts as delivered and a PATCH answered
//!   404 is re-POSTed with the whole event ([`ApiWrite::as_repost`]);
//! - has a request timeout ([`SinkConfig::request_timeout`]) on every attempt;
//! - waits for a request slot only while a request is on the wire (at most
//!   [`SinkConfig::max_in_flight`]), never while sleeping in backoff, so one
//!   failing write does not hold up others.
//!
//! [`Runner`] drains an [`Outbox`] oldest first, keeps the writes of one event
//! name in order and holds a bounded number of writes; whatever it has not
//! delivered stays in the outbox for a later pass.

mod backoff;
pub mod node_status;
mod runner;
#[cfg(test)]
pub(crate) mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::Semaphore;

pub use backoff::Backoff;
pub use runner::{Outbox, Runner, RunnerConfig};

use super::{ApiWrite, Verb};
use crate::telemetry::{ApiStatus, DropCause, InFlight, Metrics, limit::WarnLimit};

/// Errors setting up the connection to a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig given with `--kubeconfig` could not be read or used.
    #[error("cannot load kubeconfig {path}")]
    Kubeconfig {
        /// The kubeconfig's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// `KUBERNETES_SERVICE_HOST` is set but the service account could not be used.
    #[error("cannot load the in-cluster configuration")]
    InCluster(#[source] kube::config::InClusterError),
    /// kube could not build a client from the configuration.
    #[error("cannot build the Kubernetes API client")]
    Client(#[source] kube::Error),
}

/// Where events go, as decided by [`connect`].
pub enum Cluster {
    /// A client for the API server.
    Api(kube::Client),
    /// Neither `--kubeconfig` nor an in-cluster service account: not an error,
    /// the daemon runs without an API server (journal and stdout sinks only).
    NoCluster,
}

/// Find the cluster: the kubeconfig at `kubeconfig` if given, else the
/// in-cluster service account if `KUBERNETES_SERVICE_HOST` is set, else
/// [`Cluster::NoCluster`].
///
/// `$KUBECONFIG` and `~/.kube/config` are deliberately not consulted: a node
/// agent must not pick up an administrator's credentials by accident.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Cluster, Error> {
    connect_with(kubeconfig, std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()).await
}

async fn connect_with(kubeconfig: Option<&Path>, in_cluster: bool) -> Result<Cluster, Error> {
    let mut config = match kubeconfig {
        Some(path) => {
            let wrap = |source| Error::Kubeconfig { path: path.to_owned(), source };
            let file = kube::config::Kubeconfig::read_from(path).map_err(wrap)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(wrap)?
        }
        None if in_cluster => kube::Config::incluster().map_err(Error::InCluster)?,
        None => return Ok(Cluster::NoCluster),
    };
    // The sink retries (and counts retries) itself; kube's own retry of 429/503/504 would
    // hide them and ignore the sink's budget.
    config.default_retry = false;
    kube::Client::try_from(config).map(Cluster::Api).map_err(Error::Client)
}

/// Tuning of [`KubeSink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    /// Every attempt (connect, send, read the answer) must finish within this.
    pub request_timeout: Duration,
    /// Waits between attempts.
    pub backoff: Backoff,
    /// Attempts per write (a re-POST after 404 starts its own count) before [`Outcome::GaveUp`].
    pub max_attempts: u32,
    /// Requests on the wire at once, across all writes.
    pub max_in_flight: usize,
}

impl Default for SinkConfig {
    /// 10 s timeout, [`Backoff::default`], 12 attempts (as client-go), 8 requests in flight.
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_attempts: 12,
            max_in_flight: 8,
        }
    }
}

/// How the delivery of one write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The API server took it: 2xx, or 409 AlreadyExists for a POST (an earlier attempt got through).
    Delivered {
        /// The final status code.
        status: u16,
    },
    /// A PATCH answered 404 (the event expired) was re-POSTed with the whole event and taken.
    Reposted,
    /// The API server refused it (4xx other than 429; 0 when it was no valid request); dropped.
    Rejected {
        /// The refusing status code.
        status: u16,
    },
    /// Retryable failures all the way through; the write was not delivered.
    GaveUp {
        /// Requests made for this write.
        attempts: u32,
    },
    /// `--dry-run`: printed, not sent.
    Printed,
}

impl Outcome {
    /// Whether the write is finished with (delivered, or dropped for good) and leaves the outbox.
    pub const fn is_final(self) -> bool {
        !matches!(self, Self::GaveUp { .. })
    }
}

enum Target {
    Api(kube::Client),
    DryRun(Mutex<Box<dyn io::Write + Send>>),
}

/// Sends [`ApiWrite`]s to the API server (or prints them, for `--dry-run`).
pub struct KubeSink {
    target: Target,
    config: SinkConfig,
    slots: Semaphore,
    /// Where each count also goes as it happens (the daemon's /metrics).
    metrics: Option<Arc<Metrics>>,
    /// Refused and given-up writes are warned about at a bounded rate.
    warnings: WarnLimit,
}

/// What the sink counts into the daemon's metrics, where it happens: nothing is pulled and
/// diffed later.
enum Counted {
    Request(Verb, ApiStatus),
    Retry,
    Repost,
    Rejected,
    GaveUp,
}

/// How a sequence of attempts for one request ended.
enum Attempts {
    /// A final answer (not retryable) after this many requests.
    Answered { status: u16, attempts: u32 },
    /// Only retryable failures, `max_attempts` of them.
    Exhausted { attempts: u32 },
    /// The write cannot be expressed as an HTTP request.
    Invalid,
}

impl KubeSink {
    /// A sink that sends to the API server behind `client`, which should come
    /// from [`connect`]: a client with kube's default retry on would retry
    /// 429/503/504 out of the sink's sight.
    pub fn new(client: kube::Client, config: SinkConfig) -> Self {
        Self::with_target(Target::Api(client), config)
    }

    /// A sink that prints `VERB PATH BODY-JSON` lines to `out` instead of sending.
    pub fn dry_run(out: Box<dyn io::Write + Send>, config: SinkConfig) -> Self {
        Self::with_target(Target::DryRun(Mutex::new(out)), config)
    }

    fn with_target(target: Target, config: SinkConfig) -> Self {
        let slots = Semaphore::new(config.max_in_flight.max(1));
        Self { target, config, slots, metrics: None, warnings: WarnLimit::new() }
    }

    /// The same sink, also counting into `metrics` as it goes.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, what: Counted) {
        let Some(metrics) = self.metrics.as_deref() else { return };
        match what {
            Counted::Request(verb, status) => metrics.api_request(verb.as_str(), status),
            Counted::Retry => metrics.api_retry(),
            Counted::Repost => metrics.api_repost(),
            Counted::Rejected => metrics.event_dropped(DropCause::Rejected),
            // Not a drop: the write stays in the outbox and a later pass sends it.
            Counted::GaveUp => metrics.api_write_deferred(),
        }
    }

    /// Deliver one write, retrying as documented on the module. Cancel-safe:
    /// dropping the future abandons the write (an outbox keeps it).
    pub async fn deliver(&self, write: ApiWrite) -> Outcome {
        let client = match &self.target {
            Target::Api(client) => client,
            Target::DryRun(out) => return self.print(out, &write),
        };
        let outcome = match self.send(client, &write).await {
            Attempts::Answered { status: 404, attempts: patched } if write.verb == Verb::Patch => {
                self.count(Counted::Repost);
                tracing::debug!("event {}/{} is gone; re-POSTing it", write.namespace, write.name);
                match self.send(client, &write.as_repost()).await {
                    Attempts::Answered { status, .. } if accepted(Verb::Post, status) => Outcome::Reposted,
                    Attempts::Answered { status, .. } => Outcome::Rejected { status },
                    Attempts::Exhausted { attempts } => Outcome::GaveUp { attempts: patched + attempts },
                    Attempts::Invalid => Outcome::Rejected { status: 0 },
                }
            }
            Attempts::Answered { status, .. } if accepted(write.verb, status) => Outcome::Delivered { status },
            Attempts::Answered { status, .. } => Outcome::Rejected { status },
            Attempts::Exhausted { attempts } => Outcome::GaveUp { attempts },
            Attempts::Invalid => Outcome::Rejected { status: 0 },
        };
        match outcome {
            Outcome::Delivered { .. } | Outcome::Reposted | Outcome::Printed => {}
            Outcome::Rejected { status } => {
                self.count(Counted::Rejected);
                if let Some(suppressed) = self.warnings.allow() {
                    tracing::warn!(
                        "API server refused {} {} with {status}; dropped{suppressed}",
                        write.verb.as_str(),
                        write.path()
                    );
                }
            }
            Outcome::GaveUp { attempts } => {
                self.count(Counted::GaveUp);
                if let Some(suppressed) = self.warnings.allow() {
                    tracing::warn!(
                        "{} {} failed {attempts} times; left for later{suppressed}",
                        write.verb.as_str(),
                        write.path()
                    );
                }
            }
        }
        outcome
    }

    fn print(&self, out: &Mutex<Box<dyn io::Write + Send>>, write: &ApiWrite) -> Outcome {
        let line = format!("{} {} {}\n", write.verb.as_str(), write.path(), write.body);
        let mut out = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(err) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            tracing::warn!("dry run: cannot print a write: {err}");
        }
        Outcome::Printed
    }

    /// Send `write` until it gets a final answer or runs out of attempts.
    async fn send(&self, client: &kube::Client, write: &ApiWrite) -> Attempts {
        let mut attempt = 1;
        loop {
            let wait = match self.attempt(client, write).await {
                Ok(Answer { status, .. }) if !retryable(status) => {
                    return Attempts::Answered { status, attempts: attempt };
                }
                Ok(Answer { retry_after: Some(wait), .. }) => self.config.backoff.honour(wait),
                Ok(Answer { retry_after: None, .. }) | Err(Failure::Transport) => self.config.backoff.delay(attempt),
                Err(Failure::Invalid) => return Attempts::Invalid,
            };
            if attempt >= self.config.max_attempts {
                return Attempts::Exhausted { attempts: attempt };
            }
            self.count(Counted::Retry);
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One request, holding a request slot only while it is on the wire.
    async fn attempt(&self, client: &kube::Client, write: &ApiWrite) -> Result<Answer, Failure> {
        let request = build_request(write).map_err(|err| {
            tracing::warn!("cannot express {} {} as a request: {err}", write.verb.as_str(), write.path());
            Failure::Invalid
        })?;
        // The semaphore is never closed, so acquiring only fails in theory; going
        // ahead without a slot is better than dropping the write.
        let _slot = self.slots.acquire().await.ok();
        let _in_flight = InFlight::start(self.metrics.as_deref());
        let exchange = async {
            let response = client.send(request.map(kube::client::Body::from)).await?;
            let status = response.status().as_u16();
            let retry_after =
                response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(backoff::parse_retry_after);
            // Reading the body completes the exchange, so the connection can be reused.
            let body = response.into_body().collect_bytes().await?;
            Ok::<_, kube::Error>((status, retry_after, body))
        };
        match tokio::time::timeout(self.config.request_timeout, exchange).await {
            Ok(Ok((status, retry_after, body))) => {
                self.count(Counted::Request(write.verb, ApiStatus::Code(status)));
                if !(200..300).contains(&status) {
                    let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                    tracing::debug!("{} {} -> {status}: {}", write.verb.as_str(), write.path(), text.trim());
                }
                Ok(Answer { status, retry_after })
            }
            Ok(Err(err)) => {
                self.count(Counted::Request(write.verb, ApiStatus::NoResponse));
                tracing::debug!("{} {} failed: {err}", write.verb.as_str(), write.path());
                Err(Failure::Transport)
            }
            Err(_elapsed) => {
                self.count(Counted::Request(write.verb, ApiStatus::NoResponse));
                tracing::debug!("{} {} timed out", write.verb.as_str(), write.path());
                Err(Failure::Transport)
            }
        }
    }
}

struct Answer {
    status: u16,
    retry_after: Option<Duration>,
}

enum Failure {
    /// Connection error or timeout: retryable.
    Transport,
    /// Not expressible as a request: never retryable.
    Invalid,
}

/// 429 and 5xx are the server's way of saying "later"; other codes are final.
const fn retryable(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Success, or an AlreadyExists that means an earlier attempt of this POST got through.
const fn accepted(verb: Verb, status: u16) -> bool {
    (status >= 200 && status < 300) || (status == 409 && matches!(verb, Verb::Post))
}

/// The HTTP request for a write; fails for names that are no valid URI path.
fn build_request(write: &ApiWrite) -> Result<http::Request<Vec<u8>>, http::Error> {
    let (method, content_type) = match write.verb {
        Verb::Post => (http::Method::POST, "application/json"),
        Verb::Patch => (http::Method::PATCH, "application/strategic-merge-patch+json"),
    };
    http::Request::builder()
        .method(method)
        .uri(write.path())
        .header(CONTENT_TYPE, content_type)
        .header(ACCEPT, "application/json")
        .body(write.body.to_string().into_bytes())
}
