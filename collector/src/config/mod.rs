//! Configuration of `collector run`.
//!
//! Every setting has a flag, an environment variable (`COLLECTOR_` and the
//! flag's name: `--metrics-addr` is `COLLECTOR_METRICS_ADDR`) and a key in
//! the TOML file named by `--config` / `COLLECTOR_CONFIG` (there is no
//! default file). A flag beats the variable, which beats the file, which
//! beats the default. Variables set to the empty string count as unset.
//!
//! Validation reports every problem at once, each naming where the bad value
//! came from: `FILE:LINE: key: ...`, `--flag: ...` or `COLLECTOR_X: ...`.
//! Checks that need the system (is the state directory writable, is a
//! cluster reachable) belong to the daemon, not here.

mod check;
mod fields;
mod file;
mod kinds;
mod values;

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use clap::Args;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The CRI socket setting is the metadata stage's own type.
pub use crate::metadata::CriSocket;
pub use check::{CheckArgs, EXIT_PROBLEMS, check};
pub use kinds::{DEFAULT_STREAM_SOCKET, OutputFormat, Sink, SinkSelection, StreamSocket};
pub use values::{ByteSize, DurationSyntax, HumanDuration, Percent, SizeSyntax};

use fields::{Field, Raw};

/// Default `state_dir`: the journal's.
pub use crate::sinks::journal::DEFAULT_STATE_DIR;
use crate::{record::PressureResource, sinks::journal};
/// Default `metrics_addr`: loopback, so pod names are not exposed to the network
/// unless asked for; the DaemonSet in deploy/ passes `--metrics-addr 0.0.0.0:9835` so
/// Prometheus and the kubelet's probes reach it.
pub const DEFAULT_METRICS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9835);
/// Default `component`: the `source.component` of every event (what
/// `kubectl describe` shows under "From").
pub const DEFAULT_COMPONENT: &str = "collector";
/// Default `metadata_wait`.
pub const DEFAULT_METADATA_WAIT: HumanDuration = HumanDuration::from_secs(2);
/// Default `tombstone_ttl`.
pub const DEFAULT_TOMBSTONE_TTL: HumanDuration = HumanDuration::from_secs(5 * 60);
/// Default `journal.max_age`.
pub const DEFAULT_JOURNAL_MAX_AGE: HumanDuration = HumanDuration(journal::DEFAULT_MAX_AGE);
/// Default `journal.max_bytes`.
pub const DEFAULT_JOURNAL_MAX_BYTES: ByteSize = ByteSize(journal::DEFAULT_MAX_BYTES);
/// Default `node_health.pressure_resources`: memory only, the stall that comes before an OOM
/// kill. CPU stalls are normal for a busy container at its limit, so they are asked for.
pub const DEFAULT_PRESSURE_RESOURCES: &[PressureResource] = &[PressureResource::Memory];
/// Default `node_health.pressure_threshold`; `docs/operations.md` says what it was chosen from.
pub const DEFAULT_PRESSURE_THRESHOLD: Percent = Percent { tenths: 50 };
/// Default `node_health.pressure_window`.
pub const DEFAULT_PRESSURE_WINDOW: HumanDuration = HumanDuration::from_secs(10);
/// Default `node_health.condition_clear_after`.
pub const DEFAULT_CONDITION_CLEAR_AFTER: HumanDuration = HumanDuration::from_secs(30 * 60);
/// Default `node_health.frequent_oom_kills`.
pub const DEFAULT_FREQUENT_OOM_KILLS: u32 = 5;
/// Default `node_health.frequent_oom_window`.
pub const DEFAULT_FREQUENT_OOM_WINDOW: HumanDuration = HumanDuration::from_secs(10 * 60);
/// The variable that names the configuration file.
pub const CONFIG_ENV: &str = "COLLECTOR_CONFIG";

/// Limits of the local journal (the `[journal]` table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Entries older than this are removed. Default `24h`; more than 0.
    pub max_age: HumanDuration,
    /// The journal is pruned, oldest first, to stay under this. Default `64MiB`; at least `1MiB`.
    pub max_bytes: ByteSize,
}

