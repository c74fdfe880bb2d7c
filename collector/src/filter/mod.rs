//! Filter stage: operator rules that drop events before the recorder, so a noisy sidecar can be
//! silenced with one rule. Rules come from the configuration file's `[[filters]]` tables and are
//! checked at start-up (and by `collector config check`); SIGHUP reloads them.
//!
//! A rule matches when all its conditions hold. Any matching `drop` rule drops the event; once a
//! `keep` rule exists, an event that no `keep` rule matches is dropped too. Each rule counts the
//! events it decided (`collector_filter_matches_total{rule}`).

pub mod parse;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    record::Record,
    recorder::{EventSpec, EventType},
};

/// What a rule does with what it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The event is dropped.
    Drop,
    /// Only what some keep rule matches passes.
    Keep,
}

/// One `[[filters]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Its name, unique among the rules: the metric label and the name in every message.
    pub name: String,
    /// Drop or keep.
    pub action: Action,
    /// The conditions, all of which must hold.
    #[serde(rename = "match")]
    pub conditions: Conditions,
}

/// The conditions of a rule; absent ones hold for everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Conditions {
    /// The pod's namespace (a glob: `*` any run of characters, `?` one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Glob>,
    /// The pod's name (a glob).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Glob>,
    /// The container's name in the pod spec (a glob).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Glob>,
    /// Pod labels, each a glob on the label's value; every one must be present and match. The
    /// labels come from the runtime's sandbox (or the API server's pod, which wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, Glob>>,
    /// The event's reason, exact (`ContainerExited`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The event's type.
    #[serde(skip_serializing_if = "Option::is_none", rename = "type")]
    pub event_type: Option<EventType>,
    /// The exit code (128 + N for a death by signal N).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    /// The signal that ended the process, by number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<u32>,
    /// The process name (`comm`, a glob).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Glob>,
    /// Whether the process was its container's main process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main_process: Option<bool>,
}

/// A shell-style pattern: `*` matches any run of characters, `?` one; nothing else is special.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Glob(pub String);

impl Glob {
    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let pattern: Vec<char> = self.0.chars().collect();
        let text: Vec<char> = text.chars().collect();
        // Iterative wildcard matching with one backtrack point: linear in practice, never
        // exponential, whatever the pattern.
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match pattern.get(p) {
                Some('*') => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(&c) if c == '?' || c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((star_p, star_t)) => {
                        p = star_p + 1;
                        t = star_t + 1;
                        star = Some((star_p, star_t + 1));
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|&c| c == '*')
    }
}

impl Conditions {
    /// Whether every condition holds for `spec`, caused by `record`; for a record on its own
    /// (`spec` none, in `collector trace` and the stream), a reason or type never holds.
    pub fn hold(&self, spec: Option<&EventSpec>, record: &Record) -> bool {
        let identity = record.identity();
        let glob = |want: &Option<Glob>, have: Option<&str>| {
            want.as_ref().is_none_or(|glob| have.is_some_and(|have| glob.matches(have)))
        };
        let (exit_code, signal, process, main) = match record {
            Record::Exit(exit) => (Some(exit.exit_code), exit.signal, Some(exit.comm.as_str()), exit.main_process),
            Record::OomKill(oom) => (Some(137), Some(9), oom.comm.as_deref(), oom.main_process),
            _ => (None, None, None, None),
        };
        glob(&self.namespace, identity.namespace.as_deref())
            && glob(&self.pod, identity.pod_name.as_deref())
            && glob(&self.container, identity.container_name.as_deref())
            && glob(&self.process, process)
            && self.labels.as_ref().is_none_or(|want| {
                identity.pod_labels.as_ref().is_some_and(|have| {
                    want.iter().all(|(key, glob)| have.get(key).is_some_and(|value| glob.matches(value)))
                })
            })
            && self.reason.as_ref().is_none_or(|reason| spec.is_some_and(|spec| *reason == spec.reason))
            && self.event_type.is_none_or(|want| spec.is_some_and(|spec| want == spec.event_type))
            && self.exit_code.is_none_or(|want| exit_code == Some(want))
            && self.signal.is_none_or(|want| signal == Some(want))
            && self.main_process.is_none_or(|want| main == Some(want))
    }
}

/// What the rules decided about one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// It goes on; `matched` is the keep rule that let it through, if any.
    Pass {
        /// The keep rule that matched.
        matched: Option<&'a str>,
    },
    /// It is dropped: by this drop rule, or (`None`) by no keep rule matching.
    Drop {
        /// The drop rule that matched.
        rule: Option<&'a str>,
    },
}

/// The rules in force; cheap to share and to swap on a reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    rules: Arc<Vec<Rule>>,
}

impl Filters {
    /// The rules, in configuration order.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules: Arc::new(rules) }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decides about `spec`, which `record` caused: a matching drop rule drops; with keep rules,
    /// only what one of them matches passes.
    pub fn decide(&self, spec: &EventSpec, record: &Record) -> Verdict<'_> {
        self.decide_for(Some(spec), record)
    }

    /// Whether a record goes to a stream client: when it caused events (`specs`), if one of
    /// them passes; otherwise as a record on its own, which no reason or type condition matches.
    pub fn pass_record<'a>(&self, record: &Record, mut specs: impl Iterator<Item = &'a EventSpec>) -> bool {
        let mut any = false;
        let passed = specs.any(|spec| {
            any = true;
            matches!(self.decide(spec, record), Verdict::Pass { .. })
        });
        passed || (!any && matches!(self.decide_for(None, record), Verdict::Pass { .. }))
    }

    fn decide_for(&self, spec: Option<&EventSpec>, record: &Record) -> Verdict<'_> {
        let mut keep_rules = false;
        let mut kept = None;
        for rule in self.rules.iter() {
            match rule.action {
                Action::Drop if rule.conditions.hold(spec, record) => return Verdict::Drop { rule: Some(&rule.name) },
                Action::Drop => {}
                Action::Keep => {
                    keep_rules = true;
                    if kept.is_none() && rule.conditions.hold(spec, record) {
                        kept = Some(rule.name.as_str());
                    }
                }
            }
        }
        if keep_rules && kept.is_none() { Verdict::Drop { rule: None } } else { Verdict::Pass { matched: kept } }
    }
}

#[cfg(test)]
mod tests;
