//! The live stream: records and events as JSON lines on a Unix socket, for other node components
//! and `collector trace --from`. A client sends one line of filter rules (the `[[filters]]`
//! syntax, as `filters = [...]`) and then receives what they pass:
//!
//! ```text
//! {"subscribed":{"rules":1}}
//! {"record":{"type":"exit",...}}
//! {"event":{"kind":"Event",...}}
//! ```
//!
//! The handler encodes each line once and hands the same bytes to every client that wants it. A
//! client that falls [`CLIENT_QUEUE`] lines behind is cut off and counted, never waited for.

mod server;

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicBool, Ordering},
};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{Notify, mpsc};

pub use server::{StreamError, StreamServer};

use crate::{
    filter::{Filters, Verdict},
    sinks::handler::{Dispatch, Handler},
    telemetry::Metrics,
};

/// Lines a client may be behind before it is cut off.
pub const CLIENT_QUEUE: usize = 4096;

/// One connected client.
struct Client {
    filters: Filters,
    lines: mpsc::Sender<Bytes>,
    /// Told when the client is cut off, so its connection closes even while a write blocks.
    cut: Arc<Notify>,
}

/// The clients, shared by the handler (which sends) and the server (which adds them).
#[derive(Clone)]
pub struct Clients {
    list: Arc<Mutex<Vec<Client>>>,
    /// Set while there is a client: the daemon then hands over every record, not only those
    /// with events.
    active: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Clients {
    /// No clients yet.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { list: Arc::default(), active: Arc::default(), metrics }
    }

    fn add(&self, client: Client) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.push(client);
        self.update(&list);
    }

    /// Forgets clients that went away.
    fn forget_closed(&self) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|client| !client.lines.is_closed());
        self.update(&list);
    }

    fn update(&self, list: &[Client]) {
        self.active.store(!list.is_empty(), Ordering::Relaxed);
        self.metrics.set_stream_clients(list.len());
    }
}

/// `{"<key>":<json>}\n`.
fn line(key: &str, json: &[u8]) -> Bytes {
    let mut line = BytesMut::with_capacity(json.len() + key.len() + 6);
    line.put_slice(b"{\"");
    line.put_slice(key.as_bytes());
    line.put_slice(b"\":");
    line.put_slice(json);
    line.put_slice(b"}\n");
    line.freeze()
}

/// The handler that feeds the stream's clients.
pub struct StreamHandler {
    clients: Clients,
}

impl StreamHandler {
    /// A handler for `clients`.
    pub const fn new(clients: Clients) -> Self {
        Self { clients }
    }
}

impl Handler for StreamHandler {
    fn name(&self) -> &str {
        "stream"
    }

    fn every_record(&self) -> Option<Arc<AtomicBool>> {
        Some(Arc::clone(&self.clients.active))
    }

    fn handle(&mut self, dispatch: &Dispatch) {
        let mut list = self.clients.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.is_empty() {
            return;
        }
        let record = &dispatch.record;
        let record_line = dispatch.fresh.then(|| line("record", &dispatch.record_json()));
        // What the API server is sent; a spam-filtered or node-only event is in the journal only.
        let events: Vec<_> = dispatch
            .events
            .iter()
            .filter_map(|decided| {
                let write = decided.write()?;
                let json = serde_json::to_vec(write.event()).ok()?;
                Some((line("event", &json), &decided.spec))
            })
            .collect();
        let mut sent = 0;
        let before = list.len();
        list.retain(|client| {
            let mut wanted = Vec::with_capacity(1 + events.len());
            if let Some(line) = &record_line
                && client.filters.pass_record(record, dispatch.events.iter().map(|decided| &decided.spec))
            {
                wanted.push(line);
            }
            for (line, spec) in &events {
                if matches!(client.filters.decide(spec, record), Verdict::Pass { .. }) {
                    wanted.push(line);
                }
            }
            for line in wanted {
                match client.lines.try_send(line.clone()) {
                    Ok(()) => sent += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.clients.metrics.stream_client_cut("slow");
                        client.cut.notify_one();
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        self.clients.metrics.stream_lines(sent);
        if list.len() != before {
            self.clients.update(&list);
        }
    }
}

#[cfg(test)]
mod tests;
