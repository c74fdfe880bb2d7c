//! `[[webhooks]]` tables to [`WebhookConfig`]s: every webhook checked, every problem named by its
//! webhook, so that one start-up (or `collector config check`) shows them all.

use std::{collections::HashSet, io, path::PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml::de::{DeValue, ValueDeserializer};

use super::{MAX_TIMEOUT, WebhookConfig};
use crate::config::HumanDuration;

/// What is wrong with one webhook.
#[derive(Debug, Error)]
pub enum WebhookProblem {
    /// `webhooks` is not an array of tables.
    #[error("`webhooks` must be an array of tables ([[webhooks]])")]
    NotAnArray,
    /// A field is missing, unknown or of the wrong type.
    #[error("{}", .0.message().trim())]
    Field(#[source] toml::de::Error),
    /// A name used twice.
    #[error("the name {0:?} is used by an earlier webhook")]
    DuplicateName(String),
    /// An empty name.
    #[error("`name` is empty")]
    EmptyName,
    /// A URL that is not an absolute http or https URL.
    #[error("`url` {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A timeout of zero or above the maximum.
    #[error("`timeout` {0} is out of range (more than 0, at most 30s)")]
    Timeout(HumanDuration),
    /// A token file that is relative or cannot be read.
    #[error("`token_file` {}: {source}", path.display())]
    TokenFile {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: io::Error,
    },
}

/// One problem and where: the webhook's name (or `#N`, 1-based, when it has none) and the byte
/// offset of the offending value in the file.
#[derive(Debug)]
pub struct Located {
    /// The webhook.
    pub webhook: String,
    /// Where in the file.
    pub offset: usize,
    /// What.
    pub problem: WebhookProblem,
}

/// Reads the value of `webhooks` (starting at byte `offset`): the valid webhooks, and every problem.
pub fn webhooks(value: &DeValue<'_>, offset: usize) -> (Vec<WebhookConfig>, Vec<Located>) {
    let mut problems = Vec::new();
    let DeValue::Array(entries) = value else {
        problems.push(Located { webhook: "webhooks".to_owned(), offset, problem: WebhookProblem::NotAnArray });
        return (Vec::new(), problems);
    };
    let mut names = HashSet::new();
    let mut found = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let at = entry.span().start;
        let label = match entry.get_ref() {
            DeValue::Table(table) => table
                .iter()
                .find(|(key, _)| key.get_ref() == "name")
                .and_then(|(_, value)| value.get_ref().as_str())
                .filter(|name| !name.is_empty())
                .map_or_else(|| format!("#{}", index + 1), |name| format!("{name:?}")),
            _ => format!("#{}", index + 1),
        };
        let mut report = |offset: usize, problem| problems.push(Located { webhook: label.clone(), offset, problem });
        let config = match WebhookConfig::deserialize(ValueDeserializer::from(entry.clone())) {
            Ok(config) => config,
            Err(err) => {
                let offset = err.span().map_or(at, |span| span.start);
                report(offset, WebhookProblem::Field(err));
                continue;
            }
        };
        let before = problems.len();
        let mut report = |problem| problems.push(Located { webhook: label.clone(), offset: at, problem });
        if config.name.is_empty() {
            report(WebhookProblem::EmptyName);
        } else if !names.insert(config.name.clone()) {
            report(WebhookProblem::DuplicateName(config.name.clone()));
        }
        if let Err(reason) = check_url(&config.url.0) {
            report(WebhookProblem::Url { url: config.url.to_string(), reason });
        }
        if config.timeout.0.is_zero() || config.timeout.0 > MAX_TIMEOUT {
            report(WebhookProblem::Timeout(config.timeout));
        }
        if let Some(path) = &config.token_file {
            let readable = if path.is_absolute() {
                std::fs::File::open(path).map(drop)
            } else {
                Err(io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"))
            };
            if let Err(source) = readable {
                report(WebhookProblem::TokenFile { path: path.clone(), source });
            }
        }
        if problems.len() == before {
            found.push(config);
        }
    }
    (found, problems)
}

/// Whether `uri` is an absolute `http://` or `https://` URL with a host.
fn check_url(uri: &http::Uri) -> Result<(), &'static str> {
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return Err("the scheme must be http or https"),
        None => return Err("not an absolute URL (expected http://HOST[:PORT]/PATH)"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use toml::de::DeTable;

    use super::*;

    fn parse(text: &str) -> (Vec<WebhookConfig>, Vec<String>) {
        let document = DeTable::parse(text).unwrap();
        let (key, value) = document.get_ref().iter().find(|(key, _)| key.get_ref() == "webhooks").unwrap();
        let (found, problems) = webhooks(value.get_ref(), key.span().start);
        (found, problems.into_iter().map(|located| format!("{}: {}", located.webhook, located.problem)).collect())
    }

    #[test]
    fn a_full_webhook_reads_with_its_defaults() {
        let (found, problems) = parse(
            "[[webhooks]]\nname = \"audit\"\nurl = \"http://127.0.0.1:9000/hook\"\nreasons = [\"OOMKilling\"]\n\
             namespaces = [\"prod-*\"]\n\n[[webhooks]]\nname = \"gate\"\nurl = \"https://hooks.example/x\"\n\
             mode = \"mutate\"\ntimeout = \"500ms\"\n",
        );
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].mode, super::super::Mode::Notify);
        assert_eq!(found[0].timeout, super::super::DEFAULT_TIMEOUT);
        assert!(found[0].wants("OOMKilling", "prod-eu"));
        assert!(!found[0].wants("OOMKilling", "dev"));
        assert!(!found[0].wants("OOMKilling", ""), "a Node event has no namespace to match");
        assert!(!found[0].wants("ContainerExited", "prod-eu"));
        assert_eq!(found[1].mode, super::super::Mode::Mutate);
        assert!(found[1].wants("Anything", ""));
    }

    #[test]
    fn every_problem_of_every_webhook_is_named() {
        let (found, problems) = parse(
            "[[webhooks]]\nname = \"a\"\nurl = \"ftp://x/y\"\n\n[[webhooks]]\nname = \"a\"\nurl = \"/hook\"\n\
             timeout = \"1m\"\n\n[[webhooks]]\nname = \"b\"\nurl = \"http://x/\"\nmode = \"shout\"\n\n\
             [[webhooks]]\nurl = \"http://x/\"\n\n[[webhooks]]\nname = \"t\"\nurl = \"http://x/\"\n\
             token_file = \"/nonexistent/token\"\nsecret = 1\n",
        );
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert_eq!(problems[0], "\"a\": `url` \"ftp://x/y\": the scheme must be http or https");
        assert_eq!(problems[1], "\"a\": the name \"a\" is used by an earlier webhook");
        assert_eq!(problems[2], "\"a\": `url` \"/hook\": not an absolute URL (expected http://HOST[:PORT]/PATH)");
        assert_eq!(problems[3], "\"a\": `timeout` 1m is out of range (more than 0, at most 30s)");
        assert!(
            problems[4].starts_with("\"b\": unknown variant `shout`, expected `notify` or `mutate`"),
            "{}",
            problems[4]
        );
        assert_eq!(problems[5], "#4: missing field `name`");
        assert!(problems[6].starts_with("\"t\": unknown field `secret`"), "{}", problems[6]);
    }

    #[test]
    fn a_url_that_does_not_parse_is_named_and_a_good_one_is_kept_as_parsed() {
        let (found, problems) = parse("[[webhooks]]\nname = \"u\"\nurl = \"http://a b/\"\n");
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(problems, ["\"u\": `url` \"http://a b/\": not a URL"]);
        let (found, problems) = parse("[[webhooks]]\nname = \"u\"\nurl = \"https://hooks.example:8443/x?y=1\"\n");
        assert!(problems.is_empty(), "{problems:?}");
        let uri = &found[0].url.0;
        assert_eq!((uri.scheme_str(), uri.host(), uri.port_u16()), (Some("https"), Some("hooks.example"), Some(8443)));
        assert_eq!(found[0].url.to_string(), "https://hooks.example:8443/x?y=1");
    }

    #[test]
    fn an_unreadable_token_file_is_a_problem() {
        let (_, problems) =
            parse("[[webhooks]]\nname = \"t\"\nurl = \"http://x/\"\ntoken_file = \"/nonexistent/token\"\n");
        assert_eq!(problems, ["\"t\": `token_file` /nonexistent/token: No such file or directory (os error 2)"]);
        let (_, problems) = parse("[[webhooks]]\nname = \"t\"\nurl = \"http://x/\"\ntoken_file = \"token\"\n");
        assert_eq!(problems, ["\"t\": `token_file` token: not an absolute path"]);
    }
}
