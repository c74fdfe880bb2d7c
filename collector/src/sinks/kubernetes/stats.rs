//! Counters of the Kubernetes sink.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::sinks::Verb;

/// How one request ended, as counted in [`StatsSnapshot::requests`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reply {
    /// The API server answered with this status code.
    Status(u16),
    /// No answer: connection error or request timeout.
    Error,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(code) => write!(f, "{code}"),
            Self::Error => f.write_str("error"),
        }
    }
}

/// A point-in-time copy of the sink's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Requests sent, by verb (`"POST"`, `"PATCH"`) and reply.
    pub requests: BTreeMap<(&'static str, Reply), u64>,
    /// Requests sent again after a retryable failure (connection error, timeout, 429, 5xx).
    pub retries: u64,
    /// PATCHes answered 404 and sent again as a POST of the whole event.
    pub reposts: u64,
    /// Writes delivered (2xx, or 409 AlreadyExists on a POST), reposts included.
    pub delivered: u64,
    /// Writes dropped because the API server refused them (4xx other than 429) or they were not a valid request.
    pub rejected: u64,
    /// Writes that ran out of attempts; a runner leaves them in the outbox for later.
    pub gave_up: u64,
    /// Writes printed instead of sent (`--dry-run`).
    pub printed: u64,
    /// Requests currently waiting for an answer.
    pub in_flight: u64,
}

impl StatsSnapshot {
    /// The number of requests with this verb and reply.
    pub fn requests(&self, verb: Verb, reply: Reply) -> u64 {
        self.requests.get(&(verb.as_str(), reply)).copied().unwrap_or(0)
    }
}

/// The live counters behind [`StatsSnapshot`].
#[derive(Debug, Default)]
pub(super) struct Stats(Mutex<StatsSnapshot>);

impl Stats {
    /// A poisoned lock only means a panic elsewhere mid-update; counters stay usable.
    pub(super) fn lock(&self) -> MutexGuard<'_, StatsSnapshot> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn snapshot(&self) -> StatsSnapshot {
        self.lock().clone()
    }

    pub(super) fn request(&self, verb: Verb, reply: Reply) {
        *self.lock().requests.entry((verb.as_str(), reply)).or_insert(0) += 1;
    }
}

/// Counts a request as in flight while it lives, whatever way the request future ends.
pub(super) struct InFlight<'a>(&'a Stats);

impl<'a> InFlight<'a> {
    pub(super) fn new(stats: &'a Stats) -> Self {
        stats.lock().in_flight += 1;
        Self(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut stats = self.0.lock();
        stats.in_flight = stats.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_keyed_by_verb_and_reply() {
        let stats = Stats::default();
        stats.request(Verb::Post, Reply::Status(201));
        stats.request(Verb::Post, Reply::Status(201));
        stats.request(Verb::Patch, Reply::Error);
        {
            let _guard = InFlight::new(&stats);
            assert_eq!(stats.snapshot().in_flight, 1);
        }
        let snap = stats.snapshot();
        assert_eq!(snap.requests(Verb::Post, Reply::Status(201)), 2);
        assert_eq!(snap.requests(Verb::Patch, Reply::Error), 1);
        assert_eq!(snap.requests(Verb::Patch, Reply::Status(200)), 0);
        assert_eq!(snap.in_flight, 0);
        assert_eq!(Reply::Error.to_string(), "error");
        assert_eq!(Reply::Status(503).to_string(), "503");
    }
}
