//! `mutate` webhooks: asked in configuration order before the recorder, as admission webhooks
//! are, each bounded by its timeout. The calls run as tasks beside the event loop, never in it:
//! the loop hands an event over and takes it back when the chain has answered. An answer
//! `{"allow": false}` suppresses the event; `{"allow": true, "annotations": {...},
//! "message_suffix": "..."}` adds bounded, escaped annotations and text. A timeout, an error or a
//! bad answer lets the event through unchanged, counted (`failed_open`).

use std::{cell::Cell, collections::BTreeMap, rc::Rc, sync::Arc, time::Instant};

use bytes::Bytes;
use serde::Deserialize;
use thiserror::Error;
use tracing::Instrument as _;

use super::{Mode, WebhookConfig, client::WebhookClient, request_body};
use crate::{
    chain,
    escape::scrub,
    recorder::{Event, EventSpec, MAX_MESSAGE_BYTES, TRUNCATION_MARKER},
    telemetry::{DropCause, Metrics, limit::WarnLimit},
};

/// Events waiting on mutate webhooks at once; past it an event skips them, counted as `busy`.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Most annotations one answer may add.
pub const MAX_ANNOTATIONS: usize = 16;
/// Longest annotation value kept, in bytes; a longer one is cut and marked.
pub const MAX_ANNOTATION_VALUE_BYTES: usize = 1024;
/// Longest `message_suffix` kept, in bytes; the message as a whole is still cut to the API's limit.
pub const MAX_SUFFIX_BYTES: usize = 256;

/// Why an answer was not used.
#[derive(Debug, Error)]
pub enum AnswerError {
    /// Not JSON, or no boolean `allow`.
    #[error("the answer is not a JSON object with a boolean `allow`")]
    Json(#[source] serde_json::Error),
    /// More annotations than [`MAX_ANNOTATIONS`].
    #[error("{0} annotations, more than {MAX_ANNOTATIONS}")]
    TooManyAnnotations(usize),
    /// A key the API server would refuse.
    #[error("annotation key {0:?} is not a qualified name ([prefix/]name)")]
    AnnotationKey(String),
}

/// What a mutate webhook answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The event goes on, with these additions.
    Allow {
        /// Annotations to add to the Event object.
        annotations: BTreeMap<String, String>,
        /// Text to append to the message (after a space); empty for none.
        message_suffix: String,
    },
    /// The event is dropped.
    Suppress,
}

#[derive(Deserialize)]
struct Wire {
    allow: bool,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    message_suffix: String,
}

/// Reads an answer: checks the keys, escapes and bounds the values and the suffix.
pub fn parse_answer(body: &[u8]) -> Result<Answer, AnswerError> {
    let wire: Wire = serde_json::from_slice(body).map_err(AnswerError::Json)?;
    if !wire.allow {
        return Ok(Answer::Suppress);
    }
    if wire.annotations.len() > MAX_ANNOTATIONS {
        return Err(AnswerError::TooManyAnnotations(wire.annotations.len()));
    }
    let mut annotations = BTreeMap::new();
    for (key, value) in wire.annotations {
        if !qualified_name(&key) {
            return Err(AnswerError::AnnotationKey(key));
        }
        annotations.insert(key, bounded(&value, MAX_ANNOTATION_VALUE_BYTES));
    }
    Ok(Answer::Allow { annotations, message_suffix: bounded(&wire.message_suffix, MAX_SUFFIX_BYTES) })
}

/// `text` with control and bidirectional characters escaped, cut to `max` bytes.
fn bounded(text: &str, max: usize) -> String {
    let mut text = scrub(text).into_owned();
    crate::recorder::truncate_utf8(&mut text, max, TRUNCATION_MARKER);
    text
}

