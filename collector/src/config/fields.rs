//! The settings of `collector run`, each with its file key, flag and
//! environment variable, and how a raw value becomes a typed one.

use std::{net::SocketAddr, path::PathBuf};

use crate::record::PressureResource;

use super::{
    ByteSize, CriSocket, HumanDuration, OutputFormat, Percent, ProblemKind, RunConfig, Sink, SinkSelection,
    StreamSocket,
};

/// One setting of [`RunConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    Sinks,
    Format,
    NodeName,
    StateDir,
    MetricsAddr,
    DryRun,
    EmitNormalExits,
    Component,
    Kubeconfig,
    CriSocket,
    RingBufferBytes,
    MetadataWait,
    TombstoneTtl,
    JournalMaxAge,
    JournalMaxBytes,
    StreamSocket,
    PressureResources,
    PressureThreshold,
    PressureWindow,
    ConditionClearAfter,
    FrequentOomKills,
    FrequentOomWindow,
}

/// A value before it is typed, as a flag, a variable or the file gave it.
#[derive(Clone, Debug)]
pub(super) enum Raw<'a> {
    /// A string (every flag and variable value, TOML strings).
    Text(&'a str),
    /// A TOML boolean or a boolean flag.
    Bool(bool),
    /// A TOML integer, as written (radix 10 after the parser's normalisation).
    Integer(i128),
    /// Repeated flags or a TOML array of strings.
    List(Vec<&'a str>),
    /// A TOML value of another type: its type name.
    Other(&'static str),
}

impl Raw<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Self::Text(_) => "string",
            Self::Bool(_) => "boolean",
            Self::Integer(_) => "integer",
            Self::List(_) => "array",
            Self::Other(name) => name,
        }
    }
}

/// The largest `metadata_wait`: records wait in memory that long.
pub(super) const MAX_METADATA_WAIT: HumanDuration = HumanDuration::from_secs(60);
/// The shortest `node_health.pressure_window`: two readings a second apart must differ.
pub(super) const MIN_PRESSURE_WINDOW: HumanDuration = HumanDuration::from_secs(2);
/// The longest `node_health.pressure_window`: readings are kept that long per container.
pub(super) const MAX_PRESSURE_WINDOW: HumanDuration = HumanDuration::from_secs(5 * 60);
/// The smallest `journal.max_bytes`.
pub(super) const MIN_JOURNAL_BYTES: ByteSize = ByteSize(1 << 20);

impl Field {
    pub(super) const ALL: [Self; 22] = [
        Self::Sinks,
        Self::Format,
        Self::NodeName,
        Self::StateDir,
        Self::MetricsAddr,
        Self::DryRun,
        Self::EmitNormalExits,
        Self::Component,
        Self::Kubeconfig,
        Self::CriSocket,
        Self::RingBufferBytes,
        Self::MetadataWait,
        Self::TombstoneTtl,
        Self::JournalMaxAge,
        Self::JournalMaxBytes,
        Self::StreamSocket,
        Self::PressureResources,
        Self::PressureThreshold,
        Self::PressureWindow,
        Self::ConditionClearAfter,
        Self::FrequentOomKills,
        Self::FrequentOomWindow,
    ];

