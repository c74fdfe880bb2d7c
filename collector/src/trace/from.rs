//! `collector trace --from SOCKET`: subscribes to a running daemon's stream with the trace's
//! pod filters as a keep rule, and prints its records exactly as `collector trace` would.

use std::{
    io::{self, Write as _},
    path::Path,
};

use serde::Deserialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    signal::unix::{SignalKind, signal},
};

use super::{Filter, TraceArgs, TraceError, TraceStats};
use crate::{
    filter::Filters,
    output::{Format, Output},
    record::Record,
};

/// One line of the stream.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Subscribed(serde::de::IgnoredAny),
    Error(String),
    Record(Box<Record>),
    Event(serde::de::IgnoredAny),
}

/// The subscription line: the trace's namespace, pod and container as one keep rule (so the
/// daemon sends only those), or everything. The other filters apply here.
pub(super) fn subscription(args: &TraceArgs) -> String {
    // A JSON string is a TOML basic string: quotes, backslashes and controls escaped alike.
    let quote = |text: &str| serde_json::to_string(text).unwrap_or_default();
    let conditions: Vec<String> = [("namespace", &args.namespace), ("pod", &args.pod), ("container", &args.container)]
        .into_iter()
        .filter_map(|(key, value)| value.as_deref().map(|value| format!("{key} = {}", quote(value))))
        .collect();
    if conditions.is_empty() {
        "filters = []\n".to_owned()
    } else {
        format!("filters = [{{ name = \"trace\", action = \"keep\", match = {{ {} }} }}]\n", conditions.join(", "))
    }
}

pub(super) async fn run(
    args: &TraceArgs,
    socket: &Path,
    format: Format,
    rules: Filters,
) -> Result<TraceStats, TraceError> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let stream =
        UnixStream::connect(socket).await.map_err(|source| TraceError::Connect { path: socket.to_owned(), source })?;
    let (read, mut write) = stream.into_split();
    write.write_all(subscription(args).as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let first = lines.next_line().await?.unwrap_or_default();
    match serde_json::from_str::<Line>(&first) {
        Ok(Line::Subscribed(_)) => {}
        Ok(Line::Error(reason)) => return Err(TraceError::Refused { reason }),
        _ => {
            let mut line = first;
            crate::recorder::truncate_utf8(&mut line, 200, "...");
            return Err(TraceError::Protocol { line });
        }
    }
    let filter = Filter::from_args(args).with_rules(rules);
    let mut output = Output::new(format, io::BufWriter::new(io::stdout().lock()));
    output.header()?;
    output.flush()?;
    writeln!(io::stderr(), "collector: tracing from {}; SIGINT or SIGTERM stops", socket.display())?;
    let mut stats = TraceStats { from_stream: true, ..TraceStats::default() };
    let result = loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    let Ok(Line::Record(record)) = serde_json::from_str::<Line>(&line) else { continue };
                    stats.records += 1;
                    if !filter.accepts(&record) {
                        stats.filtered += 1;
                        continue;
                    }
                    if let Err(err) = output.write(&record).and_then(|()| output.flush()) {
                        break Err(err);
                    }
                }
                Ok(None) => {
                    tracing::warn!("the daemon closed the stream (it stopped, or cut this reader off for being slow)");
                    break Ok(());
                }
                Err(err) => break Err(err),
            },
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    match result {
        Ok(()) => Ok(stats),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(stats),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_filters_become_one_keep_rule_that_parses() {
        let mut args = crate::trace::tests::args();
        assert_eq!(subscription(&args), "filters = []\n");
        args.namespace = Some("shop".into());
        args.container = Some("a\"b".into());
        let line = subscription(&args);
        assert_eq!(
            line,
            "filters = [{ name = \"trace\", action = \"keep\", match = { namespace = \"shop\", container = \"a\\\"b\" } }]\n"
        );
        let rules = crate::filter::parse::subscription(&line).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].conditions.container.as_ref().unwrap().0, "a\"b");
    }
}
