//! The one interface every destination implements. A destination is registered, not wired into
//! the event loop: each gets a bounded queue and a thread of its own, so a slow disk or a stalled
//! pipe delays only itself, never the ring reader or another handler. The event loop never
//! waits: what a full queue cannot take is dropped and counted, per handler
//! (`collector_handler_dropped_total{handler}`, and `collector_events_dropped_total{cause=
//! "queue_full"}` per event).

use std::{
    io,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use bytes::Bytes;

use crate::{
    record::Record,
    recorder::{EventSpec, Write},
    telemetry::{DropCause, Metrics},
};

/// Items a handler's queue holds before the event loop drops for it. One item is one record
/// with its events; a storm of 4096 deaths fits while a handler is stalled.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// How often an idle handler's [`Handler::tick`] runs.
pub const TICK_EVERY: Duration = Duration::from_millis(250);

/// One record and what the recorder decided for each event it caused.
#[derive(Debug)]
pub struct Dispatch {
    /// The record behind the events.
    pub record: Record,
    /// The events, in order; none for a record handed only to handlers that want every record.
    pub events: Vec<Decided>,
    /// Whether handlers see this record for the first time; false for events that come back
    /// from a mutate webhook after their record went out.
    pub fresh: bool,
    /// The record as `collector trace --format json` prints it, encoded once for every handler.
    encoded: OnceLock<Bytes>,
}

impl Dispatch {
    /// A record seen for the first time, with its events.
    pub fn new(record: Record, events: Vec<Decided>) -> Self {
        Self { record, events, fresh: true, encoded: OnceLock::new() }
    }

    /// Events of a record that already went out (a mutate webhook answered for them), with the
    /// record's JSON as it was encoded for the webhooks.
    pub fn again(record: Record, record_json: Bytes, events: Vec<Decided>) -> Self {
        Self { fresh: false, ..Self::new(record, events).with_record_json(record_json) }
    }

    /// The same, with the record's JSON already encoded (for a mutate webhook).
    #[must_use]
    pub fn with_record_json(self, record_json: Bytes) -> Self {
        Self { encoded: OnceLock::from(record_json), ..self }
    }

    /// The record's JSON, without a newline: encoded by the first handler that asks, then shared.
    pub fn record_json(&self) -> Bytes {
        self.encoded.get_or_init(|| encode_record(&self.record)).clone()
    }
}

/// `record` as `collector trace --format json` prints it, without a newline.
pub fn encode_record(record: &Record) -> Bytes {
    let mut json = Vec::new();
    match crate::output::write_record(record, &mut json) {
        Ok(()) => Bytes::from(json),
        // A record is plain data: this cannot fail, but a `null` beats a panic.
        Err(err) => {
            tracing::warn!("cannot encode a record as JSON: {err}");
            Bytes::from_static(b"null")
        }
    }
}

/// One event and the recorder's decision on it.
#[derive(Debug)]
pub struct Decided {
    /// The event as the collector decided it, before aggregation and the spam filter.
    pub spec: EventSpec,
    /// Whether and how it goes to the API server.
    pub delivery: Delivery,
}

impl Decided {
    /// The write to the API server, if it gets one.
    pub fn write(&self) -> Option<&Write> {
        match &self.delivery {
            Delivery::Write(write) => Some(write),
            Delivery::SpamFiltered | Delivery::NodeOnly => None,
        }
    }
}

/// What becomes of an event on its way to the API server.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "a write is the common case, held as Option<Write> was; boxing it would allocate per event"
)]
pub enum Delivery {
    /// The recorder's write: a POST, or a PATCH of an earlier event's count.
    Write(Write),
    /// client-go's spam filter dropped it; the node's history keeps it.
    SpamFiltered,
    /// A Normal container end without `--emit-normal-exits`: for the node's history only.
    NodeOnly,
}

/// A destination of the daemon's events. Runs on its own thread: it may block.
pub trait Handler: Send + 'static {
    /// Its name in metrics and logs (`journal`, `stdout`, `webhook/audit`).
    fn name(&self) -> &str;

    /// A flag that, while set, asks for every record, also those that caused no event (the live
    /// stream while it has clients); `None`, the default, asks for records with events only.
    fn every_record(&self) -> Option<Arc<AtomicBool>> {
        None
    }

    /// Handles one record's events.
    fn handle(&mut self, dispatch: &Dispatch);

    /// How long a stopping daemon waits for this handler to work through its queue, if not the
    /// daemon's default: the journal, the node's durable copy, gets longer than a pipe or a peer.
    fn drain_on_stop(&self) -> Option<Duration> {
        None
    }

    /// Periodic work (pruning, gauges), about every [`TICK_EVERY`], between items.
    fn tick(&mut self) {}

    /// The daemon stops: every queued item has been handled.
    fn finish(&mut self) {}
}

impl Queue {
    fn wants_every_record(&self) -> bool {
        self.every_record.as_ref().is_some_and(|flag| flag.load(Ordering::Relaxed))
    }
}