/// Node health (the `[node_health]` table): memory pressure episodes and node conditions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeHealthConfig {
    /// What the pressure sampler reads of each container: `memory`, `cpu`, `io` (Events
    /// `MemoryPressure`, `CPUPressure`, `IOPressure`). Default `["memory"]`; empty turns it off.
    pub pressure_resources: Vec<PressureResource>,
    /// A container whose tasks stall on a resource this share of the window starts an episode
    /// (`MemoryPressure`); it ends under half of it. Default `5%`; more than 0, at most 100.
    pub pressure_threshold: Percent,
    /// The window the stall is measured over. Default `10s`; 2s to 5m.
    pub pressure_window: HumanDuration,
    /// A condition set by a one-off fault (a hung task, a kernel log line) is cleared this long
    /// after the last report. Default `30m`; more than 0.
    pub condition_clear_after: HumanDuration,
    /// `FrequentContainerOOM` turns True at more than this many OOM kills on the node within
    /// `frequent_oom_window`. Default `5`; at least 1.
    pub frequent_oom_kills: u32,
    /// See `frequent_oom_kills`. Default `10m`; more than 0.
    pub frequent_oom_window: HumanDuration,
}

impl Default for NodeHealthConfig {
    fn default() -> Self {
        Self {
            pressure_resources: DEFAULT_PRESSURE_RESOURCES.to_vec(),
            pressure_threshold: DEFAULT_PRESSURE_THRESHOLD,
            pressure_window: DEFAULT_PRESSURE_WINDOW,
            condition_clear_after: DEFAULT_CONDITION_CLEAR_AFTER,
            frequent_oom_kills: DEFAULT_FREQUENT_OOM_KILLS,
            frequent_oom_window: DEFAULT_FREQUENT_OOM_WINDOW,
        }
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self { max_age: DEFAULT_JOURNAL_MAX_AGE, max_bytes: DEFAULT_JOURNAL_MAX_BYTES }
    }
}

/// The effective configuration of `collector run`, in the form of the TOML file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Where events go. Default `["auto"]`: kubernetes + journal when a
    /// cluster is reachable, otherwise stdout + journal (see [`SinkSelection::resolve`]).
    pub sinks: SinkSelection,
    /// Output of the stdout sink: `text` or `json`. Default `json`: without a
    /// cluster, stdout usually feeds a log pipeline.
    pub format: OutputFormat,
    /// This node's name, as in the Node object. Default `$NODE_NAME` (set by the
    /// DaemonSet from `spec.nodeName`), then the lowercased hostname.
    pub node_name: String,
    /// Where the journal and other state live. Default `/var/lib/collector`; absolute.
    pub state_dir: PathBuf,
    /// Address of `/metrics`, `/healthz` and `/readyz`. Default `127.0.0.1:9835`.
    pub metrics_addr: SocketAddr,
    /// Decide and journal events but send none to the API server. Default `false`.
    pub dry_run: bool,
    /// Also emit an event when a container's process exits with status 0. Default `false`.
    pub emit_normal_exits: bool,
    /// `source.component` of the events. Default `collector`; 1 to 128 characters.
    pub component: String,
    /// A kubeconfig file. Default none: in-cluster service account credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The CRI socket: `auto`, `none` or an absolute path. Default `auto`.
    pub cri_socket: CriSocket,
    /// Kernel ring buffer size in bytes: a power of two, at least 4096. Default 1 MiB.
    pub ring_buffer_bytes: u32,
    /// How long a record waits for its container's metadata before it is
    /// reported as unresolved. Default `2s`; at most `1m`.
    pub metadata_wait: HumanDuration,
    /// How long a removed pod's identity is kept, so late records still
    /// resolve (and its metric series live). Default `5m`; more than 0.
    pub tombstone_ttl: HumanDuration,
    /// The live stream's Unix socket (mode 0600), or `none`. Default
    /// `/run/collector/stream.sock`.
    pub stream_socket: StreamSocket,
    /// Journal limits.
    pub journal: JournalConfig,
    /// Memory pressure and node conditions.
    pub node_health: NodeHealthConfig,
    /// Filter rules (`[[filters]]` in the file only), in order. Default none: every event passes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<crate::filter::Rule>,
    /// Webhooks (`[[webhooks]]` in the file only), in order. Default none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<crate::sinks::webhook::WebhookConfig>,
    /// The file this came from, if any: SIGHUP re-reads its filters.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
}