    /// The key in the file (`journal.` keys sit in the `[journal]` table).
    pub(super) const fn key(self) -> &'static str {
        match self {
            Self::Sinks => "sinks",
            Self::Format => "format",
            Self::NodeName => "node_name",
            Self::StateDir => "state_dir",
            Self::MetricsAddr => "metrics_addr",
            Self::DryRun => "dry_run",
            Self::EmitNormalExits => "emit_normal_exits",
            Self::Component => "component",
            Self::Kubeconfig => "kubeconfig",
            Self::CriSocket => "cri_socket",
            Self::RingBufferBytes => "ring_buffer_bytes",
            Self::MetadataWait => "metadata_wait",
            Self::TombstoneTtl => "tombstone_ttl",
            Self::JournalMaxAge => "journal.max_age",
            Self::JournalMaxBytes => "journal.max_bytes",
            Self::StreamSocket => "stream_socket",
            Self::PressureResources => "node_health.pressure_resources",
            Self::PressureThreshold => "node_health.pressure_threshold",
            Self::PressureWindow => "node_health.pressure_window",
            Self::ConditionClearAfter => "node_health.condition_clear_after",
            Self::FrequentOomKills => "node_health.frequent_oom_kills",
            Self::FrequentOomWindow => "node_health.frequent_oom_window",
        }
    }

    /// The command-line flag.
    pub(super) const fn flag(self) -> &'static str {
        match self {
            Self::Sinks => "--sink",
            Self::Format => "--format",
            Self::NodeName => "--node-name",
            Self::StateDir => "--state-dir",
            Self::MetricsAddr => "--metrics-addr",
            Self::DryRun => "--dry-run",
            Self::EmitNormalExits => "--emit-normal-exits",
            Self::Component => "--component",
            Self::Kubeconfig => "--kubeconfig",
            Self::CriSocket => "--cri-socket",
            Self::RingBufferBytes => "--ring-buffer-bytes",
            Self::MetadataWait => "--metadata-wait",
            Self::TombstoneTtl => "--tombstone-ttl",
            Self::JournalMaxAge => "--journal-max-age",
            Self::JournalMaxBytes => "--journal-max-bytes",
            Self::StreamSocket => "--stream-socket",
            Self::PressureResources => "--pressure-resources",
            Self::PressureThreshold => "--pressure-threshold",
            Self::PressureWindow => "--pressure-window",
            Self::ConditionClearAfter => "--condition-clear-after",
            Self::FrequentOomKills => "--frequent-oom-kills",
            Self::FrequentOomWindow => "--frequent-oom-window",
        }
    }

    /// The environment variable: `COLLECTOR_` and the flag's name.
    pub(super) const fn env(self) -> &'static str {
        match self {
            Self::Sinks => "COLLECTOR_SINK",
            Self::Format => "COLLECTOR_FORMAT",
            Self::NodeName => "COLLECTOR_NODE_NAME",
            Self::StateDir => "COLLECTOR_STATE_DIR",
            Self::MetricsAddr => "COLLECTOR_METRICS_ADDR",
            Self::DryRun => "COLLECTOR_DRY_RUN",
            Self::EmitNormalExits => "COLLECTOR_EMIT_NORMAL_EXITS",
            Self::Component => "COLLECTOR_COMPONENT",
            Self::Kubeconfig => "COLLECTOR_KUBECONFIG",
            Self::CriSocket => "COLLECTOR_CRI_SOCKET",
            Self::RingBufferBytes => "COLLECTOR_RING_BUFFER_BYTES",
            Self::MetadataWait => "COLLECTOR_METADATA_WAIT",
            Self::TombstoneTtl => "COLLECTOR_TOMBSTONE_TTL",
            Self::JournalMaxAge => "COLLECTOR_JOURNAL_MAX_AGE",
            Self::JournalMaxBytes => "COLLECTOR_JOURNAL_MAX_BYTES",
            Self::StreamSocket => "COLLECTOR_STREAM_SOCKET",
            Self::PressureResources => "COLLECTOR_PRESSURE_RESOURCES",
            Self::PressureThreshold => "COLLECTOR_PRESSURE_THRESHOLD",
            Self::PressureWindow => "COLLECTOR_PRESSURE_WINDOW",
            Self::ConditionClearAfter => "COLLECTOR_CONDITION_CLEAR_AFTER",
            Self::FrequentOomKills => "COLLECTOR_FREQUENT_OOM_KILLS",
            Self::FrequentOomWindow => "COLLECTOR_FREQUENT_OOM_WINDOW",
        }
    }

    /// What a value must look like, for type errors.
    const fn expected(self) -> &'static str {
        match self {
            Self::Sinks => "an array of sink names",
            Self::PressureResources => "an array of memory, cpu, io",
            Self::DryRun | Self::EmitNormalExits => "a boolean",
            Self::RingBufferBytes | Self::JournalMaxBytes => "an integer or a size string",
            Self::MetadataWait
            | Self::TombstoneTtl
            | Self::JournalMaxAge
            | Self::PressureWindow
            | Self::ConditionClearAfter
            | Self::FrequentOomWindow => "a duration string such as \"2s\"",
            Self::PressureThreshold => "a percentage string such as \"10%\"",
            Self::FrequentOomKills => "an integer",
            _ => "a string",
        }
    }

    /// Types `raw` and stores it in `config`; on error `config` is unchanged.
    pub(super) fn apply(self, raw: &Raw<'_>, config: &mut RunConfig) -> Result<(), ProblemKind> {
        let wrong_type = || ProblemKind::WrongType { expected: self.expected(), found: raw.type_name() };
        match (self, raw) {
            (Self::Sinks, Raw::Text(text)) => {
                config.sinks = parse_sinks(text.split(','))?;
            }
            (Self::Sinks, Raw::List(items)) => config.sinks = parse_sinks(items.iter().copied())?,
            (Self::PressureResources, Raw::Text(text)) => {
                config.node_health.pressure_resources = parse_pressure_resources(text.split(','))?;
            }
            (Self::PressureResources, Raw::List(items)) => {
                config.node_health.pressure_resources = parse_pressure_resources(items.iter().copied())?;
            }
            (Self::DryRun, Raw::Bool(value)) => config.dry_run = *value,
            (Self::DryRun, Raw::Text(text)) => config.dry_run = parse_bool(text)?,
            (Self::EmitNormalExits, Raw::Bool(value)) => config.emit_normal_exits = *value,
            (Self::EmitNormalExits, Raw::Text(text)) => {
                config.emit_normal_exits = parse_bool(text)?;
            }
            (Self::RingBufferBytes, Raw::Integer(value)) => {
                config.ring_buffer_bytes = ring_bytes(*value)?;
            }
            (Self::RingBufferBytes, Raw::Text(text)) => {
                let size = parse_size(text)?;
                config.ring_buffer_bytes = ring_bytes(i128::from(size.0))?;
            }
            (Self::JournalMaxBytes, Raw::Integer(value)) => {
                let size = u64::try_from(*value).map_err(|_err| ProblemKind::Size {
                    value: value.to_string(),
                    reason: "a size cannot be negative",
                })?;
                config.journal.max_bytes = journal_bytes(ByteSize(size), &value.to_string())?;
            }
            (Self::JournalMaxBytes, Raw::Text(text)) => {
                config.journal.max_bytes = journal_bytes(parse_size(text)?, text)?;
            }
            (Self::FrequentOomKills, Raw::Integer(value)) => {
                config.node_health.frequent_oom_kills = count(&value.to_string())?;
            }
            (Self::FrequentOomKills, Raw::Text(text)) => config.node_health.frequent_oom_kills = count(text)?,
            (_, Raw::Text(text)) => self.apply_text(text, config).ok_or_else(wrong_type)??,
            _ => return Err(wrong_type()),
        }
        Ok(())
    }

    /// Fields whose only form is a string; `None` for the others.
    fn apply_text(self, text: &str, config: &mut RunConfig) -> Option<Result<(), ProblemKind>> {
        let result = match self {
            Self::Format => parse_format(text).map(|format| config.format = format),
            Self::NodeName => parse_node_name(text).map(|name| config.node_name = name),
            Self::StateDir => absolute(text).map(|dir| config.state_dir = dir),
            Self::MetricsAddr => text
                .parse::<SocketAddr>()
                .map(|addr| config.metrics_addr = addr)
                .map_err(|_err| ProblemKind::Address(text.to_owned())),
            Self::Component => parse_component(text).map(|name| config.component = name),
            Self::Kubeconfig if text.is_empty() => Err(ProblemKind::EmptyPath),
            Self::Kubeconfig => {
                config.kubeconfig = Some(PathBuf::from(text));
                Ok(())
            }
            Self::CriSocket => parse_cri_socket(text).map(|socket| config.cri_socket = socket),
            Self::StreamSocket => match text {
                "none" => {
                    config.stream_socket = StreamSocket::Disabled;
                    Ok(())
                }
                path => absolute(path).map(|path| config.stream_socket = StreamSocket::Path(path)),
            },
            Self::MetadataWait => parse_duration(text).and_then(|wait| {
                if wait > MAX_METADATA_WAIT {
                    Err(ProblemKind::DurationRange { value: wait, range: "at most 1m" })
                } else {
                    config.metadata_wait = wait;
                    Ok(())
                }
            }),
            Self::TombstoneTtl => parse_positive(text).map(|ttl| config.tombstone_ttl = ttl),
            Self::JournalMaxAge => parse_positive(text).map(|age| config.journal.max_age = age),
            Self::PressureThreshold => match text.parse::<Percent>() {
                Ok(percent) if percent.tenths > 0 && percent.tenths <= 1000 => {
                    config.node_health.pressure_threshold = percent;
                    Ok(())
                }
                _ => Err(ProblemKind::Percent(text.to_owned())),
            },
            Self::PressureWindow => parse_duration(text).and_then(|window| {
                if window < MIN_PRESSURE_WINDOW || window > MAX_PRESSURE_WINDOW {
                    Err(ProblemKind::DurationRange { value: window, range: "from 2s to 5m" })
                } else {
                    config.node_health.pressure_window = window;
                    Ok(())
                }
            }),
            Self::ConditionClearAfter => {
                parse_positive(text).map(|after| config.node_health.condition_clear_after = after)
            }
            Self::FrequentOomWindow => {
                parse_positive(text).map(|window| config.node_health.frequent_oom_window = window)
            }
            Self::Sinks
            | Self::PressureResources
            | Self::DryRun
            | Self::EmitNormalExits
            | Self::RingBufferBytes
            | Self::JournalMaxBytes
            | Self::FrequentOomKills => {
                return None;
            }
        };
        Some(result)
    }
}

