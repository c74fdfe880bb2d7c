//! The TOML file layer: every key checked on its own, so one bad value does
//! not hide the next, and each problem carries the line of its key.
//!
//! serde with `deny_unknown_fields` would stop at the first problem, so the
//! document is read as a spanned table and walked here.

use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::{ConfigProblem, Origin, ProblemKind, RunConfig, fields::Field, fields::Raw};

/// Reads `path` and applies every valid key to `config`; problems go to `problems`.
pub(super) fn apply_file(path: &Path, config: &mut RunConfig, problems: &mut Vec<ConfigProblem>) {
    match std::fs::read_to_string(path) {
        Ok(text) => apply_text(path, &text, config, problems),
        Err(err) => problems.push(ConfigProblem {
            origin: Origin::File { path: path.to_owned(), line: None, key: None },
            kind: ProblemKind::Unreadable(err),
        }),
    }
}

/// Applies the TOML document `text` (read from `path`) to `config`.
pub(super) fn apply_text(path: &Path, text: &str, config: &mut RunConfig, problems: &mut Vec<ConfigProblem>) {
    let origin = |line: Option<usize>, key: Option<String>| Origin::File { path: path.to_owned(), line, key };
    let document = match DeTable::parse(text) {
        Ok(document) => document,
        Err(err) => {
            problems.push(ConfigProblem {
                origin: origin(err.span().map(|span| line_of(text, span.start)), None),
                kind: ProblemKind::Syntax(err.message().trim().to_owned()),
            });
            return;
        }
    };
    let first_problem = problems.len();
    let mut entries = Vec::new();
    for (key, value) in document.get_ref() {
        match (key.get_ref().as_ref(), value.get_ref()) {
            (table @ ("journal" | "node_health"), DeValue::Table(inner_table)) => {
                for (inner, value) in inner_table {
                    let dotted = format!("{table}.{}", inner.get_ref());
                    entries.push((dotted, inner.span().start, value));
                }
            }
            ("filters", value) => {
                let (rules, found) = crate::filter::parse::rules(value, key.span().start);
                config.filters = rules;
                for located in found {
                    problems.push(ConfigProblem {
                        origin: origin(Some(line_of(text, located.offset)), None),
                        kind: ProblemKind::Filter { rule: located.rule, problem: Box::new(located.problem) },
                    });
                }
            }
            ("webhooks", value) => {
                let (webhooks, found) = crate::sinks::webhook::parse::webhooks(value, key.span().start);
                config.webhooks = webhooks;
                for located in found {
                    problems.push(ConfigProblem {
                        origin: origin(Some(line_of(text, located.offset)), None),
                        kind: ProblemKind::Webhook { webhook: located.webhook, problem: Box::new(located.problem) },
                    });
                }
            }
            (table @ ("journal" | "node_health"), other) => problems.push(ConfigProblem {
                origin: origin(Some(line_of(text, key.span().start)), Some(table.to_owned())),
                kind: ProblemKind::WrongType { expected: "a table", found: other.type_str() },
            }),
            (name, _) => entries.push((name.to_owned(), key.span().start, value)),
        }
    }
    for (key, offset, value) in entries {
        let line = Some(line_of(text, offset));
        let Some(field) = Field::ALL.into_iter().find(|field| field.key() == key) else {
            problems.push(ConfigProblem { origin: origin(line, None), kind: ProblemKind::UnknownKey(key) });
            continue;
        };
        if let Err(kind) = field.apply(&raw(value.get_ref()), config) {
            problems.push(ConfigProblem { origin: origin(line, Some(key)), kind });
        }
    }
    // The table does not keep the document's order; report in line order.
    if let Some(found) = problems.get_mut(first_problem..) {
        found.sort_by_key(|problem| match problem.origin {
            Origin::File { line, .. } => line,
            _ => None,
        });
    }
}

fn raw<'a>(value: &'a DeValue<'_>) -> Raw<'a> {
    match value {
        DeValue::String(text) => Raw::Text(text),
        DeValue::Boolean(value) => Raw::Bool(*value),
        DeValue::Integer(integer) => {
            match i128::from_str_radix(integer.as_str(), integer.radix()) {
                Ok(value) => Raw::Integer(value),
                // TOML integers are 64-bit, so this does not happen; if it did, say so.
                Err(_err) => Raw::Other("integer out of range"),
            }
        }
        DeValue::Array(items) => {
            let strings: Option<Vec<&str>> = items.iter().map(|item| item.get_ref().as_str()).collect();
            strings.map_or(Raw::Other("array of non-strings"), Raw::List)
        }
        other => Raw::Other(other.type_str()),
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.bytes().filter(|&b| b == b'\n').count() + 1
}