/// The registered handlers.
pub struct Handlers {
    metrics: Arc<Metrics>,
    queues: Vec<Queue>,
}

struct Queue {
    name: String,
    drain: Option<Duration>,
    every_record: Option<Arc<AtomicBool>>,
    tx: SyncSender<Arc<Dispatch>>,
    done: mpsc::Receiver<()>,
    thread: JoinHandle<()>,
}

impl Handlers {
    /// No handlers yet; drops are counted in `metrics`.
    pub const fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics, queues: Vec::new() }
    }

    /// Starts `handler` on its own thread behind a queue of `capacity` items.
    pub fn register(&mut self, mut handler: Box<dyn Handler>, capacity: usize) -> io::Result<()> {
        let name = handler.name().to_owned();
        let drain = handler.drain_on_stop();
        let every_record = handler.every_record();
        let (tx, rx) = mpsc::sync_channel::<Arc<Dispatch>>(capacity.max(1));
        let (done_tx, done) = mpsc::channel();
        let span = tracing::info_span!("handler", handler = %name);
        let thread = thread::Builder::new().name(format!("handler-{name}")).spawn(move || {
            // Every line a handler logs says which one.
            let _span = span.entered();
            let mut last_tick = Instant::now();
            loop {
                match rx.recv_timeout(TICK_EVERY) {
                    Ok(dispatch) => handler.handle(&dispatch),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                if last_tick.elapsed() >= TICK_EVERY {
                    handler.tick();
                    last_tick = Instant::now();
                }
            }
            handler.finish();
            let _ = done_tx.send(());
        })?;
        self.queues.push(Queue { name, drain, every_record, tx, done, thread });
        Ok(())
    }

    /// The registered handlers' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.queues.iter().map(|queue| queue.name.as_str()).collect()
    }

    /// Whether some handler wants records that caused no event right now.
    pub fn wants_every_record(&self) -> bool {
        self.queues.iter().any(|queue| queue.wants_every_record())
    }

    /// Hands `dispatch` to every handler without waiting; a handler whose queue is full (or
    /// whose thread has died) loses it, counted.
    pub fn dispatch(&self, dispatch: Dispatch) {
        if self.queues.is_empty() {
            return;
        }
        let events = dispatch.events.len();
        let shared = Arc::new(dispatch);
        for queue in &self.queues {
            if events == 0 && !queue.wants_every_record() {
                continue;
            }
            match queue.tx.try_send(Arc::clone(&shared)) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.metrics.handler_dropped(&queue.name);
                    (0..events).for_each(|_| self.metrics.event_dropped(DropCause::QueueFull));
                }
            }
        }
    }

    /// Closes every queue and waits for the handlers, together, to work through what is
    /// queued: each for its own [`Handler::drain_on_stop`], else for `timeout`. A handler still
    /// busy then (a hung pipe) is left behind, and named with the time it had.
    pub fn stop(self, timeout: Duration) -> Vec<(String, Duration)> {
        let start = Instant::now();
        let mut waiting = Vec::new();
        for queue in self.queues {
            drop(queue.tx);
            waiting.push((queue.name, queue.drain.unwrap_or(timeout), queue.done, queue.thread));
        }
        let mut stuck = Vec::new();
        for (name, drain, done, thread) in waiting {
            match done.recv_timeout((start + drain).saturating_duration_since(Instant::now())) {
                // Finished, or panicked (the sender dropped): either way the thread is over.
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                    let _ = thread.join();
                }
                Err(RecvTimeoutError::Timeout) => stuck.push((name, drain)),
            }
        }
        stuck
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, mpsc::Receiver};

    use super::*;
    use crate::{clock::Timestamp, record::CgroupChange};

    /// Records what it handled; blocks on `gate` before each item if it has one.
    struct Probe {
        name: &'static str,
        seen: Arc<Mutex<Vec<u64>>>,
        gate: Option<Receiver<()>>,
        finished: Arc<Mutex<bool>>,
        drain: Option<Duration>,
    }

    impl Handler for Probe {
        fn name(&self) -> &str {
            self.name
        }

        fn handle(&mut self, dispatch: &Dispatch) {
            if let Some(gate) = &self.gate {
                let _ = gate.recv();
            }
            if let Record::CgroupMkdir(change) = &dispatch.record {
                self.seen.lock().unwrap().push(change.cgroup_id);
            }
        }

        fn finish(&mut self) {
            *self.finished.lock().unwrap() = true;
        }

        fn drain_on_stop(&self) -> Option<Duration> {
            self.drain
        }
    }

    fn dispatch(id: u64) -> Dispatch {
        let record = Record::CgroupMkdir(Box::new(CgroupChange {
            time: Timestamp(0),
            cgroup_id: id,
            cgroup_path: "/x".into(),
            identity: crate::record::Identity::default(),
        }));
        let spec =
            EventSpec::new(crate::recorder::ObjectReference::node("n"), crate::recorder::EventType::Warning, "R", "m");
        Dispatch::new(record, vec![Decided { spec, delivery: Delivery::SpamFiltered }])
    }

    /// What a [`Probe`] handled, and whether it finished.
    type Seen = (Arc<Mutex<Vec<u64>>>, Arc<Mutex<bool>>);

    fn probe(name: &'static str, gate: Option<Receiver<()>>) -> (Probe, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(Mutex::new(false));
        (Probe { name, seen: Arc::clone(&seen), gate, finished: Arc::clone(&finished), drain: None }, (seen, finished))
    }

    fn sample(metrics: &Metrics, line_start: &str) -> String {
        let text = metrics.encode().unwrap();
        text.lines().find(|line| line.starts_with(line_start)).unwrap_or_default().to_owned()
    }

    #[test]
    fn a_stalled_handler_drops_what_its_queue_cannot_hold_and_delays_no_one() {
        let metrics = Arc::new(Metrics::new("test"));
        let mut handlers = Handlers::new(Arc::clone(&metrics));
        let (gate_tx, gate_rx) = mpsc::channel();
        let (stalled, (stalled_seen, _)) = probe("stalled", Some(gate_rx));
        let (fast, (fast_seen, fast_finished)) = probe("fast", None);
        handlers.register(Box::new(stalled), 2).unwrap();
        handlers.register(Box::new(fast), 100).unwrap();
        assert_eq!(handlers.names(), ["stalled", "fast"]);
        let started = Instant::now();
        for id in 0..10 {
            handlers.dispatch(dispatch(id));
        }
        // Never waits for the stalled one.
        assert!(started.elapsed() < Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while fast_seen.lock().unwrap().len() < 10 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*fast_seen.lock().unwrap(), (0..10).collect::<Vec<_>>());
        // The stalled one holds one item in hand and two queued: the other seven are dropped.
        let dropped = sample(&metrics, "collector_handler_dropped_total{handler=\"stalled\"}");
        assert!(dropped.ends_with(" 7") || dropped.ends_with(" 8"), "{dropped}");
        assert_eq!(sample(&metrics, "collector_handler_dropped_total{handler=\"fast\"}"), "");
        for _ in 0..10 {
            let _ = gate_tx.send(());
        }
        let stuck = handlers.stop(Duration::from_secs(5));
        assert!(stuck.is_empty(), "{stuck:?}");
        let handled = stalled_seen.lock().unwrap().len();
        assert!(handled == 2 || handled == 3, "{handled}");
        assert_eq!(
            sample(&metrics, "collector_events_dropped_total{cause=\"queue_full\"}"),
            format!("collector_events_dropped_total{{cause=\"queue_full\"}} {}", 10 - handled)
        );
        assert!(*fast_finished.lock().unwrap());
    }

    #[test]
    fn stop_drains_the_queues_and_names_a_handler_that_hangs() {
        let metrics = Arc::new(Metrics::new("test"));
        let mut handlers = Handlers::new(Arc::clone(&metrics));
        let (_gate_tx, gate_rx) = mpsc::channel::<()>();
        let (hung, (_, hung_finished)) = probe("hung", Some(gate_rx));
        let (fast, (fast_seen, _)) = probe("fast", None);
        handlers.register(Box::new(hung), 10).unwrap();
        handlers.register(Box::new(fast), 10).unwrap();
        for id in 0..5 {
            handlers.dispatch(dispatch(id));
        }
        let stuck = handlers.stop(Duration::from_millis(300));
        assert_eq!(stuck, [("hung".to_owned(), Duration::from_millis(300))]);
        assert_eq!(*fast_seen.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert!(!*hung_finished.lock().unwrap());
    }

    #[test]
    fn a_handler_with_its_own_drain_time_finishes_its_queue_past_the_default() {
        let metrics = Arc::new(Metrics::new("test"));
        let mut handlers = Handlers::new(Arc::clone(&metrics));
        // The journal's case: slow (each item waits on the gate), but given longer.
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (mut slow, (slow_seen, slow_finished)) = probe("slow", Some(gate_rx));
        slow.drain = Some(Duration::from_secs(10));
        let (_hung_tx, hung_rx) = mpsc::channel::<()>();
        let (hung, _) = probe("hung", Some(hung_rx));
        handlers.register(Box::new(slow), 10).unwrap();
        handlers.register(Box::new(hung), 10).unwrap();
        for id in 0..5 {
            handlers.dispatch(dispatch(id));
        }
        let opener = thread::spawn(move || {
            for _ in 0..5 {
                thread::sleep(Duration::from_millis(100));
                let _ = gate_tx.send(());
            }
        });
        let started = Instant::now();
        let stuck = handlers.stop(Duration::from_millis(100));
        opener.join().unwrap();
        // 500 ms of work, well past the default 100 ms: all of it done, and only the hung one named.
        assert_eq!(*slow_seen.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert!(*slow_finished.lock().unwrap());
        assert_eq!(stuck, [("hung".to_owned(), Duration::from_millis(100))]);
        assert!(started.elapsed() >= Duration::from_millis(500), "{:?}", started.elapsed());
    }
}
