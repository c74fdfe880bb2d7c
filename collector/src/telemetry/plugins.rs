//! The families of the plugin handlers: each webhook's requests, retries, drops, latency and
//! (for `mutate`) decisions, and the live stream's clients. Each webhook is one label value,
//! fixed by the configuration.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Webhook {
    webhook: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Request {
    webhook: String,
    mode: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Drop {
    webhook: String,
    cause: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Decision {
    webhook: String,
    decision: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Cause {
    cause: &'static str,
}

/// Seconds: 5 ms to 20 s, about doubling.
const LATENCY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The plugin families.
#[derive(Debug)]
pub(super) struct PluginMetrics {
    requests: Family<Request, Counter>,
    retries: Family<Webhook, Counter>,
    dropped: Family<Drop, Counter>,
    decisions: Family<Decision, Counter>,
    latency: Family<Webhook, Histogram, fn() -> Histogram>,
    stream_clients: Gauge,
    stream_clients_cut: Family<Cause, Counter>,
    stream_lines: Counter,
}

impl PluginMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            retries: Family::default(),
            dropped: Family::default(),
            decisions: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            stream_clients: Gauge::default(),
            stream_clients_cut: Family::default(),
            stream_lines: Counter::default(),
        };
        registry.register(
            "webhook_requests",
            "Requests to each webhook, by mode and outcome: ok, http_error, timeout, unreachable, token_error, \
             bad_answer",
            metrics.requests.clone(),
        );
        registry.register(
            "webhook_retries",
            "Requests to a notify webhook that were tried again",
            metrics.retries.clone(),
        );
        registry.register(
            "webhook_dropped",
            "Events a webhook never got, by cause: gave_up (retries spent or a 4xx), busy (too many mutate calls \
             in flight); a full queue counts in collector_handler_dropped_total",
            metrics.dropped.clone(),
        );
        registry.register(
            "webhook_decisions",
            "What each mutate webhook's answer did: allowed, annotated, suppressed, failed_open (timeout or bad \
             answer: the event went on unchanged)",
            metrics.decisions.clone(),
        );
        registry.register_with_unit(
            "webhook_latency",
            "Time from a webhook request to its answer (or its failure)",
            Unit::Seconds,
            metrics.latency.clone(),
        );
        registry.register("stream_clients", "Clients connected to the live stream", metrics.stream_clients.clone());
        registry.register(
            "stream_clients_cut",
            "Stream clients disconnected by the collector, by cause: slow (did not keep up), bad_filter",
            metrics.stream_clients_cut.clone(),
        );
        registry.register("stream_lines", "Lines written to stream clients", metrics.stream_lines.clone());
        metrics
    }
}

impl super::Metrics {
    /// Counts one request to a webhook and its latency.
    pub fn webhook_request(&self, webhook: &str, mode: &'static str, outcome: &'static str, took: Duration) {
        let plugins = &self.plugins;
        plugins.requests.get_or_create(&Request { webhook: webhook.to_owned(), mode, outcome }).inc();
        plugins.latency.get_or_create(&Webhook { webhook: webhook.to_owned() }).observe(took.as_secs_f64());
    }

    /// Counts a notify request tried again.
    pub fn webhook_retry(&self, webhook: &str) {
        self.plugins.retries.get_or_create(&Webhook { webhook: webhook.to_owned() }).inc();
    }

    /// Counts an event a webhook never got.
    pub fn webhook_dropped(&self, webhook: &str, cause: &'static str) {
        self.plugins.dropped.get_or_create(&Drop { webhook: webhook.to_owned(), cause }).inc();
    }

    /// Counts what a mutate webhook's answer did.
    pub fn webhook_decision(&self, webhook: &str, decision: &'static str) {
        self.plugins.decisions.get_or_create(&Decision { webhook: webhook.to_owned(), decision }).inc();
    }

    /// Sets how many stream clients are connected.
    pub fn set_stream_clients(&self, clients: usize) {
        self.plugins.stream_clients.set(i64::try_from(clients).unwrap_or(i64::MAX));
    }

    /// Counts a stream client the collector disconnected.
    pub fn stream_client_cut(&self, cause: &'static str) {
        self.plugins.stream_clients_cut.get_or_create(&Cause { cause }).inc();
    }

    /// Counts lines written to stream clients.
    pub fn stream_lines(&self, lines: u64) {
        self.plugins.stream_lines.inc_by(lines);
    }
}
