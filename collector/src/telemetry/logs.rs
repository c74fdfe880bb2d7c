//! The collector's own log: `tracing`, with per-target filters (`COLLECTOR_LOG=info,kube=warn`),
//! the target on every line, and JSON when stderr is not a terminal (a DaemonSet's log collector
//! reads it). `log` records (aya-log, the BPF programs' messages) join through the bridge.

use std::io::IsTerminal as _;

use thiserror::Error;
use tracing_subscriber::{EnvFilter, fmt, util::SubscriberInitExt as _};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One readable line per event.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, its fields, `target`, and the
    /// `span` it happened in.
    Json,
}

/// Libraries that log every frame or handshake at debug: a bare `--log-level debug` keeps them
/// at `warn`, unless the filter names them.
const NOISY: [&str; 7] = ["h2", "hyper", "hyper_util", "rustls", "tower", "tonic", "kube_client"];

/// Why logging could not start.
#[derive(Debug, Error)]
pub enum LogError {
    /// The filter does not parse.
    #[error("invalid log filter {filter:?} (expected a level such as warn, or directives such as info,kube=warn)")]
    Filter {
        /// The filter given.
        filter: String,
        /// Why.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A logger was already installed (a bug).
    #[error("cannot install the logger")]
    Install(#[source] tracing_subscriber::util::TryInitError),
}

/// The directives for `filter`: the noisy libraries stay at `warn` unless `filter` names them.
pub fn directives(filter: &str) -> String {
    let mut directives = filter.trim().to_owned();
    for target in NOISY {
        if !directives.split(',').any(|directive| directive.trim().starts_with(target)) {
            directives.push_str(&format!(",{target}=warn"));
        }
    }
    directives
}

/// Installs the logger for the process.
pub fn init(filter: &str, format: LogFormat) -> Result<(), LogError> {
    let env_filter = EnvFilter::try_new(directives(filter))
        .map_err(|source| LogError::Filter { filter: filter.to_owned(), source })?;
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Auto => !terminal,
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let builder = fmt().with_env_filter(env_filter).with_writer(std::io::stderr).with_target(true);
    if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).finish().try_init()
    } else {
        builder.with_ansi(terminal).finish().try_init()
    }
    .map_err(LogError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_keeps_the_noisy_libraries_quiet_unless_named() {
        assert_eq!(
            directives("debug"),
            "debug,h2=warn,hyper=warn,hyper_util=warn,rustls=warn,tower=warn,tonic=warn,kube_client=warn"
        );
        let named = directives("info,h2=debug,kube_client=info");
        assert!(named.starts_with("info,h2=debug,kube_client=info,"), "{named}");
        assert!(!named.contains("h2=warn") && !named.contains("kube_client=warn"), "{named}");
        assert!(EnvFilter::try_new(directives("warn,collector::daemon=debug")).is_ok());
        assert!(EnvFilter::try_new(directives("loud=")).is_err() || EnvFilter::try_new("lo[ud").is_err());
    }
}
