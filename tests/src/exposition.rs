//! A strict reader of the Prometheus/OpenMetrics text exposition `/metrics` serves: every
//! line must be a comment the format defines or a sample `name{label="value",...} number`,
//! with label values escaped as the format requires (`\\`, `\"`, `\n`).

use anyhow::{Context as _, Result, bail};

/// One sample line, label values unescaped.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name, with its `_total` (or other) suffix.
    pub name: String,
    /// The labels in the order served.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// Checks every line of `text` and returns its samples; fails on the first malformed line.
pub fn parse(text: &str) -> Result<Vec<Sample>> {
    if !text.ends_with("# EOF\n") {
        bail!("the exposition does not end with `# EOF`:\n{text}");
    }
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let checked = if let Some(comment) = line.strip_prefix("# ") {
            check_comment(comment)
        } else {
            sample(line).map(|s| samples.push(s))
        };
        checked.with_context(|| format!("line {}: {line:?}", number + 1))?;
    }
    Ok(samples)
}

/// The value of the sample named `name` with exactly `labels`, if served.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && s.labels.iter().zip(labels).all(|((k, v), (want_k, want_v))| k == want_k && v == want_v)
        })
        .map(|s| s.value)
}

fn check_comment(comment: &str) -> Result<()> {
    if comment == "EOF" {
        return Ok(());
    }
    let (keyword, rest) = comment.split_once(' ').context("a comment without a keyword")?;
    let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    check_name(name)?;
    match keyword {
        "HELP" => Ok(()),
        "UNIT" if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => Ok(()),
        "TYPE"
            if ["counter", "gauge", "info", "histogram", "summary", "stateset", "unknown", "gaugehistogram"]
                .contains(&rest) =>
        {
            Ok(())
        }
        _ => bail!("not a HELP, TYPE or UNIT comment"),
    }
}

fn check_name(name: &str) -> Result<()> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
        bail!("bad metric or label name {name:?}");
    }
    Ok(())
}

fn sample(line: &str) -> Result<Sample> {
    let name_end = line.find(['{', ' ']).context("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"").context("a label without =\"")?;
            check_name(key)?;
            let (value, after) = label_value(after)?;
            labels.push((key.to_owned(), value));
            rest = after.strip_prefix(',').unwrap_or(after);
            if !after.starts_with(',') && !after.starts_with('}') {
                bail!("labels not separated by commas");
            }
        }
    }
    let rest = rest.strip_prefix(' ').context("no space before the value")?;
    let mut fields = rest.split(' ');
    let value = fields.next().context("no value")?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().with_context(|| format!("value {v:?} is not a number"))?,
    };
    // An optional timestamp, nothing else.
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<f64>().with_context(|| format!("timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        bail!("trailing fields after the value");
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// Reads an escaped label value up to its closing quote; returns it unescaped and the rest.
fn label_value(text: &str) -> Result<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[at + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                other => bail!("bad escape \\{other:?} in a label value"),
            },
            c if c.is_control() && c != '\t' => bail!("raw control character {c:?} in a label value"),
            c => value.push(c),
        }
    }
    bail!("unterminated label value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_escaped_labels_and_rejects_broken_lines() {
        let text = "# HELP a_total A.\n# TYPE a counter\na_total{x=\"q\\\"\\\\\\n\",y=\"\"} 2\nb 1.5\n# EOF\n";
        let samples = parse(text).unwrap();
        assert_eq!(value(&samples, "a_total", &[("x", "q\"\\\n"), ("y", "")]), Some(2.0));
        assert_eq!(value(&samples, "b", &[]), Some(1.5));
        for bad in ["a{x=\"\"\"} 1", "a{x=\"\\q\"} 1", "a{x=\"1\" 1", "a 1 2 3", "a x", "1a 1", "# TYPE a nonsense"] {
            assert!(parse(&format!("{bad}\n# EOF\n")).is_err(), "{bad}");
        }
        assert!(parse("a 1\n").is_err(), "no # EOF");
    }
}