impl Default for RunConfig {
    /// The defaults, with an empty `node_name` ([`resolve`] fills it in).
    fn default() -> Self {
        Self {
            sinks: SinkSelection::Auto,
            format: OutputFormat::Json,
            node_name: String::new(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            metrics_addr: DEFAULT_METRICS_ADDR,
            dry_run: false,
            emit_normal_exits: false,
            component: DEFAULT_COMPONENT.to_owned(),
            kubeconfig: None,
            cri_socket: CriSocket::Auto,
            ring_buffer_bytes: collector_common::DEFAULT_RING_BYTES,
            metadata_wait: DEFAULT_METADATA_WAIT,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            stream_socket: StreamSocket::default(),
            journal: JournalConfig::default(),
            node_health: NodeHealthConfig::default(),
            filters: Vec::new(),
            webhooks: Vec::new(),
            source_file: None,
        }
    }
}

/// Options of `collector run`. Values are checked by [`resolve`], so that every
/// problem is reported at once; each flag's variable is named in its help.
#[derive(Args, Clone, Debug, Default)]
pub struct RunArgs {
    /// The configuration file.
    #[command(flatten)]
    pub file: ConfigFileArgs,
    /// Where events go: kubernetes, stdout, journal (repeatable or comma separated), or auto:
    /// kubernetes+journal when a cluster is reachable, else stdout+journal
    /// [env: COLLECTOR_SINK] [default: auto].
    #[arg(long = "sink", value_name = "SINK", value_delimiter = ',')]
    pub sinks: Vec<String>,
    /// Output of the stdout sink: text or json [env: COLLECTOR_FORMAT] [default: json].
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// This node's name [env: COLLECTOR_NODE_NAME] [default: $NODE_NAME, then the hostname].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Directory for the journal and other state [env: COLLECTOR_STATE_DIR]
    /// [default: /var/lib/collector].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<String>,
    /// Address of /metrics, /healthz and /readyz [env: COLLECTOR_METRICS_ADDR]
    /// [default: 127.0.0.1:9835].
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<String>,
    /// Send nothing to the API server [env: COLLECTOR_DRY_RUN].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub dry_run: Option<bool>,
    /// Also report exits with status 0 [env: COLLECTOR_EMIT_NORMAL_EXITS].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub emit_normal_exits: Option<bool>,
    /// source.component of the events [env: COLLECTOR_COMPONENT] [default: collector].
    #[arg(long, value_name = "NAME")]
    pub component: Option<String>,
    /// The cluster and the container runtime.
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Kernel ring buffer size: a power of two of at least 4096, e.g. 1MiB
    /// [env: COLLECTOR_RING_BUFFER_BYTES] [default: 1MiB].
    #[arg(long, value_name = "BYTES")]
    pub ring_buffer_bytes: Option<String>,
    /// Longest wait for a container's metadata, at most 1m [env: COLLECTOR_METADATA_WAIT]
    /// [default: 2s].
    #[arg(long, value_name = "DURATION")]
    pub metadata_wait: Option<String>,
    /// How long a removed pod is remembered [env: COLLECTOR_TOMBSTONE_TTL] [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub tombstone_ttl: Option<String>,
    /// Journal entries older than this are removed [env: COLLECTOR_JOURNAL_MAX_AGE]
    /// [default: 24h].
    #[arg(long, value_name = "DURATION")]
    pub journal_max_age: Option<String>,
    /// Largest journal size, at least 1MiB [env: COLLECTOR_JOURNAL_MAX_BYTES] [default: 64MiB].
    #[arg(long, value_name = "BYTES")]
    pub journal_max_bytes: Option<String>,
    /// Unix socket of the live stream (`collector trace --from`), or none
    /// [env: COLLECTOR_STREAM_SOCKET] [default: /run/collector/stream.sock].
    #[arg(long, value_name = "PATH|none")]
    pub stream_socket: Option<String>,
    /// What to watch for stalls: memory, cpu, io, comma-separated, or none
    /// [env: COLLECTOR_PRESSURE_RESOURCES] [default: memory].
    #[arg(long, value_name = "RESOURCES")]
    pub pressure_resources: Option<String>,
    /// Stall share that starts a MemoryPressure (CPUPressure, IOPressure) episode, e.g. 10%
    /// [env: COLLECTOR_PRESSURE_THRESHOLD] [default: 5%].
    #[arg(long, value_name = "PERCENT")]
    pub pressure_threshold: Option<String>,
    /// Window the memory stall is measured over, 2s to 5m [env: COLLECTOR_PRESSURE_WINDOW]
    /// [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub pressure_window: Option<String>,
    /// A node condition set by a one-off fault clears this long after its last report
    /// [env: COLLECTOR_CONDITION_CLEAR_AFTER] [default: 30m].
    #[arg(long, value_name = "DURATION")]
    pub condition_clear_after: Option<String>,
    /// FrequentContainerOOM turns True above this many OOM kills in the window
    /// [env: COLLECTOR_FREQUENT_OOM_KILLS] [default: 5].
    #[arg(long, value_name = "COUNT")]
    pub frequent_oom_kills: Option<String>,
    /// The FrequentContainerOOM window [env: COLLECTOR_FREQUENT_OOM_WINDOW] [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub frequent_oom_window: Option<String>,
}

/// `--config`, shared by `collector run` and `collector doctor`.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigFileArgs {
    /// TOML configuration file [env: COLLECTOR_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Where the daemon finds the cluster and the container runtime; shared by
/// `collector run` and `collector doctor`, which checks what `run` would use.
#[derive(Args, Clone, Debug, Default)]
pub struct SourceArgs {
    /// kubeconfig file [env: COLLECTOR_KUBECONFIG] [default: in-cluster credentials].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<String>,
    /// CRI socket: a path, auto or none [env: COLLECTOR_CRI_SOCKET] [default: auto].
    #[arg(long, value_name = "PATH|auto|none")]
    pub cri_socket: Option<String>,
}

impl RunArgs {
    /// The value a flag gave `field`, if any.
    fn raw(&self, field: Field) -> Option<Raw<'_>> {
        fn text(value: &Option<String>) -> Option<Raw<'_>> {
            value.as_deref().map(Raw::Text)
        }
        match field {
            Field::Sinks if self.sinks.is_empty() => None,
            Field::Sinks => Some(Raw::List(self.sinks.iter().map(String::as_str).collect())),
            Field::Format => text(&self.format),
            Field::NodeName => text(&self.node_name),
            Field::StateDir => text(&self.state_dir),
            Field::MetricsAddr => text(&self.metrics_addr),
            Field::DryRun => self.dry_run.map(Raw::Bool),
            Field::EmitNormalExits => self.emit_normal_exits.map(Raw::Bool),
            Field::Component => text(&self.component),
            Field::Kubeconfig => text(&self.sources.kubeconfig),
            Field::CriSocket => text(&self.sources.cri_socket),
            Field::RingBufferBytes => text(&self.ring_buffer_bytes),
            Field::MetadataWait => text(&self.metadata_wait),
            Field::TombstoneTtl => text(&self.tombstone_ttl),
            Field::JournalMaxAge => text(&self.journal_max_age),
            Field::JournalMaxBytes => text(&self.journal_max_bytes),
            Field::StreamSocket => text(&self.stream_socket),
            Field::PressureResources => text(&self.pressure_resources),
            Field::PressureThreshold => text(&self.pressure_threshold),
            Field::PressureWindow => text(&self.pressure_window),
            Field::ConditionClearAfter => text(&self.condition_clear_after),
            Field::FrequentOomKills => text(&self.frequent_oom_kills),
            Field::FrequentOomWindow => text(&self.frequent_oom_window),
        }
    }
}

