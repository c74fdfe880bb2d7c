//! A `notify` webhook: a handler on its own thread behind its own queue, so a webhook that hangs
//! delays only itself. Each selected event that goes to the API server is POSTed with its record;
//! errors, timeouts, 429 and 5xx are tried again with backoff, a bounded number of times, and an
//! event that still fails is dropped and counted.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{Mode, WebhookConfig, client::WebhookClient, request_body};
use crate::{
    chain,
    sinks::handler::{Dispatch, Handler},
    telemetry::{Metrics, limit::WarnLimit},
};

/// Tries of one event, the first included.
pub const MAX_ATTEMPTS: u32 = 4;
/// The wait before the first retry; it doubles (with jitter) up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Tells one webhook about the events it selects.
pub struct NotifyHandler {
    name: String,
    config: WebhookConfig,
    client: WebhookClient,
    runtime: tokio::runtime::Runtime,
    metrics: Arc<Metrics>,
    /// Events given up on, said in each warning.
    gave_up: u64,
    /// Giving up is warned about at the rate every repeating warning is.
    warnings: WarnLimit,
}

impl NotifyHandler {
    /// A handler for `config` (a notify webhook) with its client; its requests run on a runtime
    /// of its own, on the handler's thread.
    pub fn new(config: WebhookConfig, client: WebhookClient, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Self {
            name: format!("webhook/{}", config.name),
            config,
            client,
            runtime,
            metrics,
            gave_up: 0,
            warnings: WarnLimit::new(),
        })
    }

    /// POSTs `body` until it is taken, a try fails for good, or the tries are spent.
    fn deliver(&mut self, body: &Bytes, reason: &str) {
        let webhook = self.config.name.as_str();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            let started = Instant::now();
            let result = self.runtime.block_on(self.client.post(body.clone()));
            let outcome = result.as_ref().map_or_else(super::client::CallError::outcome, |_| "ok");
            self.metrics.webhook_request(webhook, Mode::Notify.as_str(), outcome, started.elapsed());
            let err = match result {
                Ok(_) => return,
                Err(err) => err,
            };
            if attempt < MAX_ATTEMPTS && err.retryable() {
                self.metrics.webhook_retry(webhook);
                tracing::debug!("webhook {webhook}: {reason} event: try {attempt}: {}; trying again", chain(&err));
                let jitter = backoff.mul_f64(fastrand::f64() * 0.2);
                std::thread::sleep(backoff + jitter);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            self.metrics.webhook_dropped(webhook, "gave_up");
            self.gave_up += 1;
            if let Some(suppressed) = self.warnings.allow() {
                tracing::warn!(
                    "webhook {webhook}: gave up on a {reason} event after {attempt} tries: {} ({} given up so \
                     far){suppressed}",
                    chain(&err),
                    self.gave_up
                );
            }
            return;
        }
    }
}

impl Handler for NotifyHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn handle(&mut self, dispatch: &Dispatch) {
        for decided in &dispatch.events {
            // What the API server is sent: a spam-filtered event is in the journal, not here.
            let Some(write) = decided.write() else { continue };
            let event = write.event();
            if !self.config.wants(&event.reason, &event.involved_object.namespace) {
                continue;
            }
            match request_body(event, &dispatch.record_json()) {
                Ok(body) => self.deliver(&body, &event.reason),
                Err(err) => tracing::warn!("webhook {}: cannot encode the request: {err}", self.config.name),
            }
        }
    }
}
