//! `[[filters]]` tables to [`Rule`]s: every rule and every field checked, every problem named by
//! its rule and field, so that one start-up (or `collector config check`) shows them all.

use std::collections::HashSet;

use thiserror::Error;
use toml::de::{DeTable, DeValue};

use super::{Action, Conditions, Glob, Rule};
use crate::recorder::EventType;

/// What is wrong with one rule.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FilterProblem {
    /// `filters` is not an array of tables.
    #[error("`filters` must be an array of tables ([[filters]])")]
    NotAnArray,
    /// An entry that is not a table.
    #[error("expected a table, found {0}")]
    NotATable(&'static str),
    /// A required field is missing.
    #[error("no `{0}`")]
    Missing(&'static str),
    /// A field of the wrong type.
    #[error("`{field}`: expected {expected}, found {found}")]
    WrongType {
        /// The field, dotted (`match.exit_code`).
        field: String,
        /// What it takes.
        expected: &'static str,
        /// What was given.
        found: String,
    },
    /// A name used twice.
    #[error("the name {0:?} is used by an earlier rule")]
    DuplicateName(String),
    /// An empty name.
    #[error("`name` is empty")]
    EmptyName,
    /// A rule field that does not exist.
    #[error("unknown field `{0}` (expected name, action, match)")]
    UnknownField(String),
    /// A condition that does not exist.
    #[error(
        "unknown field `match.{0}` (expected namespace, pod, container, labels, reason, type, exit_code, signal, \
         process, main_process)"
    )]
    UnknownCondition(String),
    /// A `match` with no condition, which would match everything.
    #[error("`match` is empty: a rule must say what it matches")]
    EmptyMatch,
    /// A stream subscription that is not one line of TOML.
    #[error("not TOML: {0}")]
    Syntax(String),
    /// A stream subscription with a key other than `filters`.
    #[error("unknown key `{0}` (expected filters = [...])")]
    UnknownKey(String),
}

/// One problem and where: the rule's name (or `#N`, 1-based, when it has none) and the byte
/// offset of the offending value in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The rule.
    pub rule: String,
    /// Where in the file.
    pub offset: usize,
    /// What.
    pub problem: FilterProblem,
}

/// Reads a stream client's subscription: one line of TOML, `filters = [{ name = "...", action =
/// "keep", match = { ... } }, ...]`, the same rules as the file's `[[filters]]`; an empty line
/// subscribes to everything.
pub fn subscription(line: &str) -> Result<Vec<Rule>, Vec<Located>> {
    let located = |offset, problem| vec![Located { rule: "subscription".to_owned(), offset, problem }];
    let document = DeTable::parse(line.trim())
        .map_err(|err| located(0, FilterProblem::Syntax(err.message().trim().to_owned())))?;
    let mut found = Vec::new();
    for (key, value) in document.get_ref() {
        if key.get_ref() != "filters" {
            return Err(located(key.span().start, FilterProblem::UnknownKey(key.get_ref().to_string())));
        }
        let (rules, problems) = rules(value.get_ref(), key.span().start);
        if !problems.is_empty() {
            return Err(problems);
        }
        found = rules;
    }
    Ok(found)
}