/// What is wrong with one value.
#[derive(Debug, Error)]
pub enum ProblemKind {
    /// The file could not be read.
    #[error("cannot read the configuration file: {0}")]
    Unreadable(#[source] io::Error),
    /// The file is not valid TOML.
    #[error("invalid TOML: {0}")]
    Syntax(String),
    /// A key the configuration does not have.
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    /// A value of the wrong TOML type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the key takes.
        expected: &'static str,
        /// The TOML type given.
        found: &'static str,
    },
    /// A duration that does not parse.
    #[error("invalid duration {value:?}: {reason}")]
    Duration {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: DurationSyntax,
    },
    /// A duration out of its range.
    #[error("{value} is out of range: must be {range}")]
    DurationRange {
        /// The duration given.
        value: HumanDuration,
        /// The allowed range.
        range: &'static str,
    },
    /// A size that does not parse.
    #[error("invalid size {value:?}: {reason}")]
    SizeSyntax {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: SizeSyntax,
    },
    /// A size out of its range.
    #[error("invalid size {value}: {reason}")]
    Size {
        /// The size given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A percentage that does not parse or is out of range.
    #[error(
        "invalid percentage {0:?}: expected more than 0% and at most 100%, with at most one decimal, such as 10% or 1.5%"
    )]
    Percent(String),
    /// A count that does not parse or is under 1.
    #[error("invalid count {0:?}: expected a whole number of at least 1")]
    Count(String),
    /// A ring buffer size that the kernel would refuse.
    #[error("ring buffer size {0} is not a power of two of at least 4096 (and at most 2GiB)")]
    RingSize(i128),
    /// Not an `IP:PORT`.
    #[error("invalid address {0:?}: expected IP:PORT, such as 0.0.0.0:9835 or [::]:9835")]
    Address(String),
    /// Sink names that do not exist.
    #[error("unknown sink {} (expected kubernetes, stdout, journal or auto)", quoted(.0))]
    UnknownSinks(Vec<String>),
    /// Pressure resources that do not exist.
    #[error("unknown pressure resource {} (expected memory, cpu, io or none)", quoted(.0))]
    UnknownPressureResources(Vec<String>),
    /// `auto` given with other sinks.
    #[error("`auto` cannot be combined with other sinks")]
    AutoWithOthers,
    /// An empty list of sinks.
    #[error("no sink given (expected kubernetes, stdout, journal or auto)")]
    NoSinks,
    /// Not `text` or `json`.
    #[error("unknown format {0:?} (expected text or json)")]
    Format(String),
    /// Not a boolean.
    #[error("invalid boolean {0:?} (expected true, false, 1 or 0)")]
    Bool(String),
    /// A path that must be absolute is not.
    #[error("{0:?} is not an absolute path")]
    RelativePath(String),
    /// An empty path.
    #[error("the path is empty")]
    EmptyPath,
    /// Not a valid Kubernetes node name.
    #[error(
        "invalid node name {0:?}: expected lowercase letters, digits, '-' and '.', \
         at most 253 characters"
    )]
    NodeName(String),
    /// No node name anywhere.
    #[error(
        "unreadable or empty, so the node name is unknown: set --node-name, \
         COLLECTOR_NODE_NAME or NODE_NAME"
    )]
    NoNodeName,
    /// A `[[filters]]` rule that is wrong.
    #[error("filter rule {rule}: {problem}")]
    Filter {
        /// The rule's name, quoted, or `#N` (1-based) when it has none.
        rule: String,
        /// What is wrong with it.
        #[source]
        problem: Box<crate::filter::parse::FilterProblem>,
    },
    /// A `[[webhooks]]` table that is wrong.
    #[error("webhook {webhook}: {problem}")]
    Webhook {
        /// The webhook's name, quoted, or `#N` (1-based) when it has none.
        webhook: String,
        /// What is wrong with it.
        #[source]
        problem: Box<crate::sinks::webhook::parse::WebhookProblem>,
    },
    /// A component name the API would refuse.
    #[error("invalid component {0:?}: expected 1 to 128 characters, no control characters")]
    Component(String),
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ")
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file, at `line` (1-based) when known, for `key` when known.
    File {
        /// The file.
        path: PathBuf,
        /// The line of the key or error.
        line: Option<usize>,
        /// The key (dotted for `[journal]`); none when the message names it.
        key: Option<String>,
    },
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
    /// The hostname, the node name's last fallback.
    Hostname,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path, line, key } => {
                write!(f, "{}", path.display())?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                }
                if let Some(key) = key {
                    write!(f, ": {key}")?;
                }
                Ok(())
            }
            Self::Env(name) => f.write_str(name),
            Self::Flag(flag) => f.write_str(flag),
            Self::Hostname => f.write_str("hostname"),
        }
    }
}

