//! Sinks: where the recorder's decisions go (the API server, stdout, the
//! local journal, webhooks, the live stream), the one [`handler::Handler`] interface they are registered
//! through, and the form in which a write waits for delivery.

pub mod handler;
pub mod journal;
pub mod kubernetes;
pub mod stdout;
pub mod stream;
pub mod webhook;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::recorder::Write;

/// The HTTP verb of an Events API write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verb {
    /// Create a new event.
    Post,
    /// Update the count, last timestamp and message of an existing event.
    Patch,
}

impl Verb {
    /// `POST` or `PATCH`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Patch => "PATCH",
        }
    }
}

/// One write to the core/v1 Events API, self-contained so it can wait in the
/// journal's outbox across an API outage or a daemon restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiWrite {
    /// POST or PATCH.
    pub verb: Verb,
    /// The event's namespace (`default` for cluster-scoped objects such as a Node).
    pub namespace: String,
    /// The event object's name.
    pub name: String,
    /// The request body: the whole event for a POST, the merge patch for a PATCH.
    pub body: Value,
    /// The whole event as it stands after this write; a PATCH answered 404 is re-POSTed with it.
    pub event: Value,
}

impl ApiWrite {
    /// The request path under the API server's base URL.
    pub fn path(&self) -> String {
        match self.verb {
            Verb::Post => format!("/api/v1/namespaces/{}/events", self.namespace),
            Verb::Patch => format!("/api/v1/namespaces/{}/events/{}", self.namespace, self.name),
        }
    }

    /// The POST that replaces a PATCH whose event the server no longer has.
    pub fn as_repost(&self) -> Self {
        Self { verb: Verb::Post, body: self.event.clone(), ..self.clone() }
    }
}

impl TryFrom<&Write> for ApiWrite {
    type Error = serde_json::Error;

    fn try_from(write: &Write) -> Result<Self, Self::Error> {
        let event = serde_json::to_value(write.event())?;
        let meta = &write.event().metadata;
        Ok(match write {
            Write::Post(_) => Self {
                verb: Verb::Post,
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
                body: event.clone(),
                event,
            },
            Write::Patch { name, namespace, body, .. } => {
                Self { verb: Verb::Patch, namespace: namespace.clone(), name: name.clone(), body: body.clone(), event }
            }
        })
    }
}
