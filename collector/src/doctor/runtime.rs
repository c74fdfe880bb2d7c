//! The container runtime: its CRI socket, and whether it answers `Version`.
//! Without it the daemon runs, but names containers only through the API
//! server's pod watch, if at all.

use std::{path::Path, time::Duration};

use super::{Check, chain};
use crate::{
    escape::escape_bytes,
    metadata::{self, CONTAINERD_SOCKET, CRIO_SOCKET, CriSocket, MetadataError, RuntimeVersion},
};

const NAME: &str = "cri";

/// How long the runtime gets to answer, as the metadata cache gives each call.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The CRI check, and the runtime that answered (`containerd 1.6.20~ds1`).
pub(super) async fn check(cri: &CriSocket) -> (Check, Option<String>) {
    let socket = match metadata::find_cri_socket(cri) {
        Ok(Some(socket)) => socket,
        Ok(None) => return (not_found(cri), None),
        Err(err) => return (missing(&err), None),
    };
    let answer = metadata::runtime_version(&socket, TIMEOUT).await;
    let runtime = answer.as_ref().ok().map(|version| format!("{} {}", version.name, version.version));
    (answered(&socket, &answer), runtime)
}

/// No socket to ask: CRI is off, or `auto` found none.
fn not_found(cri: &CriSocket) -> Check {
    match cri {
        CriSocket::Off => Check::ok(NAME, "not used (--cri-socket none): containers are named from the API server"),
        _ => Check::warn(
            NAME,
            format!(
                "no CRI socket at {CONTAINERD_SOCKET} or {CRIO_SOCKET}: containers are named only through the API \
                 server's pod watch, or not at all"
            ),
            format!(
                "mount the runtime's socket into the pod (hostPath {CONTAINERD_SOCKET}), or pass --cri-socket PATH"
            ),
        ),
    }
}

/// An explicit socket that does not exist: `collector run` stops on it.
fn missing(err: &MetadataError) -> Check {
    Check::fail(
        NAME,
        escape_bytes(err.to_string().as_bytes()),
        "mount the runtime's socket at that path (hostPath), or correct --cri-socket (COLLECTOR_CRI_SOCKET)",
    )
}

/// What the runtime on `socket` answered to `Version`.
fn answered(socket: &Path, answer: &Result<RuntimeVersion, MetadataError>) -> Check {
    let at = escape_bytes(socket.as_os_str().as_encoded_bytes());
    match answer {
        Ok(version) => Check::ok(
            NAME,
            format!(
                "{} {} (CRI {}) at {at}",
                escape_bytes(version.name.as_bytes()),
                escape_bytes(version.version.as_bytes()),
                escape_bytes(version.api_version.as_bytes())
            ),
        ),
        Err(err) => Check::warn(
            NAME,
            format!("{at} does not answer CRI Version: {}", escape_bytes(cause(err).as_bytes())),
            "check that the runtime is running and serves CRI on that socket (containerd: the cri plugin is enabled)",
        ),
    }
}

/// Why a CRI call failed: tonic's status carries the transport's error as its
/// message (its own text adds a debug dump of the same error).
fn cause(err: &MetadataError) -> String {
    match err {
        MetadataError::Cri { source, .. } if !source.message().is_empty() => format!("{err}: {}", source.message()),
        MetadataError::Cri { source, .. } => format!("{err}: {}", source.code()),
        other => chain(other),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::doctor::Status;

    #[test]
    fn a_runtime_that_answers_is_named() {
        let version = RuntimeVersion {
            name: "containerd".to_owned(),
            version: "1.6.20~ds1".to_owned(),
            api_version: "v1".to_owned(),
        };
        let check = answered(Path::new(CONTAINERD_SOCKET), &Ok(version));
        assert_eq!(check.status, Status::Ok);
        assert_eq!(check.detail, "containerd 1.6.20~ds1 (CRI v1) at /run/containerd/containerd.sock");
    }

    #[test]
    fn a_runtime_that_does_not_answer_is_a_warning_with_the_cause() {
        let err = MetadataError::CriTimeout { call: "Version", after: Duration::from_secs(2) };
        assert_eq!(
            answered(Path::new("/run/c.sock"), &Err(err)).problem_line(),
            "cri: /run/c.sock does not answer CRI Version: CRI Version timed out after 2s; fix: check that the \
             runtime is running and serves CRI on that socket (containerd: the cri plugin is enabled)"
        );
    }

    #[test]
    fn no_socket_is_a_warning_and_a_missing_explicit_one_a_failure() {
        let auto = not_found(&CriSocket::Auto);
        assert_eq!(auto.status, Status::Warn);
        assert_eq!(
            auto.problem_line(),
            "cri: no CRI socket at /run/containerd/containerd.sock or /var/run/crio/crio.sock: containers are named \
             only through the API server's pod watch, or not at all; fix: mount the runtime's socket into the pod \
             (hostPath /run/containerd/containerd.sock), or pass --cri-socket PATH"
        );
        assert_eq!(not_found(&CriSocket::Off).status, Status::Ok);
        let gone = missing(&MetadataError::SocketMissing(PathBuf::from("/x/cri.sock")));
        assert_eq!(gone.status, Status::Fail);
        assert_eq!(gone.detail, "CRI socket /x/cri.sock does not exist");
    }

    #[tokio::test]
    async fn a_socket_nobody_serves_does_not_answer() {
        let dir = std::env::temp_dir().join(format!("collector-doctor-cri-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("cri.sock");
        // A socket left by a runtime that stopped: connections are refused.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let (check, runtime) = check(&CriSocket::Path(socket.clone())).await;
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert_eq!(
            check.detail,
            format!(
                "{} does not answer CRI Version: CRI Version failed: Connection refused (os error 111)",
                socket.display()
            )
        );
        assert_eq!(runtime, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