/// One problem with the configuration, displayed as `ORIGIN: WHAT`.
#[derive(Debug, Error)]
#[error("{origin}: {kind}")]
pub struct ConfigProblem {
    /// Where the bad value came from.
    pub origin: Origin,
    /// What is wrong with it.
    pub kind: ProblemKind,
}

/// The effective configuration: flags, then `env`, then the file, then defaults.
///
/// `env` looks up a variable (`|name| std::env::var(name).ok()` in the
/// daemon); tests pass a map. Returns every problem found, in the order
/// file, environment, flags.
pub fn resolve(args: &RunArgs, env: &impl Fn(&str) -> Option<String>) -> Result<RunConfig, Vec<ConfigProblem>> {
    resolve_with(args, env, system_hostname)
}

fn system_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok()
}

/// [`resolve`] with the hostname lookup injected.
fn resolve_with(
    args: &RunArgs,
    env: &impl Fn(&str) -> Option<String>,
    hostname: impl FnOnce() -> Option<String>,
) -> Result<RunConfig, Vec<ConfigProblem>> {
    let env = |name: &str| env(name).filter(|value| !value.is_empty());
    let mut config = RunConfig::default();
    let mut problems = Vec::new();

    if let Some(path) = args.file.config.clone().or_else(|| env(CONFIG_ENV).map(PathBuf::from)) {
        file::apply_file(&path, &mut config, &mut problems);
        config.source_file = Some(path);
    }
    for field in Field::ALL {
        if let Some(value) = env(field.env())
            && let Err(kind) = field.apply(&Raw::Text(&value), &mut config)
        {
            problems.push(ConfigProblem { origin: Origin::Env(field.env()), kind });
        }
    }
    for field in Field::ALL {
        if let Some(raw) = args.raw(field)
            && let Err(kind) = field.apply(&raw, &mut config)
        {
            problems.push(ConfigProblem { origin: Origin::Flag(field.flag()), kind });
        }
    }
    if config.node_name.is_empty() {
        match default_node_name(&env, hostname) {
            Ok(name) => config.node_name = name,
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() { Ok(config) } else { Err(problems) }
}

/// The filter rules of the configuration file at `path`, for a reload: the whole file is read
/// as at start-up, and any problem in it (filters or not) keeps the rules in force.
pub fn reload_filters(path: &Path) -> Result<Vec<crate::filter::Rule>, Vec<ConfigProblem>> {
    let mut config = RunConfig::default();
    let mut problems = Vec::new();
    file::apply_file(path, &mut config, &mut problems);
    if problems.is_empty() { Ok(config.filters) } else { Err(problems) }
}

/// `$NODE_NAME` (the DaemonSet's downward API), else the hostname lowercased,
/// as the kubelet does when it registers the node.
fn default_node_name(
    env: &impl Fn(&str) -> Option<String>,
    hostname: impl FnOnce() -> Option<String>,
) -> Result<String, ConfigProblem> {
    if let Some(name) = env("NODE_NAME") {
        return fields::parse_node_name(name.trim())
            .map_err(|kind| ConfigProblem { origin: Origin::Env("NODE_NAME"), kind });
    }
    let problem = |kind| ConfigProblem { origin: Origin::Hostname, kind };
    let host = hostname()
        .map(|host| host.trim().to_lowercase())
        .filter(|host| !host.is_empty())
        .ok_or_else(|| problem(ProblemKind::NoNodeName))?;
    fields::parse_node_name(&host).map_err(problem)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
