//! The stream's Unix socket: accepts clients on a thread and runtime of its own, reads each
//! one's subscription line, then writes what the handler queues for it.

use std::{
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use bytes::Bytes;
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Notify, mpsc},
};

use super::{CLIENT_QUEUE, Client, Clients};
use crate::filter::{Filters, parse};

/// The longest subscription line.
const MAX_SUBSCRIPTION_BYTES: u64 = 64 * 1024;
/// How long a new client has to send its subscription line.
const SUBSCRIBE_WITHIN: Duration = Duration::from_secs(5);

/// Why the stream cannot listen.
#[derive(Debug, Error)]
pub enum StreamError {
    /// The path is taken by something that is not a socket.
    #[error("cannot listen on {}: it exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// The directory, the bind or the permissions failed.
    #[error("cannot listen on {} for the stream", path.display())]
    Listen {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The listening socket; removed, and its clients disconnected, when dropped.
pub struct StreamServer {
    path: PathBuf,
    inode: u64,
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl StreamServer {
    /// Listens on `path` (mode 0600; a stale socket there, such as a previous daemon's, is
    /// replaced) and serves `clients` until dropped.
    pub fn bind(path: &Path, clients: Clients) -> Result<Self, StreamError> {
        let listen = |source| StreamError::Listen { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(listen)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(listen)?,
            Ok(_) => return Err(StreamError::NotASocket(path.to_owned())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(listen(err)),
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(listen)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen)?;
        listener.set_nonblocking(true).map_err(listen)?;
        let inode = std::fs::metadata(path).map_err(listen)?.ino();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(listen)?;
        let stop = Arc::new(Notify::new());
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("stream".to_owned())
                .spawn(move || {
                    let _span = tracing::info_span!("stream").entered();
                    runtime.block_on(async move {
                        let listener = match UnixListener::from_std(listener) {
                            Ok(listener) => listener,
                            Err(err) => {
                                tracing::warn!("stream: cannot serve the socket: {err}");
                                return;
                            }
                        };
                        accept(listener, clients, &stop).await;
                    });
                })
                .map_err(listen)?
        };
        Ok(Self { path: path.to_owned(), inode, stop, thread: Some(thread) })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Only our own socket: a newer daemon may have replaced it (a rolling update).
        if std::fs::metadata(&self.path).is_ok_and(|meta| meta.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn accept(listener: UnixListener, clients: Clients, stop: &Notify) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tasks.spawn(serve(stream, clients.clone()));
                }
                Err(err) => {
                    tracing::warn!("stream: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = stop.notified() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Dropping the tasks closes every client's connection.
}

/// One client: its subscription, then its lines until it leaves or is cut off.
async fn serve(stream: UnixStream, clients: Clients) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_SUBSCRIPTION_BYTES));
    let mut subscription = String::new();
    let read = tokio::time::timeout(SUBSCRIBE_WITHIN, reader.read_line(&mut subscription)).await;
    let filters = match read {
        Ok(Ok(_)) => parse::subscription(&subscription).map(Filters::new).map_err(|problems| {
            problems
                .iter()
                .map(|located| format!("{}: {}", located.rule, located.problem))
                .collect::<Vec<_>>()
                .join("; ")
        }),
        Ok(Err(err)) => Err(format!("cannot read the subscription line: {err}")),
        Err(_elapsed) => Err(format!("no subscription line within {SUBSCRIBE_WITHIN:?}")),
    };
    let filters = match filters {
        Ok(filters) => filters,
        Err(why) => {
            clients.metrics.stream_client_cut("bad_filter");
            let answer = serde_json::json!({ "error": why }).to_string() + "\n";
            let _ = write.write_all(answer.as_bytes()).await;
            return;
        }
    };
    let hello = serde_json::json!({ "subscribed": { "rules": filters.rules().len() } }).to_string() + "\n";
    if write.write_all(hello.as_bytes()).await.is_err() {
        return;
    }
    let (lines, mut queued) = mpsc::channel::<Bytes>(CLIENT_QUEUE);
    let cut = Arc::new(Notify::new());
    clients.add(Client { filters, lines, cut: Arc::clone(&cut) });
    let mut reader = reader.into_inner().into_inner();
    let mut scratch = [0_u8; 256];
    loop {
        tokio::select! {
            line = queued.recv() => match line {
                Some(line) => {
                    tokio::select! {
                        written = write.write_all(&line) => if written.is_err() { break },
                        () = cut.notified() => break,
                    }
                }
                None => break,
            },
            // The client has nothing more to say: a read that ends means it left.
            read = reader.read(&mut scratch) => if matches!(read, Ok(0) | Err(_)) { break },
            () = cut.notified() => break,
        }
    }
    drop(queued);
    clients.forget_closed();
}
