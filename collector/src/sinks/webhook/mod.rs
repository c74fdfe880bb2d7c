//! Webhooks: the plugin mechanism. An operator registers an HTTP endpoint in the configuration
//! file (`[[webhooks]]`); each event it selects is POSTed to it as JSON with the kernel records
//! behind it. A `notify` webhook is a handler like the journal or stdout, on its own thread
//! behind its own queue, retried on errors. A `mutate` webhook answers back before the recorder,
//! as an admission webhook does: it may suppress the event or add annotations and text, and a
//! timeout or a bad answer lets the event through unchanged.

pub mod client;
pub mod mutate;
pub mod notify;
pub mod parse;

use std::path::PathBuf;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::{config::HumanDuration, filter::Glob};

/// How long a webhook may take to answer, by default.
pub const DEFAULT_TIMEOUT: HumanDuration = HumanDuration(std::time::Duration::from_secs(2));
/// The longest `timeout` allowed: a mutate webhook holds its event that long.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the collector does with a webhook's answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Told after the recorder, off the event path; the answer is ignored.
    #[default]
    Notify,
    /// Asked before the recorder; its answer may suppress or annotate the event.
    Mutate,
}

impl Mode {
    /// `notify` or `mutate`, as in the file and the metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Notify => "notify",
            Self::Mutate => "mutate",
        }
    }
}

/// A webhook's URL, parsed once, when the configuration is read; [`parse`] checks that it is
/// absolute http or https, and the client sends to it as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl(pub http::Uri);

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for WebhookUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map(Self).map_err(|_err| serde::de::Error::custom(format!("`url` {text:?}: not a URL")))
    }
}

/// One `[[webhooks]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique among the webhooks: the metric label and the name in every message.
    pub name: String,
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: WebhookUrl,
    /// `notify` (default) or `mutate`.
    #[serde(default)]
    pub mode: Mode,
    /// Only events with these reasons; empty (the default) means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Only events about objects in these namespaces (globs); empty (the default) means all,
    /// Node events included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Glob>,
    /// How long one request may take. Default `2s`; at most `30s`.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// A file whose content is sent as `Authorization: Bearer ...`; read for every request,
    /// so a rotated token is picked up. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

const fn default_timeout() -> HumanDuration {
    DEFAULT_TIMEOUT
}

impl WebhookConfig {
    /// Whether this webhook wants an event with `reason` about an object in `namespace` (empty
    /// for cluster-scoped objects such as the Node).
    pub fn wants(&self, reason: &str, namespace: &str) -> bool {
        (self.reasons.is_empty() || self.reasons.iter().any(|want| want == reason))
            && (self.namespaces.is_empty()
                || (!namespace.is_empty() && self.namespaces.iter().any(|glob| glob.matches(namespace))))
    }
}

/// The request body: `{"event": <event>, "records": [<record>]}`, where `record` is the record
/// exactly as `collector trace --format json` prints it, already encoded once for every
/// webhook and stream client (`record_json`, without its newline).
pub fn request_body(event: &impl Serialize, record_json: &[u8]) -> serde_json::Result<Bytes> {
    let mut body = BytesMut::with_capacity(record_json.len() + 1024);
    body.put_slice(b"{\"event\":");
    serde_json::to_writer((&mut body).writer(), event)?;
    body.put_slice(b",\"records\":[");
    body.put_slice(record_json);
    body.put_slice(b"]}");
    Ok(body.freeze())
}

#[cfg(test)]
mod tests;
