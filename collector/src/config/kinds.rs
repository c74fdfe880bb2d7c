//! The settings that name a choice: where events go, the stdout format, the CRI socket and the
//! stream socket, each with its text form in flags, variables and the file.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::{
    CriSocket, RunConfig,
    fields::{self, Field, Raw},
};

/// Where events go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    /// The Kubernetes API server (core/v1 Events).
    Kubernetes,
    /// One line per event on standard output.
    Stdout,
    /// The local journal under the state directory.
    Journal,
}

/// The sinks asked for. In the file, flags and variables: a list of
/// `kubernetes`, `stdout`, `journal`, or `auto` alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSelection {
    /// `kubernetes` and `journal` when a cluster is reachable, otherwise `stdout` and `journal`.
    Auto,
    /// Exactly these, without repeats, in the order given.
    Explicit(Vec<Sink>),
}

impl SinkSelection {
    /// The sinks to run, once the daemon knows whether a cluster is reachable.
    pub fn resolve(&self, cluster_reachable: bool) -> Vec<Sink> {
        match self {
            Self::Auto if cluster_reachable => vec![Sink::Kubernetes, Sink::Journal],
            Self::Auto => vec![Sink::Stdout, Sink::Journal],
            Self::Explicit(sinks) => sinks.clone(),
        }
    }
}

impl Serialize for SinkSelection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => ["auto"].serialize(serializer),
            Self::Explicit(sinks) => sinks.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for SinkSelection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            Many(Vec<String>),
        }
        let parsed = match Form::deserialize(deserializer)? {
            Form::One(text) => fields::parse_sinks(text.split(',')),
            Form::Many(names) => fields::parse_sinks(names.iter().map(String::as_str)),
        };
        parsed.map_err(de::Error::custom)
    }
}

/// How the stdout sink prints events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// The file form of the one CRI socket setting: `auto`, `none` or a path.
impl Serialize for CriSocket {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => serializer.serialize_str("auto"),
            Self::Off => serializer.serialize_str("none"),
            Self::Path(path) => path.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for CriSocket {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut config = RunConfig::default();
        Field::CriSocket.apply(&Raw::Text(&text), &mut config).map_err(de::Error::custom)?;
        Ok(config.cri_socket)
    }
}

/// Where the live stream listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamSocket {
    /// `none`: no stream.
    Disabled,
    /// An absolute path for the Unix socket.
    Path(PathBuf),
}

/// Default `stream_socket`.
pub const DEFAULT_STREAM_SOCKET: &str = "/run/collector/stream.sock";

impl Default for StreamSocket {
    fn default() -> Self {
        Self::Path(PathBuf::from(DEFAULT_STREAM_SOCKET))
    }
}

impl Serialize for StreamSocket {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Disabled => serializer.serialize_str("none"),
            Self::Path(path) => path.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for StreamSocket {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut config = RunConfig::default();
        Field::StreamSocket.apply(&Raw::Text(&text), &mut config).map_err(de::Error::custom)?;
        Ok(config.stream_socket)
    }
}