/// Reads the value of `filters` (starting at byte `offset`): the valid rules, and every problem.
pub fn rules(value: &DeValue<'_>, offset: usize) -> (Vec<Rule>, Vec<Located>) {
    let mut problems = Vec::new();
    let DeValue::Array(entries) = value else {
        problems.push(Located { rule: "filters".to_owned(), offset, problem: FilterProblem::NotAnArray });
        return (Vec::new(), problems);
    };
    let mut names = HashSet::new();
    let mut rules = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let at = entry.span().start;
        let DeValue::Table(table) = entry.get_ref() else {
            let problem = FilterProblem::NotATable(entry.get_ref().type_str());
            problems.push(Located { rule: format!("#{}", index + 1), offset: at, problem });
            continue;
        };
        let label = table
            .iter()
            .find(|(key, _)| key.get_ref() == "name")
            .and_then(|(_, value)| value.get_ref().as_str())
            .filter(|name| !name.is_empty())
            .map_or_else(|| format!("#{}", index + 1), |name| format!("{name:?}"));
        let mut report = |offset: usize, problem| problems.push(Located { rule: label.clone(), offset, problem });
        let (mut name, mut action, mut conditions) = (None, None, None);
        for (key, value) in table {
            let offset = key.span().start;
            match key.get_ref().as_ref() {
                "name" => match value.get_ref() {
                    DeValue::String(text) if text.is_empty() => report(offset, FilterProblem::EmptyName),
                    DeValue::String(text) if !names.insert(text.to_string()) => {
                        report(offset, FilterProblem::DuplicateName(text.to_string()));
                    }
                    DeValue::String(text) => name = Some(text.to_string()),
                    other => report(offset, wrong("name", "a string", other)),
                },
                "action" => match value.get_ref().as_str() {
                    Some("drop") => action = Some(Action::Drop),
                    Some("keep") => action = Some(Action::Keep),
                    _ => report(offset, wrong("action", "\"drop\" or \"keep\"", value.get_ref())),
                },
                "match" => match value.get_ref() {
                    DeValue::Table(fields) => {
                        let mut found = Conditions::default();
                        let mut any = false;
                        for (field, value) in fields {
                            any = true;
                            if let Err(problem) = condition(&mut found, field.get_ref(), value.get_ref()) {
                                report(field.span().start, problem);
                            }
                        }
                        if any {
                            conditions = Some(found);
                        } else {
                            report(offset, FilterProblem::EmptyMatch);
                        }
                    }
                    other => report(offset, wrong("match", "a table", other)),
                },
                other => report(offset, FilterProblem::UnknownField(other.to_owned())),
            }
        }
        let has = |key: &str| table.iter().any(|(k, _)| k.get_ref() == key);
        for (field, present) in [("name", has("name")), ("action", has("action")), ("match", has("match"))] {
            if !present {
                report(at, FilterProblem::Missing(field));
            }
        }
        if let (Some(name), Some(action), Some(conditions)) = (name, action, conditions) {
            rules.push(Rule { name, action, conditions });
        }
    }
    // Tables do not keep the document's order; report in file order.
    problems.sort_by_key(|problem| problem.offset);
    (rules, problems)
}

fn wrong(field: &str, expected: &'static str, found: &DeValue<'_>) -> FilterProblem {
    let found = match found {
        DeValue::String(text) => format!("{text:?}"),
        other => other.type_str().to_owned(),
    };
    FilterProblem::WrongType { field: field.to_owned(), expected, found }
}

fn condition(into: &mut Conditions, field: &str, value: &DeValue<'_>) -> Result<(), FilterProblem> {
    let dotted = format!("match.{field}");
    let text = || value.as_str().map(str::to_owned).ok_or_else(|| wrong(&dotted, "a string", value));
    let glob = || text().map(Glob);
    match field {
        "namespace" => into.namespace = Some(glob()?),
        "pod" => into.pod = Some(glob()?),
        "container" => into.container = Some(glob()?),
        "process" => into.process = Some(glob()?),
        "reason" => into.reason = Some(text()?),
        "type" => {
            into.event_type = Some(match value.as_str() {
                Some("Warning") => EventType::Warning,
                Some("Normal") => EventType::Normal,
                _ => return Err(wrong(&dotted, "\"Warning\" or \"Normal\"", value)),
            });
        }
        "exit_code" => into.exit_code = Some(integer(value, 0, 255).ok_or_else(|| wrong(&dotted, "0 to 255", value))?),
        "signal" => {
            into.signal =
                Some(signal(value).ok_or_else(|| wrong(&dotted, "1 to 31 or a name such as SIGTERM", value))?);
        }
        "main_process" => match value {
            DeValue::Boolean(main) => into.main_process = Some(*main),
            other => return Err(wrong(&dotted, "true or false", other)),
        },
        "labels" => {
            let DeValue::Table(labels) = value else {
                return Err(wrong(&dotted, "a table of label globs ({ app = \"web\" })", value));
            };
            let mut found = std::collections::BTreeMap::new();
            for (key, value) in labels {
                let key = key.get_ref().to_string();
                let Some(glob) = value.get_ref().as_str() else {
                    return Err(wrong(&format!("{dotted}.{key}"), "a string", value.get_ref()));
                };
                found.insert(key, Glob(glob.to_owned()));
            }
            if found.is_empty() {
                return Err(wrong(&dotted, "at least one label", value));
            }
            into.labels = Some(found);
        }
        other => return Err(FilterProblem::UnknownCondition(other.to_owned())),
    }
    Ok(())
}

fn integer(value: &DeValue<'_>, min: u32, max: u32) -> Option<u32> {
    let DeValue::Integer(integer) = value else { return None };
    let n = i64::from_str_radix(integer.as_str(), integer.radix()).ok()?;
    u32::try_from(n).ok().filter(|n| (min..=max).contains(n))
}

/// A signal by number (1-31) or by name, with or without `SIG`.
fn signal(value: &DeValue<'_>) -> Option<u32> {
    if let Some(name) = value.as_str() {
        let name = name.strip_prefix("SIG").unwrap_or(name);
        return (1..32).find(|&n| crate::record::signal_name(n).strip_prefix("SIG") == Some(name));
    }
    integer(value, 1, 31)
}