/// `memory,cpu,io` in any order and without repeats; `none` or nothing turns the sampler off.
pub(super) fn parse_pressure_resources<'a>(
    names: impl Iterator<Item = &'a str>,
) -> Result<Vec<PressureResource>, ProblemKind> {
    let mut resources = Vec::new();
    let mut unknown = Vec::new();
    for name in names.map(str::trim).filter(|name| !name.is_empty() && *name != "none") {
        match PressureResource::parse(name) {
            Some(resource) if !resources.contains(&resource) => resources.push(resource),
            Some(_) => {}
            None => unknown.push(name.to_owned()),
        }
    }
    if unknown.is_empty() { Ok(resources) } else { Err(ProblemKind::UnknownPressureResources(unknown)) }
}

pub(super) fn parse_sinks<'a>(names: impl Iterator<Item = &'a str>) -> Result<SinkSelection, ProblemKind> {
    let mut sinks = Vec::new();
    let mut auto = false;
    let mut unknown = Vec::new();
    for name in names.map(str::trim).filter(|name| !name.is_empty()) {
        match name {
            "auto" => auto = true,
            "kubernetes" => sinks.push(Sink::Kubernetes),
            "stdout" => sinks.push(Sink::Stdout),
            "journal" => sinks.push(Sink::Journal),
            other => unknown.push(other.to_owned()),
        }
    }
    if !unknown.is_empty() {
        return Err(ProblemKind::UnknownSinks(unknown));
    }
    match (auto, sinks.is_empty()) {
        (true, true) => Ok(SinkSelection::Auto),
        (true, false) => Err(ProblemKind::AutoWithOthers),
        (false, true) => Err(ProblemKind::NoSinks),
        (false, false) => {
            let mut unique = Vec::with_capacity(sinks.len());
            for sink in sinks {
                if !unique.contains(&sink) {
                    unique.push(sink);
                }
            }
            Ok(SinkSelection::Explicit(unique))
        }
    }
}

