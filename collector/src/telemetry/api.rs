//! The Kubernetes sink's families: each request and its answer, retries, re-POSTs of expired
//! events, writes deferred to a later pass, and requests on the wire now.

use std::fmt::{self, Write as _};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// The answer to an API request, for `collector_api_requests_total{status}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiStatus {
    /// The server answered with this HTTP status code.
    Code(u16),
    /// No answer arrived (connection refused, timeout, TLS failure): `error`.
    NoResponse,
}

impl EncodeLabelValue for ApiStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(encoder, "{code}"),
            Self::NoResponse => encoder.write_str("error"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabels {
    verb: &'static str,
    status: ApiStatus,
}

/// The API families.
#[derive(Debug, Default)]
pub(super) struct ApiMetrics {
    requests: Family<ApiLabels, Counter>,
    retries: Counter,
    reposts: Counter,
    deferred: Counter,
    in_flight: Gauge,
}

impl ApiMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API server, by verb and HTTP status (error: no response)",
            self.requests.clone(),
        );
        registry.register("api_retries", "Kubernetes API writes retried after a failure", self.retries.clone());
        registry.register(
            "api_reposts",
            "PATCHes answered 404 (the API server no longer had the event) and sent again as a POST of the whole event",
            self.reposts.clone(),
        );
        registry.register(
            "api_writes_deferred",
            "Kubernetes API writes that ran out of attempts and wait in the outbox for a later pass",
            self.deferred.clone(),
        );
        registry.register(
            "api_requests_in_flight",
            "Requests to the Kubernetes API server waiting for their answer now",
            self.in_flight.clone(),
        );
    }
}

impl super::Metrics {
    /// Counts a request to the API server; `verb` is `sinks::Verb::as_str()` (`POST`, `PATCH`).
    pub fn api_request(&self, verb: &'static str, status: ApiStatus) {
        self.api.requests.get_or_create(&ApiLabels { verb, status }).inc();
    }

    /// Counts a retried API write.
    pub fn api_retry(&self) {
        self.api.retries.inc();
    }

    /// Counts a PATCH answered 404 and sent again as a POST.
    pub fn api_repost(&self) {
        self.api.reposts.inc();
    }

    /// Counts an API write put back in the outbox after its last attempt failed.
    pub fn api_write_deferred(&self) {
        self.api.deferred.inc();
    }
}

/// Counts a request as on the wire while it lives, whatever way the request future ends.
#[derive(Debug)]
pub struct InFlight<'a>(Option<&'a super::Metrics>);

impl<'a> InFlight<'a> {
    /// A request starts (counted only where there are metrics).
    pub fn start(metrics: Option<&'a super::Metrics>) -> Self {
        if let Some(metrics) = metrics {
            metrics.api.in_flight.inc();
        }
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.0 {
            metrics.api.in_flight.dec();
        }
    }
}