/// Kubernetes' qualified name: an optional DNS subdomain prefix and `/`, then 1 to 63 of
/// `[A-Za-z0-9._-]`, starting and ending with a letter or digit.
fn qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let name_ok = (1..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && edge(name.chars().next())
        && edge(name.chars().last());
    let prefix_ok = prefix.is_none_or(|prefix| {
        (1..=253).contains(&prefix.len())
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    name_ok && prefix_ok
}

/// Applies an allowing answer to the event and to the preview the next webhook is shown.
fn apply(spec: &mut EventSpec, preview: &mut Event, annotations: BTreeMap<String, String>, suffix: &str) {
    spec.annotations.extend(annotations);
    if !suffix.is_empty() {
        spec.message.push(' ');
        spec.message.push_str(suffix);
    }
    preview.metadata.annotations.clone_from(&spec.annotations);
    preview.message.clone_from(&spec.message);
    crate::recorder::truncate_utf8(&mut preview.message, MAX_MESSAGE_BYTES, TRUNCATION_MARKER);
}

/// One mutate webhook.
#[derive(Debug)]
pub struct Mutator {
    /// Its configuration.
    pub config: WebhookConfig,
    /// Its client.
    pub client: WebhookClient,
    /// Its failures are warned about at a bounded rate.
    pub warnings: WarnLimit,
}

/// The mutate webhooks, in configuration order.
#[derive(Clone)]
pub struct Mutators {
    hooks: Rc<Vec<Mutator>>,
    metrics: Arc<Metrics>,
    in_flight: Rc<Cell<usize>>,
}

impl Mutators {
    /// The chain of `hooks`.
    pub fn new(hooks: Vec<Mutator>, metrics: Arc<Metrics>) -> Self {
        Self { hooks: Rc::new(hooks), metrics, in_flight: Rc::new(Cell::new(0)) }
    }

    /// Whether some webhook of the chain wants `spec`.
    pub fn wants(&self, spec: &EventSpec) -> bool {
        self.wanting(spec).next().is_some()
    }

    /// Events waiting on the chain now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Whether the chain can take `spec` now: with [`MAX_IN_FLIGHT`] events waiting already,
    /// it cannot, and the event skips the webhooks (counted as `busy` for each that wanted it).
    pub fn has_room(&self, spec: &EventSpec) -> bool {
        if self.in_flight.get() < MAX_IN_FLIGHT {
            return true;
        }
        for hook in self.wanting(spec) {
            self.metrics.webhook_dropped(&hook.config.name, "busy");
        }
        false
    }

    /// Runs the chain for `spec` in a local task; `done` gets the event to record, or `None`
    /// when a webhook suppressed it.
    pub fn start(
        &self,
        spec: EventSpec,
        preview: Event,
        record_json: Bytes,
        done: impl FnOnce(Option<EventSpec>) + 'static,
    ) {
        self.in_flight.set(self.in_flight.get() + 1);
        let this = self.clone();
        let span = tracing::info_span!("mutate", reason = %spec.reason);
        tokio::task::spawn_local(
            async move {
                let result = this.run(spec, preview, &record_json).await;
                this.in_flight.set(this.in_flight.get().saturating_sub(1));
                done(result);
            }
            .instrument(span),
        );
    }

    fn wanting<'a>(&'a self, spec: &'a EventSpec) -> impl Iterator<Item = &'a Mutator> + 'a {
        self.hooks.iter().filter(|hook| hook.config.wants(&spec.reason, &spec.involved_object.namespace))
    }

    async fn run(&self, mut spec: EventSpec, mut preview: Event, record_json: &[u8]) -> Option<EventSpec> {
        for hook in self.hooks.iter() {
            let name = hook.config.name.as_str();
            // An earlier answer may not change what a later webhook selects on (reason,
            // namespace), but ask again: it is cheap, and keeps the rule in one place.
            if !hook.config.wants(&spec.reason, &spec.involved_object.namespace) {
                continue;
            }
            let body = match request_body(&preview, record_json) {
                Ok(body) => body,
                Err(err) => {
                    tracing::warn!("webhook {name}: cannot encode the request: {err}");
                    continue;
                }
            };
            let started = Instant::now();
            let answer = hook.client.post(body).await;
            let took = started.elapsed();
            let answer = match answer {
                Ok(body) => parse_answer(&body).map_err(|err| ("bad_answer", chain(&err))),
                Err(err) => Err((err.outcome(), chain(&err))),
            };
            let outcome = answer.as_ref().map_or_else(|(outcome, _)| *outcome, |_| "ok");
            self.metrics.webhook_request(name, Mode::Mutate.as_str(), outcome, took);
            match answer {
                Ok(Answer::Suppress) => {
                    self.metrics.webhook_decision(name, "suppressed");
                    self.metrics.event_dropped(DropCause::Suppressed);
                    tracing::debug!("webhook {name}: suppressed a {} event", spec.reason);
                    return None;
                }
                Ok(Answer::Allow { annotations, message_suffix }) => {
                    let edits = !annotations.is_empty() || !message_suffix.is_empty();
                    self.metrics.webhook_decision(name, if edits { "annotated" } else { "allowed" });
                    apply(&mut spec, &mut preview, annotations, &message_suffix);
                }
                Err((_, why)) => {
                    self.metrics.webhook_decision(name, "failed_open");
                    if let Some(suppressed) = hook.warnings.allow() {
                        tracing::warn!(
                            "webhook {name}: {why}; the {} event goes on unchanged{suppressed}",
                            spec.reason
                        );
                    }
                }
            }
        }
        Some(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_suppress_or_add_bounded_escaped_text() {
        assert_eq!(parse_answer(br#"{"allow": false, "annotations": {"x": "y"}}"#).unwrap(), Answer::Suppress);
        let long = "v".repeat(2000);
        let body = format!(
            r#"{{"allow": true, "annotations": {{"example.com/ticket": "OPS-1\u001b[2J", "long": "{long}"}},
               "message_suffix": "see runbook\nx"}}"#
        );
        let Answer::Allow { annotations, message_suffix } = parse_answer(body.as_bytes()).unwrap() else {
            panic!("expected allow");
        };
        assert_eq!(annotations["example.com/ticket"], "OPS-1\\x1b[2J");
        assert_eq!(annotations["long"].len(), MAX_ANNOTATION_VALUE_BYTES);
        assert!(annotations["long"].ends_with(TRUNCATION_MARKER));
        assert_eq!(message_suffix, "see runbook\\x0ax");
    }

    #[test]
    fn bad_answers_are_named() {
        let err = |body: &str| parse_answer(body.as_bytes()).unwrap_err().to_string();
        assert_eq!(err("ok"), "the answer is not a JSON object with a boolean `allow`");
        assert_eq!(err(r#"{"annotations": {}}"#), "the answer is not a JSON object with a boolean `allow`");
        assert_eq!(
            err(r#"{"allow": true, "annotations": {"Bad Key": "x"}}"#),
            "annotation key \"Bad Key\" is not a qualified name ([prefix/]name)"
        );
        let many: Vec<String> = (0..17).map(|i| format!("\"k{i}\": \"v\"")).collect();
        assert_eq!(
            err(&format!(r#"{{"allow": true, "annotations": {{{}}}}}"#, many.join(","))),
            "17 annotations, more than 16"
        );
    }

    #[test]
    fn qualified_names_follow_kubernetes() {
        for good in ["a", "app.kubernetes.io/name", "example.com/ticket-id", "x_y.z"] {
            assert!(qualified_name(good), "{good}");
        }
        for bad in ["", "-a", "a-", "Example.com/x", "a/b/c", "/x", "x/", &"n".repeat(64)] {
            assert!(!qualified_name(bad), "{bad}");
        }
    }
}