fn parse_bool(text: &str) -> Result<bool, ProblemKind> {
    match text.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(ProblemKind::Bool(other.to_owned())),
    }
}

fn parse_format(text: &str) -> Result<OutputFormat, ProblemKind> {
    match text {
        "text" => Ok(OutputFormat::Text),
        "json" => Ok(OutputFormat::Json),
        other => Err(ProblemKind::Format(other.to_owned())),
    }
}

/// A Kubernetes node name: a DNS-1123 subdomain.
pub(super) fn parse_node_name(text: &str) -> Result<String, ProblemKind> {
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if text.len() <= 253 && text.split('.').all(valid_label) {
        Ok(text.to_owned())
    } else {
        Err(ProblemKind::NodeName(text.to_owned()))
    }
}

fn parse_component(text: &str) -> Result<String, ProblemKind> {
    if !text.is_empty() && text.chars().count() <= 128 && !text.chars().any(char::is_control) {
        Ok(text.to_owned())
    } else {
        Err(ProblemKind::Component(text.to_owned()))
    }
}

fn absolute(text: &str) -> Result<PathBuf, ProblemKind> {
    if text.starts_with('/') { Ok(PathBuf::from(text)) } else { Err(ProblemKind::RelativePath(text.to_owned())) }
}

fn parse_cri_socket(text: &str) -> Result<CriSocket, ProblemKind> {
    match text {
        "auto" => Ok(CriSocket::Auto),
        "none" => Ok(CriSocket::Off),
        path => absolute(path).map(CriSocket::Path),
    }
}

fn parse_duration(text: &str) -> Result<HumanDuration, ProblemKind> {
    text.parse().map_err(|reason| ProblemKind::Duration { value: text.to_owned(), reason })
}

fn count(text: &str) -> Result<u32, ProblemKind> {
    match text.trim().parse::<u32>() {
        Ok(count) if count >= 1 => Ok(count),
        _ => Err(ProblemKind::Count(text.to_owned())),
    }
}

fn parse_positive(text: &str) -> Result<HumanDuration, ProblemKind> {
    let duration = parse_duration(text)?;
    if duration.0.is_zero() {
        Err(ProblemKind::DurationRange { value: duration, range: "more than 0s" })
    } else {
        Ok(duration)
    }
}

fn parse_size(text: &str) -> Result<ByteSize, ProblemKind> {
    text.parse().map_err(|reason| ProblemKind::SizeSyntax { value: text.to_owned(), reason })
}

fn ring_bytes(value: i128) -> Result<u32, ProblemKind> {
    u32::try_from(value)
        .ok()
        .filter(|bytes| *bytes >= 4096 && bytes.is_power_of_two())
        .ok_or(ProblemKind::RingSize(value))
}

/// `written` is the value as given, for the message.
fn journal_bytes(size: ByteSize, written: &str) -> Result<ByteSize, ProblemKind> {
    if size < MIN_JOURNAL_BYTES {
        Err(ProblemKind::Size { value: written.to_owned(), reason: "the journal needs at least 1MiB" })
    } else {
        Ok(size)
    }
}
